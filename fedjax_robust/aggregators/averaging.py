"""The (weighted) mean: the non-robust baseline."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fedjax_robust.aggregators import base


def mean(updates: jax.Array, *, weights: jax.Array | None = None,
         present: jax.Array | None = None) -> jax.Array:
  """Average of the rows: (1/n) Σ_i x_i, or Σ_i w_i x_i / Σ_i w_i with client weights.

  Not robust: a single NaN, ±inf or huge row sets the result to NaN, ±inf or huge.
  Cost: one pass over `[n, d]`, computed as a matrix product. Secure aggregation: yes, one
  secure average a round (`registry.SECURE_AVERAGES`).

  Client drop-outs: with a boolean `present [n]`, the average of the m = Σ present rows
  (1/m) Σ_{i present} x_i (weighted: absent rows have weight 0); absent rows may hold any value,
  NaN and ±inf included, and are zeroed first. NaN when m = 0 (or the present weights sum to 0).
  An all-True mask gives the numbers of `present=None` (`base.by_presence`).
  """
  n, _ = base.check_updates(updates, "mean")
  if present is not None:
    return base.by_presence(base.check_present(present, n, "mean"),
                            lambda x, *w: mean(x, weights=w[0] if w else None), _mean_present,
                            *base.with_optional(updates, weights))
  if weights is None:
    weights = jnp.ones((n,), updates.dtype)
  return base.weighted_average(updates, weights)


def _mean_present(present: jax.Array, updates: jax.Array, *weights: jax.Array) -> jax.Array:
  w = weights[0].astype(updates.dtype) if weights else jnp.ones(present.shape, updates.dtype)
  w = jnp.where(present, w, jnp.zeros((), updates.dtype))
  return base.weighted_average(base.zero_nonfinite_rows(updates, present), w)
