"""Krum and Multi-Krum (Blanchard, El Mhamdi, Guerraoui, Stainer, NeurIPS 2017)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from fedjax_robust.aggregators import base
from fedjax_robust.aggregators import distances


def krum_scores(updates: jax.Array, *, f: int) -> jax.Array:
  """score_i = Σ of the n − f − 2 smallest squared distances ‖x_i − x_j‖², j ≠ i, `[n]`.

  Squared distances and n − f − 2 neighbours, as in the paper (some codes square a second time;
  ByzFL uses n − f − 1 neighbours, i.e. the n − f nearest counting the row itself). A non-finite
  row is at
  distance +inf from every other, so its score is +inf; a finite row's score is finite while at
  most f rows are non-finite. Cost: one Gram product, O(n² log n) on `[n, n]`.
  """
  n, _ = base.check_updates(updates, "krum", f=f, min_n=lambda f: 2 * f + 3)
  dist = distances.pairwise_squared_distances(updates)
  dist = jnp.where(jnp.eye(n, dtype=bool), jnp.inf, dist)
  nearest, _ = lax.top_k(-dist, n - f - 2)
  return -jnp.sum(nearest, axis=-1)


def krum(updates: jax.Array, *, f: int) -> jax.Array:
  """Krum: the row x_{i*} with the lowest `krum_scores` (ties: lowest index). Needs n ≥ 2f + 3.

  Non-finite input: never selects a non-finite row while at most f rows are non-finite.
  """
  return base.average_selected(updates, jax.nn.one_hot(jnp.argmin(krum_scores(updates, f=f)),
                                                       updates.shape[0], dtype=updates.dtype))


def multi_krum(updates: jax.Array, *, f: int, m: int | None = None) -> jax.Array:
  """Multi-Krum: the average of the m rows with the lowest `krum_scores` (ties: lowest index);
  m = n − f by default (m = 1 is Krum). Needs n ≥ 2f + 3 and 1 ≤ m ≤ n.

  Non-finite input: non-finite rows have score +inf, so they are selected only if m > n − b.
  """
  n = updates.shape[0]
  m = n - f if m is None else m
  if not 1 <= m <= n:
    raise ValueError(f"multi_krum: m must lie in [1, n={n}], got {m}.")
  _, chosen = lax.top_k(-krum_scores(updates, f=f), m)
  weights = jnp.zeros((n,), updates.dtype).at[chosen].set(1.0)
  return base.average_selected(updates, weights)
