"""Defences that read the model, not only the updates: FLARE (the clients' models' penultimate-
layer features on the server's root inputs) and CRFL (the global model, clipped and smoothed).

Both ask the server for inputs by keyword (registry.SERVER_INPUTS): FLARE for `representations`
`[n, m, h]` (client i's model θ − x_i evaluated on the server's m root inputs, its h penultimate-
layer features per input), CRFL for `global_params` `[d]` (the model θ the round started from).
The simulator computes them; these functions are pure in them.

CRFL's certificate comes with pure helpers for the evaluation the paper does after training:
`crfl_smoothed_params` (the M noisy copies of the final model), `crfl_smoothed_predict` (each test
input's top class and runner-up among the copies' predictions), `crfl_probability_bounds`
(p_A's lower and p_B's upper confidence bound from those counts) and `crfl_certified_radius`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
from jax import lax
import jax.numpy as jnp
from jax.scipy import special

from fedjax_robust.aggregators import base
from fedjax_robust.aggregators.clustering import Filtered

Array = jax.Array


def _is_concrete(value) -> bool:
  return not isinstance(value, jax.core.Tracer)


def _check_positive(rule: str, key: str, value, *, high: float = math.inf,
                    high_open: bool = True) -> None:
  """A Python (or concrete) scalar option in (0, high) (or (0, high]), finite; traced values
  pass (they are checked where the config is)."""
  if not _is_concrete(value):
    return
  try:
    v = float(value)
  except (TypeError, ValueError):
    raise ValueError(f"{rule}: {key}={value!r} must be a finite number > 0.") from None
  inside = 0 < v < high if high_open else 0 < v <= high
  if not (math.isfinite(v) and inside):
    where = "> 0" if high == math.inf else f"in (0, {high:g}{')' if high_open else ']'}"
    raise ValueError(f"{rule}: {key}={value!r} must be a finite number {where}.")


# ----------------------------------------------------------------------------------------------
# FLARE


def _block_kernel_sums(reps: Array, gamma: Array) -> Array:
  """S_ij = Σ_{a ∈ set i, b ∈ set j} exp(−γ‖r_ia − r_jb‖²) `[n, n]`, the pairs a = b left out
  of S_ii (the unbiased estimator's within-set sums), symmetrized as (S_ij + S_ji)/2.

  Row i is computed with every set centred at set i's mean μ_i, and each block (i, j) scaled by
  an exact power of two s_ij chosen from max |r − μ_i| over the two sets, so the Gram form
  ‖a‖² + ‖b‖² − 2a·b neither overflows nor loses the pair's distances to a large common offset
  (a huge set far from μ_i gives distances that overflow to +inf and a kernel of 0, as they
  should). One block row at a time (`lax.map`): memory O(n·m² + n·m·h), work O(n²·m²·h).
  """
  n, m, _ = reps.shape

  def row(i):
    centred = reps - jnp.mean(reps[i], axis=0)          # [n, m, h]
    largest = jnp.max(jnp.abs(centred), axis=(1, 2))    # [n]
    scale = base.power_of_two_scale(jnp.maximum(largest, largest[i]), reps.dtype)  # [n]
    a = centred[i][None] * scale[:, None, None]         # [n, m, h]: set i, per block's scale
    b = centred * scale[:, None, None]                  # [n, m, h]
    sq = (jnp.sum(a * a, -1)[:, :, None] + jnp.sum(b * b, -1)[:, None, :]
          - 2 * jnp.einsum("jah,jbh->jab", a, b))
    sq = jnp.maximum(sq, 0.0) / (scale * scale)[:, None, None]   # exact: powers of two
    # inf − inf in the Gram form (sets so huge that centring overflowed): infinitely far.
    sq = jnp.where(jnp.isnan(sq), jnp.inf, sq)
    kernel = jnp.exp(-gamma * sq)                       # [n, m, m]
    sums = jnp.sum(kernel, axis=(1, 2))
    own = jnp.trace(kernel[i])                          # the a = b terms of S_ii
    return sums.at[i].add(-own)

  sums = lax.map(row, jnp.arange(n))
  return (sums + sums.T) / 2


def flare_mmd(representations: Array, valid: Array, *, gamma: float | None = None) -> Array:
  """MMD²_u between every two clients' representation sets `[n, n]` (Gretton et al., JMLR 2012,
  the unbiased estimator the FLARE code computes), clipped at 0 as that code does:

    MMD²_u(X, Y) = Σ_{a≠a'} k(x_a, x_a')/(m(m−1)) + Σ_{b≠b'} k(y_b, y_b')/(m(m−1))
                   − 2 Σ_{a,b} k(x_a, y_b)/m²,        k(u, v) = exp(−γ‖u − v‖²),

  γ = `gamma`, or 1/h where None (scikit-learn's `rbf` default, which the authors' code takes).
  +inf in every row and column of a client that is not `valid` (its set is not read), and 0 on
  the diagonal.
  """
  n, m, h = representations.shape
  g = 1.0 / h if gamma is None else gamma
  reps = jnp.where(valid[:, None, None], representations, jnp.zeros((), representations.dtype))
  sums = _block_kernel_sums(reps, jnp.asarray(g, reps.dtype))
  within = jnp.diag(sums) / (m * (m - 1))
  mmd = within[:, None] + within[None, :] - 2 * sums / (m * m)
  mmd = jnp.maximum(mmd, 0.0)
  mmd = jnp.where(jnp.eye(n, dtype=bool), 0.0, mmd)
  pair = valid[:, None] & valid[None, :]
  return jnp.where(pair, mmd, jnp.inf)


class FlareScores(NamedTuple):
  """FLARE's intermediate quantities (for tests and diagnostics)."""
  mmd: Array     # [n, n] MMD²_u (+inf for an invalid client)
  counts: Array  # [n] int32: how many clients chose i among their k nearest
  trust: Array   # [n] trust scores (sum 1 over the valid clients; 0 for the invalid ones)
  valid: Array   # [n] bool: finite update row and finite representations


def flare_scores(updates: Array, representations: Array, *, neighbors: int | None = None,
                 temperature: float = 1.0, gamma: float | None = None) -> FlareScores:
  """FLARE's MMDs, neighbour counts and trust scores (see `flare`)."""
  n, _ = base.check_updates(updates, "flare")
  shape = getattr(representations, "shape", None)
  if shape is None or len(shape) != 3 or shape[0] != n:
    raise ValueError(f"flare: representations must have shape ({n}, m, h) (each client's "
                     f"model's features on the m root inputs), got {shape}.")
  if shape[1] < 2:
    raise ValueError(f"flare: representations need m >= 2 root inputs (the unbiased MMD "
                     f"divides by m(m − 1)), got m={shape[1]}.")
  if not jnp.issubdtype(representations.dtype, jnp.floating):
    raise ValueError(f"flare: representations must be floating point, got "
                     f"{representations.dtype}.")
  if neighbors is not None and (isinstance(neighbors, bool) or not isinstance(neighbors, int)
                                or not 1 <= neighbors <= n - 1):
    raise ValueError(f"flare: neighbors={neighbors!r} must be an int in [1, n − 1 = {n - 1}] "
                     "or None (⌊n/2⌋ − 1, the authors' code).")
  _check_positive("flare", "temperature", temperature)
  if gamma is not None:
    _check_positive("flare", "gamma", gamma)

  reps = representations
  valid = base.finite_rows(updates) & jnp.all(jnp.isfinite(reps), axis=(1, 2))
  mmd = flare_mmd(reps, valid, gamma=gamma)
  n_valid = jnp.sum(valid)
  # k nearest among the valid others; the default is the authors' ind[:, 1:⌊n/2⌋].
  k = n_valid // 2 - 1 if neighbors is None else jnp.asarray(neighbors)
  k = jnp.clip(k, 0, jnp.maximum(n_valid - 1, 0))
  eye = jnp.eye(n, dtype=bool)
  eligible = valid[:, None] & valid[None, :] & ~eye
  keyed = jnp.where(eligible, mmd, jnp.inf)
  order = jnp.argsort(keyed, axis=1, stable=True)       # ties: the lower index first
  rank = jnp.argsort(order, axis=1, stable=True)        # rank of j in row i
  chosen = eligible & (rank < k)
  counts = jnp.sum(chosen, axis=0).astype(jnp.int32)
  average = jnp.sum(counts).astype(jnp.float32) / jnp.maximum(n_valid, 1).astype(jnp.float32)
  logits = jnp.where(average > 0,
                     counts.astype(jnp.float32) / (temperature * jnp.where(average > 0, average,
                                                                            1.0)),
                     0.0)
  logits = jnp.where(valid, logits, -jnp.inf)
  top = jnp.max(jnp.where(valid, logits, 0.0))
  weights = jnp.where(valid, jnp.exp(logits - top), 0.0)
  trust = weights / jnp.where(n_valid > 0, jnp.sum(weights), 1.0)
  return FlareScores(mmd, counts, trust, valid)


def flare_with_share(updates: Array, *, representations: Array, neighbors: int | None = None,
                     temperature: float = 1.0, gamma: float | None = None) -> Filtered:
  """`flare` and the share of rows with a positive trust score (`Filtered.kept_share`).
  Secure aggregation: no (see `flare`)."""
  scores = flare_scores(updates, representations, neighbors=neighbors, temperature=temperature,
                        gamma=gamma)
  trust = scores.trust.astype(updates.dtype)
  value = base.average_selected(updates, trust)
  any_valid = jnp.any(scores.valid)
  return Filtered(jnp.where(any_valid, value, jnp.zeros_like(value)),
                  jnp.mean((trust > 0).astype(jnp.float32)))


def flare(updates: Array, *, representations: Array, neighbors: int | None = None,
          temperature: float = 1.0, gamma: float | None = None) -> Array:
  """FLARE (Wang, Xiao, Chen, Hu, Lou, Hou, "FLARE: defending federated learning against model
  poisoning attacks via latent space representations", AsiaCCS 2022; the authors' code,
  ning-wang1/flare_poisoning_detection, `detect.py` and `utils/mmd.py`).

  With X_i = `representations[i]` `[m, h]` (client i's model θ − x_i on the server's m root
  inputs, its penultimate-layer features; the simulator computes them):

    D_ij = MMD²_u(X_i, X_j)            Gaussian kernel exp(−γ‖u − v‖²), clipped at 0 (`flare_mmd`)
    N_k(i) = the k clients j ≠ i with the smallest D_ij (ties: the lower index)
    c_j = |{i : j ∈ N_k(i)}|           how many clients chose j
    TS_j = exp(c_j/(τ c̄)) / Σ_l exp(c_l/(τ c̄)),   c̄ = (1/n) Σ_l c_l (= k)
    output = Σ_j TS_j x_j

  k = `neighbors`, or ⌊n/2⌋ − 1 where None: the authors' code takes `argsort(mmd)[:, 1:⌊n/2⌋]`,
  its own column first (MMD 0) and the next ⌊n/2⌋ − 1. τ = `temperature` (1 in the code).
  γ = `gamma`, or 1/h where None.

  Choices where the published codes differ (each read with the search tool, none copied):
  - Trust: the authors' code divides the counts by τ·c̄ before the softmax (so τ is relative to
    the average count k); FLPoison's port does the same. BackFed's uses TS_j = c_j/Σc (no
    exponential) and k = round(n/2) neighbours; those are not offered.
  - Kernel bandwidth: γ = 1/h is scikit-learn's `pairwise_kernels(metric="rbf")` default,
    which the authors' `kernel_mmd` calls without a gamma. FLPoison's port takes a median
    heuristic per pair, BackFed's σ = 1 (γ = 1/2, with a biased-diagonal estimator): set `gamma`.
  - Neighbours: the code's argsort may put another client with MMD 0 (a clipped negative
    estimate) before the client itself, which then counts itself; here a client never chooses
    itself, and ties go to the lower index (a stable sort).
  - Which root inputs: the code takes the first 200 test inputs of class 1 (`aux_data_num`,
    `selected_class`); that is the simulator's choice of root inputs, not this function's.
  Non-finite rows: a client whose update row or representations hold a NaN or ±inf is left out
  of the MMDs, the neighbour choices, the counts and c̄, with trust 0; n above is then the
  number n_v of valid clients, so k = ⌊n_v/2⌋ − 1, and `neighbors` is capped at n_v − 1 (FLARE
  over the valid clients alone, which the tests check). With n_v ≤ 3 the
  default k is 0: every count is 0 and the trust is uniform over the valid clients (the authors'
  code divides by c̄ = 0 there). No valid client: the zero vector. A huge finite update row keeps
  its positive trust (FLARE's weights are never 0) and moves the output by TS_j x_j, as in the
  code; huge finite representations are compared without overflow (`_block_kernel_sums`).
  Cost: O(n²·m²·h) for the kernel sums (n² MMDs of m×m kernel blocks), O(n² log n) for the
  neighbours, one matrix-vector product for the output. Secure aggregation: no — the server
  evaluates every client's model.
  """
  return flare_with_share(updates, representations=representations, neighbors=neighbors,
                          temperature=temperature, gamma=gamma).value


# ----------------------------------------------------------------------------------------------
# CRFL


def crfl(updates: Array, *, key: Array, global_params: Array, model_norm: float = 15.0,
         sigma: float = 0.01) -> Array:
  """CRFL's server step (Xie, Chen, Chen, Li, "CRFL: certifiably robust federated learning
  against backdoor attacks", ICML 2021; the authors' code AI-secure/CRFL, `main.py` and
  `utils/helper.py`): average, clip the new global MODEL to norm ρ, add Gaussian noise.

    θ' = θ − (1/n) Σ_i x_i,       θ'' = θ' · min(1, ρ/‖θ'‖) + N(0, σ² I),
    output u = θ − θ''            (so the server's θ − u is θ''),

  θ = `global_params` (the model the round started from), ρ = `model_norm`, σ = `sigma`, the
  noise drawn from `key`. The defaults are the code's MNIST values (param_clip_thres 15,
  sigma_param 0.01); ρ and σ depend on the model's size and scale, set them per task.

  Choices where the published codes differ:
  - The code's ρ_t grows with the round, min(param_clip_thres, 0.1 t + 2) for MNIST (0.25 t + 4
    for EMNIST, 0.025 t + 2 for LOAN); here ρ is one number for every round (a schedule would
    need the round, which the rule does not see). The certificate (`crfl_certified_radius`)
    takes the ρ_t of every round after the attack, as the code does.
  - The code clips by max_norm/(‖θ'‖ + 1e-6) when ‖θ'‖ > ρ; here exactly ρ/‖θ'‖.
  - The code adds the noise after evaluating the round's model, so its evaluation sees the
    clipped model and the next round starts from the noisy one; here the noise is part of the
    round's output, so the simulator's evaluation sees the noisy model.
  - FLPoison's port clips the aggregated UPDATE, not the model (and adds the noise to the
    update): a different rule, not offered. The code's geometric-median variant
    (aggregation_methods 'geom_median') is not offered either.
  Non-finite rows: the mean cannot leave a row out, so a NaN or ±inf row (or a non-finite θ)
  gives a NaN output, as `mean` does. Huge finite rows: θ' is computed on an exact power-of-two
  scaling of θ and the rows, so clipping bounds the model to norm ρ whatever the rows'
  magnitude (the output stays finite; this is what CRFL's clipping is for).
  Cost: one matrix-vector product for the mean, two passes over `[d]`. Secure aggregation: not
  counted here (`registry.SECURE_AVERAGES`), though the rule reads the rows only through their
  mean, one secure average, and clips and noises that on the server.
  """
  n, d = base.check_updates(updates, "crfl")
  if getattr(global_params, "shape", None) != (d,):
    raise ValueError(f"crfl: global_params must have shape ({d},) (the model the round started "
                     f"from), got {getattr(global_params, 'shape', None)}.")
  _check_positive("crfl", "model_norm", model_norm)
  _check_positive("crfl", "sigma", sigma)
  dtype = updates.dtype
  theta = global_params.astype(dtype)
  # ρ is an operand of the branches below, not a closure: they run under custom_vmap, which
  # cannot close over a traced value (jnp.asarray under jit is one).
  rho = jnp.asarray(model_norm, dtype)

  def clip(v, scale, rho):
    """clip_ρ(v / scale) for v = scale·θ' (scale an exact power of two)."""
    norm = jnp.linalg.norm(v)
    over = norm > rho * scale
    return jnp.where(over, v * (rho / jnp.where(over, norm, 1.0)), v / scale)

  def fast(x, sq, theta, rho):
    return clip(theta - base.weighted_average(x, jnp.ones((n,), dtype)), jnp.ones((), dtype),
                rho)

  def exact(x, theta, rho):
    largest = jnp.maximum(jnp.max(jnp.abs(x)), jnp.max(jnp.abs(theta)))
    scale = base.power_of_two_scale(jnp.where(jnp.isfinite(largest), largest, 0.0), dtype)
    scaled_mean = base.weighted_average(x * scale, jnp.ones((n,), dtype))
    out = clip(theta * scale - scaled_mean, scale, rho)
    ok = jnp.all(base.finite_rows(x)) & jnp.all(jnp.isfinite(theta))
    return jnp.where(ok, out, jnp.nan)

  clipped = base.ordinary_or_exact(updates, fast, exact, theta, rho,
                                   extra_squared_norm=jnp.sum(theta * theta))
  noise = jax.random.normal(key, (d,), dtype) * jnp.asarray(sigma, dtype)
  return theta - (clipped + noise)


def crfl_smoothed_params(key: Array, global_params: Array, *, sigma: float,
                         num_models: int) -> Array:
  """The M = `num_models` smoothed copies θ + N(0, σ_T² I) of the final model `[M, d]` (the
  code's `smooth_model`, one copy per draw), σ_T = `sigma`: the parameter smoothing whose
  majority vote `crfl_certified_radius` certifies."""
  _check_positive("crfl_smoothed_params", "sigma", sigma)
  if isinstance(num_models, bool) or not isinstance(num_models, int) or num_models < 1:
    raise ValueError(f"crfl_smoothed_params: num_models={num_models!r} must be an int >= 1.")
  d = global_params.shape[-1]
  noise = jax.random.normal(key, (num_models, d), global_params.dtype)
  return global_params[None] + jnp.asarray(sigma, global_params.dtype) * noise


class SmoothedPrediction(NamedTuple):
  """Per test input: the smoothed classifier's class and the runner-up, with their counts among
  the M noisy models' predictions."""
  top: Array              # [s] int32 k_A: the most frequent prediction (ties: the lower class)
  top_count: Array        # [s] int32 n_A
  runner_up: Array        # [s] int32 k_B: the most frequent other class (ties: the lower class)
  runner_up_count: Array  # [s] int32 n_B


def crfl_smoothed_predict(predictions: Array, num_classes: int) -> SmoothedPrediction:
  """The vote of M smoothed models: `predictions` `[M, s]` (the class each noisy copy of the
  model predicts for each of s test inputs, ints in [0, num_classes)) → per input the top class
  k_A with its count n_A and the runner-up k_B ≠ k_A with its count n_B (the code's
  `probability_estimation`: a bincount, its argmax, then the argmax with k_A's count zeroed; here
  k_B is never k_A, which the code's argmax over an all-zero count vector can return, with the
  same count 0). p̂_A = n_A/M, p̂_B = n_B/M."""
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
    raise ValueError(f"crfl_smoothed_predict: num_classes={num_classes!r} must be an int >= 2.")
  if getattr(predictions, "ndim", None) != 2:
    raise ValueError(f"crfl_smoothed_predict: predictions must be [M, s], got shape "
                     f"{getattr(predictions, 'shape', None)}.")
  counts = jnp.sum(jax.nn.one_hot(predictions, num_classes, dtype=jnp.int32), axis=0)  # [s, C]
  top = jnp.argmax(counts, axis=1)
  others = jnp.where(jax.nn.one_hot(top, num_classes, dtype=bool), -1, counts)
  runner_up = jnp.argmax(others, axis=1)
  take = lambda c, k: jnp.take_along_axis(c, k[:, None], axis=1)[:, 0]
  return SmoothedPrediction(top.astype(jnp.int32), take(counts, top).astype(jnp.int32),
                            runner_up.astype(jnp.int32),
                            take(counts, runner_up).astype(jnp.int32))


PROBABILITY_BOUNDS = ("hoeffding", "clopper_pearson")


def _beta_quantile(q: Array, a: Array, b: Array, iterations: int = 60) -> Array:
  """x with I_x(a, b) = q (the regularized incomplete beta function, increasing in x), by
  bisection on [0, 1]: 60 halvings reach the float resolution."""
  def step(_, bounds):
    lo, hi = bounds
    mid = (lo + hi) / 2
    below = special.betainc(a, b, mid) < q
    return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

  lo, hi = lax.fori_loop(0, iterations, step, (jnp.zeros_like(q), jnp.ones_like(q)))
  return (lo + hi) / 2


def crfl_probability_bounds(top_count: Array, runner_up_count: Array, num_models: int, *,
                            alpha: float = 0.001, method: str = "hoeffding") -> tuple[Array, Array]:
  """(p_A lower bound, p_B upper bound), each holding with probability ≥ 1 − α, from the counts
  n_A, n_B of M = `num_models` smoothed models' votes.

  "hoeffding" (the authors' `certify_*.py`): p̂ ∓ sqrt(ln(1/α)/(2M)), clipped to [0, 1] (the code
  clips to [1e-8, 1 − 1e-8], which gives a positive radius where p_A's bound is not above p_B's;
  `crfl_certified_radius` gives 0 there).
  "clopper_pearson" (Cohen, Rosenfeld, Kolter, ICML 2019, one-sided exact binomial bounds):
  p_A ≥ Beta⁻¹(α; n_A, M − n_A + 1) (0 when n_A = 0), p_B ≤ Beta⁻¹(1 − α; n_B + 1, M − n_B)
  (1 when n_B = M), the Beta quantile by bisection on the incomplete beta function.
  """
  if method not in PROBABILITY_BOUNDS:
    raise ValueError(f"crfl_probability_bounds: method={method!r} must be one of "
                     f"{', '.join(PROBABILITY_BOUNDS)}.")
  _check_positive("crfl_probability_bounds", "alpha", alpha, high=1.0)
  if isinstance(num_models, bool) or not isinstance(num_models, int) or num_models < 1:
    raise ValueError(f"crfl_probability_bounds: num_models={num_models!r} must be an int >= 1.")
  m = float(num_models)
  n_a = jnp.asarray(top_count, jnp.float32)
  n_b = jnp.asarray(runner_up_count, jnp.float32)
  if method == "hoeffding":
    margin = math.sqrt(math.log(1.0 / alpha) / (2.0 * m))
    return jnp.clip(n_a / m - margin, 0.0, 1.0), jnp.clip(n_b / m + margin, 0.0, 1.0)
  lower = _beta_quantile(jnp.full_like(n_a, alpha), jnp.maximum(n_a, 1.0), m - n_a + 1.0)
  upper = _beta_quantile(jnp.full_like(n_b, 1.0 - alpha), n_b + 1.0, jnp.maximum(m - n_b, 1.0))
  return jnp.where(n_a > 0, lower, 0.0), jnp.where(n_b < m, upper, 1.0)


def crfl_certified_radius(p_a_lower: Array, p_b_upper: Array, *, sigma: float,
                          sigma_smoothing: float, model_norms: Array, attacker_weights: Array,
                          local_steps: float, client_lr: float, scale_factor: float,
                          poison_fraction: float, lipschitz: float) -> Array:
  """CRFL's certified radius: the largest backdoor pattern magnitude ‖δ‖ for which the
  parameter-smoothed model's prediction on an input is certified unchanged (the paper's
  Theorem on parameter smoothing, as the authors' `certify_mnist.py` `cal_prob_bound` computes
  it; that code is what was read here, not the paper's text):

    RAD = sqrt( −ln(1 − (√p_A − √p_B)²) · σ²
                / (2 R (Σ_{i≤R} p_i²) τ² L_Z² γ² η² (q/n)² · Π_{t=t_adv+1}^{T} (2Φ(ρ_t/σ_t) − 1)) )

  p_A = `p_a_lower`, p_B = `p_b_upper` (arrays, broadcast; `crfl_probability_bounds`);
  σ = `sigma`, the training noise of every round before T (also σ_t for t < T);
  σ_T = `sigma_smoothing`, the smoothing noise of the final model (σ_t at t = T);
  ρ_t = `model_norms` `[T − t_adv]`, the clipping norms of rounds t_adv + 1, …, T;
  p_i = `attacker_weights` `[R]`, the aggregation weights of the R attackers (1/N each for
  FedAvg with N clients a round); τ = `local_steps` (the code: local data size / batch size),
  η = `client_lr`, γ = `scale_factor` (the attackers' update scaling), q/n = `poison_fraction`
  (poisoned examples per batch over the batch size), L_Z = `lipschitz` (the code takes
  √(2 + 2ρ + ρ²) with ρ = 3 for MNIST). 2Φ(x) − 1 is computed as erf(x/√2).
  p_A ≤ p_B: no certificate, 0 (the code computes its formula anyway). p_B = 0 with p_A = 1:
  +inf (the code returns 100000 whenever p_A = 1).
  """
  for key, value in (("sigma", sigma), ("sigma_smoothing", sigma_smoothing),
                     ("local_steps", local_steps), ("client_lr", client_lr),
                     ("scale_factor", scale_factor), ("lipschitz", lipschitz)):
    _check_positive("crfl_certified_radius", key, value)
  _check_positive("crfl_certified_radius", "poison_fraction", poison_fraction, high=1.0,
                  high_open=False)
  model_norms = jnp.asarray(model_norms, jnp.float32)
  weights = jnp.asarray(attacker_weights, jnp.float32)
  if model_norms.ndim != 1 or model_norms.shape[0] < 1:
    raise ValueError(f"crfl_certified_radius: model_norms must be [T − t_adv] (one ρ_t per "
                     f"round after the attack, >= 1), got shape {model_norms.shape}.")
  if weights.ndim != 1 or weights.shape[0] < 1:
    raise ValueError(f"crfl_certified_radius: attacker_weights must be [R] (R >= 1 attackers), "
                     f"got shape {weights.shape}.")
  sigmas = jnp.full(model_norms.shape, sigma, jnp.float32).at[-1].set(sigma_smoothing)
  contraction = jnp.prod(special.erf(model_norms / (sigmas * math.sqrt(2.0))))
  attackers = weights.shape[0]
  denominator = (2.0 * attackers * jnp.sum(weights * weights) * local_steps ** 2 * lipschitz ** 2
                 * scale_factor ** 2 * client_lr ** 2 * poison_fraction ** 2 * contraction)
  p_a = jnp.asarray(p_a_lower, jnp.float32)
  p_b = jnp.asarray(p_b_upper, jnp.float32)
  gap = (jnp.sqrt(p_a) - jnp.sqrt(p_b)) ** 2
  numerator = -jnp.log1p(-gap) * sigma ** 2
  return jnp.where(p_a > p_b, jnp.sqrt(numerator / denominator), 0.0)
