"""What the server believes about who fails: its own μ_H model, which may differ from the law
that draws the honest sets.

`config.server_prior` sets it (`kind`):
- "none": the server knows nothing beyond the declared f (every rule as before);
- "mu_h": the server's prior is the law that draws the honest sets (`config.honest_set`);
- "marginals": independent corruption with the given per-client probabilities p_i.
`scale` misspecifies the prior: its corruption probabilities are multiplied by it (clipped to
[0, 1]; for "clusters" the cluster probability π; for "bernoulli", "marginals" and
"graph_copula" every p_i; for "cascade" the seed probability p0). `permuted` misspecifies who is
who: the server's prior of client i is the true law's of client π(i), π a fixed random
permutation (per-client probabilities, the graph and the clusters relabelled; an exchangeable
law is unchanged by it).

What the server does with it:
- `declared_f = "quantile"`: the rules' f is the (1 − δ)-quantile of the law of b under the prior,
  f = min{k : P(b ≤ k) ≥ 1 − δ} (REFERENCE.md, "Quantile f"), so a rule trims for the corruption
  the server expects rather than a guess. Guarantee: with probability ≥ 1 − δ under the prior,
  b ≤ f, so every (f, κ)-robustness guarantee of the rule holds on that event (if the prior is
  right); the law is exact where `honest_sets.byzantine_count_pmf` is (fixed count, bernoulli,
  beta-Bernoulli, clusters), Monte Carlo otherwise (said in the log).
- the posterior filter's correlation (`coupling`): a pairwise approximation of a correlated
  prior, J_ij = the log odds ratio of (B_i, B_j) under it, with which a client's neighbours in
  the prior (graph, cluster) share the evidence against it;
- the cluster rule's groups (`cluster_structure`): the clusters of a clustered prior, or
  communities of a correlated one (spectral clustering of its co-corruption correlations), with
  the cross-cluster f from the prior's law of the number of groups holding a faulty client.
- `weights = "reliability"`: client weights 1 − p_i (the prior's honesty marginals) passed to the
  weighted rules (mean, trimmed mean, geometric median); `"expected_objective"`: the exact weights
  w_i = E[1{i ∈ S}/|S|] of independent corruption, for which Σ_i w_i L_i = E_S[L_S] (the expected
  honest objective, `honest_sets.expected_objective_weights`): the weighted mean of the clients'
  gradients is then an unbiased estimate of ∇E_S[L_S] when every client is honest, which is what
  these weights optimize. No robustness guarantee is known for the weighted robust rules beyond
  the rule's own weighted form.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from fedjax_robust import honest_sets
from fedjax_robust.errors import ConfigError

KINDS = ("none", "mu_h", "marginals")
DECLARED_F = ("config", "quantile")
WEIGHTS = ("none", "reliability", "expected_objective")
# Monte Carlo draws for the marginals and the couplings of a prior without an exact form (the
# law of b uses honest_sets' own default, the same number; both share the same draws).
MONTE_CARLO = honest_sets.MONTE_CARLO
# The seed of the permutation of `permuted` priors.
PERMUTATION_SEED = 0
# A coupling J_ij is kept when |log odds ratio| > this many standard errors (else 0: the pair is
# treated as independent rather than coupled by Monte Carlo noise).
COUPLING_Z = 3.0


def prior_law(kind: str, num_clients: int, *, p_per_client=None,
              law: dict[str, Any] | None = None, scale: float = 1.0,
              permuted: bool = False) -> dict[str, Any] | None:
  """The honest_sets spec of the server's prior (None for kind 'none'): for 'marginals'
  independent corruption with `p_per_client`, for 'mu_h' the `law` that draws the honest sets
  (its adjacency included for a graph law); misspecified by `scale` (`honest_sets.Law.scaled`)
  and `permuted` (`honest_sets.Law.permuted` by `permutation`). The job layer reads these from
  the config (`config.server_prior_spec`)."""
  n = num_clients
  if kind == "none":
    return None
  if kind == "marginals":
    if p_per_client is None or len(p_per_client) != n:
      raise ConfigError(f"server_prior.kind='marginals' needs server_prior.p_per_client with one "
                        f"probability per client ({n}), got {p_per_client!r}.")
    out = {"name": "bernoulli", "p": tuple(float(p) for p in p_per_client)}
  else:
    out = dict(law)
  if scale != 1.0:
    prior = honest_sets.law(out, n)
    if prior.scaled_parameter is None:
      raise ConfigError(f"server_prior.scale={scale} misspecifies the corruption probabilities of "
                        f"'bernoulli', 'clusters', 'graph_copula' and 'cascade' priors; the prior "
                        f"here is {prior.name!r}. Allowed: scale=1 with it.")
    out = prior.scaled(scale).spec
  if permuted:
    out = honest_sets.law(out, n).permuted(permutation(n)).spec
  return out


def permutation(num_clients: int) -> np.ndarray:
  """π of a `permuted` prior: the server believes client i behaves as client π(i)."""
  return np.random.default_rng(PERMUTATION_SEED).permutation(num_clients)


def marginals(law: dict[str, Any], num_clients: int) -> tuple[np.ndarray, bool]:
  """P(client i corrupted) `[n]` under the prior, and whether it is exact
  (`honest_sets.Law.byzantine_marginals`: bernoulli and graph_copula exact, their p_i; otherwise
  Monte Carlo over MONTE_CARLO draws, drawn once per law)."""
  return honest_sets.law(law, num_clients).byzantine_marginals(num_monte_carlo=MONTE_CARLO)


def _honest_draws(law: dict[str, Any], num_clients: int) -> np.ndarray:
  """MONTE_CARLO honest masks `[M, n]` drawn from `law` (`honest_sets.Law.monte_carlo_draws`:
  drawn once per law and n)."""
  return honest_sets.law(law, num_clients).monte_carlo_draws(MONTE_CARLO)


def coupling(law: dict[str, Any], num_clients: int) -> np.ndarray | None:
  """The pairwise couplings `[n, n]` of the posterior filter's mean-field prior, None for a prior
  of independent corruption ('bernoulli').

  J_ij = log [P(B_i=1, B_j=1) P(B_i=0, B_j=0) / (P(B_i=1, B_j=0) P(B_i=0, B_j=1))], the log odds
  ratio of the corruption of i and j under the prior, from MONTE_CARLO draws with 0.5 added to
  each cell (Haldane), set to 0 where |J_ij| ≤ COUPLING_Z standard errors (√Σ 1/cell) and on the
  diagonal. For two clients this is the exact Ising coupling of their joint law; for more it is
  an approximation (a pairwise model matching the pair laws one pair at a time, not the joint
  law), stated as such where it is used (`aggregators.prior_aware.posterior_filter`)."""
  if honest_sets.law(law, num_clients).independent:
    return None
  b = (~_honest_draws(law, num_clients)).astype(np.float64)
  m = float(len(b))
  n11 = b.T @ b
  n1 = b.sum(0)
  n10 = n1[:, None] - n11
  n01 = n1[None, :] - n11
  n00 = m - n11 - n10 - n01
  cells = [c + 0.5 for c in (n11, n10, n01, n00)]
  j = np.log(cells[0]) + np.log(cells[3]) - np.log(cells[1]) - np.log(cells[2])
  se = np.sqrt(sum(1.0 / c for c in cells))
  j = np.where(np.abs(j) > COUPLING_Z * se, j, 0.0)
  np.fill_diagonal(j, 0.0)
  return j


def quantile_f(law: dict[str, Any], num_clients: int, delta: float) -> tuple[int, bool, float]:
  """f = min{k : P(b ≤ k) ≥ 1 − δ} under `law`; whether the law of b is exact; P(b ≤ f)."""
  pmf, exact = honest_sets.law(law, num_clients).count_pmf()
  cdf = np.cumsum(pmf)
  f = int(np.searchsorted(cdf, 1 - delta - 1e-12))
  return f, exact, float(cdf[min(f, len(cdf) - 1)])


def client_weights(law: dict[str, Any], num_clients: int, kind: str) -> np.ndarray:
  """The weights of `kind` ('reliability' or 'expected_objective'), normalized to sum to 1."""
  prior = honest_sets.law(law, num_clients)
  p, _ = prior.byzantine_marginals(num_monte_carlo=MONTE_CARLO)
  if kind == "reliability":
    w = 1.0 - p
  else:
    if not prior.independent:
      raise ConfigError("server_prior.weights='expected_objective' uses the exact weights of "
                        f"independent corruption; the prior here is {prior.name!r}. Allowed: "
                        "'reliability' with it, or an independent prior ('marginals', or 'mu_h' "
                        "with honest_set='bernoulli').")
    w = honest_sets.expected_objective_weights(p, num_clients)
  if not np.sum(w) > 0:
    raise ConfigError(f"server_prior gives every client weight 0 (every p_i = 1); weights={kind!r} "
                      "needs a client the server believes may be honest.")
  return w / np.sum(w)


def resolve(law: dict[str, Any], num_clients: int, f: int, *, kind: str, scale: float,
            declared_f: str, delta: float, weights: str) -> dict[str, Any]:
  """What the prior `law` makes of the run, for the log and the summary: with `declared_f =
  'quantile'` the rules' f (key "f": the (1 − δ)-quantile of b under it; the config's `f`
  kept as "f_from_config"), with `weights` the client weights. The job layer applies "f"
  (`config.resolve_server_prior`)."""
  n = num_clients
  info: dict[str, Any] = {"kind": kind, "law": law, "scale": float(scale),
                          "declared_f": declared_f, "weights": weights}
  if declared_f == "quantile":
    quantile, exact, coverage = quantile_f(law, n, delta)
    if 2 * quantile >= n:
      raise ConfigError(
          f"server_prior: the {1 - delta:g}-quantile of b under the prior is f={quantile}, "
          f"which leaves no honest majority (n={n}); allowed: a prior or δ giving f < n/2.")
    info.update({"f": quantile, "f_from_config": int(f), "delta": float(delta),
                 "law_of_b_exact": exact, "p_b_le_f": coverage})
  if weights != "none":
    info["client_weights"] = client_weights(law, n, weights).tolist()
  return info


def describe(info: dict[str, Any] | None) -> str:
  """One line on the server's prior and what it changed ('' without one)."""
  if not info:
    return ""
  law = ", ".join(f"{k}={v}" for k, v in info["law"].items() if k != "name")
  text = (f"server prior ({info['kind']}): {info['law']['name']}({law})"
          + (f", misspecified ×{info['scale']:g}" if info["scale"] != 1.0 else ""))
  if "f" in info:
    text += (f"; declared f = {info['f']}, the {1 - info['delta']:g}-quantile of b under the "
             f"prior (P(b ≤ f) = {info['p_b_le_f']:.4f}, "
             f"{'exact law' if info['law_of_b_exact'] else 'Monte Carlo law'}; the config said "
             f"f = {info['f_from_config']})")
  if info["weights"] != "none":
    w = np.asarray(info["client_weights"])
    text += (f"; client weights '{info['weights']}' (min {w.min():.4f}, max {w.max():.4f}, "
             "sum 1) in the weighted rules")
  return text


def cluster_quantile_f(law: dict[str, Any], num_clients: int, delta: float,
                       communities: int = 5, inner: str = "mean") -> tuple[np.ndarray, int]:
  """The groups of `cluster_aggregate` under the prior `law` and f_clusters = min{k : P(K_bad ≤
  k) ≥ 1 − δ}, K_bad the number of groups whose aggregate a faulty client can move without
  bound: groups holding at least t_c faulty clients, t_c = 1 for inner = "mean" and
  t_c = ⌈m_c/2⌉ for inner = "median" (m_c the group's size; the coordinate median of m_c rows
  is bounded by the honest rows while fewer than ⌈m_c/2⌉ are faulty).

  - clustered prior ('clusters', the law with `cluster_ids`): its clusters. Cluster c is bad
    with probability π_c P(Bin(m_c, q1) ≥ t_c) + (1 − π_c) P(Bin(m_c, q0) ≥ t_c) (for t_c = 1:
    π_c (1 − (1 − q1)^{m_c}) + (1 − π_c)(1 − (1 − q0)^{m_c}); `Law.cluster_failure_probabilities`),
    independently across clusters: K_bad is Poisson binomial (exact).
  - another correlated prior (graph_copula, ising, cascade, beta_bernoulli, fixed_count):
    `communities` groups found by spectral clustering (scikit-learn, fixed seed) of the affinity
    max(0, corr(B_i, B_j)) of its MONTE_CARLO draws (clients corrupted together are grouped
    together; for a graph law these are the graph's communities as the law sees them), and the
    law of K_bad from the same draws (Monte Carlo).
  - independent prior ('bernoulli'): refused; no grouping carries information."""
  prior = honest_sets.law(law, num_clients)
  if prior.independent:
    raise ConfigError("cluster_aggregate takes its groups from a prior of correlated corruption "
                      "(clusters, a graph law, ...); the prior here is independent "
                      f"({prior.name!r}), which groups nobody. Allowed: a correlated honest_set "
                      "with server_prior.kind='mu_h', or set aggregator_options.cluster_aggregate"
                      ".clusters and .f_clusters.")
  ids = prior.cluster_ids()
  if ids is not None:
    t = _bad_threshold(np.bincount(ids, minlength=int(ids.max()) + 1), inner)
    cdf = np.cumsum(honest_sets.poisson_binomial_pmf(prior.cluster_failure_probabilities(t)))
    return ids, int(np.searchsorted(cdf, 1 - delta - 1e-12))
  if not 2 <= communities <= num_clients:
    raise ConfigError(f"server_prior.communities={communities} must be in [2, n={num_clients}].")
  ids = _communities(law, num_clients, communities)
  faulty = ~_honest_draws(law, num_clients)
  onehot = np.eye(communities, dtype=np.float64)[ids]                  # [n, K]
  t = _bad_threshold(np.bincount(ids, minlength=communities), inner)
  k_bad = ((faulty.astype(np.float64) @ onehot) >= t).sum(1)
  cdf = np.cumsum(np.bincount(k_bad, minlength=communities + 1) / len(k_bad))
  return ids, int(np.searchsorted(cdf, 1 - delta - 1e-12))


def _bad_threshold(sizes: np.ndarray, inner: str) -> np.ndarray:
  """t_c: the faulty clients that can move group c's aggregate without bound."""
  return np.ones_like(sizes) if inner == "mean" else (sizes + 1) // 2


def _communities(law: dict[str, Any], num_clients: int, communities: int) -> np.ndarray:
  """Spectral clustering of max(0, corr(B_i, B_j)) under `law` into `communities` groups,
  relabelled by first appearance (client 0 in group 0)."""
  from sklearn.cluster import SpectralClustering  # pylint: disable=g-import-not-at-top
  b = (~_honest_draws(law, num_clients)).astype(np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    corr = np.nan_to_num(np.corrcoef(b, rowvar=False), nan=0.0)
  affinity = np.clip(corr, 0.0, None)
  np.fill_diagonal(affinity, 1.0)
  with warnings.catch_warnings():
    # "Graph is not fully connected": uncorrelated groups are what the clustering separates.
    warnings.simplefilter("ignore", UserWarning)
    labels = SpectralClustering(n_clusters=communities, affinity="precomputed",
                                random_state=0).fit_predict(affinity)
  _, first = np.unique(labels, return_index=True)
  order = np.argsort(np.argsort(first))
  return order[labels].astype(np.int64)
