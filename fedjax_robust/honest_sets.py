"""Distributions μ_H over honest sets, drawn in-batch as boolean masks `[S, n]` (True = honest).

A whole training run is a function of one mask row, so `S` draws of μ_H run as one vmapped
program. The realized number of Byzantine clients b = n − |S| is random per draw and separate
from the server's declared f.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def _check_num_samples(num_samples: int) -> None:
  if not isinstance(num_samples, (int, np.integer)) or num_samples <= 0:
    raise ValueError(f"num_samples (S) must be a positive int, got {num_samples!r}.")


def _probabilities(p: float | Sequence[float], num_clients: int) -> np.ndarray:
  """p as a validated per-client vector `[n]`."""
  arr = np.asarray(p, dtype=np.float64)
  if arr.ndim == 0:
    arr = np.full((num_clients,), float(arr))
  if arr.shape != (num_clients,):
    raise ValueError(f"p must be a scalar or have one entry per client (n={num_clients}), "
                     f"got shape {arr.shape}.")
  bad = arr[~((arr >= 0) & (arr <= 1))]
  if bad.size:
    raise ValueError(f"corruption probability p must lie in [0, 1], got {float(bad[0])!r}.")
  return arr


def fixed_count(key: jax.Array, *, num_clients: int, num_byzantine: int,
                num_samples: int) -> jax.Array:
  """Exactly b = `num_byzantine` Byzantine clients, a uniformly random subset per draw."""
  _check_num_samples(num_samples)
  if not isinstance(num_byzantine, (int, np.integer)) or not 0 <= num_byzantine <= num_clients:
    raise ValueError(f"num_byzantine must be an int in [0, n={num_clients}], got {num_byzantine!r}.")
  noise = jax.random.uniform(key, (num_samples, num_clients))
  ranks = jnp.argsort(jnp.argsort(noise, axis=1), axis=1)
  return ranks >= num_byzantine


def bernoulli(key: jax.Array, *, num_clients: int, p: float | Sequence[float],
              num_samples: int) -> jax.Array:
  """Client i is Byzantine independently with probability p_i (scalar p: the same for all)."""
  _check_num_samples(num_samples)
  probs = jnp.asarray(_probabilities(p, num_clients), jnp.float32)
  return jax.random.uniform(key, (num_samples, num_clients)) >= probs


def poisson_binomial_pmf(p: np.ndarray) -> np.ndarray:
  """Law of Σ_i Bernoulli(p_i): `[n + 1]`, by the O(n²) dynamic program over clients."""
  pmf = np.zeros(len(p) + 1)
  pmf[0] = 1.0
  for i, pi in enumerate(p):
    pmf[1:i + 2] = pmf[1:i + 2] * (1 - pi) + pmf[:i + 1] * pi
    pmf[0] *= 1 - pi
  return pmf


_SAMPLERS = {"fixed_count": fixed_count, "bernoulli": bernoulli}


def names() -> list[str]:
  return sorted(_SAMPLERS)


def _split(spec: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
  params = dict(spec)
  name = params.pop("name", None)
  if name not in _SAMPLERS:
    raise ValueError(f"unknown honest-set distribution {name!r}; available: {', '.join(names())}.")
  allowed = {"fixed_count": {"num_byzantine"}, "bernoulli": {"p"}}[name]
  if set(params) != allowed:
    raise ValueError(f"honest-set distribution {name!r} takes exactly the parameters "
                     f"{sorted(allowed)}, got {sorted(params)}.")
  return name, params


def sample(key: jax.Array, spec: Mapping[str, Any], *, num_clients: int,
           num_samples: int) -> jax.Array:
  """Draws `[num_samples, num_clients]` honest masks from the distribution described by `spec`,
  e.g. `{"name": "bernoulli", "p": 0.15}` or `{"name": "fixed_count", "num_byzantine": 5}`."""
  name, params = _split(spec)
  return _SAMPLERS[name](key, num_clients=num_clients, num_samples=num_samples, **params)


def validate(spec: Mapping[str, Any], *, num_clients: int) -> None:
  """Checks a spec's name and parameters without drawing anything."""
  name, params = _split(spec)
  if name == "bernoulli":
    _probabilities(params["p"], num_clients)
  else:
    fixed_count(jax.random.key(0), num_clients=num_clients, num_samples=1, **params)


def byzantine_count_pmf(spec: Mapping[str, Any], *, num_clients: int) -> np.ndarray:
  """The exact law of the realized Byzantine count b, `[n + 1]`."""
  name, params = _split(spec)
  if name == "fixed_count":
    pmf = np.zeros(num_clients + 1)
    pmf[params["num_byzantine"]] = 1.0
    return pmf
  return poisson_binomial_pmf(_probabilities(params["p"], num_clients))
