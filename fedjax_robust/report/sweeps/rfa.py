"""The report of configs/sweep_rfa.py (RFA's claims on accuracy against communication, issue
17): per threat each rule's honest held-out accuracy (mean, 95% CI, CVaR0.9), its secure averages
per round and numbers sent over the run (`registry.communication`), and its paired difference
from the mean; rfa_communication.csv, and rfa_accuracy_vs_communication.png plots accuracy
against the numbers sent.
"""

import os

import numpy as np

from fedjax_robust import evaluation
from fedjax_robust import results
from fedjax_robust import store
from fedjax_robust.report import tables


def report(c, rows, workdir, ids, log=print) -> list[str]:
  """Per threat: each rule's accuracy, communication and paired difference from the mean;
  writes rfa_communication.csv and rfa_accuracy_vs_communication.png."""
  metric = c.plot.metric
  by = {}
  for r in rows:
    if r["point"] in ids:
      by.setdefault(r["point"], {"threat": r["threat"], "rule": r["rule"]})
      if r["metric"] == metric and r["statistic"] in ("mean", "cvar90", "mean_ci_low",
                                                        "mean_ci_high", "identical"):
        by[r["point"]][r["statistic"]] = float(r["value"])
      if r["metric"].startswith("aux:") and r["statistic"] == "mean":
        by[r["point"]][r["metric"][4:]] = float(r["value"])
  table = []
  for threat in dict.fromkeys(e["threat"] for e in by.values()):
    mine = {e["rule"]: (pid, e) for pid, e in by.items() if e["threat"] == threat}
    if "mean" not in mine:
      continue
    base_values = tables.draw_values(store.load_point(store.point_path(workdir, mine["mean"][0])))
    for rule, (pid, e) in mine.items():
      values = tables.draw_values(store.load_point(store.point_path(workdir, pid)))
      d = evaluation.paired_difference(values[metric], base_values[metric])
      table.append({"threat": threat, "rule": rule, **{k: e.get(k, float("nan")) for k in (
          "mean", "mean_ci_low", "mean_ci_high", "cvar90", "gm_iterations", "secure_averages",
          "numbers_sent_total")}, "identical": int(e.get("identical", 0)),
                    "minus_mean": d["mean"], "minus_mean_low": d["ci_low"],
                    "minus_mean_high": d["ci_high"], "minus_mean_deterministic":
                        int(d["deterministic"]), "identical_draws": int(d["identical_draws"])})
  if not table:
    return []
  fields = list(table[0])
  path = os.path.join(workdir, "rfa_communication.csv")
  with open(path, "w") as fh:
    fh.write(",".join(fields) + "\n")
    for t in table:
      fh.write(",".join(str(t[k]) for k in fields) + "\n")
  log(f"\n{metric} (%, mean [95% CI], CVaR0.9), secure averages per round, numbers sent over "
      "the run, and the paired difference from the mean (points, paired t 95% CI)")
  texts = []
  for t in table:
    estimate = results.mean_text(t["mean"], t["mean_ci_low"], t["mean_ci_high"],
                                 identical=bool(t["identical"]), scale=100, digits=2)
    diff = results.difference_text(
        {"mean": t["minus_mean"], "ci_low": t["minus_mean_low"],
         "ci_high": t["minus_mean_high"], "deterministic": t["minus_mean_deterministic"]},
        scale=100, digits=2)
    texts += [estimate, diff]
    log(f"{t['threat']:11s} {t['rule']:22s} {estimate:>22s}  CVaR {100 * t['cvar90']:6.2f}  "
        f"secure avg/round {t['secure_averages']:5.2f}  numbers {t['numbers_sent_total']:.3g}  "
        f"vs mean {diff}")
  for note in results.report_notes(texts, any(t["identical_draws"] for t in table)):
    log(note)
  return [path] + _plot(table, workdir, metric)


def _bars(table) -> np.ndarray:
  """Error bars (%) of the entries' means: none (0) where the draws are identical."""
  return np.nan_to_num(np.array([[100 * (t["mean"] - t["mean_ci_low"]) for t in table],
                                 [100 * (t["mean_ci_high"] - t["mean"]) for t in table]]))


def _plot(table, workdir, metric) -> list[str]:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  threats = list(dict.fromkeys(t["threat"] for t in table))
  fig, axes = plt.subplots(1, len(threats), figsize=(5 * len(threats), 4.2), squeeze=False)
  for ax, threat in zip(axes[0], threats):
    mine = [t for t in table if t["threat"] == threat]
    gm = sorted((t for t in mine if t["rule"].startswith("geometric_median@")),
                key=lambda t: t["numbers_sent_total"])
    ax.errorbar([t["numbers_sent_total"] for t in gm], [100 * t["mean"] for t in gm],
                yerr=_bars(gm),
                fmt="o-", capsize=3, label="geometric median, k = " +
                ", ".join(t["rule"].split("@")[1] for t in gm))
    for t, marker in ((next((t for t in mine if t["rule"] == "mean"), None), "s"),
                      (next((t for t in mine if t["rule"] == "rfa_one_step"), None), "D")):
      if t is not None:
        ax.errorbar([t["numbers_sent_total"]], [100 * t["mean"]],
                    yerr=_bars([t]),
                    fmt=marker, capsize=3, label=t["rule"])
    ax.set_xscale("log")
    ax.set_xlabel("numbers sent over the run (secure averages × m(d + ⌈log₂ m⌉))")
    ax.set_title(f"threat: {threat}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  axes[0, 0].set_ylabel(f"E[{metric}] (%), 95% CI")
  fig.suptitle("RFA: honest accuracy against communication", fontsize=10)
  fig.tight_layout()
  path = os.path.join(workdir, "rfa_accuracy_vs_communication.png")
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return [path]
