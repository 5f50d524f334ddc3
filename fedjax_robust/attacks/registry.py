"""Attacks by name: `get("alie", num_classes=10, options={"z": 1.0})`."""

from __future__ import annotations

import functools
import inspect
from typing import Any, Mapping

from fedjax_robust.attacks import base
from fedjax_robust.attacks import data_poisoning
from fedjax_robust.attacks import model_poisoning

_MODEL_POISONING = {
    "sign_flip": model_poisoning.sign_flip,
    "ipm": model_poisoning.ipm,
    "foe": model_poisoning.foe,
    "alie": model_poisoning.alie,
    "inf": model_poisoning.inf,
    "nan": model_poisoning.nan,
    "large": model_poisoning.large,
}
_DATA_POISONING = {"label_flip": data_poisoning.flip_labels}


def names() -> list[str]:
  return sorted(["none", *_MODEL_POISONING, *_DATA_POISONING])


def model_poisoning_names() -> list[str]:
  """Attacks that replace Byzantine rows of the update matrix."""
  return sorted(_MODEL_POISONING)


def _check_options(name: str, fn, options: Mapping[str, Any], fixed=()) -> None:
  allowed = [k for k, p in inspect.signature(fn).parameters.items()
             if p.kind is p.KEYWORD_ONLY and k not in fixed]
  unknown = sorted(set(options) - set(allowed))
  if unknown:
    raise ValueError(f"unknown option(s) {unknown} for attack {name!r}; allowed: {allowed or 'none'}.")


def get(name: str, *, num_classes: int, options: Mapping[str, Any] | None = None) -> base.Attack:
  """Builds the attack `name` with keyword `options` (e.g. ALIE's z)."""
  options = dict(options or {})
  if name == "none":
    _check_options(name, lambda: None, options)
    return base.Attack(name)
  if name in _MODEL_POISONING:
    fn = _MODEL_POISONING[name]
    _check_options(name, fn, options)
    poison = functools.partial(fn, **options)
    return base.Attack(name, poison_updates=lambda key, u, byz: poison(u, byz))
  if name in _DATA_POISONING:
    fn = _DATA_POISONING[name]
    _check_options(name, fn, options)
    return base.Attack(name, poison_labels=functools.partial(fn, num_classes=num_classes, **options))
  raise ValueError(f"unknown attack {name!r}; available: {', '.join(names())}.")
