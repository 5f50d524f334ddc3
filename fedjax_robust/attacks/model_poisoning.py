"""Model-poisoning attacks: the Byzantine rows of `updates [n, d]` are replaced."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
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


def gaussian(key: jax.Array, updates: jax.Array, byzantine_mask: jax.Array, *,
             scale: float = 1.0) -> jax.Array:
  """Each Byzantine client sends μ + s·ε_i with ε_i ~ N(0, I) drawn independently per client."""
  mu, _ = base.honest_mean_and_std(updates, byzantine_mask)
  noisy = mu[None, :] + scale * jax.random.normal(key, updates.shape, updates.dtype)
  return jnp.where(byzantine_mask[:, None], noisy, updates)


def _copy_row(updates, byzantine_mask, target):
  return base.replace_byzantine(updates, byzantine_mask, updates[target])


def mimic(updates: jax.Array, byzantine_mask: jax.Array, *, index: int = 0) -> jax.Array:
  """Mimic: every Byzantine client sends the update of one honest client, the first honest one
  at or after client `index` (cyclically). Karimireddy, He, Jaggi, ICLR 2022."""
  n = updates.shape[0]
  order = (jnp.arange(n) - index) % n
  target = jnp.argmin(jnp.where(byzantine_mask, n, order))
  return _copy_row(updates, byzantine_mask, target)


class MimicState(NamedTuple):
  direction_sum: jax.Array  # [d] running Σ_t M_t z_{t−1} (power iteration on Σ_t covariances)
  rounds: jax.Array         # int32 rounds seen
  target: jax.Array         # int32 client copied after warm-up


def mimic_variance_init(d: int) -> MimicState:
  return MimicState(jnp.ones((d,), jnp.float32) / jnp.sqrt(d), jnp.array(0, jnp.int32),
                    jnp.array(0, jnp.int32))


def mimic_variance(updates: jax.Array, byzantine_mask: jax.Array, state: MimicState, *,
                   warmup: int = 20) -> tuple[jax.Array, MimicState]:
  """Mimic the honest client that lies farthest along the direction of largest heterogeneity.

  During the first `warmup` rounds the attacker estimates the top principal direction z of the
  honest updates across rounds (a power iteration on the accumulated covariances: s ← s +
  Σ_{i∈H} y_i⟨y_i, z⟩, z = s/‖s‖, with y_i = x_i − μ) and copies the honest client maximizing
  |⟨y_i, z⟩|; at the end of the warm-up it freezes that client and copies it from then on.
  Karimireddy, He, Jaggi, "Byzantine-robust learning on heterogeneous datasets via bucketing",
  ICLR 2022 (their mimic attack with its heterogeneity-seeking choice).
  """
  mu, _ = base.honest_mean_and_std(updates, byzantine_mask)
  honest = (~byzantine_mask).astype(updates.dtype)
  centred = (updates - mu) * honest[:, None]
  z = state.direction_sum / jnp.maximum(jnp.linalg.norm(state.direction_sum), 1e-30)
  projections = centred @ z
  warming = state.rounds < warmup
  direction_sum = jnp.where(warming, state.direction_sum + centred.T @ projections,
                            state.direction_sum)
  z_new = direction_sum / jnp.maximum(jnp.linalg.norm(direction_sum), 1e-30)
  farthest = jnp.argmax(jnp.where(byzantine_mask, -1.0, jnp.abs(centred @ z_new)))
  target = jnp.where(warming, farthest, state.target).astype(jnp.int32)
  return (_copy_row(updates, byzantine_mask, target),
          MimicState(direction_sum, state.rounds + 1, target))


def line_search(objective, *, evals: int = 20, start: float = 0.0, delta: float = 10.0,
                ratio: float = 0.8) -> jax.Array:
  """The maximizer τ* of `line_search_max`."""
  return line_search_max(objective, evals=evals, start=start, delta=delta, ratio=ratio)[0]


def line_search_max(objective, *, evals: int = 20, start: float = 0.0, delta: float = 10.0,
                    ratio: float = 0.8) -> tuple[jax.Array, jax.Array]:
  """(τ*, objective(τ*)): maximizes a scalar `objective(τ)` with `evals` evaluations, as ByzFL's
  optimal attacks do: from τ = start, step by +δ while the value improves, doubling δ each time
  (expansion); at the first failure δ ← ratio·δ and from then on each evaluation tries best + δ
  and shrinks δ by `ratio` (contraction). A `lax.scan`, so it jits and vmaps over Monte Carlo
  samples. It only moves right and assumes a unimodal objective; on a jagged one (behind NNM) it
  can stop short of the best τ."""
  if evals < 1 or not 0 < ratio < 1:
    raise ValueError(f"line search needs evals >= 1 and 0 < ratio < 1, got {evals}, {ratio}.")
  best_x = jnp.asarray(start, jnp.float32)
  best_y = objective(best_x)

  def step(carry, _):
    best_x, best_y, delta, expanding = carry
    prop_x = best_x + delta
    prop_y = objective(prop_x)
    better = prop_y > best_y
    best_x = jnp.where(better, prop_x, best_x)
    best_y = jnp.where(better, prop_y, best_y)
    delta = jnp.where(expanding & better, 2 * delta, ratio * delta)
    return (best_x, best_y, delta, expanding & better), None

  init = (best_x, best_y, jnp.asarray(delta, jnp.float32), jnp.array(True))
  (best_x, best_y, _, _), _ = lax.scan(step, init, None, length=evals - 1)
  return best_x, best_y


def damage_through(aggregate, updates: jax.Array, byzantine_mask: jax.Array, mu: jax.Array):
  """The adaptive attacks' objective: vector `[d]` ↦ ‖F(updates with every Byzantine row set to
  vector) − μ‖, F the server's aggregation, μ the honest mean; +inf where it is NaN (an
  aggregate the rule made NaN counts as the largest damage)."""
  def damage(vector):
    out = aggregate(base.replace_byzantine(updates, byzantine_mask, vector))
    err = jnp.linalg.norm(out - mu)
    return jnp.where(jnp.isnan(err), jnp.inf, err)
  return damage


def _optimal(direction_fn):
  def attack(updates, byzantine_mask, aggregate, *, evals=20, start=0.0, delta=10.0, ratio=0.8):
    if aggregate is None:
      raise ValueError("optimal attacks need the server's aggregation (`aggregate`).")
    mu, sigma = base.honest_mean_and_std(updates, byzantine_mask)
    vector = lambda tau: direction_fn(mu, sigma, tau)
    damage = damage_through(aggregate, updates, byzantine_mask, mu)
    tau = line_search(lambda t: damage(vector(t)), evals=evals, start=start, delta=delta,
                      ratio=ratio)
    return base.replace_byzantine(updates, byzantine_mask, vector(tau))
  return attack


optimal_alie = _optimal(lambda mu, sigma, tau: mu + tau * sigma)
optimal_alie.__doc__ = """Optimal ALIE: Byzantine clients send a(τ*) = μ + τ*σ, with τ* found by
`line_search` to maximize ‖F(updates with the Byzantine rows set to a(τ)) − μ‖, F the server's
aggregation (`aggregate`). ByzFL's Optimal_ALittleIsEnough; used by Allouah et al. 2023."""
optimal_ipm = _optimal(lambda mu, sigma, tau: -tau * mu)
optimal_ipm.__doc__ = """Optimal IPM: Byzantine clients send −τ*μ, τ* by `line_search` maximizing
‖F(·) − μ‖ as in `optimal_alie`. ByzFL's Optimal_InnerProductManipulation."""


# ------------------------------------------------- AGR-agnostic attacks (Shejwalkar & Houmansadr)
PERTURBATIONS = ("unit_vec", "sign", "std")


def _agr_agnostic(budget_fn, doc: str):
  """MinMax / MinSum: Byzantine clients send μ − γ·p with p the perturbation (`unit_vec`:
  μ/‖μ‖, `sign`: sign(μ), `std`: the coordinate-wise std σ of the honest rows, ddof = 1) and γ
  the largest value found by the authors' halving search with `cost(μ − γp) ≤ budget`, both
  computed from the honest rows by `budget_fn`."""

  def attack(updates: jax.Array, byzantine_mask: jax.Array, *, perturbation: str = "std",
             gamma_init: float = 10.0, iterations: int = 30) -> jax.Array:
    if perturbation not in PERTURBATIONS:
      raise ValueError(f"perturbation must be one of {PERTURBATIONS}, got {perturbation!r}.")
    honest = ~byzantine_mask
    # Only the honest rows enter (a Byzantine row's own update, even NaN, never does).
    x = jnp.where(honest[:, None], updates, 0.0)
    mu, sigma = base.honest_mean_and_std(x, byzantine_mask)
    p = {"unit_vec": lambda: mu / jnp.linalg.norm(mu), "sign": lambda: jnp.sign(mu),
         "std": lambda: sigma}[perturbation]()
    # Squared distances between honest rows by the Gram form, [n, n]; Byzantine rows masked.
    sq = jnp.sum(x * x, axis=1)
    pair = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0)
    both = honest[:, None] & honest[None, :]
    cost, budget = budget_fn(pair, both, honest)

    def feasible(gamma):
      mal = mu - gamma * p
      dist = jnp.sum((x - mal) ** 2, axis=1)                # [n]; Byzantine rows ignored
      return cost(dist, honest) <= budget

    # The authors' search: γ from gamma_init; after a success γ += step/2, else γ −= step/2;
    # the step halves every time; γ* is the last success (0 if none). A fixed number of steps
    # (the authors stop when |γ* − γ| < 1e-5: 30 halvings of 10 reach 1e-8).
    def step(_, carry):
      gamma, succ, fail = carry
      ok = feasible(gamma)
      succ = jnp.where(ok, gamma, succ)
      gamma = jnp.where(ok, gamma + fail / 2, gamma - fail / 2)
      return gamma, succ, fail / 2

    g0 = jnp.asarray(gamma_init, updates.dtype)
    _, gamma, _ = lax.fori_loop(0, iterations, step, (g0, jnp.zeros_like(g0), g0))
    return base.replace_byzantine(updates, byzantine_mask, mu - gamma * p)

  attack.__doc__ = doc
  return attack


def _min_max_budget(pair, both, honest):
  budget = jnp.max(jnp.where(both, pair, -jnp.inf))     # max_{i,j∈H} ‖x_i − x_j‖²
  return (lambda dist, h: jnp.max(jnp.where(h, dist, -jnp.inf))), budget


def _min_sum_budget(pair, both, honest):
  scores = jnp.sum(jnp.where(both, pair, 0.0), axis=1)  # Σ_{j∈H} ‖x_i − x_j‖² per honest i
  budget = jnp.min(jnp.where(honest, scores, jnp.inf))  # the authors' code: the minimum
  return (lambda dist, h: jnp.sum(jnp.where(h, dist, 0.0))), budget


min_max = _agr_agnostic(_min_max_budget, """MinMax (Shejwalkar & Houmansadr, "Manipulating the
Byzantine: optimizing model poisoning attacks and defenses for federated learning", NDSS 2021):
Byzantine clients send μ − γp with the largest γ (the authors' halving search from
`gamma_init`, `iterations` steps) such that max_{i∈H} ‖x_mal − x_i‖² ≤ max_{i,j∈H} ‖x_i −
x_j‖²; p = μ/‖μ‖ (`unit_vec`), sign(μ) (`sign`) or the honest coordinate-wise std (`std`).
μ, σ and the distances use the honest rows only (full knowledge of the benign updates).""")
min_sum = _agr_agnostic(_min_sum_budget, """MinSum (Shejwalkar & Houmansadr, NDSS 2021): as
`min_max` with Σ_{i∈H} ‖x_mal − x_i‖² ≤ min_{i∈H} Σ_{j∈H} ‖x_i − x_j‖² (the minimum, as in the
authors' code `our_attack_score`; the paper's text states a maximum).""")


def fang(key: jax.Array, updates: jax.Array, byzantine_mask: jax.Array, *,
         factor: float = 2.0) -> jax.Array:
  """Fang et al.'s full-knowledge local model poisoning against the trimmed mean and the
  coordinate-wise median ("Local model poisoning attacks to Byzantine-robust federated
  learning", USENIX Security 2020, Sec. 4.2): with s_j the sign of the honest mean of coordinate
  j and w_max,j, w_min,j the honest extremes, each Byzantine client sends, independently per
  client and coordinate, a value drawn uniformly from
    s_j ≥ 0 (push down): [w_min,j/b, w_min,j] if w_min,j > 0, else [b·w_min,j, w_min,j];
    s_j < 0 (push up):   [w_max,j, b·w_max,j] if w_max,j > 0, else [w_max,j/b, w_max,j],
  with b = `factor` (the paper's 2): values beyond the honest extreme opposite to the honest
  direction. Honest rows only (a Byzantine row's own update never enters)."""
  honest = ~byzantine_mask
  mu, _ = base.honest_mean_and_std(jnp.where(honest[:, None], updates, 0.0), byzantine_mask)
  w_max = jnp.max(jnp.where(honest[:, None], updates, -jnp.inf), axis=0)
  w_min = jnp.min(jnp.where(honest[:, None], updates, jnp.inf), axis=0)
  down = mu >= 0
  lo = jnp.where(down, jnp.where(w_min > 0, w_min / factor, factor * w_min),
                 w_max * jnp.where(w_max > 0, 1.0, 1.0 / factor))
  hi = jnp.where(down, w_min, w_max * jnp.where(w_max > 0, factor, 1.0))
  u = jax.random.uniform(key, updates.shape, updates.dtype)
  values = lo[None, :] + u * (hi - lo)[None, :]
  return jnp.where(byzantine_mask[:, None], values, updates)


# ----------------------------------------------------- wave 2: attacks of the peer benchmarks
def fang_krum(updates: jax.Array, byzantine_mask: jax.Array, aggregate, *,
              threshold: float = 1e-5, iterations: int = 32) -> jax.Array:
  """Fang et al.'s full-knowledge attack on Krum ("Local model poisoning attacks to
  Byzantine-robust federated learning", USENIX Security 2020, Sec. 4.2, "Attacking Krum").

  Paper (model form): every compromised client sends w' = w_Re − λ·s, with w_Re the global
  model before the round and s_j the sign of the change of parameter j without attack; λ starts
  at the paper's upper bound
    λ_max = min_{i∈H} Σ_{l∈Γ_i} D(w_l, w_i) / ((m − 2c − 1)·√d) + max_{i∈H} D(w_i, w_Re) / √d,
  (m clients, c compromised, d parameters, Γ_i the m − c − 2 honest models nearest to w_i, D the
  Euclidean distance) and halves until Krum selects a compromised model or λ < `threshold`
  (the paper's 1e-5). The c crafted models are all equal (the paper's ε-ball of radius 0).

  This simulator's updates are u_i = θ − θ_i and the server steps θ ← θ − F(u), so w_i = θ − u_i,
  w_Re = θ, D(w_l, w_i) = ‖u_l − u_i‖, D(w_i, w_Re) = ‖u_i‖, and without attack θ moves by
  −μ (μ the honest mean update): s = −sign(μ). Every Byzantine row becomes
    u' = θ − w' = λ·s = −λ·sign(μ),
  which moves the model by +λ·sign(μ), against the honest direction (the benchmarks' code, e.g.
  Shejwalkar & Houmansadr's, sends the same −λ·sign(mean gradient)). m = n and c = b, the
  realized number of Byzantine rows. "Krum selects a Byzantine row" is asked of the server's
  own aggregation `aggregate` (its declared f, pre-aggregators, state and randomness): the
  aggregate lies nearer to u' than to every honest row (for Krum: it is u'). λ_max is always
  tried; if no tried λ succeeds (at most `iterations` tries, each ≥ `threshold` except λ_max)
  the smallest tried is sent. A `lax.while_loop` capped at `iterations` evaluations of the
  rule; jits and vmaps. Honest rows only enter μ and the bound; no row is replaced when b = 0.
  """
  if aggregate is None:
    raise ValueError("fang_krum needs the server's aggregation (`aggregate`).")
  if iterations < 1 or not threshold > 0:
    raise ValueError(f"fang_krum needs iterations >= 1 and threshold > 0, got {iterations}, "
                     f"{threshold}.")
  n, d = updates.shape
  honest = ~byzantine_mask
  x = jnp.where(honest[:, None], updates, 0.0)
  mu, _ = base.honest_mean_and_std(x, byzantine_mask)
  s = jnp.sign(mu)                      # the Byzantine row is −λ·s
  b = jnp.sum(byzantine_mask)
  # The paper's bound, from Euclidean distances between honest rows (Gram form; others masked).
  sq = jnp.sum(x * x, axis=1)
  dist = jnp.sqrt(jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0))
  pair = honest[:, None] & honest[None, :] & ~jnp.eye(n, dtype=bool)
  nearest = jnp.sort(jnp.where(pair, dist, jnp.inf), axis=1)
  neighbours = jnp.arange(n)[None, :] < n - b - 2             # Γ_i: the m − c − 2 nearest
  sums = jnp.sum(jnp.where(neighbours, nearest, 0.0), axis=1)
  root_d = math.sqrt(d)
  lam_max = (jnp.min(jnp.where(honest, sums, jnp.inf)) / (jnp.maximum(n - 2 * b - 1, 1) * root_d)
             + jnp.max(jnp.where(honest, jnp.sqrt(sq), -jnp.inf)) / root_d).astype(updates.dtype)

  def selected(lam):
    vector = -lam * s
    out = aggregate(base.replace_byzantine(updates, byzantine_mask, vector))
    to_honest = jnp.min(jnp.where(honest, jnp.sum((x - out) ** 2, axis=1), jnp.inf))
    return jnp.sum((out - vector) ** 2) < to_honest

  def cond(carry):
    k, lam, found, _ = carry
    return (~found) & (k < iterations) & ((k == 0) | (lam >= threshold)) & (b > 0)

  def body(carry):
    k, lam, _, _ = carry
    return k + 1, lam / 2, selected(lam), lam

  init = (jnp.array(0, jnp.int32), lam_max, jnp.array(False), lam_max)
  _, _, _, lam = lax.while_loop(cond, body, init)
  return base.replace_byzantine(updates, byzantine_mask, -lam * s)


def model_replacement(updates: jax.Array, byzantine_mask: jax.Array, *,
                      boost: float | None = math.nan) -> jax.Array:
  """Model replacement's scaling (Bagdasaryan, Veit, Hua, Estrin, Shmatikov, "How to backdoor
  federated learning", AISTATS 2020, Sec. 3.2): each Byzantine client sends γ·u_i, its own
  update (trained on backdoored data: the registry's `model_replacement` pairs this with the
  `backdoor` data poisoning) scaled by γ = `boost`; None or NaN: γ = n/b for the realized b.

  Paper: G' = G + (η/n) Σ_i (L_i − G); one attacker sending L̃ = γ(X − G) + G with γ = n/η makes
  G' = X + (η/n) Σ_{i≠attacker} (L_i − G) ≈ X once the honest updates nearly cancel. Here
  u_i = θ − θ_i (= G − L_i) and the server steps θ ← θ − η·F(u); with F the mean over n rows,
    F = (γ Σ_{i∈B} u_i + Σ_{i∈H} u_i) / n,
  so γ = n/(η·b) gives θ' = θ − mean_{i∈B} u_i − (η/n) Σ_{i∈H} u_i: the b backdoored models'
  average replaces the global model up to the honest sum's share. The default γ = n/b assumes
  the server learning rate η = 1 (set `boost` = n/(η·b) otherwise). Honest rows untouched;
  nothing changes when b = 0."""
  if boost is None or math.isnan(boost):
    gamma = updates.shape[0] / jnp.maximum(jnp.sum(byzantine_mask), 1)
  else:
    gamma = boost
  gamma = jnp.asarray(gamma, updates.dtype)
  return jnp.where(byzantine_mask[:, None], gamma * updates, updates)


ADAPTIVE_DIRECTIONS = ("unit_vec", "sign", "std", "plus_std", "ipm")


def _adaptive_family(name: str, mu: jax.Array, sigma: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(a, p): the candidate Byzantine vectors a + τ·p of direction `name`."""
  norm = jnp.linalg.norm(mu)
  unit = jnp.where(norm > 0, mu / jnp.where(norm > 0, norm, 1.0), 0.0)
  return {"unit_vec": (mu, -unit),            # μ − τ μ/‖μ‖ (inverse unit mean)
          "sign": (mu, -jnp.sign(mu)),        # μ − τ sign(μ)
          "std": (mu, -sigma),                # μ − τσ: ALIE's μ − zσ, MinMax's −σ
          "plus_std": (mu, sigma),            # μ + τσ: `optimal_alie`'s family (ByzFL)
          "ipm": (jnp.zeros_like(mu), -mu),   # −τμ: `optimal_ipm`'s family
          }[name]


def adaptive(updates: jax.Array, byzantine_mask: jax.Array, aggregate, *,
             directions: tuple[str, ...] = ADAPTIVE_DIRECTIONS, evals: int = 20,
             start: float = 0.0, delta: float = 10.0, ratio: float = 0.8) -> jax.Array:
  """Generalized adaptive attack: the best direction AND scale through the server's rule.

  Every Byzantine client sends a_k* + τ*·p_k* with
    (k*, τ*) = argmax_{k ∈ directions, τ} ‖F(updates with the Byzantine rows set to a_k + τ p_k)
               − μ‖,
  F the server's aggregation (`aggregate`, as `optimal_alie`/`optimal_ipm` query it, with the
  same objective `damage_through`), μ, σ the honest mean and coordinate-wise std (ddof = 1),
  and the families (a_k, p_k): `unit_vec` μ − τμ/‖μ‖, `sign` μ − τ sign(μ), `std` μ − τσ
  (ALIE's μ − zσ), `plus_std` μ + τσ (`optimal_alie`), `ipm` −τμ (`optimal_ipm`). Each
  direction is searched by the same `line_search` (`evals` evaluations from τ = `start`), one
  direction after another (`lax.map`); the best value wins (ties: the first in `directions`).
  So it is never worse, in that objective, than `optimal_alie`, `optimal_ipm` or the optimal
  search along any one of its directions, at len(directions)·evals evaluations of F per round.
  It generalizes ByzFL's optimal attacks (Allouah et al., AISTATS 2023) and Shejwalkar &
  Houmansadr's AGR-tailored search over perturbations (NDSS 2021). Honest rows only enter μ, σ.
  """
  if aggregate is None:
    raise ValueError("adaptive attacks need the server's aggregation (`aggregate`).")
  directions = tuple(directions)
  unknown = sorted(set(directions) - set(ADAPTIVE_DIRECTIONS))
  if not directions or unknown:
    raise ValueError(f"adaptive: directions must be a non-empty tuple of {ADAPTIVE_DIRECTIONS}, "
                     f"got {directions!r}.")
  x = jnp.where(byzantine_mask[:, None], 0.0, updates)
  mu, sigma = base.honest_mean_and_std(x, byzantine_mask)
  families = [_adaptive_family(name, mu, sigma) for name in directions]
  offsets = jnp.stack([a for a, _ in families])
  slopes = jnp.stack([p for _, p in families])
  damage = damage_through(aggregate, updates, byzantine_mask, mu)

  def search(family):
    a, p = family
    return line_search_max(lambda tau: damage(a + tau * p), evals=evals, start=start,
                           delta=delta, ratio=ratio)

  taus, values = lax.map(search, (offsets, slopes))
  best = jnp.argmax(values)
  return base.replace_byzantine(updates, byzantine_mask, offsets[best] + taus[best] * slopes[best])
