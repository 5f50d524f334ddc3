"""The report of configs/sweep_privacy.py (privacy as deployed × robust rule × threat × μ_H ×
client sampling, issue 33's table): the honest held-out accuracy (mean, 95% CI) per cell with the ε
reached and σ; central (and distributed) minus local DP at the same ε, rule and sampling (the
draws are the same within a μ_H: paired differences, `evaluation.paired_difference`); and what
secure aggregation costs each rule without noise (secagg and secagg3 minus none, paired
likewise). Printed and written to privacy.csv and privacy_differences.csv.
"""

import json
import os

from fedjax_robust import evaluation
from fedjax_robust import results
from fedjax_robust import store
from fedjax_robust.report import tables


def _cell(row, rule) -> str:
  """A rule's mean [95% CI] in %, '(exact)§' where every draw gave the same value."""
  return results.mean_text(*(row[f"{rule}_{k}"] for k in ("mean", "mean_ci_low", "mean_ci_high")),
                           identical=row[f"{rule}_identical"] == 1, scale=100, digits=2)


def report(c, rows, workdir, ids, log=print) -> list[str]:
  """The table per (threat, μ_H, sampling, mechanism, ε) with each rule's accuracy and CI, the ε
  and σ each cell reached, and the paired differences of `pairs` below."""
  metric = c.plot.metric
  cells = {}
  for r in rows:
    if r["point"] not in ids or r["metric"] != metric:
      continue
    key = (r["threat"], r["mu_H"], float(r["sampling"]), r["mechanism"], float(r["epsilon"]))
    cell = cells.setdefault(key, {})
    cell.setdefault(r["rule"], {"point": r["point"]})[r["statistic"]] = float(r["value"])
  if not cells:
    return []
  rules = list(dict.fromkeys(rule for by_rule in cells.values() for rule in by_rule))
  table = []
  for key, by_rule in cells.items():
    with open(store.config_path(workdir, next(iter(by_rule.values()))["point"])) as fh:
      privacy = json.load(fh).get("privacy")
    row = {"threat": key[0], "mu_H": key[1], "sampling": key[2], "mechanism": key[3],
           "target_epsilon": key[4],
           "epsilon": privacy["epsilon"] if privacy else float("inf"),
           "noise_multiplier": privacy["noise_multiplier"] if privacy else 0.0}
    for rule in rules:
      e = by_rule.get(rule, {})
      row.update({f"{rule}_{s}": e.get(s, float("nan"))
                  for s in ("mean", "mean_ci_low", "mean_ci_high", "identical")})
    table.append(row)
  paths = [store.write_table(os.path.join(workdir, "privacy.csv"), table)]
  log(f"\n{metric} (%, mean [95% CI]) per threat × μ_H × sampling × mechanism × ε (δ = "
      f"{c.base.privacy.delta:g}, {c.base.privacy.accountant.upper()} accountant; σ relative "
      "to C for local, to the rule's sensitivity Δ for central, to a group sum's for "
      "distributed)")
  log(f"{'threat':9s} {'μ_H':12s} {'q':>4s} {'mechanism':16s} {'ε':>7s} {'σ':>8s}  "
      + "  ".join(f"{rule:>26s}" for rule in rules))
  for t in table:
    log(f"{t['threat']:9s} {t['mu_H']:12s} {t['sampling']:4.2g} {t['mechanism']:16s} "
        f"{t['epsilon']:7.3g} {t['noise_multiplier']:8.4g}  "
        + "  ".join(f"{_cell(t, r):>26s}" for r in rules))
  if any(t[f"{r}_identical"] == 1 for t in table for r in rules):
    log(results.EXACT_NOTE)
  # Paired differences on the same draws (evaluation.paired_difference: no interval where the
  # differences have no variance).
  values = {}

  def draws(pid):
    if pid not in values:
      values[pid] = tables.draw_values(store.load_point(store.point_path(workdir, pid)))
    return values[pid][metric]

  differences = []
  pairs = [("central", "local"), ("distributed", "local"), ("secagg", "none"),
           ("secagg3", "none")]
  for (threat, mu, q, a, e), by_rule in cells.items():
    for first, second in pairs:
      other = (threat, mu, q, second, e)
      if a != first or other not in cells:
        continue
      for rule in rules:
        if rule in by_rule and rule in cells[other]:
          d = evaluation.paired_difference(draws(by_rule[rule]["point"]),
                                           draws(cells[other][rule]["point"]))
          differences.append({"threat": threat, "mu_H": mu, "sampling": q, "a": a, "b": second,
                              "target_epsilon": e, "rule": rule, "mean": d["mean"],
                              "ci_low": d["ci_low"], "ci_high": d["ci_high"],
                              "deterministic": d["deterministic"], "text":
                              results.difference_text(d, scale=100, digits=2)})
  if differences:
    paths.append(store.write_table(os.path.join(workdir, "privacy_differences.csv"),
                                   [{k: v for k, v in d.items() if k != "text"}
                                    for d in differences]))
    log(f"\n{metric}: paired differences on the same draws (percentage points, paired t 95% CI)")
    for d in differences:
      eps = f"ε = {d['target_epsilon']:g}" if d["b"] != "none" else "no noise"
      log(f"  {d['threat']:9s} {d['mu_H']:12s} q = {d['sampling']:g}  {d['a']} − {d['b']} "
          f"({eps}), {d['rule']}: {d['text']}")
    if any(d["deterministic"] for d in differences):
      log(results.deterministic_note(identical_draws=False))
  return paths
