"""Nearest-neighbour rules: NNM (a pre-aggregator) and MoNNA (a rule)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from fedjax_robust.aggregators import base
from fedjax_robust.aggregators import distances


def nearest_neighbor_mixing(updates: jax.Array, *, f: int,
                            present: jax.Array | None = None) -> jax.Array:
  """Nearest neighbour mixing (NNM): x_i ← mean of the n − f nearest neighbours of x_i, itself
  included (Euclidean distance; ties broken by the lower client index).

  Allouah, Farhadkhani, Guerraoui, Gupta, Pinot, Stephan, "Fixing by mixing: a recipe for
  optimal Byzantine ML under heterogeneity", AISTATS 2023. Needs n > f.

  Non-finite input: a finite row never mixes with a non-finite one as long as at most f rows are
  non-finite; a non-finite row, and any row whose neighbourhood includes one, comes out as NaN
  (the rule that follows must drop it). Cost: the `[n, n]` distances
  (one Gram product) and one `[n, n] × [n, d]` product; no `[n, n − f, d]` tensor is built.
  Secure aggregation: no — it needs every update in the clear (the pairwise distances between
  the rows, and each output row mixes individual rows).

  Client drop-outs: with a boolean `present [n]` and m = Σ present, each present row becomes the
  mean of its m − f nearest present rows, itself included (f unchanged); the rows keep their
  positions, so the same `present` applies to the output. Absent rows may hold any value and
  come out as 0. Present rows come out as NaN when m ≤ f (the rule is undefined). An all-True
  mask gives the numbers of `present=None` (`base.by_presence`).
  """
  n, _ = base.check_updates(updates, "nearest_neighbor_mixing", f=f, min_n=lambda f: f + 1)
  if present is not None:
    return base.by_presence(base.check_present(present, n, "nearest_neighbor_mixing"),
                            lambda x: nearest_neighbor_mixing(x, f=f),
                            lambda p, x: _nnm_present(x, p, f), updates)
  k = n - f
  dist = distances.pairwise_squared_distances(updates)
  dist = jnp.where(jnp.eye(n, dtype=bool), -1.0, dist)  # each row is its own first neighbour
  _, neighbours = lax.top_k(-dist, k)
  mixing = jnp.zeros((n, n), updates.dtype).at[jnp.arange(n)[:, None], neighbours].set(1.0 / k)
  finite = base.finite_rows(updates)
  mixed = mixing @ base.zero_nonfinite_rows(updates, finite)
  poisoned = (mixing @ (~finite).astype(updates.dtype)) > 0
  return jnp.where(poisoned[:, None], jnp.nan, mixed)


def _nnm_present(updates: jax.Array, present: jax.Array, f: int) -> jax.Array:
  """`nearest_neighbor_mixing` over the present rows: the neighbour count k = m − f is traced,
  so each row's neighbours are ranked by a sort (present rows first, then by distance, then by
  index) instead of a static `top_k`."""
  n = updates.shape[0]
  k = jnp.sum(present, dtype=jnp.int32) - f
  dist = distances.pairwise_squared_distances(base.fill_absent_rows(updates, present))
  dist = jnp.where(jnp.eye(n, dtype=bool), -1.0, dist)  # each row is its own first neighbour
  columns = jnp.broadcast_to(jnp.arange(n), (n, n))
  absent = jnp.broadcast_to((~present).astype(jnp.int32), (n, n))
  _, _, order = lax.sort((absent, dist, columns), dimension=1, num_keys=3)
  rank = jnp.zeros((n, n), jnp.int32).at[jnp.arange(n)[:, None], order].set(columns)
  mixing = jnp.where(rank < k, 1.0 / k.astype(updates.dtype), jnp.zeros((), updates.dtype))
  finite = base.finite_rows(updates) & present
  mixed = mixing @ base.zero_nonfinite_rows(updates, finite)
  poisoned = ((mixing @ (present & ~finite).astype(updates.dtype)) > 0) | (k <= 0)
  return jnp.where(present[:, None], jnp.where(poisoned[:, None], jnp.nan, mixed), 0.0)


def monna(updates: jax.Array, *, f: int, reference_index: int = 0) -> jax.Array:
  """MoNNA: the average of the n − f rows nearest to a trusted reference row (itself included;
  ties: lowest index). The reference is the server's own or a trusted client's update, here row
  `reference_index`. Allouah, Farhadkhani, Guerraoui, Gupta, Pinot, Rizk, Voitovych, "Robust
  collaborative learning with linear gradient overhead", ICML 2023.

  Non-finite rows are at distance +inf, so they are not averaged while at most f rows are
  non-finite (and the reference is finite). Cost: two passes over `[n, d]`.
  Secure aggregation: no — it needs every update in the clear (each row's distance to the
  reference row, to rank the rows and select the n − f nearest).
  """
  n, _ = base.check_updates(updates, "monna", f=f, min_n=lambda f: f + 1)
  if not 0 <= reference_index < n:
    raise ValueError(f"monna: reference_index must lie in [0, n={n}), got {reference_index}.")
  def select(x, dist, finite):
    dist = jnp.where(finite, dist, jnp.inf).at[reference_index].set(-1.0)
    _, chosen = lax.top_k(-dist, n - f)
    return jnp.zeros((n,), x.dtype).at[chosen].set(1.0)

  def fast(x, sq):
    # Ordinary rows: plain distances, and the selected rows need no zeroing before averaging.
    dist = jnp.sqrt(jnp.sum((x - x[reference_index]) ** 2, axis=-1))
    return base.weighted_average(x, select(x, dist, jnp.ones((n,), bool)))

  def exact(x):
    finite = base.finite_rows(x)
    x0 = base.zero_nonfinite_rows(x, finite)
    dist = base.row_distances(x0, x0[reference_index], jnp.max(jnp.abs(x0), axis=1))
    return jnp.where(finite[reference_index],
                     base.average_selected(x, select(x, dist, finite)), jnp.nan)

  return base.ordinary_or_exact(updates, fast, exact)
