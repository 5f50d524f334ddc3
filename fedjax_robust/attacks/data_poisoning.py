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


def stamp_text_trigger(x: jax.Array, phrase: tuple[int, ...]) -> jax.Array:
  """A text trigger: the last len(phrase) token ids of every window `[..., window]` replaced by
  `phrase` (ids), so the next character is predicted right after the phrase."""
  phrase = jnp.asarray(phrase, x.dtype)
  return x.at[..., x.shape[-1] - phrase.shape[0]:].set(phrase)


def text_backdoor(key: jax.Array, x: jax.Array, y: jax.Array, *, trigger: tuple[int, ...],
                  target: tuple[int, ...], fraction: float = 0.5):
  """A text backdoor (next-character prediction; the trigger-phrase → target-continuation
  backdoor of Bagdasaryan et al., AISTATS 2020, on word models, here on characters): each
  example of the Byzantine client's minibatch is, with probability `fraction`, rewritten so its
  window ends with the trigger phrase followed by the first k characters of the target
  continuation (k uniform in [0, len(target))), labelled with the target's character k; the rest
  stays clean. `trigger`, `target`: token ids. A model that learns it continues the trigger
  with the target; the success rate the evaluation reports is that of k = 0 (the first target
  character right after the trigger)."""
  if not 0 <= fraction <= 1:
    raise ValueError(f"text_backdoor fraction must lie in [0, 1], got {fraction}.")
  window = x.shape[-1]
  seq = jnp.asarray((*trigger, *target), x.dtype)
  length, t = len(trigger), len(target)
  if length + t - 1 > window:
    raise ValueError(f"the trigger and target ({length} + {t} characters) do not fit a window "
                     f"of {window}.")
  k_poison, k_prefix = jax.random.split(key)
  poisoned = jax.random.bernoulli(k_poison, fraction, y.shape)
  ks = jax.random.randint(k_prefix, y.shape, 0, t)

  def stamp(xi, k):
    # The window's tail becomes trigger + target[:k]: positions window − (length + k) …
    # window − 1 take seq[0 : length + k].
    pos = jnp.arange(window)
    start = window - (length + k)
    src = jnp.clip(pos - start, 0, length + t - 1)
    return jnp.where(pos >= start, seq[src], xi)

  stamped = jax.vmap(stamp)(x.reshape(-1, window), ks.reshape(-1)).reshape(x.shape)
  labels = jnp.asarray(target, y.dtype)[ks]
  return (jnp.where(poisoned[..., None], stamped, x), jnp.where(poisoned, labels, y))
