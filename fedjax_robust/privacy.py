"""Differential privacy of the clients' data with robust aggregation (issue 18): client-level
(kind "client") and example-level, DP-SGD inside the local steps (kind "example").

Client-level DP: every client clips its update to L2 norm C and adds Gaussian noise
N(0, σ²C²·I) before sending it (`clip_and_noise`), so the attack sees the honest vectors already
privatized, as a real adversary would. This is the Gaussian mechanism in the local model: the
server (and any other party) sees each noised update, so the guarantee is the client's own and
does not rely on secure aggregation or a trusted server.

Its accounting (`epsilon`, `noise_for_epsilon`) is dp-accounting's (Google's maintained library):
replacing all of one client's data changes its clipped update by at most Δ = 2C in L2, so one
round is a Gaussian mechanism with noise multiplier σC/Δ = σ/2, composed over the rounds the
client takes part in. With client sampling the client's participation is visible to the server
in the local model, so no amplification by subsampling is claimed: the bound composes all T
rounds (an upper bound; a client sampled in fewer rounds has less privacy loss). The PLD
accountant (privacy loss distributions, tight for the Gaussian mechanism) is the default; RDP is
offered for comparison.

Example-level DP (kind "example", DP-SGD: Abadi et al., "Deep Learning with Differential
Privacy", CCS 2016) acts inside every local step of a client i with m_i examples: each example
joins the step's minibatch independently with probability q_i = min(1, B/m_i) (Poisson sampling,
`poisson_sample`), every example's gradient g_j is clipped to L2 norm C, and the step's gradient
is

    g̃ = (Σ_{j ∈ batch} g_j·min(1, C/‖g_j‖) + N(0, σ²C²·I)) / B                (`noisy_clipped_sum`)

B the expected batch size (for m_i ≤ B every example is in, q_i = 1, and the division is still
by the fixed B, so one example moves g̃ by at most C/B for every client). Under add/remove-one-
example adjacency a step is the Poisson-subsampled Gaussian mechanism with sensitivity C and
noise multiplier σ, and a client's T rounds of K local steps compose T·K of them
(`dp_sgd_epsilon`; q_i is public, fixed by m_i, as in every accounting with q = B/N). The model
and momentum between steps are post-processing. ε is per client and grows with q_i, so a run
reports the client with the fewest examples (the largest q, the largest ε); as for "client", a
client's participation in a round is visible, so client sampling claims no amplification and all
T rounds are composed. The guarantee is each honest client's about its own examples, against
everyone who sees what it sends (or its whole local trajectory).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fedjax_robust.errors import ConfigError

KINDS = ("none", "client", "example")
ACCOUNTANTS = ("pld", "rdp")
# The noise multipliers the calibration searches, per kind (a target needing less noise is
# refused). DP-SGD's floor 0.3: TensorFlow Privacy's tutorials (tutorials/README.md) note that σ
# "generally has to be at least 0.3 to obtain rigorous privacy guarantees".
SIGMA_RANGE = {"client": (1.0, 1e4), "example": (0.3, 1e4)}


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


def poisson_sample(key: jax.Array, count: jax.Array, max_count: int, batch_size: int
                   ) -> jax.Array:
  """One DP-SGD minibatch of a client with `count` examples padded to `max_count`, `[max_count]`
  bool: position j < count is in independently with probability q = min(1, B/count), B =
  `batch_size`; padding (j ≥ count) never is."""
  q = jnp.minimum(1.0, batch_size / jnp.maximum(count, 1).astype(jnp.float32))
  real = jnp.arange(max_count) < count
  return real & (jax.random.uniform(key, (max_count,)) < q)


def noisy_clipped_sum(key: jax.Array, per_example_grads: jax.Array, included: jax.Array, *,
                      clip: float, noise_multiplier: float,
                      coordinates: jax.Array | None = None) -> jax.Array:
  """Σ_{j: included_j} g_j·min(1, C/‖g_j‖) + N(0, σ²C²·I): the rows g_j of `per_example_grads`
  `[m, d]` that `included` `[m]` selects, each clipped to L2 norm C = `clip`, summed, plus
  Gaussian noise of std σC per coordinate (σ = `noise_multiplier`), `[d]`. Excluded rows never
  enter, not even as 0·NaN. `coordinates` (bool `[d]`): the gradients restricted to these
  coordinates before clipping, and noise on them only (the others stay 0), as in
  `clip_and_noise`."""
  kept = jnp.where(included[:, None], per_example_grads, 0.0)
  if coordinates is not None:
    kept = jnp.where(coordinates, kept, 0.0)
  norms = jnp.sqrt(jnp.sum(kept * kept, axis=1))
  scale = jnp.minimum(1.0, clip / jnp.maximum(norms, jnp.finfo(kept.dtype).tiny))
  noise = jax.random.normal(key, kept.shape[1:], kept.dtype)
  if coordinates is not None:
    noise = jnp.where(coordinates, noise, 0.0)
  return scale @ kept + (noise_multiplier * clip) * noise


def dp_sgd_rate(batch_size: int, count: int) -> float:
  """q = min(1, B/m): DP-SGD's Poisson sampling rate for a client with m examples."""
  return min(1.0, batch_size / max(count, 1))


def _event(noise_multiplier: float, rounds: int):
  """`rounds` Gaussian mechanisms of sensitivity 2C and noise std σC (multiplier σ/2), as the one
  Gaussian mechanism they compose to exactly, multiplier σ/(2√T) (Dong, Roth, Su 2019:
  μ-GDP composes to √T·μ-GDP, and a Gaussian mechanism is exactly (Δ/std)-GDP): the same ε for
  both accountants as the T-fold composition, without the PLD's T-fold convolution."""
  from dp_accounting import dp_event  # pylint: disable=g-import-not-at-top
  return dp_event.GaussianDpEvent(noise_multiplier / (2.0 * rounds ** 0.5))


def dp_sgd_event(sampling_rate: float, noise_multiplier: float, steps: int):
  """`steps` DP-SGD steps of one client: the Poisson-subsampled Gaussian mechanism (rate q,
  sensitivity C, noise std σC: multiplier σ) composed `steps` = T·K times."""
  from dp_accounting import dp_event  # pylint: disable=g-import-not-at-top
  return dp_event.SelfComposedDpEvent(
      dp_event.PoissonSampledDpEvent(sampling_rate, dp_event.GaussianDpEvent(noise_multiplier)),
      steps)


def _accountant(kind: str):
  if kind == "pld":
    from dp_accounting.pld import pld_privacy_accountant  # pylint: disable=g-import-not-at-top
    return pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-3)
  if kind == "rdp":
    from dp_accounting.rdp import rdp_privacy_accountant  # pylint: disable=g-import-not-at-top
    return rdp_privacy_accountant.RdpAccountant()
  raise ValueError(f"privacy.accountant={kind!r}: one of {ACCOUNTANTS}")


# The PLD accountant discretizes a Gaussian's privacy loss on a grid of step 1e-3 spanning about
# 1/(2m²) for noise multiplier m: past this many points (m < 0.005) it would need gigabytes
# (σ = 0.01 over 20 rounds asked for 3 GiB in one array), so such a σ is refused with the way out.
PLD_MAX_POINTS = 2e7


def _gaussian_multiplier(event) -> float:
  """The noise multiplier of the Gaussian inside `event` (composed or sampled)."""
  while not hasattr(event, "noise_multiplier"):
    event = event.event
  return float(event.noise_multiplier)


def _epsilon_of(event, delta: float, accountant: str) -> float:
  m = _gaussian_multiplier(event)
  if accountant == "pld" and (m <= 0 or 0.5 / m ** 2 / 1e-3 > PLD_MAX_POINTS):
    raise ConfigError(
        f"privacy.noise_multiplier: the Gaussian's multiplier {m:.3g} (per round for kind "
        f"'client': σ/(2√T)) is too small for the PLD accountant (a grid of ≈ "
        f"{0.5 / max(m, 1e-30) ** 2 / 1e-3:.3g} points, at most {PLD_MAX_POINTS:.0e}); use "
        "privacy.accountant='rdp' (an upper bound) or more noise.")
  acc = _accountant(accountant)
  acc.compose(event)
  return float(acc.get_epsilon(delta))


def _calibrate(event_of_sigma, kind: str, target_epsilon: float, delta: float,
               accountant: str) -> float:
  """The smallest σ in SIGMA_RANGE[kind] whose ε at `delta` is at most `target_epsilon`
  (dp-accounting's `calibrate_dp_mechanism`, bisection to a relative tolerance of 1e-4)."""
  import dp_accounting  # pylint: disable=g-import-not-at-top
  return float(dp_accounting.calibrate_dp_mechanism(
      lambda: _accountant(accountant), event_of_sigma, target_epsilon, delta,
      dp_accounting.ExplicitBracketInterval(*SIGMA_RANGE[kind]),
      tol=1e-4 * max(1.0, target_epsilon)))


def epsilon(noise_multiplier: float, rounds: int, delta: float, accountant: str = "pld"
            ) -> float:
  """ε at `delta` of one client's data after `rounds` rounds of `clip_and_noise` (module doc)."""
  return _epsilon_of(_event(noise_multiplier, rounds), delta, accountant)


def noise_for_epsilon(target_epsilon: float, rounds: int, delta: float,
                      accountant: str = "pld") -> float:
  """The smallest noise multiplier σ whose `epsilon` is at most `target_epsilon`."""
  return _calibrate(lambda s: _event(s, rounds), "client", target_epsilon, delta, accountant)


def dp_sgd_epsilon(sampling_rate: float, noise_multiplier: float, steps: int, delta: float,
                   accountant: str = "pld") -> float:
  """ε at `delta` of one example of a client sampled at rate q after `steps` DP-SGD steps
  (`dp_sgd_event`; add/remove-one-example adjacency)."""
  return _epsilon_of(dp_sgd_event(sampling_rate, noise_multiplier, steps), delta, accountant)


def dp_sgd_noise_for_epsilon(target_epsilon: float, sampling_rate: float, steps: int,
                             delta: float, accountant: str = "pld") -> float:
  """The smallest noise multiplier σ whose `dp_sgd_epsilon` is at most `target_epsilon`."""
  return _calibrate(lambda s: dp_sgd_event(sampling_rate, s, steps), "example", target_epsilon,
                    delta, accountant)
