"""Shared pieces of the aggregation library: finite-row handling and the `Aggregator` pipeline.

Every rule is a pure function of a matrix of client updates `updates: [n, d]` returning `[d]`,
and every pre-aggregator returns `[n', d]`. A pipeline (`Aggregator`) chains pre-aggregators and
one rule behind the uniform signature the simulator uses,

    apply(updates, state, key) -> (aggregate [d], new_state, aux)

where `state` carries what a stateful rule keeps across rounds (empty for stateless pipelines)
and `aux` holds scalar diagnostics (e.g. Weiszfeld's iteration count).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

Array = jax.Array
Apply = Callable[[Array, Any, Array], tuple[Array, Any, Mapping[str, Array]]]


def finite_rows(updates: Array) -> Array:
  """Boolean `[n]`: True where a row has no NaN or ±inf entry."""
  return jnp.all(jnp.isfinite(updates), axis=-1)


def zero_nonfinite_rows(updates: Array, keep: Array) -> Array:
  """Rows where `keep` is False set to 0, so that a weight of 0 cannot turn into 0·inf = NaN."""
  return jnp.where(keep[:, None], updates, jnp.zeros((), updates.dtype))


def median_norm_row(updates: jax.Array, valid: jax.Array) -> jax.Array:
  """The valid row whose norm is the (upper) median of the valid rows' norms, `[d]`.

  A centre for Gram-matrix computations: subtracting it cancels a large common component of the
  rows, and a minority of outlying rows cannot make it an outlier.
  """
  norms = jnp.where(valid, jnp.sum(updates * updates, axis=-1), jnp.inf)
  return updates[jnp.argsort(norms)[jnp.sum(valid) // 2]]


def weighted_average(updates: Array, weights: Array) -> Array:
  """Σ_i w_i x_i / Σ_i w_i as a matrix product (XLA:CPU reduces slowly along the leading axis)."""
  weights = weights.astype(updates.dtype)
  return (weights @ updates) / jnp.sum(weights)


def check_updates(updates: Array, rule: str, *, f: int | None = None, min_n=None) -> tuple[int, int]:
  """Validates a `[n, d]` update matrix at trace time; returns (n, d).

  `min_n(f)` gives the smallest number of clients the rule is defined for.
  """
  if updates.ndim != 2:
    raise ValueError(f"{rule}: updates must be a matrix [n, d], got shape {updates.shape}.")
  n, d = updates.shape
  if f is not None:
    if not isinstance(f, int) or f < 0:
      raise ValueError(f"{rule}: f must be a non-negative Python int, got {f!r}.")
    if min_n is not None and n < min_n(f):
      raise ValueError(f"{rule}: needs n >= {min_n(f)} clients for f={f}, got n={n}.")
  return n, d


@dataclasses.dataclass(frozen=True)
class Aggregator:
  """A pipeline of pre-aggregators followed by one aggregation rule.

  Call it on a matrix for the aggregate alone (`agg(updates)`), or use `init`/`apply` to carry
  the state of a stateful rule through a training loop.

  Attributes:
    name: the spec it was built from, e.g. "nearest_neighbor_mixing+trimmed_mean".
    f: the declared number of Byzantine clients the pipeline is configured for.
    init: `d -> state`.
    apply: `(updates [n, d], state, key) -> (aggregate [d], state, aux)`.
  """

  name: str
  f: int
  init: Callable[[int], Any]
  apply: Apply

  def __call__(self, updates: Array, key: Array | None = None) -> Array:
    if key is None:
      key = jax.random.key(0)
    out, _, _ = self.apply(updates, self.init(updates.shape[-1]), key)
    return out
