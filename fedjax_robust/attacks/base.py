"""The attack interface and the honest statistics attacks are built from.

An `Attack` acts in one or both of two places of a round:
- model poisoning, `poison(key, updates [n, d], byzantine_mask [n], state, aggregate)
  -> (updates [n, d], state)`, replaces the rows of the Byzantine clients after local training.
  It never modifies an honest row. `state` is what the attack carries across rounds (`init(d)`,
  e.g. mimic's estimate of the direction of largest variance); `aggregate(updates) -> [d]` is the
  server's aggregation of the round (pre-aggregators, the rule's state and its randomness
  included), which adaptive attacks query.
- data poisoning, `poison_data(key, x, y) -> (x, y)`, transforms a Byzantine client's own
  minibatch before its local gradient (label flipping, backdoor triggers); honest clients train
  on their true data. With `indexed=True` the simulator calls `poison_data(key, x, y, client)`,
  `client` the client's index among the n (an int32 scalar, 0 … n − 1): DBA stamps local
  trigger `client mod parts`. A backdoor also gives the `trigger` it stamps and its
  `target_label`, so the evaluation can report the backdoor success rate: the share of
  triggered test inputs classified as the target, over the test inputs whose true label is not
  the target, or, when `source_label` is set (the edge-case backdoor), over those whose true
  label is `source_label`.
- inadvertent faults (`fedjax_robust.attacks.faults`) may also act through `corrupt_data(key, x, y, idx)
  -> (x, y)` (a fixed corruption of the client's examples `idx`, `key` fixed per client and
  draw), `sample_weights(y, valid) -> w` (a biased client samples its minibatches ∝ w), and
  `presence(key, faulty [n], round) -> present [n]` (absent clients send nothing).

`init(d, n)` gives the state a stateful attack or fault starts from (d parameters, n clients).

Attacker knowledge: omniscient. A model-poisoning attack sees every honest update of the round,
the realized Byzantine set of its Monte Carlo draw (so the realized count b, not the server's
declared f) and, for adaptive attacks, the server's aggregation rule with its state and its
randomness for the round. When b = 0 no row is replaced; when b ≥ n/2 the attack runs as usual
(the results flag those draws).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

Array = jax.Array
Aggregate = Callable[[Array], Array]


@dataclasses.dataclass(frozen=True)
class Attack:
  name: str
  poison: Callable[[Array, Array, Array, Any, Aggregate | None], tuple[Array, Any]] | None = None
  init: Callable[..., Any] = lambda d, n=None: ()
  poison_data: Callable[..., tuple[Array, Array]] | None = None
  trigger: Callable[[Array], Array] | None = None
  target_label: int | None = None
  # poison_data takes the client's index as a fourth argument (int32 scalar, 0 … n − 1).
  indexed: bool = False
  # The success rate's test inputs: those of this true label (None: every label but the target).
  source_label: int | None = None
  # An attack that adapts to the global model before the clients train (A3FL's trigger):
  # `adapt(key, logits(θ, x), θ [d], state, x [m, ...], y [m], weights [m]) -> state`, on the
  # pooled examples of the clients running it this round (weight 1; 0 elsewhere).
  adapt: Callable[..., Any] | None = None
  # poison_data and trigger read the attack's state: `poison_data(key, x, y, state=state)`,
  # `trigger(x, state)` (the evaluation measures the trigger the attackers hold).
  stateful_data: bool = False
  corrupt_data: Callable[[Array, Array, Array, Array], tuple[Array, Array]] | None = None
  sample_weights: Callable[[Array, Array], Array] | None = None
  presence: Callable[[Array, Array, Array], Array] | None = None

  def poison_updates(self, key: Array, updates: Array, byzantine_mask: Array,
                     aggregate: Aggregate | None = None) -> Array:
    """The poisoned updates of one round from the attack's initial state (a convenience for
    stateless use; the simulator calls `poison` and carries the state)."""
    out, _ = self.poison(key, updates, byzantine_mask, self.init(*updates.shape[::-1]), aggregate)
    return out


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
