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
- worst_case:  the f clients whose removal leaves the most heterogeneous honest set
               (gradient variance at the initial model), the classic worst case.

  python launch/sweep.py --config=configs/sweep_core.py --workdir=runs/sweep_core
"""

import ml_collections

from configs import default
from fedjax_robust.sweep import Point
from fedjax_robust.sweep import axis
from fedjax_robust.sweep import product


def get_config():
  c = ml_collections.ConfigDict()
  c.base = default.get_config()
  c.base.num_samples = 64
  c.base.training.num_rounds = 100
  c.grid = ml_collections.ConfigDict({
      "aggregators": ("mean", "trimmed_mean", "geometric_median", "nnm+trimmed_mean",
                      "bucketing+geometric_median"),
      "corruption": (0.12, 0.2, 0.28),
      "mu_h": ("independent", "clustered", "graph", "worst_case"),
  })
  c.plot = ml_collections.ConfigDict({"x": "corruption", "series": "aggregator",
                                      "style": "mu_H", "metric": "honest_accuracy"})
  return c


def mu_h_overrides(name: str, p: float) -> dict:
  if name == "independent":
    return {"honest_set": "bernoulli", "honest_set_options.bernoulli.p": p}
  if name == "clustered":
    return {"honest_set": "clusters", "honest_set_options.clusters.num_clusters": 5,
            "honest_set_options.clusters.pi": p / 0.8, "honest_set_options.clusters.q1": 0.8,
            "honest_set_options.clusters.q0": 0.0}
  if name == "graph":
    return {"honest_set": "graph_copula", "honest_set_options.graph_copula.p": p,
            "honest_set_options.graph_copula.tau": 0.5, "graph.kind": "data_similarity",
            "graph.k": 3}
  if name == "worst_case":
    return {"honest_set": "worst_case"}
  raise ValueError(f"unknown μ_H {name!r} in this sweep; available: independent, clustered, "
                   "graph, worst_case.")


def points(c):
  n = c.base.num_clients
  levels = [Point({"corruption": p, "mu_H": name}, {"f": round(p * n), **mu_h_overrides(name, p)})
            for p in c.grid.corruption for name in c.grid.mu_h]
  return product(axis("aggregator", c.grid.aggregators), levels)
