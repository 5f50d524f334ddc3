"""The server's optimizer: any optax optimizer by name, with its options.

The server treats the robust aggregate F(u) of a round as a (pseudo-)gradient and hands it to an
optax optimizer (`training.Simulator.round`): `sgd` with learning rate 1 applies θ ← θ − F(u),
FedAvg's server; `adam`, `yogi`, `adagrad` give FedOpt's adaptive servers (Reddi et al., "Adaptive
Federated Optimization", ICLR 2021). Every optax optimizer whose first argument is
`learning_rate` is offered (`names()`), and its scalar keyword options with their optax defaults
(`options(name)`) are config keys `training.server_optimizer_options.<name>.<option>`; options
whose optax default is not a scalar (masks, dtypes, callables) keep that default.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Mapping

import optax

from fedjax_robust import domains as D
from fedjax_robust.errors import ConfigError

# optax optimizers that need more than gradients (lbfgs: the loss's value function; noisy_sgd:
# a key of its own) and transforms that are not optimizers.
_EXCLUDED = ("lbfgs", "noisy_sgd", "scale_by_learning_rate", "scale_by_rprop")
# Option domains by option name (others: finite floats, non-negative ints, booleans).
_DECAYS = ("b1", "b2", "b3", "decay", "rho", "momentum", "decay_rate")
_NONNEGATIVE = ("eps", "eps_root", "weight_decay", "min_norm", "initial_accumulator_value",
                "initial_scale", "trust_coefficient", "clipping_threshold", "min_step_size",
                "max_step_size", "eta_minus", "eta_plus", "threshold", "alpha", "beta", "gamma")


@functools.cache
def _signatures() -> dict[str, inspect.Signature]:
  out = {}
  for name in sorted(dir(optax)):
    obj = getattr(optax, name)
    if name.startswith("_") or name in _EXCLUDED or not inspect.isfunction(obj):
      continue
    try:
      sig = inspect.signature(obj)
    except (TypeError, ValueError):
      continue
    params = list(sig.parameters.values())
    if params and params[0].name == "learning_rate":
      out[name] = sig
  return out


def names() -> tuple[str, ...]:
  """Every optax optimizer the server can use."""
  return tuple(_signatures())


def options(name: str) -> dict[str, Any]:
  """The scalar keyword options of optimizer `name` with optax's defaults."""
  out = {}
  for p in list(_signatures()[name].parameters.values())[1:]:
    if isinstance(p.default, (bool, int, float)) and not isinstance(p.default, type):
      out[p.name] = p.default
  return out


def option_domains(name: str) -> dict[str, D.Domain]:
  out = {}
  for key, default in options(name).items():
    if isinstance(default, bool):
      out[key] = D.Bool()
    elif isinstance(default, int) and key not in _DECAYS + _NONNEGATIVE:
      out[key] = D.NONNEGATIVE_INT
    elif key in _DECAYS:
      out[key] = D.Float(0, 1, high_open=True)
    elif key in _NONNEGATIVE:
      out[key] = D.NONNEGATIVE
    else:
      out[key] = D.FINITE
  return out


def build(name: str, learning_rate: float, opts: Mapping[str, Any] | None = None, *,
          sgd_momentum: float = 0.0) -> optax.GradientTransformation:
  """optax.<name>(learning_rate, **opts); `sgd_momentum` is the legacy key
  training.server_momentum (sgd's momentum; 0: none)."""
  if name not in _signatures():
    raise ConfigError(f"training.server_optimizer={name!r} is not an optax optimizer offered "
                      f"here; allowed: {', '.join(names())}.")
  opts = dict(opts or {})
  D.check_options(f"training.server_optimizer_options.{name}", opts, option_domains(name))
  if name == "sgd":
    return optax.sgd(learning_rate, momentum=sgd_momentum or None, **opts)
  if sgd_momentum:
    raise ConfigError(f"training.server_momentum={sgd_momentum} applies to "
                      f"server_optimizer='sgd'; got server_optimizer={name!r} (set its own "
                      f"options under training.server_optimizer_options.{name}).")
  return getattr(optax, name)(learning_rate, **opts)
