"""Small flax models seen by the simulator as `init(key) -> params`, `apply(params, x) -> logits`,
and the masked losses the simulator trains and evaluates with."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from fedjax_robust import domains as D
from fedjax_robust.errors import ConfigError


class _Logistic(nn.Module):
  num_classes: int

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


class _MLP(nn.Module):
  num_classes: int
  hidden: Sequence[int]

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    for width in self.hidden:
      x = nn.relu(nn.Dense(width)(x))
    return nn.Dense(self.num_classes)(x)


class _CNN(nn.Module):
  """Conv(3×3)-ReLU-AvgPool(2) blocks, then a ReLU dense layer and the classifier."""
  num_classes: int
  features: Sequence[int]
  dense: int

  @nn.compact
  def __call__(self, x):
    for width in self.features:
      x = nn.relu(nn.Conv(width, (3, 3), padding="SAME")(x))
      x = nn.avg_pool(x, (2, 2), strides=(2, 2), padding="SAME")
    x = nn.relu(nn.Dense(self.dense)(x.reshape(x.shape[0], -1)))
    return nn.Dense(self.num_classes)(x)


@dataclasses.dataclass(frozen=True)
class Model:
  name: str
  init: Callable[[jax.Array], Any]
  apply: Callable[[Any, jax.Array], jax.Array]


_MODULES = {
    "logistic": lambda c, **kw: _Logistic(c, **kw),
    "mlp": lambda c, hidden=(32,): _MLP(c, tuple(hidden)),
    "cnn": lambda c, features=(16, 32), dense=64: _CNN(c, tuple(features), dense),
}


# The declared domain of every model option.
OPTION_DOMAINS = {
    "logistic": {},
    "mlp": {"hidden": D.Tuple(D.POSITIVE_INT, note="hidden layer widths; () is logistic")},
    "cnn": {"features": D.Tuple(D.POSITIVE_INT, 1, note="conv widths"), "dense": D.POSITIVE_INT},
}


def names() -> list[str]:
  return sorted(_MODULES)


def get(name: str, *, input_shape: Sequence[int], num_classes: int, **options) -> Model:
  """`logistic` (multinomial logistic regression), `mlp` (option `hidden`, widths) or `cnn`
  (options `features`, conv widths, and `dense`)."""
  if name not in _MODULES:
    raise ConfigError(f"unknown model {name!r}; available: {', '.join(names())}.")
  unknown = sorted(set(options) - set(OPTION_DOMAINS[name]))
  if unknown:
    raise ConfigError(f"unknown option(s) {unknown} for model {name!r}; allowed: "
                      f"{sorted(OPTION_DOMAINS[name]) or 'none'}.")
  D.check_options(f"model_options.{name}", options, OPTION_DOMAINS[name])
  module = _MODULES[name](num_classes, **options)
  dummy = jnp.zeros((1, *input_shape), jnp.float32)
  return Model(name, init=lambda key: module.init(key, dummy), apply=module.apply)


def masked_cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> jax.Array:
  """Σ_j w_j CE(logits_j, y_j) / Σ_j w_j (0 when all weights are 0)."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  weights = weights.astype(ce.dtype)
  return jnp.sum(jnp.where(weights > 0, ce, 0.0) * weights) / jnp.maximum(jnp.sum(weights), 1e-12)


def masked_accuracy(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> jax.Array:
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  weights = weights.astype(jnp.float32)
  return jnp.sum(correct * weights) / jnp.maximum(jnp.sum(weights), 1e-12)
