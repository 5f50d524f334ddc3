"""Covariance-based rules: CAF, SMEA and DnC (divide and conquer).

Both need the largest eigenvalue of a (weighted) empirical covariance of rows of `[n, d]`. The
`[d, d]` covariance is never formed: with G the Gram matrix of the centred rows and W the
weights, Σ = YᵀWY/Σw has the nonzero spectrum of W^½ G W^½ / Σw, an `[n, n]` matrix, and the
eigenvector's projections (x_i − μ)·v follow from G as well. So each costs one `[n, d] × [d, n]`
product plus O(n³) work, and the eigenvalues are exact (`eigh`), where ByzFL takes one power-
method step from a random vector (its results are random; these are deterministic).

Rows with a NaN or ±inf entry, and rows whose squared norm (after centring) overflows the float
range, count as infinitely far: CAF gives them weight 0 from the start (its first step would
zero their weight anyway) and SMEA never selects a subset containing one (its λ is +inf).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from fedjax_robust.aggregators import base
from fedjax_robust.aggregators.minimum_diameter import check_subset_count
from fedjax_robust.aggregators.minimum_diameter import subsets_of_size

_CHUNK = 2048
CAF_DELTA = 2.0 ** -20  # CAF removes a row outright where τ_i ≥ (1 − CAF_DELTA)·τ_max


def _centred_gram(updates):
  """(x, K, valid): rows zeroed where invalid, centred at `median_norm_row`, and their Gram."""
  finite = base.finite_rows(updates)
  x = base.zero_nonfinite_rows(updates, finite)
  x = base.zero_nonfinite_rows(x - base.median_norm_row(x, finite), finite)
  sq = jnp.sum(x * x, axis=-1)
  valid = finite & jnp.isfinite(sq)
  x = base.zero_nonfinite_rows(x, valid)
  return x, x @ x.T, valid


def caf(updates: jax.Array, *, f: int) -> jax.Array:
  """Covariance-bound agnostic filter (CAF).

  Weights c = 1 (0 for a non-finite row); while Σc > n − 2f:
    μ_c = Σ c_i x_i / Σc,  Σ_c = Σ c_i (x_i − μ_c)(x_i − μ_c)ᵀ / Σc with top eigenpair (λ, v),
    τ_i = ((x_i − μ_c)·v)² for the rows still in (c_i > 0), τ_i = 0 for the rows already out,
    τ_max = max_i τ_i (so: the maximum over the rows with c_i > 0),
    c_i ← c_i (1 − τ_i / τ_max), and c_i ← 0 exactly where τ_i ≥ (1 − δ) τ_max, δ = 2⁻²⁰.
  Returns the μ_c of the iteration with the smallest λ (ties: the first).

  Reading of τ_max: over the rows still in, so every iteration removes at least one row and
  there are at most n (the static cap of the loop). ByzFL takes τ_max over all rows, removed
  ones included; the two differ once a removed row projects further on v than every remaining
  one, where ByzFL's step shrinks weights without removing any (measured on 200 random inputs
  with f Byzantine rows at (n, f) = (8, 2), (10, 3), (12, 3): different results in 12–35% of
  them, and up to 35 iterations at n = 10).

  The δ rule: in float32 under XLA, c(1 − τ/τ_max) came out as 1e-9..4e-8 instead of 0 for the
  argmax row (in a third of random inputs), and rows tying with it (identical Byzantine copies)
  may differ from it by an ulp. Such a residue kept the row in Σc > n − 2f and in the next
  τ_max: extra iterations, results off by up to 0.2. 2⁻²⁰ is 16 float32 ulps; exact arithmetic
  would leave those rows a weight below c_i·2⁻²⁰. The float64 references (`numpy_reference.caf`,
  the tests) apply the same rule, and agree with the plain transcription (δ = 0) on the tests.

  With f = 0 the loop does not run and CAF is the mean (ByzFL returns None there). Allouah,
  Guerraoui, Stephan, "Towards trustworthy federated learning with untrusted participants",
  2025 (as in ByzFL, with an exact eigenpair instead of one power-method step). Needs n > 2f.
  Cost: one Gram product, then O(n³) per iteration, then one pass for the mean.
  Secure aggregation: no — it needs every update in the clear (the Gram matrix of the rows, and
  each row's projection on the top eigenvector, compared with their maximum).
  """
  n, _ = base.check_updates(updates, "caf", f=f, min_n=lambda f: 2 * f + 1)
  x, gram, valid = _centred_gram(updates)
  dtype = x.dtype
  c0 = valid.astype(dtype)

  def centred(c):
    """Gram of the rows centred at μ_c, from the Gram of the rows: G = K − Kc1ᵀ/s − 1cᵀK/s + cᵀKc/s²."""
    s = jnp.sum(c)
    kc = gram @ c / s
    return gram - kc[:, None] - kc[None, :] + c @ kc / s

  def keep_going(carry):
    c, *_ = carry
    return jnp.sum(c) > n - 2 * f

  def step(carry):
    c, best_c, best_lambda, it = carry
    s = jnp.sum(c)
    g = centred(c)
    root = jnp.sqrt(c)
    eigenvalues, eigenvectors = jnp.linalg.eigh(root[:, None] * g * root[None, :] / s)
    lam, u = eigenvalues[-1], eigenvectors[:, -1]
    # Projections on v ∝ Yᵀ W^½ u: (Y v)_i = (G W^½ u)_i / sqrt(λ s).
    proj = g @ (root * u) / jnp.sqrt(jnp.maximum(lam * s, jnp.finfo(dtype).tiny))
    tau = proj * proj * (c > 0)
    better = lam < best_lambda
    best_c = jnp.where(better, c, best_c)
    best_lambda = jnp.where(better, lam, best_lambda)
    tau_max = jnp.max(tau)
    c = jnp.where(tau >= (1 - CAF_DELTA) * tau_max, 0.0,
                  jnp.maximum(c * (1 - tau / tau_max), 0.0))
    return c, best_c, best_lambda, it + 1

  init = (c0, c0, jnp.array(jnp.inf, dtype), jnp.array(0, jnp.int32))
  _, best_c, _, _ = lax.while_loop(lambda s: keep_going(s) & (s[3] < n), step, init)
  return base.average_selected(updates, best_c)


def smea(updates: jax.Array, *, f: int, max_subsets: int = 100_000) -> jax.Array:
  """Smallest maximum eigenvalue averaging (SMEA): the mean of the subset S of n − f rows whose
  empirical covariance (1/|S|) Σ_{i∈S} (x_i − μ_S)(x_i − μ_S)ᵀ has the smallest largest
  eigenvalue (ties: the first subset in lexicographic order).

  Allouah, Guerraoui, Gupta, Pinot, Stephan, "On the privacy-robustness-utility trilemma in
  distributed learning", ICML 2023. Exact over all C(n, f) subsets (`max_subsets` bounds it;
  above, a clear error). Needs n > 2f. Cost: one Gram product, then O(C(n, f)·(n − f)³).
  Secure aggregation: no — it needs every update in the clear (the Gram matrix of the rows, for
  the covariance of every subset of n − f rows).
  """
  n, _ = base.check_updates(updates, "smea", f=f, min_n=lambda f: 2 * f + 1)
  check_subset_count("smea", n, f, max_subsets)
  m = n - f
  subsets = jnp.asarray(subsets_of_size(n, m))
  _, gram, valid = _centred_gram(updates)
  centring = jnp.eye(m, dtype=gram.dtype) - 1.0 / m

  def largest_eigenvalue(subset):
    g = centring @ gram[subset[:, None], subset[None, :]] @ centring
    lam = jnp.linalg.eigvalsh(g)[-1] / m
    return jnp.where(jnp.all(valid[subset]), lam, jnp.inf)

  lambdas = lax.map(largest_eigenvalue, subsets, batch_size=min(_CHUNK, subsets.shape[0]))
  best = subsets[jnp.argmin(lambdas)]
  return base.average_selected(updates, jnp.zeros((n,), updates.dtype).at[best].set(1.0))


def divide_and_conquer(updates: jax.Array, *, key: jax.Array, f: int, iterations: int = 5,
                       sub_dim: int = 10_000, c: float = 1.0) -> jax.Array:
  """Divide-and-Conquer (DnC; Shejwalkar & Houmansadr, "Manipulating the Byzantine", NDSS 2021).

  `iterations` times: draw `sub_dim` coordinates without replacement (all of them when d ≤
  sub_dim), centre the rows' sub-vectors at their mean, take the top right singular vector v of
  the centred `[n, sub_dim]` matrix, score each row by ((x_i − μ)·v)², and keep the n − ⌈c·f⌉
  rows with the lowest scores (ties: the lower index). The aggregate is the mean of the rows kept
  in every iteration; where that intersection is empty, of the rows removed least often (the
  same set whenever it is not empty).

  v and the scores come from the `[n, n]` Gram matrix of the centred rows (score_i = s₁²u₁ᵢ²
  with (s₁², u₁) its top eigenpair), never from an SVD of `[n, d]`. Rows with a NaN or ±inf
  entry are left out of μ, score +inf (removed first) and never averaged. `key` draws the
  coordinates (one subkey per iteration). Secure aggregation: no — it needs every update in the
  clear (the Gram matrix of the rows, and each row's score, ranked to remove rows).
  """
  removed = int(-(-round(c * f * 1e9) // 10**9))  # ⌈c·f⌉ without float noise (c·f = 5.0000001)
  n, d = base.check_updates(updates, "dnc", f=f, min_n=lambda _: removed + 1)
  if iterations < 1 or sub_dim < 1 or not c >= 0:
    raise ValueError(f"dnc needs iterations >= 1, sub_dim >= 1 and c >= 0, got {iterations}, "
                     f"{sub_dim}, {c}.")
  width = min(sub_dim, d)
  finite = base.finite_rows(updates)
  x = base.zero_nonfinite_rows(updates, finite)
  count = jnp.maximum(jnp.sum(finite), 1).astype(updates.dtype)

  def kept_rows(k):
    sub = x if width == d else x[:, jax.random.choice(k, d, (width,), replace=False)]
    mu = finite.astype(sub.dtype) @ sub / count
    centred = jnp.where(finite[:, None], sub - mu, 0.0)
    eigenvalues, eigenvectors = jnp.linalg.eigh(centred @ centred.T)
    score = jnp.where(finite, eigenvalues[-1] * eigenvectors[:, -1] ** 2, jnp.inf)
    order = jnp.argsort(score, stable=True)
    return jnp.zeros(n, bool).at[order[:n - removed]].set(True)

  kept = jax.vmap(kept_rows)(jax.random.split(key, iterations))       # [iterations, n]
  removals = jnp.where(finite, iterations - jnp.sum(kept, axis=0), iterations + 1)
  chosen = finite & (removals == jnp.min(removals))
  return base.average_selected(updates, chosen.astype(updates.dtype))
