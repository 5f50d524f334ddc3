"""Privacy as deployed × robust rule × μ_H × client sampling on digits under ALIE (issue 33).

Digits, Dirichlet α = 1, n = 24 clients, multinomial logistic regression (d = 650), declared
f = 3, ALIE z = 3, each client Byzantine with p = 0.1 (independent) or through clusters of the
same mean (sweep_core's "clustered"), 32 draws, 100 rounds, the same draws in every cell of a μ_H
(grid.threat "ipm_p0.2", inner product manipulation with ε = 10 at p = 0.2 and f = 5, adds the
cells without noise, none and secagg, where the attack breaks the mean):

  - mechanism: none; "secagg" / "secagg3" (secure aggregation over groups of 2 / 3, no noise;
    groups of 3 only at p = 0.1, f = 3: 8 group means); "local"
    (client-level DP, `privacy.kind = "client"`); "central" (a trusted server clips to C, runs
    the rule, adds noise σΔ once, Δ the rule's sensitivity: 2C/m for the mean, 2C/(m − 2f) for
    the trimmed mean, 2C for the geometric median; m of n sampled without replacement, replace-one
    adjacency); "central_poisson" (the same with Poisson client sampling at q < 1, add/remove
    adjacency: the mean with the fixed denominator q·n, Δ = C/(q·n); the trimmed mean is refused
    there); "distributed" (secure aggregation over groups of 2, each client adding half its
    group's noise);
  - ε at δ = 1e-5 (every DP cell calibrates its σ to it, RDP accountant for all mechanisms):
    grid.epsilon = 8, 32, 128. User-level DP over 24 users needs budgets this large for the
    model to learn at all (deployed systems average 10⁴–10⁶ clients per round); the grid shows
    how mechanisms and rules order, not a deployable ε;
  - sampling: the share q of clients per round (m = q·n, uniformly without replacement): central
    DP is amplified by it, local and distributed DP are not (the server sees who takes part);
    secure aggregation runs with every client (its groups of 2 need 2f < m/2 group means);
  - rule: mean, trimmed mean, geometric median.

  python launch/sweep.py --config=configs/sweep_privacy.py --workdir=runs/privacy

The report (`fedjax_robust/report/sweeps/privacy.py`) prints the honest held-out accuracy (mean,
95% CI) per cell with the ε reached and σ, central minus local at equal ε per rule, and what
secure aggregation costs each rule, and writes privacy.csv.
"""

import ml_collections

from configs import default
from configs import sweep_core
from fedjax_robust import domains as D
from fedjax_robust.sweep import Point
from fedjax_robust.sweep import as_list

MECHANISMS = {"none": {"privacy.kind": "none"},
              "secagg": {"privacy.kind": "none", "secure_aggregation.group_size": 2},
              "secagg3": {"privacy.kind": "none", "secure_aggregation.group_size": 3},
              "local": {"privacy.kind": "client"},
              "central": {"privacy.kind": "central"},
              "central_poisson": {"privacy.kind": "central",
                                  "training.client_sampling": "poisson"},
              "distributed": {"privacy.kind": "distributed",
                              "secure_aggregation.group_size": 2}}
# Mechanisms with a privacy budget (one point per ε), and those that run with every client.
PRIVATE = ("local", "central", "central_poisson", "distributed")
EVERY_CLIENT = ("secagg", "secagg3", "distributed")
# Poisson sampling needs a sample (q < 1); the trimmed band has no add/remove bound there.
SAMPLED_ONLY = ("central_poisson",)
NOT_UNDER_POISSON = ("trimmed_mean",)
RULES = ("mean", "trimmed_mean", "geometric_median")
# Threats: (corruption p, declared f, attack overrides). "alie_p0.1" is the base (ALIE z = 3,
# which costs the mean under 1 pp here); "ipm_p0.2" (inner product manipulation, ε = 10: the
# Byzantine clients send −10× the honest mean, which breaks the mean) runs only the mechanisms
# without noise, every client every round: what secure aggregation costs a rule where the
# attack bites (groups of 3 leave 8 group means, too few for f = 5).
THREATS = {"alie_p0.1": (0.1, 3, {}),
           "ipm_p0.2": (0.2, 5, {"attack": "ipm", "attack_options.ipm.epsilon": 10.0})}
NOISELESS = ("none", "secagg")


def get_config():
  base = default.get_config()
  base.num_clients = 24
  base.f = 3
  base.num_samples = 32
  base.model = "logistic"
  base.aggregator = RULES[0]
  base.estimators.honest_optimum = False
  base.theory.enabled = False
  base.training.num_rounds = 100
  base.training.eval_every = 20
  base.privacy.clip = 0.5
  base.privacy.accountant = "rdp"
  c = ml_collections.ConfigDict()
  c.base = base
  c.grid = ml_collections.ConfigDict({
      "mechanism": tuple(MECHANISMS), "epsilon": (8.0, 32.0, 128.0), "sampling": (1.0, 0.5),
      "threat": tuple(THREATS),
      "mu_h": ("independent", "clustered"), "rules": RULES})
  c.plot = ml_collections.ConfigDict({"x": "mechanism", "series": "rule", "style": "epsilon",
                                      "metric": "honest_holdout_accuracy",
                                      "series_keys": ("aggregator",)})
  return c


def points(c):
  n = c.base.num_clients
  mechanisms = as_list(c.grid.mechanism, str)
  for k in mechanisms:
    D.Choice(*MECHANISMS).check("grid.mechanism", k)
  epsilons = as_list(c.grid.epsilon, float)
  for e in epsilons:
    D.Float(0, low_open=True).check("grid.epsilon", e)
  samplings = as_list(c.grid.sampling, float)
  for q in samplings:
    D.Float(0, 1, low_open=True).check("grid.sampling", q)
  threats = as_list(c.grid.threat, str)
  for threat in threats:
    D.Choice(*THREATS).check("grid.threat", threat)
  out = []
  for threat in threats:
    p, f, attack = THREATS[threat]
    for name in as_list(c.grid.mu_h, str):
      law = {**sweep_core.mu_h_overrides(name, p), "f": f, **attack}
      for q in samplings:
        m = round(q * n)
        for k in mechanisms:
          if ((k in EVERY_CLIENT and m < n) or (k in SAMPLED_ONLY and m == n)
              or (threat != "alie_p0.1" and (k not in NOISELESS or m < n))):
            continue
          for e in (epsilons if k in PRIVATE else (0.0,)):
            for r in as_list(c.grid.rules, str):
              if k in SAMPLED_ONLY and r in NOT_UNDER_POISSON:
                continue
              out.append(Point(
                  {"threat": threat, "mu_H": name, "sampling": q, "mechanism": k, "epsilon": e,
                   "rule": r},
                  {**law, **MECHANISMS[k], "privacy.target_epsilon": e, "aggregator": r,
                   "training.clients_per_round": 0 if m == n else m}))
  return out


def plot_note(c) -> str:
  return (f"digits, n = {c.base.num_clients}, ALIE z = {c.base.attack_options.alie.z} at p = 0.1 "
          f"(f = 3) or IPM ε = 10 at p = 0.2 (f = 5); clip C = {c.base.privacy.clip}, δ = "
          f"{c.base.privacy.delta:g}; secure aggregation over groups of 2.")
