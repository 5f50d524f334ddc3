"""κ̂ estimator and the published bounds."""

import numpy as np
import pytest

from fedjax_robust import aggregators as agg
from fedjax_robust.aggregators import robustness


def test_bounds():
  assert robustness.kappa_lower_bound(25, 5) == 5 / 15
  r = 5 / 15
  assert robustness.kappa_upper_bound("trimmed_mean", 25, 5) == pytest.approx(6 * r * (1 + r))
  assert robustness.kappa_upper_bound("gm", 25, 5) == pytest.approx(4 * (1 + r) ** 2)
  assert robustness.kappa_upper_bound("krum", 25, 5) == pytest.approx(6 * (1 + r))
  assert robustness.kappa_upper_bound("nnm+trimmed_mean", 25, 5) == pytest.approx(
      8 * 5 / 20 * (6 * r * (1 + r) + 1))
  assert robustness.kappa_upper_bound("mean", 25, 5) is None


def test_empirical_kappa_by_hand(rng):
  honest = rng.normal(size=(8, 5)).astype(np.float32)
  mean = honest.astype(np.float64).mean(0)
  var = ((honest - mean) ** 2).sum(1).mean()
  out = robustness.empirical_kappa(agg.get("mean", f=2), honest, 2, ["sign_flip", "ipm"])
  # mean of 8 honest rows and 2 copies of −μ: (8μ − 2μ)/10 = 0.6 μ, error 0.4 μ.
  assert out["sign_flip"] == pytest.approx(np.sum((0.4 * mean) ** 2) / var, rel=1e-4)
  assert out["ipm"] == pytest.approx(np.sum(((8 - 0.2) / 10 * mean - mean) ** 2) / var, rel=1e-4)
  assert out["kappa"] == max(out["sign_flip"], out["ipm"])


def test_robust_rules_stay_within_their_bounds_and_mean_does_not(rng):
  n, f = 15, 3
  honest = (rng.normal(size=(n - f, 20)) + 2.0).astype(np.float32)
  for spec in ("trimmed_mean", "coordinate_median", "geometric_median", "krum", "multi_krum",
               "nnm+trimmed_mean"):
    kappa = robustness.empirical_kappa(agg.get(spec, f=f), honest, f)["kappa"]
    assert np.isfinite(kappa), spec
    assert kappa <= robustness.kappa_upper_bound(spec, n, f), spec
  assert robustness.empirical_kappa(agg.get("mean", f=f), honest, f)["kappa"] == np.inf
