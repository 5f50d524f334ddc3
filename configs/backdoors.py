"""Backdoor attacks × backdoor defences × μ_H on digits (issue 32, "Measurement"), as the
benchmark suites (FLPoison, BackFed, FedMLSecurity) set them up, under a random honest set.

Digits, Dirichlet α = 1, n = 20 clients, an MLP with one hidden layer of 32 units (FLARE reads its
penultimate layer), declared f = round(p·n) = 4, each client Byzantine with p = 0.2
(independent) or through clusters of the same mean p (sweep_core's "clustered": 5 clusters of 4,
a cluster compromised with π = p/0.8, then each member with q1 = 0.8), 32 draws, the same draws
in every cell of a μ_H, 80 rounds, evaluated every 10; the server's root data set (FLTrust,
FLARE) is 64 examples of the test split. The Byzantine clients attack in rounds [0, 50) only
(`training.attack_rounds`), so the last 30 rounds measure how long a backdoor survives:

  - attack (ATTACKS): "square" (pixel-patch backdoor, the square trigger), "pattern" (the
    pixel-pattern trigger), "blended" (a blended trigger), "dba" (distributed backdoor: each
    attacker stamps a part of the trigger), "edge_case" (tail inputs with the target label),
    "neurotoxin" (backdoor on the coordinates the honest updates change least),
    "model_replacement" (backdoor scaled by γ = n/b for the realized b), "a3fl" (the trigger
    optimized every round against the global model and an unlearning adversary);
  - defence (DEFENCES): "mean" (none), "norm_clipping" (every update clipped to L2 norm
    NORM_THRESHOLD, then the mean), "weak_dp" (the same clipping and N(0, σ²) per coordinate,
    Sun et al.'s σ = 0.025), "flame",
    "foolsgold", "fldetector", "robust_lr", "crfl", "flare", "fltrust", "trimmed_mean".

  python launch/sweep.py --config=configs/backdoors.py --workdir=runs/backdoors

Main-task accuracy here is `test_accuracy`: the global model's accuracy on the clean global test
split (the suites' "main accuracy"); backdoor success is `backdoor_accuracy`: the share of
triggered test inputs whose true label is not the target that the model classifies as the
target. The report (`fedjax_robust/report/sweeps/backdoors.py`) prints and writes to CSV, per
μ_H × attack × defence: E[backdoor success] and E[main accuracy] with their 95% CI and the CVaR90
of backdoor success (the mean of the worst 10% of draws) at the last round; E[backdoor success |
b] for every realized b with its draws; and the backdoor success at each evaluation after the
attack stops (durability).
"""

import ml_collections

from configs import default
from configs import sweep_core
from fedjax_robust import domains as D
from fedjax_robust.sweep import Point
from fedjax_robust.sweep import as_list

# The corruption rate p of both laws (the independent law's and the clustered law's marginal).
P = 0.2
# The Byzantine clients act in rounds [0, ATTACK_ROUNDS) of training.num_rounds.
ATTACK_ROUNDS = 50
# norm_clipping's L2 threshold, in the simulator's update units: measured on this job without
# attack (4 draws, 100 rounds, static_clipping+mean), the share of honest updates clipped is 0 at
# 1.0, 24% at 0.5, 82% at 0.3 (the norms grow over training); 1.0 leaves honest updates alone
# and clips an update boosted several times (model replacement's γ = n/b ≈ 5) once training
# has moved.
NORM_THRESHOLD = 1.0
# Weak DP's noise (Sun, Kairouz, Suresh, McMahan 2019: σ = 0.025), with norm_clipping's threshold.
# Measured (16 draws, 80 rounds, the square trigger, independent law): backdoor success at the
# last attacked round 0.67 against the mean's 0.87, main accuracy 0.89 against 0.91.
WEAK_DP_SIGMA = 0.025

# name -> config overrides. "square" names the trigger explicitly, so a later change of the
# backdoor's default trigger does not change this sweep's numbers.
ATTACKS = {
    "square": {"attack": "backdoor", "attack_options.backdoor.trigger": "square"},
    "pattern": {"attack": "backdoor", "attack_options.backdoor.trigger": "pattern"},
    "blended": {"attack": "backdoor", "attack_options.backdoor.trigger": "blended"},
    "dba": {"attack": "dba"},
    "edge_case": {"attack": "edge_case"},
    "neurotoxin": {"attack": "neurotoxin"},
    "model_replacement": {"attack": "model_replacement"},
    "a3fl": {"attack": "a3fl"},
}
DEFENCES = {
    "mean": {"aggregator": "mean"},
    "norm_clipping": {"aggregator": "static_clipping+mean",
                      "aggregator_options.static_clipping.threshold": NORM_THRESHOLD},
    "weak_dp": {"aggregator": "weak_dp",
                "aggregator_options.weak_dp.threshold": NORM_THRESHOLD,
                "aggregator_options.weak_dp.sigma": WEAK_DP_SIGMA},
    "flame": {"aggregator": "flame"},
    "foolsgold": {"aggregator": "foolsgold"},
    "fldetector": {"aggregator": "fldetector"},
    "robust_lr": {"aggregator": "robust_lr"},
    "crfl": {"aggregator": "crfl"},
    "flare": {"aggregator": "flare"},
    "fltrust": {"aggregator": "fltrust"},
    "trimmed_mean": {"aggregator": "trimmed_mean"},
}
MU_H = ("independent", "clustered")


def get_config():
  base = default.get_config()
  base.num_clients = 20
  base.f = round(P * base.num_clients)
  base.num_samples = 32
  base.model = "mlp"
  base.model_options.mlp.hidden = (32,)
  base.aggregator = "mean"
  base.attack = "backdoor"
  base.data.root_examples = 64
  base.estimators.honest_optimum = False
  base.theory.enabled = False
  base.training.num_rounds = 80
  base.training.eval_every = 10
  base.training.attack_rounds = ATTACK_ROUNDS
  c = ml_collections.ConfigDict()
  c.base = base
  c.grid = ml_collections.ConfigDict({"attack": tuple(ATTACKS), "defence": tuple(DEFENCES),
                                      "mu_h": MU_H})
  # The generic tables, figures and paired comparisons: main accuracy, each defence against the
  # first ("mean") at the same attack and μ_H (the same draws); backdoor success is the report's.
  c.plot = ml_collections.ConfigDict({"x": "attack", "series": "defence", "style": "mu_H",
                                      "metric": "test_accuracy",
                                      "series_keys": ("aggregator", "aggregator_options")})
  return c


def points(c):
  """μ_H × attack × defence, each grid axis a tuple or a comma-separated string; a value outside
  MU_H, ATTACKS or DEFENCES is a ConfigError naming the axis, the value and what is allowed."""
  laws = as_list(c.grid.mu_h, str)
  for name in laws:
    D.Choice(*MU_H).check("grid.mu_h", name)
  attacks = as_list(c.grid.attack, str)
  for name in attacks:
    D.Choice(*ATTACKS).check("grid.attack", name)
  defences = as_list(c.grid.defence, str)
  for name in defences:
    D.Choice(*DEFENCES).check("grid.defence", name)
  return [Point({"mu_H": law, "attack": a, "defence": d},
                {**sweep_core.mu_h_overrides(law, P), **ATTACKS[a], **DEFENCES[d]})
          for law in laws for a in attacks for d in defences]


def plot_note(c) -> str:
  rounds = c.base.training.get("attack_rounds", 0)
  window = f"rounds [0, {rounds})" if rounds else "every round"
  return (f"digits, n = {c.base.num_clients}, MLP {tuple(c.base.model_options.mlp.hidden)}, "
          f"p = {P:g} (independent, or {sweep_core.CLUSTERS} clusters with π = p/"
          f"{sweep_core.Q1:g}, q1 = {sweep_core.Q1:g}), declared f = {c.base.f}; attackers act "
          f"in {window}; root data {c.base.data.root_examples} examples.")
