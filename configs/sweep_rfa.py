"""RFA's claims on accuracy against communication (issue 17): do 3–5 Weiszfeld iterations
suffice, and does the one-step variant already beat the mean?

Digits with Dirichlet α = 0.3 (the heterogeneous split of the RFA paper's spirit), n = 25, each
client Byzantine independently with p = 0.15, declared f = 5, 64 draws × 100 rounds; threats: no
attack, ALIE (z = 3) and label flip. Rules: the mean (one secure average a round), RFA's one-step
variant (`rfa_one_step`: one secure average from the previous aggregate) and the geometric median
with at most k Weiszfeld updates, k ∈ {1, 2, 3, 5, 10} (1 + the updates used secure averages:
z_0 and one per update; it may stop earlier by its tolerances, which the table reports).

  python launch/sweep.py --config=configs/sweep_rfa.py --workdir=runs/rfa

The report (`fedjax_robust/report/sweeps/rfa.py`) gives per threat each rule's honest held-out
accuracy (mean, 95% CI, CVaR0.9), its secure averages per round and numbers sent over the run
(`registry.communication`), and its paired difference from the mean;
rfa_accuracy_vs_communication.png plots accuracy against the numbers sent.
"""

import ml_collections

from configs import default
from fedjax_robust import domains as D
from fedjax_robust.sweep import Point
from fedjax_robust.sweep import as_list

MAXITER = (1, 2, 3, 5, 10)
THREATS = ("none", "alie", "label_flip")


def rules() -> dict[str, dict]:
  out = {"mean": {"aggregator": "mean"}, "rfa_one_step": {"aggregator": "rfa_one_step"}}
  for k in MAXITER:
    out[f"geometric_median@{k}"] = {"aggregator": "geometric_median",
                                    "aggregator_options.geometric_median.maxiter": k}
  return out


def get_config():
  base = default.get_config()
  base.num_samples = 64
  base.training.num_rounds = 100
  base.data.alpha = 0.3
  base.theory.enabled = False
  c = ml_collections.ConfigDict()
  c.base = base
  c.grid = ml_collections.ConfigDict({"rules": tuple(rules()), "threats": THREATS})
  c.plot = ml_collections.ConfigDict({"x": "threat", "series": "rule", "style": "threat",
                                      "metric": "honest_holdout_accuracy",
                                      "series_keys": ("aggregator", "aggregator_options")})
  return c


def points(c):
  table = rules()
  names = as_list(c.grid.rules, str)
  for r in names:
    D.Choice(*table).check("grid.rules", r)
  return [Point({"threat": t, "rule": r}, {"attack": t, **table[r]})
          for t in as_list(c.grid.threats, str) for r in names]


def plot_note(c) -> str:
  return (f"digits, Dirichlet α = {c.base.data.alpha}, n = {c.base.num_clients}, Bernoulli(p = "
          f"{c.base.honest_set_options.bernoulli.p}), f = {c.base.f}; geometric_median@k: at most "
          "k Weiszfeld updates.")
