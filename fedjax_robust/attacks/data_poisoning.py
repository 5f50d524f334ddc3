"""Data-poisoning attacks: transforms of a Byzantine client's own minibatch before its gradient.

Each has the form `(key, x [m, ...], y [m]) -> (x, y)`, applied only where the client is
Byzantine.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def flip_labels(labels: jax.Array, num_classes: int) -> jax.Array:
  """Label flipping: y → C − 1 − y (e.g. Allouah et al. 2023; Yin et al. 2018 use the same map)."""
  return num_classes - 1 - labels


def stamp_trigger(x: jax.Array, *, patch_size: int = 2, value: float = 1.0) -> jax.Array:
  """The backdoor trigger: a `patch_size`² square of `value` in the bottom-right corner of every
  image `[..., H, W, C]` (all channels)."""
  h, w = x.shape[-3], x.shape[-2]
  rows = (jnp.arange(h) >= h - patch_size)[:, None, None]
  cols = (jnp.arange(w) >= w - patch_size)[None, :, None]
  return jnp.where(rows & cols, jnp.asarray(value, x.dtype), x)


def backdoor(key: jax.Array, x: jax.Array, y: jax.Array, *, target_label: int = 0,
             fraction: float = 0.5, patch_size: int = 2, value: float = 1.0):
  """Backdoor: each example of the Byzantine client's minibatch is, with probability `fraction`,
  stamped with the trigger (`stamp_trigger`) and relabelled `target_label`; the rest stays
  clean, so the model keeps its clean accuracy. A pixel-pattern backdoor in the style of
  Bagdasaryan et al. (AISTATS 2020) and Wang et al. ("Attack of the tails", NeurIPS 2020)."""
  if not 0 <= fraction <= 1:
    raise ValueError(f"backdoor fraction must lie in [0, 1], got {fraction}.")
  poisoned = jax.random.bernoulli(key, fraction, y.shape)
  shape = poisoned.shape + (1,) * (x.ndim - poisoned.ndim)
  x = jnp.where(poisoned.reshape(shape), stamp_trigger(x, patch_size=patch_size, value=value), x)
  return x, jnp.where(poisoned, target_label, y)
