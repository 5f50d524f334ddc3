"""Pre-aggregators: `[n, d] -> [n', d]` maps applied before a rule (compose with `chain`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from fedjax_robust.aggregators import base
from fedjax_robust.aggregators import distances


def nearest_neighbor_mixing(updates: jax.Array, *, f: int) -> jax.Array:
  """Nearest neighbour mixing (NNM): x_i ← mean of the n − f nearest neighbours of x_i, itself
  included (Euclidean distance; ties broken by the lower client index).

  Allouah, Farhadkhani, Guerraoui, Gupta, Pinot, Stephan, "Fixing by mixing: a recipe for
  optimal Byzantine ML under heterogeneity", AISTATS 2023. Needs n > f.

  Non-finite input: a finite row never mixes with a non-finite one as long as at most f rows are
  non-finite; a non-finite row, and any row whose neighbourhood includes one, comes out as NaN
  (the rule that follows must drop it). Cost: the `[n, n]` distances
  (one Gram product) and one `[n, n] × [n, d]` product; no `[n, n − f, d]` tensor is built.
  """
  n, _ = base.check_updates(updates, "nearest_neighbor_mixing", f=f, min_n=lambda f: f + 1)
  k = n - f
  dist = distances.pairwise_squared_distances(updates)
  dist = jnp.where(jnp.eye(n, dtype=bool), -1.0, dist)  # each row is its own first neighbour
  _, neighbours = lax.top_k(-dist, k)
  mixing = jnp.zeros((n, n), updates.dtype).at[jnp.arange(n)[:, None], neighbours].set(1.0 / k)
  finite = base.finite_rows(updates)
  mixed = mixing @ base.zero_nonfinite_rows(updates, finite)
  poisoned = (mixing @ (~finite).astype(updates.dtype)) > 0
  return jnp.where(poisoned[:, None], jnp.nan, mixed)
