"""Sorting every coordinate over the clients, with an algorithm chosen per backend.

XLA's sort is slow on CPU (measured here on 2 cores: 1.7 s for `[100, 1e5]`, 20× slower than
NumPy's partition). For n ≤ `NETWORK_MAX_CLIENTS` on CPU the rows are instead sorted by Batcher's
odd-even merge network, unrolled into per-row `min`/`max` so that XLA fuses the whole network
(and the consumer's sum) into one pass over the data: 12.6 ms for `[100, 1e5]`, 9.9 ms for the
vmapped `[256, 25, 2410]`. Compile time grows quickly with n (2.6 s at n=100, 13 s at n=128),
hence the bound.

On GPU the network is used too: XLA's GPU sort along the clients axis of a vmapped
`[S, n, d]` scales worse than linearly in S (H100, `[S, 25, 2410]`: 4.2 ms at S = 1024, 173 ms
at S = 16384), which made the Monte Carlo throughput of coordinate-wise rules halve as S grew;
the fused network takes 0.45 and 5.5 ms there (the same values), and the digits job with the
trimmed mean runs 390k sample-rounds/s at S = 1024 and S = 16384 (163k and 78k with the sort).
Above the bound the GPU sorts along the minor axis (the transposed rows: 62 ms at S = 16384,
linear in S). Other backends use `jnp.sort` along the clients axis.

Consume the result with elementwise operations and sums, not matrix products: a matrix product
after the network prevents the fusion (measured 50× slower).

Order: −inf < finite < +inf < NaN (NumPy's order, every NaN counted as the largest value).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

NETWORK_MAX_CLIENTS = 100
NETWORK_BACKENDS = ("cpu", "gpu")  # measured: CPU here, H100 (BUILD.md)


def _use_network(n: int) -> bool:
  return jax.default_backend() in NETWORK_BACKENDS and n <= NETWORK_MAX_CLIENTS


@functools.lru_cache(maxsize=None)
def batcher_network(n: int) -> tuple[tuple[int, int], ...]:
  """Comparators (i, j), i < j, of Batcher's odd-even merge sort for n wires, in order.

  Built for the next power of two and pruned of comparators touching wires ≥ n: padding wires
  would hold +inf, so those comparators never move a value (Batcher 1968; Knuth TAOCP 5.3.4).
  """
  pairs = []
  size = 1 << max(n - 1, 0).bit_length()
  p = 1
  while p < size:
    k = p
    while k >= 1:
      for j in range(k % p, size - k, 2 * k):
        for i in range(min(k, size - j - k)):
          if (i + j) // (2 * p) == (i + j + k) // (2 * p):
            pairs.append((i + j, i + j + k))
      k //= 2
    p *= 2
  return tuple((a, b) for a, b in pairs if b < n)


def _int_type(dtype):
  return {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}[jnp.dtype(dtype).itemsize]


def _to_ordered_int(x: jax.Array) -> jax.Array:
  """A bijection float -> int preserving the order above (NaN canonicalized to +NaN)."""
  x = jnp.where(jnp.isnan(x), jnp.array(jnp.nan, x.dtype), x)
  bits = lax.bitcast_convert_type(x, _int_type(x.dtype))
  mask = jnp.array(jnp.iinfo(bits.dtype).max, bits.dtype)
  return bits ^ ((bits >> (bits.dtype.itemsize * 8 - 1)) & mask)


def _from_ordered_int(keys: jax.Array, dtype) -> jax.Array:
  mask = jnp.array(jnp.iinfo(keys.dtype).max, keys.dtype)
  return lax.bitcast_convert_type(keys ^ ((keys >> (keys.dtype.itemsize * 8 - 1)) & mask), dtype)


def _network_sort(updates: jax.Array) -> jax.Array:
  rows = [_to_ordered_int(updates[i]) for i in range(updates.shape[0])]
  for a, b in batcher_network(updates.shape[0]):
    rows[a], rows[b] = jnp.minimum(rows[a], rows[b]), jnp.maximum(rows[a], rows[b])
  return jnp.stack([_from_ordered_int(r, updates.dtype) for r in rows])


def sort_clients(updates: jax.Array) -> jax.Array:
  """`[n, d]` with every column sorted ascending (row k holds the k-th order statistics)."""
  if _use_network(updates.shape[0]):
    return _network_sort(updates)
  if jax.default_backend() == "gpu":  # along the minor axis: linear in a vmapped batch
    return jnp.sort(updates.T, axis=-1).T
  return jnp.sort(updates, axis=0)


def sort_clients_with(updates: jax.Array, payload: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`sort_clients` that also permutes `payload [n]` (e.g. client weights) along each column:
  returns (sorted `[n, d]`, payload in the same order `[n, d]`)."""
  payload = jnp.broadcast_to(payload[:, None], updates.shape).astype(updates.dtype)
  if _use_network(updates.shape[0]):
    keys = [_to_ordered_int(updates[i]) for i in range(updates.shape[0])]
    carried = [payload[i] for i in range(updates.shape[0])]
    for a, b in batcher_network(updates.shape[0]):
      swap = keys[a] > keys[b]
      keys[a], keys[b] = jnp.minimum(keys[a], keys[b]), jnp.maximum(keys[a], keys[b])
      carried[a], carried[b] = (jnp.where(swap, carried[b], carried[a]),
                                jnp.where(swap, carried[a], carried[b]))
    return (jnp.stack([_from_ordered_int(k, updates.dtype) for k in keys]), jnp.stack(carried))
  keys, carried = lax.sort((_to_ordered_int(updates), payload), dimension=0, num_keys=1)
  return _from_ordered_int(keys, updates.dtype), carried
