"""Exact optima, curvature and the two objectives (expected vs minimax) on convex federated tasks.

A convex task is given by `client_losses(θ) -> [n]`, a JAX function of flat parameters θ `[d]`
(d small: dense d×d Hessians are formed) returning each client's mean loss L_i(θ), ℓ2 term
included. For an honest set S (mask `[n]`, True = honest)

    L_S(θ) = (1/|S|) Σ_{i∈S} L_i(θ),       L_S* = min_θ L_S(θ).

Two objectives over θ are compared (../shared/DESIGN.md):

    expected   min_θ E_{S~μ_H}[L_S(θ)] = min_θ Σ_i w_i L_i(θ),   w_i = E_{S~μ_H}[1{i∈S}/|S|],
    minimax    min_θ max_{|S|=n−f} L_S(θ) = min_θ top_mean(L(θ), n − f).

Every optimum comes with a certificate: the gradient norm at the returned point for the smooth
problems (suboptimality ≤ ‖∇‖²/(2μ) for a μ-strongly convex objective), and a primal−dual gap
for the minimax problem. All computations follow the dtype of `theta0` (float32 by default in JAX;
enable x64 for float64 precision). The jitted programs are cached per task function and options
(`functools.lru_cache`, 16 entries, which keeps those functions and their data alive), so repeated
calls on one task compile once per shape.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Objective = Callable[[jax.Array], jax.Array]     # θ [d] -> scalar
ClientLosses = Callable[[jax.Array], jax.Array]  # θ [d] -> [n]

_STEP_SIZES = 2.0 ** -np.arange(11)  # damped Newton's candidate steps 1, 1/2, ..., 2^-10
_ROUNDING_ULPS = 64                  # objective values closer than this many ulps are tied
_BISECTION_STEPS = 64                # capped-simplex projection: halvings of the shift interval


def minimize(objective: Objective, theta0: jax.Array, *, max_steps: int = 50,
             tol: float = 0.0) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Damped Newton's method for a smooth strongly convex `objective` of a flat vector.

  Each step takes the Newton direction p = −H⁻¹∇ (dense Hessian, `jnp.linalg.solve`), or, when
  that is not a descent direction (∇·p ≥ 0 or non-finite), the gradient step with the Cauchy length
  p = −(‖∇‖²/∇ᵀH∇)∇ (−∇ when ∇ᵀH∇ ≤ 0). The step θ + t·p with the lowest objective among
  t ∈ {1, 1/2, …, 2^-10} (one vmapped evaluation) is taken unless it increases the objective;
  values within 64 ulps of each other count as equal and ties go to the longest step, so near the
  optimum, where the decrease falls below rounding, the full Newton step is taken. Iteration stops
  when ‖∇‖ ≤ `tol`, when every step increases the objective, when a step improves neither the
  objective nor the gradient norm (the floating-point floor; the default `tol` = 0 iterates to
  it), or after `max_steps` steps.

  Pure `lax` loops: jit- and vmap-able (under vmap the loop runs until every lane has stopped;
  a stopped lane is frozen, so its numbers do not depend on the others).

  Returns:
    (θ*, objective(θ*), ‖∇objective(θ*)‖) for the iterate with the smallest gradient norm: the
    optimality certificate, objective(θ*) − min ≤ ‖∇‖²/(2μ) for a μ-strongly convex objective.
  """
  theta0 = jnp.asarray(theta0)
  steps = jnp.asarray(_STEP_SIZES, theta0.dtype)
  rounding = _ROUNDING_ULPS * jnp.finfo(theta0.dtype).eps
  value_and_grad = jax.value_and_grad(objective)
  hessian = jax.hessian(objective)

  def direction(theta, grad):
    h = hessian(theta)
    newton = -jnp.linalg.solve(h, grad)
    curvature = grad @ h @ grad
    cauchy = -grad * jnp.where(curvature > 0, (grad @ grad) / curvature, 1.0)
    descent = (grad @ newton < 0) & jnp.all(jnp.isfinite(newton))
    return jnp.where(descent, newton, cauchy)

  def body(state):
    k, theta, value, grad, best, _ = state
    p = direction(theta, grad)
    trials = jax.vmap(objective)(theta + steps[:, None] * p)
    trials = jnp.where(jnp.isnan(trials), jnp.inf, trials)
    resolution = rounding * jnp.abs(value)
    i = jnp.argmax(trials <= jnp.min(trials) + resolution)
    moved = trials[i] <= value + resolution
    new_theta = jnp.where(moved, theta + steps[i] * p, theta)
    new_value, new_grad = value_and_grad(new_theta)
    norm, new_norm = jnp.linalg.norm(grad), jnp.linalg.norm(new_grad)
    better = new_norm < best[2]
    best = jax.tree.map(lambda b, x: jnp.where(better, x, b), best,
                        (new_theta, new_value, new_norm))
    done = (new_norm <= tol) | ~moved | ((new_value >= value - resolution) & (new_norm >= norm))
    return k + 1, new_theta, new_value, new_grad, best, done

  value0, grad0 = value_and_grad(theta0)
  norm0 = jnp.linalg.norm(grad0)
  state = (0, theta0, value0, grad0, (theta0, value0, norm0), norm0 <= tol)
  *_, best, _ = lax.while_loop(lambda s: (s[0] < max_steps) & ~s[5], body, state)
  return best


def _mask_weights(masks: np.ndarray, dtype) -> np.ndarray:
  """w = mask/|S| per row of `masks [S, n]`; uniform weights on rows with no honest client (so
  the computation stays defined; their results are replaced by NaN)."""
  counts = masks.sum(axis=1, keepdims=True)
  return np.where(counts > 0, masks / np.maximum(counts, 1), 1.0 / masks.shape[1]).astype(dtype)


def _check_masks(masks, num_clients: int | None = None) -> np.ndarray:
  masks = np.asarray(masks)
  if (masks.ndim != 2 or masks.dtype != bool or not masks.shape[0]
      or (num_clients and masks.shape[1] != num_clients)):
    raise ValueError(f"masks must be a boolean array [S >= 1, n], got {masks.dtype} "
                     f"{masks.shape}.")
  return masks


def _map_groups(fn: Callable, rows: np.ndarray, group_size: int) -> tuple[np.ndarray, ...]:
  """`fn` (a jitted batched function of `[G, ...]` returning a tuple of `[G, ...]`) over `rows` in
  groups of G = `group_size`, the last one padded with copies of its first row: one compiled
  program for every group and every number of rows, memory bounded by G."""
  if group_size < 1:
    raise ValueError(f"group_size must be at least 1, got {group_size}.")
  outputs = []
  for start in range(0, len(rows), group_size):
    group = rows[start:start + group_size]
    padded = np.concatenate([group, np.repeat(group[:1], group_size - len(group), axis=0)])
    outputs.append([np.asarray(x)[:len(group)] for x in fn(padded)])
  return tuple(np.concatenate(parts) for parts in zip(*outputs))


@functools.lru_cache(maxsize=16)
def _weighted_minimizer(client_losses: ClientLosses, max_steps: int, tol: float) -> Callable:
  """(weights [G, n], θ0 [d]) -> `minimize` of each w·L(θ) from θ0, jitted and vmapped; cached
  so that repeated calls on one task compile once per shape."""
  def solve(weights, theta0):
    return minimize(lambda theta: weights @ client_losses(theta), theta0, max_steps=max_steps,
                    tol=tol)
  return jax.jit(jax.vmap(solve, in_axes=(0, None)))


@functools.lru_cache(maxsize=16)
def _hessian_extremes(client_losses: ClientLosses) -> Callable:
  """(weights [G, n], θ [d]) -> (λ_max, λ_min) of each ∇²(w·L)(θ), jitted and vmapped; cached."""
  def extremes(weights, theta):
    eigenvalues = jnp.linalg.eigvalsh(jax.hessian(lambda t: weights @ client_losses(t))(theta))
    return eigenvalues[-1], eigenvalues[0]
  return jax.jit(jax.vmap(extremes, in_axes=(0, None)))


def honest_optima(client_losses: ClientLosses, theta0: jax.Array, masks: np.ndarray, *,
                  group_size: int = 32, max_steps: int = 50,
                  tol: float = 0.0) -> dict[str, np.ndarray]:
  """The honest optimum L_S* = min_θ L_S(θ) of every draw S, by `minimize` from `theta0`.

  One jitted computation vmapped over the draws, run in groups of exactly `group_size` masks (the
  last one padded): the same compiled program for every group and every S, memory linear in
  `group_size`. A draw's numbers are bit for bit independent of S and of the draws sharing its
  group; runs with different `group_size` agree to rounding only (XLA's batched kernels differ;
  measured ≤ 2 ulps of the value on a float32 logistic task).

  Args:
    client_losses: θ `[d]` -> per-client losses `[n]`.
    theta0: the common starting point `[d]`; its dtype is the dtype of the computation.
    masks: `[S, n]` boolean, True = honest.

  Returns:
    `value` L_S* `[S]`, `gradient_norm` ‖∇L_S(θ_S*)‖ `[S]` (the certificate) and `theta` θ_S*
    `[S, d]`; NaN for a draw with no honest client.
  """
  masks = _check_masks(masks)
  theta0 = jnp.asarray(theta0)
  solve = _weighted_minimizer(client_losses, max_steps, tol)
  theta, value, norm = _map_groups(lambda w: solve(w, theta0),
                                   _mask_weights(masks, theta0.dtype), group_size)
  empty = ~masks.any(axis=1)
  theta[empty], value[empty], norm[empty] = np.nan, np.nan, np.nan
  return {"value": value, "gradient_norm": norm, "theta": theta}


def curvature(client_losses: ClientLosses, theta: jax.Array, masks: np.ndarray, *,
              group_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
  """Extreme eigenvalues (λ_max, λ_min) of the dense Hessian ∇²L_S(θ) of every draw, `[S]` each.

  What they certify depends on the task:
  - least squares (L_i quadratic): the Hessian is constant, so λ_max and λ_min are exactly the
    global smoothness L and strong convexity μ of L_S, at any θ.
  - two-class softmax logistic regression with λ/2·‖θ‖² on every parameter: per example, the
    Hessian of the cross-entropy in the logits is p(1−p)·[[1,−1],[−1,1]], largest in Loewner order
    at p = 1/2, i.e. at θ = 0; so ∇²L_S(θ) ≼ ∇²L_S(0) for every θ and λ_max at θ = 0 is the exact
    global L. The direction adding one vector to every class-weight column leaves every logit
    difference, hence the data loss, unchanged: its curvature is exactly λ, so μ = λ_min = λ at
    every θ (for any number of classes).
  - more than two classes: λ_max at θ = 0 is NOT an upper bound in general (two classes sharing
    the probability mass curve more than the uniform point); use `softmax_smoothness_bound`.
  NaN for a draw with no honest client.
  """
  masks = _check_masks(masks)
  theta = jnp.asarray(theta)
  extremes = _hessian_extremes(client_losses)
  largest, smallest = _map_groups(lambda w: extremes(w, theta),
                                  _mask_weights(masks, theta.dtype), group_size)
  empty = ~masks.any(axis=1)
  largest[empty], smallest[empty] = np.nan, np.nan
  return largest, smallest


def softmax_smoothness_bound(second_moment_max_eig: float, l2: float) -> float:
  """A valid global smoothness constant of ℓ2-regularized softmax regression with any number of
  classes: L ≤ λ + ½·λ_max((1/m) Σ_j x̃_j x̃_jᵀ), x̃ = (x, 1) (the bias input appended).

  The cross-entropy Hessian in the logits, diag(p) − ppᵀ, is dominated by ½(I − 11ᵀ/K) whose
  largest eigenvalue is ½ (Böhning, Ann. Inst. Stat. Math. 1992); the Hessian in the weights is
  its Kronecker product with x̃x̃ᵀ, averaged over examples. For an honest set S, pass the largest
  eigenvalue of the examples' second moment averaged as L_S averages them (or the largest over
  clients, which bounds it).
  """
  return l2 + 0.5 * second_moment_max_eig


def top_mean(losses: jax.Array, k: int) -> jax.Array:
  """The mean of the k largest entries along the last axis of `losses [..., n]`.

  Exactly max_{|S|=k} (1/k) Σ_{i∈S} L_i = max_{|S|=k} L_S: swapping a member of S for a larger
  non-member never lowers the sum, so the top k is a maximizer; no enumeration of C(n, k) sets.
  """
  losses = jnp.asarray(losses)
  if not 1 <= k <= losses.shape[-1]:
    raise ValueError(f"top_mean needs 1 <= k <= n={losses.shape[-1]}, got k={k}.")
  return jnp.mean(lax.top_k(losses, k)[0], axis=-1)


def _check_weights(weights, num_clients: int | None = None) -> np.ndarray:
  w = np.asarray(weights, np.float64)
  if (w.ndim != 1 or (num_clients and len(w) != num_clients) or not np.all(np.isfinite(w))
      or np.any(w < 0) or abs(w.sum() - 1.0) > 1e-6):
    raise ValueError("weights must be a finite non-negative vector [n] summing to 1, got "
                     f"shape {w.shape} with sum {w.sum() if w.size else 0.0}.")
  return w


def expected_objective_minimizer(client_losses: ClientLosses, theta0: jax.Array,
                                 weights: np.ndarray, *, max_steps: int = 50,
                                 tol: float = 0.0) -> dict[str, jax.Array]:
  """θ_E = argmin_θ Σ_i w_i L_i(θ), the minimizer of the expected objective E_{S~μ_H}[L_S(θ)] for
  w_i = E_{S~μ_H}[1{i∈S}/|S|] (normalized to sum to 1 when P(S = ∅) > 0; the caller computes
  them from μ_H).

  Returns `theta` θ_E, `value` min_θ Σ_i w_i L_i(θ) and its certificate `gradient_norm`.
  """
  theta0 = jnp.asarray(theta0)
  w = jnp.asarray(_check_weights(weights), theta0.dtype)
  theta, value, norm = _weighted_minimizer(client_losses, max_steps, tol)(w[None], theta0)
  return {"theta": theta[0], "value": value[0], "gradient_norm": norm[0]}


def project_capped_simplex(y: jax.Array, k: int) -> jax.Array:
  """The Euclidean projection of `y [n]` onto C_k = {c : 0 ≤ c_i ≤ 1/k, Σ c_i = 1} (1 ≤ k ≤ n).

  Π(y) = clip(y − τ, 0, 1/k) with τ the root of the decreasing s(τ) = Σ clip(y_i − τ, 0, 1/k) − 1,
  bracketed by [min y − 1/k, max y] and found by bisection. The shift is then solved exactly in
  the frame y − τ, on the coordinates strictly inside (0, 1/k) there, so Σ c_i = 1 to rounding
  however large y is; with none inside, the projection is the vertex 1/k on the k largest entries
  (ties: the lowest index).
  """
  y = jnp.asarray(y)
  cap = jnp.asarray(1.0 / k, y.dtype)

  def halve(_, bracket):
    low, high = bracket
    mid = 0.5 * (low + high)
    above = jnp.sum(jnp.clip(y - mid, 0, cap)) > 1
    return jnp.where(above, mid, low), jnp.where(above, high, mid)

  low, high = lax.fori_loop(0, _BISECTION_STEPS, halve, (jnp.min(y) - cap, jnp.max(y)))
  shifted = y - 0.5 * (low + high)
  free = (shifted > 0) & (shifted < cap)
  count = jnp.sum(free)
  tau = (jnp.sum(jnp.where(free, shifted, 0)) + cap * jnp.sum(shifted >= cap) - 1) / jnp.maximum(
      count, 1)
  vertex = jnp.zeros_like(y).at[lax.top_k(y, k)[1]].set(cap)
  return jnp.where(count > 0, jnp.clip(shifted - tau, 0, cap), vertex)


class _DualAscent(NamedTuple):
  """The state of `minimax_minimizer`'s projected gradient ascent on the dual."""
  steps: jax.Array
  c: jax.Array          # [n] the current dual point, in the capped simplex
  theta: jax.Array      # [d] θ*(c), the next warm start
  losses: jax.Array     # [n] L(θ*(c)) = ∇g(c)
  eta: jax.Array        # the step length of the next step
  primal: jax.Array     # the best upper bound top_mean(L(θ*(c)), k) so far ...
  theta_max: jax.Array  # ... and its θ
  dual: jax.Array       # the best lower bound g(c) so far ...
  c_max: jax.Array      # ... and its c
  done: jax.Array


def minimax_minimizer(client_losses: ClientLosses, theta0: jax.Array, num_clients: int, f: int,
                      *, iterations: int = 500, rtol: float = 1e-7, max_steps: int = 50,
                      tol: float = 0.0) -> dict[str, jax.Array]:
  """θ_max = argmin_θ max_{|S|=n−f} L_S(θ), with a primal−dual certificate.

  With k = n − f, max_{|S|=k} L_S(θ) = top_mean(L(θ), k) = max_{c∈C} c·L(θ) over the capped
  simplex C = {0 ≤ c_i ≤ 1/k, Σ c_i = 1} (its vertices are the uniform weights on k-subsets), so
  no enumeration of the C(n, f) subsets is needed. c·L(θ) is convex in θ and linear in c, and C is
  compact and convex, so by the minimax theorem (Sion, 1958)

      min_θ max_{c∈C} c·L(θ) = max_{c∈C} g(c),    g(c) = min_θ c·L(θ)  (concave).

  The dual is solved by projected gradient ascent c ← Π_C(c + η·∇g(c)): by Danskin's theorem
  ∇g(c) = L(θ*(c)) (θ*(c) unique for strongly convex c·L, and g then smooth), the inner
  minimization is `minimize` warm-started at the previous θ*, Π_C is `project_capped_simplex`,
  and η is the Barzilai–Borwein step ‖Δc‖²/(−Δ∇g·Δc) of the last move (the spectral projected
  gradient of Birgin, Martínez & Raydan, SIAM J. Optim. 2000; the first step moves each c_i by at
  most 1/k; η doubles when the measured curvature is not positive). It uses gradients only, never
  differences of g, whose changes near the optimum fall below float32 rounding. Every iterate
  gives an upper bound top_mean(L(θ*(c)), k) and a lower bound g(c) of the min-max value;
  iteration stops when the best ones are within `rtol`·|primal|, when c is a fixed point (then
  optimal), or after `iterations` steps. In float32 the gap's floor is about 1e-7 relative, so
  the loop may run to `iterations` there; in float64 small problems stop within tens of steps.

  Returns:
    `theta` θ_max (the iterate with the best upper bound), `primal` its top_mean(L(θ_max), n − f),
    `dual` the best g(c) (exact up to the inner certificate ‖∇‖²/(2μ) and rounding), `gap` =
    primal − dual, `weights` that c (a worst-case mixture of clients) and `iterations`.
  """
  if not 0 <= f < num_clients:
    raise ValueError(f"minimax needs 0 <= f < n={num_clients}, got f={f}.")
  end = _dual_ascent(client_losses, num_clients, f, iterations, rtol, max_steps, tol)(
      jnp.asarray(theta0))
  return {"theta": end.theta_max, "primal": end.primal, "dual": end.dual,
          "gap": end.primal - end.dual, "weights": end.c_max, "iterations": end.steps}


@functools.lru_cache(maxsize=16)
def _dual_ascent(client_losses: ClientLosses, n: int, f: int, iterations: int, rtol: float,
                 max_steps: int, tol: float) -> Callable[[jax.Array], _DualAscent]:
  """θ0 -> the final state of `minimax_minimizer`'s dual ascent, jitted; cached per task."""
  k = n - f
  cap = 1.0 / k

  def inner(c, theta):
    theta, value, _ = minimize(lambda t: c @ client_losses(t), theta, max_steps=max_steps,
                               tol=tol)
    return theta, value, client_losses(theta)

  def ascend(state: _DualAscent) -> _DualAscent:
    c = project_capped_simplex(state.c + state.eta * (state.losses - jnp.mean(state.losses)), k)
    theta, value, losses = inner(c, state.theta)
    move, change = c - state.c, losses - state.losses
    curvature = -(change @ move)
    eta = jnp.where(curvature > 0, (move @ move) / curvature, 2 * state.eta)
    primal = top_mean(losses, k)
    better_primal, better_dual = primal < state.primal, value > state.dual
    primal, dual = jnp.minimum(primal, state.primal), jnp.maximum(value, state.dual)
    return _DualAscent(
        steps=state.steps + 1, c=c, theta=theta, losses=losses, eta=eta, primal=primal,
        theta_max=jnp.where(better_primal, theta, state.theta_max), dual=dual,
        c_max=jnp.where(better_dual, c, state.c_max),
        done=jnp.all(move == 0) | (primal - dual <= rtol * jnp.abs(primal)))

  def solve(theta0):
    c = jnp.full((n,), 1.0 / n, theta0.dtype)
    theta, value, losses = inner(c, theta0)
    spread = jnp.max(losses) - jnp.min(losses)
    start = _DualAscent(
        steps=jnp.asarray(0), c=c, theta=theta, losses=losses,
        eta=jnp.where(spread > 0, cap / spread, 1.0).astype(c.dtype),
        primal=top_mean(losses, k), theta_max=theta, dual=value, c_max=c,
        done=jnp.asarray(False))
    return lax.while_loop(lambda s: (s.steps < iterations) & ~s.done, ascend, start)

  return jax.jit(solve)


def compare_objectives(client_losses: ClientLosses, theta0: jax.Array, weights: np.ndarray,
                       num_clients: int, f: int, masks: np.ndarray | None = None,
                       **minimax_options) -> dict[str, jax.Array | np.ndarray]:
  """The expected objective against the minimax one on a convex task.

  For θ_E (`expected_objective_minimizer`) and θ_max (`minimax_minimizer`): their expected honest
  loss Σ_i w_i L_i(θ) = E_{S~μ_H}[L_S(θ)] and their worst-case loss top_mean(L(θ), n − f) =
  max_{|S|=n−f} L_S(θ); `min_expected` = min_θ E[L_S(θ)] and `min_max` = min_θ max_{|S|=n−f} L_S(θ)
  (its upper estimate; `min_max_gap` certifies it).

  When μ_H puts all its mass on |S| ≥ n − f, min_expected ≤ min_max: for |S| = m ≥ k = n − f,
  L_S(θ) ≤ top_mean(L(θ), m) ≤ top_mean(L(θ), k), so the inequality holds at every θ and survives
  the expectation and the minimum. With mass on smaller honest sets it can fail (a small honest
  set of high-loss clients weighs more than any n − f set); that is a property of the objectives,
  not an error.

  With `masks [S, n]` (draws of μ_H), also the sampled means over the draws of L_S(θ_E) and
  L_S(θ_max) (draws with no honest client left out) and of the honest optimum L_S* (the loss of an
  oracle knowing S: E[L_S*] ≤ min_θ E[L_S(θ)]). `minimax_options` go to `minimax_minimizer`.
  """
  k = num_clients - f
  weights = _check_weights(weights, num_clients)
  expected = expected_objective_minimizer(client_losses, theta0, weights)
  minimax = minimax_minimizer(client_losses, theta0, num_clients, f, **minimax_options)
  w = jnp.asarray(weights, expected["theta"].dtype)
  at_expected = client_losses(expected["theta"])
  at_minimax = client_losses(minimax["theta"])
  out = {
      "theta_expected": expected["theta"],
      "theta_minimax": minimax["theta"],
      "expected_loss_at_theta_expected": w @ at_expected,
      "worst_case_loss_at_theta_expected": top_mean(at_expected, k),
      "expected_loss_at_theta_minimax": w @ at_minimax,
      "worst_case_loss_at_theta_minimax": top_mean(at_minimax, k),
      "min_expected": expected["value"],
      "min_expected_gradient_norm": expected["gradient_norm"],
      "min_max": minimax["primal"],
      "min_max_gap": minimax["gap"],
  }
  if masks is not None:
    masks = _check_masks(masks, num_clients)
    drawn = masks[masks.any(axis=1)]
    sample_weights = jnp.asarray(_mask_weights(drawn, w.dtype))
    out["sampled_loss_at_theta_expected"] = jnp.mean(sample_weights @ at_expected)
    out["sampled_loss_at_theta_minimax"] = jnp.mean(sample_weights @ at_minimax)
    out["sampled_oracle_loss"] = np.mean(honest_optima(client_losses, theta0, drawn)["value"])
  return out
