"""The report of configs/backdoors.py (backdoor attacks × defences × μ_H on digits, issue 32,
"Measurement"), from each point's per-draw values (points/<id>.npz), printed and written to CSV:

1. backdoors.csv, per μ_H × attack × defence: E[backdoor success] at the attack's last evaluated
   round (t = R when the attackers act in rounds [0, R) and R is an evaluation round, else the
   last round T; `backdoor_round` says which) and E[main accuracy] at the last round T
   (`test_accuracy`: the global model on the clean global test split) with the 95% CI
   of the point's `report.interval` (`evaluation.intervals`, the same as the summaries'), and
   CVaR90 of backdoor success (`evaluation.cvar`: the mean of the worst ⌈0.1·K⌉ of the K defined
   draws, worst = highest success) with its bootstrap CI in the CSV. Identical draws (one honest
   set repeated under deterministic training) print their exact value '(exact)§' and no CI;
   draws of different honest sets that all gave the same value (a backdoor saturated at 100%,
   or never planted) print it as '(every draw)†' and no CI either: the sample has no spread to
   build one from, and the value is the sample's, not an exact E over μ_H.
   backdoors_differences.csv: each defence minus the first one of its μ_H × attack ("mean", no
   defence) in backdoor success and main accuracy, paired on the same draws
   (`evaluation.paired_difference`: paired t CI; no CI or p-value where every difference is the
   same, e.g. two defences that both end every draw at 0%); pairs whose draws differ (other
   honest sets) are not compared.
2. backdoors_by_b.csv, E[backdoor success | b] (and E[main accuracy | b]) for every realized
   Byzantine count b, with the draws at that b: the plain mean of those draws' values. A b that
   no draw realized has no row (the quantity is undefined there, not 0); a b whose every draw
   diverged has its draws and an undefined (NaN, 'n/a') mean.
3. backdoors_durability.csv, where the attackers act in rounds [0, R) only
   (`training.attack_rounds` R > 0 in the point's config): at each evaluation round t ≥ R, the
   backdoor success and main accuracy of the model after t rounds, mean over the draws where
   they are defined, against t − R, the clean rounds since the last attacked round (t = R: the
   model right after it). From the per-evaluation curves a backdoor point's npz keeps
   (store.CURVE_METRICS); a point computed before they were kept is named, without durability.

Diverged draws have undefined accuracies (NaN, `results.defined_metrics`): they are left out of
every mean here and counted in the `undefined` columns. Per-draw values, not the rows of
results.csv: results.csv carries no interval for backdoor success and no curves.
"""

from __future__ import annotations

import os

import numpy as np

from fedjax_robust import evaluation
from fedjax_robust import results
from fedjax_robust import store

TAGS = ("mu_H", "attack", "defence")
EVERY_DRAW_MARK = "(every draw)†"
EVERY_DRAW_NOTE = ("† every draw gave this value although the honest sets differ (e.g. a "
                   "backdoor saturated at 100%): no spread to build a CI from; the sample's value, "
                   "not an exact E over μ_H.")
BACKDOOR = "backdoor_accuracy"
MAIN = "test_accuracy"


def _estimate(values: np.ndarray | None, *, worst: str, method: str, resamples: int) -> dict:
  """Mean, its CI, CVaR90 (with CI), identical, defined and undefined draws of one metric's
  per-draw values (None: not measured: every entry NaN)."""
  if values is None:
    nan = float("nan")
    return {"mean": nan, "ci_low": nan, "ci_high": nan, "cvar90": nan, "cvar90_ci_low": nan,
            "cvar90_ci_high": nan, "identical": 0, "count": 0, "undefined": 0}
  s = evaluation.summarize(values, worst=worst)
  i = evaluation.intervals(values, worst=worst, method=method, resamples=resamples)
  return {"mean": s["mean"], "ci_low": i["mean_ci"][0], "ci_high": i["mean_ci"][1],
          "cvar90": s["cvar90"], "cvar90_ci_low": i["cvar90_ci"][0],
          "cvar90_ci_high": i["cvar90_ci"][1], "identical": s["identical"],
          "count": s["count"], "undefined": s["undefined"]}


def _backdoor_values(arrays, attack_rounds: int, rounds: int):
  """(per-draw backdoor success, the round it is measured at): at t = R = `attack_rounds` (the
  attack's last evaluated round) when R > 0 and the point kept its curves with an evaluation at
  R, else at the last round."""
  if attack_rounds and f"curve_{BACKDOOR}" in arrays:
    evals = list(np.asarray(arrays["eval_rounds"]).tolist())
    if attack_rounds in evals:
      return (np.asarray(arrays[f"curve_{BACKDOOR}"][evals.index(attack_rounds)], np.float64),
              attack_rounds)
  if f"final_{BACKDOOR}" not in arrays:
    return None, rounds
  return np.asarray(arrays[f"final_{BACKDOOR}"], np.float64), rounds


def _mean(values: np.ndarray) -> float:
  """The mean of the defined (non-NaN) values; NaN (undefined) where there is none."""
  defined = values[~np.isnan(values)]
  return float(np.mean(defined)) if defined.size else float("nan")


def _text(h: dict, name: str) -> str:
  """A headline cell: mean [CI] in %; '(exact)§' for copies of one honest set, '(every
  draw)†' for different honest sets with one value, 'n/a (…)' where undefined."""
  mean = h[f"{name}_mean"]
  if np.isnan(mean) and not h[f"{name}_count"]:
    return "n/a (all diverged)" if h[f"{name}_undefined"] else "n/a (not measured)"
  if h[f"{name}_identical"] and not h["same_honest_set"]:
    return f"{100 * mean:.2f} {EVERY_DRAW_MARK}"
  return results.mean_text(mean, h[f"{name}_ci_low"], h[f"{name}_ci_high"],
                           identical=h[f"{name}_identical"] == 1, scale=100, digits=2)


def _pct(value: float) -> str:
  return "n/a" if np.isnan(value) else f"{100 * value:.2f}"


def _points(rows, ids, workdir, log):
  """(pid, tags, arrays, config) of this sweep's points in sweep order; a point whose npz or
  record is unreadable is named through `log` and left out."""
  seen = {}
  for r in rows:
    if r["point"] in ids and r["point"] not in seen and all(t in r for t in TAGS):
      seen[r["point"]] = {t: r[t] for t in TAGS}
  out = []
  for pid, tags in seen.items():
    try:
      arrays = store.load_point(store.point_path(workdir, pid))
      config = store.load_record(store.config_path(workdir, pid))["config"]
    except (*store.NPZ_ERRORS, *store.RECORD_ERRORS) as e:
      log(f"backdoors report: WARNING point {pid} {tags} unreadable ({type(e).__name__}: {e}); "
          "left out")
      continue
    out.append((pid, tags, arrays, config))
  return out


def report(c, rows, workdir, ids, log=print) -> list[str]:
  """The three tables of the module docstring; returns the CSV paths written."""
  points = _points(rows, ids, workdir, log)
  if not points:
    return []
  headline, by_b, durability, without_curves = [], [], [], []
  draws = {}   # (μ_H, attack) -> {defence: (masks, keys, backdoor, main)} for the differences
  for pid, tags, arrays, config in points:
    main = (np.asarray(arrays[f"final_{MAIN}"], np.float64)
            if f"final_{MAIN}" in arrays else None)
    counts = np.asarray(arrays["num_byzantine"])
    options = {"method": config["report"]["interval"],
               "resamples": config["report"]["bootstrap_resamples"]}
    f, rounds = int(config["f"]), int(config["training"]["num_rounds"])
    attack_rounds = int(config["training"].get("attack_rounds", 0))
    backdoor, backdoor_round = _backdoor_values(arrays, attack_rounds, rounds)
    b = _estimate(backdoor, worst="max", **options)
    m = _estimate(main, worst="min", **options)
    masks = np.asarray(arrays["honest_masks"])
    draws.setdefault((tags["mu_H"], tags["attack"]), {})[tags["defence"]] = (
        masks, np.asarray(arrays["draw_ids"]) if "draw_ids" in arrays else None, backdoor, main)
    headline.append({**tags, "point": pid, "f": f, "attack_rounds": attack_rounds,
                     "rounds": rounds, "backdoor_round": backdoor_round,
                     "draws": int(counts.size),
                     "same_honest_set": int(bool(np.all(masks == masks[:1]))),
                     **{f"backdoor_{k}": v for k, v in b.items()},
                     **{f"main_{k}": v for k, v in m.items() if not k.startswith("cvar")}})
    if backdoor is None:
      continue
    for count in map(int, np.unique(counts)):
      at = counts == count
      by_b.append({**tags, "b": count, "b_gt_f": int(count > f), "draws": int(at.sum()),
                   "backdoor_defined": int(np.sum(~np.isnan(backdoor[at]))),
                   "backdoor_mean": _mean(backdoor[at]),
                   "main_mean": _mean(main[at]) if main is not None else float("nan")})
    if not attack_rounds:
      continue
    if f"curve_{BACKDOOR}" not in arrays:
      without_curves.append((pid, tags))
      continue
    evals = np.asarray(arrays["eval_rounds"])
    curve = np.asarray(arrays[f"curve_{BACKDOOR}"], np.float64)
    main_curve = (np.asarray(arrays[f"curve_{MAIN}"], np.float64)
                  if f"curve_{MAIN}" in arrays else None)
    for k in np.flatnonzero(evals >= attack_rounds):
      durability.append({**tags, "attack_rounds": attack_rounds, "round": int(evals[k]),
                         "rounds_since_attack": int(evals[k]) - attack_rounds,
                         "backdoor_defined": int(np.sum(~np.isnan(curve[k]))),
                         "backdoor_mean": _mean(curve[k]),
                         "main_mean": (_mean(main_curve[k]) if main_curve is not None
                                       else float("nan"))})
  paths = [store.write_table(os.path.join(workdir, "backdoors.csv"), headline)]
  _log_headline(headline, evaluation.INTERVAL_NAMES[c.base.report.interval], log)
  differences = _differences(draws)
  if differences:
    paths.append(store.write_table(os.path.join(workdir, "backdoors_differences.csv"),
                                   [{k: v for k, v in d.items() if not k.endswith("_text")}
                                    for d in differences]))
    _log_differences(differences, log)
  if by_b:
    paths.append(store.write_table(os.path.join(workdir, "backdoors_by_b.csv"), by_b))
    _log_by_b(by_b, log)
  if durability:
    paths.append(store.write_table(os.path.join(workdir, "backdoors_durability.csv"),
                                   durability))
    _log_durability(durability, log)
  elif not without_curves:
    log("\nDurability: none to show: no point has an evaluation after its attack stops "
        "(training.attack_rounds 0 or absent: the attackers act in every round; or beyond the "
        "last evaluation).")
  for pid, tags in without_curves:
    log(f"backdoors report: point {pid} {tags} has no per-evaluation curves (computed before "
        "they were kept): no durability; rerun it with --recompute")
  return paths


def _differences(draws) -> list[dict]:
  """Each defence minus the first of its (μ_H, attack) on the same draws (masks and draw ids
  equal), in backdoor success and main accuracy."""
  out = []
  for (mu, attack), by_defence in draws.items():
    (first, (masks0, ids0, backdoor0, main0)), *others = by_defence.items()
    for defence, (masks, ids, backdoor, main) in others:
      same = masks.shape == masks0.shape and np.array_equal(masks, masks0) and (
          ids is None or ids0 is None or np.array_equal(ids, ids0))
      if not same or backdoor is None or backdoor0 is None:
        continue
      row = {"mu_H": mu, "attack": attack, "defence": defence, "baseline": first}
      for name, a, b in (("backdoor", backdoor, backdoor0), ("main", main, main0)):
        if a is None or b is None:
          continue
        d = evaluation.paired_difference(a, b)
        row.update({f"{name}_mean": d["mean"], f"{name}_ci_low": d["ci_low"],
                    f"{name}_ci_high": d["ci_high"], f"{name}_deterministic": int(
                        d["deterministic"]), f"{name}_pairs": d["pairs"],
                    f"{name}_text": results.difference_text(d, scale=100, digits=2)})
      out.append(row)
  return out


def _log_differences(differences, log):
  log("\nEach defence minus no defence on the same draws (percentage points, paired t 95% CI): "
      "backdoor success at the attack's last evaluated round, main accuracy at the last round.")
  log(f"{'μ_H':12s} {'attack':18s} {'defence − baseline':28s} {'Δ backdoor success':>26s} "
      f"{'Δ main accuracy':>26s}")
  texts = []
  for d in differences:
    bd, main = d.get("backdoor_text", "n/a"), d.get("main_text", "n/a")
    texts += [bd, main]
    log(f"{d['mu_H']:12s} {d['attack']:18s} {d['defence'] + ' − ' + d['baseline']:28s} "
        f"{bd:>26s} {main:>26s}")
  if any(results.DETERMINISTIC_MARK in t for t in texts):
    log(results.deterministic_note(identical_draws=False))


def _log_headline(headline, interval_name, log):
  rounds = sorted({(h["rounds"], h["attack_rounds"], h["backdoor_round"]) for h in headline})
  when = "; ".join((f"backdoor success at round {b} (attackers in rounds [0, {r})), main "
                    f"accuracy at round {t}") if r else
                   f"round {t}, attackers in every round" for t, r, b in rounds)
  log(f"\nBackdoor success and main accuracy (%, mean [95% CI]; CVaR90: the mean of the worst "
      f"10% of draws' backdoor success): {when}. Main accuracy: test_accuracy, the global "
      "model on the clean global test split; backdoor success: triggered test inputs of other "
      f"labels classified as the target (an edge case: its source class). [CI]: "
      f"{interval_name}.")
  log(f"{'μ_H':12s} {'attack':18s} {'defence':14s} {'backdoor success':>26s} "
      f"{'CVaR90':>7s} {'main accuracy':>26s}")
  texts = []
  for h in headline:
    bd, main = _text(h, "backdoor"), _text(h, "main")
    texts += [bd, main]
    undefined = max(h["backdoor_undefined"], h["main_undefined"])
    log(f"{h['mu_H']:12s} {h['attack']:18s} {h['defence']:14s} {bd:>26s} "
        f"{_pct(h['backdoor_cvar90']):>7s} {main:>26s}"
        + (f"  ({undefined} of {h['draws']} draws diverged: left out)" if undefined else ""))
  for note in results.report_notes(texts):
    log(note)
  if any(EVERY_DRAW_MARK in t for t in texts):
    log(EVERY_DRAW_NOTE)


def _log_by_b(by_b, log):
  log("\nE[backdoor success | b] (%) for every realized b, (draws at b); '*': b > declared f; "
      "a b no draw realized is absent (undefined, not 0); backdoors_by_b.csv has E[main "
      "accuracy | b] too.")
  lines = {}
  for r in by_b:
    key = tuple(r[t] for t in TAGS)
    lines.setdefault(key, []).append(f"b={r['b']}{'*' if r['b_gt_f'] else ''}: "
                                     f"{_pct(r['backdoor_mean'])} ({r['draws']})")
  for (mu, attack, defence), cells in lines.items():
    log(f"  {mu:12s} {attack:18s} {defence:14s} " + "  ".join(cells))


def _log_durability(durability, log):
  since = sorted({r["rounds_since_attack"] for r in durability})
  log("\nDurability: backdoor success (%, mean over draws) at each evaluation after the attack "
      "stops, by clean rounds since the last attacked round (0: right after it); main "
      "accuracy in backdoors_durability.csv.")
  log(f"{'μ_H':12s} {'attack':18s} {'defence':14s} {'R':>4s} "
      + " ".join(f"{f'+{s}':>7s}" for s in since))
  table = {}
  for r in durability:
    key = (*(r[t] for t in TAGS), r["attack_rounds"])
    table.setdefault(key, {})[r["rounds_since_attack"]] = r["backdoor_mean"]
  for (mu, attack, defence, attack_rounds), cells in table.items():
    log(f"{mu:12s} {attack:18s} {defence:14s} {attack_rounds:4d} "
        + " ".join(f"{_pct(cells[s]) if s in cells else '':>7s}" for s in since))
