"""Client data stacked on a leading client axis: `x [n, m_max, ...]`, `y [n, m_max]`, counts `[n]`.

Rows past a client's count are zero padding; `valid_mask` marks the real examples, and every loss,
accuracy and minibatch draw uses it, so padding never enters a result.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np


class ClientData(NamedTuple):
  x: jax.Array       # [n, m_max, *input_shape] float32
  y: jax.Array       # [n, m_max] int32 class labels, or float32 targets (regression)
  counts: jax.Array  # [n] int32, >= 1 for training data (a held-out split may have 0)

  @property
  def num_clients(self) -> int:
    return self.x.shape[0]


def valid_mask(counts: jax.Array, max_count: int) -> jax.Array:
  """`[n, m_max]` True for real examples, False for padding."""
  return jnp.arange(max_count)[None, :] < counts[:, None]


def stack_clients(xs: Sequence[np.ndarray], ys: Sequence[np.ndarray]) -> ClientData:
  """Pads per-client arrays to the largest client and stacks them (labels as int32, or as float32
  when they are floating point: real-valued regression targets)."""
  if len(xs) != len(ys) or not xs:
    raise ValueError(f"need one label array per client, got {len(xs)} inputs and {len(ys)} labels.")
  counts = np.array([len(y) for y in ys], np.int32)
  m_max = max(int(counts.max()), 1)  # >= 1 even when every client is empty (a held-out split)
  x = np.zeros((len(xs), m_max, *xs[0].shape[1:]), np.float32)
  real = np.issubdtype(np.asarray(ys[0]).dtype, np.floating)
  y = np.zeros((len(ys), m_max), np.float32 if real else np.int32)
  for i, (xi, yi) in enumerate(zip(xs, ys)):
    x[i, :len(yi)] = xi
    y[i, :len(yi)] = yi
  return ClientData(jnp.asarray(x), jnp.asarray(y), jnp.asarray(counts))
