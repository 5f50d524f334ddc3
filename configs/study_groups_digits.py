"""The study, question 1 on a neural network (issue 29): configs/study_groups.py's question —
where does the expected case depart from the worst case when heterogeneity differs across honest
sets — on digits, with the distinct group made of labels.

The task: robust D-GD of the default MLP on digits as in configs/theory_digits.py (n = 10
clients, Dirichlet α = 1, full-batch gradients, step 0.05, 200 rounds, the line-searched ALIE),
with the clients 0..2 a distinct group (`grouping`):
- labels: `data.partition = "label_groups"`: clients 0..2 hold every example of the digits
          0, 1, 2, the other 7 clients the digits 3..9 (Dirichlet α = 1 on each side). An honest
          set that keeps no group member never sees the digits 0..2.
- none:   the control: Dirichlet α = 1 over all ten clients, no group (the same laws of the
          Byzantine set, which then fall on three ordinary clients).
The laws of the Byzantine set are configs/study_groups.py's, all with E[b] = 2 = the declared f:
concentrated on the group (Bernoulli(2/3) there, 0 elsewhere), independent (Bernoulli(0.2)),
avoiding it (Bernoulli(2/7) off the group), graph (Bernoulli(0.2) marginals joined by a Gaussian
copula, τ = 0.5, along the data-similarity graph: each client linked to its 2 nearest by label
distribution, so neighbours with similar data fail together), and the worst case: the honest
set of size n − f = 8 of largest final honest error 1 − accuracy (the headline's quantity). The
honest-only baseline trains on every point's draws. The tables and expected_vs_worst.png set
E[· | b = f] and E[· | b ≤ f] of each law against the worst case at b = f; the theory table
puts the non-convex bound of every draw (its own b, G², B²; L estimated, see
configs/theory_digits.py) beside the excess of ‖∇L_S‖² over the honest-only run. About 16
minutes on 2 CPU cores (12 min 30 s here for the 16 points of the first four placements, 3 min
for the graph law's 4):

  python launch/sweep.py --config=configs/study_groups_digits.py --workdir=runs/study_groups_digits

The rules are the trimmed mean and the geometric median (`--config.grid.aggregators` adds
nnm+trimmed_mean, ~7 minutes more here); S = 32 draws per law.
"""

import ml_collections

from configs import study_groups
from configs import theory_digits
from fedjax_robust.errors import ConfigError
from fedjax_robust.sweep import Point
from fedjax_robust.sweep import as_list
from fedjax_robust.sweep import axis
from fedjax_robust.sweep import product

GROUP_LABELS = (0, 1, 2)
GROUPINGS = ("none", "labels")
# configs/study_groups.py's placements, and the graph copula on the data-similarity graph.
PLACEMENTS = ("concentrated", "independent", "avoiding", "graph", "worst_case")
GRAPH_K = 2       # each client's neighbours: its 2 nearest by label distribution
GRAPH_TAU = 0.5   # the copula's τ (smaller: neighbours fail together more often)


def get_config():
  base = theory_digits.get_config().base
  base.f = study_groups.EXPECTED_B
  base.estimators.honest_optimum = True
  c = ml_collections.ConfigDict()
  c.base = base
  c.grid = ml_collections.ConfigDict({
      "aggregators": ("trimmed_mean", "geometric_median"), "grouping": GROUPINGS,
      "placement": PLACEMENTS})
  c.plot = ml_collections.ConfigDict({"x": "grouping", "series": "aggregator", "style": "mu_H",
                                      "metric": "honest_accuracy"})
  return c


def grouping_overrides(name: str) -> dict:
  """The data of `name`: the label group on clients 0..GROUP−1, or the plain Dirichlet control."""
  if name == "labels":
    return {"data.partition": "label_groups", "data.group_size": study_groups.GROUP,
            "data.group_labels": GROUP_LABELS}
  if name == "none":
    return {"data.partition": "dirichlet", "data.group_size": 0, "data.group_labels": ()}
  raise ConfigError(f"grid.grouping={name!r} is not a grouping of this study; allowed: "
                    f"{', '.join(GROUPINGS)}.")


def placement_overrides(name: str, n: int) -> dict:
  """configs/study_groups.py's placements, plus `graph`: Bernoulli(E[b]/n) marginals joined by a
  Gaussian copula along the data-similarity graph (each client linked to its GRAPH_K nearest by
  label distribution, so on the labelled federation the group's clients are each other's
  neighbours): corruption that spreads among clients with similar data."""
  if name == "graph":
    return {"honest_set": "graph_copula",
            "honest_set_options.graph_copula.p": study_groups.EXPECTED_B / n,
            "honest_set_options.graph_copula.tau": GRAPH_TAU,
            "graph.kind": "data_similarity", "graph.k": GRAPH_K}
  if name not in PLACEMENTS:
    raise ConfigError(f"grid.placement={name!r} is not a placement of this study; allowed: "
                      f"{', '.join(PLACEMENTS)}.")
  return study_groups.placement_overrides(name, n)


def points(c):
  """aggregator × grouping × placement of the corruption; each grid axis a tuple or a
  comma-separated string ('trimmed_mean,geometric_median', 'labels', 'avoiding,worst_case')."""
  n = c.base.num_clients
  groupings = [grouping_overrides(g) for g in as_list(c.grid.grouping, str)]  # refuse early
  laws = [Point({"grouping": g, "mu_H": name},
                {**o, **placement_overrides(name, n)})
          for g, o in zip(as_list(c.grid.grouping, str), groupings)
          for name in as_list(c.grid.placement, str)]
  return product(axis("aggregator", as_list(c.grid.aggregators, str)), laws)


def plot_note(c) -> str:
  n, t = c.base.num_clients, c.base.training
  g = study_groups.GROUP
  return (f"labels: clients 0..{g - 1} hold the digits {GROUP_LABELS[0]}..{GROUP_LABELS[-1]}, "
          f"the others the rest (Dirichlet α = {c.base.data.alpha:g} on each side); none: "
          f"Dirichlet over all. E[b] = {study_groups.EXPECTED_B} = declared f under every law: "
          f"concentrated = Bernoulli({study_groups.EXPECTED_B}/{g}) on clients 0..{g - 1}, "
          f"independent = Bernoulli({study_groups.EXPECTED_B}/{n}), avoiding = "
          f"Bernoulli({study_groups.EXPECTED_B}/{n - g}) off them, graph = Bernoulli("
          f"{study_groups.EXPECTED_B}/{n}) marginals in a Gaussian copula (τ = {GRAPH_TAU:g}) "
          f"on the {GRAPH_K}-NN label-distribution graph; worst_case = the "
          f"{n - study_groups.EXPECTED_B}-client honest set of lowest final honest accuracy. "
          f"Digits MLP, robust D-GD, step {t.client_lr * t.server_lr:g}, {t.num_rounds} rounds.")
