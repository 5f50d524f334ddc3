"""The report of configs/sweep_mu_aware.py (does knowing μ_H buy honest accuracy, and what does a
wrong prior cost? issue 15): the tuning (every classic candidate's mean on the tuning draws, in
mu_aware_tuning.csv), then each rule's paired difference from the best classic rule of its
setting over the evaluation draws, with the f or bucket size each rule ran, printed, written to
mu_aware_gains.csv and plotted in mu_aware_gains.png; a regret summary per rule.
"""

import json
import os

import numpy as np

from configs import sweep_mu_aware
from fedjax_robust import aggregators
from fedjax_robust import evaluation
from fedjax_robust import results
from fedjax_robust import store
from fedjax_robust.report import tables


def classic_rule(label: str) -> str | None:
  """The classic rule of a label ('trimmed_mean[f=6]' -> 'trimmed_mean'), None for a rule
  that uses the prior."""
  rule = label.split("[")[0]
  return rule if rule in sweep_mu_aware.CLASSIC else None


def _ran(workdir: str, pid: str) -> tuple[int | None, int | None]:
  """(f, bucket size) the point ran, from its record's resolved config (a quantile f is the
  prior's): None for what its rule does not take; raises store.RECORD_ERRORS if unreadable."""
  with open(store.config_path(workdir, pid), encoding="utf-8") as fh:
    config = json.load(fh)["config"]
  spec = config["aggregator"]
  f = int(config["f"]) if sweep_mu_aware.uses_f(spec) else None
  s = (int(config["aggregator_options"]["bucketing"]["bucket_size"])
       if "bucketing" in aggregators.split_spec(spec) else None)
  return f, s


def _ran_text(f, s) -> str:
  return " ".join(([] if f is None else [f"f={f}"]) + ([] if s is None else [f"s={s}"])) or "–"


def _tune(tuning_points: dict, value) -> tuple[dict, list[str]]:
  """Each classic rule's candidate with the highest mean on the tuning draws (ties: the first
  in the grid's order; a candidate whose mean is undefined is never kept): rule -> (label,
  tuning mean), and the rules none of whose candidates has a defined mean."""
  candidates = {}
  for label, pid in tuning_points.items():
    rule = classic_rule(label)
    if rule is not None:
      candidates.setdefault(rule, []).append((label, value(pid)))
  tuned, undefined = {}, []
  for rule, cands in candidates.items():
    defined = [(label, v) for label, v in cands if np.isfinite(v)]
    if defined:
      tuned[rule] = max(defined, key=lambda lv: lv[1])
    else:
      undefined.append(rule)
  return tuned, undefined


def report(c, rows, workdir, ids, log=print) -> list[str]:
  """Each rule minus the best classic rule of its setting, for every setting (task, threat,
  μ_H: the prior block's points are compared with the main block's classic rules, which ran
  the same draws). Each classic rule runs the candidate (f, bucket size) with the highest mean
  of the plot's metric on the tuning draws (block sweep_mu_aware.TUNE, seed c.tuning.seed), and
  the best classic rule is the one whose tuned candidate is best there; the differences are paired
  then over the evaluation draws (seed c.base.seed, the same masks for every rule of a setting).
  Nothing is picked on the evaluation draws. Prints the tuning and the table, writes
  mu_aware_tuning.csv (every candidate's tuning mean), mu_aware_gains.csv (columns f and
  bucket_size: what the rule ran, empty where it takes none; tuning_mean: a classic rule's
  kept candidate's mean on the tuning draws, empty for a prior rule, which is not tuned) and
  mu_aware_gains.png; returns the paths."""
  metric = c.plot.metric
  entries, cvar90 = {}, {}
  for r in rows:
    if r["point"] in ids and r["metric"] == metric and r["statistic"] == "mean":
      entries[r["point"]] = r
    if r["point"] in ids and r["metric"] == metric and r["statistic"] == "cvar90":
      cvar90[r["point"]] = float(r["value"])   # the mean of the worst 10% of draws
  settings = {}
  for pid, r in entries.items():
    key = (r["task"], r["threat"], r["mu_H"])
    side = "tune" if r["block"] == sweep_mu_aware.TUNE else "eval"
    settings.setdefault(key, {"tune": {}, "eval": {}})[side][r["rule"]] = pid

  def value(pid):
    return float(entries[pid]["value"])

  def ran(pid):
    try:
      return _ran(workdir, pid)
    except store.RECORD_ERRORS as e:
      log(f"mu_aware report: {store.config_path(workdir, pid)} unreadable "
          f"({type(e).__name__}); what point {pid} ran is unknown")
      return None

  pct = 100.0
  table, tuning_rows, tuning_lines = [], [], []
  for key, sides in sorted(settings.items()):
    if not sides["tune"] and not any(classic_rule(label) for label in sides["eval"]):
      continue  # the prior block alone: no classic rule ran in this setting
    tuned, undefined = _tune(sides["tune"], value)
    for rule in undefined:
      log(f"mu_aware report: {key} {rule}: its metric is undefined on the tuning draws for "
          "every candidate; left out")
    if not tuned:
      log(f"mu_aware report: {key}: no classic rule tuned (no tuning points); not compared "
          "(the best classic rule is picked on the tuning draws only)")
      continue
    best = max(tuned, key=lambda rule: tuned[rule][1])
    these = [{"task": key[0], "threat": key[1], "mu_H": key[2], "rule": classic_rule(label),
              "candidate": label, "tuning_mean": value(pid),
              "kept": tuned.get(classic_rule(label), (None,))[0] == label,
              "best_classic": tuned[best][0] == label}
             for label, pid in sides["tune"].items() if classic_rule(label) is not None]
    tuning_rows += these
    tuning_lines.append(f"{' '.join(key)}:")
    for rule in dict.fromkeys(t["rule"] for t in these):
      tuning_lines.append(f"  {rule}: " + ", ".join(
          " ".join(filter(None, [t["candidate"][len(rule):].strip("[]"),
                                 f"{pct * t['tuning_mean']:.2f}" + "*" * t["kept"]]))
          for t in these if t["rule"] == rule) + ("   <- best classic rule" if rule == best
                                                  else ""))
    best_pid = sides["eval"].get(tuned[best][0])
    if best_pid is None:
      log(f"mu_aware report: {key} the best classic rule on the tuning draws, {tuned[best][0]}, "
          "has no evaluation point; not compared")
      continue
    try:
      base_arrays = store.load_point(store.point_path(workdir, best_pid))
      base_values = tables.draw_values(base_arrays)
    except store.NPZ_ERRORS:
      log(f"mu_aware report: {key} best classic point unreadable; left out")
      continue
    best_ran = ran(best_pid) or (None, None)
    kept = {label for label, _ in tuned.values()}
    for label, pid in sides["eval"].items():
      rule = classic_rule(label)
      if rule is not None and label not in kept:
        continue  # a candidate the tuning did not keep
      try:
        arrays = store.load_point(store.point_path(workdir, pid))
      except store.NPZ_ERRORS:
        log(f"mu_aware report: {key} {label} unreadable; left out")
        continue
      this_ran = ran(pid)
      values = tables.draw_values(arrays)
      # A per-rule worst case repeats a different honest set: not the same draws.
      same = bool(np.array_equal(arrays["honest_masks"], base_arrays["honest_masks"]))
      d = evaluation.paired_difference(values[metric], base_values[metric])
      family = _family_difference(label, tuned, sides["eval"], workdir, values[metric], metric)
      table.append({"block": entries[pid]["block"], "task": key[0], "threat": key[1],
                    "mu_H": key[2], "rule": rule or label,
                    "f": "?" if this_ran is None else this_ran[0],
                    "bucket_size": "?" if this_ran is None else this_ran[1],
                    "tuning_mean": tuned[rule][1] if rule is not None else None,
                    "mean": value(pid), "cvar90": cvar90.get(pid, float("nan")),
                    "best_classic": best, "best_classic_f": best_ran[0],
                    "best_classic_bucket_size": best_ran[1],
                    "best_classic_tuning_mean": tuned[best][1],
                    "best_classic_mean": value(best_pid), "same_draws": same,
                    "gain": d["mean"],
                    **{k: d[k] for k in ("ci_low", "ci_high", "p_value", "pairs", "undefined",
                                         "deterministic", "identical_draws")}, **family})
  for tags, reason in sweep_mu_aware.REFUSED.items():
    log(f"mu_aware report: refused {tags}: {reason}")
  paths = []
  if tuning_rows:
    paths.append(_write_csv(os.path.join(workdir, "mu_aware_tuning.csv"), tuning_rows,
                            ["task", "threat", "mu_H", "rule", "candidate", "tuning_mean",
                             "kept", "best_classic"]))
    log(f"\nTuning: {metric} mean (%) of each classic rule's candidates on the tuning draws "
        f"(seed {c.tuning.seed}, {c.tuning.num_samples} draws each; * the candidate kept)")
    log("\n".join(tuning_lines))
  if not table:
    return paths
  paths.append(_write_csv(
      os.path.join(workdir, "mu_aware_gains.csv"), table,
      ["block", "task", "threat", "mu_H", "rule", "f", "bucket_size", "tuning_mean", "mean",
       "cvar90", "best_classic", "best_classic_f", "best_classic_bucket_size",
       "best_classic_tuning_mean", "best_classic_mean", "gain", "ci_low", "ci_high", "p_value",
       "pairs", "undefined", "deterministic", "identical_draws", "same_draws", "family",
       "family_gain", "family_ci_low", "family_ci_high", "family_p_value"]))
  log(f"\n{metric} (%) on the evaluation draws (seed {c.base.seed}): mean, CVaR0.9 (mean of "
      "the worst 10% of draws), and each rule minus the best classic rule of its setting, "
      "picked on the tuning draws at its tuned f or bucket size (paired over the evaluation "
      "draws; paired t 95% CI; points). f, s: what the rule ran (a classic rule's tuned, a "
      "@quantile_f rule's the prior's quantile; –: the rule takes neither)")
  lines = []
  for t in table:
    this = "?" if t["f"] == "?" else _ran_text(t["f"], t["bucket_size"])
    vs = f"{t['best_classic']} {_ran_text(t['best_classic_f'], t['best_classic_bucket_size'])}"
    diff = ("(itself)" if t["rule"] == t["best_classic"] else
            results.difference_text({**t, "mean": t["gain"]}, scale=pct, digits=2))
    lines.append(f"{t['block']:6s} {t['task']:12s} {t['threat']:12s} {t['mu_H']:12s} "
                 f"{t['rule']:36s} {this:9s} {pct * t['mean']:6.2f} {pct * t['cvar90']:6.2f}  vs "
                 f"{vs:36s} {diff}")
  lines += results.report_notes(lines, any(t["identical_draws"] for t in table))
  log("\n".join(lines))
  family = [t for t in table if t["family"]]
  if family:
    log(f"\nWhat the prior adds to the rule it modifies: each prior-using rule minus that classic "
        f"rule at its tuned f (sweep_mu_aware.FAMILY; {metric}, paired over the evaluation "
        "draws, paired t 95% CI, points)")
    family_lines = [
        f"{t['block']:6s} {t['task']:12s} {t['threat']:12s} {t['mu_H']:12s} {t['rule']:36s} "
        f"− {t['family']:26s} " + results.difference_text(
            {"mean": t["family_gain"], "ci_low": t["family_ci_low"],
             "ci_high": t["family_ci_high"], "deterministic": t["family_deterministic"]},
            scale=pct, digits=2)
        for t in family]
    log("\n".join(family_lines + results.report_notes(family_lines)))
  log("\n" + regret_summary(table))
  return paths + _plot_gains(table, workdir, metric)


def _family_difference(label, tuned, evaluation_points, workdir, values, metric) -> dict:
  """A prior-using rule's paired difference from the classic rule it modifies
  (`sweep_mu_aware.FAMILY`) at that rule's tuned candidate, over the evaluation draws; empty
  fields where the rule has no family or the family's rule did not run in the setting."""
  empty = {"family": "", "family_gain": None, "family_ci_low": None, "family_ci_high": None,
           "family_p_value": None, "family_deterministic": False}
  family = sweep_mu_aware.FAMILY.get(label.split("|")[0])   # under any prior
  candidate = tuned.get(family, (None,))[0]
  pid = evaluation_points.get(candidate)
  if pid is None:
    return empty
  try:
    other = tables.draw_values(store.load_point(store.point_path(workdir, pid)))
  except store.NPZ_ERRORS:
    return empty
  d = evaluation.paired_difference(values, other[metric])
  return {"family": candidate, "family_gain": d["mean"], "family_ci_low": d["ci_low"],
          "family_ci_high": d["ci_high"], "family_p_value": d["p_value"],
          "family_deterministic": d["deterministic"]}


def _write_csv(path: str, table: list[dict], fields: list[str]) -> str:
  """`fields` of each row, comma-separated (None as an empty cell); returns `path`."""
  with open(path, "w") as fh:
    fh.write(",".join(fields) + "\n")
    for t in table:
      fh.write(",".join("" if t[k] is None else str(t[k]) for k in fields) + "\n")
  return path


def regret_summary(table) -> str:
  """Per rule, over the settings of the main and tasks blocks (prior correct), and apart over
  those of the groups block: the mean and the
  worst of its difference from the best classic rule of the setting, and in how many settings
  its paired 95% CI lies above 0 (wins), below 0 (losses) or covers 0 (a deterministic
  difference, without variance, by its exact sign). The best classic rule
  is picked on the tuning draws, so on the evaluation draws another classic rule may beat it (a
  positive difference); what a classic rule's row shows is how much it loses, tuned, where
  another classic rule is best."""
  lines = []
  for blocks, title in ((("main", "tasks"), "main + tasks blocks"), (("groups",), "groups block")):
    by_rule = {}
    for t in table:
      if t["block"] in blocks and np.isfinite(t["gain"]):
        by_rule.setdefault(t["rule"], []).append(t)
    if not by_rule:
      continue
    lines.append(f"rule ({title}, prior correct)".ljust(43) + "settings  mean diff  worst diff   "
                 "wins  ties  losses   (points vs the best classic rule of each setting)")
    for rule, ts in by_rule.items():
      gains = np.array([t["gain"] for t in ts])
      # a deterministic difference (no variance) counts by its exact sign
      signs = [results.difference_sign({**t, "mean": t["gain"]}) for t in ts]
      wins, losses = signs.count(1), signs.count(-1)
      lines.append(f"{rule:42s} {len(ts):8d}  {100 * gains.mean():+9.2f}  "
                   f"{100 * gains.min():+10.2f}   {wins:4d}  {len(ts) - wins - losses:4d}  "
                   f"{losses:6d}")
  return "\n".join(lines)


def _plot_gains(table, workdir, metric) -> list[str]:
  """mu_aware_gains.png: a panel per block (main, tasks, groups, prior); in each, every prior-using
  rule's paired difference from the best classic rule of its setting, with its 95% CI."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  rows = [t for t in table if t["rule"] not in sweep_mu_aware.CLASSIC and t["block"] != "worst"
          and np.isfinite(t["gain"])]
  blocks = [b for b in ("main", "tasks", "groups", "prior")
            if any(t["block"] == b for t in rows)]
  if not blocks:
    return []
  fig, axes = plt.subplots(len(blocks), 1, figsize=(15, 4.6 * len(blocks)), squeeze=False)
  for ax, block in zip(axes[:, 0], blocks):
    if block == "prior":
      _plot_priors(ax, rows)
      continue
    mine = [t for t in rows if t["block"] == block]
    settings = list(dict.fromkeys((t["task"], t["threat"], t["mu_H"]) for t in mine))
    rules = list(dict.fromkeys(t["rule"] for t in mine))
    width = 0.8 / len(rules)
    for k, rule in enumerate(rules):
      pts = [(i, t) for i, st in enumerate(settings) for t in mine
             if (t["task"], t["threat"], t["mu_H"]) == st and t["rule"] == rule]
      ax.errorbar([i + (k - (len(rules) - 1) / 2) * width for i, _ in pts],
                  [100 * t["gain"] for _, t in pts],
                  yerr=np.nan_to_num([[100 * (t["gain"] - t["ci_low"]) for _, t in pts],
                                      [100 * (t["ci_high"] - t["gain"]) for _, t in pts]]),
                  fmt="os^vD<>ph*"[k // 10 % 10], ms=3, capsize=2, lw=0.8, label=rule,
                  color=f"C{k % 10}")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(settings)))
    ax.set_xticklabels([" ".join(st) for st in settings], rotation=20, ha="right", fontsize=7)
    ax.set_ylabel("points vs best classic")
    ax.set_title({"main": "digits α = 1, every threat, prior correct",
                  "tasks": "digits α = 0.3 and the synthetic task, ALIE, prior correct",
                  "groups": "the synthetic task, the unreliable clients 0–4 a distinct group "
                            "(labelling model shifted by 0, 3, 6), ALIE, prior correct"}[block],
                 fontsize=9)
    ax.legend(fontsize=6, ncol=4, loc="lower left")
    ax.grid(alpha=0.3)
  fig.suptitle(f"Knowing μ_H: {metric} of each prior-using rule minus the best classic rule of "
               "its setting (picked, with its f, on the tuning draws; differences paired over "
               "the evaluation draws, 95% CI)", fontsize=10)
  fig.tight_layout()
  path = os.path.join(workdir, "mu_aware_gains.png")
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return [path]


def _plot_priors(ax, rows) -> None:
  """The prior panel: per (μ_H, rule), the difference under each prior (correct: the main
  block's ALIE point; ×2, ×0.5, permuted, absent: the prior block's)."""
  priors = ("correct", *sweep_mu_aware.PRIORS, "absent")
  mine = [t for t in rows if t["block"] == "prior"]
  groups = list(dict.fromkeys((t["mu_H"], t["rule"].split("|")[0]) for t in mine))
  def find(law, rule, prior):
    label = rule if prior == "correct" else f"{rule}|{prior}"
    block = "main" if prior == "correct" else "prior"
    return next((t for t in rows if t["block"] == block and t["task"] == "digits_a1"
                 and t["threat"] == "alie" and t["mu_H"] == law and t["rule"] == label), None)
  width = 0.8 / len(priors)
  for k, prior in enumerate(priors):
    pts = [(i, t) for i, (law, rule) in enumerate(groups)
           for t in [find(law, rule, prior)] if t is not None]
    ax.errorbar([i + (k - (len(priors) - 1) / 2) * width for i, _ in pts],
                [100 * t["gain"] for _, t in pts],
                yerr=np.nan_to_num([[100 * (t["gain"] - t["ci_low"]) for _, t in pts],
                                    [100 * (t["ci_high"] - t["gain"]) for _, t in pts]]),
                fmt="o", ms=3, capsize=2, lw=0.8, label=f"prior {prior}", color=f"C{k}")
  ax.axhline(0, color="black", lw=0.8)
  ax.set_xticks(range(len(groups)))
  ax.set_xticklabels([f"{law}: {rule}" for law, rule in groups], rotation=20, ha="right",
                     fontsize=7)
  ax.set_ylabel("points vs best classic")
  ax.set_title("the prior correct, ×2, ×0.5, permuted (on the wrong clients) or absent "
               "(digits α = 1, ALIE)", fontsize=9)
  ax.legend(fontsize=7, ncol=5, loc="lower left")
  ax.grid(alpha=0.3)
