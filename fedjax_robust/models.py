"""Small flax models seen by the simulator as `init(key) -> params`, `apply(params, x) -> outputs`
(logits `[m, C]` of a classifier, predictions `[m]` of a regressor), and the masked losses the
simulator trains and evaluates with: each model names its loss (`Model.loss`).

The character language models (`char_transformer`, `char_lstm`) read `[m, window]` token ids and
predict the next character. `char_transformer` with `lora_rank` > 0 fine-tunes a pretrained base
through LoRA adapters (Hu et al. 2021): its `Model` trains the adapters alone (`get`)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

from flax import traverse_util
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
  def __call__(self, x, features: bool = False):
    """Logits `[m, C]`, or with `features` the last hidden layer's activations `[m, h]` (the
    penultimate-layer representation; the output layer's parameters are then not created)."""
    x = x.reshape(x.shape[0], -1)
    for width in self.hidden:
      x = nn.relu(nn.Dense(width)(x))
    if features:
      return x
    return nn.Dense(self.num_classes)(x)


class _CNN(nn.Module):
  """Conv(3×3)-ReLU-AvgPool(2) blocks, then a ReLU dense layer and the classifier.

  d = Σ_blocks (9·c_in·c_out + c_out) + (h·w·c)·dense + dense + (dense + 1)·C, h×w×c the last
  block's output (each pool halves h and w, rounding up). At CIFAR shape (32×32×3, C = 10; data
  `cifar10`, or `cifar_shape` offline): d = 136,874 with the defaults (features (16, 32), dense
  64) and d = 545,098 with features (32, 64), dense 128 (tests/test_models.py)."""
  num_classes: int
  features: Sequence[int]
  dense: int

  @nn.compact
  def __call__(self, x, features: bool = False):
    """Logits `[m, C]`, or with `features` the dense layer's activations `[m, dense]` (the
    penultimate-layer representation)."""
    for width in self.features:
      x = nn.relu(nn.Conv(width, (3, 3), padding="SAME")(x))
      x = nn.avg_pool(x, (2, 2), strides=(2, 2), padding="SAME")
    x = nn.relu(nn.Dense(self.dense)(x.reshape(x.shape[0], -1)))
    if features:
      return x
    return nn.Dense(self.num_classes)(x)


# ----------------------------------------------------------------------------------------------
# Character language models (LEAF's Shakespeare task): x is `[m, window]` float32 holding integer
# token ids (0 = padding/unknown, 1..V−1 characters; V = num_classes), the label the id of the
# character after the window. Ids outside [0, V) read as 0 (unknown): jnp.take would give NaN.


def _token_ids(x: jax.Array, vocab: int) -> jax.Array:
  ids = x.reshape(x.shape[0], -1).astype(jnp.int32)
  return jnp.where((ids >= 0) & (ids < vocab), ids, 0)


LORA_NAMES = ("lora_a", "lora_b")  # the leaf names of LoRA adapters (split_adapters reads them)


class _LoRADense(nn.Module):
  """A dense layer with an optional low-rank adapter (LoRA; Hu et al. 2021, "LoRA: Low-Rank
  Adaptation of Large Language Models", eq. 3):

    y = x W + b + (α/r)·(x A) B,   W [in, out], A [in, r] ~ N(0, 1/in), B [r, out] = 0,

  so at initialization the adapted layer equals the base layer exactly (B = 0, as in the paper,
  which initializes A with a random Gaussian; 1/in is LeCun's variance). `rank` 0: no adapter,
  and the parameters `kernel`, `bias` are those of `nn.Dense` (same names, same initializers).
  """
  features: int
  rank: int = 0
  scale: float = 1.0   # α/r

  @nn.compact
  def __call__(self, x):
    fan_in = x.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (fan_in, self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    y = x @ kernel + bias
    if self.rank:
      a = self.param("lora_a", nn.initializers.normal(stddev=fan_in ** -0.5), (fan_in, self.rank))
      b = self.param("lora_b", nn.initializers.zeros, (self.rank, self.features))
      y = y + self.scale * ((x @ a) @ b)
    return y


class _Block(nn.Module):
  """Pre-LayerNorm decoder block (GPT-2): h += Attn(LN(h)); h += MLP(LN(h)), where Attn is causal
  multi-head self-attention, softmax(q kᵀ/√d_head + causal mask) v per head, with dense
  projections q, k, v, out, and MLP(h) = W₂ GELU(W₁ h + b₁) + b₂ with `hidden` units."""
  width: int
  heads: int
  hidden: int
  rank: int
  scale: float

  @nn.compact
  def __call__(self, h):
    m, t, _ = h.shape
    dense = lambda features, name: _LoRADense(features, self.rank, self.scale, name=name)
    z = nn.LayerNorm(name="ln_attn")(h)
    split = lambda y: y.reshape(m, t, self.heads, self.width // self.heads)
    q, k, v = (split(dense(self.width, name)(z)) for name in ("q", "k", "v"))
    scores = jnp.einsum("mshd,mthd->mhst", q, k) / jnp.sqrt(self.width // self.heads)
    causal = jnp.tril(jnp.ones((t, t), bool))   # position s sees positions ≤ s only
    scores = jnp.where(causal, scores, jnp.finfo(scores.dtype).min)
    attended = jnp.einsum("mhst,mthd->mshd", jax.nn.softmax(scores, axis=-1), v)
    h = h + dense(self.width, "out")(attended.reshape(m, t, self.width))
    z = nn.LayerNorm(name="ln_mlp")(h)
    z = dense(self.width, "mlp_out")(nn.gelu(dense(self.hidden, "mlp_in")(z)))
    return h + z


class _CharTransformer(nn.Module):
  """Decoder-only transformer over the last `context` tokens of the window: token embedding +
  learned position embedding, `layers` pre-LN blocks (`_Block`), a final LayerNorm and a dense
  output layer to the vocabulary. Returns the logits of the last position `[m, V]` (the next
  character after the window), or of every position `[m, context, V]` with `all_positions`.
  With `lora_rank` r > 0 the q, k, v, out and both MLP projections of every block carry a LoRA
  adapter (`_LoRADense`) of rank r and scale α/r; the embeddings, LayerNorms and the output layer
  carry none. Id 0 (padding/unknown) is a token with its own embedding: no attention mask."""
  num_classes: int
  layers: int
  width: int
  heads: int
  mlp_ratio: int
  context: int
  lora_rank: int = 0
  lora_scale: float = 1.0

  @nn.compact
  def __call__(self, x, all_positions: bool = False):
    ids = _token_ids(x, self.num_classes)[:, -self.context:]
    h = nn.Embed(self.num_classes, self.width, name="embed")(ids)
    position = self.param("position", nn.initializers.normal(stddev=0.02),
                          (self.context, self.width))
    h = h + position[None, : ids.shape[1]]
    for i in range(self.layers):
      h = _Block(self.width, self.heads, self.mlp_ratio * self.width, self.lora_rank,
                 self.lora_scale, name=f"block_{i}")(h)
    h = nn.LayerNorm(name="ln_final")(h)
    logits = nn.Dense(self.num_classes, name="head")(h)
    return logits if all_positions else logits[:, -1]


class _CharLSTM(nn.Module):
  """LEAF's Shakespeare reference model (Caldas et al. 2018, "LEAF: A Benchmark for Federated
  Settings"): an `embed`-dimensional character embedding, `layers` stacked LSTMs of `hidden`
  units, and a dense layer to the vocabulary from the last step's output."""
  num_classes: int
  embed: int
  hidden: int
  layers: int

  @nn.compact
  def __call__(self, x):
    h = nn.Embed(self.num_classes, self.embed, name="embed")(_token_ids(x, self.num_classes))
    for i in range(self.layers):
      h = nn.RNN(nn.OptimizedLSTMCell(self.hidden, name=f"lstm_{i}"))(h)
    return nn.Dense(self.num_classes, name="head")(h[:, -1])


@dataclasses.dataclass(frozen=True)
class Model:
  """`init(key) -> params` and `apply(params, x) -> outputs`: the parameters the simulator
  trains, aggregates and attacks. For a LoRA model (`lora_rank` > 0) these are the adapters
  alone: `apply` merges them into the pretrained base, a constant it closes over."""
  name: str
  init: Callable[[jax.Array], Any]
  apply: Callable[[Any, jax.Array], jax.Array]
  loss: str  # "cross_entropy" or "squared" (LOSSES): what `masked_loss` computes
  # `represent(params, x) -> [m, h]`: the penultimate-layer features (REPRESENTATION_MODELS;
  # what FLARE compares); None for a model without a hidden layer.
  represent: Callable[[Any, jax.Array], jax.Array] | None = None


def _char_transformer(c, *, layers=2, width=64, heads=4, mlp_ratio=4, context=None, lora_rank=0,
                      lora_alpha=None, window):
  """`context` None: the whole window. LoRA's scale α/r, with α = r (scale 1) by default."""
  scale = (lora_rank if lora_alpha is None else lora_alpha) / lora_rank if lora_rank else 1.0
  return _CharTransformer(c, layers, width, heads, mlp_ratio,
                          window if context is None else context, lora_rank, float(scale))


_MODULES = {
    "linear_regression": lambda c, window: _LinearRegression(),
    "logistic": lambda c, window, **kw: _Logistic(c, **kw),
    "mlp": lambda c, window, hidden=(32,): _MLP(c, tuple(hidden)),
    "cnn": lambda c, window, features=(16, 32), dense=64: _CNN(c, tuple(features), dense),
    "char_transformer": _char_transformer,
    "char_lstm": lambda c, window, embed=8, hidden=256, layers=2: _CharLSTM(c, embed, hidden,
                                                                           layers),
}


# The loss of every model: "cross_entropy" (softmax cross-entropy of logits against integer class
# labels) for classifiers, "squared" (½(ŷ − y)² against a real target: least squares) for
# regressors.
LOSSES = {"linear_regression": "squared", "logistic": "cross_entropy", "mlp": "cross_entropy",
          "cnn": "cross_entropy", "char_transformer": "cross_entropy",
          "char_lstm": "cross_entropy"}

# Models with a penultimate (hidden) layer whose activations `Model.represent` gives: an mlp with
# at least one hidden layer, the cnn.
REPRESENTATION_MODELS = ("mlp", "cnn")

# Models that read windows of token ids (text data); the others read real-valued inputs.
TEXT_MODELS = ("char_transformer", "char_lstm")

# The declared domain of every model option.
OPTION_DOMAINS = {
    "linear_regression": {},
    "logistic": {},
    "mlp": {"hidden": D.Tuple(D.POSITIVE_INT, note="hidden layer widths; () is logistic")},
    "cnn": {"features": D.Tuple(D.POSITIVE_INT, 1, note="conv widths"), "dense": D.POSITIVE_INT},
    "char_transformer": {
        "layers": D.Int(1, note="decoder blocks"),
        "width": D.Int(1, note="model width; a multiple of heads"),
        "heads": D.Int(1, note="attention heads; divides width"),
        "mlp_ratio": D.Int(1, note="MLP hidden units per unit of width"),
        "context": D.Int(1, optional=True,
                         note="the last tokens of the window read; None: the whole window"),
        "lora_rank": D.Int(0, note="rank of the LoRA adapters; 0: no adapters"),
        "lora_alpha": D.Float(0, low_open=True, optional=True,
                              note="LoRA scale α/rank; None: α = rank (scale 1)"),
    },
    "char_lstm": {
        "embed": D.Int(1, note="character embedding size (LEAF: 8)"),
        "hidden": D.Int(1, note="LSTM units per layer (LEAF: 256)"),
        "layers": D.Int(1, note="stacked LSTM layers (LEAF: 2)"),
    },
}


def names() -> list[str]:
  return sorted(_MODULES)


def names_for(task: str) -> list[str]:
  """The models of a task: "regression" (squared loss) or "classification" (cross-entropy)."""
  loss = "squared" if task == "regression" else "cross_entropy"
  return [name for name in names() if LOSSES[name] == loss]


def module(name: str, *, input_shape: Sequence[int], num_classes: int | None,
           **options) -> nn.Module:
  """The flax module of `get` after its checks (e.g. to call `char_transformer` with
  `all_positions=True`)."""
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
  window = math.prod(input_shape)   # a text model reads x as [m, window] token ids
  if name == "char_transformer":
    key = "model_options.char_transformer"
    width, heads = options.get("width", 64), options.get("heads", 4)
    if width % heads:
      raise ConfigError(f"{key}.width={width} is not a multiple of {key}.heads={heads}: each "
                        f"head of model 'char_transformer' takes width/heads dimensions.")
    context = options.get("context")
    if context is not None and context > window:
      raise ConfigError(f"{key}.context={context} exceeds the window of {window} tokens that "
                        f"model 'char_transformer' is given (input_shape {tuple(input_shape)}); "
                        f"set it <= {window}, or None for the whole window.")
    if not options.get("lora_rank", 0) and options.get("lora_alpha") is not None:
      raise ConfigError(f"{key}.lora_alpha={options['lora_alpha']} sets the scale of LoRA "
                        f"adapters, but {key}.lora_rank=0 adds none; set lora_rank > 0.")
  return _MODULES[name](num_classes, window=window, **options)


def get(name: str, *, input_shape: Sequence[int], num_classes: int | None, base_params=None,
        **options) -> Model:
  """`logistic` (multinomial logistic regression), `mlp` (option `hidden`, widths), `cnn`
  (options `features`, conv widths, and `dense`), `linear_regression` (least squares, for
  real targets: `num_classes` None), or the character language models `char_transformer` and
  `char_lstm` (x: `[m, window]` token ids, num_classes: the vocabulary size V).

  `base_params`: pretrained parameters, as `init` of the same model with `lora_rank` 0 gives
  them (`base_shapes`). With `lora_rank` r > 0 (char_transformer) they are required: `init(key)`
  returns only the LoRA adapters (fresh A, B = 0; `split_adapters`), and `apply(adapters, x)`
  applies `merge_adapters(base, adapters)`, the base a constant closed over — the simulator's
  parameter vector is the adapters alone, and the base never moves. Without adapters, `init`
  returns a copy of `base_params` (full fine-tuning; key unused); without base_params, a random
  initialization.
  """
  mod = module(name, input_shape=input_shape, num_classes=num_classes, **options)
  dummy = jnp.zeros((1, *input_shape), jnp.float32)
  lora = getattr(mod, "lora_rank", 0) > 0
  if base_params is None:
    if lora:
      raise ConfigError(f"LoRA fine-tunes a pretrained base: model {name!r} with "
                        f"model_options.{name}.lora_rank={mod.lora_rank} needs base_params (the "
                        f"parameters of the same model trained with lora_rank=0).")
    return Model(name, init=lambda key: mod.init(key, dummy), apply=mod.apply, loss=LOSSES[name],
                 represent=_represent(name, mod))
  base_mod = mod.clone(lora_rank=0) if lora else mod
  _check_base(name, base_params, jax.eval_shape(base_mod.init, jax.random.key(0), dummy))
  base = jax.tree.map(jnp.array, base_params)   # a copy: later changes to base_params do not leak
  if not lora:
    return Model(name, init=lambda key: jax.tree.map(jnp.array, base), apply=mod.apply,
                 loss=LOSSES[name], represent=_represent(name, mod))
  return Model(name, init=lambda key: split_adapters(mod.init(key, dummy))[1],
               apply=lambda adapters, x, **kw: mod.apply(merge_adapters(base, adapters), x, **kw),
               loss=LOSSES[name])


def _represent(name: str, mod: nn.Module):
  """`Model.represent` of a module with a penultimate layer (REPRESENTATION_MODELS; an mlp
  needs a hidden layer), else None."""
  if name not in REPRESENTATION_MODELS or (name == "mlp" and not mod.hidden):
    return None
  return lambda params, x: mod.apply(params, x, features=True)


def _check_base(name: str, base_params, expected) -> None:
  got = traverse_util.flatten_dict(base_params, sep="/")
  want = traverse_util.flatten_dict(expected, sep="/")
  for path in sorted(set(got) | set(want)):
    if path not in got:
      raise ConfigError(f"base_params for model {name!r} lack {path} {tuple(want[path].shape)}: "
                        f"they are not the parameters of this model with these options.")
    if path not in want:
      raise ConfigError(f"base_params for model {name!r} have {path}, which this model with "
                        f"these options does not (LoRA adapters belong in no base).")
    shape = tuple(got[path].shape if hasattr(got[path], "shape") else jnp.shape(got[path]))
    if shape != tuple(want[path].shape):
      raise ConfigError(f"base_params for model {name!r}: {path} has shape {shape}, the model's "
                        f"is {tuple(want[path].shape)}.")


def split_adapters(params) -> tuple[Any, Any]:
  """(base, adapters): the leaves named `lora_a`/`lora_b` (LORA_NAMES) and all the others, each
  in the nesting of `params`."""
  flat = traverse_util.flatten_dict(params)
  adapters = {k: v for k, v in flat.items() if k[-1] in LORA_NAMES}
  base = {k: v for k, v in flat.items() if k[-1] not in LORA_NAMES}
  return traverse_util.unflatten_dict(base), traverse_util.unflatten_dict(adapters)


def merge_adapters(base, adapters) -> Any:
  """The inverse of `split_adapters`: the union of the leaves of both trees."""
  return traverse_util.unflatten_dict({**traverse_util.flatten_dict(base),
                                       **traverse_util.flatten_dict(adapters)})


def base_shapes(name: str, *, input_shape: Sequence[int], num_classes: int | None,
                **options) -> Any:
  """The shapes (`jax.ShapeDtypeStruct`s) of the base parameters of a model: those of `init` of
  the same model with `lora_rank` 0, which is how a base is pretrained."""
  if "lora_rank" in options:
    options = {**options, "lora_rank": 0, "lora_alpha": None}
  mod = module(name, input_shape=input_shape, num_classes=num_classes, **options)
  return jax.eval_shape(mod.init, jax.random.key(0), jnp.zeros((1, *input_shape), jnp.float32))


def count_parameters(tree) -> int:
  """The number of scalars in a parameter tree (arrays or ShapeDtypeStructs)."""
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


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
