"""Krum and Multi-Krum (Blanchard, El Mhamdi, Guerraoui, Stainer, NeurIPS 2017)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from fedjax_robust.aggregators import base
from fedjax_robust.aggregators import distances


def krum_scores(updates: jax.Array, *, f: int, present: jax.Array | None = None) -> jax.Array:
  """score_i = Σ of the n − f − 2 smallest squared distances ‖x_i − x_j‖², j ≠ i, `[n]`.

  Squared distances and n − f − 2 neighbours, as in the paper (some codes square a second time;
  ByzFL uses n − f − 1 neighbours, i.e. the n − f nearest counting the row itself). A non-finite
  row is at
  distance +inf from every other, so its score is +inf; a finite row's score is finite while at
  most f rows are non-finite. Cost: one Gram product, O(n² log n) on `[n, n]`.

  Client drop-outs: with a boolean `present [n]` and m = Σ present, a present row's score sums
  its m − f − 2 smallest squared distances to the other present rows (f unchanged); absent rows
  (any value) score +inf. Every score is NaN when m < 2f + 3 (the rule is undefined). An
  all-True mask gives the numbers of `present=None` (`base.by_presence`).
  """
  n, _ = base.check_updates(updates, "krum", f=f, min_n=lambda f: 2 * f + 3)
  if present is not None:
    return base.by_presence(base.check_present(present, n, "krum"),
                            lambda x: krum_scores(x, f=f),
                            lambda p, x: _krum_scores_present(p, x, f), updates)
  dist = distances.pairwise_squared_distances(updates)
  dist = jnp.where(jnp.eye(n, dtype=bool), jnp.inf, dist)
  nearest, _ = lax.top_k(-dist, n - f - 2)
  return -jnp.sum(nearest, axis=-1)


def krum(updates: jax.Array, *, f: int, present: jax.Array | None = None) -> jax.Array:
  """Krum: the row x_{i*} with the lowest `krum_scores` (ties: lowest index). Needs n ≥ 2f + 3.

  Non-finite input: never selects a non-finite row while at most f rows are non-finite.
  Secure aggregation: no — it needs every update in the clear (the pairwise distances between
  the rows, and the output is one client's row).

  Client drop-outs: with a boolean `present [n]` and m = Σ present, the present row of lowest
  score over the present rows (m − f − 2 neighbours, f unchanged); absent rows may hold any
  value. NaN when m < 2f + 3 (the rule is undefined). An all-True mask gives the numbers of
  `present=None` (`base.by_presence`).
  """
  if present is not None:
    n, _ = base.check_updates(updates, "krum", f=f, min_n=lambda f: 2 * f + 3)
    return base.by_presence(base.check_present(present, n, "krum"), lambda x: krum(x, f=f),
                            lambda p, x: _multi_krum_present(p, x, f, 1), updates)
  return base.average_selected(updates, jax.nn.one_hot(jnp.argmin(krum_scores(updates, f=f)),
                                                       updates.shape[0], dtype=updates.dtype))


def multi_krum(updates: jax.Array, *, f: int, m: int | None = None,
               present: jax.Array | None = None) -> jax.Array:
  """Multi-Krum: the average of the m rows with the lowest `krum_scores` (ties: lowest index);
  m = n − f by default (m = 1 is Krum). Needs n ≥ 2f + 3 and 1 ≤ m ≤ n.

  Non-finite input: non-finite rows have score +inf, so they are selected only if m > n − b.
  Secure aggregation: no — it needs every update in the clear (the pairwise distances between
  the rows, to score and select individual rows).

  Client drop-outs: with a boolean `present [n]`, the average of the m present rows of lowest
  score over the present rows (`krum_scores`, f unchanged), m = (Σ present) − f by default;
  absent rows may hold any value. NaN when Σ present < 2f + 3 or a given m exceeds Σ present.
  An all-True mask gives the numbers of `present=None` (`base.by_presence`).
  """
  n = updates.shape[0]
  if present is not None:
    if m is not None and not 1 <= m <= n:
      raise ValueError(f"multi_krum: m must lie in [1, n={n}], got {m}.")
    base.check_updates(updates, "multi_krum", f=f, min_n=lambda f: 2 * f + 3)
    return base.by_presence(base.check_present(present, n, "multi_krum"),
                            lambda x: multi_krum(x, f=f, m=m),
                            lambda p, x: _multi_krum_present(p, x, f, m), updates)
  m = n - f if m is None else m
  if not 1 <= m <= n:
    raise ValueError(f"multi_krum: m must lie in [1, n={n}], got {m}.")
  _, chosen = lax.top_k(-krum_scores(updates, f=f), m)
  weights = jnp.zeros((n,), updates.dtype).at[chosen].set(1.0)
  return base.average_selected(updates, weights)


def _krum_scores_present(present: jax.Array, updates: jax.Array, f: int) -> jax.Array:
  """`krum_scores` over the present rows: the neighbour count m − f − 2 is traced, so each row
  sums a masked prefix of its sorted distances instead of a static `top_k`."""
  n = updates.shape[0]
  m = jnp.sum(present, dtype=jnp.int32)
  dist = distances.pairwise_squared_distances(base.fill_absent_rows(updates, present))
  dist = jnp.sort(jnp.where(jnp.eye(n, dtype=bool) | ~present[None, :], jnp.inf, dist), axis=-1)
  scores = jnp.sum(jnp.where(jnp.arange(n) < m - f - 2, dist, 0.0), axis=-1)
  return jnp.where(m >= 2 * f + 3, jnp.where(present, scores, jnp.inf), jnp.nan)


def _multi_krum_present(present: jax.Array, updates: jax.Array, f: int, m: int | None
                        ) -> jax.Array:
  """`multi_krum` over the present rows: the selection size is traced, so rows are ranked by a
  sort (present rows first, then by score, then by index) instead of a static `top_k`."""
  n = updates.shape[0]
  scores = _krum_scores_present(present, updates, f)
  count = jnp.sum(present, dtype=jnp.int32)
  size = count - f if m is None else jnp.asarray(m, jnp.int32)
  index = jnp.arange(n)
  _, _, order = lax.sort(((~present).astype(jnp.int32), scores, index), num_keys=3)
  rank = jnp.zeros((n,), jnp.int32).at[order].set(index)
  out = base.average_selected(base.zero_nonfinite_rows(updates, present),
                              (rank < size).astype(updates.dtype))
  return jnp.where((count >= 2 * f + 3) & (size <= count), out, jnp.nan)
