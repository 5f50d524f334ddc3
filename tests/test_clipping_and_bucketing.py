"""Clipping pre-aggregators, centered clipping (stateful), bucketing and weighted rules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_robust import aggregators as agg
from test_aggregators import D
from test_aggregators import data
from test_aggregators import np_trimmed_mean
from test_aggregators import np_weiszfeld
from test_aggregators import poisoned


def np_clip(x, c):
  norms = np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
  return x * np.minimum(1.0, c / np.maximum(norms, 1e-300))


def np_centered_clipping(x, v, tau, iterations):
  finite = np.all(np.isfinite(x), axis=1)
  v = v.astype(np.float64)
  for _ in range(iterations):
    diff = np.where(finite[:, None], x.astype(np.float64) - v, 0.0)
    v = v + np_clip(diff, tau).sum(0) / len(x)
  return v


def test_static_clipping(rng):
  x = data(rng, 9) * 3
  np.testing.assert_allclose(agg.static_clipping(x, threshold=2.0), np_clip(x, 2.0), atol=1e-6)
  big = np.full((2, D), 1e30, np.float32)  # norms overflow float32; clipping stays exact
  np.testing.assert_allclose(agg.static_clipping(big, threshold=1.0),
                             np.full((2, D), 1 / np.sqrt(D)), rtol=1e-6)


@pytest.mark.parametrize("n,f", [(10, 2), (25, 5), (11, 0)])
def test_adaptive_robust_clipping(rng, n, f):
  x = data(rng, n) * rng.uniform(0.5, 5, size=(n, 1)).astype(np.float32)
  k = int(np.floor(2 * (f / n) * (n - f)))
  norms = np.linalg.norm(x.astype(np.float64), axis=1)
  threshold = np.sort(norms)[::-1][k]
  expected = np_clip(x, threshold) if k else x
  np.testing.assert_allclose(agg.adaptive_robust_clipping(x, f=f), expected, atol=1e-5)


def test_clipping_sends_nonfinite_rows_to_zero(rng):
  x = poisoned(data(rng, 9), ("nan", "inf"))
  for out in (agg.static_clipping(x), agg.adaptive_robust_clipping(x, f=2)):
    out = np.asarray(out)
    np.testing.assert_array_equal(out[9:], 0.0)
    assert np.all(np.isfinite(out))


@pytest.mark.parametrize("tau,iterations", [(10.0, 3), (0.5, 1), (0.3, 5)])
def test_centered_clipping_matches_numpy(rng, tau, iterations):
  x = data(rng, 12)
  v0 = rng.normal(size=D).astype(np.float32)
  got = agg.centered_clipping(x, center=v0, tau=tau, iterations=iterations)
  np.testing.assert_allclose(got, np_centered_clipping(x, v0, tau, iterations), atol=1e-5)
  x = poisoned(data(rng, 12), ("nan", "inf", "huge"))
  got = agg.centered_clipping(x, center=v0, tau=tau, iterations=iterations)
  np.testing.assert_allclose(got, _cc_with_far_rows(x, v0, tau, iterations), atol=1e-4)


def _cc_with_far_rows(x, v0, tau, iterations):
  """NumPy reference: NaN/inf rows contribute 0; a huge finite row pulls with norm τ."""
  finite = np.all(np.isfinite(x), axis=1)
  v = v0.astype(np.float64)
  for _ in range(iterations):
    total = np.zeros(D)
    for row, ok in zip(x.astype(np.float64), finite):
      if ok:
        diff = row - v
        total += diff * min(1.0, tau / np.linalg.norm(diff))
    v = v + total / len(x)
  return v


def test_centered_clipping_carries_its_centre_through_the_state(rng):
  rule = agg.get("centered_clipping", f=2, options={"centered_clipping": {"tau": 0.5}})
  x1, x2 = data(rng, 8), data(rng, 8)
  state = rule.init(D)
  key = jax.random.key(0)
  out1, state, _ = rule.apply(x1, state, key)
  out2, state, _ = rule.apply(x2, state, key)
  np.testing.assert_allclose(out1, np_centered_clipping(x1, np.zeros(D), 0.5, 3), atol=1e-5)
  np.testing.assert_allclose(out2, np_centered_clipping(x2, np.asarray(out1), 0.5, 3), atol=1e-5)
  np.testing.assert_array_equal(state[0], out2)


def test_bucketing_matches_numpy_and_s1_is_a_permutation(rng):
  x = data(rng, 10)
  key = jax.random.key(3)
  perm = np.asarray(jax.random.permutation(key, 10))
  out = np.asarray(agg.bucketing(x, key=key, bucket_size=3))
  expected = np.stack([x[perm[i:i + 3]].mean(0) for i in range(0, 10, 3)])
  np.testing.assert_allclose(out, expected, atol=1e-6)
  same = np.asarray(agg.bucketing(x, key=key, bucket_size=1))
  np.testing.assert_array_equal(same, x[perm])
  np.testing.assert_allclose(np.sort(same, 0), np.sort(x, 0))


def test_bucketing_is_deterministic_per_key_and_differs_across_keys(rng):
  x = data(rng, 12)
  rule = agg.get("bucketing+geometric_median", f=2)
  a, b = rule(x, jax.random.key(1)), rule(x, jax.random.key(1))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, rule(x, jax.random.key(2)))


def test_weighted_rules(rng):
  x = data(rng, 9)
  w = rng.integers(1, 4, size=9).astype(np.float32)
  np.testing.assert_allclose(agg.get("mean", f=0, weighted=True)(x, weights=w),
                             w @ x.astype(np.float64) / w.sum(), atol=1e-5)
  np.testing.assert_allclose(agg.get("gm", f=0, weighted=True,
                                     options={"gm": {"gtol": 1e-7}})(x, weights=w),
                             np_weiszfeld(x, w), atol=1e-4)
  # Weighted trimmed mean with integer weights = trimmed mean of rows repeated w_i times,
  # trimming (f/n)·W values from each end (W = Σw; a fraction of the boundary value).
  f = 2
  got = np.asarray(agg.trimmed_mean(x, f=f, weights=w))
  total, trim = w.sum(), f / 9 * w.sum()
  expected = []
  for col in x.T.astype(np.float64):
    order = np.argsort(col, kind="stable")
    values, weights = col[order], w[order]
    cum = np.concatenate([[0], np.cumsum(weights)])
    kept = np.clip(np.minimum(cum[1:], total - trim) - np.maximum(cum[:-1], trim), 0, None)
    expected.append((kept * values).sum() / (total - 2 * trim))
  np.testing.assert_allclose(got, expected, atol=1e-5)
  np.testing.assert_allclose(agg.trimmed_mean(x, f=f, weights=np.ones(9, np.float32)),
                             np_trimmed_mean(x, f), atol=1e-5)


def test_weights_through_bucketing_and_rules_without_weighted_form(rng):
  x = data(rng, 10)
  w = rng.uniform(1, 3, size=10).astype(np.float32)
  rule = agg.get("bucketing+mean", f=0, weighted=True,
                 options={"bucketing": {"bucket_size": 3}})
  # Weighted bucket means averaged with bucket weights = the weighted mean of all rows.
  np.testing.assert_allclose(rule(x, jax.random.key(0), weights=w),
                             w @ x.astype(np.float64) / w.sum(), atol=1e-5)
  with pytest.raises(ValueError, match=r"'krum' has no weighted form; weighted rules: "
                                       r"geometric_median, mean, rfa_one_step, robust_lr, "
                                       r"trimmed_mean, weak_dp"):
    agg.get("krum", f=1, weighted=True)
