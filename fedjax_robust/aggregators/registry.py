"""Aggregators by name: `get("nearest_neighbor_mixing+trimmed_mean", f=3)`.

A spec is one rule, optionally preceded by pre-aggregators, joined by "+" and applied left to
right. Options are passed per stage name and checked against the function's keyword arguments.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Mapping

import jax

from fedjax_robust.aggregators import averaging
from fedjax_robust.aggregators import base
from fedjax_robust.aggregators import coordinatewise
from fedjax_robust.aggregators.geometric_median import weiszfeld
from fedjax_robust.aggregators import preaggregators


@dataclasses.dataclass(frozen=True)
class _Entry:
  fn: Callable[..., Any]
  kind: str  # "rule" or "pre"
  # Turns the function's output into (out, aux); most functions return the array alone.
  split_aux: Callable[[Any], tuple[jax.Array, Mapping[str, jax.Array]]] = lambda out: (out, {})

  @property
  def takes_f(self) -> bool:
    return "f" in inspect.signature(self.fn).parameters

  @property
  def options(self) -> dict[str, Any]:
    """Keyword options (besides f and per-call weights) with their defaults."""
    params = inspect.signature(self.fn).parameters
    return {k: p.default for k, p in params.items()
            if p.kind is p.KEYWORD_ONLY and k not in ("f", "weights")}


_RULES: dict[str, _Entry] = {
    "mean": _Entry(averaging.mean, "rule"),
    "coordinate_median": _Entry(coordinatewise.coordinate_median, "rule"),
    "trimmed_mean": _Entry(coordinatewise.trimmed_mean, "rule"),
    "geometric_median": _Entry(
        weiszfeld, "rule",
        lambda r: (r.median, {"gm_iterations": r.num_iterations})),
    "nearest_neighbor_mixing": _Entry(preaggregators.nearest_neighbor_mixing, "pre"),
}
_ALIASES = {"nnm": "nearest_neighbor_mixing", "cwmed": "coordinate_median",
            "cwtm": "trimmed_mean", "gm": "geometric_median", "rfa": "geometric_median"}


def names(kind: str | None = None) -> list[str]:
  """Registered names, optionally only rules ("rule") or pre-aggregators ("pre")."""
  return sorted(k for k, e in _RULES.items() if kind is None or e.kind == kind)


def canonical_name(name: str) -> str:
  """The registered name for `name` or an alias; a clear error for an unknown name."""
  name = _ALIASES.get(name.strip(), name.strip())
  if name not in _RULES:
    raise ValueError(
        f"unknown aggregator {name!r}; rules: {', '.join(names('rule'))}; pre-aggregators: "
        f"{', '.join(names('pre'))}; aliases: {', '.join(f'{a}={c}' for a, c in _ALIASES.items())}."
        " Chain pre-aggregators before a rule with '+', e.g. 'nnm+trimmed_mean'.")
  return name


def split_spec(spec: str) -> list[str]:
  """'nnm+trimmed_mean' -> ['nearest_neighbor_mixing', 'trimmed_mean'], validated."""
  stages = [canonical_name(s) for s in spec.split("+")]
  *pre, rule = stages
  if _RULES[rule].kind != "rule":
    raise ValueError(f"aggregator spec {spec!r} must end with a rule ({', '.join(names('rule'))}),"
                     f" not the pre-aggregator {rule!r}.")
  for p in pre:
    if _RULES[p].kind != "pre":
      raise ValueError(f"aggregator spec {spec!r}: only pre-aggregators "
                       f"({', '.join(names('pre'))}) may precede the rule; {p!r} is a rule.")
  return stages


def _stage(name: str, f: int, options: Mapping[str, Any]):
  entry = _RULES[name]
  unknown = set(options) - set(entry.options)
  if unknown:
    raise ValueError(f"unknown option(s) {sorted(unknown)} for aggregator {name!r}; allowed: "
                     f"{entry.options or 'none'}.")
  kwargs = dict(options, **({"f": f} if entry.takes_f else {}))
  return lambda updates: entry.split_aux(entry.fn(updates, **kwargs))


def get(spec: str, *, f: int, options: Mapping[str, Mapping[str, Any]] | None = None
        ) -> base.Aggregator:
  """Builds the pipeline named by `spec` for a declared f.

  Args:
    spec: a rule name, or pre-aggregators and a rule joined by '+' ("nnm+trimmed_mean").
    f: declared number of Byzantine clients (static).
    options: per stage name (or alias), keyword options, e.g.
      `{"geometric_median": {"maxiter": 3}}`. Options of stages absent from `spec` are ignored,
      so one options mapping can serve several specs.
  """
  if not isinstance(f, int) or isinstance(f, bool) or f < 0:
    raise ValueError(f"f must be a non-negative int, got {f!r}.")
  options = {canonical_name(k): dict(v) for k, v in (options or {}).items()}
  stages = [_stage(name, f, options.get(name, {})) for name in split_spec(spec)]

  def apply(updates, state, key):
    del key  # no registered stage is randomized yet
    aux = {}
    for stage in stages:
      updates, stage_aux = stage(updates)
      aux.update(stage_aux)
    return updates, state, aux

  return base.Aggregator(name="+".join(split_spec(spec)), f=f, init=lambda d: (), apply=apply)
