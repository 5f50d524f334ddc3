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

  Xie, Koyejo, Gupta, "Generalized Byzantine-tolerant SGD", 2018 (ByzFL's `Meamed` agrees).

  Exact rule. With s_0 ≤ … ≤ s_{n−1} a coordinate's sorted values, med their median (at
  positions m_lo = ⌊(n−1)/2⌋ and m_hi = ⌊n/2⌋), d_i = |s_i − med| and k = n − f: d does not
  increase up to m_lo and does not decrease from m_hi, so the k closest values form a window
  s_j..s_{j+k−1}, j ∈ [0, f], the farthest value inside it is at an end,
  r_j = max(d_j, d_{j+k−1}), and the closest outside it on the left is
  L_j = d_{j−1} if j − 1 ≤ m_lo, else min(d_{m_lo}, d_{m_hi}) (on the right: R_j = d_{j+k} if
  j + k ≥ m_hi, else min(d_{m_lo}, d_{m_hi})). Window j holds k closest values iff

      (j = 0 or L_j ≥ r_j)  and  (j = f or R_j ≥ r_j),

  and the result is the mean of the lowest valid window. (A window may miss the median when
  k < n/2, as in Bulyan's last step; then all its values are at the minimum distance.)

  Tie rule: values at equal distance on both sides of the median (med − δ and med + δ) compete
  for the last places and the smaller values win; values tied because they are equal (e.g.
  identical Byzantine rows) give the same mean whichever copies are taken. Equivalently: sort
  the values, then keep the k first of a stable sort by |s_i − med|. (Taking the window of
  smallest r_j instead is wrong when r_j is attained by a value tied with one outside the
  window: [−3, −3, −1, 0, 1, 2.5] with f = 2 gives −0.75, not −1.75.)

  Non-finite input: d = +inf for a non-finite value and a window holding one is never taken, so
  the result is exact while at most f rows are non-finite (and the median is finite); otherwise
  NaN. Cost: a sort of `[n, d]` and O(n) fused elementwise work per coordinate.
  """
  n, _ = base.check_updates(updates, "meamed", f=f, min_n=lambda f: f + 1)
  k = n - f
  ordered = order_statistics.sort_clients(updates)
  rows = [ordered[i] for i in range(n)]
  median = rows[(n - 1) // 2] if n % 2 else 0.5 * (rows[n // 2 - 1] + rows[n // 2])
  # Prefix sums of the finite values, prefix counts of the non-finite ones, distances (inf for
  # a non-finite value).
  sums, bad, dist = [jnp.zeros_like(rows[0])], [jnp.zeros_like(rows[0])], []
  for r in rows:
    finite = jnp.isfinite(r)
    sums.append(sums[-1] + jnp.where(finite, r, 0.0))
    bad.append(bad[-1] + (~finite).astype(r.dtype))
    dist.append(jnp.where(finite, jnp.abs(r - median), jnp.inf))
  lo, hi = (n - 1) // 2, n // 2
  centre = jnp.minimum(dist[lo], dist[hi])
  found = jnp.zeros(rows[0].shape, bool)
  best_sum = jnp.full_like(rows[0], jnp.nan)
  for j in range(f + 1):
    radius = jnp.maximum(dist[j], dist[j + k - 1])
    valid = bad[j + k] - bad[j] == 0
    if j > 0:
      valid &= (dist[j - 1] if j - 1 <= lo else centre) >= radius
    if j < f:
      valid &= (dist[j + k] if j + k >= hi else centre) >= radius
    take = valid & ~found
    best_sum = jnp.where(take, sums[j + k] - sums[j], best_sum)
    found |= valid
  return best_sum / k
