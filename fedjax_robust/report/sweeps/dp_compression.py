"""The report of configs/sweep_dp_compression.py (privacy × compression × robust rule on digits
under ALIE, issue 18's table): the honest held-out accuracy (mean, 95% CI) per cell with the ε
reached and the bits per round, printed and written to dp_compression.csv.
"""

import json
import os

from fedjax_robust import store


def report(c, rows, workdir, ids, log=print) -> list[str]:
  """The table: per (privacy, compression) the accuracy of each rule that ran with its 95% CI,
  the ε reached (DP-SGD, the client with the fewest examples) and the bits one round sends."""
  metric = c.plot.metric
  cells = {}
  for r in rows:
    if r["point"] not in ids or r["metric"] != metric:
      continue
    cell = cells.setdefault((r["privacy"], r["compression"]), {})
    cell.setdefault(r["rule"], {"point": r["point"]})[r["statistic"]] = float(r["value"])
  if not cells:
    return []
  # The columns: the rules that ran, in the sweep's order (not every rule the config knows).
  rules = list(dict.fromkeys(rule for by_rule in cells.values() for rule in by_rule))
  records = {}
  for cell, by_rule in cells.items():
    with open(store.config_path(workdir, next(iter(by_rule.values()))["point"])) as fh:
      records[cell] = json.load(fh)
  # An uncompressed round sends 32·d bits per client: what every compressed point records.
  plain = next((r["compression"]["uncompressed_bits_per_round"] for r in records.values()
                if r.get("compression")), float("nan"))
  table = []
  for (p, k), by_rule in cells.items():
    privacy, compression = records[p, k].get("privacy"), records[p, k].get("compression")
    row = {"privacy": p, "compression": k,
           "epsilon": privacy["epsilon"] if privacy else float("inf"),
           "noise_multiplier": privacy["noise_multiplier"] if privacy else 0.0,
           "bits_per_round": compression["bits_per_round"] if compression else plain}
    for rule in rules:
      e = by_rule.get(rule, {})
      row.update({f"{rule}_{s}": e.get(s, float("nan"))
                  for s in ("mean", "mean_ci_low", "mean_ci_high")})
    table.append(row)
  path = store.write_table(os.path.join(workdir, "dp_compression.csv"), table)
  log(f"\n{metric} (%, mean [95% CI]) per privacy × compression; ε at δ = "
      f"{c.base.privacy.delta:g} for the client with the fewest examples")
  log(f"{'privacy':8s} {'compression':16s} {'ε':>7s} {'σ':>7s} {'bits/round':>11s}  "
      + "  ".join(f"{rule:>26s}" for rule in rules))
  for t in table:
    log(f"{t['privacy']:8s} {t['compression']:16s} {t['epsilon']:7.3g} "
        f"{t['noise_multiplier']:7.3g} {t['bits_per_round']:11.3g}  "
        + "  ".join(f"{100 * t[f'{r}_mean']:6.2f} [{100 * t[f'{r}_mean_ci_low']:6.2f}, "
                    f"{100 * t[f'{r}_mean_ci_high']:6.2f}]" for r in rules))
  return [path]

