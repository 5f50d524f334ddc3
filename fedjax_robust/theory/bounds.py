"""Robust D-GD error bounds per draw of the honest set, their validity, and smoothness estimates.

With an (f, κ)-robust aggregator, honest objective L_S that is L-smooth, step 1/L, and (G, B)-gradient
dissimilarity of S with κB² < 1 (Allouah et al., NeurIPS 2023; ../shared/REFERENCE.md):

  non-convex:  (1/T) Σ_{t<T} ‖∇L_S(θ_t)‖² ≤ κG²/(1 − κB²) + 2L(L_S(θ_0) − L_S*)/((1 − κB²)T)
  μ-PL:        L_S(θ_T) − L_S* ≤ κG²/(2μ(1 − κB²)) + (1 − μ(1 − κB²)/L)^T (L_S(θ_0) − L_S*)

The first term of each, κG²/(1 − κB²) (over 2μ under μ-PL), is the Byzantine term: what the
bound keeps however long training runs; the second is the optimization transient.

A draw's bound is *valid* (its theorem applies) iff its realized b ≤ f and κB² < 1. The rule's κ is
for f Byzantine clients; with b < f an (f, κ)-robust rule is (b, κc)-robust against the larger
honest set, c = (n − f − 1)(n − b)/((n − f)(n − b − 1)) ≤ 1 (a lemma derived in
aggregators.robustness.fewer_faults_factor), so the theorem holds there with κ, and κc would
tighten it by at most 1 − c (2.8% at n = 10, f = 2, b = 0).

Breakdown: no algorithm is robust on the class of (G, B)-dissimilar objectives when
f/n ≥ 1/(2 + B²), i.e. when B² ≥ (n − 2f)/f; below it the lower bound on the error
of any algorithm is of order f/(n − (2 + B²)f)·G²/μ. Breakdown is a property of a class, not of a
draw: a measured trajectory lies in the (G², B²) class for every pair on its certificate curve
G²(B²) below, so it would be past breakdown only if G²(B²) were infinite for every B² below
(n − 2f)/f, which a trajectory with finite h_t never is (at B² = 0, G² = max_t h_t). So no draw is
flagged; `breakdown_b2` gives the class boundary of the declared f.

Sources: Allouah, Guerraoui, Gupta, Pinot, Rizk, "Robust distributed learning: tight error bounds
and breakdown point under data heterogeneity", NeurIPS 2023 (arXiv:2309.13591) for (G, B)-gradient
dissimilarity, the breakdown point 1/(2 + B²), the lower bound and the robust D-GD upper bounds;
Allouah et al., "Fixing by mixing", AISTATS 2023, for (f, κ)-robustness. The constants above are
those of ../shared/REFERENCE.md; they could not be checked against the papers' text from this
machine (only abstracts were reachable; the forms were confirmed by a later paper's restatement,
not the constants). The μ-PL transient is written (1 − μ(1 − κB²)/L)^T, which is ≤ the
exp(−μ(1 − κB²)T/L) form, i.e. the tighter of the two.

For a given draw the pair (G², B²) is not unique: G²(B²) = max_t (h_t − B²u_t)₊ for every B². We
evaluate the bound on a grid of B² in [0, 1/κ) and keep the pair with the smallest bound (every pair
on the grid is a valid (G, B) certificate for the measured trajectory, so the smallest is the
tightest the theorem gives), and also report G² at B² = 0.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_robust.theory import heterogeneity

# B² grid in units of 1/κ: κB² ∈ {0, 0.01, ..., 0.99}.
KAPPA_B2_GRID = np.linspace(0.0, 0.99, 100)


def nonconvex_byzantine_term(kappa, g2, b2):
  """κG²/(1 − κB²): the non-convex bound without its transient; +inf where κB² ≥ 1."""
  shrink = 1.0 - kappa * np.asarray(b2, np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    value = kappa * np.asarray(g2, np.float64) / shrink
  return np.where(shrink > 0, value, np.inf)


def pl_byzantine_term(kappa, g2, b2, pl_constant):
  """κG²/(2μ(1 − κB²)): the μ-PL bound without its transient; +inf where κB² ≥ 1."""
  with np.errstate(divide="ignore", invalid="ignore"):
    return nonconvex_byzantine_term(kappa, g2, b2) / (2.0 * np.asarray(pl_constant, np.float64))


def nonconvex_bound(kappa, g2, b2, smoothness, initial_gap, num_rounds):
  """κG²/(1 − κB²) + 2L(L_S(θ_0) − L_S*)/((1 − κB²)T); +inf where κB² ≥ 1."""
  shrink = 1.0 - kappa * np.asarray(b2, np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    value = (kappa * g2 + 2.0 * smoothness * initial_gap / num_rounds) / shrink
  return np.where(shrink > 0, value, np.inf)


def pl_bound(kappa, g2, b2, smoothness, pl_constant, initial_gap, num_rounds):
  """κG²/(2μ(1 − κB²)) + (1 − μ(1 − κB²)/L)^T (L_S(θ_0) − L_S*); +inf where κB² ≥ 1."""
  shrink = 1.0 - kappa * np.asarray(b2, np.float64)
  with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
    rate = np.clip(1.0 - pl_constant * shrink / smoothness, 0.0, 1.0)
    value = pl_byzantine_term(kappa, g2, b2, pl_constant) + rate ** num_rounds * initial_gap
  return np.where(shrink > 0, value, np.inf)


def lower_bound_rate(f: int, n: int, b2) -> np.ndarray:
  """f/(n − (2 + B²)f): the factor of G²/μ in the lower bound; +inf at or past breakdown."""
  b2 = np.asarray(b2, np.float64)
  denominator = n - (2.0 + b2) * f
  with np.errstate(divide="ignore"):
    return np.where(denominator > 0, f / denominator, np.inf)


def breakdown_b2(f: int, n: int) -> float:
  """(n − 2f)/f: the B² from which f/n ≥ 1/(2 + B²), i.e. no algorithm is robust on the class of
  (G, B)-dissimilar objectives whatever G (+inf for f = 0)."""
  return (n - 2 * f) / f if f else float("inf")


def best_pair(kappa: float, heterogeneity_t: np.ndarray, gradient_sq_t: np.ndarray,
              bound: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> dict[str, np.ndarray]:
  """Per draw, the (G², B²) on the grid κB² ∈ KAPPA_B2_GRID minimizing `bound(g2 [K, S], b2 [K, 1])`
  (the rest of the bound's arguments are bound by the caller), from h_t, u_t `[T, S]`. Returns
  g2, b2, bound `[S]` (NaN where h or u is undefined)."""
  if not np.isfinite(kappa) or kappa <= 0:
    grid = np.zeros(1)
  else:
    grid = KAPPA_B2_GRID / kappa
  g2 = heterogeneity.dissimilarity(heterogeneity_t, gradient_sq_t, grid)  # [K, S]
  values = bound(g2, grid[:, None])
  values = np.where(np.isnan(g2), np.inf, values)
  best = np.argmin(values, axis=0)
  cols = np.arange(g2.shape[1])
  defined = ~np.isnan(g2[0])
  return {"g2": np.where(defined, g2[best, cols], np.nan),
          "b2": np.where(defined, grid[best], np.nan),
          "bound": np.where(defined, values[best, cols], np.nan)}


def top_hessian_eigenvalue(objective: Callable[[jax.Array], jax.Array], theta: jax.Array, *,
                           iterations: int = 30) -> jax.Array:
  """|λ|_max of the Hessian of `objective` at `theta` by power iteration on Hessian-vector products
  (forward-over-reverse), from a fixed start vector: an estimate of the local smoothness L (a lower
  estimate of the global constant; after `iterations` steps the Rayleigh quotient is ≤ |λ|_max)."""
  grad = jax.grad(objective)

  def hvp(v):
    return jax.jvp(grad, (theta,), (v,))[1]

  v0 = jax.random.normal(jax.random.key(0), theta.shape, theta.dtype)
  v0 = v0 / jnp.linalg.norm(v0)

  def step(v, _):
    w = hvp(v)
    return w / jnp.maximum(jnp.linalg.norm(w), 1e-30), None

  v, _ = jax.lax.scan(step, v0, None, length=iterations)
  return jnp.abs(jnp.vdot(v, hvp(v)))
