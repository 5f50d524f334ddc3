"""Model-poisoning attacks: the Byzantine rows of `updates [n, d]` are replaced."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import ndtri

from fedjax_robust.attacks import base


def sign_flip(updates: jax.Array, byzantine_mask: jax.Array) -> jax.Array:
  """Byzantine clients send −μ, the negated mean of the honest updates."""
  mu, _ = base.honest_mean_and_std(updates, byzantine_mask)
  return base.replace_byzantine(updates, byzantine_mask, -mu)


def ipm(updates: jax.Array, byzantine_mask: jax.Array, *, epsilon: float = 0.1) -> jax.Array:
  """Inner product manipulation: Byzantine clients send −ε μ (Xie, Koyejo, Gupta, "Fall of
  empires: breaking Byzantine-tolerant SGD by inner product manipulation", UAI 2020)."""
  mu, _ = base.honest_mean_and_std(updates, byzantine_mask)
  return base.replace_byzantine(updates, byzantine_mask, -epsilon * mu)


def foe(updates: jax.Array, byzantine_mask: jax.Array, *, tau: float = 3.0) -> jax.Array:
  """Fall of empires: Byzantine clients send (1 − τ) μ (Xie et al., UAI 2020); τ = 3 gives −2μ."""
  mu, _ = base.honest_mean_and_std(updates, byzantine_mask)
  return base.replace_byzantine(updates, byzantine_mask, (1.0 - tau) * mu)


def _constant(value: float):
  def attack(updates: jax.Array, byzantine_mask: jax.Array) -> jax.Array:
    vector = jnp.full((updates.shape[1],), value, updates.dtype)
    return base.replace_byzantine(updates, byzantine_mask, vector)
  return attack


inf = _constant(float("inf"))
inf.__doc__ = "Fault injection: Byzantine rows of +inf."
nan = _constant(float("nan"))
nan.__doc__ = "Fault injection: Byzantine rows of NaN."


def large(updates: jax.Array, byzantine_mask: jax.Array, *, value: float = 1e20) -> jax.Array:
  """Fault injection: Byzantine rows with every entry `value` (1e20: finite, but its square
  overflows float32)."""
  return _constant(value)(updates, byzantine_mask)


def alie_z(num_clients: int, num_byzantine) -> jax.Array:
  """ALIE's z = Φ⁻¹((n − b − s)/(n − b)) with s = ⌊n/2 + 1⌋ − b, the number of honest clients
  the attacker needs on its side (Baruch et al. 2019, as in Karimireddy et al.'s code).

  `num_byzantine` may be traced. s is floored at 1 so that b ≥ n/2 still gives a finite z.
  At (n, b) = (10, 2) the formula gives z = 0, which makes ALIE send the honest mean.
  """
  n = num_clients
  b = jnp.asarray(num_byzantine, jnp.float32)
  s = jnp.maximum(jnp.floor(n / 2 + 1) - b, 1.0)
  honest = jnp.maximum(n - b, 1.0)
  return ndtri(jnp.clip((honest - s) / honest, 1e-6, 1 - 1e-6))


def alie(updates: jax.Array, byzantine_mask: jax.Array, *, z: float | None = None) -> jax.Array:
  """A little is enough (ALIE): Byzantine clients send μ − zσ (coordinate-wise honest mean and
  standard deviation).

  Baruch, Baruch, Goldberg, "A little is enough: circumventing defenses for distributed
  learning", NeurIPS 2019. With `z=None` (or NaN, which a command line can express),
  z = `alie_z(n, b)` for the realized count b.
  """
  n = updates.shape[0]
  mu, sigma = base.honest_mean_and_std(updates, byzantine_mask)
  if z is None or math.isnan(z):
    z = alie_z(n, jnp.sum(byzantine_mask))
  return base.replace_byzantine(updates, byzantine_mask, mu - z * sigma)
