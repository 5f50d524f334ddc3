"""The attack interface and the honest statistics attacks are built from.

An `Attack` acts in one or both of two places of a round:
- `poison_updates(key, updates [n, d], byzantine_mask [n]) -> updates [n, d]` replaces the rows of
  the Byzantine clients after local training (model poisoning). It never modifies an honest row.
- `poison_labels(labels) -> labels` transforms a Byzantine client's own labels before its local
  training (data poisoning); honest clients train on their true data.

Attacker knowledge: omniscient. A model-poisoning attack sees every honest update of the round
and the realized Byzantine set of its Monte Carlo sample (so the realized count b, not the
server's declared f). When b = 0 no row is replaced.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Attack:
  name: str
  poison_updates: Callable[[Array, Array, Array], Array] | None = None
  poison_labels: Callable[[Array], Array] | None = None


def honest_mean_and_std(updates: Array, byzantine_mask: Array) -> tuple[Array, Array]:
  """Coordinate-wise mean μ and standard deviation σ (ddof=1) of the honest rows, `[d]` each.

  Computed as matrix products over the honest indicator. σ is 0 with fewer than two honest rows;
  μ is NaN with none.
  """
  honest = (~byzantine_mask).astype(updates.dtype)
  count = jnp.sum(honest)
  mu = honest @ updates / count
  centred = updates - mu
  var = honest @ (centred * centred) / jnp.maximum(count - 1, 1)
  return mu, jnp.sqrt(var)


def replace_byzantine(updates: Array, byzantine_mask: Array, vector: Array) -> Array:
  """Every Byzantine row set to `vector` `[d]`; honest rows returned untouched."""
  return jnp.where(byzantine_mask[:, None], vector[None, :].astype(updates.dtype), updates)
