"""Coordinate-wise rules: each coordinate is aggregated on its own (Yin et al., ICML 2018).

Both rules sort every coordinate over the clients (`order_statistics.sort_clients`). NaN sorts
above +inf (NumPy's order), so a Byzantine row of NaN or ±inf lands at an end of the order, where
these rules drop it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fedjax_robust.aggregators import base
from fedjax_robust.aggregators import order_statistics


def coordinate_median(updates: jax.Array) -> jax.Array:
  """Coordinate-wise median (CWMed); for even n the mean of the two middle values (NumPy's).

  Yin, Chen, Ramchandran, Bartlett, "Byzantine-robust distributed learning: towards optimal
  statistical rates", ICML 2018.

  Non-finite input: exact as long as fewer than n/2 rows are non-finite at a coordinate (the
  middle order statistics are then finite values). Cost: a sort of `[n, d]` along clients.
  """
  n, _ = base.check_updates(updates, "coordinate_median")
  ordered = order_statistics.sort_clients(updates)
  lower, upper = ordered[(n - 1) // 2], ordered[n // 2]
  return lower if n % 2 else 0.5 * (lower + upper)


def trimmed_mean(updates: jax.Array, *, f: int, weights: jax.Array | None = None) -> jax.Array:
  """Coordinate-wise trimmed mean (CWTM): drop the f largest and f smallest values of each
  coordinate, average the n − 2f values left.

  Yin et al., ICML 2018. Needs n > 2f.

  Weighted form (client weights w_i, e.g. sample counts): per coordinate, a weight mass
  t = (f/n)·Σw is trimmed from each end of the sorted values (the boundary value partly) and the
  rest is averaged with its weights; uniform weights give the unweighted rule exactly.

  Non-finite input: exact as long as at most f rows are non-finite (NaN and +inf are dropped
  from the top, −inf from the bottom; weighted: as long as their weight lies in the trimmed
  mass). Cost: a sort of `[n, d]` along clients, fused with the sum.
  """
  n, _ = base.check_updates(updates, "trimmed_mean", f=f, min_n=lambda f: 2 * f + 1)
  if weights is not None:
    return _weighted_trimmed_mean(updates, weights, f)
  kept = order_statistics.sort_clients(updates)[f:n - f]
  return jnp.sum(kept, axis=0) / (n - 2 * f)  # a sum, not a matmul: keeps the sort fused


def _weighted_trimmed_mean(updates, weights, f):
  n = updates.shape[0]
  values, w = order_statistics.sort_clients_with(updates, weights)
  total = jnp.sum(weights).astype(updates.dtype)
  trim = total * f / n
  below = jnp.zeros_like(values[0])
  acc = jnp.zeros_like(values[0])
  for i in range(n):
    above = below + w[i]
    kept = jnp.maximum(jnp.minimum(above, total - trim) - jnp.maximum(below, trim), 0.0)
    acc = acc + jnp.where(kept > 0, kept * values[i], 0.0)
    below = above
  return acc / (total - 2 * trim)


def meamed(updates: jax.Array, *, f: int) -> jax.Array:
  """Mean around the median (MeaMed): per coordinate, the average of the n − f values closest to
  the coordinate's median (`coordinate_median`'s convention for even n). Needs n > f.

  Xie, Koyejo, Gupta, "Generalized Byzantine-tolerant SGD", 2018. In sorted order the n − f
  closest values form a window s_j..s_{j+n−f−1}, j ∈ [0, f]; the window with the smallest
  farthest distance to the median is taken (ties: the lowest j, i.e. the smaller values).

  Non-finite input: a window holding a non-finite value is never taken, so the result is exact
  while at most f rows are non-finite (and the median is finite). Cost: a sort of `[n, d]` and
  O(n) fused elementwise work per coordinate.
  """
  n, _ = base.check_updates(updates, "meamed", f=f, min_n=lambda f: f + 1)
  k = n - f
  ordered = order_statistics.sort_clients(updates)
  rows = [ordered[i] for i in range(n)]
  median = rows[(n - 1) // 2] if n % 2 else 0.5 * (rows[n // 2 - 1] + rows[n // 2])
  # Prefix sums of the finite values and prefix counts of the non-finite ones.
  sums, bad = [jnp.zeros_like(rows[0])], [jnp.zeros_like(rows[0])]
  for r in rows:
    finite = jnp.isfinite(r)
    sums.append(sums[-1] + jnp.where(finite, r, 0.0))
    bad.append(bad[-1] + (~finite).astype(r.dtype))
  best_cost = jnp.full_like(rows[0], jnp.inf)
  best_sum = jnp.full_like(rows[0], jnp.nan)
  for j in range(f + 1):
    cost = jnp.maximum(median - rows[j], rows[j + k - 1] - median)
    cost = jnp.where(bad[j + k] - bad[j] == 0, cost, jnp.inf)
    better = cost < best_cost
    best_cost = jnp.where(better, cost, best_cost)
    best_sum = jnp.where(better, sums[j + k] - sums[j], best_sum)
  return best_sum / k
