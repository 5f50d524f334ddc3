"""The (weighted) mean: the non-robust baseline."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fedjax_robust.aggregators import base


def mean(updates: jax.Array, *, weights: jax.Array | None = None) -> jax.Array:
  """Average of the rows: (1/n) Σ_i x_i, or Σ_i w_i x_i / Σ_i w_i with client weights.

  Not robust: a single NaN, ±inf or huge row sets the result to NaN, ±inf or huge.
  Cost: one pass over `[n, d]`, computed as a matrix product.
  """
  n, _ = base.check_updates(updates, "mean")
  if weights is None:
    weights = jnp.ones((n,), updates.dtype)
  return base.weighted_average(updates, weights)
