"""Attacks by name: `get("alie", num_classes=10, options={"z": 1.0})`.

A model-poisoning function is called with what its signature asks for: `key` (randomized
attacks), `state` (attacks that carry state across rounds; the function then returns
`(updates, state)`), `aggregate` (adaptive attacks that query the server's rule).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, Callable, Mapping

from fedjax_robust.attacks import base
from fedjax_robust.attacks import data_poisoning
from fedjax_robust.attacks import model_poisoning as mp

_CALL_ARGS = ("key", "updates", "byzantine_mask", "state", "aggregate")


@dataclasses.dataclass(frozen=True)
class _Entry:
  fn: Callable[..., Any]
  init: Callable[[int], Any] | None = None  # stateful attacks

  @property
  def options(self) -> dict[str, Any]:
    params = inspect.signature(self.fn).parameters
    return {k: p.default for k, p in params.items()
            if p.kind is p.KEYWORD_ONLY and k not in _CALL_ARGS}


_MODEL_POISONING: dict[str, _Entry] = {
    "sign_flip": _Entry(mp.sign_flip),
    "ipm": _Entry(mp.ipm),
    "foe": _Entry(mp.foe),
    "alie": _Entry(mp.alie),
    "gaussian": _Entry(mp.gaussian),
    "mimic": _Entry(mp.mimic),
    "mimic_variance": _Entry(mp.mimic_variance, init=mp.mimic_variance_init),
    "optimal_alie": _Entry(mp.optimal_alie),
    "optimal_ipm": _Entry(mp.optimal_ipm),
    "inf": _Entry(mp.inf),
    "nan": _Entry(mp.nan),
    "large": _Entry(mp.large),
}
_DATA_POISONING: dict[str, _Entry] = {
    "label_flip": _Entry(lambda key, x, y, *, num_classes: (x, data_poisoning.flip_labels(
        y, num_classes))),
    "backdoor": _Entry(data_poisoning.backdoor),
}


def names() -> list[str]:
  return sorted(["none", *_MODEL_POISONING, *_DATA_POISONING])


def model_poisoning_names() -> list[str]:
  """Attacks that replace Byzantine rows of the update matrix."""
  return sorted(_MODEL_POISONING)


def options(name: str) -> dict[str, Any]:
  """The keyword options of an attack and their defaults."""
  if name == "none":
    return {}
  entry = _MODEL_POISONING.get(name) or _DATA_POISONING.get(name)
  if entry is None:
    raise ValueError(f"unknown attack {name!r}; available: {', '.join(names())}.")
  return {k: v for k, v in entry.options.items() if k != "num_classes"}


def _model_poisoning(name: str, entry: _Entry, opts: dict[str, Any]) -> base.Attack:
  params = inspect.signature(entry.fn).parameters
  fn = functools.partial(entry.fn, **opts)

  def poison(key, updates, byzantine_mask, state, aggregate):
    kwargs = {}
    if "aggregate" in params:
      kwargs["aggregate"] = aggregate
    if "state" in params:
      kwargs["state"] = state
    args = (key, updates, byzantine_mask) if "key" in params else (updates, byzantine_mask)
    out = fn(*args, **kwargs)
    return out if "state" in params else (out, state)

  return base.Attack(name, poison=poison, init=entry.init or (lambda d: ()))


def get(name: str, *, num_classes: int, options: Mapping[str, Any] | None = None) -> base.Attack:
  """Builds the attack `name` with keyword `options` (e.g. ALIE's z, backdoor's target_label)."""
  opts = {k: v for k, v in dict(options or {}).items()}
  allowed = globals()["options"](name)
  unknown = sorted(set(opts) - set(allowed))
  if unknown:
    raise ValueError(f"unknown option(s) {unknown} for attack {name!r}; allowed: "
                     f"{sorted(allowed) or 'none'}.")
  if name == "none":
    return base.Attack(name)
  if name in _MODEL_POISONING:
    return _model_poisoning(name, _MODEL_POISONING[name], opts)
  if name == "label_flip":
    return base.Attack(name, poison_data=functools.partial(_DATA_POISONING[name].fn,
                                                           num_classes=num_classes))
  full = {**allowed, **opts}
  if not 0 <= full["target_label"] < num_classes:
    raise ValueError(f"backdoor target_label must lie in [0, {num_classes}), "
                     f"got {full['target_label']}.")
  return base.Attack(
      name, poison_data=functools.partial(data_poisoning.backdoor, **opts),
      trigger=functools.partial(data_poisoning.stamp_trigger, patch_size=full["patch_size"],
                                value=full["value"]),
      target_label=full["target_label"])
