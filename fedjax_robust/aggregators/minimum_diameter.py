"""Minimum-diameter averaging (El Mhamdi, Guerraoui, Rouault, ICML 2018)."""

from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fedjax_robust.aggregators import base
from fedjax_robust.aggregators import distances

_CHUNK = 2048  # subsets scored per step of lax.map: bounds memory to _CHUNK·(n − f)² floats


@functools.lru_cache(maxsize=32)
def subsets_of_size(n: int, m: int) -> np.ndarray:
  """All subsets of {0..n−1} of size m, `[C(n, m), m]`, in lexicographic order."""
  return np.array(list(itertools.combinations(range(n), m)), np.int32).reshape(-1, m)


# The cost of the exact subset searches (this module's MDA and `spectral.smea`), for the job's
# plan: per subset of n − f rows, MDA looks up (n − f)² distances and SMEA takes the largest
# eigenvalue of an (n − f) × (n − f) matrix, ~(n − f)³. CPU seconds per unit, measured on the
# 2-core CPU here, jitted and vmapped over 8-16 draws of d = 2410 rows: MDA 3.4-4.7 ns per
# distance at (n, f) = (15, 3), (20, 4), (25, 5) (14 ns in a single unbatched call); SMEA 15-39 ns
# per (n − f)³ at (12, 2), (17, 3), (20, 4).
SEARCH_COST = {"minimum_diameter_averaging": (2, 4e-9), "smea": (3, 1.5e-8)}


def search_seconds(rule: str, n: int, f: int) -> float:
  """Estimated CPU seconds of one exact search by `rule` (a key of SEARCH_COST) over the C(n, f)
  subsets of n − f rows: C(n, f) · (n − f)^power · seconds per unit."""
  power, unit = SEARCH_COST[rule]
  return math.comb(n, f) * (n - f) ** power * unit


def check_subset_count(rule: str, n: int, f: int, max_subsets: int) -> None:
  count = math.comb(n, f)
  if count > max_subsets:
    raise ValueError(
        f"{rule}: exact search over C(n={n}, f={f}) = {count:,} subsets exceeds "
        f"max_subsets={max_subsets:,}. Raise the option max_subsets (memory and time grow "
        f"linearly with it) or use a rule without subset search.")


def minimum_diameter_averaging(updates: jax.Array, *, f: int,
                               max_subsets: int = 100_000) -> jax.Array:
  """MDA: the average of the subset S of n − f rows with the smallest diameter
  max_{i,j∈S} ‖x_i − x_j‖ (ties: the first subset in lexicographic order).

  Exact, by enumerating all C(n, f) subsets (`max_subsets` bounds it; above, a clear error).
  Cost: one Gram product, then O(C(n, f)·(n − f)²) on `[n, n]` in chunks of 2048 subsets.
  Non-finite input: such a row is at distance +inf from all others, so a subset containing it
  has infinite diameter and is never chosen while at most f rows are non-finite.
  Secure aggregation: no — it needs every update in the clear (the pairwise distances between
  the rows, to find the subset of smallest diameter).
  """
  n, _ = base.check_updates(updates, "minimum_diameter_averaging", f=f,
                            min_n=lambda f: 2 * f + 1)
  check_subset_count("minimum_diameter_averaging", n, f, max_subsets)
  subsets = subsets_of_size(n, n - f)
  dist = distances.pairwise_squared_distances(updates)

  def diameter(subset):
    return jnp.max(dist[subset[:, None], subset[None, :]])

  diameters = lax.map(diameter, jnp.asarray(subsets), batch_size=min(_CHUNK, len(subsets)))
  best = jnp.asarray(subsets)[jnp.argmin(diameters)]
  weights = jnp.zeros((n,), updates.dtype).at[best].set(1.0)
  return base.average_selected(updates, weights)
