"""Small flax models seen by the simulator as `init(key) -> params`, `apply(params, x) -> outputs`
(logits `[m, C]` of a classifier, predictions `[m]` of a regressor), and the masked losses the
simulator trains and evaluates with: each model names its loss (`Model.loss`)."""

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


class _LinearRegression(nn.Module):
  """ŷ = x·w + b, one real output per example `[m]`."""

  @nn.compact
  def __call__(self, x):
    return nn.Dense(1)(x.reshape(x.shape[0], -1))[:, 0]


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
  loss: str  # "cross_entropy" or "squared" (LOSSES): what `masked_loss` computes


_MODULES = {
    "linear_regression": lambda c: _LinearRegression(),
    "logistic": lambda c, **kw: _Logistic(c, **kw),
    "mlp": lambda c, hidden=(32,): _MLP(c, tuple(hidden)),
    "cnn": lambda c, features=(16, 32), dense=64: _CNN(c, tuple(features), dense),
}


# The loss of every model: "cross_entropy" (softmax cross-entropy of logits against integer class
# labels) for classifiers, "squared" (½(ŷ − y)² against a real target: least squares) for
# regressors.
LOSSES = {"linear_regression": "squared", "logistic": "cross_entropy", "mlp": "cross_entropy",
          "cnn": "cross_entropy"}

# The declared domain of every model option.
OPTION_DOMAINS = {
    "linear_regression": {},
    "logistic": {},
    "mlp": {"hidden": D.Tuple(D.POSITIVE_INT, note="hidden layer widths; () is logistic")},
    "cnn": {"features": D.Tuple(D.POSITIVE_INT, 1, note="conv widths"), "dense": D.POSITIVE_INT},
}


def names() -> list[str]:
  return sorted(_MODULES)


def names_for(task: str) -> list[str]:
  """The models of a task: "regression" (squared loss) or "classification" (cross-entropy)."""
  loss = "squared" if task == "regression" else "cross_entropy"
  return [name for name in names() if LOSSES[name] == loss]


def get(name: str, *, input_shape: Sequence[int], num_classes: int | None, **options) -> Model:
  """`logistic` (multinomial logistic regression), `mlp` (option `hidden`, widths), `cnn`
  (options `features`, conv widths, and `dense`), or `linear_regression` (least squares, for
  real targets: `num_classes` None)."""
  if name not in _MODULES:
    raise ConfigError(f"unknown model {name!r}; available: {', '.join(names())}.")
  task = "regression" if num_classes is None else "classification"
  if name not in names_for(task):
    what = "real targets" if num_classes is None else f"{num_classes} classes"
    raise ConfigError(f"model {name!r} ({LOSSES[name]} loss) does not fit a {task} task "
                      f"({what}); models for it: {', '.join(names_for(task))}.")
  unknown = sorted(set(options) - set(OPTION_DOMAINS[name]))
  if unknown:
    raise ConfigError(f"unknown option(s) {unknown} for model {name!r}; allowed: "
                      f"{sorted(OPTION_DOMAINS[name]) or 'none'}.")
  D.check_options(f"model_options.{name}", options, OPTION_DOMAINS[name])
  module = _MODULES[name](num_classes, **options)
  dummy = jnp.zeros((1, *input_shape), jnp.float32)
  return Model(name, init=lambda key: module.init(key, dummy), apply=module.apply,
               loss=LOSSES[name])


def masked_loss(kind: str, outputs: jax.Array, targets: jax.Array,
                weights: jax.Array) -> jax.Array:
  """The weighted mean loss of `kind` ("cross_entropy" or "squared"): `masked_cross_entropy` of logits against
  labels, or `masked_squared_error` of predictions against real targets."""
  return _MASKED_LOSSES[kind](outputs, targets, weights)


def masked_cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> jax.Array:
  """Σ_j w_j CE(logits_j, y_j) / Σ_j w_j (0 when all weights are 0)."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  weights = weights.astype(ce.dtype)
  return jnp.sum(jnp.where(weights > 0, ce, 0.0) * weights) / jnp.maximum(jnp.sum(weights), 1e-12)


def masked_squared_error(predictions: jax.Array, targets: jax.Array,
                         weights: jax.Array) -> jax.Array:
  """Σ_j w_j ½(ŷ_j − y_j)² / Σ_j w_j (0 when all weights are 0)."""
  sq = 0.5 * (predictions - targets) ** 2
  weights = weights.astype(sq.dtype)
  return jnp.sum(jnp.where(weights > 0, sq, 0.0) * weights) / jnp.maximum(jnp.sum(weights), 1e-12)


_MASKED_LOSSES = {"cross_entropy": masked_cross_entropy, "squared": masked_squared_error}


def masked_accuracy(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> jax.Array:
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  weights = weights.astype(jnp.float32)
  return jnp.sum(correct * weights) / jnp.maximum(jnp.sum(weights), 1e-12)
