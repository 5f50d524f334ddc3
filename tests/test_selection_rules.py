"""Selection rules (Krum, Multi-Krum, MDA, MoNNA) and MeaMed against NumPy references."""

import itertools

import jax
import numpy as np
import pytest

from fedjax_robust import aggregators as agg
from test_aggregators import D
from test_aggregators import data
from test_aggregators import poisoned


def np_sq_dist(x):
  x = x.astype(np.float64)
  return ((x[:, None] - x[None]) ** 2).sum(-1)


def np_krum_scores(x, f):
  dist = np_sq_dist(x)
  n = len(x)
  return np.array([np.sort(np.delete(dist[i], i))[:n - f - 2].sum() for i in range(n)])


def np_multi_krum(x, f, m):
  return x[np.argsort(np_krum_scores(x, f), kind="stable")[:m]].astype(np.float64).mean(0)


def np_mda(x, f):
  dist = np_sq_dist(x)
  best = min(itertools.combinations(range(len(x)), len(x) - f),
             key=lambda s: max(dist[i, j] for i in s for j in s))
  return x[list(best)].astype(np.float64).mean(0)


def np_monna(x, f, ref=0):
  dist = ((x.astype(np.float64) - x[ref]) ** 2).sum(-1)
  return x[np.argsort(dist, kind="stable")[:len(x) - f]].astype(np.float64).mean(0)


def np_meamed(x, f):
  """Per coordinate, the n − f values closest to the median; at equal distance on both sides of
  the median the smaller values first (columns sorted, then a stable sort by distance)."""
  s = np.sort(x.astype(np.float64), 0)
  idx = np.argsort(np.abs(s - np.median(s, 0)), axis=0, kind="stable")[:len(x) - f]
  return np.take_along_axis(s, idx, 0).mean(0)


SHAPES = [(5, 1), (10, 3), (11, 2), (25, 5)]


@pytest.mark.parametrize("n,f", SHAPES)
def test_krum_family_matches_numpy(rng, n, f):
  x = data(rng, n)
  np.testing.assert_allclose(agg.krum_scores(x, f=f), np_krum_scores(x, f), rtol=1e-4)
  np.testing.assert_allclose(agg.krum(x, f=f), np_multi_krum(x, f, 1), atol=1e-6)
  np.testing.assert_allclose(agg.multi_krum(x, f=f), np_multi_krum(x, f, n - f), atol=1e-5)
  np.testing.assert_allclose(agg.multi_krum(x, f=f, m=2), np_multi_krum(x, f, 2), atol=1e-5)


@pytest.mark.parametrize("n,f", [(5, 1), (8, 2), (10, 3), (12, 4)])
def test_mda_matches_exhaustive_numpy(rng, n, f):
  x = data(rng, n)
  np.testing.assert_allclose(agg.minimum_diameter_averaging(x, f=f), np_mda(x, f), atol=1e-5)


@pytest.mark.parametrize("n,f", SHAPES)
def test_monna_and_meamed_match_numpy(rng, n, f):
  x = data(rng, n)
  np.testing.assert_allclose(agg.monna(x, f=f), np_monna(x, f), atol=1e-5)
  np.testing.assert_allclose(agg.monna(x, f=f, reference_index=3), np_monna(x, f, 3), atol=1e-5)
  for m in (n, n + 1):
    y = data(rng, m)
    np.testing.assert_allclose(agg.meamed(y, f=f), np_meamed(y, f), atol=1e-5)


def test_krum_picks_an_inlier_among_clustered_points():
  rng = np.random.default_rng(0)
  inliers = rng.normal(scale=0.1, size=(9, D)).astype(np.float32)
  outliers = (rng.normal(size=(3, D)) * 50).astype(np.float32)
  x = np.concatenate([outliers[:2], inliers, outliers[2:]])
  chosen = np.asarray(agg.krum(x, f=3))
  assert any(np.array_equal(chosen, row) for row in inliers)
  assert np.linalg.norm(agg.multi_krum(x, f=3) - inliers.mean(0)) < 0.2
  assert np.linalg.norm(agg.minimum_diameter_averaging(x, f=3) - inliers.mean(0)) < 1e-5


@pytest.mark.parametrize("kinds", [("nan",), ("inf", "-inf"), ("nan", "huge", "large")])
def test_selection_rules_never_select_nonfinite_rows(rng, kinds):
  honest = data(rng, 12)
  f = len(kinds)
  x = poisoned(honest, kinds)
  # Far finite stand-ins give the same selections in NumPy.
  far = np.concatenate([honest, 1e6 + np.arange(f * D, dtype=np.float32).reshape(f, D)])
  np.testing.assert_allclose(agg.krum(x, f=f), np_multi_krum(far, f, 1), atol=1e-5)
  np.testing.assert_allclose(agg.multi_krum(x, f=f), np_multi_krum(far, f, 12), atol=1e-5)
  np.testing.assert_allclose(agg.monna(x, f=f), np_monna(far, f), atol=1e-5)
  np.testing.assert_allclose(agg.minimum_diameter_averaging(x, f=f), np_mda(far, f), atol=1e-5)
  stand_in = np.where(np.isnan(x) | (x > 1e10), 1e35, np.where(x < -1e10, -1e35, x))
  np.testing.assert_allclose(agg.meamed(x, f=f), np_meamed(stand_in, f), atol=1e-5)


def test_mda_refuses_an_intractable_search(rng):
  with pytest.raises(ValueError, match=r"C\(n=40, f=10\) = 847,660,528 subsets exceeds "
                                       r"max_subsets=100,000"):
    agg.minimum_diameter_averaging(data(rng, 40), f=10)


def test_krum_needs_n_at_least_2f_plus_3(rng):
  with pytest.raises(ValueError, match=r"krum: needs n >= 9 clients for f=3, got n=8"):
    agg.krum(data(rng, 8), f=3)


# ----------------------------------------------------------------------- spectral rules, Bulyan
def np_top_eigenvalue(x, w=None):
  x = x.astype(np.float64)
  w = np.ones(len(x)) if w is None else w
  mu = w @ x / w.sum()
  cov = (x - mu).T @ ((x - mu) * w[:, None]) / w.sum()
  return np.linalg.eigh(cov)[0][-1], np.linalg.eigh(cov)[1][:, -1], mu


def np_smea(x, f):
  best = min(itertools.combinations(range(len(x)), len(x) - f),
             key=lambda s: np_top_eigenvalue(x[list(s)])[0])
  return x[list(best)].astype(np.float64).mean(0)


CAF_DELTA = 2.0 ** -20


def caf_step(x, c, delta):
  """CAF's weight update: τ_i = ((x_i − μ_c)·v)² over the rows still in (c_i > 0), 0 for the
  others, so τ_max is the maximum over the rows still in; c_i ← c_i (1 − τ_i/τ_max), and 0 where
  τ_i ≥ (1 − δ) τ_max. Returns (λ, μ_c, new c)."""
  lam, v, mu = np_top_eigenvalue(x, c)
  tau = np.where(c > 0, ((x - mu) @ v) ** 2, 0.0)
  tau_max = tau.max()
  return lam, mu, np.where(tau >= (1 - delta) * tau_max, 0.0, c * (1 - tau / tau_max))


def np_caf(x, f, delta=CAF_DELTA, c=None):
  n = len(x)
  x = x.astype(np.float64)
  c = np.ones(n) if c is None else c
  best_mu, best_lambda = None, np.inf
  while c.sum() > n - 2 * f:
    lam, mu, c = caf_step(x, c, delta)
    if lam < best_lambda:
      best_lambda, best_mu = lam, mu
  return best_mu


def np_bulyan(x, f):
  n = len(x)
  dist = np_sq_dist(x)
  remaining, chosen = list(range(n)), []
  for _ in range(n - 2 * f):
    k = max(len(remaining) - f - 2, 1)
    scores = [np.sort([dist[i, j] for j in remaining if j != i])[:k].sum() for i in remaining]
    pick = remaining[int(np.argmin(scores))]
    chosen.append(pick)
    remaining.remove(pick)
  return np_meamed(x[chosen], 2 * f)


@pytest.mark.parametrize("n,f", [(5, 1), (8, 2), (10, 3), (11, 2)])
def test_smea_and_caf_match_numpy(rng, n, f):
  x = data(rng, n, d=4)
  np.testing.assert_allclose(agg.smea(x, f=f), np_smea(x, f), atol=1e-5)
  np.testing.assert_allclose(agg.caf(x, f=f), np_caf(x, f), atol=1e-4)


@pytest.mark.parametrize("n,f", [(7, 1), (11, 2), (15, 3), (20, 2)])
def test_bulyan_matches_numpy(rng, n, f):
  x = data(rng, n)
  np.testing.assert_allclose(agg.bulyan(x, f=f), np_bulyan(x, f), atol=1e-5)


@pytest.mark.parametrize("kinds", [("nan",), ("inf", "large")])
def test_spectral_rules_and_bulyan_exclude_nonfinite_rows(rng, kinds):
  honest = data(rng, 11, d=4)
  f = len(kinds)
  rows = {"nan": np.nan, "inf": np.inf, "large": 1e20}
  x = np.concatenate([honest, np.stack([np.full(4, rows[k], np.float32) for k in kinds])])
  far = np.concatenate([honest, 1e6 + np.arange(f * 4, dtype=np.float32).reshape(f, 4)])
  np.testing.assert_allclose(agg.smea(x, f=f), np_smea(far, f), atol=1e-5)
  assert np.all(np.isfinite(agg.caf(x, f=f)))
  np.testing.assert_allclose(agg.caf(x, f=f), _caf_without(honest, f, n_total=11 + f), atol=1e-4)
  np.testing.assert_allclose(agg.bulyan(x, f=f), np_bulyan(far, f), atol=1e-5)


def _caf_without(honest, f, n_total):
  """CAF with the Byzantine rows' weights at 0 from the start, stopping at Σc ≤ n − 2f."""
  x = np.concatenate([honest, np.zeros((n_total - len(honest), honest.shape[1]))])
  return np_caf(x, f, c=np.r_[np.ones(len(honest)), np.zeros(n_total - len(honest))])


def test_bulyan_needs_n_at_least_4f_plus_3(rng):
  with pytest.raises(ValueError, match=r"bulyan: needs n >= 11 clients for f=2, got n=10"):
    agg.bulyan(data(rng, 10), f=2)
