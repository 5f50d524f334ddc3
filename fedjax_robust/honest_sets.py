"""Distributions μ_H over honest sets, drawn in-batch as boolean masks `[S, n]` (True = honest).

A whole training run is a function of one mask row, so `S` draws of μ_H run as one vmapped
program. The realized number of Byzantine clients b = n − |S| is random per draw and separate
from the server's declared f. Every law draws all S masks in one vectorized call:

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

A law is a small frozen object (`Law`, one class per kind, built from its spec dict by
`law(spec, num_clients)`, e.g. `law({"name": "bernoulli", "p": 0.15}, 25)`): `sample` (the masks,
optionally conditioned on the realized b), `count_pmf` (the law of b), `marginals` /
`byzantine_marginals` (P(i honest) / P(i Byzantine)), `scaled` and `permuted` (the
misspecifications of a server's prior) and `spec` (the dict back, for JSON and fingerprints).
Each kind's formulas live in its class; where a law has no closed form (the law of b of a graph
law, most marginals) the method says so by returning `exact=False` with a Monte Carlo estimate
from `MONTE_CARLO` draws under `jax.random.key(0)`. The module-level functions (`sample`,
`byzantine_count_pmf`, ..., and one sampler function per kind) take spec dicts and are thin
wrappers over the objects.

Graph-based laws take the client graph as `adjacency [n, n]` (see `graphs`).
"""

from __future__ import annotations

import collections
import dataclasses
import inspect
import json
from typing import Any, ClassVar, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtri
from scipy import special
from scipy import stats

from fedjax_robust import domains as D
from fedjax_robust import graphs
from fedjax_robust.errors import ConfigError

# Monte Carlo draws (under jax.random.key(0)) for what a law has no closed form of.
MONTE_CARLO = 200_000
# How many laws' Monte Carlo draws are kept (`Law.monte_carlo_draws`), least recently used out.
_DRAWS_KEPT = 8
_DRAWS: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()


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


def _fingerprint(spec: Mapping[str, Any]) -> str:
  return json.dumps({k: (np.asarray(v).tolist() if isinstance(v, np.ndarray) else v)
                     for k, v in spec.items()}, sort_keys=True, default=str)


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


# ----------------------------------------------------------------------- the laws
@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class Law:
  """A law μ_H of the honest set on `num_clients` clients (one subclass per kind).

  The subclass's dataclass fields are the kind's parameters with their defaults, as given (not
  converted: `spec` gives them back unchanged); they are validated on construction with the
  messages the samplers always gave. `adjacency` is the client graph (needed to sample a graph
  law, ignored by the others); `spec_items` the spec it was built from (`law`), if any.

  A subclass implements `_draw` (the masks) and, where it has one, a closed form in
  `_exact_count_pmf` / `_exact_byzantine_marginals`; without one the public method returns a
  Monte Carlo estimate flagged `exact=False`.
  """
  name: ClassVar[str]
  # The option domains of the kind's parameters (checked by `law`; n-dependent bounds are checked
  # on construction, e.g. num_byzantine <= n, one weight per client).
  domains: ClassVar[dict[str, D.Domain]]
  graph_based: ClassVar[bool] = False
  # Clients corrupted independently: no correlation for a prior to exploit, and the
  # expected-objective weights (`expected_objective_weights`) are exact.
  independent: ClassVar[bool] = False
  # The corruption probability `scaled` multiplies (None: the law has none).
  scaled_parameter: ClassVar[str | None] = None
  # The parameters that may hold one value per client (relabelled by `permuted`).
  per_client: ClassVar[tuple[str, ...]] = ()
  # Values the configuration's schema shows for the kind's required parameters (the law itself
  # has no default for them: `config_options`).
  config_defaults: ClassVar[dict[str, Any]] = {}

  num_clients: int
  adjacency: Any = dataclasses.field(default=None, repr=False)
  spec_items: tuple[tuple[str, Any], ...] | None = dataclasses.field(default=None, repr=False)

  def __post_init__(self):
    n = self.num_clients
    if not isinstance(n, (int, np.integer)) or n <= 0:
      raise ValueError(f"num_clients must be a positive int, got {n!r}.")
    if self.graph_based and self.adjacency is not None:
      _check_adjacency(self.adjacency, n)

  # --------------------------------------------------------------------- the spec
  @classmethod
  def parameters(cls) -> dict[str, Any]:
    """The kind's parameters and their defaults (required ones map to inspect.Parameter.empty)."""
    base = {f.name for f in dataclasses.fields(Law)}
    return {f.name: (inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default)
            for f in dataclasses.fields(cls) if f.name not in base}

  @property
  def spec(self) -> dict[str, Any]:
    """The spec dict (a new one): the one the law was built from, unchanged, or else its name
    and every parameter (and the adjacency, when set)."""
    if self.spec_items is not None:
      return dict(self.spec_items)
    out = {"name": self.name, **{k: getattr(self, k) for k in self.parameters()}}
    if self.adjacency is not None:
      out["adjacency"] = self.adjacency
    return out

  # --------------------------------------------------------------------- draws
  def sample(self, key: jax.Array, num_samples: int, *, condition: str = "none",
             f: int | None = None, max_attempts: int = 1000) -> jax.Array | np.ndarray:
    """`[num_samples, num_clients]` honest masks (a jax.Array); with a `condition` (a key of
    CONDITIONS, on the realized b given the declared `f`) the masks of `sample_conditioned`
    (a NumPy array)."""
    if condition != "none":
      return self.sample_conditioned(key, num_samples, condition=condition, f=f,
                                     max_attempts=max_attempts)[0]
    _check_num_samples(num_samples)
    return self._draw(key, num_samples)

  def _draw(self, key: jax.Array, num_samples: int) -> jax.Array:
    raise NotImplementedError

  def sample_conditioned(self, key: jax.Array, num_samples: int, *, condition: str, f: int | None,
                         max_attempts: int = 1000) -> tuple[np.ndarray, dict]:
    """`[S, n]` masks of the law conditioned on the realized b by rejection, and what it cost.

    Attempt 0 is `sample(key, ...)`, attempt k ≥ 1 is `sample(fold_in(key, k), ...)`; draw s
    keeps its first accepted attempt, so an accepted draw keeps the mask it has without
    conditioning and a draw's mask depends on its index only (every law's row s does not depend
    on S). Raises ValueError when some draw is still rejected after `max_attempts` attempts (the
    condition has (almost) no mass under the law), naming the acceptance rate seen."""
    if condition not in CONDITIONS:
      raise ValueError(f"unknown draw condition {condition!r}; available: {sorted(CONDITIONS)}.")
    accept = CONDITIONS[condition]
    n = self.num_clients
    masks = np.array(self.sample(key, num_samples))
    ok = accept(n - masks.sum(1), n, f)
    tried = num_samples
    accepted = int(ok.sum())
    attempts = 1
    while not ok.all():
      if attempts >= max_attempts:
        raise ValueError(
            f"draw_condition={condition!r}: {int((~ok).sum())} of {num_samples} draws still "
            f"rejected after {max_attempts} attempts (acceptance rate {accepted / tried:.2g}); "
            "μ_H puts (almost) no mass on the condition.")
      more = np.asarray(self.sample(jax.random.fold_in(key, attempts), num_samples))
      good = accept(n - more.sum(1), n, f)
      tried += int((~ok).sum())
      accepted += int((good & ~ok).sum())
      take = good & ~ok
      masks[take] = more[take]
      ok = ok | good
      attempts += 1
    return masks, {"condition": condition, "acceptance_rate": accepted / tried,
                   "attempts": attempts}

  def monte_carlo_draws(self, num_samples: int = MONTE_CARLO) -> np.ndarray:
    """`[num_samples, n]` honest masks (NumPy bool) under jax.random.key(0): the draws behind
    every Monte Carlo estimate of the law, kept for the last few laws (same spec and n, same
    draws)."""
    memo = f"{_fingerprint(self.spec)}/{self.num_clients}/{num_samples}"
    if memo in _DRAWS:
      _DRAWS.move_to_end(memo)
    else:
      _DRAWS[memo] = np.asarray(self.sample(jax.random.key(0), num_samples), bool)
      while len(_DRAWS) > _DRAWS_KEPT:
        _DRAWS.popitem(last=False)
    return _DRAWS[memo]

  # --------------------------------------------------------------------- laws derived from it
  def count_pmf(self, *, num_monte_carlo: int = MONTE_CARLO,
                key: jax.Array | None = None) -> tuple[np.ndarray, bool]:
    """The law of the realized Byzantine count b, P(b = k) for k = 0..n `[n + 1]`, and whether
    it is exact: the kind's closed form where it has one, else the empirical law of
    `num_monte_carlo` draws (under `key`, default jax.random.key(0))."""
    pmf = self._exact_count_pmf()
    if pmf is not None:
      return pmf, True
    if key is None:
      draws = self.monte_carlo_draws(num_monte_carlo)
    else:
      draws = np.asarray(self.sample(key, num_monte_carlo), bool)
    counts = (~draws).sum(1)
    return np.bincount(counts, minlength=self.num_clients + 1) / num_monte_carlo, False

  def _exact_count_pmf(self) -> np.ndarray | None:
    return None

  def byzantine_marginals(self, *,
                          num_monte_carlo: int = MONTE_CARLO) -> tuple[np.ndarray, bool]:
    """P(client i Byzantine) `[n]` and whether it is exact: the kind's closed form where it has
    one, else 1 − the honest frequency over `monte_carlo_draws(num_monte_carlo)`."""
    p = self._exact_byzantine_marginals()
    if p is not None:
      return p, True
    return 1.0 - self.monte_carlo_draws(num_monte_carlo).mean(0), False

  def marginals(self, *, num_monte_carlo: int = MONTE_CARLO) -> tuple[np.ndarray, bool]:
    """P(client i honest) `[n]` and whether it is exact: 1 − the closed-form P(i Byzantine)
    where the kind has one, else the honest frequency over `monte_carlo_draws`."""
    p = self._exact_byzantine_marginals()
    if p is not None:
      return 1.0 - p, True
    return self.monte_carlo_draws(num_monte_carlo).mean(0), False

  def _exact_byzantine_marginals(self) -> np.ndarray | None:
    return None

  # --------------------------------------------------------------------- misspecified copies
  def scaled(self, factor: float) -> Law:
    """The law with its corruption probability (`scaled_parameter`: every p_i of bernoulli and
    graph_copula, the cluster probabilities π of clusters, the seed probability p0 of cascade)
    multiplied by `factor` and clipped to [0, 1]; the spec keeps its other entries and order.
    NotImplementedError for a kind without one."""
    key = self.scaled_parameter
    if key is None:
      kinds = [c.name for c in _LAWS.values() if c.scaled_parameter is not None]
      raise NotImplementedError(f"{self.name!r} has no corruption probability to scale; scaled()"
                                f" is defined for {', '.join(map(repr, kinds))}.")
    scaled = np.clip(np.asarray(getattr(self, key), float) * factor, 0.0, 1.0)
    value = float(scaled) if scaled.ndim == 0 else tuple(map(float, scaled))
    return law({**self.spec, key: value}, self.num_clients)

  def permuted(self, perm: Sequence[int]) -> Law:
    """The law with its clients relabelled: client i behaves as client perm[i] did (its
    per-client parameters, its row and column of the adjacency and its cluster). An
    exchangeable law is unchanged."""
    perm = np.asarray(perm)
    if sorted(perm.tolist()) != list(range(self.num_clients)):
      raise ValueError(f"perm must be a permutation of range({self.num_clients}), got {perm}.")
    return law(self._permuted_spec(perm), self.num_clients)

  def _permuted_spec(self, perm: np.ndarray) -> dict[str, Any]:
    out = self.spec
    for key in self.per_client:
      if out.get(key) is not None and np.ndim(out[key]) == 1:
        out[key] = tuple(float(v) for v in np.asarray(out[key], float)[perm])
    if out.get("adjacency") is not None:
      out["adjacency"] = np.asarray(out["adjacency"])[np.ix_(perm, perm)]
    return out

  # --------------------------------------------------------------------- cluster structure
  def cluster_ids(self) -> np.ndarray | None:
    """The cluster of every client `[n]` for a law with clusters, None otherwise."""
    return None

  def cluster_failure_probabilities(self, thresholds: np.ndarray) -> np.ndarray:
    """P(cluster c holds at least thresholds[c] Byzantine clients) `[C]`; clusters are
    independent under a law that has them (`cluster_ids`)."""
    raise NotImplementedError(f"{self.name!r} has no clusters.")


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class FixedCount(Law):
  """Exactly b = `num_byzantine` Byzantine clients per draw: a uniform subset, or with client
  `weights` w_i the Gumbel-top-b subset (successive sampling without replacement, client i
  picked next with probability ∝ w_i among those left). P(b = num_byzantine) = 1."""
  name = "fixed_count"
  config_defaults = {"num_byzantine": 5}
  domains = {"num_byzantine": D.Int(0, note="<= n"),
             "weights": D.Tuple(D.POSITIVE, 1, optional=True, note="one per client")}
  per_client = ("weights",)
  num_byzantine: int
  weights: Sequence[float] | None = None

  def __post_init__(self):
    super().__post_init__()
    n, b = self.num_clients, self.num_byzantine
    if not isinstance(b, (int, np.integer)) or not 0 <= b <= n:
      raise ValueError(f"num_byzantine must be an int in [0, n={n}], got {b!r}.")
    if self.weights is not None:
      w = np.asarray(self.weights, np.float64)
      if w.shape != (n,) or np.any(w <= 0):
        raise ValueError(f"fixed_count weights must be {n} positive numbers, got {w}.")

  def _draw(self, key, num_samples):
    scores = jax.random.gumbel(key, (num_samples, self.num_clients))
    if self.weights is not None:
      scores = scores + jnp.log(jnp.asarray(np.asarray(self.weights, np.float64), jnp.float32))
    ranks = jnp.argsort(jnp.argsort(-scores, axis=1), axis=1)
    return ranks >= self.num_byzantine

  def _exact_count_pmf(self):
    pmf = np.zeros(self.num_clients + 1)
    pmf[self.num_byzantine] = 1.0
    return pmf


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class Bernoulli(Law):
  """Client i is Byzantine independently with probability p_i (scalar p: the same for all).
  b is Poisson binomial (`poisson_binomial_pmf`); P(i Byzantine) = p_i."""
  name = "bernoulli"
  config_defaults = {"p": 0.15}
  domains = {"p": D.OneOf(D.PROBABILITY, D.Tuple(D.PROBABILITY, 1, note="one per client"))}
  independent = True
  scaled_parameter = "p"
  per_client = ("p",)
  p: float | Sequence[float]

  def __post_init__(self):
    super().__post_init__()
    _probabilities(self.p, self.num_clients)

  def _draw(self, key, num_samples):
    probs = jnp.asarray(_probabilities(self.p, self.num_clients), jnp.float32)
    return jax.random.uniform(key, (num_samples, self.num_clients)) >= probs

  def _exact_count_pmf(self):
    return poisson_binomial_pmf(_probabilities(self.p, self.num_clients))

  def _exact_byzantine_marginals(self):
    return np.broadcast_to(np.asarray(self.p, float), (self.num_clients,)).copy()


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class BetaBernoulli(Law):
  """ρ ~ Beta(a, b) once per draw, then every client Byzantine independently with probability ρ:
  exchangeable, marginal a/(a+b), and a fat-tailed count: b ~ Beta-binomial(n, a, b),
  P(b = k) = C(n, k) B(k + a, n − k + b) / B(a, b)."""
  name = "beta_bernoulli"
  config_defaults = {"a": 1.0, "b": 5.0}
  domains = {"a": D.POSITIVE, "b": D.POSITIVE}
  a: float
  b: float

  def __post_init__(self):
    super().__post_init__()
    if not (self.a > 0 and self.b > 0):
      raise ValueError(f"beta_bernoulli needs a > 0 and b > 0, got a={self.a}, b={self.b}.")

  def _draw(self, key, num_samples):
    k_rho, k_u = jax.random.split(key)
    rho = jax.random.beta(k_rho, self.a, self.b, (num_samples, 1))
    return _honest_from_byzantine(
        jax.random.uniform(k_u, (num_samples, self.num_clients)) < rho)

  def _exact_count_pmf(self):
    n, a, b = self.num_clients, self.a, self.b
    k = np.arange(n + 1)
    logpmf = (special.gammaln(n + 1) - special.gammaln(k + 1) - special.gammaln(n - k + 1)
              + special.betaln(k + a, n - k + b) - special.betaln(a, b))
    return np.exp(logpmf)


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


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class Clusters(Law):
  """Cluster c compromised with probability π_c; then each member Byzantine independently with
  q1 if its cluster is compromised, else q0. Marginal of a member of c: π_c q1 + (1 − π_c) q0.
  The count of cluster c (size m_c) is the mixture π_c Bin(m_c, q1) + (1 − π_c) Bin(m_c, q0),
  independently across clusters, so b's law is their convolution."""
  name = "clusters"
  domains = {"num_clusters": D.POSITIVE_INT,
             "pi": D.OneOf(D.PROBABILITY, D.Tuple(D.PROBABILITY, 1, note="one per cluster")),
             "q1": D.PROBABILITY,
             "q0": D.PROBABILITY,
             "assignment": D.Tuple(D.NONNEGATIVE_INT, 1, optional=True,
                                   note="a cluster index per client")}
  scaled_parameter = "pi"
  num_clusters: int = 5
  pi: float | Sequence[float] = 0.2
  q1: float = 0.8
  q0: float = 0.0
  assignment: Sequence[int] | None = None

  def __post_init__(self):
    super().__post_init__()
    self._pis()
    _probabilities(self.q1, 1, "q1")
    _probabilities(self.q0, 1, "q0")

  def cluster_ids(self):
    return cluster_assignment(self.num_clients, self.num_clusters, self.assignment)

  def _pis(self) -> np.ndarray:
    num = int(self.cluster_ids().max()) + 1
    return _probabilities(self.pi, num, "cluster probability pi", "cluster")

  def _draw(self, key, num_samples):
    ids = self.cluster_ids()
    pis = jnp.asarray(self._pis(), jnp.float32)
    k_c, k_u = jax.random.split(key)
    compromised = jax.random.uniform(k_c, (num_samples, len(pis))) < pis
    q = jnp.where(compromised[:, ids], self.q1, self.q0)
    return _honest_from_byzantine(
        jax.random.uniform(k_u, (num_samples, self.num_clients)) < q)

  def _exact_count_pmf(self):
    ids = self.cluster_ids()
    pis = self._pis()
    pmf = np.array([1.0])
    for c in range(len(pis)):
      size = int(np.sum(ids == c))
      j = np.arange(size + 1)
      mixture = (pis[c] * stats.binom.pmf(j, size, self.q1)
                 + (1 - pis[c]) * stats.binom.pmf(j, size, self.q0))
      pmf = np.convolve(pmf, mixture)
    return pmf

  def _permuted_spec(self, perm):
    out = super()._permuted_spec(perm)
    out["assignment"] = tuple(int(i) for i in self.cluster_ids()[perm])
    return out

  def cluster_failure_probabilities(self, thresholds):
    """P(cluster c has ≥ t_c Byzantine members) = π_c P(Bin(m_c, q1) ≥ t_c) + (1 − π_c)
    P(Bin(m_c, q0) ≥ t_c), m_c its size."""
    ids = self.cluster_ids()
    num = int(ids.max()) + 1
    pis = np.broadcast_to(np.asarray(self.pi, float), (num,))
    sizes = np.bincount(ids, minlength=num)
    t = np.asarray(thresholds)
    return (pis * stats.binom.sf(t - 1, sizes, self.q1)
            + (1 - pis) * stats.binom.sf(t - 1, sizes, self.q0))


def copula_correlation(adjacency: np.ndarray, tau: float) -> np.ndarray:
  """Σ = (τI + L)^{-1} rescaled to unit diagonal, L = D − A the graph Laplacian."""
  if not tau > 0:
    raise ValueError(f"graph_copula needs tau > 0, got {tau}.")
  laplacian = np.diag(adjacency.sum(1)) - adjacency
  cov = np.linalg.inv(tau * np.eye(len(adjacency)) + laplacian)
  scale = 1 / np.sqrt(np.diag(cov))
  return cov * scale[:, None] * scale[None, :]


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class GraphCopula(Law):
  """A Gaussian copula along the graph: z ~ N(0, Σ), Σ = `copula_correlation`; client i is
  Byzantine iff z_i > Φ⁻¹(1 − p_i). Marginals are exactly p_i; neighbours are positively
  correlated, more so for small τ (τ → ∞: independent). b's law: Monte Carlo."""
  name = "graph_copula"
  domains = {"p": D.OneOf(D.PROBABILITY, D.Tuple(D.PROBABILITY, 1, note="one per client")),
             "tau": D.POSITIVE}
  graph_based = True
  scaled_parameter = "p"
  per_client = ("p",)
  p: float | Sequence[float] = 0.15
  tau: float = 1.0

  def __post_init__(self):
    super().__post_init__()
    _probabilities(self.p, self.num_clients)
    if not self.tau > 0:
      raise ValueError(f"graph_copula needs tau > 0, got {self.tau}.")

  def _draw(self, key, num_samples):
    a = _check_adjacency(self.adjacency, self.num_clients)
    probs = _probabilities(self.p, self.num_clients)
    chol = jnp.asarray(np.linalg.cholesky(copula_correlation(a, self.tau)), jnp.float32)
    z = jax.random.normal(key, (num_samples, self.num_clients)) @ chol.T
    threshold = ndtri(jnp.asarray(1 - probs, jnp.float32))
    return _honest_from_byzantine(z > threshold)

  def _exact_byzantine_marginals(self):
    return np.broadcast_to(np.asarray(self.p, float), (self.num_clients,)).copy()


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class Ising(Law):
  """P(B) ∝ exp(Σ_i h_i B_i + J Σ_{(i,j)∈E} B_i B_j) over B ∈ {0, 1}^n (B_i = 1: Byzantine).

  S independent chains, started from independent Bernoulli(σ(h_i)) states and run for `sweeps`
  chromatic Gibbs sweeps (the nodes of one colour class of `graphs.greedy_coloring` share no
  edge, so they are updated together: P(B_i = 1 | rest) = σ(h_i + J Σ_{j~i} B_j)); the final
  states are the draws. J > 0 makes neighbours' corruption positively correlated. b's law and
  the marginals: Monte Carlo.
  """
  name = "ising"
  domains = {"h": D.OneOf(D.FINITE, D.Tuple(D.FINITE, 1)), "J": D.FINITE,
             "sweeps": D.POSITIVE_INT}
  graph_based = True
  per_client = ("h",)
  h: float | Sequence[float] = -2.0
  J: float = 0.5  # pylint: disable=invalid-name
  sweeps: int = 200

  def __post_init__(self):
    super().__post_init__()
    self._fields()

  def _fields(self) -> np.ndarray:
    hs = np.asarray(self.h, np.float64)
    hs = np.full(self.num_clients, float(hs)) if hs.ndim == 0 else hs
    if hs.shape != (self.num_clients,):
      raise ValueError(f"ising field h must be a scalar or one value per client, got {hs.shape}.")
    return hs

  def _draw(self, key, num_samples):
    a = _check_adjacency(self.adjacency, self.num_clients)
    hs = self._fields()
    j_coupling = self.J
    classes = [jnp.asarray(c) for c in graphs.greedy_coloring(a)]
    adj = jnp.asarray(a, jnp.float32)
    field = jnp.asarray(hs, jnp.float32)
    k0, k_chain = jax.random.split(key)
    state = jax.random.bernoulli(k0, jax.nn.sigmoid(field), (num_samples, self.num_clients))

    def sweep(t, state):
      for c, members in enumerate(classes):
        k = jax.random.fold_in(jax.random.fold_in(k_chain, t), c)
        logits = field[members] + j_coupling * (state.astype(jnp.float32) @ adj[:, members])
        draw = jax.random.bernoulli(k, jax.nn.sigmoid(logits))
        state = state.at[:, members].set(draw)
      return state

    return _honest_from_byzantine(jax.lax.fori_loop(0, self.sweeps, sweep, state))


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class Cascade(Law):
  """Independent cascade: each client is a seed with probability p0, each edge of the graph is
  live with probability q (independently per draw), and every client reachable from a seed
  through live edges is Byzantine. b's law and the marginals: Monte Carlo."""
  name = "cascade"
  domains = {"p0": D.OneOf(D.PROBABILITY, D.Tuple(D.PROBABILITY, 1, note="one per client")),
             "q": D.PROBABILITY}
  graph_based = True
  scaled_parameter = "p0"
  per_client = ("p0",)
  p0: float = 0.05
  q: float = 0.3

  def __post_init__(self):
    super().__post_init__()
    _probabilities(self.p0, 1, "cascade seed probability p0")
    _probabilities(self.q, 1, "cascade edge probability q")

  def _draw(self, key, num_samples):
    a = _check_adjacency(self.adjacency, self.num_clients)
    n = self.num_clients
    k_seed, k_edge = jax.random.split(key)
    byzantine = jax.random.uniform(k_seed, (num_samples, n)) < self.p0
    upper = jnp.triu(jax.random.uniform(k_edge, (num_samples, n, n)) < self.q, k=1)
    live = (upper | jnp.swapaxes(upper, 1, 2)) & (jnp.asarray(a) > 0)[None]

    def spread(_, reached):
      return reached | jnp.any(live & reached[:, None, :], axis=2)

    return _honest_from_byzantine(jax.lax.fori_loop(0, n, spread, byzantine))


_LAWS: dict[str, type[Law]] = {c.name: c for c in (FixedCount, Bernoulli, BetaBernoulli, Clusters,
                                                    GraphCopula, Ising, Cascade)}
GRAPH_BASED = tuple(name for name, c in _LAWS.items() if c.graph_based)
# The declared domain of every parameter of every law (`Law.domains`).
OPTION_DOMAINS = {name: c.domains for name, c in _LAWS.items()}


def _sampler(cls: type[Law]):
  """The kind's sampler function, `fn(key, *, num_clients, num_samples, **parameters)`: the
  masks of `cls(num_clients=..., **parameters).sample(key, num_samples)` (no option-domain
  check; `sample` with a spec has it)."""
  def draw(key: jax.Array, *, num_clients: int, num_samples: int, **params) -> jax.Array:
    return cls(num_clients=num_clients, **params).sample(key, num_samples)
  draw.__name__ = draw.__qualname__ = cls.name
  draw.__doc__ = f"`{cls.__name__}`'s masks `[num_samples, num_clients]`:\n\n{cls.__doc__}"
  return draw


fixed_count = _sampler(FixedCount)
bernoulli = _sampler(Bernoulli)
beta_bernoulli = _sampler(BetaBernoulli)
clusters = _sampler(Clusters)
graph_copula = _sampler(GraphCopula)
ising = _sampler(Ising)
cascade = _sampler(Cascade)


# ----------------------------------------------------------------------- specs
def names() -> list[str]:
  return sorted(_LAWS)


def _law_class(name: str) -> type[Law]:
  if name not in _LAWS:
    raise ConfigError(f"unknown honest-set distribution {name!r}; available: {', '.join(names())}.")
  return _LAWS[name]


def option_domains(name: str) -> dict[str, D.Domain]:
  return dict(_law_class(name).domains)


def options(name: str) -> dict[str, Any]:
  """A distribution's parameters and their defaults (required ones map to inspect.Parameter.empty)."""
  return _law_class(name).parameters()


def config_options(name: str) -> dict[str, Any]:
  """The parameters as the configuration's schema holds them: `options`, with the kind's
  `config_defaults` for its required parameters."""
  return {**options(name), **_law_class(name).config_defaults}


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


def law(spec: Mapping[str, Any], num_clients: int) -> Law:
  """The law a spec describes, e.g. `law({"name": "bernoulli", "p": 0.15}, 25)`; graph-based
  ones take `"adjacency"` (needed to sample). ConfigError for an unknown name, parameter or a
  value outside its domain; ValueError for a value that does not fit n."""
  name, params = _split(spec)
  return _LAWS[name](num_clients=num_clients, spec_items=tuple(dict(spec).items()), **params)


# ----------------------------------------------------------------------- wrappers over `law`
def sample(key: jax.Array, spec: Mapping[str, Any], *, num_clients: int,
           num_samples: int) -> jax.Array:
  """Draws `[num_samples, num_clients]` honest masks from the distribution described by `spec`,
  e.g. `{"name": "bernoulli", "p": 0.15}`; graph-based ones also need `"adjacency"`."""
  return law(spec, num_clients).sample(key, num_samples)


def sample_conditioned(key: jax.Array, spec: Mapping[str, Any], *, num_clients: int,
                       num_samples: int, condition: str, f: int,
                       max_attempts: int = 1000) -> tuple[np.ndarray, dict]:
  """`Law.sample_conditioned` of `law(spec, num_clients)`: `[S, n]` masks conditioned on the
  realized b by rejection, and what it cost."""
  return law(spec, num_clients).sample_conditioned(key, num_samples, condition=condition, f=f,
                                                   max_attempts=max_attempts)


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
                        num_monte_carlo: int = MONTE_CARLO,
                        key: jax.Array | None = None) -> tuple[np.ndarray, bool]:
  """`Law.count_pmf` of `law(spec, num_clients)`: the law of the realized Byzantine count b,
  `[n + 1]`, and whether it is exact.

  Exact for fixed_count, bernoulli (Poisson binomial), beta_bernoulli (Beta-binomial) and
  clusters (per-cluster mixtures of binomials, convolved); Monte Carlo with `num_monte_carlo`
  draws otherwise.
  """
  return law(spec, num_clients).count_pmf(num_monte_carlo=num_monte_carlo, key=key)


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
