"""Data-poisoning attacks: transforms of a Byzantine client's own minibatch before its gradient.

Each has the form `(key, x [m, ...], y [m]) -> (x, y)`, applied only where the client is
Byzantine.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


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


# The image triggers a backdoor may stamp (option `trigger` of every image backdoor).
TRIGGERS = ("square", "pattern", "blended")
# The seed of the blended trigger's pattern P: fixed, so every client, round and draw (and the
# evaluation) blends the same P into images of one shape.
BLEND_SEED = 0xB1E2D


def _corner(h: int, w: int, patch_size: int):
  """(rows [h, 1, 1], cols [1, w, 1]) indicators of the bottom-right `patch_size`² corner."""
  rows = (jnp.arange(h) >= h - patch_size)[:, None, None]
  cols = (jnp.arange(w) >= w - patch_size)[None, :, None]
  return rows, cols


def pattern_values(patch_size: int, value: float = 1.0) -> np.ndarray:
  """The BadNets-style pattern `[patch_size, patch_size]`: a checkerboard whose pixel at offset
  (r, c) from the corner's top-left is `value` ("on") where r + c is even and 0 ("off", the low
  end of the data's [0, 1] range) where r + c is odd."""
  r, c = np.meshgrid(np.arange(patch_size), np.arange(patch_size), indexing="ij")
  return np.where((r + c) % 2 == 0, value, 0.0)


def stamp_pattern(x: jax.Array, *, patch_size: int = 2, value: float = 1.0) -> jax.Array:
  """A BadNets pixel-pattern trigger (Gu, Dolan-Gavitt, Garg, "BadNets: identifying
  vulnerabilities in the machine learning model supply chain", 2017): the bottom-right
  `patch_size`² corner of every image `[..., H, W, C]` (all channels) set to the checkerboard
  `pattern_values` — both its on and its off pixels are written, so the corner reads the same
  whatever the image held there. patch_size = 1 is the single bright pixel, `stamp_trigger`'s."""
  h, w = x.shape[-3], x.shape[-2]
  rows, cols = _corner(h, w, patch_size)
  # Offsets from the corner's top-left (negative outside the corner, masked off by rows & cols).
  r = np.arange(h)[:, None] - (h - patch_size)
  c = np.arange(w)[None, :] - (w - patch_size)
  full = np.where((r + c) % 2 == 0, value, 0.0)[:, :, None]
  return jnp.where(rows & cols, jnp.asarray(full, x.dtype), x)


def blend_pattern(shape: tuple[int, int, int], value: float = 1.0) -> np.ndarray:
  """The blended trigger's pattern P `[H, W, C]` (float32): value · U with U iid uniform on
  [0, 1) drawn once from `numpy.random.default_rng(BLEND_SEED)` — Chen et al.'s random-noise
  pattern, in the data's [0, 1] value range at the default value 1."""
  u = np.random.default_rng(BLEND_SEED).random(tuple(int(s) for s in shape))
  return (value * u).astype(np.float32)


def blend_trigger(x: jax.Array, *, alpha: float = 0.2, value: float = 1.0) -> jax.Array:
  """The blended trigger (Chen, Liu, Li, Lu, Song, "Targeted backdoor attacks on deep learning
  systems using data poisoning", 2017): x' = (1 − α)·x + α·P, P = `blend_pattern` of the
  image's [H, W, C], the whole image blended (no corner). Computed in x's dtype; a non-finite
  pixel of x stays non-finite."""
  if not 0 < alpha <= 1:
    raise ValueError(f"blend_alpha must lie in (0, 1], got {alpha}.")
  pattern = jnp.asarray(blend_pattern(x.shape[-3:], value), x.dtype)
  a = jnp.asarray(alpha, x.dtype)
  return (1 - a) * x + a * pattern


def apply_trigger(x: jax.Array, *, trigger: str = "square", patch_size: int = 2,
                  value: float = 1.0, blend_alpha: float = 0.2) -> jax.Array:
  """Every image `[..., H, W, C]` stamped with the trigger named `trigger` (`TRIGGERS`):
  "square" `stamp_trigger`, "pattern" `stamp_pattern` (both in the bottom-right `patch_size`²
  corner), "blended" `blend_trigger` with α = `blend_alpha` (which ignores `patch_size`)."""
  if trigger == "square":
    return stamp_trigger(x, patch_size=patch_size, value=value)
  if trigger == "pattern":
    return stamp_pattern(x, patch_size=patch_size, value=value)
  if trigger == "blended":
    return blend_trigger(x, alpha=blend_alpha, value=value)
  raise ValueError(f"trigger={trigger!r} is not one of {', '.join(map(repr, TRIGGERS))}.")


def poison_fraction(key: jax.Array, x: jax.Array, y: jax.Array, transformed: jax.Array,
                    target_label: int, fraction: float, eligible: jax.Array | None = None):
  """Each example (of those `eligible`, default all) is, with probability `fraction` (one
  Bernoulli draw per example from `key`), replaced by its `transformed` version and relabelled
  `target_label`; the rest is returned as it came."""
  poisoned = jax.random.bernoulli(key, fraction, y.shape)
  if eligible is not None:
    poisoned = poisoned & eligible
  shape = poisoned.shape + (1,) * (x.ndim - poisoned.ndim)
  x = jnp.where(poisoned.reshape(shape), transformed, x)
  return x, jnp.where(poisoned, target_label, y)


def backdoor(key: jax.Array, x: jax.Array, y: jax.Array, *, target_label: int = 0,
             fraction: float = 0.5, patch_size: int = 2, value: float = 1.0,
             trigger: str = "square", blend_alpha: float = 0.2):
  """Backdoor: each example of the Byzantine client's minibatch is, with probability `fraction`,
  stamped with the trigger (`apply_trigger`: the square patch by default, a BadNets pattern or
  a blended pattern) and relabelled `target_label`; the rest stays clean, so the model keeps
  its clean accuracy. A pixel-pattern backdoor in the style of Bagdasaryan et al. (AISTATS 2020)
  and Wang et al. ("Attack of the tails", NeurIPS 2020)."""
  if not 0 <= fraction <= 1:
    raise ValueError(f"backdoor fraction must lie in [0, 1], got {fraction}.")
  stamped = apply_trigger(x, trigger=trigger, patch_size=patch_size, value=value,
                          blend_alpha=blend_alpha)
  return poison_fraction(key, x, y, stamped, target_label, fraction)


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
