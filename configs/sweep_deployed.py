"""Rounds as deployed (issue 17): RFA's claim (c), and robust rules under client sampling with
FedAvg local epochs.

Digits with Dirichlet α = 0.3, n = 25, 20% of each client's data held out, 64 draws × 100 rounds.

- block "personalization" (RFA's claim c): no corruption (p = 0, no attack; the 64 draws differ
  by their training randomness only). The mean and the geometric median, each with one global
  model or with a personal output layer per client (FedPer), every client's model also measured
  after 10 full-batch fine-tuning steps on its own data. Is there a gap between the geometric
  median and the mean without corruption, and does personalization close it?
- block "deployed": each client Byzantine with p = 0.15, declared f = 5; 15 of the 25 clients
  sampled per round, one local epoch of FedAvg (minibatches of 32 without replacement, model
  deltas, no local momentum); threats none, ALIE (z = 3) and label flip; the mean, RFA's one-step
  rule and the geometric median. The report gives b_t among the sampled and the share of rounds
  with b_t <= f.

  python launch/sweep.py --config=configs/sweep_deployed.py --workdir=runs/deployed

The report prints per block the held-out accuracy (mean, 95% CI), the fine-tuned held-out
accuracy, and paired differences: geometric median − mean per personalization, personalized −
global per rule; and in the deployed block each rule − the mean per threat.
"""

import os

import ml_collections

from configs import sweep_rfa
from fedjax_robust import domains as D
from fedjax_robust import evaluation
from fedjax_robust import results
from fedjax_robust import sweep
from fedjax_robust.sweep import Point
from fedjax_robust.sweep import as_list

RULES = {"mean": "mean", "gm": "geometric_median", "rfa_one_step": "rfa_one_step"}
PERSONALIZATIONS = ("none", "personal_head")
THREATS = ("none", "alie", "label_flip")
FINE_TUNE_STEPS = 10
SAMPLED = 15


def get_config():
  base = sweep_rfa.get_config().base  # RFA's setting: digits α = 0.3, 64 draws × 100 rounds
  base.estimators.honest_optimum = False
  base.training.fine_tune_steps = FINE_TUNE_STEPS
  c = ml_collections.ConfigDict()
  c.base = base
  c.grid = ml_collections.ConfigDict({
      "personalization_rules": ("mean", "gm"), "personalizations": PERSONALIZATIONS,
      "deployed_rules": ("mean", "rfa_one_step", "gm"), "threats": THREATS,
      "clients_per_round": SAMPLED})
  c.plot = ml_collections.ConfigDict({"x": "setting", "series": "rule", "style": "block",
                                      "metric": "honest_holdout_accuracy",
                                      "series_keys": ("aggregator",)})
  return c


def points(c):
  for key in ("personalization_rules", "deployed_rules"):
    for r in as_list(c.grid[key], str):
      D.Choice(*RULES).check(f"grid.{key}", r)
  out = []
  for p in as_list(c.grid.personalizations, str):
    for r in as_list(c.grid.personalization_rules, str):
      out.append(Point({"block": "personalization", "setting": p, "rule": r},
                       {"aggregator": RULES[r], "attack": "none",
                        "honest_set_options.bernoulli.p": 0.0,
                        "training.personalization": p}))
  for t in as_list(c.grid.threats, str):
    for r in as_list(c.grid.deployed_rules, str):
      out.append(Point({"block": "deployed", "setting": t, "rule": r},
                       {"aggregator": RULES[r], "attack": t,
                        "training.clients_per_round": int(c.grid.clients_per_round),
                        "training.local_epochs": 1, "training.client_update": "model_delta",
                        "training.client_momentum": 0.0, "training.fine_tune_steps": 0}))
  return out


def plot_note(c) -> str:
  return (f"digits, Dirichlet α = {c.base.data.alpha}, n = {c.base.num_clients}; personalization: "
          f"no corruption; deployed: p = {c.base.honest_set_options.bernoulli.p}, f = "
          f"{c.base.f}, {c.grid.clients_per_round} clients per round, 1 FedAvg epoch.")


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
  values = {pid: sweep.draw_values(sweep.load_point(sweep.point_path(workdir, pid)))
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
               f"with {FINE_TUNE_STEPS} fine-tuning steps")
  for (block, setting, rule), pid in find.items():
    if block != "personalization":
      continue
    e = by[pid]
    lines.append(f"  {setting:14s} {rule:6s} held-out {cell(e, held)}   fine-tuned "
                 f"{cell(e, tuned)}")
    table.append(e)
  lines.append("  paired differences (points, paired t 95% CI):")
  for setting in PERSONALIZATIONS:
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
