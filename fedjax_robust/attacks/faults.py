"""Inadvertent faults: what the clients that μ_H marks faulty do when they are not malicious.

The project's premise is that clients mostly misbehave by accident (hospitals, phones): wrong
labels, missing or shifted features, a skewed sample of their own data, stale updates, lost
updates. Each fault here is an `attacks.Attack` (the simulator applies it to the clients a draw
marks faulty, inside the same vmapped program) acting in one of these places of a round:

- data faults, `corrupt_data(key, x, y, idx) -> (x, y)`: a fixed corruption of the client's own
  examples. The randomness of example j comes from `fold_in(key, j)` with `key` fixed for the
  client and the draw (`training.fault_keys`), so an example is mislabelled (or noisy, or
  missing features) the same way every time it is sampled, as real faulty data is; a fresh
  corruption per minibatch would be a different, milder fault.
    label_noise      with probability r the label is replaced: `symmetric`, a uniformly random
                     wrong label; `pair`, y → (y + 1) mod C; `matrix`, y ~ T[y] for a given
                     row-stochastic C × C matrix T (class-dependent noise). The expected share
                     of changed labels is r (symmetric, pair) or r·(1 − Σ_c π_c T[c, c]).
    feature_noise    x + N(0, s²) per entry.
    missing_features each entry set to 0 with probability q (missing values filled with zeros).
    feature_shift    x + c (a miscalibrated sensor).
    random_text      text (token ids) replaced by random characters, window and next character.
    shuffled_text    a window and its next character shuffled together (counts kept, order lost).
    foreign_text     a role's text replaced by another play's (windows of `play`).
    (`missing_features` on text replaces characters by the unknown id 0; `label_noise` there
    mislabels the next character.)
- biased data, `sample_weights(y, valid) -> w`: the client samples its minibatches with
  probability ∝ w_j over its own examples: it keeps only its k most frequent classes (ties: the
  smaller label), the others weighted `other_weight` (0: dropped; in (0, 1): a skewed sample).
- stale updates, `poison`: the client sends its update of round t − k (during the first k
  rounds, its update of round 0, the oldest it has); it keeps training on its own data, so the
  stale update is its true update, late. State: the last k updates of every client, [k, n, d].
- absence, `presence(key, faulty [n], round) -> present [n]`: `dropout`, each faulty client
  independently absent with probability q each round; `crash_stop`, every faulty client absent
  from round t₀ on. Absent clients send nothing: the aggregation rules see a presence mask
  (`aggregators.get(..., presence=True)`), and a round with at most 2f clients present is
  skipped by the server (no model update; the share of skipped rounds is reported).

The numeric faults (Byzantine rows of NaN, +inf or 1e20) are the attacks `nan`, `inf` and
`large`; they belong to the same family and are listed in `FAMILY`.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_robust import domains as D
from fedjax_robust.attacks import base
from fedjax_robust.errors import ConfigError

Array = jax.Array

LABEL_NOISE_KINDS = ("symmetric", "pair", "matrix")


def _play_names() -> tuple[str, ...]:
  from fedjax_robust.data import shakespeare  # pylint: disable=g-import-not-at-top
  return shakespeare.play_names()


def _per_example(key: Array, idx: Array, fn):
  """`fn(key_j)` for every example j of `idx`, with key_j = fold_in(key, j)."""
  return jax.vmap(lambda j: fn(jax.random.fold_in(key, j)))(idx)


def label_noise(key: Array, x: Array, y: Array, idx: Array, *, num_classes: int,
                rate: float = 0.4, kind: str = "symmetric",
                matrix: tuple[tuple[float, ...], ...] | None = None) -> tuple[Array, Array]:
  """Label noise at rate r (see the module docstring), fixed per example."""
  def one(k):
    k_flip, k_label = jax.random.split(k)
    flip = jax.random.bernoulli(k_flip, rate)
    if kind == "symmetric":
      shift = jax.random.randint(k_label, (), 1, num_classes)
      return flip, shift
    if kind == "pair":
      return flip, jnp.ones((), jnp.int32)
    return flip, k_label

  flip, other = _per_example(key, idx, one)
  if kind == "matrix":
    logits = jnp.log(jnp.asarray(matrix, jnp.float32))[y]
    noisy = jax.vmap(lambda k, l: jax.random.categorical(k, l))(other, logits)
  else:
    noisy = (y + other) % num_classes
  return x, jnp.where(flip, noisy, y).astype(y.dtype)


def feature_noise(key: Array, x: Array, y: Array, idx: Array, *, std: float = 0.5):
  """x + N(0, std²) per entry, fixed per example."""
  noise = _per_example(key, idx, lambda k: jax.random.normal(k, x.shape[1:], x.dtype))
  return x + std * noise, y


def missing_features(key: Array, x: Array, y: Array, idx: Array, *, rate: float = 0.5):
  """Each entry set to 0 with probability `rate`, fixed per example."""
  missing = _per_example(key, idx, lambda k: jax.random.bernoulli(k, rate, x.shape[1:]))
  return jnp.where(missing, jnp.zeros((), x.dtype), x), y


def feature_shift(key: Array, x: Array, y: Array, idx: Array, *, shift: float = 0.5):
  """x + shift (every entry)."""
  del key, idx
  return x + jnp.asarray(shift, x.dtype), y


def random_text(key: Array, x: Array, y: Array, idx: Array, *, num_classes: int,
                rate: float = 1.0):
  """Text replaced by random characters: with probability `rate` an example's window and its
  next character become token ids drawn uniformly from the vocabulary's characters 1 … C − 1
  (id 0, padding/unknown, excluded), fixed per example."""
  def one(k):
    k_hit, k_x, k_y = jax.random.split(k, 3)
    return (jax.random.bernoulli(k_hit, rate),
            jax.random.randint(k_x, x.shape[1:], 1, num_classes).astype(x.dtype),
            jax.random.randint(k_y, (), 1, num_classes).astype(y.dtype))

  hit, rx, ry = _per_example(key, idx, one)
  shape = hit.shape + (1,) * (x.ndim - 1)
  return jnp.where(hit.reshape(shape), rx, x), jnp.where(hit, ry, y)


def shuffled_text(key: Array, x: Array, y: Array, idx: Array, *, rate: float = 1.0):
  """Text with its characters shuffled: with probability `rate` the window and its next
  character (window + 1 characters) are permuted uniformly at random together, the first
  `window` becoming the input and the last the label; the character counts stay, the order is
  gone. Fixed per example."""
  window = x.shape[-1]

  def one(k):
    k_hit, k_perm = jax.random.split(k)
    return jax.random.bernoulli(k_hit, rate), jax.random.permutation(k_perm, window + 1)

  hit, perms = _per_example(key, idx, one)
  seq = jnp.concatenate([x.reshape(x.shape[0], window), y[:, None].astype(x.dtype)], axis=1)
  shuffled = jnp.take_along_axis(seq, perms, axis=1)
  return (jnp.where(hit[:, None], shuffled[:, :window], x.reshape(x.shape[0], window)
                    ).reshape(x.shape),
          jnp.where(hit, shuffled[:, window].astype(y.dtype), y))


FOREIGN_POOL = 4096  # windows of the foreign play a corrupted client's examples are drawn from


@functools.lru_cache(maxsize=8)
def foreign_windows(play: str, window: int) -> tuple[np.ndarray, np.ndarray]:
  """FOREIGN_POOL windows (x [P, window] float32 ids, y [P] int32) of `play`'s spoken text,
  evenly spaced over the play (`data.shakespeare.pretraining_windows` of that play)."""
  from fedjax_robust.data import shakespeare  # pylint: disable=g-import-not-at-top
  x, y = shakespeare.pretraining_windows(window=window, base_plays=(play,))
  keep = (np.arange(min(FOREIGN_POOL, len(y))) * len(y)) // min(FOREIGN_POOL, len(y))
  return x[keep], y[keep]


def foreign_text(key: Array, x: Array, y: Array, idx: Array, *,
                 play: str = "the-comedy-of-errors", rate: float = 1.0):
  """A role's text replaced by another play's: with probability `rate` an example (window and
  next character) becomes a window of `play` drawn uniformly from FOREIGN_POOL of them, fixed
  per example: fluent text of another author's voice, plot and names (a client that ships the
  wrong file). A client of `play` itself gets its own play's text."""
  pool_x, pool_y = foreign_windows(play, x.shape[-1])

  def one(k):
    k_hit, k_pick = jax.random.split(k)
    return jax.random.bernoulli(k_hit, rate), jax.random.randint(k_pick, (), 0, len(pool_y))

  hit, pick = _per_example(key, idx, one)
  fx = jnp.asarray(pool_x, x.dtype)[pick].reshape(x.shape)
  fy = jnp.asarray(pool_y, y.dtype)[pick]
  shape = hit.shape + (1,) * (x.ndim - 1)
  return jnp.where(hit.reshape(shape), fx, x), jnp.where(hit, fy, y)


def biased_weights(y: Array, valid: Array, *, num_classes: int, classes: int = 2,
                   other_weight: float = 0.0) -> Array:
  """Sampling weights `[m]` of a biased client: 1 for its `classes` most frequent classes (ties
  broken towards the smaller label), `other_weight` for the others, 0 for padding."""
  counts = jnp.sum(jax.nn.one_hot(y, num_classes) * valid[:, None], axis=0)
  # Rank by count, then by label: a stable descending order of (count, −label).
  order = jnp.argsort(-counts, stable=True)
  kept = jnp.zeros((num_classes,), bool).at[order[:classes]].set(True)
  return jnp.where(valid, jnp.where(kept[y], 1.0, other_weight), 0.0)


def stale_init(d: int, n: int, *, delay: int) -> tuple[Array, Array]:
  """(rounds done, the last `delay` updates of every client `[delay, n, d]`)."""
  return (jnp.zeros((), jnp.int32), jnp.zeros((delay, n, d), jnp.float32))


def stale(updates: Array, faulty: Array, state, *, delay: int = 5):
  """Faulty rows replaced by the same client's update of round t − k (k = `delay`); round 0's
  update during the first k rounds. Returns (updates, state)."""
  t, buffer = state
  buffer = jnp.where(t == 0, jnp.broadcast_to(updates, buffer.shape).astype(buffer.dtype),
                     buffer)
  slot = t % delay
  old = buffer[slot].astype(updates.dtype)
  out = jnp.where(faulty[:, None], old, updates)
  buffer = buffer.at[slot].set(updates.astype(buffer.dtype))
  return out, (t + 1, buffer)


def dropout(key: Array, faulty: Array, round_: Array, *, rate: float = 0.5) -> Array:
  """Present mask `[n]`: a faulty client is absent with probability `rate` each round."""
  del round_
  return ~(faulty & jax.random.bernoulli(key, rate, faulty.shape))


def crash_stop(key: Array, faulty: Array, round_: Array, *, start_round: int = 50) -> Array:
  """Present mask `[n]`: faulty clients are absent from round `start_round` on."""
  del key
  return ~(faulty & (round_ >= start_round))


# name -> the function that takes its options (their defaults are its keyword defaults).
_FUNCTIONS = {"label_noise": label_noise, "feature_noise": feature_noise,
              "missing_features": missing_features, "feature_shift": feature_shift,
              "biased_data": biased_weights, "stale": stale, "dropout": dropout,
              "crash_stop": crash_stop, "random_text": random_text,
              "shuffled_text": shuffled_text, "foreign_text": foreign_text}
# Data faults: `corrupt_data` is the function with its options.
_DATA = ("label_noise", "feature_noise", "missing_features", "feature_shift", "random_text",
         "shuffled_text", "foreign_text")
_DOMAINS = {
    "label_noise": {
        "rate": D.PROBABILITY, "kind": D.Choice(*LABEL_NOISE_KINDS),
        "matrix": D.Tuple(D.Tuple(D.PROBABILITY, 2), 2, optional=True,
                          note="C rows of C probabilities, each row summing to 1; kind='matrix'")},
    "feature_noise": {"std": D.NONNEGATIVE},
    "missing_features": {"rate": D.PROBABILITY},
    "feature_shift": {"shift": D.FINITE},
    "biased_data": {"classes": D.POSITIVE_INT,
                    "other_weight": D.Float(0, 1, high_open=True,
                                            note="0: the other classes are dropped")},
    "stale": {"delay": D.POSITIVE_INT},
    "dropout": {"rate": D.PROBABILITY},
    "crash_stop": {"start_round": D.NONNEGATIVE_INT},
    "random_text": {"rate": D.PROBABILITY},
    "shuffled_text": {"rate": D.PROBABILITY},
    "foreign_text": {"rate": D.PROBABILITY,
                     "play": D.Choice(*_play_names(), note="a play of data.shakespeare")},
}
# Faults that need class labels.
NEEDS_LABELS = ("label_noise", "biased_data", "random_text")
# Faults of text (token ids; data.name 'shakespeare') and faults of real-valued features, which
# have no meaning on the other kind of input.
TEXT_ONLY = ("random_text", "shuffled_text", "foreign_text")
FEATURES_ONLY = ("feature_noise", "feature_shift")
# Faults that make clients absent: the aggregation pipeline must take a presence mask.
ABSENCE = ("dropout", "crash_stop")
# The whole family of inadvertent faults, with the numeric faults that live among the attacks.
FAMILY = (*_FUNCTIONS, "nan", "inf", "large")


def names() -> list[str]:
  return sorted(_FUNCTIONS)


def options(name: str) -> dict[str, Any]:
  """The fault's options and their defaults (its function's keyword arguments)."""
  params = inspect.signature(_FUNCTIONS[name]).parameters
  return {k: p.default for k, p in params.items()
          if p.kind is p.KEYWORD_ONLY and k != "num_classes"}


def option_domains(name: str) -> dict[str, D.Domain]:
  return dict(_DOMAINS[name])


def _check_matrix(matrix, num_classes: int) -> None:
  m = np.asarray(matrix, float)
  if m.shape != (num_classes, num_classes):
    raise ConfigError(f"attack_options.label_noise.matrix must be {num_classes} × {num_classes} "
                      f"(the data set's classes), got shape {m.shape}.")
  if not np.allclose(m.sum(1), 1.0, atol=1e-6):
    raise ConfigError(f"attack_options.label_noise.matrix rows must sum to 1, got row sums "
                      f"{np.round(m.sum(1), 6).tolist()}.")


def get(name: str, *, num_classes: int | None, options: Mapping[str, Any] | None = None
        ) -> base.Attack:
  """The fault `name` as an `Attack` (options checked against their declared domains)."""
  opts = dict(options or {})
  defaults = globals()["options"](name)
  unknown = sorted(set(opts) - set(defaults))
  if unknown:
    raise ConfigError(f"unknown option(s) {unknown} for fault {name!r}; allowed: "
                      f"{sorted(defaults)}.")
  D.check_options(f"attack_options.{name}", opts, _DOMAINS[name])
  full = {**defaults, **opts}
  if name in NEEDS_LABELS and num_classes is None:
    raise ConfigError(f"fault {name!r} needs class labels, and a regression task has none.")
  if name == "label_noise":
    if full["kind"] == "matrix":
      if full["matrix"] is None:
        raise ConfigError("attack_options.label_noise.kind='matrix' needs "
                          "attack_options.label_noise.matrix (C rows of C probabilities).")
      _check_matrix(full["matrix"], num_classes)
    elif full["matrix"] is not None:
      raise ConfigError(f"attack_options.label_noise.matrix is set but kind={full['kind']!r}; "
                        "allowed: kind='matrix' with a matrix, or matrix=None.")
    full["matrix"] = None if full["matrix"] is None else tuple(map(tuple, full["matrix"]))
    return base.Attack(name, corrupt_data=functools.partial(label_noise, num_classes=num_classes,
                                                            **full))
  if name == "random_text":
    return base.Attack(name, corrupt_data=functools.partial(random_text, num_classes=num_classes,
                                                            **full))
  if name in _DATA:
    return base.Attack(name, corrupt_data=functools.partial(_FUNCTIONS[name], **full))
  if name == "biased_data":
    if full["classes"] >= num_classes:
      raise ConfigError(f"attack_options.biased_data.classes={full['classes']} must be < the "
                        f"data set's {num_classes} classes (keeping all is no bias).")
    return base.Attack(name, sample_weights=functools.partial(biased_weights,
                                                              num_classes=num_classes, **full))
  if name == "stale":
    delay = full["delay"]
    return base.Attack(name, poison=lambda key, u, m, state, aggregate: stale(u, m, state,
                                                                              delay=delay),
                       init=lambda d, n: stale_init(d, n, delay=delay))
  fn = dropout if name == "dropout" else crash_stop
  return base.Attack(name, presence=functools.partial(fn, **full))
