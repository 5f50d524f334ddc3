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


def _clip_rows(x, norms, threshold):
  factor = jnp.where(norms > threshold, threshold / jnp.where(norms > 0, norms, 1.0), 1.0)
  return x * factor[:, None]


def static_clipping(updates: jax.Array, *, threshold: float = 2.0) -> jax.Array:
  """x_i ← x_i · min(1, C/‖x_i‖) with a fixed C = `threshold`. Cost: two passes over `[n, d]`."""
  base.check_updates(updates, "static_clipping")
  if not threshold > 0:
    raise ValueError(f"static_clipping: threshold must be > 0, got {threshold}.")
  x, norms, _ = _norms_and_clean(updates)
  return _clip_rows(x, norms, threshold)


def num_adaptively_clipped(n: int, f: int) -> int:
  """ARC clips k = ⌊2 (f/n)(n − f)⌋ vectors."""
  return math.floor(2 * (f / n) * (n - f))


def adaptive_robust_clipping(updates: jax.Array, *, f: int) -> jax.Array:
  """Adaptive robust clipping (ARC): the k = ⌊2(f/n)(n − f)⌋ largest-norm rows are clipped to
  the norm of the (k+1)-th largest (Allouah, Guerraoui, Gupta, Jellouli, Rizk, Stephan, 2024).

  Non-finite rows count as the largest norms and are sent to 0. Cost: two passes plus a sort of
  n norms. Needs n > f.
  """
  n, _ = base.check_updates(updates, "adaptive_robust_clipping", f=f, min_n=lambda f: f + 1)
  k = num_adaptively_clipped(n, f)
  x, norms, finite = _norms_and_clean(updates)
  if k == 0:
    return x
  ranking = jnp.sort(jnp.where(finite, norms, jnp.inf))[::-1]
  return _clip_rows(x, norms, ranking[min(k, n - 1)])


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
  finite = base.finite_rows(updates)
  x = base.zero_nonfinite_rows(updates, finite)
  row_max = jnp.max(jnp.abs(x), axis=1)
  v = center.astype(x.dtype)
  for _ in range(iterations):
    norms = base.row_distances(x, v, row_max)
    c = jnp.where(finite, jnp.minimum(1.0, tau / jnp.where(norms > 0, norms, 1.0)), 0.0)
    v = v + (c @ x - jnp.sum(c) * v) / n   # (1/n) Σ c_i (x_i − v), as a matrix product
  return v
