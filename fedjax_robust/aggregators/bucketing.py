"""Bucketing (Karimireddy, He, Jaggi, "Byzantine-robust learning on heterogeneous datasets via
bucketing", ICLR 2022)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fedjax_robust.aggregators import base


def bucketing(updates: jax.Array, *, key: jax.Array, bucket_size: int = 2,
              weights: jax.Array | None = None):
  """Shuffles the rows with `key`, splits them into ⌈n/s⌉ consecutive buckets of s rows (the last
  one smaller when s does not divide n) and averages each bucket: `[⌈n/s⌉, d]`.

  s = 1 is a permutation of the rows; the default s = 2 is the paper's recommendation (ByzFL's
  default is 1). With `weights`, returns the weighted bucket means and the
  bucket weights (sums) as a pair, so a weighted rule can follow. A bucket containing a
  non-finite row is non-finite: the rule that follows must drop it. Cost: one pass.
  """
  n, d = base.check_updates(updates, "bucketing")
  s = bucket_size
  if not isinstance(s, int) or s < 1:
    raise ValueError(f"bucketing: bucket_size must be an int >= 1, got {s!r}.")
  buckets = -(-n // s)
  perm = jax.random.permutation(key, n)
  w = jnp.ones((n,), updates.dtype) if weights is None else weights.astype(updates.dtype)
  assignment = jax.nn.one_hot(jnp.arange(n) // s, buckets, dtype=updates.dtype).T  # [B, n]
  membership = assignment * w[perm][None, :]
  finite = base.finite_rows(updates)[perm]
  x = base.zero_nonfinite_rows(updates[perm], finite)
  totals = jnp.sum(membership, axis=1)
  means = (membership @ x) / totals[:, None]
  poisoned = (assignment @ (~finite).astype(updates.dtype)) > 0
  means = jnp.where(poisoned[:, None], jnp.nan, means)
  return means if weights is None else (means, totals)
