"""Declared domains of options: type, range, finiteness, choices — checked in one place.

Every option of every registered aggregator, pre-aggregator, attack, μ_H law and model, and every
scalar key of the experiment config, has a `Domain` declared beside the registry entry of what
takes it (`aggregators/registry.py`, `attacks/registry.py`, `honest_sets.py`, `models.py`,
`config.py`). `check` raises a `ConfigError` naming the key, the value and the domain; it runs at
config validation and whenever `aggregators.get` / `attacks.get` / `honest_sets.sample` /
`models.get` builds a thing, before any compile. `examples()` gives values inside and outside
the domain, which the tests and the configuration fuzzer use to show every option is enforced.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import numpy as np

from fedjax_robust.errors import ConfigError
from fedjax_robust.errors import close_matches

_INF = math.inf


@dataclasses.dataclass(frozen=True)
class Domain:
  """The values an option may take.

  kind: "int", "float", "bool", "str" or "tuple". Numbers: a closed or open range [low, high],
  always finite (NaN and ±inf are refused unless `nan_means` says what NaN selects). `optional`:
  None is allowed (it means the documented default behaviour). `choices`: the allowed strings.
  Tuples: every element in `item`, at least `min_length` elements.
  """
  kind: str
  low: float = -_INF
  high: float = _INF
  low_open: bool = False
  high_open: bool = False
  choices: tuple[str, ...] | None = None
  optional: bool = False
  nan_means: str | None = None
  item: "Domain | None" = None
  min_length: int = 0
  note: str = ""
  alternatives: tuple["Domain", ...] = ()   # kind "either": inside any of these

  @property
  def python_type(self) -> type:
    """The Python type of the values: a command-line placeholder's type for an option whose
    default is None (`config.base_config`). "either" needs alternatives of one type."""
    if self.kind == "either":
      types = {a.python_type for a in self.alternatives}
      if len(types) != 1:
        raise TypeError(f"a domain '{self.describe()}' has no single Python type")
      return types.pop()
    return {"int": int, "float": float, "bool": bool, "str": str, "tuple": tuple}[self.kind]

  def describe(self) -> str:
    if self.kind == "either":
      return " or ".join(a.describe() for a in self.alternatives)
    if self.kind == "bool":
      text = "True or False"
    elif self.kind == "str":
      text = "one of " + ", ".join(repr(c) for c in self.choices) if self.choices else "a string"
    elif self.kind == "tuple":
      text = (f"a tuple of {self.min_length}+ values, each {self.item.describe()}"
              if self.min_length else f"a tuple of values, each {self.item.describe()}")
    else:
      name = "an int" if self.kind == "int" else "a finite float"
      lo, hi = self.low, self.high
      if lo == -_INF and hi == _INF:
        text = name
      elif hi == _INF:
        text = f"{name} {'>' if self.low_open else '>='} {_num(lo)}"
      elif lo == -_INF:
        text = f"{name} {'<' if self.high_open else '<='} {_num(hi)}"
      else:
        text = (f"{name} in {'(' if self.low_open else '['}{_num(lo)}, {_num(hi)}"
                f"{')' if self.high_open else ']'}")
      if self.nan_means:
        text += f", or nan ({self.nan_means})"
    if self.optional:
      text += ", or None"
    if self.note:
      text += f" ({self.note})"
    return text

  def contains(self, value: Any) -> bool:
    if self.kind == "either":
      return any(a.contains(value) for a in self.alternatives)
    if value is None:
      return self.optional
    if self.kind == "bool":
      return isinstance(value, bool)
    if self.kind == "str":
      return isinstance(value, str) and (self.choices is None or value in self.choices)
    if self.kind == "tuple":
      if _is_array(value):
        value = value.tolist() if value.ndim == 1 else None
      return (isinstance(value, (tuple, list)) and len(value) >= self.min_length
              and all(self.item.contains(v) for v in value))
    if _is_array(value) and value.ndim == 0:
      if value.dtype.kind not in "iuf":
        return False
      value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not _is_number(value):
      return False
    if self.kind == "int" and not float(value).is_integer():
      return False
    if self.kind == "int" and (isinstance(value, float) or _is_float_scalar(value)):
      return False  # 3.0 is not an int option: a float in an int slot is a mistake
    v = float(value)
    if math.isnan(v):
      return self.nan_means is not None
    if not math.isfinite(v):
      return False
    above = v > self.low if self.low_open else v >= self.low
    below = v < self.high if self.high_open else v <= self.high
    return above and below

  def check(self, key: str, value: Any) -> None:
    if not self.contains(value):
      hint = ""
      if self.kind == "str" and self.choices and isinstance(value, str):
        hint = close_matches(value, self.choices)
      raise ConfigError(f"{key}={value!r} is outside its domain: {self.describe()}.{hint}")

  def examples(self) -> tuple[list[Any], list[Any]]:
    """(values inside, values outside) the domain."""
    if self.kind == "either":
      valid = [v for a in self.alternatives for v in a.examples()[0]]
      invalid = [v for a in self.alternatives for v in a.examples()[1] if not self.contains(v)]
      return valid, invalid
    if self.kind == "bool":
      return [True, False], ["yes", 1.5, None] if not self.optional else ["yes", 1.5]
    if self.kind == "str":
      if not self.choices:
        return ["x"], [3] + ([] if self.optional else [None])
      return list(self.choices), ["no_such_" + self.choices[0], 3]
    if self.kind == "tuple":
      inner_valid, inner_invalid = self.item.examples()
      valid = [tuple(inner_valid[:1]) * max(self.min_length, 1)]
      invalid = [(inner_invalid[0],) * max(self.min_length, 1), "not a tuple"]
      if self.min_length:
        invalid.append(())
      return valid, invalid
    lo = self.low if self.low != -_INF else min(self.high - 1, 0) if self.high != _INF else 0
    hi = self.high if self.high != _INF else lo + 10
    mid = (lo + hi) / 2
    valid = [int(math.floor(mid)) if self.kind == "int" else mid]
    if self.kind == "int":
      valid = [v for v in {int(math.ceil(lo + (1 if self.low_open else 0))), int(valid[0])}
               if self.contains(v)]
    invalid = ["abc", _INF]
    if self.nan_means is None:
      invalid.append(math.nan)
    # Just outside a closed end: 1 for an int, else 1e-3 or 0.1% of the end, whichever is more
    # (1e-3 is lost in the rounding of a large end such as FLOAT32_MAX).
    step = lambda end: 1 if self.kind == "int" else max(1e-3, abs(end) * 1e-3)
    if self.low != -_INF:
      invalid.append(self.low if self.low_open else self.low - step(self.low))
    if self.high != _INF:
      invalid.append(self.high if self.high_open else self.high + step(self.high))
    if self.kind == "int":
      invalid.append(float(valid[0]) + 0.5)
    if not self.optional:
      invalid.append(None)
    return valid, [v for v in invalid if not self.contains(v)]


def _num(x: float) -> str:
  return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


def _is_array(value: Any) -> bool:
  return hasattr(value, "ndim") and hasattr(value, "tolist") and hasattr(value, "dtype")


def _is_float_scalar(value: Any) -> bool:
  return hasattr(value, "dtype") and getattr(value.dtype, "kind", "") == "f"


def _is_number(value: Any) -> bool:
  return isinstance(value, (np.integer, np.floating))


def Int(low: float = -_INF, high: float = _INF, **kw) -> Domain:  # pylint: disable=invalid-name
  return Domain("int", low, high, **kw)


def Float(low: float = -_INF, high: float = _INF, **kw) -> Domain:  # pylint: disable=invalid-name
  return Domain("float", low, high, **kw)


def Bool(**kw) -> Domain:  # pylint: disable=invalid-name
  return Domain("bool", **kw)


def Choice(*choices: str, **kw) -> Domain:  # pylint: disable=invalid-name
  return Domain("str", choices=tuple(choices), **kw)


def Str(**kw) -> Domain:  # pylint: disable=invalid-name
  """Any string (a phrase, a name); `Choice` for a fixed set."""
  return Domain("str", **kw)


def Tuple(item: Domain, min_length: int = 0, **kw) -> Domain:  # pylint: disable=invalid-name
  return Domain("tuple", item=item, min_length=min_length, **kw)


PROBABILITY = Float(0, 1)
POSITIVE = Float(0, low_open=True)
NONNEGATIVE = Float(0)
FINITE = Float()
POSITIVE_INT = Int(1)
NONNEGATIVE_INT = Int(0)
# Training computes in float32, whose largest finite value is ≈ 3.4e38: a larger learning rate is
# inf there, and the first step makes every parameter non-finite. Below it, a rate too large for
# the task is an experiment whose draws diverge, which the run reports as diverged.
FLOAT32_MAX = float(np.finfo(np.float32).max)
LEARNING_RATE = Float(0, FLOAT32_MAX, low_open=True,
                      note="finite in float32, in which training computes: a larger rate is inf")


def OneOf(*alternatives: Domain) -> Domain:  # pylint: disable=invalid-name
  return Domain("either", alternatives=tuple(alternatives))


def check_options(what: str, options: Mapping[str, Any], domains: Mapping[str, Domain]) -> None:
  """Checks every option in `options` against its declared domain; `what` prefixes the key."""
  for key, value in options.items():
    domain = domains.get(key)
    if domain is None:
      raise ConfigError(f"{what}.{key} has no declared domain (a registry entry is missing it).")
    domain.check(f"{what}.{key}", value)
