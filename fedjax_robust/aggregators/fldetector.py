"""FLDetector (Zhang, Cao, Jia, Gong, "FLDetector: defending federated learning against model
poisoning attacks via detecting malicious clients", KDD 2022): the server predicts each client's
update from its previous one and the change of the global model, scores each client by how far
its update lands from the prediction, averaged over a window of rounds, and excludes the clients
of the high-score cluster when gap statistics say the scores form two clusters.

A stateful rule with a state per client (`fldetector_init(d, dtype, num_clients=n)`): row i must
be client i in every round. It reads the global model the round started from (`global_params`,
registry.SERVER_INPUTS), so the model's change θ_t − θ_{t−1} is exact whatever the server
optimizer (with SGD at learning rate η it is −η·(previous aggregate)).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from fedjax_robust.aggregators import base as agg_base
from fedjax_robust.aggregators import coordinatewise
from fedjax_robust.aggregators.averaging import mean as _mean
from fedjax_robust.aggregators.clustering import Filtered
from fedjax_robust.errors import ConfigError

Array = jax.Array

BASES = ("mean", "median")
_HIGHEST = lax.Precision.HIGHEST


class FLDetectorState(NamedTuple):
  """FLDetector's state across rounds (`fldetector_init`); N = window, n = clients."""
  round: Array            # int32 []: rounds seen
  params: Array           # [d] θ_{t−1}, the global model the previous round started from
  params_ok: Array        # bool []: params holds a finite θ_{t−1}
  aggregate: Array        # [d] g_{t−1}, the previous round's aggregate
  aggregate_ok: Array     # bool []: aggregate holds a finite g_{t−1}
  steps: Array            # [N, d] Δθ of the stored L-BFGS pairs (ring, pair k in slot k mod N)
  changes: Array          # [N, d] Δg of the stored pairs
  pairs: Array            # int32 []: pairs ever stored
  updates: Array          # [n, d] each client's previous row (0 where it was not finite)
  updates_ok: Array       # bool [n]: updates[i] is client i's finite row of the previous round
  scores: Array           # [N, n] normalised distances of the scored rounds (ring)
  scored: Array           # int32 []: rounds ever scored


def fldetector_init(d: int, dtype=jnp.float32, *, num_clients: int | None = None,
                    window: int = 10) -> FLDetectorState:
  """The empty state of `fldetector` for `num_clients` clients sending `[d]` rows.

  Without `num_clients` the state holds no client (the shape a pipeline's `init(d, dtype)` gives
  when it is not told n, e.g. to ask whether a rule keeps a state); `fldetector` refuses it.
  """
  _check_options(window, 1, "mean", 0)
  n = 0 if num_clients is None else num_clients
  if not isinstance(n, int) or isinstance(n, bool) or n < 0:
    raise ValueError(f"fldetector_init: num_clients must be a non-negative int, got "
                     f"{num_clients!r}.")
  zero = jnp.zeros((), jnp.int32)
  return FLDetectorState(
      zero, jnp.zeros((d,), dtype), jnp.array(False), jnp.zeros((d,), dtype), jnp.array(False),
      jnp.zeros((window, d), dtype), jnp.zeros((window, d), dtype), zero,
      jnp.zeros((n, d), dtype), jnp.zeros((n,), bool), jnp.zeros((window, n), dtype), zero)


def _check_options(window, references, base_rule, warmup) -> None:
  for name, value, low in (("window", window, 1), ("references", references, 1),
                           ("warmup", warmup, 0)):
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
      raise ValueError(f"fldetector: {name} must be an int >= {low}, got {value!r}.")
  if base_rule not in BASES:
    raise ValueError(f"fldetector: base must be one of {BASES}, got {base_rule!r}.")


# ---------------------------------------------------------------------------------------------
# L-BFGS


def _binary_exponent(a: Array) -> Array:
  """e (int32) with max|a|·2^-e in [1/2, 1) (0 for an all-zero a): a·2^-e is exact."""
  _, e = jnp.frexp(jnp.max(jnp.abs(a)))
  return e.astype(jnp.int32)


def lbfgs_hvp(steps: Array, changes: Array, pairs: Array, v: Array) -> Array:
  """B v for the L-BFGS approximation B of the Hessian from the stored pairs, `[d]`.

  The pairs (s_k, y_k) = (Δθ, Δg) sit in a ring of N slots (pair k in slot k mod N, `pairs` of
  them ever stored); the m = min(pairs, N) most recent are used, oldest first. Compact form
  (Byrd, Nocedal, Schnabel, "Representations of quasi-Newton matrices and their use in limited
  memory methods", Math. Prog. 1994, eq. 2.17; the authors' `lbfgs`):

    S = [s_1 … s_m], Y = [y_1 … y_m],  σ = y_mᵀs_m / s_mᵀs_m  (B₀ = σI)
    L = the strictly lower triangle of SᵀY (L_ij = s_iᵀy_j, i > j),  D = diag(s_iᵀy_i)
    B v = σv − [σS  Y] [[σSᵀS, L], [Lᵀ, −D]]⁻¹ [σSᵀv; Yᵀv]

  which is m BFGS updates of σI by the pairs in order. No pair is skipped for its curvature
  (the authors' code keeps pairs with s_kᵀy_k ≤ 0 too). Computed with exact power-of-two
  scalings, undone at the end: Y as a whole by 2^c (B(S, 2^c Y) = 2^c B(S, Y)) and each pair
  (s_k, y_k) jointly by 2^a_k (a BFGS update is invariant under a joint scaling of its pair),
  chosen so that every s_k and y_k has entries of size up to 1, and v to unit size. The Gram
  matrices then do not overflow, and pairs of very different sizes (a step after a huge
  aggregate beside ordinary ones) keep their digits; products in full precision. Empty slots take an
  identity block, which leaves the other pairs' solution unchanged. No pair, or a result that is
  not finite (a singular system, e.g. σ = 0, or a product beyond the float range): 0.
  Cost: O(N·d) for the Gram matrices and the product, O(N³) for the solve.
  """
  slots = steps.shape[0]
  stored = jnp.minimum(pairs, slots)
  rank = (jnp.arange(slots) - (pairs - stored)) % slots   # 0 = the oldest stored pair
  valid = rank < stored
  newest = (pairs - 1) % slots
  # Exponents: Y as a whole by 2^c (B scales by 2^c), each pair jointly by 2^a_k (B unchanged),
  # applied in one exact ldexp so that no intermediate value underflows.
  es = jnp.where(valid, jax.vmap(_binary_exponent)(steps), jnp.iinfo(jnp.int32).min // 2)
  ey = jnp.where(valid, jax.vmap(_binary_exponent)(changes), jnp.iinfo(jnp.int32).min // 2)
  c = jnp.where(stored > 0, jnp.max(es) - jnp.max(ey), 0)
  a = -jnp.maximum(es, ey + c)
  s = jnp.where(valid[:, None], jnp.ldexp(steps, jnp.where(valid, a, 0)[:, None]), 0.0)
  y = jnp.where(valid[:, None], jnp.ldexp(changes, jnp.where(valid, a + c, 0)[:, None]), 0.0)
  ev = _binary_exponent(v)
  u = jnp.ldexp(v, -ev)
  ss = jnp.matmul(s, s.T, precision=_HIGHEST)
  sy = jnp.matmul(s, y.T, precision=_HIGHEST)
  sigma = sy[newest, newest] / ss[newest, newest]
  lower = jnp.where((rank[:, None] > rank[None, :]) & valid[:, None] & valid[None, :], sy, 0.0)
  empty = jnp.diag((~valid).astype(s.dtype))
  system = jnp.block([[sigma * ss + empty, lower],
                      [lower.T, -jnp.diag(jnp.where(valid, jnp.diag(sy), 0.0)) + empty]])
  rhs = jnp.concatenate([sigma * jnp.matmul(s, u, precision=_HIGHEST),
                         jnp.matmul(y, u, precision=_HIGHEST)])
  q = jnp.linalg.solve(system, rhs)
  scaled = sigma * u - jnp.matmul(sigma * q[:slots], s, precision=_HIGHEST) - jnp.matmul(
      q[slots:], y, precision=_HIGHEST)
  out = jnp.ldexp(scaled, ev - c)
  ok = (stored > 0) & jnp.all(jnp.isfinite(out))
  return jnp.where(ok, out, jnp.zeros_like(out))


# ---------------------------------------------------------------------------------------------
# Gap statistics on the suspicious scores


def two_means_1d(x: Array) -> tuple[Array, Array, Array]:
  """The optimal 2-means of the values `x [n]` (n ≥ 2): (W₁, W₂, cut).

  W₁ = Σ (x_i − x̄)²; W₂ = the smallest within-cluster sum of squares of a split in two, found
  exactly: in one dimension an optimal split is a cut of the sorted values, the one maximising
  the between-cluster sum k(n−k)/n·(m_left − m_right)² (ties: the fewest values on the left),
  W₂ then computed from the cut's two means; cut = the largest value of the lower cluster (the
  upper cluster is {x_i > cut}). scikit-learn's KMeans (the authors' code) runs Lloyd's
  iterations from k-means++ seeds and may stop at a local optimum. Cost: a sort, O(n).
  """
  n = x.shape[-1]
  xs = jnp.sort(x)
  total = jnp.sum(xs)
  w1 = jnp.sum(jnp.square(xs - total / n))
  left_sum = jnp.cumsum(xs)[:-1]
  k = jnp.arange(1, n, dtype=x.dtype)
  between = k * (n - k) / n * jnp.square(left_sum / k - (total - left_sum) / (n - k))
  cut = jnp.argmax(between)                       # the left cluster is xs[:cut + 1]
  m_left = left_sum[cut] / (cut + 1)
  m_right = (total - left_sum[cut]) / (n - cut - 1)
  left = jnp.arange(n) <= cut
  w2 = jnp.sum(jnp.where(left, jnp.square(xs - m_left), jnp.square(xs - m_right)))
  return w1, w2, xs[cut]


def reference_uniforms(key: Array, references: int, n: int, dtype=jnp.float32) -> Array:
  """The gap statistic's B = `references` reference sets of n values uniform on [0, 1),
  `[B, n]`, drawn from `key` (what `fldetector` draws in a round)."""
  return jax.random.uniform(key, (references, n), dtype)


def gap_split(scores: Array, uniforms: Array) -> tuple[Array, Array]:
  """Whether gap statistics choose two clusters for `scores [n]`, and the upper cluster `[n]`.

  As the authors' `detection1`/`gap_statistics`: the scores are min-max normalised to [0, 1],
  compared with B reference sets uniform on [0, 1] (`uniforms [B, n]`):

    Gap(k) = log((1/B) Σ_b W*_kb) − log W_k,   s_k = √(1 + 1/B) · std_b(log W*_kb)

  (W_k: the k-means within-cluster sum of squares, `two_means_1d`; std with 1/B). The number of
  clusters is the smallest k with Gap(k) ≥ Gap(k + 1) − s_{k+1}; an attack is detected when it
  is not 1, i.e. when Gap(1) < Gap(2) − s₂ (the codes also score k up to 7 or 10, which cannot
  change whether k = 1 is chosen). Tibshirani, Walther, Hastie (JRSS B 2001) take the mean of
  the logs, (1/B) Σ_b log W*_kb, where both FLDetector codes take the log of the mean; here
  the codes' form. W₂ = 0 (two distinct values): Gap(2) = +∞, two clusters. All scores equal,
  or n ≤ 2 (the reference W*₂ are then 0): one cluster. The upper cluster of the 2-means (the
  larger mean score) is the detected one; empty when one cluster is chosen.
  """
  n = scores.shape[-1]
  if n <= 2:
    return jnp.array(False), jnp.zeros((n,), bool)
  low, high = jnp.min(scores), jnp.max(scores)
  spread = high - low
  x = (scores - low) / jnp.where(spread > 0, spread, 1.0)
  w1, w2, cut = two_means_1d(x)
  r1, r2, _ = jax.vmap(two_means_1d)(uniforms)
  gap1 = jnp.log(jnp.mean(r1)) - jnp.log(w1)
  gap2 = jnp.log(jnp.mean(r2)) - jnp.log(w2)
  b = uniforms.shape[0]
  s2 = math.sqrt(1.0 + 1.0 / b) * jnp.std(jnp.log(r2))
  detected = (spread > 0) & (gap1 < gap2 - s2)
  return detected, detected & (x > cut)


# ---------------------------------------------------------------------------------------------
# Distances


def _log_distances(previous: Array, hv: Array, rows: Array) -> Array:
  """log ‖(previous_i + hv) − rows_i‖ `[n]` (−inf for a zero distance) for finite inputs,
  without overflow: each term is quartered (so their sum is finite) and each row of the sum
  scaled by an exact power of two before its norm."""
  diff = 0.25 * previous - 0.25 * rows + 0.25 * hv
  e = jax.vmap(_binary_exponent)(diff)
  norms = jnp.linalg.norm(jnp.ldexp(diff, -e[:, None]), axis=-1)
  return jnp.log(norms) + (e.astype(diff.dtype) + 2.0) * math.log(2.0)


def _normalised(log_d: Array, defined: Array) -> Array:
  """d_i / Σ_j d_j over the defined clients (from log d, so no sum overflows); the clients
  whose distance is undefined get the largest normalised distance of the round. All defined
  distances 0: 1/m each (m defined clients)."""
  log_d = jnp.where(defined, log_d, -jnp.inf)
  top = jnp.max(log_d)
  share = jnp.exp(log_d - jnp.where(jnp.isfinite(top), top, 0.0))
  share = share / jnp.sum(share)
  m = jnp.maximum(jnp.sum(defined), 1).astype(log_d.dtype)
  share = jnp.where(jnp.isfinite(top), share, jnp.where(defined, 1.0 / m, 0.0))
  return jnp.where(defined, share, jnp.max(share))


# ---------------------------------------------------------------------------------------------
# The rule


def fldetector_with_share(updates: Array, *, key: Array, state: FLDetectorState,
                          global_params: Array, window: int = 10, references: int = 10,
                          base: str = "mean", warmup: int = 0
                          ) -> tuple[Filtered, FLDetectorState]:
  """`fldetector` and the share of rows it averaged: `(Filtered, new_state)`. Secure
  aggregation: no (see `fldetector`)."""
  n, d = agg_base.check_updates(updates, "fldetector")
  _check_options(window, references, base, warmup)
  if state.updates.shape != (n, d) or state.scores.shape != (window, n):
    raise ConfigError(
        f"fldetector keeps a state per client and a window of {window} rounds: build it with "
        f"init(d, dtype, num_clients={n}) (window={window}); got a state for "
        f"{state.updates.shape[0]} clients of {state.updates.shape[1]} coordinates and "
        f"{state.steps.shape[0]} rounds, and updates of {n} rows of {d}.")
  if global_params.shape != (d,):
    raise ConfigError(f"fldetector: global_params must have shape ({d},), got "
                      f"{global_params.shape}.")
  dtype = updates.dtype
  theta = global_params.astype(dtype)
  theta_ok = jnp.all(jnp.isfinite(theta))
  finite = agg_base.finite_rows(updates)
  rows = agg_base.zero_nonfinite_rows(updates, finite)

  # Predict, measure, score.
  moved = state.params_ok & theta_ok
  step = jnp.where(moved, theta - state.params, 0.0)
  hv = lbfgs_hvp(state.steps, state.changes, state.pairs, step)
  defined = finite & state.updates_ok
  log_d = _log_distances(state.updates, hv, rows)
  score_now = (moved & (state.pairs > 0) & (state.round >= warmup) & jnp.any(defined))
  distances = _normalised(log_d, defined)
  slot = state.scored % window
  scores = jnp.where(score_now, state.scores.at[slot].set(distances), state.scores)
  scored = state.scored + score_now.astype(jnp.int32)

  # Detect, once the window is full.
  uniforms = reference_uniforms(key, references, n, dtype)
  attack, upper = gap_split(jnp.mean(scores, axis=0), uniforms)
  malicious = (scored >= window) & attack & upper
  kept = finite & ~malicious

  # Aggregate the kept rows with the base rule (0 if none is kept).
  rule = _mean if base == "mean" else coordinatewise.coordinate_median
  value = rule(updates, present=kept)
  value = jnp.where(jnp.any(kept), value, jnp.zeros_like(value))

  # The L-BFGS pair of this round and the state for the next one.
  aggregate_ok = jnp.all(jnp.isfinite(value))
  new_step = theta - state.params
  new_change = value - state.aggregate
  pair_ok = (moved & state.aggregate_ok & aggregate_ok & jnp.all(jnp.isfinite(new_step))
             & jnp.all(jnp.isfinite(new_change)) & jnp.any(new_step != 0)
             & jnp.any(new_change != 0))
  pair_slot = state.pairs % window
  new_state = FLDetectorState(
      state.round + 1, jnp.where(theta_ok, theta, 0.0), theta_ok,
      jnp.where(aggregate_ok, value, 0.0), aggregate_ok,
      jnp.where(pair_ok, state.steps.at[pair_slot].set(new_step), state.steps),
      jnp.where(pair_ok, state.changes.at[pair_slot].set(new_change), state.changes),
      state.pairs + pair_ok.astype(jnp.int32), rows, finite, scores, scored)
  return Filtered(value, jnp.mean(kept.astype(jnp.float32))), new_state


def fldetector(updates: Array, *, key: Array, state: FLDetectorState, global_params: Array,
               window: int = 10, references: int = 10, base: str = "mean", warmup: int = 0
               ) -> tuple[Array, FLDetectorState]:
  """FLDetector: with x_i^t the row of client i in round t, θ_t = `global_params` (the model
  round t started from), g_t this rule's output (the aggregate) and N = `window`:

    Ĥ v  = L-BFGS product from the last N pairs (θ_r − θ_{r−1}, g_r − g_{r−1})  (`lbfgs_hvp`)
    x̂_i^t = x_i^{t−1} + Ĥ (θ_t − θ_{t−1})                    (predicted update, Cauchy MVT)
    d_i^t = ‖x̂_i^t − x_i^t‖,  d̄_i^t = d_i^t / Σ_j d_j^t      (normalised distance)
    s_i^t = (1/N) Σ_{r<N} d̄_i^{t−r}                          (suspicious score)
    once N rounds are scored: if gap statistics on s^t choose two clusters (`gap_split`, B =
    `references` reference sets drawn from `key`), the clients of the 2-means cluster with the
    larger mean score are malicious and left out this round;
    g_t = base rule ("mean", or "median": coordinate-wise) over the finite rows not left out.
  Returns `(g_t, new_state)`; the state (`fldetector_init(d, dtype, num_clients=n,
  window=N)`) holds θ_{t−1}, g_{t−1}, the last N pairs, each client's previous row and the last
  N rounds' normalised distances. The pair (θ_t − θ_{t−1}, g_t − g_{t−1}) is stored after the
  round's aggregate, as the authors' code does (records kept from the second round on).

  Timeline: round 0 keeps the rows; round 1 stores the first pair; rounds t ≥ max(2, `warmup`)
  are scored (with the min(t − 1, N) pairs stored by then); detection starts in the round whose
  score fills the window (round N + 1 with `warmup` ≤ 2) and is decided anew every round. Before
  it: the base rule over every finite row.

  Sources and choices where they differ: the paper (Algorithm 1) and the authors' MXNet code
  (github.com/zaixizhang/FLDetector: `lbfgs`, `detection1`, the aggregation files), FLPoison's
  `FLDetector`.
  - Model change: exact from `global_params`; the codes use their own weights (the authors) or
    the previous aggregate as the step (FLPoison, exact for SGD up to a scale, to which B v is
    invariant). FLPoison pairs g_t − g_{t−1} with the step taken after round t, one round later
    than the authors' code (followed here).
  - Window: N for both the pairs and the scores (the paper's N = 10). The authors' code sums
    the last 10 distances (the same clustering as the mean after min-max normalisation).
  - Start: the authors start scoring after 50 rounds and FLPoison after `start_epoch` = 50 plus
    a window; here `warmup` (default 0) rounds pass unscored.
  - Detection: the authors stop training at the first detection, remove the detected clients
    and restart from the initial model; FLPoison and this rule leave the detected clients out
    of the round in which they are detected, deciding anew every round (a client excluded once
    may be kept later).
  - Gap statistics: B = 10 reference sets (the authors' nrefs; FLPoison draws 20), the codes'
    log-of-mean form, exact 1-D 2-means (`gap_split`, `two_means_1d`).
  - Aggregation of the kept rows: the paper pairs FLDetector with a robust rule; the authors'
    code removes the clients and reruns with its chosen rule; FLPoison averages the kept rows.
    Here `base` picks the mean or the coordinate-wise median.
  Non-finite rows: left out of the round (never averaged, never stored: the client has no
  previous row next round); a client whose row is non-finite now or was last round has no
  distance, and its normalised distance that round is the largest of the clients that have one
  (as suspicious as the most suspicious; normalising over a non-finite distance would wipe out
  every other client's score). No NaN or ±inf enters the state: a pair is stored only when
  θ_{t−1}, θ_t, g_{t−1}, g_t are finite and Δθ, Δg are not zero (a zero Δθ or Δg makes the
  compact system singular). A round in which no client has a distance is not scored.
  Huge finite rows follow the definition, computed without overflow (distances in log space,
  L-BFGS on rescaled pairs): a huge row that changes from round to round has a huge distance,
  takes almost all of its round's normalised distance and leaves the other clients' scores near
  0 for that round, which masks the other attackers while it keeps sending (a weakness of the
  normalisation, kept as published); a constant huge row is consistent, predicted to within
  ‖Ĥ Δθ‖, and never detected (FLDetector flags inconsistency, not size). Until it is detected
  the mean base averages it (the mean's definition); the median base is not moved by one row.
  No kept row (every finite row detected, or none finite): the zero vector, kept_share 0.
  False alarms: on a clean set the gap statistic still chooses two clusters now and then when n
  is small (with B = 10, Gaussian scores gave two clusters in about 6% of instances at n = 12,
  1% at n = 30 and none of 400 at n = 100; the paper evaluates n = 100 or more).
  Cost per round: O(n·d) for the distances, O(N·d) for L-BFGS, O(B·n log n) for the gap
  statistics, plus the base rule; the state holds (n + 2N + 2)·d numbers.
  Secure aggregation: no — every client's row is compared with its prediction in the clear.
  """
  out, new_state = fldetector_with_share(
      updates, key=key, state=state, global_params=global_params, window=window,
      references=references, base=base, warmup=warmup)
  return out.value, new_state
