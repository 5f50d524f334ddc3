"""Coordinate-wise rules: each coordinate is aggregated on its own (Yin et al., ICML 2018).

The rules sort every coordinate over the clients (`order_statistics.sort_clients`). NaN sorts
above +inf (NumPy's order), so a Byzantine row of NaN or ±inf lands at an end of the order, where
these rules drop it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fedjax_robust import compression
from fedjax_robust.aggregators import base
from fedjax_robust.aggregators import order_statistics


def coordinate_median(updates: jax.Array, *, present: jax.Array | None = None) -> jax.Array:
  """Coordinate-wise median (CWMed); for even n the mean of the two middle values (NumPy's).

  Yin, Chen, Ramchandran, Bartlett, "Byzantine-robust distributed learning: towards optimal
  statistical rates", ICML 2018.

  Non-finite input: exact as long as fewer than n/2 rows are non-finite at a coordinate (the
  middle order statistics are then finite values). Cost: a sort of `[n, d]` along clients.
  Secure aggregation: no — it needs every update in the clear (each coordinate's values are
  sorted over the clients).

  Client drop-outs: with a boolean `present [n]`, the median of the m = Σ present values of each
  coordinate (the same even-m convention); absent rows may hold any value (they are set to NaN,
  which sorts after every present value, so the first m order statistics are the present ones).
  NaN when m = 0. An all-True mask gives the numbers of `present=None` (`base.by_presence`).
  """
  n, _ = base.check_updates(updates, "coordinate_median")
  if present is not None:
    return base.by_presence(base.check_present(present, n, "coordinate_median"),
                            coordinate_median, _coordinate_median_present, updates)
  ordered = order_statistics.sort_clients(updates)
  lower, upper = ordered[(n - 1) // 2], ordered[n // 2]
  return lower if n % 2 else 0.5 * (lower + upper)


def _coordinate_median_present(present: jax.Array, updates: jax.Array) -> jax.Array:
  ordered = _sort_present(updates, present)
  m = jnp.sum(present, dtype=jnp.int32)
  lower, upper = ordered[jnp.maximum(m - 1, 0) // 2], ordered[m // 2]
  median = jnp.where(m % 2 == 1, lower, 0.5 * (lower + upper))
  return jnp.where(m > 0, median, jnp.nan)


def _sort_present(updates: jax.Array, present: jax.Array) -> jax.Array:
  """`sort_clients` with absent rows set to NaN: NaN sorts last, so rows 0..m−1 of the result
  hold exactly the sorted present values of each coordinate (a present NaN is a NaN either way)."""
  return order_statistics.sort_clients(
      jnp.where(present[:, None], updates, jnp.array(jnp.nan, updates.dtype)))


def trimmed_mean(updates: jax.Array, *, f: int, weights: jax.Array | None = None,
                 present: jax.Array | None = None) -> jax.Array:
  """Coordinate-wise trimmed mean (CWTM): drop the f largest and f smallest values of each
  coordinate, average the n − 2f values left.

  Yin et al., ICML 2018. Needs n > 2f.

  Weighted form (client weights w_i, e.g. sample counts): per coordinate, a weight mass
  t = (f/n)·Σw is trimmed from each end of the sorted values (the boundary value partly) and the
  rest is averaged with its weights; uniform weights give the unweighted rule exactly.

  Non-finite input: exact as long as at most f rows are non-finite (NaN and +inf are dropped
  from the top, −inf from the bottom; weighted: as long as their weight lies in the trimmed
  mass). Cost: a sort of `[n, d]` along clients, fused with the sum. Secure aggregation: no —
  it needs every update in the clear (each coordinate's values are sorted over the clients to
  drop the f largest and f smallest).

  Client drop-outs: with a boolean `present [n]` and m = Σ present, the rule on the present rows
  with f unchanged (all f Byzantine clients may be present): drop the f largest and f smallest
  present values of each coordinate, average the m − 2f left; weighted, absent rows have weight
  0 and the trimmed mass is t = (f/m)·Σ_{present} w. Absent rows may hold any value (they are set
  to NaN, which sorts after every present value). NaN when m ≤ 2f (the rule is undefined). An
  all-True mask gives the numbers of `present=None` (`base.by_presence`).
  """
  n, _ = base.check_updates(updates, "trimmed_mean", f=f, min_n=lambda f: 2 * f + 1)
  if present is not None:
    return base.by_presence(
        base.check_present(present, n, "trimmed_mean"),
        lambda x, *w: trimmed_mean(x, f=f, weights=w[0] if w else None),
        lambda p, x, *w: _trimmed_mean_present(p, x, f, *w),
        *base.with_optional(updates, weights))
  if weights is not None:
    return _weighted_trimmed_mean(updates, weights, f)
  kept = order_statistics.sort_clients(updates)[f:n - f]
  return jnp.sum(kept, axis=0) / (n - 2 * f)  # a sum, not a matmul: keeps the sort fused


def _trimmed_mean_present(present, updates, f, *weights):
  n = updates.shape[0]
  m = jnp.sum(present, dtype=jnp.int32)
  if weights:
    w = jnp.where(present, weights[0].astype(updates.dtype), jnp.zeros((), updates.dtype))
    x = jnp.where(present[:, None], updates, jnp.array(jnp.nan, updates.dtype))
    return jnp.where(m > 2 * f, _weighted_trimmed_mean(x, w, f, m), jnp.nan)
  rank = jnp.arange(n)[:, None]
  kept = (rank >= f) & (rank < m - f)
  total = jnp.sum(jnp.where(kept, _sort_present(updates, present), 0.0), axis=0)
  return jnp.where(m > 2 * f, total / (m - 2 * f).astype(updates.dtype), jnp.nan)


def _weighted_trimmed_mean(updates, weights, f, count=None):
  """`count`: the number of clients the trimmed mass refers to (n, or the present count)."""
  n = updates.shape[0]
  values, w = order_statistics.sort_clients_with(updates, weights)
  total = jnp.sum(weights).astype(updates.dtype)
  trim = total * f / (n if count is None else count.astype(updates.dtype))
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
  Secure aggregation: no — it needs every update in the clear (each coordinate's values are
  sorted over the clients and compared with the coordinate's median).
  """
  n, _ = base.check_updates(updates, "meamed", f=f, min_n=lambda f: f + 1)
  rows = list(order_statistics.sort_clients(updates))
  median = rows[(n - 1) // 2] if n % 2 else 0.5 * (rows[n // 2 - 1] + rows[n // 2])
  return _mean_of_closest(rows, median, n - f)


def phocas(updates: jax.Array, *, f: int) -> jax.Array:
  """Phocas: per coordinate, the average of the n − f values closest to the coordinate's
  trimmed mean (`trimmed_mean` with f trimmed at each end). Needs n > 2f.

  Xie, Koyejo, Gupta, "Phocas: dimensional Byzantine-resilient stochastic gradient descent",
  arXiv:1805.09682, 2018 (Definition 5, Phocas_b with b = f). MeaMed (`meamed`) is the same
  selection around the median instead.

  Exact rule: the n − f closest values form a window of the sorted values, found as in
  `meamed` (`_mean_of_closest`), with the same tie rule (at equal distance on both sides of the
  trimmed mean the smaller values win: a stable sort by distance of the sorted values).

  Non-finite input: the trimmed mean is finite while at most f rows are non-finite (they sort to
  the ends it drops), and a window holding a non-finite value is never taken, so the result is
  exact while at most f rows are non-finite; otherwise NaN. Cost: a sort of `[n, d]` and O(n)
  fused elementwise work per coordinate. Secure aggregation: no — it needs every update in the
  clear (each coordinate's values are sorted over the clients).
  """
  n, _ = base.check_updates(updates, "phocas", f=f, min_n=lambda f: 2 * f + 1)
  ordered = order_statistics.sort_clients(updates)
  centre = jnp.sum(ordered[f:n - f], axis=0) / (n - 2 * f)  # `trimmed_mean`'s arithmetic
  return _mean_of_closest(list(ordered), centre, n - f)


def _mean_of_closest(rows: list[jax.Array], centre: jax.Array, k: int) -> jax.Array:
  """The mean of the k values of each coordinate closest to `centre` (`[d]`), given the rows of
  the coordinate-wise sorted updates (`rows[i]`: the i-th order statistics).

  With d_i = |s_i − centre| (+inf for a non-finite value), d does not increase up to the
  centre's place in the order and does not decrease after it, so the k closest values form a
  window s_j..s_{j+k−1}, j ∈ [0, n − k]; the farthest value inside it is at an end,
  r_j = max(d_j, d_{j+k−1}), and window j holds k closest values iff every value left of it
  and every value right of it is at least as far: min_{i<j} d_i ≥ r_j and min_{i≥j+k} d_i ≥
  r_j. The lowest valid window is taken (ties: the smaller values win), and a window holding a
  non-finite value never is (NaN when every window does)."""
  n = len(rows)
  sums, bad, dist = [jnp.zeros_like(rows[0])], [jnp.zeros_like(rows[0])], []
  for r in rows:
    finite = jnp.isfinite(r)
    sums.append(sums[-1] + jnp.where(finite, r, 0.0))
    bad.append(bad[-1] + (~finite).astype(r.dtype))
    dist.append(jnp.where(finite, jnp.abs(r - centre), jnp.inf))
  inf = jnp.full_like(rows[0], jnp.inf)
  left = [inf]  # left[j] = min_{i<j} d_i
  for d in dist:
    left.append(jnp.minimum(left[-1], d))
  right = [inf]  # right[n − i] = min_{i' ≥ i} d_i'
  for d in reversed(dist):
    right.append(jnp.minimum(right[-1], d))
  right = right[::-1]
  found = jnp.zeros(rows[0].shape, bool)
  best_sum = jnp.full_like(rows[0], jnp.nan)
  for j in range(n - k + 1):
    radius = jnp.maximum(dist[j], dist[j + k - 1])
    valid = (bad[j + k] - bad[j] == 0) & (left[j] >= radius) & (right[j + k] >= radius)
    take = valid & ~found
    best_sum = jnp.where(take, sums[j + k] - sums[j], best_sum)
    found |= valid
  return best_sum / k


def majority_vote(updates: jax.Array) -> jax.Array:
  """signSGD's majority vote with a robust scale: s(Σ_i s(x_i)) · median_i ‖x_i‖₁/d.

  Bernstein, Zhao, Azizzadenesheli, Anandkumar, "signSGD with majority vote is communication
  efficient and fault tolerant", ICLR 2019: each coordinate moves by the sign most clients
  agree on. Signs are one bit, as in signSGD and in sign compression (`compression.signs`):
  s(t) = +1 for t ≥ 0, −1 for t < 0, so a client's coordinate that is exactly 0 votes +1 (it
  is what that client sends), and a tied vote moves the coordinate by +1 (the server's answer is
  one bit too). The step length is the median over the clients of their mean absolute
  coordinate (for scaled-sign rows s(x)·s_i, the median of the s_i), so that a few huge rows
  cannot set it; with sign compression (`compression` "sign") this is the decoded majority vote
  of the clients' scaled signs.

  Non-finite input: a row with a NaN or ±inf entry takes no part (neither in the vote nor in
  the scale); NaN when no row is finite. Cost: one pass over `[n, d]` and a median of n norms.
  """
  base.check_updates(updates, "majority_vote")
  finite = base.finite_rows(updates)
  clean = base.zero_nonfinite_rows(updates, finite)
  votes = finite.astype(updates.dtype) @ compression.signs(clean)
  scales = jnp.where(finite, jnp.mean(jnp.abs(clean), axis=1), jnp.nan)
  return compression.signs(votes) * jnp.nanmedian(scales)
