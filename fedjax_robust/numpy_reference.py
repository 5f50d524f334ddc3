"""Plain NumPy references: aggregation rules and a sequential training loop.

Written for clarity, in float64, one client at a time where that is the natural reading of the
definition, yet without `[n, n, d]` temporaries so that they run at benchmark sizes (n=100,
d=10⁶). The tests compare the JAX implementations with these, and `launch/bench.py` times them
beside the JAX ones (the "sequential baseline" of the Monte Carlo benchmark is `train_sequential`).
None of this code is used by the simulator itself.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, Sequence

import numpy as np


# ----------------------------------------------------------------------------- rules
def mean(x, weights=None):
  x = np.asarray(x, np.float64)
  w = np.ones(len(x)) if weights is None else np.asarray(weights, np.float64)
  return w @ x / w.sum()


def coordinate_median(x):
  return np.median(np.asarray(x, np.float64), axis=0)


def trimmed_mean(x, f):
  s = np.sort(np.asarray(x, np.float64), axis=0)
  return s[f:len(s) - f].mean(axis=0)


def meamed(x, f):
  """Mean of the n − f values closest to the coordinate-wise median, per coordinate; at equal
  distance on both sides of the median the smaller values first (each column is sorted, then
  stably sorted by distance)."""
  s = np.sort(np.asarray(x, np.float64), axis=0)
  idx = np.argsort(np.abs(s - np.median(s, 0)), axis=0, kind="stable")[:len(s) - f]
  return np.take_along_axis(s, idx, 0).mean(0)


def phocas(x, f):
  """Mean of the n − f values closest to the coordinate-wise trimmed mean (f trimmed at each
  end), per coordinate; ties as `meamed` (Xie, Koyejo, Gupta 2018, Phocas_b with b = f)."""
  s = np.sort(np.asarray(x, np.float64), axis=0)
  idx = np.argsort(np.abs(s - trimmed_mean(s, f)), axis=0, kind="stable")[:len(s) - f]
  return np.take_along_axis(s, idx, 0).mean(0)


def geometric_median(x, weights=None, nu=1e-6, iterations=4000, start=None):
  """Smoothed Weiszfeld, a fixed number of updates from the weighted mean (or `start`)."""
  x = np.asarray(x, np.float64)
  w = np.ones(len(x)) if weights is None else np.asarray(weights, np.float64)
  z = w @ x / w.sum() if start is None else np.asarray(start, np.float64)
  for _ in range(iterations):
    beta = w / np.maximum(np.linalg.norm(x - z, axis=1), nu)
    z = beta @ x / beta.sum()
  return z


def squared_distances(x):
  """‖x_i − x_j‖² `[n, n]`, one row at a time."""
  x = np.asarray(x, np.float64)
  return np.stack([((x - row) ** 2).sum(1) for row in x])


def krum_scores(x, f):
  """Sum of squared distances to the n − f − 2 nearest other rows."""
  dist = squared_distances(x)
  n = len(x)
  return np.array([np.sort(np.delete(dist[i], i))[:n - f - 2].sum() for i in range(n)])


def multi_krum(x, f, m=None):
  m = len(x) - f if m is None else m
  chosen = np.argsort(krum_scores(x, f), kind="stable")[:m]
  return np.asarray(x, np.float64)[chosen].mean(0)


def krum(x, f):
  return multi_krum(x, f, 1)


def minimum_diameter_averaging(x, f):
  dist = squared_distances(x)
  best = min(itertools.combinations(range(len(x)), len(x) - f),
             key=lambda s: dist[np.ix_(s, s)].max())
  return np.asarray(x, np.float64)[list(best)].mean(0)


def monna(x, f, reference_index=0):
  x = np.asarray(x, np.float64)
  dist = ((x - x[reference_index]) ** 2).sum(1)
  return x[np.argsort(dist, kind="stable")[:len(x) - f]].mean(0)


def nearest_neighbor_mixing(x, f):
  """Row i ← mean of its n − f nearest rows (itself included)."""
  x = np.asarray(x, np.float64)
  dist = squared_distances(x)
  return np.stack([x[np.argsort(dist[i], kind="stable")[:len(x) - f]].mean(0)
                   for i in range(len(x))])


def clip(x, threshold):
  x = np.asarray(x, np.float64)
  norms = np.linalg.norm(x, axis=1, keepdims=True)
  return x * np.minimum(1.0, threshold / np.maximum(norms, 1e-300))


def static_clipping(x, threshold=2.0):
  return clip(x, threshold)


def adaptive_robust_clipping(x, f):
  x = np.asarray(x, np.float64)
  n = len(x)
  k = math.floor(2 * (f / n) * (n - f))
  if k == 0:
    return x
  norms = np.sort(np.linalg.norm(x, axis=1))[::-1]
  return clip(x, norms[min(k, n - 1)])


def centered_clipping(x, center=None, tau=10.0, iterations=3):
  """v ← v + (1/n) Σ clip_τ(x_i − v); non-finite rows contribute 0."""
  x = np.asarray(x, np.float64)
  finite = np.all(np.isfinite(x), axis=1)
  v = np.zeros(x.shape[1]) if center is None else np.asarray(center, np.float64)
  for _ in range(iterations):
    diff = np.where(finite[:, None], x - v, 0.0)
    v = v + clip(diff, tau).sum(0) / len(x)
  return v


def top_eigen(x, w=None):
  """Largest eigenvalue and eigenvector of the w-weighted covariance of the rows, through the
  n × n dual matrix (so d may be large)."""
  x = np.asarray(x, np.float64)
  w = np.ones(len(x)) if w is None else np.asarray(w, np.float64)
  mu = w @ x / w.sum()
  a = (x - mu) * np.sqrt(w / w.sum())[:, None]      # cov = aᵀa
  values, vectors = np.linalg.eigh(a @ a.T)
  v = a.T @ vectors[:, -1]
  return values[-1], v / max(np.linalg.norm(v), 1e-300), mu


def smea(x, f):
  best = min(itertools.combinations(range(len(x)), len(x) - f),
             key=lambda s: top_eigen(np.asarray(x)[list(s)])[0])
  return np.asarray(x, np.float64)[list(best)].mean(0)


CAF_DELTA = 2.0 ** -20


def caf(x, f, delta=CAF_DELTA):
  """CAF as documented in `aggregators.caf`: τ_max over the rows still in (c_i > 0), and a row
  removed outright (c_i = 0) where τ_i ≥ (1 − δ)·τ_max."""
  x = np.asarray(x, np.float64)
  n = len(x)
  c = np.ones(n)
  best_mu, best_lambda = None, np.inf
  while c.sum() > n - 2 * f:
    lam, v, mu = top_eigen(x, c)
    if lam < best_lambda:
      best_lambda, best_mu = lam, mu
    tau = np.where(c > 0, ((x - mu) @ v) ** 2, 0.0)
    tau_max = tau.max()
    c = np.where(tau >= (1 - delta) * tau_max, 0.0, c * (1 - tau / tau_max))
  return best_mu


def bulyan(x, f):
  x = np.asarray(x, np.float64)
  dist = squared_distances(x)
  remaining, chosen = list(range(len(x))), []
  for _ in range(len(x) - 2 * f):
    k = max(len(remaining) - f - 2, 1)
    scores = [np.sort([dist[i, j] for j in remaining if j != i])[:k].sum() for i in remaining]
    pick = remaining[int(np.argmin(scores))]
    chosen.append(pick)
    remaining.remove(pick)
  return meamed(x[chosen], 2 * f)



def finite_rows(x):
  """True where a row has no NaN or ±inf entry."""
  return np.all(np.isfinite(np.asarray(x, np.float64)), axis=1)


def foolsgold(x, history=None, kappa=1.0):
  """FoolsGold (Fung, Yoon, Beschastnikh, RAID 2020) one round, as the authors' code computes
  it: returns (aggregate, new history, weights α). The finite rows are added to the histories;
  a non-finite history takes no part; cs_ii = 0 (the code's cs − I), a cosine of 0 for a zero
  history, cos = 1 − ‖û_i − û_j‖²/2 from the unit histories (1 for identical ones); pardoning
  loop; α = 1 − max cs clipped to [0, 1], divided by its maximum, 1 → 0.99, the logit with
  confidence κ clipped to [0, 1]; output Σ α_i x_i / n over the finite rows (0 if every α is 0)."""
  x = np.asarray(x, np.float64)
  n, d = x.shape
  h = np.zeros((n, d)) if history is None else np.array(history, np.float64)
  finite = finite_rows(x)
  h[finite] += x[finite]
  valid = finite_rows(h)
  norms = np.array([np.linalg.norm(r) if ok else 0.0 for r, ok in zip(h, valid)])
  cs = np.zeros((n, n))
  for i in range(n):
    for j in range(n):
      if i != j and valid[i] and valid[j] and norms[i] > 0 and norms[j] > 0:
        # cos = 1 − ‖û_i − û_j‖²/2 for unit vectors: exactly 1 for identical directions.
        diff = h[i] / norms[i] - h[j] / norms[j]
        cs[i, j] = min(1.0, max(-1.0, 1.0 - 0.5 * (diff @ diff)))
  v = cs.max(axis=1)
  for i in range(n):
    for j in range(n):
      if i != j and v[i] < v[j]:
        cs[i, j] *= v[i] / v[j]
  alpha = np.clip(1.0 - cs.max(axis=1), 0.0, 1.0)
  alpha[~valid] = 0.0
  if alpha.max() > 0:
    alpha = alpha / alpha.max()
    alpha[alpha == 1.0] = 0.99
    with np.errstate(divide="ignore"):
      alpha = np.clip(kappa * (np.log(alpha / (1.0 - alpha)) + 0.5), 0.0, 1.0)
  alpha[~finite] = 0.0
  out = alpha[finite] @ x[finite] / n if finite.any() else np.zeros(d)
  return out, h, alpha


def robust_lr(x, f, threshold=None, weights=None):
  """Robust learning rate (Ozdayi, Kantarcioglu, Gel, AAAI 2021): the (weighted) mean of the
  finite rows, each coordinate negated where |Σ_i sign(x_ij)| over the finite rows is below θ
  (θ = f + 1 unless given); 0 without a finite row."""
  x = np.asarray(x, np.float64)
  theta = f + 1 if threshold is None else threshold
  finite = finite_rows(x)
  w = np.ones(len(x)) if weights is None else np.asarray(weights, np.float64)
  votes = np.abs(np.sign(x[finite]).sum(axis=0))
  total = w[finite].sum()
  mean = w[finite] @ x[finite] / total if total > 0 else np.zeros(x.shape[1])
  return np.where(votes >= theta, mean, -mean)


def weak_dp(x, threshold, noise, weights=None):
  """Weak DP (Sun, Kairouz, Suresh, McMahan 2019): the (weighted) mean of the rows clipped to
  norm `threshold` (a non-finite row clipped to 0, still counted), plus the given noise `[d]`."""
  x = np.asarray(x, np.float64)
  finite = finite_rows(x)
  clipped = np.zeros_like(x)
  clipped[finite] = clip(x[finite], threshold)
  w = np.ones(len(x)) if weights is None else np.asarray(weights, np.float64)
  return w @ clipped / w.sum() + np.asarray(noise, np.float64)
# ----------------------------------------------------------------------------- model-aware rules
# FLARE and CRFL take server inputs (representations, the global model), so they are not in RULES.
def mmd2_unbiased(x, y, gamma):
  """MMD²_u with the kernel exp(−γ‖u − v‖²), from the kernel matrices computed directly."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  kernel = lambda a, b: np.exp(-gamma * ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
  kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
  m, n = len(x), len(y)
  return ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
          - 2 * kxy.sum() / (m * n))


def flare(x, representations, neighbors=None, temperature=1.0, gamma=None):
  """FLARE as documented in `aggregators.model_aware.flare`, one client at a time: returns
  (aggregate, trust, counts, mmd) with mmd +inf for the invalid clients."""
  x = np.asarray(x, np.float64)
  reps = np.asarray(representations, np.float64)
  n, _, h = reps.shape
  gamma = 1.0 / h if gamma is None else gamma
  valid = np.all(np.isfinite(x), axis=1) & np.all(np.isfinite(reps), axis=(1, 2))
  idx = np.flatnonzero(valid)
  mmd = np.full((n, n), np.inf)
  for a in idx:
    mmd[a, a] = 0.0
    for b in idx[idx > a]:
      mmd[a, b] = mmd[b, a] = max(0.0, mmd2_unbiased(reps[a], reps[b], gamma))
  k = len(idx) // 2 - 1 if neighbors is None else neighbors
  k = min(max(k, 0), max(len(idx) - 1, 0))
  counts = np.zeros(n, int)
  for i in idx:
    for j in sorted((j for j in idx if j != i), key=lambda j: (mmd[i, j], j))[:k]:
      counts[j] += 1
  trust = np.zeros(n)
  if len(idx):
    average = counts[idx].mean()
    logits = counts[idx] / (temperature * average) if average > 0 else np.zeros(len(idx))
    e = np.exp(logits - logits.max())
    trust[idx] = e / e.sum()
  value = trust[idx] @ x[idx] if len(idx) else np.zeros(x.shape[1])
  return value, trust, counts, mmd


def crfl(x, global_params, noise, model_norm):
  """CRFL's step as documented in `aggregators.model_aware.crfl`, with its noise given:
  θ − (clip_ρ(θ − mean) + noise)."""
  x = np.asarray(x, np.float64)
  theta = np.asarray(global_params, np.float64)
  new = theta - x.mean(0)
  norm = np.linalg.norm(new)
  clipped = new * (model_norm / norm) if norm > model_norm else new
  return theta - (clipped + np.asarray(noise, np.float64))


def crfl_certified_radius(p_a, p_b, sigma, sigma_smoothing, model_norms, attacker_weights,
                          local_steps, client_lr, scale_factor, poison_fraction, lipschitz):
  """The CRFL code's `cal_prob_bound` formula for one input, with Φ from scipy; 0 where
  p_A ≤ p_B."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  if p_a <= p_b:
    return 0.0
  fraction = -math.log(1 - (math.sqrt(p_a) - math.sqrt(p_b)) ** 2) * sigma ** 2
  r = len(attacker_weights)
  denominator = (2 * r * local_steps ** 2 * lipschitz ** 2 * sum(w ** 2 for w in attacker_weights)
                 * scale_factor ** 2 * client_lr ** 2 * poison_fraction ** 2)
  contraction = 1.0
  for rho in model_norms[:-1]:
    contraction *= 2 * stats.norm.cdf(rho / sigma) - 1
  contraction *= 2 * stats.norm.cdf(model_norms[-1] / sigma_smoothing) - 1
  return math.sqrt(fraction / (denominator * contraction))


# Names as in the aggregator registry; each takes (x, f, options) and returns `[d]` or `[n', d]`.
RULES: dict[str, Callable] = {
    "mean": lambda x, f, o: mean(x),
    "coordinate_median": lambda x, f, o: coordinate_median(x),
    "trimmed_mean": lambda x, f, o: trimmed_mean(x, f),
    "meamed": lambda x, f, o: meamed(x, f),
    "phocas": lambda x, f, o: phocas(x, f),
    "geometric_median": lambda x, f, o: geometric_median(
        x, nu=o.get("nu", 1e-6), iterations=o.get("maxiter", 100)),
    "krum": lambda x, f, o: krum(x, f),
    "multi_krum": lambda x, f, o: multi_krum(x, f, o.get("m")),
    "minimum_diameter_averaging": lambda x, f, o: minimum_diameter_averaging(x, f),
    "monna": lambda x, f, o: monna(x, f, o.get("reference_index", 0)),
    "centered_clipping": lambda x, f, o: centered_clipping(
        x, tau=o.get("tau", 10.0), iterations=o.get("iterations", 3)),
    "bulyan": lambda x, f, o: bulyan(x, f),
    "caf": lambda x, f, o: caf(x, f),
    "smea": lambda x, f, o: smea(x, f),
    "robust_lr": lambda x, f, o: robust_lr(x, f, o.get("threshold")),
}
PRE_AGGREGATORS: dict[str, Callable] = {
    "nnm": lambda x, f, o: nearest_neighbor_mixing(x, f),
    "nearest_neighbor_mixing": lambda x, f, o: nearest_neighbor_mixing(x, f),
    "static_clipping": lambda x, f, o: static_clipping(x, o.get("threshold", 2.0)),
    "arc": lambda x, f, o: adaptive_robust_clipping(x, f),
    "adaptive_robust_clipping": lambda x, f, o: adaptive_robust_clipping(x, f),
}


def has(spec: str) -> bool:
  """Whether `spec` ("pre+...+rule") has a NumPy reference (bucketing's random permutation and
  rules with iteration-dependent stopping are not reproduced here)."""
  *pre, rule = spec.split("+")
  return rule in RULES and all(p in PRE_AGGREGATORS for p in pre)


def aggregate(spec: str, x, f: int, options: dict | None = None):
  """The aggregate of `x [n, d]` under `spec`; `options` maps a stage name to its options."""
  options = options or {}
  *pre, rule = spec.split("+")
  out = np.asarray(x, np.float64)
  for stage in pre:
    out = PRE_AGGREGATORS[stage](out, f, options.get(stage, {}))
  return RULES[rule](out, f, options.get(rule, {}))


# ----------------------------------------------------------------------------- training
def _softmax_cross_entropy_grad(logits, labels):
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  p[np.arange(len(labels)), labels] -= 1.0
  return p / len(labels)


def mlp_gradient(layers: Sequence[tuple[np.ndarray, np.ndarray]], x, y):
  """Gradient of the mean cross-entropy of a ReLU MLP (a list of (kernel, bias), the last one
  linear) on a batch; returns a list of (d kernel, d bias)."""
  acts = [x.reshape(len(x), -1)]
  for i, (w, b) in enumerate(layers):
    h = acts[-1] @ w + b
    acts.append(np.maximum(h, 0.0) if i < len(layers) - 1 else h)
  delta = _softmax_cross_entropy_grad(acts[-1], y)
  grads = []
  for i in range(len(layers) - 1, -1, -1):
    grads.append((acts[i].T @ delta, delta.sum(0)))
    if i:
      delta = (delta @ layers[i][0].T) * (acts[i] > 0)
  return grads[::-1]


def alie(updates, honest, z):
  h = updates[honest]
  out = updates.copy()
  out[~honest] = h.mean(0) - z * (h.std(0, ddof=1) if len(h) > 1 else 0.0)
  return out


def train_sequential(layers, flatten, unflatten, client_x, client_y, honest, *, rounds: int,
                     local_steps: int, batch_size: int, lr: float, momentum: float,
                     server_lr: float, aggregate_fn: Callable, attack_fn: Callable | None,
                     rng: np.random.Generator):
  """Robust D-SGD with worker momentum for one honest mask, one client at a time (the algorithm
  of `training.Simulator` with an SGD server; minibatches drawn with replacement, or the whole
  local data set when `batch_size <= 0`).

  `flatten(layers) -> [d]` and `unflatten([d]) -> layers` fix the parameter layout; returns the
  final flat parameters.
  """
  n = len(client_x)
  theta = flatten(layers)
  mom = np.zeros((n, theta.size))
  for _ in range(rounds):
    updates = np.empty((n, theta.size))
    for i in range(n):
      p, m = theta.copy(), mom[i]
      for _ in range(local_steps):
        if batch_size > 0:
          idx = rng.integers(0, len(client_x[i]), batch_size)
          xb, yb = client_x[i][idx], client_y[i][idx]
        else:
          xb, yb = client_x[i], client_y[i]
        g = flatten(mlp_gradient(unflatten(p), xb, yb))
        m = momentum * m + (1 - momentum) * g
        p = p - lr * m
      mom[i] = m
      updates[i] = theta - p
    if attack_fn is not None and not honest.all():
      updates = attack_fn(updates, honest)
    theta = theta - server_lr * aggregate_fn(updates)
  return theta


# ----------------------------------------------------------------------------- FLDetector
def lbfgs_hvp(steps, changes, v):
  """B v for the L-BFGS matrix of the pairs (s_k, y_k) given oldest first (lists of [d]), by the
  compact form of Byrd, Nocedal and Schnabel (1994) as the FLDetector authors' `lbfgs` writes
  it: σ = y_mᵀs_m/s_mᵀs_m, L the strictly lower triangle of SᵀY, D its diagonal,
  B v = σv − [σS Y] [[σSᵀS, L], [Lᵀ, −D]]⁻¹ [σSᵀv; Yᵀv]. 0 without pairs or when the result
  is not finite (a singular system)."""
  v = np.asarray(v, np.float64)
  if not len(steps):
    return np.zeros_like(v)
  s = np.stack([np.asarray(a, np.float64) for a in steps], axis=1)
  y = np.stack([np.asarray(a, np.float64) for a in changes], axis=1)
  sy = s.T @ y
  sigma = (y[:, -1] @ s[:, -1]) / (s[:, -1] @ s[:, -1])
  lower = np.tril(sy, -1)
  system = np.block([[sigma * (s.T @ s), lower], [lower.T, -np.diag(np.diag(sy))]])
  with np.errstate(all="ignore"):
    try:
      q = np.linalg.solve(system, np.concatenate([sigma * (s.T @ v), y.T @ v]))
    except np.linalg.LinAlgError:
      return np.zeros_like(v)
    out = sigma * v - np.hstack([sigma * s, y]) @ q
  return out if np.all(np.isfinite(out)) else np.zeros_like(v)


def two_means_1d(x):
  """Optimal 2-means of the values x by trying every cut of the sorted values (the left part
  the k smallest, k = 1..n−1; the first of equal costs): (W₁, W₂, the lower cluster's
  largest value)."""
  xs = np.sort(np.asarray(x, np.float64))
  w1 = np.sum((xs - xs.mean()) ** 2)
  costs = [np.sum((xs[:k] - xs[:k].mean()) ** 2) + np.sum((xs[k:] - xs[k:].mean()) ** 2)
           for k in range(1, len(xs))]
  k = int(np.argmin(costs)) + 1
  return w1, costs[k - 1], xs[k - 1]


def gap_split(scores, uniforms):
  """FLDetector's detection (the authors' `detection1`, then `detection`): min-max normalise the
  scores, Gap(k) = log(mean_b W*_kb) − log W_k over the reference sets `uniforms [B, n]`,
  s₂ = √(1 + 1/B)·std_b(log W*_2b); two clusters when Gap(1) < Gap(2) − s₂. Returns (detected,
  the upper cluster of the 2-means)."""
  scores = np.asarray(scores, np.float64)
  n = len(scores)
  spread = scores.max() - scores.min()
  if n <= 2 or spread == 0:
    return False, np.zeros(n, bool)
  x = (scores - scores.min()) / spread
  w1, w2, cut = two_means_1d(x)
  refs = [two_means_1d(u) for u in np.asarray(uniforms, np.float64)]
  r1 = np.array([r[0] for r in refs])
  r2 = np.array([r[1] for r in refs])
  with np.errstate(divide="ignore"):
    gap1 = np.log(r1.mean()) - np.log(w1)
    gap2 = np.log(r2.mean()) - np.log(w2)
  s2 = np.sqrt(1 + 1 / len(r2)) * np.std(np.log(r2))
  detected = bool(gap1 < gap2 - s2)
  return detected, (x > cut) & detected


def fldetector_state(n):
  """An empty FLDetector state for `fldetector_round` (n clients)."""
  return {"round": 0, "params": None, "aggregate": None, "pairs": [], "updates": [None] * n,
          "scores": []}


def fldetector_round(state, x, theta, uniforms, *, window=10, base="mean", warmup=0):
  """One round of FLDetector (Zhang et al., KDD 2022, Algorithm 1) in float64, as
  `aggregators.fldetector` documents it: returns (aggregate, kept [n], new state).

  Predicted update x̂_i = x_i^{t−1} + B(θ_t − θ_{t−1}) with B from the last `window` pairs;
  normalised distances over the clients with a finite row now and last round (the others get
  the round's largest); the round is scored from round max(2, warmup) on; once `window` rounds
  are scored, the mean score is split by gap statistics and the upper cluster left out; the
  base rule (mean or coordinate-wise median) over the finite rows kept (0 if none). The pair
  (θ_t − θ_{t−1}, g_t − g_{t−1}) is stored when all four are finite and both differences are
  non-zero."""
  x = np.asarray(x, np.float64)
  theta = np.asarray(theta, np.float64)
  n = len(x)
  finite = np.all(np.isfinite(x), axis=1)
  theta_ok = bool(np.all(np.isfinite(theta)))
  prev_theta = state["params"]
  moved = prev_theta is not None and theta_ok
  scores = list(state["scores"])
  if moved and state["pairs"] and state["round"] >= warmup:
    pairs = state["pairs"][-window:]
    hv = lbfgs_hvp([p[0] for p in pairs], [p[1] for p in pairs], theta - prev_theta)
    dist = np.full(n, np.nan)
    for i in range(n):
      if finite[i] and state["updates"][i] is not None:
        dist[i] = np.linalg.norm(state["updates"][i] - x[i] + hv)
    defined = ~np.isnan(dist)
    if defined.any():
      total = dist[defined].sum()
      share = np.where(defined, dist / total if total > 0 else 1.0 / defined.sum(), np.nan)
      share[~defined] = np.nanmax(share)
      scores.append(share)
  malicious = np.zeros(n, bool)
  if len(scores) >= window:
    detected, upper = gap_split(np.mean(scores[-window:], axis=0), uniforms)
    malicious = upper if detected else malicious
  kept = finite & ~malicious
  if not kept.any():
    value = np.zeros(x.shape[1])
  elif base == "mean":
    value = x[kept].mean(axis=0)
  else:
    value = np.median(x[kept], axis=0)
  value_ok = bool(np.all(np.isfinite(value)))
  pairs = list(state["pairs"])
  if moved and state["aggregate"] is not None and value_ok:
    step, change = theta - prev_theta, value - state["aggregate"]
    if np.all(np.isfinite(step)) and np.all(np.isfinite(change)) and step.any() and change.any():
      pairs.append((step, change))
  new_state = {"round": state["round"] + 1, "params": theta if theta_ok else None,
               "aggregate": value if value_ok else None, "pairs": pairs[-window:],
               "updates": [x[i].copy() if finite[i] else None for i in range(n)],
               "scores": scores[-window:]}
  return value, kept, new_state
