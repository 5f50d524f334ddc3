"""Theory beside experiment for one run: per draw the (G², B²) of its honest set, κ, the predicted
robust D-GD bound and its Byzantine term, its validity, the measured error and their ratios;
summaries over μ_H.

(G², B²) come from every round t < T (h_t, u_t recorded by training.Simulator at each round's
model θ_t: `trajectory`): G²(B²) = max_t (h_t − B²u_t)₊, the pair on that curve minimizing the
bound (theory.bounds.best_pair).

Which bound and which error (`error_kind`):
- `excess_loss` — convex synthetic tasks: the μ-PL bound on L_S(θ_T) − L_S*, with L_S* solved per
  draw (theory.convex), for
  - least squares (`model="linear_regression"`, any `training.l2`): the Hessian is constant, so
    L_S = λ_max and μ_S = λ_min of it are exact per draw; a draw whose μ_S is 0 (rank-deficient
    honest data and no ℓ2; float32 rounding of 0 included) has no μ-PL bound and is invalid
    (`pl_constant_zero`);
  - ℓ2-regularized logistic regression (`model="logistic"` with `training.l2 > 0`, μ-strongly
    convex hence μ-PL): μ = λ exact and L exact for two classes (Hessian at θ = 0 dominates every
    other; more classes: the bound λ + ½λ_max of the honest second-moment matrix);
- `gradient_norm` — every other model: the non-convex bound on the mean of ‖∇L_S(θ_t)‖² over the
  rounds after a burn-in, t₀ ≤ t < T (t₀: the last evaluation round at or before T/2, `burn_in`),
  which is the theorem run from θ_t₀ for T − t₀ rounds, with L_S(θ_t₀) − L_S* ≤ L_S(θ_t₀) (the
  loss is ≥ 0) and L estimated by Hessian power iteration at θ_T (`honest_smoothness`, a
  documented estimate, not a guarantee). Averaged from θ_0, the measured error is the
  optimization transient (the same for every rule); after the burn-in it is the level training
  settles at, which is what the Byzantine term predicts.
Beside the bound, its Byzantine term κG²/(1 − κB²) (over 2μ on a convex task), the part that does
not vanish with T, and the ratio of the Byzantine term to what the attack adds (`byzantine_ratio`,
`compared`): on a non-convex task with the honest-only baseline on the same draws
(`estimators.honest_optimum`, which then records h_t, u_t too), the `excess` of the error over
the baseline's (the same mean after the burn-in): where training has not settled by T/2 (digits
at η = 0.05: ‖∇L_S‖² stays near 0.15 for 200 rounds, for every rule) the transient is shared with
the baseline and cancels; else the error itself (on a convex task L_S(θ_T) − L_S* is already an
excess over the optimum).

Premises: the theorems are about D-GD (full-batch gradients, one local step, no momentum, plain
SGD at the server) with step 1/L. A run with momentum, minibatches or several local steps still
gets its bound computed, and `premises` says which assumption fails; results.format_theory then
prints one line pointing to the theory configurations instead of the bounds. Under D-GD the step
is η = client_lr·server_lr; a draw with η ≤ 1/L_S uses L = 1/η in the bound (an L_S-smooth
function is (1/η)-smooth), a draw with η > 1/L_S is invalid (step too large).

Validity per draw (REFERENCE.md): b ≤ f and κB² < 1, plus the step condition under D-GD, L and
G² defined, and μ_S > 0 on a convex task. A diverged draw's error is +inf (never dropped from
E[error]); tightness is left undefined where the measured error is ≤ 0 (rounding), and those
draws are counted.

Breakdown: no per-draw flag. f/n ≥ 1/(2 + B²) is a property of the (G, B) class, and a draw with
a finite trajectory lies in a class below breakdown (B² = 0, G² = max_t h_t), so no such draw is
past it (theory.bounds); `breakdown_b2` = (n − 2f)/f, the B² from which the declared f is past
breakdown, is reported instead.

κ: the published upper bound for the pipeline (`aggregators.robustness.kappa_upper_bound`) gives
`bound`. The attack's ratio measured in the run (theory.robustness: max ratio over rounds and
draws with b = f) is not a robustness coefficient; `bound_plugin` is a data-dependent bound with
κ = max(attack's ratio, f/(n − 2f)) (never below the lower bound every rule obeys): it assumes
the attack seen is the worst, and is no rule's guarantee.
"""

from __future__ import annotations

from typing import Any
import hashlib
import warnings

import jax.numpy as jnp
import numpy as np

from fedjax_robust import evaluation
from fedjax_robust.aggregators import robustness as published
from fedjax_robust.theory import bounds
from fedjax_robust.theory import convex
from fedjax_robust.theory import heterogeneity
from fedjax_robust.theory import robustness as measured

TIGHTNESS_QUANTILES = (0.1, 0.5, 0.9)


def premises(job) -> dict:
  """Whether the run is robust D-GD, the step η, and the failed assumptions if not."""
  t = job.training
  reasons = []
  if t.local_steps != 1:
    reasons.append(f"local_steps={t.local_steps} (D-GD: 1)")
  if t.batch_size > 0:
    reasons.append(f"minibatches of {t.batch_size} (D-GD: full batch, batch_size <= 0)")
  if t.client_momentum:
    reasons.append(f"client_momentum={t.client_momentum:g} (D-GD: 0)")
  if t.server_optimizer != "sgd" or t.server_momentum:
    reasons.append(f"server optimizer {t.server_optimizer} with momentum {t.server_momentum:g} "
                   "(D-GD: plain SGD)")
  if t.weighted_aggregation:
    reasons.append("weighted aggregation (the theorems use unweighted honest means)")
  privacy_kind = job.privacy.kind
  if privacy_kind != "none":
    reasons.append(f"privacy.kind={privacy_kind!r} (clipping and noise: D-GD has neither)")
  if job.secure_aggregation.group_size:
    reasons.append(f"secure aggregation over groups of {job.secure_aggregation.group_size} (the "
                   "rule's κ is on the group means, not on the clients' rows)")
  if t.client_sampling == "poisson" and t.clients_per_round:
    reasons.append("Poisson client sampling (a random number of clients per round)")
  return {"dgd": not reasons, "step": float(t.client_lr * t.server_lr), "reasons": reasons}


def is_convex_task(job) -> bool:
  """Convex task with exact constants: least squares (with or without ℓ2), or ℓ2-regularized
  logistic regression."""
  return (is_least_squares(job)
          or (job.model == "logistic" and job.training.l2 > 0))


def is_least_squares(job) -> bool:
  """A linear model with the squared loss: L_S is quadratic, its Hessian constant."""
  return job.model == "linear_regression"


# One `client_losses` function per (simulator, training data content), so theory.convex's
# compiled solvers (cached per function) are reused across runs and sweep points on the same data,
# and never applied to other data (a cached simulator does not depend on the seed, the data do).
_LOSSES: dict[tuple[int, str], tuple[Any, Any]] = {}


def _data_digest(train) -> str:
  digest = hashlib.sha256()
  for a in (train.x, train.y, train.counts):
    digest.update(np.ascontiguousarray(np.asarray(a)).tobytes())
  return digest.hexdigest()


def _client_losses(sim, fed):
  key = (id(sim), _data_digest(fed.train))
  if key not in _LOSSES or _LOSSES[key][0] is not sim:
    train = fed.train
    _LOSSES[key] = (sim, lambda theta: sim.client_metrics(theta, train)[0])
  return _LOSSES[key][1]


def convex_constants(job, fed, sim, masks: np.ndarray) -> dict[str, np.ndarray]:
  """Exact per-draw constants of a convex task's honest objective L_S (`[S]` each): `optimum`
  L_S* (damped Newton from 0, with its certificate `optimum_gradient_norm`), `smoothness` L_S and
  `pl` μ_S (`smoothness_exact` says whether L_S is exact or a bound):
  - least squares: the constant Hessian (1/|S|) Σ_{i∈S} (1/m_i) X̃_iᵀX̃_i + λI (x̃ = (x, 1))
    gives L_S = λ_max and μ_S = λ_min exactly (theory.convex.curvature); a λ_min within float32
    rounding of 0 (≤ d·ε·λ_max) is reported as μ_S = 0 (no μ-PL bound: `per_draw` marks it);
  - ℓ2 logistic regression: μ_S = λ (exact: the logits are invariant to adding one vector to
    every class column, whose curvature is λ), L_S for two classes exact, λ_max of ∇²L_S(0); for
    more, the valid bound λ + ½λ_max((1/|S|) Σ_{i∈S} (1/m_i) Σ_j x̃_j x̃_jᵀ)."""
  losses = _client_losses(sim, fed)
  theta0 = jnp.zeros((sim.num_params,), jnp.float32)
  # Each distinct honest set solved once (a worst-case run repeats one mask S times).
  masks, inverse = np.unique(np.asarray(masks, bool), axis=0, return_inverse=True)
  inverse = inverse.reshape(-1)
  optima = convex.honest_optima(losses, theta0, masks)
  l2 = float(job.training.l2)
  pl = np.full(len(masks), l2)
  if is_least_squares(job):
    smoothness, smallest = convex.curvature(losses, theta0, masks)
    resolution = sim.num_params * np.finfo(np.float32).eps * smoothness
    # Within rounding of 0: μ_S = λ (exact, the ℓ2 term), 0 without it. NaN (no honest client)
    # stays NaN.
    pl = np.where(smallest <= resolution, l2, smallest)
    exact = True
  elif fed.num_classes == 2:
    smoothness, _ = convex.curvature(losses, theta0, masks)
    exact = True
  else:
    x = np.asarray(fed.train.x, np.float64).reshape(fed.train.x.shape[0], fed.train.x.shape[1], -1)
    counts = np.asarray(fed.train.counts)
    valid = np.arange(x.shape[1])[None, :] < counts[:, None]
    xt = np.concatenate([x, np.ones(x.shape[:2] + (1,))], axis=2) * valid[..., None]
    moments = np.einsum("nmi,nmj->nij", xt, xt) / counts[:, None, None]   # [n, p, p]
    h = masks.astype(np.float64)
    per_set = np.einsum("sn,nij->sij", h, moments) / np.maximum(h.sum(1), 1)[:, None, None]
    smoothness = convex.softmax_smoothness_bound(np.linalg.eigvalsh(per_set)[:, -1], l2)
    exact = False
  return {"optimum": optima["value"][inverse],
          "optimum_gradient_norm": optima["gradient_norm"][inverse],
          "smoothness": np.asarray(smoothness, np.float64)[inverse],
          "pl": np.asarray(pl, np.float64)[inverse], "smoothness_exact": exact}


def objectives(job, fed, sim, masks: np.ndarray, weights: np.ndarray | None = None) -> dict:
  """The seed's two objectives solved exactly on a convex task (theory.convex.compare_objectives):
  min_θ E_{S~μ_H} L_S(θ) with w_i = E[1{i∈S}/|S|] (exact weights when given, else estimated from
  the draws `masks`), and min_θ max_{|S|=n−f} L_S(θ), each minimizer's expected and worst-case
  honest loss, and whether μ_H puts mass on b > f (then min E ≤ min max need not hold)."""
  masks = np.asarray(masks, bool)
  if weights is None:
    h = masks[masks.any(axis=1)].astype(np.float64)
    weights = np.mean(h / h.sum(1, keepdims=True), axis=0)
  weights = np.asarray(weights, np.float64) / np.sum(weights)
  out = convex.compare_objectives(_client_losses(sim, fed), jnp.zeros((sim.num_params,)),
                                  weights, job.num_clients, job.f, masks)
  out = {k: float(v) for k, v in out.items() if np.ndim(v) == 0}
  out["weights"] = weights.tolist()
  out["p_b_gt_f"] = float(np.mean((~masks).sum(1) > job.f))
  return out


def trajectory(run, num_rounds: int) -> tuple[np.ndarray, np.ndarray]:
  """(h_t, u_t) `[T, S]` of every round t < T, from the run's per-round aux (training.ROUND_AUX,
  `[E, S, e]`: E evaluation steps of e rounds each)."""
  out = []
  for key in ("honest_heterogeneity", "honest_gradient_sq"):
    a = np.asarray(run.aux[key], np.float64)
    steps, draws, every = a.shape
    if steps * every != num_rounds:
      raise ValueError(f"{key}: {steps} × {every} rounds recorded, the run has {num_rounds}.")
    out.append(a.transpose(0, 2, 1).reshape(num_rounds, draws))
  return out[0], out[1]


def burn_in(num_rounds: int, eval_every: int) -> int:
  """t₀ of the non-convex error: the last evaluation round at or before T/2 (its loss L_S(θ_t₀)
  is measured, so the bound can restart there); 0 when T < 2e."""
  return eval_every * ((num_rounds // 2) // eval_every)


def per_draw(job, run, counts: np.ndarray, *, exact: dict | None = None,
             spec: str | None = None, reference=None) -> dict[str, Any]:
  """Every per-draw theory quantity of one aggregator's run `[S]`, and the run-level κ values.

  `exact` (convex tasks): per-draw `optimum` L_S*, `smoothness` L_S and `pl` μ_S. Without it L_S
  is the run's power-iteration estimate and the non-convex bound is used, on the rounds after
  the burn-in t₀ (`burn_in`). `reference`: the honest-only run on the same draws (recording
  h_t, u_t too); on a non-convex task the error's `excess` over its error (the same mean of
  ‖∇L_S(θ_t)‖² after the burn-in, without Byzantine clients) is then what the Byzantine term is
  compared with (`byzantine_ratio`; `compared` says which)."""
  spec = spec or run.spec
  n, f, T = job.num_clients, job.f, job.training.num_rounds
  counts = np.asarray(counts)
  every = job.training.eval_every
  h, u = trajectory(run, T)   # [T, S]: every round t < T
  loss = np.asarray(run.metrics["honest_loss"], np.float64)  # [E + 1, S]: rounds 0, e, ..., T
  kappa_ratio = np.full(len(counts), np.nan)
  if "kappa_ratio" in run.aux and run.aux["kappa_ratio"].size:
    with warnings.catch_warnings():  # a draw whose ratio is undefined every round stays NaN
      warnings.simplefilter("ignore", RuntimeWarning)
      kappa_ratio = np.nanmax(np.asarray(run.aux["kappa_ratio"], np.float64), axis=0)
  kappas = measured.pipeline_kappa(kappa_ratio, counts, f)
  bounds_info = published.kappa_bounds(spec, n, f)
  kappa_up = bounds_info["upper"]
  # The data-dependent κ: the attack's ratio, never below the universal lower bound f/(n − 2f).
  kappa_plugin = (max(kappas["attack_ratio"], bounds_info["lower"])
                  if np.isfinite(kappas["attack_ratio"]) else float("nan"))
  prem = premises(job)
  convex = exact is not None
  start = 0
  if convex:
    smooth = np.asarray(exact["smoothness"], np.float64)
    pl_zero = np.asarray(exact["pl"], np.float64) == 0  # no μ-PL bound: the draw is invalid
    pl = np.where(pl_zero, np.nan, np.asarray(exact["pl"], np.float64))
    optimum = np.asarray(exact["optimum"], np.float64)
    gap0 = loss[0] - optimum
    error = loss[-1] - optimum
    error_kind = "excess_loss"
  else:
    smooth = np.asarray(run.final.get("honest_smoothness", np.full(len(counts), np.nan)),
                        np.float64)
    pl = None
    # After the burn-in: the mean of ‖∇L_S(θ_t)‖² over t₀ ≤ t < T, bounded by the theorem run
    # from θ_t₀ for T − t₀ rounds; L_S* ≥ 0 for cross-entropy, so L_S(θ_t₀) bounds the gap.
    start = burn_in(T, every)
    gap0 = loss[start // every]
    error = np.mean(u[start:], axis=0)
    error_kind = "gradient_norm"
  rounds = T - start
  # Diverged draws: their error is +inf (as their honest loss), never dropped from E[error].
  diverged = (np.asarray(run.metrics["diverged"][-1]) > 0 if "diverged" in run.metrics
              else np.zeros(len(counts), bool))
  empty = counts == n
  error = np.where(empty, np.nan, np.where(diverged, np.inf, error))
  # What the Byzantine term is compared with: the excess of the error over the honest-only
  # run's on the same draws where there is one (non-convex: the optimization transient, shared
  # with the baseline, cancels), else the error itself (convex: L_S(θ_T) − L_S* is already an
  # excess over the optimum).
  by_excess = not convex and reference is not None
  excess = np.full(len(counts), np.nan)
  if by_excess:
    with np.errstate(invalid="ignore"):  # inf − inf: a diverged baseline leaves it undefined
      excess = error - np.mean(trajectory(reference, T)[1][start:], axis=0)
  compared = excess if by_excess else error
  step_ok = np.ones(len(counts), bool)
  smooth_used = smooth
  if prem["dgd"]:
    step_ok = ~(prem["step"] * smooth > 1.0)  # an undefined L is its own reason, below
    smooth_used = np.maximum(smooth, 1.0 / prem["step"])

  def bound_fn(kappa):
    if convex:
      return lambda g2, b2: bounds.pl_bound(kappa, g2, b2, smooth_used, pl, gap0, rounds)
    return lambda g2, b2: bounds.nonconvex_bound(kappa, g2, b2, smooth_used, gap0, rounds)

  def evaluate(kappa):
    """The pair minimizing the bound, the bound there and its Byzantine term (the bound
    without its transient: κG²/(1 − κB²), over 2μ on a convex task)."""
    if kappa is None or not np.isfinite(kappa):
      nan = np.full(len(counts), np.nan)
      return {"g2": nan, "b2": nan, "bound": nan, "byzantine": nan}
    best = bounds.best_pair(kappa, h, u, bound_fn(kappa))
    best["byzantine"] = (bounds.pl_byzantine_term(kappa, best["g2"], best["b2"], pl) if convex
                         else bounds.nonconvex_byzantine_term(kappa, best["g2"], best["b2"]))
    return best

  main = evaluate(kappa_up)
  plugin = evaluate(kappa_plugin)
  g2_at_b0 = heterogeneity.dissimilarity(h, u, np.zeros(1))[0]
  defined = np.isfinite(g2_at_b0)
  # The draw's (G², B²) pair: the one minimizing the bound with the published κ, else with the
  # data-dependent κ, else (no κ at all) the pair at B² = 0.
  if kappa_up is not None:
    pair = main
  elif np.isfinite(kappa_plugin):
    pair = plugin
  else:
    pair = {"g2": g2_at_b0, "b2": np.where(defined, 0.0, np.nan)}

  def validity(kappa, values):
    reasons = {"b_gt_f": counts > f, "undefined": ~np.isfinite(values["g2"]),
               "smoothness_undefined": ~np.isfinite(smooth),
               "step_gt_1_over_L": ~step_ok,
               "kappa_b2_ge_1": ~((np.inf if kappa is None else kappa) * values["b2"] < 1)}
    if convex:
      reasons["pl_constant_zero"] = pl_zero
    valid = ~np.any(np.stack(list(reasons.values())), axis=0)
    return valid, reasons

  valid, reasons = validity(kappa_up, main)
  valid_plugin, _ = validity(kappa_plugin, plugin)
  out = {
      "error_kind": error_kind, "premises": prem, "convex": convex,
      "burn_in": start, "rounds": rounds,
      "compared": "excess" if by_excess else "error", "excess": excess,
      "kappa": {**bounds_info, **kappas, "plugin": kappa_plugin},
      "kappa_ratio": kappa_ratio, "g2": pair["g2"], "b2": pair["b2"],
      "g2_at_b0": g2_at_b0, "smoothness": smooth, "error": error,
      "bound": main["bound"], "bound_byzantine": main["byzantine"], "valid": valid,
      "invalid_reasons": reasons,
      "bound_plugin": plugin["bound"], "bound_byzantine_plugin": plugin["byzantine"],
      "valid_plugin": valid_plugin,
      # Breakdown (f/n ≥ 1/(2 + B²)) is a property of a (G, B) class: no draw with a finite
      # trajectory is past it (module docstring), so there is no per-draw breakdown; the B²
      # beyond which the declared f/n is past breakdown is reported instead.
      "breakdown_b2": bounds.breakdown_b2(f, n),
  }
  # Ratios only where the measured value is positive and finite: a float32 excess loss at
  # rounding level (≤ 0), or a rule's error at or below the honest-only run's, has no meaningful
  # ratio; such draws are counted (`error_nonpositive`, `compared_nonpositive`).
  measurable = np.isfinite(error) & (error > 0)
  comparable = np.isfinite(compared) & (compared > 0)
  with np.errstate(divide="ignore", invalid="ignore"):
    for suffix, v, values in (("", valid, main), ("_plugin", valid_plugin, plugin)):
      out["tightness" + suffix] = np.where(v & measurable, values["bound"] / error, np.nan)
      out["byzantine_ratio" + suffix] = np.where(v & comparable, values["byzantine"] / compared,
                                                 np.nan)
    if convex:
      # The order of the lower bound on any algorithm's error, f/(n − (2 + B²)f)·G²/μ, without
      # its constant (not checked against the paper from here; see REFERENCE.md).
      out["lower_bound_order"] = bounds.lower_bound_rate(f, n, pair["b2"]) * pair["g2"] / pl
  return out


def _stats(values, select=None, quantiles=evaluation.QUANTILES) -> dict:
  values = np.asarray(values, np.float64)
  if select is not None:
    values = values[select]
  return evaluation.summarize(values, worst="max", quantiles=quantiles)


def summarize(theory: dict, counts: np.ndarray, f: int) -> dict:
  """Estimates over draws of μ_H from `per_draw`: P(invalid) and why, E[bound | valid] and its
  quantiles, its Byzantine term, the measured error on the same draws and on all, tightness
  (bound / measured), the Byzantine ratio (Byzantine term / measured) and how many valid bounds
  fall below the measured error (a violation is a finding, reported)."""
  valid = theory["valid"]
  error = theory["error"]
  within = np.asarray(counts) <= f
  tq = (*TIGHTNESS_QUANTILES, *evaluation.QUANTILES)
  out = {
      "error_kind": theory["error_kind"], "premises": theory["premises"],
      "burn_in": theory["burn_in"], "rounds": theory["rounds"],
      "breakdown_b2": theory["breakdown_b2"],
      "kappa": {k: (float(v) if isinstance(v, (int, float, np.floating)) and v is not None
                    else v) for k, v in theory["kappa"].items()},
      "g2": _stats(theory["g2"]), "b2": _stats(theory["b2"]),
      "g2_at_b0": _stats(theory["g2_at_b0"]), "smoothness": _stats(theory["smoothness"]),
      "p_invalid": float(np.mean(~valid)),
      "invalid_reasons": {k: int(np.sum(v)) for k, v in theory["invalid_reasons"].items()},
      "bound_given_valid": _stats(theory["bound"], valid, tq),
      "byzantine_term_given_valid": _stats(theory["bound_byzantine"], valid, tq),
      "error_given_valid": _stats(error, valid),
      "error": _stats(error),
      "error_given_b_le_f": _stats(error, within),
      "tightness": _stats(theory["tightness"], None, tq),
      "byzantine_ratio": _stats(theory["byzantine_ratio"], None, tq),
      "violations": int(np.sum(valid & (theory["bound"] < error))),
      "error_nonpositive": int(np.sum(valid & (error <= 0))),
      "compared": theory["compared"],
      "excess_given_valid": _stats(theory["excess"], valid),
      "compared_nonpositive": int(np.sum(valid & (theory[theory["compared"]] <= 0))),
      "p_invalid_plugin": float(np.mean(~theory["valid_plugin"])),
      "bound_plugin_given_valid": _stats(theory["bound_plugin"], theory["valid_plugin"], tq),
      "error_given_valid_plugin": _stats(error, theory["valid_plugin"]),
      "tightness_plugin": _stats(theory["tightness_plugin"], None, tq),
      "byzantine_ratio_plugin": _stats(theory["byzantine_ratio_plugin"], None, tq),
      "violations_plugin": int(np.sum(theory["valid_plugin"]
                                      & (theory["bound_plugin"] < error))),
  }
  if "lower_bound_order" in theory:
    out["lower_bound_order"] = _stats(theory["lower_bound_order"], valid)
  return out
