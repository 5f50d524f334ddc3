"""Pairwise distances between client updates without an `[n, n, d]` tensor."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fedjax_robust.aggregators import base


def pairwise_squared_distances(updates: jax.Array) -> jax.Array:
  """‖x_i − x_j‖² for all pairs, `[n, n]`, through the Gram matrix ‖a‖² + ‖b‖² − 2a·b.

  To limit cancellation when all updates share a large common component, rows are first
  centred at the finite row of median norm (distances are translation invariant, and a
  minority of outlying rows cannot move that centre far). A pair involving a non-finite row, or
  whose squared distance overflows, is at distance +inf; the diagonal is exactly 0.
  Cost: one `[n, d] × [d, n]` matrix product and two passes; memory O(n² + n·d).
  """
  n, _ = base.check_updates(updates, "pairwise_squared_distances")

  def from_centred(x, finite):
    sq = jnp.sum(x * x, axis=-1)
    dist = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0)
    both_finite = finite[:, None] & finite[None, :]
    dist = jnp.where(both_finite & ~jnp.isnan(dist), dist, jnp.inf)
    return jnp.where(jnp.eye(n, dtype=bool), 0.0, dist)

  def fast(x, sq):
    # Ordinary rows: no row to zero; centring cannot overflow (‖x_i − x_j‖² ≤ 4·max‖x‖²).
    return from_centred(x - x[jnp.argsort(sq)[n // 2]], jnp.ones((n,), bool))

  def exact(x):
    finite = base.finite_rows(x)
    x = base.zero_nonfinite_rows(x, finite)
    return from_centred(base.zero_nonfinite_rows(x - base.median_norm_row(x, finite), finite),
                        finite)

  return base.ordinary_or_exact(updates, fast, exact)
