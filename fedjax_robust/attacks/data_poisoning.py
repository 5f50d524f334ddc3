"""Data-poisoning attacks: transforms of a Byzantine client's own data before local training."""

from __future__ import annotations

import jax


def flip_labels(labels: jax.Array, num_classes: int) -> jax.Array:
  """Label flipping: y → C − 1 − y (e.g. Allouah et al. 2023; Yin et al. 2018 use the same map)."""
  return num_classes - 1 - labels
