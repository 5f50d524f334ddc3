"""The report of configs/sweep_deployed.py (rounds as deployed, issue 17): per block the held-out
accuracy (mean, 95% CI), the fine-tuned held-out accuracy, and paired differences: geometric
median − mean per personalization, personalized − global per rule; and in the deployed block
each rule − the mean per threat, with b_t among the sampled and the share of rounds with
b_t <= f; writes deployed_report.csv.
"""

import os

from configs import sweep_deployed
from fedjax_robust import evaluation
from fedjax_robust import results
from fedjax_robust import store
from fedjax_robust.report import tables


def _entries(rows, ids, metrics):
  by = {}
  for r in rows:
    if r["point"] not in ids:
      continue
    e = by.setdefault(r["point"], {k: r[k] for k in ("block", "setting", "rule")})
    if r["metric"] in metrics and r["statistic"] in ("mean", "mean_ci_low", "mean_ci_high",
                                                     "identical"):
      e[f"{r['metric']}:{r['statistic']}"] = float(r["value"])
    if r["metric"].startswith("aux:sampled") and r["statistic"] == "mean":
      e[r["metric"][4:]] = float(r["value"])
  return by


def report(c, rows, workdir, ids, log=print) -> list[str]:
  """The tables of the module docstring; writes deployed_report.csv."""
  held, tuned = "honest_holdout_accuracy", "honest_finetuned_holdout_accuracy"
  by = _entries(rows, ids, (held, tuned))
  values = {pid: tables.draw_values(store.load_point(store.point_path(workdir, pid)))
            for pid in by}
  find = {(e["block"], e["setting"], e["rule"]): pid for pid, e in by.items()}
  lines = []

  def cell(e, metric):
    if f"{metric}:mean" not in e:
      return "n/a"
    return results.mean_text(*(e[f"{metric}:{k}"] for k in ("mean", "mean_ci_low",
                                                            "mean_ci_high")),
                             identical=bool(e.get(f"{metric}:identical")), scale=100, digits=2)

  def paired(a, b, metric):
    if a not in find or b not in find or metric not in values[find[a]]:
      return None
    return evaluation.paired_difference(values[find[a]][metric], values[find[b]][metric])

  identical_draws = []

  def fmt(d):
    if d is not None and d["deterministic"]:
      identical_draws.append(d["identical_draws"])
    return results.difference_text(d, scale=100, digits=2)

  table = []
  lines.append("\nClaim (c), no corruption: held-out accuracy % (mean [95% CI]) without and "
               f"with {sweep_deployed.FINE_TUNE_STEPS} fine-tuning steps")
  for (block, setting, rule), pid in find.items():
    if block != "personalization":
      continue
    e = by[pid]
    lines.append(f"  {setting:14s} {rule:6s} held-out {cell(e, held)}   fine-tuned "
                 f"{cell(e, tuned)}")
    table.append(e)
  lines.append("  paired differences (points, paired t 95% CI):")
  for setting in sweep_deployed.PERSONALIZATIONS:
    for metric, label in ((held, "held-out"), (tuned, "fine-tuned")):
      d = paired(("personalization", setting, "gm"), ("personalization", setting, "mean"), metric)
      lines.append(f"    gm − mean, {setting:14s} {label:10s} {fmt(d)}")
  for rule in ("mean", "gm"):
    d = paired(("personalization", "personal_head", rule), ("personalization", "none", rule),
               held)
    lines.append(f"    personal head − global, {rule:6s} held-out   {fmt(d)}")
  lines.append(f"\nDeployed rounds ({c.grid.clients_per_round} of {c.base.num_clients} sampled, "
               "1 FedAvg epoch): held-out accuracy %, rule − mean (paired), b_t among the "
               "sampled (mean), share of rounds with b_t <= f")
  for (block, setting, rule), pid in find.items():
    if block != "deployed":
      continue
    e = by[pid]
    d = paired(("deployed", setting, rule), ("deployed", setting, "mean"), held)
    lines.append(f"  {setting:11s} {rule:13s} {cell(e, held)}  vs mean {fmt(d)}  b_t "
                 f"{e.get('sampled_byzantine', float('nan')):.3f}  b_t<=f "
                 f"{100 * e.get('sampled_within_f', float('nan')):.1f}%")
    table.append(e)
  lines += results.report_notes(lines, any(identical_draws))
  for line in lines:
    log(line)
  if not table:
    return []
  fields = sorted({k for t in table for k in t})
  path = os.path.join(workdir, "deployed_report.csv")
  with open(path, "w") as fh:
    fh.write(",".join(fields) + "\n")
    for t in table:
      fh.write(",".join(str(t.get(k, "")) for k in fields) + "\n")
  return [path]
