"""The project's core question on digits: at the same marginal corruption rate p, how does the
expected honest accuracy under independent, clustered and graph-correlated corruption compare
with the worst case, for mean / trimmed mean / geometric median / NNM+trimmed mean /
bucketing+geometric median?

For each p the server declares f = round(p·n), and:
- independent: each client Byzantine with probability p (bernoulli);
- clustered:   5 clusters of 5; a cluster is compromised with π = p/0.8, then its members are
               Byzantine with q1 = 0.8 (marginal π·q1 = p);
- graph:       a Gaussian copula with marginals p along the clients' data-similarity graph
               (3-nearest neighbours in label distribution; τ = 0.5): clients with similar
               data are corrupted together;
- worst_case:  the classic worst case at the declared f: the honest set of size n − f
               maximizing the mean of a criterion over R seeds under the configured attack
               (honest_set_options.worst_case.criterion: "final_loss" by default, or the
               quantity a sweep plots, worst_case.CRITERIA), searched per aggregator
               (exhaustive when C(n, f) is small, else greedy + swaps; the sets tied with the
               top get more seeds; the pick re-measured on fresh seeds). Its interval covers
               training noise only (one set repeated). With
               criterion "heterogeneity" the point is instead the max-heterogeneity honest set
               (proxy, not a loss maximum): cheap, but not a worst case.

The random laws realize b > f in some draws, the worst case b = f in every draw: the table and
expected_vs_worst.png set E[· | b = f] and E[· | b ≤ f] against the worst case, P(b > f) beside;
the unconditioned E[·] and E[· | b > f] are in expected_unconditioned.png and the table's last
columns (each point's record has every metric given b = f, b ≤ f and b > f).

  python launch/sweep.py --config=configs/sweep_core.py --workdir=runs/sweep_core

Every grid axis can be set from the command line as a comma-separated list (no spaces, or quote
the whole argument); aggregator specs keep their '+':

  python launch/sweep.py --config=configs/sweep_core.py --workdir=runs/small \\
    --config.grid.aggregators=mean,nnm+trimmed_mean --config.grid.corruption=0.12,0.28 \\
    --config.grid.mu_h=independent,worst_case --config.base.num_samples=16
"""

import ml_collections

from configs import default
from fedjax_robust import worst_case
from fedjax_robust.errors import ConfigError
from fedjax_robust.sweep import Point
from fedjax_robust.sweep import as_list
from fedjax_robust.sweep import axis
from fedjax_robust.sweep import product

CLUSTERS = 5
Q1 = 0.8      # P(a member of a compromised cluster is Byzantine)
TAU = 0.5     # copula correlation along the graph
NEIGHBOURS = 3


MU_H = ("independent", "clustered", "graph", "worst_case")


def sweep_config(base, *, aggregators, corruption, metric) -> ml_collections.ConfigDict:
  """A sweep over aggregator × corruption p × μ_H (every law of `mu_h_overrides`), starting every
  point from the experiment config `base`; each grid axis a tuple, or (from the command line) one
  comma-separated string, see points(); plots of `metric` against the corruption, a panel per
  aggregator, a line per μ_H."""
  c = ml_collections.ConfigDict()
  c.base = base
  c.grid = ml_collections.ConfigDict({"aggregators": aggregators, "corruption": corruption,
                                      "mu_h": MU_H})
  c.plot = ml_collections.ConfigDict({"x": "corruption", "series": "aggregator",
                                      "style": "mu_H", "metric": metric})
  return c


def get_config():
  base = default.get_config()
  base.num_samples = 64
  base.training.num_rounds = 100
  # L_S* differs by draw, so the excess loss L_S(θ̂_S) − L_S* (and the baseline without
  # Byzantine clients, paired with each point's draws) is on by default.
  base.estimators.honest_optimum = True
  return sweep_config(base, aggregators=("mean", "trimmed_mean", "geometric_median",
                                         "nnm+trimmed_mean", "bucketing+geometric_median"),
                      corruption=(0.12, 0.2, 0.28), metric="honest_accuracy")


def mu_h_overrides(name: str, p: float) -> dict:
  if name == "independent":
    return {"honest_set": "bernoulli", "honest_set_options.bernoulli.p": p}
  if name == "clustered":
    return {"honest_set": "clusters", "honest_set_options.clusters.num_clusters": CLUSTERS,
            "honest_set_options.clusters.pi": p / Q1, "honest_set_options.clusters.q1": Q1,
            "honest_set_options.clusters.q0": 0.0}
  if name == "graph":
    return {"honest_set": "graph_copula", "honest_set_options.graph_copula.p": p,
            "honest_set_options.graph_copula.tau": TAU, "graph.kind": "data_similarity",
            "graph.k": NEIGHBOURS}
  if name == "worst_case":
    return {"honest_set": "worst_case"}
  raise ConfigError(f"grid.mu_h={name!r} is not a μ_H of this sweep; allowed: independent, "
                    "clustered, graph, worst_case.")


def points(c):
  """aggregator × corruption p × μ_H; each grid axis a tuple or a comma-separated string
  ('mean,nnm+trimmed_mean', '0.12,0.28', 'independent,worst_case')."""
  n = c.base.num_clients
  levels = [Point({"corruption": p, "mu_H": name}, {"f": round(p * n), **mu_h_overrides(name, p)})
            for p in as_list(c.grid.corruption, float) for name in as_list(c.grid.mu_h, str)]
  return product(axis("aggregator", as_list(c.grid.aggregators, str)), levels)


def plot_note(c) -> str:
  """What the plots' titles say about how each point's law and f follow the corruption p."""
  return (f"corruption p: independent = Bernoulli(p) per client; clustered = {CLUSTERS} "
          f"clusters, π = p/{Q1:g}, q1 = {Q1:g}; graph = Gaussian copula (marginal p, τ = "
          f"{TAU:g}) on the {NEIGHBOURS}-NN data-similarity graph; worst_case = "
          f"{_worst_case_note(c.base.honest_set_options.worst_case)}; declared f = round(p·n), "
          f"n = {c.base.num_clients}.")


def _worst_case_note(options) -> str:
  if options.criterion in worst_case.CRITERIA:
    return (f"the honest set of size n − f maximizing the mean "
            f"{worst_case.CRITERIA[options.criterion].quantity} over {options.seeds} seeds, up "
            f"to {options.max_seeds} for the sets tied with the top (one set repeated: its "
            "interval is training noise only)")
  return "the max-heterogeneity honest set (proxy, not a loss maximum; one set repeated)"
