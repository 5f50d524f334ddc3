"""Client-level differential privacy with robust aggregation (issue 18, first step).

Every client clips its update to L2 norm C and adds Gaussian noise N(0, σ²C²·I) before sending
it (`clip_and_noise`), so the attack sees the honest vectors already privatized, as a real
adversary would. This is the Gaussian mechanism in the local model: the server (and any other
party) sees each noised update, so the guarantee is the client's own and does not rely on
secure aggregation or a trusted server.

Accounting (`epsilon`, `noise_for_epsilon`) is dp-accounting's (Google's maintained library):
replacing all of one client's data changes its clipped update by at most Δ = 2C in L2, so one
round is a Gaussian mechanism with noise multiplier σC/Δ = σ/2, composed over the rounds the
client takes part in. With client sampling the client's participation is visible to the server
in the local model, so no amplification by subsampling is claimed: the bound composes all T
rounds (an upper bound; a client sampled in fewer rounds has less privacy loss). The PLD
accountant (privacy loss distributions, tight for the Gaussian mechanism) is the default; RDP is
offered for comparison.

Per-example clipping inside local steps (DP-SGD) is not here yet.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

KINDS = ("none", "client")
ACCOUNTANTS = ("pld", "rdp")
# The noise multipliers `noise_for_epsilon` searches (a target needing less noise is refused).
SIGMA_RANGE = (1.0, 1e4)


def clip_and_noise(key: jax.Array, updates: jax.Array, *, clip: float,
                   noise_multiplier: float, coordinates: jax.Array | None = None) -> jax.Array:
  """Each row of `updates` `[n, d]` scaled to L2 norm at most `clip`, plus independent
  N(0, (noise_multiplier·clip)²) noise per coordinate. A non-finite row stays non-finite (it is
  not a client's honest update; the attack replaces Byzantine rows after this).

  `coordinates` (bool `[n, d]` or `[d]`): the coordinates a client sends (a data-independent
  sparsifier's, `compression`); the row is restricted to them before clipping, and only they
  get noise (the others stay 0). Restricting does not raise a row's norm, so the sensitivity
  and the guarantee are those of the full vector."""
  if coordinates is not None:
    updates = jnp.where(coordinates, updates, jnp.zeros((), updates.dtype))
  norms = jnp.sqrt(jnp.sum(updates * updates, axis=1, keepdims=True))
  scale = jnp.minimum(1.0, clip / jnp.maximum(norms, jnp.finfo(updates.dtype).tiny))
  noise = jax.random.normal(key, updates.shape, updates.dtype)
  if coordinates is not None:
    noise = jnp.where(coordinates, noise, jnp.zeros((), noise.dtype))
  return updates * scale + (noise_multiplier * clip) * noise


def _event(noise_multiplier: float, rounds: int):
  """`rounds` Gaussian mechanisms of sensitivity 2C and noise std σC (multiplier σ/2), as the one
  Gaussian mechanism they compose to exactly, multiplier σ/(2√T) (Dong, Roth, Su 2019:
  μ-GDP composes to √T·μ-GDP, and a Gaussian mechanism is exactly (Δ/std)-GDP): the same ε for
  both accountants as the T-fold composition, without the PLD's T-fold convolution."""
  from dp_accounting import dp_event  # pylint: disable=g-import-not-at-top
  return dp_event.GaussianDpEvent(noise_multiplier / (2.0 * rounds ** 0.5))


def _accountant(kind: str):
  if kind == "pld":
    from dp_accounting.pld import pld_privacy_accountant  # pylint: disable=g-import-not-at-top
    return pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-3)
  if kind == "rdp":
    from dp_accounting.rdp import rdp_privacy_accountant  # pylint: disable=g-import-not-at-top
    return rdp_privacy_accountant.RdpAccountant()
  raise ValueError(f"privacy.accountant={kind!r}: one of {ACCOUNTANTS}")


def epsilon(noise_multiplier: float, rounds: int, delta: float, accountant: str = "pld"
            ) -> float:
  """ε at `delta` of one client's data after `rounds` rounds of `clip_and_noise` (module doc)."""
  acc = _accountant(accountant)
  acc.compose(_event(noise_multiplier, rounds))
  return float(acc.get_epsilon(delta))


def noise_for_epsilon(target_epsilon: float, rounds: int, delta: float,
                      accountant: str = "pld") -> float:
  """The smallest noise multiplier σ whose `epsilon` is at most `target_epsilon`
  (dp-accounting's `calibrate_dp_mechanism`, bisection to a relative tolerance of 1e-4)."""
  import dp_accounting  # pylint: disable=g-import-not-at-top
  return float(dp_accounting.calibrate_dp_mechanism(
      lambda: _accountant(accountant), lambda s: _event(s, rounds), target_epsilon, delta,
      dp_accounting.ExplicitBracketInterval(*SIGMA_RANGE),
      tol=1e-4 * max(1.0, target_epsilon)))
