"""Bucketing (Karimireddy, He, Jaggi, "Byzantine-robust learning on heterogeneous datasets via
bucketing", ICLR 2022)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_robust.aggregators import base

# Up to this bucket size, bucket sums are s row gathers added in one loop (n=100, d=1e5, s=2:
# 2.6 ms on CPU, against 39 ms for the [B, n] × [n, d] membership product); larger buckets use
# the product.
_GATHER_MAX_BUCKET = 8


def _check_bucket_size(s):
  if not isinstance(s, int) or isinstance(s, bool) or s < 1:
    raise ValueError(f"bucketing: bucket_size must be an int >= 1, got {s!r}.")
  return s


def bucketing(updates: jax.Array, *, key: jax.Array, bucket_size: int = 2,
              weights: jax.Array | None = None):
  """Shuffles the rows with `key`, splits them into ⌈n/s⌉ consecutive buckets of s rows (the last
  one smaller when s does not divide n) and averages each bucket: `[⌈n/s⌉, d]`.

  s = 1 is a permutation of the rows; the default s = 2 is the paper's recommendation (ByzFL's
  default is 1). With `weights`, returns the weighted bucket means and the
  bucket weights (sums) as a pair, so a weighted rule can follow. A bucket containing a
  non-finite row is non-finite: the rule that follows must drop it. Cost: one pass (gathers).

  Secure aggregation: no — each bucket mean could be one secure average over its bucket, but
  the rule that follows needs the bucket means in the clear (with s = 1, the updates
  themselves), so the pipeline counts as clear, as does every chain with a pre-aggregator
  (`registry.communication`).
  """
  n, d = base.check_updates(updates, "bucketing")
  s = _check_bucket_size(bucket_size)
  buckets = -(-n // s)
  perm = jax.random.permutation(key, n)
  w = jnp.ones((n,), updates.dtype) if weights is None else weights.astype(updates.dtype)
  # Slot j of bucket b holds row perm[b·s + j]; the missing slots of a short last bucket point at
  # row perm[0] with membership 0 (masked, so a non-finite row there cannot leak in).
  slots = jnp.concatenate([perm, jnp.full((buckets * s - n,), perm[0])]).reshape(buckets, s)
  present = (jnp.arange(buckets * s) < n).reshape(buckets, s)
  member_w = jnp.where(present, w[slots], 0.0)
  totals = jnp.sum(member_w, axis=1)
  if s <= _GATHER_MAX_BUCKET:
    # s gathers of B rows summed in one fused loop: one read of the input, no [B, n] product.
    # A non-finite row makes its bucket non-finite by plain arithmetic (inf or NaN).
    sums = sum(jnp.where(present[:, j, None], member_w[:, j, None] * updates[slots[:, j]], 0.0)
               for j in range(s))
  else:
    membership = jnp.zeros((buckets, n), updates.dtype).at[
        jnp.arange(buckets)[:, None], slots].add(member_w)
    finite = base.finite_rows(updates)
    sums = membership @ base.zero_nonfinite_rows(updates, finite)
    in_bucket = jnp.zeros((buckets, n), bool).at[jnp.arange(buckets)[:, None], slots].max(present)
    sums = jnp.where(jnp.any(in_bucket & ~finite, axis=1)[:, None], jnp.nan, sums)
  means = sums / totals[:, None]
  return means if weights is None else (means, totals)


def bucketing_mean(updates: jax.Array, *, key: jax.Array, bucket_size: int = 2,
                   weights: jax.Array | None = None) -> jax.Array:
  """`mean(bucketing(updates))` as one matrix-vector product; the pipeline "bucketing+mean" runs
  this. The mean of the B bucket means is Σ_i x_i / (B·|bucket of i|) (the shuffle matters only
  through the short last bucket); with `weights`, the bucket-weighted mean of the weighted
  bucket means is the weighted mean Σ w_i x_i / Σ w_i. A non-finite row makes the result
  non-finite, as it makes its bucket non-finite. One read of `[n, d]`.
  """
  n, _ = base.check_updates(updates, "bucketing")
  s = _check_bucket_size(bucket_size)
  if weights is not None:
    return base.weighted_average(updates, weights)
  position = np.arange(n)
  sizes = np.minimum(s, n - position // s * s)   # size of the bucket of the row at `position`
  row_weights = jnp.zeros((n,), updates.dtype).at[jax.random.permutation(key, n)].set(
      jnp.asarray(1.0 / (-(-n // s) * sizes), updates.dtype))
  return base.weighted_average(updates, row_weights)
