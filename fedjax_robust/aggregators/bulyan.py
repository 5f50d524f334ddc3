"""Bulyan (El Mhamdi, Guerraoui, Rouault, "The hidden vulnerability of distributed learning in
Byzantium", ICML 2018)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from fedjax_robust.aggregators import base
from fedjax_robust.aggregators import distances
from fedjax_robust.aggregators.coordinatewise import meamed


def bulyan(updates: jax.Array, *, f: int) -> jax.Array:
  """Bulyan over Krum: select θ = n − 2f rows one at a time, each the Krum choice among the rows
  not yet selected (Krum on m rows scores with the max(m − f − 2, 1) nearest: the last two pools,
  of 2f + 2 and 2f + 1 rows, are below Krum's own n ≥ 2f + 3), then per coordinate average the
  β = θ − 2f selected values closest to their median (`meamed` with 2f). Needs n ≥ 4f + 3.
  Ties in a Krum score go to the lowest index; with one-neighbour scores two mutual nearest
  neighbours always tie, so the result can depend on the order of the rows.

  Non-finite input: such rows have Krum score +inf and are selected only after every finite
  row, so with at most f of them none is among the θ. Cost: one Gram product, θ top-k passes on
  `[n, n]`, a gather of θ rows and a sort of `[θ, d]`. Secure aggregation: no — it needs
  every update in the clear (the pairwise distances for the iterated Krum selection, then a
  coordinate-wise sort of the selected rows).
  """
  n, _ = base.check_updates(updates, "bulyan", f=f, min_n=lambda f: 4 * f + 3)
  theta = n - 2 * f
  dist = distances.pairwise_squared_distances(updates)
  dist = jnp.where(jnp.eye(n, dtype=bool), jnp.inf, dist)
  k_max = max(n - f - 2, 1)

  def select(t, carry):
    remaining, order = carry
    pool = jnp.where(remaining[:, None] & remaining[None, :], dist, jnp.inf)
    nearest = -lax.top_k(-pool, k_max)[0]                      # ascending, [n, k_max]
    k = jnp.maximum(n - t - f - 2, 1)
    scores = jnp.sum(jnp.where(jnp.arange(k_max) < k, nearest, 0.0), axis=1)
    # A remaining row of infinite score (a non-finite row) still ranks before a removed one.
    ranked = jnp.where(remaining, jnp.minimum(scores, jnp.finfo(scores.dtype).max), jnp.inf)
    chosen = jnp.argmin(ranked)
    return remaining.at[chosen].set(False), order.at[t].set(chosen)

  _, order = lax.fori_loop(0, theta, select,
                           (jnp.ones((n,), bool), jnp.zeros((theta,), jnp.int32)))
  return meamed(updates[order], f=2 * f)
