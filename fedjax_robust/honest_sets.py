"""Distributions μ_H over honest sets, drawn in-batch as boolean masks `[S, n]` (True = honest).

A whole training run is a function of one mask row, so `S` draws of μ_H run as one vmapped
program. The realized number of Byzantine clients b = n − |S| is random per draw and separate
from the server's declared f. Every sampler draws all S masks in one vectorized call:

  fixed_count     exactly b Byzantine: uniform, or Gumbel-top-b with client weights
  bernoulli       client i Byzantine independently with probability p_i
  beta_bernoulli  ρ ~ Beta(a, b) per draw, then each client Byzantine with probability ρ
  clusters        cluster c compromised with π_c; a member is Byzantine with q1 if its cluster is
                  compromised, else with q0
  graph_copula    z ~ N(0, Σ), Σ = (τI + L)^{-1} rescaled to unit diagonal (L the graph
                  Laplacian); i Byzantine iff z_i > Φ⁻¹(1 − p_i): marginals exactly p_i,
                  positively correlated along edges
  ising           P(B) ∝ exp(Σ_i h_i B_i + J Σ_{(i,j)∈E} B_i B_j), B ∈ {0, 1}^n, by S independent
                  chromatic Gibbs chains (all nodes of a colour class updated at once)
  cascade         seeds Byzantine with p0; each edge is live with q; Byzantine = reachable from
                  a seed through live edges

Graph-based samplers take the client graph as `adjacency [n, n]` (see `graphs`).
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtri
from scipy import special
from scipy import stats

from fedjax_robust import domains as D
from fedjax_robust import graphs
from fedjax_robust.errors import ConfigError

_FIXED = ("key", "num_clients", "num_samples", "adjacency")


def _check_num_samples(num_samples: int) -> None:
  if not isinstance(num_samples, (int, np.integer)) or num_samples <= 0:
    raise ValueError(f"num_samples (S) must be a positive int, got {num_samples!r}.")


def _probabilities(p, size: int, name: str = "corruption probability p",
                   what: str = "client") -> np.ndarray:
  """p as a validated vector `[size]` of probabilities."""
  arr = np.asarray(p, dtype=np.float64)
  if arr.ndim == 0:
    arr = np.full((size,), float(arr))
  if arr.shape != (size,):
    raise ValueError(f"{name} must be a scalar or have one entry per {what} ({size}), "
                     f"got shape {arr.shape}.")
  bad = arr[~((arr >= 0) & (arr <= 1))]
  if bad.size:
    raise ValueError(f"{name} must lie in [0, 1], got {float(bad[0])!r}.")
  return arr


def _check_adjacency(adjacency, n: int) -> np.ndarray:
  if adjacency is None:
    raise ValueError("this distribution needs the client graph (adjacency); set config.graph.")
  a = np.asarray(adjacency, np.float64)
  if a.shape != (n, n):
    raise ValueError(f"adjacency must be [n, n] = [{n}, {n}], got {a.shape}.")
  return a


def _honest_from_byzantine(byzantine: jax.Array) -> jax.Array:
  return ~byzantine


# ----------------------------------------------------------------------- samplers
def fixed_count(key: jax.Array, *, num_clients: int, num_byzantine: int, num_samples: int,
                weights: Sequence[float] | None = None) -> jax.Array:
  """Exactly b = `num_byzantine` Byzantine clients per draw: a uniform subset, or with client
  `weights` w_i the Gumbel-top-b subset (successive sampling without replacement, client i
  picked next with probability ∝ w_i among those left)."""
  _check_num_samples(num_samples)
  if not isinstance(num_byzantine, (int, np.integer)) or not 0 <= num_byzantine <= num_clients:
    raise ValueError(f"num_byzantine must be an int in [0, n={num_clients}], got {num_byzantine!r}.")
  scores = jax.random.gumbel(key, (num_samples, num_clients))
  if weights is not None:
    w = np.asarray(weights, np.float64)
    if w.shape != (num_clients,) or np.any(w <= 0):
      raise ValueError(f"fixed_count weights must be {num_clients} positive numbers, got {w}.")
    scores = scores + jnp.log(jnp.asarray(w, jnp.float32))
  ranks = jnp.argsort(jnp.argsort(-scores, axis=1), axis=1)
  return ranks >= num_byzantine


def bernoulli(key: jax.Array, *, num_clients: int, p: float | Sequence[float],
              num_samples: int) -> jax.Array:
  """Client i is Byzantine independently with probability p_i (scalar p: the same for all)."""
  _check_num_samples(num_samples)
  probs = jnp.asarray(_probabilities(p, num_clients), jnp.float32)
  return jax.random.uniform(key, (num_samples, num_clients)) >= probs


def beta_bernoulli(key: jax.Array, *, num_clients: int, a: float, b: float,
                   num_samples: int) -> jax.Array:
  """ρ ~ Beta(a, b) once per draw, then every client Byzantine independently with probability ρ:
  exchangeable, marginal a/(a+b), and a fat-tailed count (Beta-binomial)."""
  _check_num_samples(num_samples)
  if not (a > 0 and b > 0):
    raise ValueError(f"beta_bernoulli needs a > 0 and b > 0, got a={a}, b={b}.")
  k_rho, k_u = jax.random.split(key)
  rho = jax.random.beta(k_rho, a, b, (num_samples, 1))
  return _honest_from_byzantine(jax.random.uniform(k_u, (num_samples, num_clients)) < rho)


def cluster_assignment(num_clients: int, num_clusters: int,
                       assignment: Sequence[int] | None = None) -> np.ndarray:
  """Cluster id per client: the given `assignment`, or consecutive blocks of near-equal size."""
  if assignment is not None:
    arr = np.asarray(assignment, int)
    if arr.shape != (num_clients,) or arr.min() < 0:
      raise ValueError(f"cluster assignment must give one id >= 0 per client ({num_clients}), "
                       f"got {list(arr)}.")
    return arr
  if not 1 <= num_clusters <= num_clients:
    raise ValueError(f"num_clusters must lie in [1, n={num_clients}], got {num_clusters}.")
  return np.repeat(np.arange(num_clusters),
                   [len(c) for c in np.array_split(np.arange(num_clients), num_clusters)])


def clusters(key: jax.Array, *, num_clients: int, num_samples: int, num_clusters: int = 5,
             pi: float | Sequence[float] = 0.2, q1: float = 0.8, q0: float = 0.0,
             assignment: Sequence[int] | None = None) -> jax.Array:
  """Cluster c compromised with probability π_c; then each member Byzantine independently with
  q1 if its cluster is compromised, else q0. Marginal of a member of c: π_c q1 + (1 − π_c) q0."""
  _check_num_samples(num_samples)
  ids = cluster_assignment(num_clients, num_clusters, assignment)
  num = int(ids.max()) + 1
  pis = jnp.asarray(_probabilities(pi, num, "cluster probability pi", "cluster"), jnp.float32)
  _probabilities(q1, 1, "q1")
  _probabilities(q0, 1, "q0")
  k_c, k_u = jax.random.split(key)
  compromised = jax.random.uniform(k_c, (num_samples, num)) < pis
  q = jnp.where(compromised[:, ids], q1, q0)
  return _honest_from_byzantine(jax.random.uniform(k_u, (num_samples, num_clients)) < q)


def copula_correlation(adjacency: np.ndarray, tau: float) -> np.ndarray:
  """Σ = (τI + L)^{-1} rescaled to unit diagonal, L = D − A the graph Laplacian."""
  if not tau > 0:
    raise ValueError(f"graph_copula needs tau > 0, got {tau}.")
  laplacian = np.diag(adjacency.sum(1)) - adjacency
  cov = np.linalg.inv(tau * np.eye(len(adjacency)) + laplacian)
  scale = 1 / np.sqrt(np.diag(cov))
  return cov * scale[:, None] * scale[None, :]


def graph_copula(key: jax.Array, *, num_clients: int, num_samples: int, adjacency,
                 p: float | Sequence[float] = 0.15, tau: float = 1.0) -> jax.Array:
  """A Gaussian copula along the graph: z ~ N(0, Σ), Σ = `copula_correlation`; client i is
  Byzantine iff z_i > Φ⁻¹(1 − p_i). Marginals are exactly p_i; neighbours are positively
  correlated, more so for small τ (τ → ∞: independent)."""
  _check_num_samples(num_samples)
  a = _check_adjacency(adjacency, num_clients)
  probs = _probabilities(p, num_clients)
  chol = jnp.asarray(np.linalg.cholesky(copula_correlation(a, tau)), jnp.float32)
  z = jax.random.normal(key, (num_samples, num_clients)) @ chol.T
  threshold = ndtri(jnp.asarray(1 - probs, jnp.float32))
  return _honest_from_byzantine(z > threshold)


def ising(key: jax.Array, *, num_clients: int, num_samples: int, adjacency,
          h: float | Sequence[float] = -2.0, J: float = 0.5, sweeps: int = 200) -> jax.Array:  # pylint: disable=invalid-name
  """P(B) ∝ exp(Σ_i h_i B_i + J Σ_{(i,j)∈E} B_i B_j) over B ∈ {0, 1}^n (B_i = 1: Byzantine).

  S independent chains, started from independent Bernoulli(σ(h_i)) states and run for `sweeps`
  chromatic Gibbs sweeps (the nodes of one colour class of `graphs.greedy_coloring` share no
  edge, so they are updated together: P(B_i = 1 | rest) = σ(h_i + J Σ_{j~i} B_j)); the final
  states are the draws. J > 0 makes neighbours' corruption positively correlated.
  """
  _check_num_samples(num_samples)
  a = _check_adjacency(adjacency, num_clients)
  hs = np.asarray(h, np.float64)
  hs = np.full(num_clients, float(hs)) if hs.ndim == 0 else hs
  if hs.shape != (num_clients,):
    raise ValueError(f"ising field h must be a scalar or one value per client, got {hs.shape}.")
  classes = [jnp.asarray(c) for c in graphs.greedy_coloring(a)]
  adj = jnp.asarray(a, jnp.float32)
  field = jnp.asarray(hs, jnp.float32)
  k0, k_chain = jax.random.split(key)
  state = jax.random.bernoulli(k0, jax.nn.sigmoid(field), (num_samples, num_clients))

  def sweep(t, state):
    for c, members in enumerate(classes):
      k = jax.random.fold_in(jax.random.fold_in(k_chain, t), c)
      logits = field[members] + J * (state.astype(jnp.float32) @ adj[:, members])
      draw = jax.random.bernoulli(k, jax.nn.sigmoid(logits))
      state = state.at[:, members].set(draw)
    return state

  return _honest_from_byzantine(jax.lax.fori_loop(0, sweeps, sweep, state))


def cascade(key: jax.Array, *, num_clients: int, num_samples: int, adjacency,
            p0: float = 0.05, q: float = 0.3) -> jax.Array:
  """Independent cascade: each client is a seed with probability p0, each edge of the graph is
  live with probability q (independently per draw), and every client reachable from a seed
  through live edges is Byzantine."""
  _check_num_samples(num_samples)
  a = _check_adjacency(adjacency, num_clients)
  _probabilities(p0, 1, "cascade seed probability p0")
  _probabilities(q, 1, "cascade edge probability q")
  n = num_clients
  k_seed, k_edge = jax.random.split(key)
  byzantine = jax.random.uniform(k_seed, (num_samples, n)) < p0
  upper = jnp.triu(jax.random.uniform(k_edge, (num_samples, n, n)) < q, k=1)
  live = (upper | jnp.swapaxes(upper, 1, 2)) & (jnp.asarray(a) > 0)[None]

  def spread(_, reached):
    return reached | jnp.any(live & reached[:, None, :], axis=2)

  return _honest_from_byzantine(jax.lax.fori_loop(0, n, spread, byzantine))


_SAMPLERS = {"fixed_count": fixed_count, "bernoulli": bernoulli,
             "beta_bernoulli": beta_bernoulli, "clusters": clusters,
             "graph_copula": graph_copula, "ising": ising, "cascade": cascade}
GRAPH_BASED = ("graph_copula", "ising", "cascade")


# The declared domain of every parameter of every law (n-dependent bounds are checked by the
# samplers, e.g. num_byzantine <= n, one weight per client).
_PER_CLIENT = D.Tuple(D.PROBABILITY, 1, note="one per client")
OPTION_DOMAINS = {
    "fixed_count": {"num_byzantine": D.Int(0, note="<= n"),
                    "weights": D.Tuple(D.POSITIVE, 1, optional=True, note="one per client")},
    "bernoulli": {"p": D.OneOf(D.PROBABILITY, _PER_CLIENT)},
    "beta_bernoulli": {"a": D.POSITIVE, "b": D.POSITIVE},
    "clusters": {"num_clusters": D.POSITIVE_INT,
                 "pi": D.OneOf(D.PROBABILITY, D.Tuple(D.PROBABILITY, 1, note="one per cluster")),
                 "q1": D.PROBABILITY,
                 "q0": D.PROBABILITY,
                 "assignment": D.Tuple(D.NONNEGATIVE_INT, 1, optional=True,
                                       note="a cluster index per client")},
    "graph_copula": {"p": D.OneOf(D.PROBABILITY, _PER_CLIENT), "tau": D.POSITIVE},
    "ising": {"h": D.OneOf(D.FINITE, D.Tuple(D.FINITE, 1)), "J": D.FINITE,
              "sweeps": D.POSITIVE_INT},
    "cascade": {"p0": D.OneOf(D.PROBABILITY, _PER_CLIENT), "q": D.PROBABILITY},
}


def names() -> list[str]:
  return sorted(_SAMPLERS)


def option_domains(name: str) -> dict[str, D.Domain]:
  options(name)  # the error for an unknown name
  return dict(OPTION_DOMAINS[name])


def options(name: str) -> dict[str, Any]:
  """A distribution's parameters and their defaults (required ones map to inspect.Parameter.empty)."""
  if name not in _SAMPLERS:
    raise ConfigError(f"unknown honest-set distribution {name!r}; available: {', '.join(names())}.")
  params = inspect.signature(_SAMPLERS[name]).parameters
  return {k: p.default for k, p in params.items() if k not in _FIXED}


def _split(spec: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
  params = dict(spec)
  name = params.pop("name", None)
  allowed = options(name)
  unknown = sorted(set(params) - set(allowed) - {"adjacency"})
  missing = sorted(k for k, v in allowed.items() if v is inspect.Parameter.empty and k not in params)
  if unknown or missing:
    raise ConfigError(f"honest-set distribution {name!r} takes the parameters {sorted(allowed)}"
                     f" (required: {sorted(k for k, v in allowed.items() if v is inspect.Parameter.empty)}); "
                     f"got unknown {unknown}, missing {missing}.")
  D.check_options(f"honest_set_options.{name}",
                  {k: v for k, v in params.items() if k != "adjacency"}, OPTION_DOMAINS[name])
  return name, params


def sample(key: jax.Array, spec: Mapping[str, Any], *, num_clients: int,
           num_samples: int) -> jax.Array:
  """Draws `[num_samples, num_clients]` honest masks from the distribution described by `spec`,
  e.g. `{"name": "bernoulli", "p": 0.15}`; graph-based ones also need `"adjacency"`."""
  name, params = _split(spec)
  if name not in GRAPH_BASED:
    params.pop("adjacency", None)
  return _SAMPLERS[name](key, num_clients=num_clients, num_samples=num_samples, **params)


# Conditions a sweep may put on the draws (config `draw_condition`): which realized Byzantine
# counts b a draw may have, given the declared f and n.
CONDITIONS = {
    "none": lambda b, n, f: np.ones_like(b, bool),
    "b_le_f": lambda b, n, f: b <= f,                       # the declared f holds
    "b_eq_f": lambda b, n, f: b == f,                       # the worst case's b, drawn by μ_H
    "honest_majority": lambda b, n, f: 2 * b < n,           # rejects b ≥ n/2
}
CONDITION_NAMES = {"none": "", "b_le_f": "conditioned on b ≤ f", "b_eq_f": "conditioned on b = f",
                   "honest_majority": "conditioned on b < n/2"}


def sample_conditioned(key: jax.Array, spec: Mapping[str, Any], *, num_clients: int,
                       num_samples: int, condition: str, f: int,
                       max_attempts: int = 1000) -> tuple[np.ndarray, dict]:
  """`[S, n]` masks of μ_H conditioned on the realized b by rejection, and what it cost.

  Attempt 0 is `sample(key, ...)`, attempt k ≥ 1 is `sample(fold_in(key, k), ...)`; draw s keeps
  its first accepted attempt, so an accepted draw keeps the mask it has without conditioning and
  a draw's mask depends on its index only (every sampler's row s does not depend on S). Raises
  ValueError when some draw is still rejected after `max_attempts` attempts (the condition has
  (almost) no mass under μ_H), naming the acceptance rate seen."""
  accept = CONDITIONS[condition]
  masks = np.array(sample(key, spec, num_clients=num_clients, num_samples=num_samples))
  ok = accept(num_clients - masks.sum(1), num_clients, f)
  tried = num_samples
  accepted = int(ok.sum())
  attempts = 1
  while not ok.all():
    if attempts >= max_attempts:
      raise ValueError(
          f"draw_condition={condition!r}: {int((~ok).sum())} of {num_samples} draws still "
          f"rejected after {max_attempts} attempts (acceptance rate {accepted / tried:.2g}); "
          "μ_H puts (almost) no mass on the condition.")
    more = np.asarray(sample(jax.random.fold_in(key, attempts), spec, num_clients=num_clients,
                             num_samples=num_samples))
    good = accept(num_clients - more.sum(1), num_clients, f)
    tried += int((~ok).sum())
    accepted += int((good & ~ok).sum())
    take = good & ~ok
    masks[take] = more[take]
    ok = ok | good
    attempts += 1
  return masks, {"condition": condition, "acceptance_rate": accepted / tried,
                 "attempts": attempts}


def conditioned_pmf(pmf: np.ndarray, condition: str, *, num_clients: int, f: int) -> np.ndarray:
  """The law of b given the condition: `pmf` restricted to the accepted counts, renormalized."""
  b = np.arange(len(pmf))
  kept = np.where(CONDITIONS[condition](b, num_clients, f), pmf, 0.0)
  return kept / kept.sum() if kept.sum() > 0 else kept


def validate(spec: Mapping[str, Any], *, num_clients: int) -> None:
  """Checks a spec's name and parameters by drawing one mask (graphs: with a ring if none)."""
  spec = dict(spec)
  if spec.get("name") in GRAPH_BASED and spec.get("adjacency") is None:
    spec["adjacency"] = graphs.ring(num_clients)
  sample(jax.random.key(0), spec, num_clients=num_clients, num_samples=1)


# ----------------------------------------------------------------------- laws of b
def poisson_binomial_pmf(p: np.ndarray) -> np.ndarray:
  """Law of Σ_i Bernoulli(p_i): `[n + 1]`, by the O(n²) dynamic program over clients."""
  pmf = np.zeros(len(p) + 1)
  pmf[0] = 1.0
  for i, pi in enumerate(p):
    pmf[1:i + 2] = pmf[1:i + 2] * (1 - pi) + pmf[:i + 1] * pi
    pmf[0] *= 1 - pi
  return pmf


def byzantine_count_pmf(spec: Mapping[str, Any], *, num_clients: int,
                        num_monte_carlo: int = 200_000,
                        key: jax.Array | None = None) -> tuple[np.ndarray, bool]:
  """The law of the realized Byzantine count b, `[n + 1]`, and whether it is exact.

  Exact for fixed_count, bernoulli (Poisson binomial), beta_bernoulli (Beta-binomial) and
  clusters (per-cluster mixtures of binomials, convolved); Monte Carlo with `num_monte_carlo`
  draws otherwise.
  """
  name, params = _split(spec)
  n = num_clients
  k = np.arange(n + 1)
  if name == "fixed_count":
    pmf = np.zeros(n + 1)
    pmf[params["num_byzantine"]] = 1.0
    return pmf, True
  if name == "bernoulli":
    return poisson_binomial_pmf(_probabilities(params["p"], n)), True
  if name == "beta_bernoulli":
    a, b = params["a"], params["b"]
    logpmf = (special.gammaln(n + 1) - special.gammaln(k + 1) - special.gammaln(n - k + 1)
              + special.betaln(k + a, n - k + b) - special.betaln(a, b))
    return np.exp(logpmf), True
  if name == "clusters":
    ids = cluster_assignment(n, params.get("num_clusters", 5), params.get("assignment"))
    num = int(ids.max()) + 1
    pis = _probabilities(params.get("pi", 0.2), num, "cluster probability pi", "cluster")
    q1, q0 = params.get("q1", 0.8), params.get("q0", 0.0)
    pmf = np.array([1.0])
    for c in range(num):
      size = int(np.sum(ids == c))
      j = np.arange(size + 1)
      law = pis[c] * stats.binom.pmf(j, size, q1) + (1 - pis[c]) * stats.binom.pmf(j, size, q0)
      pmf = np.convolve(pmf, law)
    return pmf, True
  draws = sample(jax.random.key(0) if key is None else key, spec, num_clients=n,
                 num_samples=num_monte_carlo)
  counts = np.asarray(jnp.sum(~draws, axis=1))
  return np.bincount(counts, minlength=n + 1) / num_monte_carlo, False


# ----------------------------------------------------------------------- expected objective
def expected_objective_weights(p: float | Sequence[float], num_clients: int) -> np.ndarray:
  """w_i = E[1{i∈S}/|S|] for independent honesty q_i = 1 − p_i, so that
  E_S[(1/|S|) Σ_{i∈S} L_i] = Σ_i w_i L_i (the empty set contributes 0).

  w_i = q_i ∫_0^1 Π_{j≠i} (1 − q_j + q_j t) dt: the integrand is a polynomial of degree n − 1,
  so Gauss–Legendre with ⌈n/2⌉ nodes is exact (from E[1/(1+K)] = ∫_0^1 E[t^K] dt).
  """
  q = 1 - _probabilities(p, num_clients)
  nodes, weights = np.polynomial.legendre.leggauss(max(1, (num_clients + 1) // 2))
  t = 0.5 * (nodes + 1)
  w = 0.5 * weights
  factors = 1 - q[:, None] + q[:, None] * t[None, :]          # [n, nodes]
  log_all = np.sum(np.log(np.maximum(factors, 1e-300)), axis=0)
  others = np.exp(log_all[None, :] - np.log(np.maximum(factors, 1e-300)))
  # Where a factor is 0 (q_j = 1 at t = 0), recompute the product without it exactly.
  zero = factors <= 0
  if np.any(zero):
    for i in range(num_clients):
      others[i] = np.prod(np.delete(factors, i, axis=0), axis=0)
  return q * (others @ w)
