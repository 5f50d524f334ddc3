"""Fang et al.'s attack on the trimmed mean / median against a NumPy transcription of its
intervals, and its effect on the coordinate-wise median."""

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_robust import aggregators
from fedjax_robust.attacks import model_poisoning as mp


def np_intervals(updates, byzantine, b=2.0):
  honest = updates[~byzantine].astype(np.float64)
  s = np.sign(honest.mean(0))
  w_max, w_min = honest.max(0), honest.min(0)
  lo, hi = np.empty_like(w_max), np.empty_like(w_max)
  for j in range(len(s)):
    if s[j] >= 0:   # the honest direction is up: push down, below the smallest honest value
      lo[j], hi[j] = (w_min[j] / b, w_min[j]) if w_min[j] > 0 else (b * w_min[j], w_min[j])
    else:           # push up, above the largest honest value
      lo[j], hi[j] = (w_max[j], b * w_max[j]) if w_max[j] > 0 else (w_max[j] / b, w_max[j])
  return lo, hi


def test_values_lie_in_the_papers_intervals_and_honest_rows_are_untouched():
  rng = np.random.default_rng(1)
  n, d = 11, 400
  updates = (rng.normal(0.0, 1.0, size=(n, d)) + rng.normal(size=d) * 0.5).astype(np.float32)
  byzantine = np.zeros(n, bool)
  byzantine[[0, 5, 6]] = True
  updates[byzantine] = np.nan
  out = np.asarray(mp.fang(jax.random.key(0), jnp.asarray(updates), jnp.asarray(byzantine)))
  np.testing.assert_array_equal(out[~byzantine], updates[~byzantine])
  a, b = np_intervals(updates, byzantine)      # the paper's endpoints, in its order
  lo, hi = np.minimum(a, b), np.maximum(a, b)  # ([w_max/b, w_max] when w_max < 0 is reversed)
  mal = out[byzantine]
  assert np.all(mal >= lo - 1e-6) and np.all(mal <= hi + 1e-6)
  honest = updates[~byzantine]
  up = honest.mean(0) < 0                      # pushed up where the honest mean is negative
  assert np.all(mal[:, up] >= honest.max(0)[up] - 1e-6)
  assert np.all(mal[:, ~up] <= honest.min(0)[~up] + 1e-6)
  # Uniform within the interval: the mean position is near 1/2, and clients differ.
  position = (mal - np.asarray(a)) / np.where(b != a, b - a, 1.0)
  assert abs(position.mean() - 0.5) < 0.03 and not np.allclose(mal[0], mal[1])


def test_it_moves_the_median_against_the_honest_direction():
  rng = np.random.default_rng(2)
  n, d = 11, 200
  updates = (rng.normal(size=(n, d)) + 1.0).astype(np.float32)   # honest direction: up
  byzantine = np.zeros(n, bool)
  byzantine[:4] = True
  out = mp.fang(jax.random.key(1), jnp.asarray(updates), jnp.asarray(byzantine))
  median = aggregators.get("coordinate_median", f=4)
  honest = updates[~byzantine]
  moved = np.asarray(median(out)) - np.median(honest, axis=0)
  direction = np.sign(honest.mean(0))          # the median moves against it, coordinate-wise
  assert np.all(moved * direction <= 1e-6)
  assert np.mean(moved * direction < 0) > 0.95
