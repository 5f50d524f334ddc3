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
