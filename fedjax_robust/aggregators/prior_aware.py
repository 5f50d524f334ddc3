"""Rules that use what the server may know about which clients are likely faulty (issue 15).

Three rules for the expected-robustness setting, where μ_H is not adversarial but comes from a
model the server partly knows:

- `posterior_filter`: a per-client prior P(honest) (e.g. the p_i of independent corruption)
  combined with a two-component likelihood of the distance to a robust centre; the aggregate is
  the posterior-weighted mean (a small EM).
- `adaptive_trim`: no prior, only a cap `max_f`; the number of rows removed is estimated from
  the largest gap among the sorted distances to the coordinate-wise median.
- `cluster_aggregate`: a known grouping of clients (corruption by clusters: shared data source,
  shared operator); average within each cluster, then a trimmed mean across clusters.

All three take `updates: [n, d]`, are jittable and batch under `jax.vmap` over draws (per-draw
priors included: they enter `base.uniform_cond` branches as operands). Non-finite rows (NaN,
±inf) never enter an average: they get posterior/weight 0, count as removed, or make their
cluster's aggregate NaN, which the trimmed mean drops.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_robust.aggregators import base
from fedjax_robust.aggregators import coordinatewise
from fedjax_robust.aggregators import order_statistics
from fedjax_robust.errors import ConfigError

# σ ≈ 1.4826 · MAD for a normal sample (1 / Φ⁻¹(3/4)).
MAD_TO_SIGMA = 1.4826
# The honest spread s is floored at this fraction of the median distance m (and at the smallest
# normal float), so that identical honest rows do not make the honest density a point mass.
RELATIVE_SPREAD_FLOOR = 1e-6


class Posterior(NamedTuple):
  """`posterior_filter`'s output."""
  value: jax.Array         # [d]
  honest_mass: jax.Array   # scalar: mean over the n rows of the final posterior π_i
  posterior: jax.Array     # [n]: the final π_i (0 for non-finite rows)


class PosteriorTrim(NamedTuple):
  """`posterior_trim`'s output."""
  value: jax.Array         # [d]
  trimmed: jax.Array       # int32 scalar: t, the rows trimmed from each side of each coordinate
  tail: jax.Array          # scalar: P(b > t | x) under the posterior's marginals


class AdaptiveTrim(NamedTuple):
  """`adaptive_trim`'s output."""
  value: jax.Array         # [d]
  num_removed: jax.Array   # int32 scalar: k, the rows removed (non-finite ones included)


def _masked_median(values: jax.Array, valid: jax.Array) -> jax.Array:
  """Median of `values[valid]` (mean of the two middle ones for an even count); +inf if none."""
  ordered = jnp.sort(jnp.where(valid, values, jnp.inf))
  count = jnp.sum(valid, dtype=jnp.int32)
  lower = ordered[jnp.maximum(count - 1, 0) // 2]
  upper = ordered[count // 2]
  return jnp.where(count % 2 == 1, lower, 0.5 * lower + 0.5 * upper)


def _finite_centre(x: jax.Array, finite: jax.Array, all_finite: bool) -> jax.Array:
  """Coordinate-wise median of the finite rows (of all rows on the ordinary path)."""
  if all_finite:
    return coordinatewise.coordinate_median(x)
  return coordinatewise.coordinate_median(x, present=finite)


def _distances(x: jax.Array, centre: jax.Array) -> jax.Array:
  """‖x_i − c‖ without overflow (rows of x finite), clamped at the float maximum."""
  r = base.row_distances(x, centre, jnp.max(jnp.abs(x), axis=1))
  return jnp.minimum(r, jnp.finfo(x.dtype).max)


def _mean_field(log_ratio: jax.Array, finite: jax.Array, prior: jax.Array, coupling: jax.Array,
                sweeps: int) -> jax.Array:
  """π_i = 1 − q_i under the pairwise prior (see `posterior_filter`): `sweeps` damped parallel
  mean-field updates q ← ½q + ½σ(h + Jq − log_ratio) from q = 1 − prior, with q_i = 1 for a
  non-finite row and q_i fixed at 1 − p_i where p_i ∈ {0, 1}; π = 0 on non-finite rows."""
  pf = 1.0 - prior
  inside = (pf > 0) & (pf < 1)
  safe = jnp.where(inside, pf, 0.5)
  j = coupling.astype(log_ratio.dtype)
  fixed = jnp.where(pf >= 1, 1.0, 0.0)
  start = jnp.where(inside, pf, fixed)          # the prior's P(faulty), clipped to [0, 1]
  field = jnp.log(safe) - jnp.log1p(-safe) - j @ start
  evidence = jnp.where(finite, log_ratio, 0.0)

  def sweep(_, q):
    target = jax.nn.sigmoid(field + j @ q - evidence)
    target = jnp.where(finite, jnp.where(inside, target, fixed), 1.0)
    return 0.5 * q + 0.5 * target

  q = jax.lax.fori_loop(0, sweeps, sweep, jnp.where(finite, start, 1.0))
  return jnp.where(finite, 1.0 - q, 0.0).astype(log_ratio.dtype)


def _posteriors(r: jax.Array, finite: jax.Array, prior: jax.Array, faulty_scale: float,
                coupling: jax.Array | None = None, sweeps: int = 0):
  """π_i for distances r (see `posterior_filter`), 0 where not finite."""
  m = _masked_median(r, finite)
  tiny = jnp.finfo(r.dtype).tiny
  s = MAD_TO_SIGMA * _masked_median(jnp.abs(r - m), finite)
  s = jnp.maximum(s, jnp.maximum(RELATIVE_SPREAD_FLOOR * m, tiny))
  sigma_f = faulty_scale * (m + s)
  # log L_h − log L_f = ½(z_f² − z_h²) + log(σ_f/s) − log 2, with z_h = (r − m)/s, z_f = r/σ_f.
  # ½(z_f − z_h)(z_f + z_h): each factor is r·a + b with a, b finite, so a huge r gives
  # (−inf)·(+inf) = −inf, never inf − inf.
  inv_s, inv_f = 1.0 / s, 1.0 / sigma_f
  shift = m * inv_s
  delta = 0.5 * (r * (inv_f - inv_s) + shift) * (r * (inv_f + inv_s) - shift)
  log_ratio = delta + jnp.log(sigma_f) - jnp.log(s) - math.log(2.0)
  if coupling is not None:
    return _mean_field(log_ratio, finite, prior.astype(r.dtype), coupling, sweeps)
  p = prior.astype(r.dtype)
  prior_logit = jnp.log(p) - jnp.log1p(-p)      # ±inf at p ∈ {0, 1}, handled below
  post = jax.nn.sigmoid(jnp.where((p > 0) & (p < 1), prior_logit, 0.0) + log_ratio)
  post = jnp.where(p >= 1, 1.0, jnp.where(p <= 0, 0.0, post))
  return jnp.where(finite, post, 0.0).astype(r.dtype)


def posterior_filter(updates: jax.Array, *, prior_honest: jax.Array, iterations: int = 3,
                     faulty_scale: float = 10.0, coupling: jax.Array | None = None,
                     mean_field_sweeps: int = 20) -> Posterior:
  """Posterior-weighted mean under a two-component model of the distances to a robust centre.

  With p_i = `prior_honest[i]` the server's prior probability that client i is honest:

    c⁰ = coordinate-wise median of the finite rows,
    r_i = ‖x_i − c‖,  m = median_i r_i,  s = max(1.4826·median_i |r_i − m|, 1e-6·m, tiny),
    honest:  r_i ~ Normal(m, s²)                          (L_h)
    faulty:  r_i ~ half-Normal(scale σ_f = faulty_scale·(m + s))   (L_f, a broad density)
    π_i = p_i L_h(r_i) / (p_i L_h(r_i) + (1 − p_i) L_f(r_i))     (log space: a sigmoid of
          logit(p_i) + ½(z_f² − z_h²) + log(σ_f/s) − log 2)
    z = Σ_i π_i x_i / Σ_i π_i,

  then `iterations − 1` EM-style refinements: c ← z and the distances, (m, s) and π recomputed.
  The medians are over the finite rows.

  Model assumptions: honest updates are i.i.d. around a common mean, so their distances to a
  robust centre concentrate (Normal, with robust estimates m, s from the median and MAD, which
  assume fewer than half the rows are faulty); a faulty row's distance has no structure beyond
  being possibly large, modelled by a half-Normal `faulty_scale` times wider than the honest
  distances (its density is nearly flat over the honest range, and decays so that a far row is
  faulty for any p_i < 1). The honest Normal is not truncated at 0 (negligible when m ≫ s). At
  the mode r = m the likelihood ratio is about σ_f/(2s): how far π_i can rise above p_i on an
  honest row, so honest rows get π close to 1 when their distances are concentrated (m ≫ s,
  e.g. high-dimensional Gaussian noise). The faulty component is a modelling choice, not fitted.

  What it optimizes: each step is the E-step of an EM for this mixture with the component
  parameters re-estimated robustly (not by the M-step's maximum likelihood) and the centre set to
  the posterior-weighted mean; no guarantee of convergence or of robustness (κ) is known for it:
  a faulty row placed at distance ≈ m from the centre is indistinguishable from an honest one
  and gets π ≈ its prior-driven honest value. With every p_i = 1 the rule is exactly the mean of
  the finite rows (π_i = 1 whatever the likelihood); p_i = 0 gives π_i = 0. No source: a
  standard Bayesian mixture-model filter written for this project (issue 15).

  Correlated prior (`coupling` J `[n, n]`, symmetric, zero diagonal; `server_prior.coupling`
  gives the log odds ratios of the server's μ_H model): the prior is taken as the pairwise model
  P(B) ∝ exp(Σ_i h_i B_i + ½ Σ_ij J_ij B_i B_j) with h_i = logit(1 − p_i) − Σ_j J_ij (1 − p_j),
  chosen so that without updates the mean-field fixed point is the prior's marginals. The
  posterior is approximated by `mean_field_sweeps` damped parallel mean-field updates
  q_i ← ½ q_i + ½ σ(h_i + Σ_j J_ij q_j − λ_i) from q = 1 − p (λ_i = log L_h/L_f of row i; a
  non-finite row has q_i = 1, certainly faulty, and its neighbours inherit that evidence), and
  π_i = 1 − q_i. So a client whose prior neighbours (same cluster, graph neighbours) look faulty
  is suspected more. J = 0 gives the independent formula above. Approximations, both stated:
  the pairwise model matches the prior's pair laws one pair at a time, not its joint law, and
  mean field ignores the posterior's correlations (it can be over-confident with strong
  couplings); no source, written for this project (issue 15).

  Edge cases: non-finite rows get π = 0 and are never averaged; a prior entry outside [0, 1] (or
  NaN) makes the value and honest_mass NaN; Σ π_i = 0 (no finite row, or every p_i = 0 on them)
  gives NaN (no honest client, the aggregate is undefined). Cost per iteration: one fused
  distance pass and one matrix-vector product, O(n·d), plus the coordinate median's sort.
  Secure aggregation: no — it needs every update in the clear (the coordinate-wise median of
  the rows as the first centre, and each row's distance to the centre, with their median and
  MAD).

  Args:
    updates: `[n, d]`.
    prior_honest: `[n]` in [0, 1], a traced array (may differ per vmapped draw).
    iterations: static int ≥ 1, number of posterior computations.
    faulty_scale: static float > 1, the faulty density's width relative to m + s.
    coupling: None (independent prior) or `[n, n]` pairwise couplings J (may be traced).
    mean_field_sweeps: static int ≥ 1, mean-field updates per posterior (with `coupling`).

  Returns:
    `Posterior(value [d], honest_mass scalar, posterior [n])`.
  """
  n, _ = base.check_updates(updates, "posterior_filter")
  prior = jnp.asarray(prior_honest)
  if prior.shape != (n,):
    raise ConfigError(f"posterior_filter: prior_honest must have shape ({n},), got "
                      f"{prior.shape}.")
  if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 1:
    raise ConfigError(f"posterior_filter: iterations must be an int >= 1, got {iterations!r}.")
  if not (isinstance(faulty_scale, (int, float)) and math.isfinite(faulty_scale)
          and faulty_scale > 1):
    raise ConfigError(f"posterior_filter: faulty_scale must be a finite float > 1, got "
                      f"{faulty_scale!r}.")
  faulty_scale = float(faulty_scale)
  prior = prior.astype(updates.dtype)
  if coupling is not None:
    coupling = jnp.asarray(coupling, updates.dtype)
    if coupling.shape != (n, n):
      raise ConfigError(f"posterior_filter: coupling must have shape ({n}, {n}), got "
                        f"{coupling.shape}.")
    if (not isinstance(mean_field_sweeps, int) or isinstance(mean_field_sweeps, bool)
        or mean_field_sweeps < 1):
      raise ConfigError(f"posterior_filter: mean_field_sweeps must be an int >= 1, got "
                        f"{mean_field_sweeps!r}.")
  else:
    coupling = jnp.zeros((0, 0), updates.dtype)   # an operand placeholder, never used
  coupled = coupling.shape == (n, n)

  def run(x, finite, prior, coupling, all_finite):
    def step(centre):
      post = _posteriors(_distances(x, centre), finite, prior, faulty_scale,
                         coupling if coupled else None, mean_field_sweeps)
      total = jnp.sum(post)
      value = (post @ x) / jnp.where(total > 0, total, 1.0)
      return jnp.where(total > 0, value, jnp.nan), post

    carry = step(_finite_centre(x, finite, all_finite))
    carry = jax.lax.fori_loop(1, iterations, lambda _, c: step(c[0]), carry)
    value, post = carry
    ok = jnp.all((prior >= 0) & (prior <= 1))
    mass = jnp.mean(post)
    return Posterior(jnp.where(ok, value, jnp.nan), jnp.where(ok, mass, jnp.nan), post)

  def fast(x, finite, prior, coupling):
    return run(x, finite, prior, coupling, True)

  def exact(x, finite, prior, coupling):
    return run(base.zero_nonfinite_rows(x, finite), finite, prior, coupling, False)

  finite = base.finite_rows(updates)
  # The prior is batched per draw: an operand of the branches, never a closure.
  return base.uniform_cond(~jnp.all(finite), exact, fast, updates, finite, prior, coupling)


def count_pmf(faulty: jax.Array) -> jax.Array:
  """The law of b = Σ_i B_i for independent B_i ~ Bernoulli(`faulty[i]`) `[n]`: the
  Poisson-binomial pmf `[n + 1]` by the convolution recursion, one client at a time."""
  n = faulty.shape[0]
  pmf = jnp.zeros((n + 1,), faulty.dtype).at[0].set(1.0)

  def add(i, pmf):
    q = faulty[i]
    return pmf * (1.0 - q) + jnp.concatenate([jnp.zeros((1,), pmf.dtype), pmf[:-1]]) * q

  return jax.lax.fori_loop(0, n, add, pmf)


def trimmed_mean_at(updates: jax.Array, t: jax.Array) -> jax.Array:
  """Coordinate-wise trimmed mean removing the t smallest and t largest values of each
  coordinate, t a traced int32 with 0 ≤ t < n/2 (coordinatewise.trimmed_mean takes a static f).
  NaN sorts last and −inf first, so up to t non-finite rows on each side never enter."""
  n = updates.shape[0]
  ordered = order_statistics.sort_clients(updates)
  rank = jnp.arange(n)[:, None]
  keep = (rank >= t) & (rank < n - t)
  return jnp.sum(jnp.where(keep, ordered, 0.0), axis=0) / (n - 2 * t).astype(updates.dtype)


def posterior_trim(updates: jax.Array, *, prior_honest: jax.Array, delta: float = 0.05,
                   iterations: int = 3, faulty_scale: float = 10.0,
                   coupling: jax.Array | None = None,
                   mean_field_sweeps: int = 20) -> PosteriorTrim:
  """The trimmed mean whose trim level minimizes the expected error bound under the server's
  posterior of b given the submitted vectors (issue 29): per round,

    π = posterior_filter(x; prior_honest, …).posterior   (P(row i honest | x), 0 if non-finite),
    P(b = k | x) = Poisson-binomial(1 − π)(k)             (`count_pmf`),
    t = min{t ∈ {0, …, ⌊(n − 1)/2⌋} : P(b > t | x) ≤ δ}    (⌊(n − 1)/2⌋ if none),
    output = coordinate-wise trimmed mean removing t values from each side (`trimmed_mean_at`).

  Why this t: with b ≤ t the trimmed mean is (t, κ_t)-robust, κ_t = 6r(1 + r), r = t/(n − 2t),
  increasing in t (aggregators.robustness; and with b < t still κ_t, fewer_faults_factor), so its
  bound's Byzantine term κ_t G²/(1 − κ_t B²) grows with t; with b > t no bound holds. The t above
  is the smallest, hence the one of least bound, among those whose posterior probability of
  leaving the guarantee is at most δ: the expected bound minimized under a chance constraint.
  With a certain prior (every p_i ∈ {0, 1}) t is the number of faulty clients; with every
  p_i = 1, t = 0 and the rule is the mean. Where the posterior is confident that few rows are
  faulty it trims less than a declared f; where the attack is visible in the distances (or the
  prior puts much mass on b), more.

  Approximations (stated): b's law treats the posterior's marginals as independent (with a
  correlated prior's `coupling` the marginals are mean-field ones, see posterior_filter); the
  posterior's two-component model is posterior_filter's (no guarantee: a faulty row at the honest
  distance looks honest, and the rule then trims at the prior's quantile). No robustness
  coefficient is known for the rule as a whole: t is data-dependent. No source: written for this
  project (issue 29).

  Non-finite rows get π = 0, so b ≥ their number with certainty and t ≥ it (up to ⌊(n − 1)/2⌋):
  they are trimmed on every coordinate. Secure aggregation: no (it needs every update in the
  clear: the posterior's distances and the coordinate-wise sort).

  Args:
    updates: `[n, d]`.
    prior_honest: `[n]` in [0, 1], a traced array (may differ per vmapped draw).
    delta: static float in (0, 1): the posterior probability of b > t tolerated.
    iterations, faulty_scale, coupling, mean_field_sweeps: posterior_filter's.

  Returns:
    `PosteriorTrim(value [d], trimmed int32, tail scalar)`.
  """
  n, _ = base.check_updates(updates, "posterior_trim")
  if not (isinstance(delta, (int, float)) and 0 < delta < 1):
    raise ConfigError(f"posterior_trim: delta must be a float in (0, 1), got {delta!r}.")
  filtered = posterior_filter(updates, prior_honest=prior_honest, iterations=iterations,
                              faulty_scale=faulty_scale, coupling=coupling,
                              mean_field_sweeps=mean_field_sweeps)
  tails = 1.0 - jnp.cumsum(count_pmf(1.0 - filtered.posterior))   # P(b > t | x), t = 0..n
  t_max = (n - 1) // 2
  ok = tails[:t_max + 1] <= delta
  t = jnp.where(jnp.any(ok), jnp.argmax(ok), t_max).astype(jnp.int32)
  # The filter's honest mass is NaN exactly where its prior is NaN or outside [0, 1].
  value = jnp.where(jnp.isnan(filtered.honest_mass), jnp.nan, trimmed_mean_at(updates, t))
  return PosteriorTrim(value, t, tails[t])


def adaptive_trim(updates: jax.Array, *, max_f: int, gap_factor: float = 2.0) -> AdaptiveTrim:
  """Mean after removing the k farthest rows, k estimated from the largest gap in distances.

    c = coordinate-wise median of the finite rows,  r_i = ‖x_i − c‖ (+inf for a non-finite row),
    r_(0) ≤ … ≤ r_(n−1) sorted (ties by row index),  b = number of non-finite rows,
    g_k = r_(n−k) / r_(n−k−1)  for k = b+1, …, max_f   (the gaps among the max_f + 1 largest
          distances; 0/0 counts as 1, x/0 as +inf),
    k = argmax_k g_k   if max_k g_k > gap_factor,   else k = b,
    output = mean of the n − k rows with the smallest distances.

  Gap by ratio, not difference: scale-free, so one `gap_factor` serves every model size and
  round. k ≤ max_f (the cap; ties between gaps go to the smallest k); non-finite rows are always
  removed and count towards k. If more than max_f rows are non-finite the cap cannot hold: the
  value is NaN and num_removed = b. Needs n ≥ max_f + 1.

  Model assumptions: honest distances to the median concentrate (as for i.i.d. noise in high
  dimension, where consecutive sorted distances differ by a ratio near 1), and faulty rows sit
  farther out, separated by a relative gap larger than `gap_factor`. In low dimension honest
  distances spread (for d = 1 they are half-normal and r_(n−1)/r_(n−2) can exceed 2 by chance),
  so honest rows may be removed. No robustness guarantee is known: faulty rows placed within
  the honest spread, or spread out so no single ratio exceeds gap_factor, are kept. No source: a
  largest-gap heuristic written for this project (issue 15).

  Cost: a coordinate median (a sort of `[n, d]`), one fused distance pass, a sort of n values,
  one matrix-vector product. Secure aggregation: no — it needs every update in the clear (the
  coordinate-wise median of the rows as the centre, and every row's distance to it, sorted to
  find the largest gap).

  Returns:
    `AdaptiveTrim(value [d], num_removed int32)`.
  """
  n, _ = base.check_updates(updates, "adaptive_trim", f=max_f, min_n=lambda f: f + 1)
  if not (isinstance(gap_factor, (int, float)) and math.isfinite(gap_factor)
          and gap_factor >= 1):
    raise ConfigError(f"adaptive_trim: gap_factor must be a finite float >= 1, got "
                      f"{gap_factor!r}.")
  gap_factor = float(gap_factor)

  def run(x, finite, all_finite):
    r = jnp.where(finite, _distances(x, _finite_centre(x, finite, all_finite)), jnp.inf)
    r_sorted, order = jax.lax.sort((r, jnp.arange(n)), num_keys=2)
    bad = jnp.sum(~finite, dtype=jnp.int32)
    ks = jnp.arange(1, max_f + 1)
    upper, lower = r_sorted[n - ks], r_sorted[n - ks - 1]
    ratio = jnp.where(lower > 0, upper / jnp.where(lower > 0, lower, 1.0),
                      jnp.where(upper > 0, jnp.inf, 1.0))
    ratio = jnp.where(ks > bad, ratio, -jnp.inf)        # g_k only for k > b (finite pairs)
    if max_f > 0:
      best = jnp.argmax(ratio)
      k = jnp.where(ratio[best] > gap_factor, ks[best], bad).astype(jnp.int32)
    else:
      k = bad
    rank = jnp.zeros((n,), jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
    keep = (rank < n - k).astype(x.dtype)
    value = base.weighted_average(x, keep)
    return AdaptiveTrim(jnp.where(bad <= max_f, value, jnp.nan), k)

  def fast(x, finite):
    return run(x, finite, True)

  def exact(x, finite):
    return run(base.zero_nonfinite_rows(x, finite), finite, False)

  finite = base.finite_rows(updates)
  return base.uniform_cond(~jnp.all(finite), exact, fast, updates, finite)


def cluster_aggregate(updates: jax.Array, *, clusters: tuple[int, ...], f_clusters: int,
                      inner: str = "mean") -> jax.Array:
  """Two-stage rule over a known grouping: aggregate within clusters, trim across them.

    a_k = mean_{i: clusters[i] = k} x_i       (inner = "mean")
        or coordinate-wise median of those rows (inner = "median"),   k = 0..K−1,
    output = coordinate-wise trimmed mean of a_0..a_{K−1}, f_clusters trimmed from each end.

  Model assumptions: corruption acts by clusters (a shared data source or operator), so at most
  f_clusters whole clusters are faulty and the honest clusters' aggregates are close. Then the
  rule inherits the trimmed mean's guarantees with K "clients" and f_clusters Byzantine ones
  (Yin et al., ICML 2018, applied to cluster aggregates); a faulty row inside an otherwise
  honest cluster moves that cluster's mean without bound (a "median" inner limits this while
  faulty rows are fewer than half the cluster). The two-stage form is that of bucketing /
  median-of-means (Karimireddy et al., ICLR 2022) with the buckets fixed by the known clusters
  instead of drawn at random.

  `clusters` is a static tuple of n ints; every index 0..K−1 must occur. Needs K > 2·f_clusters
  (ConfigError, a ValueError, otherwise).

  Non-finite rows: with inner = "mean", a cluster holding a non-finite row has the aggregate NaN
  (every coordinate); NaN sorts last, so each such cluster takes one of the f_clusters top
  trimmed slots: with j ≤ f_clusters spoiled clusters the output is the mean of the clean
  aggregates' sorted values f_clusters .. K − f_clusters − 1 (f_clusters trimmed below,
  f_clusters − j above), finite; with j > f_clusters it is NaN. With inner = "median", the
  cluster median absorbs non-finite rows while fewer than half of its rows are (coordinate
  median's rule); otherwise its aggregate has NaN/±inf entries, dropped the same way.

  Cost: one `[K, n] × [n, d]` product (mean) or one coordinate median per cluster (median), and
  a trimmed mean over `[K, d]`.

  Secure aggregation: no — with inner = "mean" each cluster's mean could be one secure average
  over its members, but the trimmed mean across clusters sorts the K cluster aggregates
  coordinate-wise, so they are in the clear (a singleton cluster's is its client's update);
  inner = "median" sorts the rows themselves.
  """
  n, _ = base.check_updates(updates, "cluster_aggregate")
  clusters = tuple(int(c) for c in clusters)
  if len(clusters) != n or min(clusters, default=0) < 0:
    raise ConfigError(f"cluster_aggregate: clusters must be a tuple of {n} non-negative cluster "
                      f"indices (one per row), got {clusters!r}.")
  k_count = max(clusters) + 1
  members = [[i for i, c in enumerate(clusters) if c == k] for k in range(k_count)]
  if any(not m for m in members):
    raise ConfigError(f"cluster_aggregate: every cluster index 0..{k_count - 1} must occur in "
                      f"clusters, got {clusters!r}.")
  if not isinstance(f_clusters, int) or isinstance(f_clusters, bool) or f_clusters < 0:
    raise ConfigError(f"cluster_aggregate: f_clusters must be a non-negative int, got "
                      f"{f_clusters!r}.")
  if k_count <= 2 * f_clusters:
    raise ConfigError(f"cluster_aggregate: needs K > 2·f_clusters clusters, got K={k_count} "
                      f"for f_clusters={f_clusters}.")
  if inner not in ("mean", "median"):
    raise ConfigError(f"cluster_aggregate: inner must be 'mean' or 'median', got {inner!r}.")

  if inner == "median":
    per_cluster = jnp.stack([coordinatewise.coordinate_median(updates[np.asarray(m)])
                             for m in members])
  else:
    membership = np.zeros((k_count, n), np.float64)
    for k, m in enumerate(members):
      membership[k, m] = 1.0 / len(m)
    weights = jnp.asarray(membership, updates.dtype)
    in_cluster = jnp.asarray(membership > 0)

    def exact(x, finite):
      means = weights @ base.zero_nonfinite_rows(x, finite)
      spoiled = jnp.any(in_cluster & ~finite[None, :], axis=1)
      return jnp.where(spoiled[:, None], jnp.nan, means)

    finite = base.finite_rows(updates)
    per_cluster = base.uniform_cond(~jnp.all(finite), exact, lambda x, _: weights @ x,
                                    updates, finite)
  return coordinatewise.trimmed_mean(per_cluster, f=f_clusters)


# ----------------------------------------------------------------------- registry forms
def _stage_prior(rule: str, updates: jax.Array, prior_honest, coupling: str, prior_coupling):
  """The registered prior rules' prior as arrays: P(honest) `[n]` and the couplings `[n, n]`
  (None without, or with `coupling="none"`); ConfigError, naming `rule`, where there is no
  prior or its shape does not fit n."""
  n = updates.shape[0]
  if prior_honest is None:
    raise ConfigError(f"{rule} needs the server's prior P(client i honest): set "
                      "server_prior.kind ('mu_h' or 'marginals'), or "
                      f"aggregator_options.{rule}.prior_honest (one per client).")
  if len(prior_honest) != n:
    raise ConfigError(f"{rule}: prior_honest has {len(prior_honest)} values for n={n} clients.")
  j = None
  if coupling == "prior" and prior_coupling is not None:
    j = np.asarray(prior_coupling, np.float64)
    if j.shape != (n, n):
      raise ConfigError(f"{rule}: prior_coupling has shape {j.shape} for n={n} clients.")
  return (jnp.asarray(prior_honest, updates.dtype),
          None if j is None else jnp.asarray(j, updates.dtype))


def posterior_filter_stage(updates: jax.Array, *, prior_honest: tuple[float, ...] | None = None,
                           iterations: int = 3, faulty_scale: float = 10.0,
                           coupling: str = "prior",
                           prior_coupling: tuple[tuple[float, ...], ...] | None = None,
                           mean_field_sweeps: int = 20) -> Posterior:
  """`posterior_filter` as a registered rule: `prior_honest` (static, one P(honest) per client)
  comes from the server's prior (`config.server_prior`, filled in by
  `config.aggregator_options`); without one the rule is refused. With `coupling="prior"` and a
  correlated prior, `prior_coupling` is filled in the same way (`server_prior.coupling`);
  `coupling="none"` treats the clients as independent under any prior. Secure aggregation: no
  (see `posterior_filter`)."""
  prior, j = _stage_prior("posterior_filter", updates, prior_honest, coupling, prior_coupling)
  return posterior_filter(updates, prior_honest=prior, iterations=iterations,
                          faulty_scale=faulty_scale, coupling=j,
                          mean_field_sweeps=mean_field_sweeps)


def posterior_trim_stage(updates: jax.Array, *, prior_honest: tuple[float, ...] | None = None,
                         delta: float = 0.05, iterations: int = 3, faulty_scale: float = 10.0,
                         coupling: str = "prior",
                         prior_coupling: tuple[tuple[float, ...], ...] | None = None,
                         mean_field_sweeps: int = 20) -> PosteriorTrim:
  """`posterior_trim` as a registered rule: the prior (and a correlated prior's couplings) come
  from the server's prior as for `posterior_filter_stage`; without one the rule is refused."""
  prior, j = _stage_prior("posterior_trim", updates, prior_honest, coupling, prior_coupling)
  return posterior_trim(updates, prior_honest=prior, delta=delta, iterations=iterations,
                        faulty_scale=faulty_scale, coupling=j,
                        mean_field_sweeps=mean_field_sweeps)


def adaptive_trim_stage(updates: jax.Array, *, f: int, gap_factor: float = 2.0) -> AdaptiveTrim:
  """`adaptive_trim` as a registered rule: the cap on the rows removed is the declared f.
  Secure aggregation: no (see `adaptive_trim`)."""
  return adaptive_trim(updates, max_f=f, gap_factor=gap_factor)


def cluster_aggregate_stage(updates: jax.Array, *, clusters: tuple[int, ...] | None = None,
                            f_clusters: int | None = None, inner: str = "mean") -> jax.Array:
  """`cluster_aggregate` as a registered rule: `clusters` and `f_clusters` from the config, or
  from a server prior of clustered corruption (`config.aggregator_options` fills them in: the
  prior's clusters, and f_clusters the (1 − δ)-quantile of the number of clusters holding a
  faulty client, `server_prior.cluster_quantile_f`). Secure aggregation: no (see
  `cluster_aggregate`)."""
  if clusters is None or f_clusters is None:
    raise ConfigError("cluster_aggregate needs clusters (one id per client) and f_clusters: set "
                      "aggregator_options.cluster_aggregate.clusters and .f_clusters, or a "
                      "server prior of clustered corruption (server_prior.kind='mu_h' with "
                      "honest_set='clusters').")
  return cluster_aggregate(updates, clusters=tuple(int(c) for c in clusters),
                           f_clusters=int(f_clusters), inner=inner)
