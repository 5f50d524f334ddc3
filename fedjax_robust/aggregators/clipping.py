"""Clipping: static and adaptive robust clipping (pre-aggregators), centered clipping (a rule).

clip_C(y) = y · min(1, C/‖y‖). A non-finite row has no norm and no direction; every clipping
map here sends it to the zero vector (the only clipped value that does not depend on the
undefined direction), so it cannot poison what follows. Huge finite rows are clipped exactly
(norms are computed without overflow).

Every rule also reports `clipped_share` (an aggregator aux diagnostic, see `Clipped`): the share
of the rows it processed that its clipping changed, i.e. whose clip factor is < 1: rows with
‖y‖ > C, and non-finite rows (sent to 0, factor 0, so counted as clipped). It is an unweighted
share of rows (client weights do not enter), and after bucketing the rows are the buckets. A
share of 0 in every round means the rule never clipped: static clipping and ARC then returned
their input, and centered clipping (whose share is that of its last iteration) returned the
plain mean.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fedjax_robust.aggregators import base
from fedjax_robust.errors import ConfigError


class Clipped(NamedTuple):
  """A clipping rule's output and how much it clipped."""
  value: jax.Array          # [n, d] (pre-aggregators) or [d] (rules)
  clipped_share: jax.Array  # float32 scalar in [0, 1]: share of rows whose clip factor is < 1


def _share(clipped: jax.Array) -> jax.Array:
  return jnp.mean(clipped.astype(jnp.float32))


def _norms_and_clean(updates):
  finite = base.finite_rows(updates)
  x = base.zero_nonfinite_rows(updates, finite)
  norms = base.row_distances(x, jnp.zeros((x.shape[1],), x.dtype), jnp.max(jnp.abs(x), axis=1))
  return x, norms, finite


def _clip_factors(norms, threshold):
  return jnp.where(norms > threshold, threshold / jnp.where(norms > 0, norms, 1.0), 1.0)


def _scale_rows(updates, factors_fn, finish, *operands) -> Clipped:
  """`finish(x, factors, *operands)` with factors_fn(norms, finite) `[n]` the clipping factors,
  and the share of rows with a factor < 1.

  Ordinary rows (`base.ordinary_or_exact`): norms from one dot pass, no copy. Otherwise: non-finite
  rows zeroed (factor 0, so counted as clipped), norms computed without overflow.
  """
  def fast(x, sq, *ops):
    factors = factors_fn(jnp.sqrt(sq), jnp.ones(sq.shape, bool))
    return finish(x, factors, *ops), _share(factors < 1)

  def exact(x, *ops):
    x, norms, finite = _norms_and_clean(x)
    factors = jnp.where(finite, factors_fn(norms, finite), 0.0)
    return finish(x, factors, *ops), _share(factors < 1)

  return Clipped(*base.ordinary_or_exact(updates, fast, exact, *operands))


def _scaled(x, factors):
  return x * factors[:, None]


def _scaled_average(x, factors, weights):
  """Σ w_i s_i x_i / Σ w_i: clipping then the (weighted) mean, as one matrix product."""
  return ((weights * factors) @ x) / jnp.sum(weights)


def _weights(updates, weights):
  n = updates.shape[0]
  return jnp.ones((n,), updates.dtype) if weights is None else weights.astype(updates.dtype)


def clip_rows(updates: jax.Array, threshold) -> tuple[jax.Array, jax.Array]:
  """(rows clipped to L2 norm `threshold`, each row's norm before clipping): x_i·min(1, C/‖x_i‖)
  with C a Python or traced scalar (a trusted server's clip under central DP, adaptive or fixed);
  a non-finite row is sent to 0 and its norm is +inf (above every clip)."""
  x, norms, finite = _norms_and_clean(updates)
  factors = jnp.where(finite, _clip_factors(norms, threshold), 0.0)
  return x * factors[:, None].astype(x.dtype), jnp.where(finite, norms, jnp.inf)


def _check_threshold(threshold):
  if not threshold > 0:
    raise ValueError(f"static_clipping: threshold must be > 0, got {threshold}.")


def static_clipping_with_share(updates: jax.Array, *, threshold: float = 2.0) -> Clipped:
  """`static_clipping` and its `clipped_share`: rows with ‖x_i‖ > C, or non-finite.
  Secure aggregation: no (see `static_clipping`)."""
  base.check_updates(updates, "static_clipping")
  _check_threshold(threshold)
  return _scale_rows(updates, lambda norms, _: _clip_factors(norms, threshold), _scaled)


def static_clipping(updates: jax.Array, *, threshold: float = 2.0) -> jax.Array:
  """x_i ← x_i · min(1, C/‖x_i‖) with a fixed C = `threshold`. Cost: two passes over `[n, d]`.

  Secure aggregation: no — the clipping uses only each row's own norm, but the rule that follows
  needs the clipped rows in the clear, so the pipeline counts as clear, as does every chain
  with a pre-aggregator (`registry.communication`).
  """
  return static_clipping_with_share(updates, threshold=threshold).value


def static_clipping_mean_with_share(updates: jax.Array, *, threshold: float = 2.0,
                                    weights: jax.Array | None = None) -> Clipped:
  """`static_clipping_mean` and its `clipped_share` (unweighted share of rows)."""
  base.check_updates(updates, "static_clipping")
  _check_threshold(threshold)
  return _scale_rows(updates, lambda norms, _: _clip_factors(norms, threshold), _scaled_average,
                     _weights(updates, weights))


def static_clipping_mean(updates: jax.Array, *, threshold: float = 2.0,
                         weights: jax.Array | None = None) -> jax.Array:
  """`mean(static_clipping(updates))` (weighted: Σ w_i clip(x_i) / Σ w_i) without building the
  clipped matrix: two reads of `[n, d]`. The pipeline "static_clipping+mean" runs this."""
  return static_clipping_mean_with_share(updates, threshold=threshold, weights=weights).value


def num_adaptively_clipped(n: int, f: int) -> int:
  """ARC clips k = ⌊2 (f/n)(n − f)⌋ vectors."""
  return math.floor(2 * (f / n) * (n - f))


def _arc_factors(n: int, f: int):
  k = num_adaptively_clipped(n, f)

  def factors(norms, finite):
    if k == 0:
      return jnp.ones_like(norms)
    ranking = jnp.sort(jnp.where(finite, norms, jnp.inf))[::-1]
    return _clip_factors(norms, ranking[min(k, n - 1)])

  return factors


def adaptive_robust_clipping_with_share(updates: jax.Array, *, f: int) -> Clipped:
  """`adaptive_robust_clipping` and its `clipped_share`: rows with a norm above the (k+1)-th
  largest, and non-finite rows. At most k/n when at most k rows are non-finite (fewer on ties
  at the (k+1)-th norm, which are left as they are); each non-finite row beyond the k-th is
  also counted (it is sent to 0). Secure aggregation: no (see `adaptive_robust_clipping`)."""
  n, _ = base.check_updates(updates, "adaptive_robust_clipping", f=f, min_n=lambda f: f + 1)
  return _scale_rows(updates, _arc_factors(n, f), _scaled)


def adaptive_robust_clipping(updates: jax.Array, *, f: int) -> jax.Array:
  """Adaptive robust clipping (ARC): the k = ⌊2(f/n)(n − f)⌋ largest-norm rows are clipped to
  the norm of the (k+1)-th largest (Allouah, Guerraoui, Gupta, Jellouli, Rizk, Stephan, 2024).

  Non-finite rows count as the largest norms and are sent to 0. Cost: two passes plus a sort of
  n norms. Needs n > f. Secure aggregation: no — it needs every update in the clear (the
  threshold is an order statistic of the n row norms, and the rule that follows gets the
  clipped rows).
  """
  return adaptive_robust_clipping_with_share(updates, f=f).value


def adaptive_robust_clipping_mean_with_share(updates: jax.Array, *, f: int,
                                             weights: jax.Array | None = None) -> Clipped:
  """`adaptive_robust_clipping_mean` and its `clipped_share` (unweighted share of rows)."""
  n, _ = base.check_updates(updates, "adaptive_robust_clipping", f=f, min_n=lambda f: f + 1)
  return _scale_rows(updates, _arc_factors(n, f), _scaled_average, _weights(updates, weights))


def adaptive_robust_clipping_mean(updates: jax.Array, *, f: int,
                                  weights: jax.Array | None = None) -> jax.Array:
  """`mean(adaptive_robust_clipping(updates, f=f))` (or its weighted mean) in two reads of
  `[n, d]`; the pipeline "adaptive_robust_clipping+mean" runs this."""
  return adaptive_robust_clipping_mean_with_share(updates, f=f, weights=weights).value


# Units of centered clipping's τ: "update" (the rows it is given, here client updates
# θ − θ_K), or "published_momentum" (Karimireddy et al.'s worker momentum buffers; converted to
# update units by `published_tau_in_update_units` where the simulator is built).
TAU_UNITS = ("update", "published_momentum")


def published_tau_in_update_units(tau: float, *, lr: float, momentum: float,
                                  local_steps: int) -> float:
  """τ' = τ · η · (1 − β) · K: a centered-clipping radius τ stated for the published code's
  momentum buffers, in the units of this simulator's client updates.

  The published code (github.com/epfml/byzantine-robust-optimizer and
  epfml/byzantine-robust-noniid-optimizer, `codes/.../worker.py` `MomentumWorker._save_grad`)
  clips each worker's PyTorch-style buffer m_t = β m_{t−1} + g_t (m_1 = g_1; no (1 − β), no
  learning rate); its defaults are τ = 10 with 3 iterations (noniid code, `--clip-tau`) and
  τ = 100 with 1 iteration (ICML 2021 CIFAR-10 script). The simulator's client runs K steps of
  m'_t = β m'_{t−1} + (1 − β) g_t from m'_0 = 0, so m'_t = (1 − β) m_t exactly, and sends
  u = θ − θ_K = η Σ_{k=1}^{K} m'_k (`training.Simulator.local_update`).

  K = 1: u = η(1 − β) m, and clipping is positively homogeneous (clip_{cτ}(c y) = c·clip_τ(y),
  so CC_{cτ}(c x; c v) = c·CC_τ(x; v) for c > 0): centered clipping of the updates with
  τ' = η(1 − β)τ is exactly η(1 − β) times the published rule on the buffers (its centre, the
  previous aggregate, scales the same way). K > 1 has no published counterpart: u sums K
  buffers, ‖u‖ ≤ η(1 − β) Σ_k ‖m_k‖, and τ' = η(1 − β)Kτ is the radius for K equal buffers (a
  convention, not an identity).
  """
  return float(tau) * float(lr) * (1.0 - float(momentum)) * int(local_steps)


def centered_clipping_with_share(updates: jax.Array, *, center: jax.Array, tau: float = 10.0,
                                 iterations: int = 3, tau_units: str = "update") -> Clipped:
  """`centered_clipping` and its `clipped_share`, the share of rows clipped in the LAST
  iteration: ‖x_i − v_{L−1}‖ > τ, or non-finite (those contribute 0, factor 0). The last
  iteration's share is the one that says what the output is: when it is 0 the last step is
  v_L = v_{L−1} + (1/n) Σ (x_i − v_{L−1}) = (1/n) Σ x_i, the plain mean, whatever the earlier
  iterations clipped (a row at distance 0 from v is not counted: clipping leaves it as is).
  Secure aggregation: no (see `centered_clipping`).
  """
  n, _ = base.check_updates(updates, "centered_clipping")
  if not tau > 0:
    raise ValueError(f"centered_clipping: tau must be > 0, got {tau}.")
  if tau_units != "update":
    raise ConfigError(
        f"centered_clipping: tau_units={tau_units!r} cannot be applied by the rule, which does "
        "not know the learning rate, momentum and local steps; build it with "
        "config.aggregator_options (which converts τ by published_tau_in_update_units), or pass "
        "tau in update units with tau_units='update'.")
  dtype = updates.dtype

  def run(x, v, finite, distances):
    clipped = None
    for _ in range(iterations):
      norms = distances(x, v)
      c = jnp.where(finite, jnp.minimum(1.0, tau / jnp.where(norms > 0, norms, 1.0)), 0.0)
      clipped = norms > tau if finite is True else (norms > tau) | ~finite
      v = v + (c @ x - jnp.sum(c) * v) / n   # (1/n) Σ c_i (x_i − v), as a matrix product
    return v, _share(clipped)

  def fast(x, sq, v):
    return run(x, v, True, lambda x, v: jnp.sqrt(jnp.sum((x - v) ** 2, axis=-1)))

  def exact(x, v):
    finite = base.finite_rows(x)
    x = base.zero_nonfinite_rows(x, finite)
    row_max = jnp.max(jnp.abs(x), axis=1)
    return run(x, v, finite, lambda x, v: base.row_distances(x, v, row_max))

  # Each iteration moves v by at most τ, so ‖v_t‖ ≤ ‖v_0‖ + Lτ bounds what the fast path meets.
  v0 = center.astype(dtype)
  bound = (base.vector_norm(v0) + iterations * jnp.asarray(tau, dtype)) ** 2
  return Clipped(*base.ordinary_or_exact(updates, fast, exact, v0, extra_squared_norm=bound))


def centered_clipping(updates: jax.Array, *, center: jax.Array, tau: float = 10.0,
                      iterations: int = 3, tau_units: str = "update") -> jax.Array:
  """Centered clipping: v ← v + (1/n) Σ_i clip_τ(x_i − v), `iterations` times from v = `center`
  (in training: the previous round's aggregate, carried in the server state; 0 at first).

  Karimireddy, He, Jaggi, "Learning from history for Byzantine robust optimization", ICML 2021.
  Defaults τ = 10, L = 3, as in Karimireddy et al.'s experiments (ByzFL: τ = 100, L = 1). A
  non-finite row contributes clip(·) = 0 (see the module docstring),
  still counted in 1/n. Cost: two passes over `[n, d]` per iteration.

  Secure aggregation: no, as counted here (`registry.SECURE_AVERAGES`): the server computes each
  row's clip factor c_i = min(1, τ/‖x_i − v‖) from the row. Each iteration uses only Σ c_i x_i
  and Σ c_i, so clients computing c_i from a broadcast v could make it one secure average per
  iteration, as `rfa_one_step` does; that variant is not counted.

  τ is in the units of the rows (`tau_units="update"`, the only value the rule itself takes).
  Karimireddy et al.'s τ = 10 is for their momentum buffers, which are 1/(η(1 − β)) times
  larger than this simulator's updates: the config option
  `aggregator_options.centered_clipping.tau_units="published_momentum"` has
  `config.aggregator_options` convert it (`published_tau_in_update_units`).
  """
  return centered_clipping_with_share(updates, center=center, tau=tau, iterations=iterations,
                                      tau_units=tau_units).value
