"""The worst case of the classic objective: the honest set S, |S| = n − f, maximizing a criterion.

The search is generic over a batched score `score(masks [K, n]) -> [K]` (higher = worse for the
honest clients): exhaustive over all C(n, f) masks when that is at most `exhaustive_limit`,
otherwise greedy removal (f steps, each scoring every single-client removal as one batch) then
swap local search (each sweep scores every in/out swap as one batch, and takes the best while it
improves). Two criteria are provided:

- `heterogeneity_score`: var_S = (1/|S|) Σ_{i∈S} ‖g_i − ḡ_S‖² of the honest clients' gradients, in
  closed form from their Gram matrix (cheap: the theory's G² proxy for hardness);
- a training score: the final honest loss of the vmapped robust training run under each mask
  (exact for the question "which Byzantine set hurts this algorithm most", one training per
  candidate, all candidates of a step in one batch); see `experiment`.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_robust.aggregators.minimum_diameter import subsets_of_size

Score = Callable[[np.ndarray], np.ndarray]


def _complement_masks(n: int, f: int) -> np.ndarray:
  """All honest masks with exactly f Byzantine clients, `[C(n, f), n]`."""
  byz = subsets_of_size(n, f)
  masks = np.ones((len(byz), n), bool)
  masks[np.repeat(np.arange(len(byz)), f), byz.ravel()] = False
  return masks


def search(score: Score, num_clients: int, f: int, *, exhaustive_limit: int = 20_000,
           max_sweeps: int = 5) -> tuple[np.ndarray, float, dict]:
  """The honest mask `[n]` with n − f True maximizing `score`, its score, and how it was found
  (method, number of masks scored)."""
  n = num_clients
  if not 0 <= f < n:
    raise ValueError(f"worst case needs 0 <= f < n={n}, got f={f}.")
  if math.comb(n, f) <= exhaustive_limit:
    masks = _complement_masks(n, f)
    scores = np.asarray(score(masks))
    best = int(np.argmax(scores))
    return masks[best], float(scores[best]), {"method": "exhaustive", "scored": len(masks)}
  mask = np.ones(n, bool)
  scored = 0
  for _ in range(f):  # greedy removal
    candidates = np.repeat(mask[None], int(mask.sum()), axis=0)
    candidates[np.arange(len(candidates)), np.flatnonzero(mask)] = False
    scores = np.asarray(score(candidates))
    scored += len(candidates)
    mask = candidates[int(np.argmax(scores))]
  best_score = float(np.asarray(score(mask[None]))[0])
  sweeps = 0
  for sweeps in range(1, max_sweeps + 1):  # swap local search
    inside, outside = np.flatnonzero(mask), np.flatnonzero(~mask)
    if len(outside) == 0:
      break
    pairs = [(i, j) for i in inside for j in outside]
    candidates = np.repeat(mask[None], len(pairs), axis=0)
    for row, (i, j) in enumerate(pairs):
      candidates[row, i], candidates[row, j] = False, True
    scores = np.asarray(score(candidates))
    scored += len(candidates)
    if scores.max() <= best_score:
      break
    mask, best_score = candidates[int(np.argmax(scores))], float(scores.max())
  return mask, best_score, {"method": "greedy+swaps", "scored": scored, "sweeps": sweeps}


def heterogeneity_score(gradients: jax.Array) -> Score:
  """Batched var_S = (1/m) Σ_{i∈S} ‖g_i‖² − ‖(1/m) Σ_{i∈S} g_i‖², m = |S|, from the Gram matrix
  of `gradients [n, d]` (centred first for precision)."""
  g = jnp.asarray(gradients, jnp.float32)
  g = g - jnp.mean(g, axis=0)
  gram = np.asarray(g @ g.T, np.float64)
  sq = np.diag(gram)

  def score(masks: np.ndarray) -> np.ndarray:
    h = np.asarray(masks, np.float64)
    m = h.sum(1)
    return (h @ sq) / m - np.einsum("kn,nm,km->k", h, gram, h) / m ** 2

  return score
