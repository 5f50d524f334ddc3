"""(G, B)-gradient dissimilarity of realized honest sets, from the Gram matrix of client gradients.

For client gradients g_1..g_n at one model θ and an honest set S (mask `[n]`, m = |S|):

    h(S) = (1/m) Σ_{i∈S} ‖g_i − ḡ_S‖²      (heterogeneity of S)
    u(S) = ‖ḡ_S‖² = ‖∇L_S(θ)‖²              (squared norm of the honest gradient)

S satisfies (G, B)-gradient dissimilarity along a trajectory θ_0..θ_T (Allouah et al., AISTATS
2023, Assumption 2; ../shared/REFERENCE.md "Heterogeneity and bounds") iff h_t(S) ≤ G² + B² u_t(S)
for every t, so for a given B² the smallest G² is

    G²(B²) = max_t (h_t − B² u_t)₊.

Both h and u are quadratic forms of the mask in the Gram matrix, so thousands of masks cost matrix
products, never a loop over draws or subsets. For precision in float32 the gradients are centred on
their mean c first (h is translation invariant; u is recovered exactly from the centred Gram G',
v = g'c and ‖c‖²):

    u(S) = mᵀG'm/m² + 2·(m·v)/m + ‖c‖²,   h(S) = (m·diag G')/m − mᵀG'm/m².
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class GramStatistics(NamedTuple):
  """What h(S) and u(S) need from gradients `[n, d]`, for any mask."""
  gram: jax.Array      # [n, n] Gram matrix of the centred gradients g_i − c
  shift: jax.Array     # [n] (g_i − c)·c
  centre_sq: jax.Array  # [] ‖c‖²


def gram_statistics(gradients: jax.Array) -> GramStatistics:
  """The centred Gram form of client gradients `[n, d]` (rows must be finite to be meaningful;
  a non-finite gradient makes every statistic non-finite)."""
  g = jnp.asarray(gradients)
  n = g.shape[0]
  c = jnp.ones((n,), g.dtype) @ g / n  # a matrix product: fast on every backend
  centred = g - c
  return GramStatistics(centred @ centred.T, centred @ c, c @ c)


def set_statistics(stats: GramStatistics, masks: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(h(S), u(S)) for masks `[..., n]` (True = honest); NaN where S is empty."""
  h = jnp.asarray(masks).astype(stats.gram.dtype)
  m = jnp.sum(h, axis=-1)
  safe = jnp.maximum(m, 1.0)
  quad = jnp.einsum("...i,ij,...j->...", h, stats.gram, h) / safe ** 2
  spread = h @ jnp.diagonal(stats.gram) / safe - quad
  norm_sq = quad + 2.0 * (h @ stats.shift) / safe + stats.centre_sq
  empty = m == 0
  # Rounding can leave a tiny negative h when every honest gradient is equal: h ≥ 0 by definition.
  return (jnp.where(empty, jnp.nan, jnp.maximum(spread, 0.0)),
          jnp.where(empty, jnp.nan, jnp.maximum(norm_sq, 0.0)))


def dissimilarity(heterogeneity: np.ndarray, gradient_sq: np.ndarray,
                  b_squared: np.ndarray) -> np.ndarray:
  """G²(B²) = max_t (h_t − B² u_t)₊ for each B² of a grid: `[T, S]` values of h and u (rounds ×
  draws) and `[K]` values of B² give `[K, S]`. A draw with a non-finite h or u at some round
  (diverged) gets NaN: its heterogeneity is undefined."""
  h = np.asarray(heterogeneity, np.float64)
  u = np.asarray(gradient_sq, np.float64)
  b2 = np.asarray(b_squared, np.float64)
  with np.errstate(invalid="ignore", over="ignore"):  # inf − inf of overflowed draws: NaN below
    excess = np.maximum(h[None] - b2[:, None, None] * u[None], 0.0)  # [K, T, S]
  g2 = excess.max(axis=1)
  defined = np.all(np.isfinite(h) & np.isfinite(u), axis=0)
  return np.where(defined[None], g2, np.nan)


@jax.jit
def draw_statistics(gradients: jax.Array, masks: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(h, u) `[S]` of S draws at once, each from its own client gradients `gradients [S, n, d]`
  (at that draw's model) and its own mask `masks [S, n]`: one compiled program for the batch."""
  return jax.vmap(lambda g, m: set_statistics(gram_statistics(g), m))(gradients, masks)
