"""The study, question 1 (issue 29): where does the expected case depart from the worst case? A
federation whose heterogeneity differs across honest sets by construction, with corruption tied
to that structure.

The task: the convex one of configs/theory_synthetic.py (binary logistic regression with ℓ2
λ = 0.05, n = 10 clients, 100 examples each, 20 features, α = 1, robust D-GD: every constant
exact, L_S* by Newton per draw), plus a distinct group: clients 0..2 label with the model
shifted by `shift` along one shared direction (data.group_size, synthetic_group_shift), so an honest
set's heterogeneity depends on how many group members it keeps. Shift 0 is the control (the same
laws on a federation without a distinct group).

The laws of the Byzantine set all have E[b] = 2 = the declared f (p = 0.2 on average):
- concentrated: the group's clients Byzantine with probability 2/3 each, the others never (the
                corruption falls on the distinct clients: the honest sets are the homogeneous
                majority, less some);
- independent:  every client Byzantine with probability 0.2 (corruption ignores the group);
- avoiding:     the group never Byzantine, the other 7 clients with probability 2/7 each (the
                honest sets keep the whole group, a larger share of a smaller set);
- worst_case:   the honest set of size n − f = 8 maximizing the excess loss L_S(θ_T) − L_S*
                (the quantity shown), searched per rule.
Every point also trains the honest-only baseline on its draws (estimators.honest_optimum). The
tables and expected_vs_worst.png set E[· | b = f] and E[· | b ≤ f] of each law against the worst
case at b = f, P(b > f) beside; theory_vs_experiment.png and the theory table put the bound of
every draw (its own b, G², B²) beside the measured excess loss. About 15 minutes on 2 CPU cores
(14 min 20 s here at 3f4da58, the cores shared with other work):

  python launch/sweep.py --config=configs/study_groups.py --workdir=runs/study_groups

The attack is the line-searched ALIE (`optimal_alie`), as in configs/theory_synthetic.py.
"""

import ml_collections

from configs import theory_synthetic
from fedjax_robust.errors import ConfigError
from fedjax_robust.sweep import Point
from fedjax_robust.sweep import as_list
from fedjax_robust.sweep import axis
from fedjax_robust.sweep import product

GROUP = 3         # clients 0..GROUP−1 form the distinct group
EXPECTED_B = 2    # E[b] under every law, and the declared f
PLACEMENTS = ("concentrated", "independent", "avoiding", "worst_case")


def get_config():
  base = theory_synthetic.base()
  base.f = EXPECTED_B
  base.data.group_size = GROUP
  base.estimators.honest_optimum = True
  c = ml_collections.ConfigDict()
  c.base = base
  c.grid = ml_collections.ConfigDict({
      "aggregators": ("trimmed_mean", "nnm+trimmed_mean", "geometric_median"),
      "shift": (0.0, 3.0, 6.0), "placement": PLACEMENTS})
  c.plot = ml_collections.ConfigDict({"x": "shift", "series": "aggregator", "style": "mu_H",
                                      "metric": "theory_error"})
  return c


def placement_overrides(name: str, n: int) -> dict:
  """The μ_H of `name` on n clients, the group being clients 0..GROUP−1, with E[b] = EXPECTED_B."""
  if name == "concentrated":
    p = [EXPECTED_B / GROUP] * GROUP + [0.0] * (n - GROUP)
  elif name == "independent":
    p = [EXPECTED_B / n] * n
  elif name == "avoiding":
    p = [0.0] * GROUP + [EXPECTED_B / (n - GROUP)] * (n - GROUP)
  elif name == "worst_case":
    return {"honest_set": "worst_case"}
  else:
    raise ConfigError(f"grid.placement={name!r} is not a placement of this study; allowed: "
                      f"{', '.join(PLACEMENTS)}.")
  return {"honest_set": "bernoulli", "honest_set_options.bernoulli.p_per_client": tuple(p)}


def points(c):
  """aggregator × group shift × placement of the corruption; each grid axis a tuple or a
  comma-separated string ('trimmed_mean,geometric_median', '0,3', 'avoiding,worst_case')."""
  n = c.base.num_clients
  laws = [Point({"shift": s, "mu_H": name},
                {"data.synthetic_group_shift": s, **placement_overrides(name, n)})
          for s in as_list(c.grid.shift, float) for name in as_list(c.grid.placement, str)]
  return product(axis("aggregator", as_list(c.grid.aggregators, str)), laws)


def plot_note(c) -> str:
  n, t = c.base.num_clients, c.base.training
  return (f"Clients 0..{GROUP - 1} shifted by `shift`; E[b] = {EXPECTED_B} = declared f under "
          f"every law: concentrated = Bernoulli({EXPECTED_B}/{GROUP}) on the group, independent "
          f"= Bernoulli({EXPECTED_B}/{n}), avoiding = Bernoulli({EXPECTED_B}/{n - GROUP}) off "
          f"the group; worst_case = the {n - EXPECTED_B}-client honest set maximizing the "
          f"excess loss. Convex task (logistic regression, ℓ2 λ = {t.l2:g}, exact L, μ, L_S*), "
          f"robust D-GD with step {t.client_lr * t.server_lr:g}.")
