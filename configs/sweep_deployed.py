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

The report (`fedjax_robust/report/sweeps/deployed.py`) prints per block the held-out accuracy
(mean, 95% CI), the fine-tuned held-out accuracy, and paired differences: geometric median − mean
per personalization, personalized − global per rule; and in the deployed block each rule − the
mean per threat.
"""

import ml_collections

from configs import sweep_rfa
from fedjax_robust import domains as D
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
