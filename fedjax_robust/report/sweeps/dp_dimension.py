"""The report of configs/sweep_dp_dimension.py (does the cost of privacy plus robustness grow with
the model dimension d, and does compression bend the curve? issue 18): the honest error against d
per task, rule and setting, and what privacy adds to it, paired over the same draws with the
no-privacy control; dp_dimension.csv and dp_error_vs_dimension.png (log d, a panel per task).
"""

import math
import os

import numpy as np

from configs import sweep_dp_dimension
from fedjax_robust import results
from fedjax_robust import store
from fedjax_robust.report import tables


def _as_error(task, mean, low, high, *, difference=False):
  """Error = the honest loss (synthetic) or 1 − held-out accuracy (digits), with its CI in
  order: a (difference of) accuracy changes sign, and the CI's bounds swap."""
  sign = 1.0 if task == "synthetic" else -1.0
  offset = 0.0 if difference or task == "synthetic" else 1.0
  lo, hi = offset + sign * low, offset + sign * high
  return offset + sign * mean, min(lo, hi), max(lo, hi)


def report(c, rows, workdir, ids, log=print) -> list[str]:
  """Error against d per task, rule and setting, and what privacy adds to it: each private
  setting minus the no-privacy control at the same task, d and rule, paired over the same draws
  (`tables.paired_comparisons`); CSV and plot."""
  tags = ("task", "d", "setting", "rule")
  table = {}
  for r in rows:
    if r["point"] in ids and (r["metric"] == sweep_dp_dimension.METRICS[r["task"]]
                              or (r["metric"], r["statistic"]) == ("diverged", "share")):
      e = table.setdefault(r["point"], {**{k: r[k] for k in tags}, "d": int(float(r["d"]))})
      e[(r["metric"], r["statistic"])] = float(r["value"])
  excess = {}
  compared = tables.paired_comparisons(
      [{k: v for k, v in r.items() if k != "line"} for r in rows], workdir, series="setting",
      baseline="no_dp", only=sorted(ids), series_key=("privacy", "compression"), log=log)
  for cmp in compared:
    if cmp["metric"] == sweep_dp_dimension.METRICS[cmp["task"]] and cmp["a"] != "no_dp":
      m, lo, hi = _as_error(cmp["task"], cmp["mean"], cmp["ci_low"], cmp["ci_high"],
                            difference=True)
      excess[(cmp["task"], int(float(cmp["d"])), cmp["a"], cmp["rule"])] = {
          "dp_excess": m, "dp_excess_ci_low": lo, "dp_excess_ci_high": hi,
          "dp_excess_pairs": cmp["pairs"],
          # no variance (e.g. identical draws): an exact difference, no CI
          "dp_excess_deterministic": int(cmp["deterministic"]),
          "dp_excess_identical_draws": int(cmp["identical_draws"])}
  entries = []
  for e in table.values():
    metric = sweep_dp_dimension.METRICS[e["task"]]
    if (metric, "mean") not in e:
      continue
    m, lo, hi = _as_error(e["task"], e[(metric, "mean")],
                          *(e.get((metric, f"mean_ci_{b}"), math.nan) for b in ("low", "high")))
    entries.append({**{k: e[k] for k in tags}, "error": m, "error_ci_low": lo, "error_ci_high": hi,
                    "error_identical": int(e.get((metric, "identical"), 0)),
                    # a diverged draw is counted, never averaged in
                    "diverged_share": e.get(("diverged", "share"), math.nan),
                    **excess.get((e["task"], e["d"], e["setting"], e["rule"]),
                                 {**dict.fromkeys(("dp_excess", "dp_excess_ci_low",
                                                   "dp_excess_ci_high", "dp_excess_pairs"),
                                                  math.nan),
                                  "dp_excess_deterministic": 0,
                                  "dp_excess_identical_draws": 0})})
  if not entries:
    return []
  entries.sort(key=lambda e: (e["task"], e["setting"], e["rule"], int(e["d"])))
  path = store.write_table(os.path.join(workdir, "dp_dimension.csv"), entries)
  lines = []
  log("\nhonest error against d (synthetic: honest loss L_S; digits: held-out error 1 − acc), "
      "mean [95% CI]; private settings: (Δ what privacy adds, paired over the same draws with "
      "the no-privacy control, mean [paired-t 95% CI])")
  for task in dict.fromkeys(e["task"] for e in entries):
    for setting in dict.fromkeys(e["setting"] for e in entries):
      for rule in dict.fromkeys(e["rule"] for e in entries):
        mine = [e for e in entries if (e["task"], e["setting"], e["rule"]) == (task, setting, rule)]
        if mine:
          lines.append(f"{task:9s} {setting:24s} {rule:17s} " + "  ".join(
              f"d={int(e['d']):>6d}: " + _error_text(e)
              + (f" ({100 * e['diverged_share']:.0f}% diverged)"
                 if e["diverged_share"] > 0 else "")
              for e in mine))
  lines += results.report_notes(lines, any(e["dp_excess_identical_draws"] for e in entries))
  for line in lines:
    log(line)
  return [path, _plot(entries, workdir, sweep_dp_dimension.plot_note(c))]


def _error_text(e) -> str:
  """'error [CI]' and, for a private setting, ' (Δ diff [CI])'; '(exact)§' for identical draws,
  'deterministic§' for a difference without variance (no CI: nothing to test)."""
  text = (f"{e['error']:.4g} {results.EXACT_MARK}" if e["error_identical"] else
          f"{e['error']:.4g} [{e['error_ci_low']:.4g}, {e['error_ci_high']:.4g}]")
  if math.isnan(e["dp_excess"]):
    return text
  if e["dp_excess_deterministic"]:
    return text + f" (Δ {e['dp_excess']:+.3g} {results.DETERMINISTIC_MARK})"
  return text + (f" (Δ {e['dp_excess']:+.3g} [{e['dp_excess_ci_low']:+.3g}, "
                 f"{e['dp_excess_ci_high']:+.3g}])")


def _plot(entries, workdir, note) -> str:
  """Top: the error per task against d; bottom: what privacy adds (paired, CI), with a √d
  guide through the smallest d (the growth the PODC 2021 analysis predicts for ‖noise‖)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  tasks = list(dict.fromkeys(e["task"] for e in entries))
  rules = list(dict.fromkeys(e["rule"] for e in entries))
  styles = {"dp": "-", "dp+shared_random_k": "--", "dp+shared_random_k_fixed": "-.",
            "no_dp": ":"}
  fig, axes = plt.subplots(2, len(tasks), figsize=(6 * len(tasks), 8.6), squeeze=False)
  for column, task in enumerate(tasks):
    for row, (value, low, high) in enumerate((("error", "error_ci_low", "error_ci_high"),
                                              ("dp_excess", "dp_excess_ci_low",
                                               "dp_excess_ci_high"))):
      ax = axes[row, column]
      for i, rule in enumerate(rules):
        for setting, ls in styles.items():
          mine = [e for e in entries if not math.isnan(e[value])
                  and (e["task"], e["rule"], e["setting"]) == (task, rule, setting)]
          if not mine:
            continue
          ax.errorbar([e["d"] for e in mine], [e[value] for e in mine],
                      yerr=np.nan_to_num([[max(e[value] - e[low], 0) for e in mine],
                                          [max(e[high] - e[value], 0) for e in mine]]),
                      color=f"C{i}", linestyle=ls, marker="o", capsize=2, markersize=3,
                      label=f"{rule}, {setting}")
      ax.set_xscale("log")
      ax.set_xlabel("d (parameters sent)")
      what = "honest loss L_S" if task == "synthetic" else "honest held-out error"
      ax.set_ylabel(what if row == 0 else f"privacy's cost: Δ {what} vs no privacy")
      ax.set_title(task, fontsize=9)
      ax.grid(alpha=0.3)
      ds = sorted({e["d"] for e in entries if e["task"] == task})
      first = [e[value] for e in entries if (e["task"], e["setting"], e["d"]) == (task, "dp", ds[0])
               and not math.isnan(e[value])]
      if row == 1 and first and sum(first) > 0:
        anchor = sum(first) / len(first)
        ax.plot(ds, [anchor * math.sqrt(d / ds[0]) for d in ds], color="grey", lw=0.8,
                label="∝ √d through the privacy line's mean at the smallest d")
        # the highest CI bound drawn (the value itself where it has none: identical draws)
        ax.set_ylim(top=max(e[value] if math.isnan(e[high]) else e[high] for e in entries
                            if e["task"] == task and not math.isnan(e[value])) * 1.15)
    axes[0, column].legend(fontsize=6, ncol=1, loc="best")
  axes[1, -1].legend(fontsize=6, ncol=1, loc="best")
  return tables.save_figure(
      fig, os.path.join(workdir, "dp_error_vs_dimension.png"),
      "Privacy (solid), privacy + shared random-k at k ∝ d (dashed) and at fixed k (dash-dot), "
      "neither (dotted) against d", note, dpi=110)
