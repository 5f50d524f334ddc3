"""Clipping: static and adaptive robust clipping (pre-aggregators), centered clipping (a rule).

clip_C(y) = y · min(1, C/‖y‖). A non-finite row has no norm and no direction; every clipping
map here sends it to the zero vector (the only clipped value that does not depend on the
undefined direction), so it cannot poison what follows. Huge finite rows are clipped exactly
(norms are computed without overflow).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from fedjax_robust.aggregators import base


def _norms_and_clean(updates):
  finite = base.finite_rows(updates)
  x = base.zero_nonfinite_rows(updates, finite)
  norms = base.row_distances(x, jnp.zeros((x.shape[1],), x.dtype), jnp.max(jnp.abs(x), axis=1))
  return x, norms, finite


def _clip_factors(norms, threshold):
  return jnp.where(norms > threshold, threshold / jnp.where(norms > 0, norms, 1.0), 1.0)


def _scale_rows(updates, factors_fn, finish, *operands):
  """`finish(x, factors, *operands)` with factors_fn(norms, finite) `[n]` the clipping factors.

  Ordinary rows (`base.ordinary_or_exact`): norms from one dot pass, no copy. Otherwise: non-finite
  rows zeroed (factor 0), norms computed without overflow.
  """
  def fast(x, sq, *ops):
    return finish(x, factors_fn(jnp.sqrt(sq), jnp.ones(sq.shape, bool)), *ops)

  def exact(x, *ops):
    x, norms, finite = _norms_and_clean(x)
    return finish(x, jnp.where(finite, factors_fn(norms, finite), 0.0), *ops)

  return base.ordinary_or_exact(updates, fast, exact, *operands)


def _scaled(x, factors):
  return x * factors[:, None]


def _scaled_average(x, factors, weights):
  """Σ w_i s_i x_i / Σ w_i: clipping then the (weighted) mean, as one matrix product."""
  return ((weights * factors) @ x) / jnp.sum(weights)


def _weights(updates, weights):
  n = updates.shape[0]
  return jnp.ones((n,), updates.dtype) if weights is None else weights.astype(updates.dtype)


def _check_threshold(threshold):
  if not threshold > 0:
    raise ValueError(f"static_clipping: threshold must be > 0, got {threshold}.")


def static_clipping(updates: jax.Array, *, threshold: float = 2.0) -> jax.Array:
  """x_i ← x_i · min(1, C/‖x_i‖) with a fixed C = `threshold`. Cost: two passes over `[n, d]`."""
  base.check_updates(updates, "static_clipping")
  _check_threshold(threshold)
  return _scale_rows(updates, lambda norms, _: _clip_factors(norms, threshold), _scaled)


def static_clipping_mean(updates: jax.Array, *, threshold: float = 2.0,
                         weights: jax.Array | None = None) -> jax.Array:
  """`mean(static_clipping(updates))` (weighted: Σ w_i clip(x_i) / Σ w_i) without building the
  clipped matrix: two reads of `[n, d]`. The pipeline "static_clipping+mean" runs this."""
  base.check_updates(updates, "static_clipping")
  _check_threshold(threshold)
  return _scale_rows(updates, lambda norms, _: _clip_factors(norms, threshold), _scaled_average,
                     _weights(updates, weights))


def num_adaptively_clipped(n: int, f: int) -> int:
  """ARC clips k = ⌊2 (f/n)(n − f)⌋ vectors."""
  return math.floor(2 * (f / n) * (n - f))


def _arc_factors(n: int, f: int):
  k = num_adaptively_clipped(n, f)

  def factors(norms, finite):
    if k == 0:
      return jnp.ones_like(norms)
    ranking = jnp.sort(jnp.where(finite, norms, jnp.inf))[::-1]
    return _clip_factors(norms, ranking[min(k, n - 1)])

  return factors


def adaptive_robust_clipping(updates: jax.Array, *, f: int) -> jax.Array:
  """Adaptive robust clipping (ARC): the k = ⌊2(f/n)(n − f)⌋ largest-norm rows are clipped to
  the norm of the (k+1)-th largest (Allouah, Guerraoui, Gupta, Jellouli, Rizk, Stephan, 2024).

  Non-finite rows count as the largest norms and are sent to 0. Cost: two passes plus a sort of
  n norms. Needs n > f.
  """
  n, _ = base.check_updates(updates, "adaptive_robust_clipping", f=f, min_n=lambda f: f + 1)
  return _scale_rows(updates, _arc_factors(n, f), _scaled)


def adaptive_robust_clipping_mean(updates: jax.Array, *, f: int,
                                  weights: jax.Array | None = None) -> jax.Array:
  """`mean(adaptive_robust_clipping(updates, f=f))` (or its weighted mean) in two reads of
  `[n, d]`; the pipeline "adaptive_robust_clipping+mean" runs this."""
  n, _ = base.check_updates(updates, "adaptive_robust_clipping", f=f, min_n=lambda f: f + 1)
  return _scale_rows(updates, _arc_factors(n, f), _scaled_average, _weights(updates, weights))


def centered_clipping(updates: jax.Array, *, center: jax.Array, tau: float = 10.0,
                      iterations: int = 3) -> jax.Array:
  """Centered clipping: v ← v + (1/n) Σ_i clip_τ(x_i − v), `iterations` times from v = `center`
  (in training: the previous round's aggregate, carried in the server state; 0 at first).

  Karimireddy, He, Jaggi, "Learning from history for Byzantine robust optimization", ICML 2021.
  Defaults τ = 10, L = 3, as in Karimireddy et al.'s experiments (ByzFL: τ = 100, L = 1). A
  non-finite row contributes clip(·) = 0 (see the module docstring),
  still counted in 1/n. Cost: two passes over `[n, d]` per iteration.
  """
  n, _ = base.check_updates(updates, "centered_clipping")
  if not tau > 0:
    raise ValueError(f"centered_clipping: tau must be > 0, got {tau}.")
  dtype = updates.dtype

  def run(x, v, finite, distances):
    for _ in range(iterations):
      norms = distances(x, v)
      c = jnp.where(finite, jnp.minimum(1.0, tau / jnp.where(norms > 0, norms, 1.0)), 0.0)
      v = v + (c @ x - jnp.sum(c) * v) / n   # (1/n) Σ c_i (x_i − v), as a matrix product
    return v

  def fast(x, sq, v):
    return run(x, v, True, lambda x, v: jnp.sqrt(jnp.sum((x - v) ** 2, axis=-1)))

  def exact(x, v):
    finite = base.finite_rows(x)
    x = base.zero_nonfinite_rows(x, finite)
    row_max = jnp.max(jnp.abs(x), axis=1)
    return run(x, v, finite, lambda x, v: base.row_distances(x, v, row_max))

  # Each iteration moves v by at most τ, so ‖v_t‖ ≤ ‖v_0‖ + Lτ bounds what the fast path meets.
  v0 = center.astype(dtype)
  bound = (base.vector_norm(v0) + iterations * jnp.asarray(tau, dtype)) ** 2
  return base.ordinary_or_exact(updates, fast, exact, v0, extra_squared_norm=bound)
