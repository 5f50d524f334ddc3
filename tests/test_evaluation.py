"""Monte Carlo summaries against NumPy."""

import numpy as np
import pytest

from fedjax_robust import evaluation


def test_summarize_matches_numpy(rng):
  x = rng.normal(size=500)
  s = evaluation.summarize(x, worst="max")
  assert s["count"] == 500 and s["undefined"] == 0
  np.testing.assert_allclose(s["mean"], x.mean())
  np.testing.assert_allclose(s["ci95"], 1.959964 * x.std(ddof=1) / np.sqrt(500), rtol=1e-6)
  np.testing.assert_allclose(s["worst"], x.max())
  np.testing.assert_allclose(s["q50"], np.quantile(x, 0.5, method="inverted_cdf"))
  assert evaluation.summarize(x, worst="min")["worst"] == x.min()


def test_summarize_excludes_undefined_and_keeps_divergence_visible():
  s = evaluation.summarize(np.array([1.0, np.nan, 3.0]))
  assert s["count"] == 2 and s["undefined"] == 1 and s["mean"] == 2.0
  s = evaluation.summarize(np.array([1.0, np.inf, 3.0, 2.0]))
  assert s["mean"] == np.inf and s["q50"] == 2.0 and s["worst"] == np.inf


def test_diverged_as_inf():
  loss = np.array([0.5, np.nan, np.inf, np.nan])
  out = evaluation.diverged_as_inf(loss, num_honest=np.array([3, 3, 3, 0]))
  np.testing.assert_array_equal(out, [0.5, np.inf, np.inf, np.nan])


def test_count_law():
  masks = np.array([[True, True, False], [False, False, True], [True, True, True]])
  law = evaluation.count_law(evaluation.byzantine_counts(masks), 3, f=1,
                             exact_pmf=np.array([0.5, 0.25, 0.25, 0.0]))
  np.testing.assert_allclose(law["empirical_pmf"], [1 / 3, 1 / 3, 1 / 3, 0])
  assert law["p_exceeds_f"] == 1 / 3 and law["p_no_honest_majority"] == 1 / 3
  assert law["exact_mean"] == 0.75 and law["exact_p_exceeds_f"] == 0.25


def test_cvar(rng):
  x = rng.normal(size=1000)
  np.testing.assert_allclose(evaluation.cvar(x, 0.0), np.mean(x), rtol=1e-12)  # CVaR_0 = mean
  np.testing.assert_allclose(evaluation.cvar(x, 0.9), np.sort(x)[-100:].mean())
  np.testing.assert_allclose(evaluation.cvar(x, 0.9, worst="min"), np.sort(x)[:100].mean())
  np.testing.assert_allclose(evaluation.cvar(x, 0.999), x.max())
  assert evaluation.summarize(x)["cvar90"] == evaluation.cvar(x, 0.9)


def test_a_quantile_ci_the_sample_cannot_bound_is_unbounded_not_nan(rng):
  """Issue 35, item 7: with 32 draws the exact 95% CI of q05 has no lower order statistic (all 32
  values exceed q05 with probability 0.95^32 = 0.19 > 0.025): its lower end is −inf (the interval
  (−inf, X_(k)] covers), not NaN; the upper end is the order statistic of the binomial law."""
  import scipy.stats  # pylint: disable=g-import-not-at-top
  x = rng.random(32)
  lo, hi = evaluation.quantile_interval(x, 0.05)
  # Upper end X_(k): the smallest k with P(Binomial(32, 0.05) ≥ k) ≤ 0.025.
  k = next(k for k in range(1, 33) if scipy.stats.binom.sf(k - 1, 32, 0.05) <= 0.025)
  assert lo == -np.inf and hi == np.sort(x)[k - 1]
  assert evaluation.quantile_interval(x, 0.95)[1] == np.inf
  ci = evaluation.intervals(x, worst="min", method="normal")["worst_quantile_ci"]
  assert ci[0] == -np.inf and np.isfinite(ci[1])
  assert evaluation.quantile_interval(x[:5], 0.5) == (-np.inf, np.inf)  # a median needs 6
  assert not np.isnan(evaluation.quantile_interval(rng.random(72), 0.05)).any()
  assert np.isnan(evaluation.quantile_interval(np.array([np.nan]), 0.5)).all()  # no value


def test_identical_draws_get_an_exact_value_and_no_interval():
  """Issue 35, item 3: at a worst-case point with deterministic training the S draws are copies
  of one run; a table printed '0.3900 [0.3900, 0.3900]', an interval of nothing. Values that are
  all equal are flagged `identical` and get no CI of any kind (NaN), their exact value kept."""
  x = np.full(16, 0.39)
  s = evaluation.summarize(x)
  assert s["identical"] == 1 and s["mean"] == 0.39 and s["std"] == 0.0 and np.isnan(s["ci95"])
  for method in evaluation.INTERVALS:
    out = evaluation.intervals(x, method=method, resamples=99)
    assert out["identical"] and not out["heavy_tail"]
    for key in ("mean_ci", "median_ci", "worst_quantile_ci", "cvar90_ci"):
      assert np.isnan(out[key]).all(), (method, key)
  # Draws that vary keep their intervals; one value alone, or NaNs around equal values, are not
  # "identical draws" (one draw is not a replicate; the NaNs are draws left out).
  varied = evaluation.summarize(np.r_[x, 0.4])
  assert varied["identical"] == 0 and varied["ci95"] > 0
  assert evaluation.summarize(np.array([0.39]))["identical"] == 0
  assert evaluation.summarize(np.r_[x, np.nan])["identical"] == 1
  assert evaluation.summarize(np.full(4, np.inf))["identical"] == 0  # every draw diverged


def test_a_paired_difference_without_variance_is_deterministic_not_significant():
  """Issue 35, item 3: the paired table printed '−0.0077 [−0.0077, −0.0077] … p < 1e-4 (32)' for
  32 copies of one draw (Wilcoxon ranks 32 equal differences as if they were 32 replicates).
  Zero variance of the differences is 'deterministic': the exact difference, no CI, no p-value;
  `identical_draws` when each side is itself one repeated value (copies of one run)."""
  import scipy.stats  # pylint: disable=g-import-not-at-top
  copies = evaluation.paired_difference(np.full(32, 0.5023), np.full(32, 0.51))
  assert scipy.stats.wilcoxon(np.full(32, -0.0077)).pvalue < 1e-4  # what was printed
  assert copies["deterministic"] and copies["identical_draws"]
  np.testing.assert_allclose(copies["mean"], 0.5023 - 0.51, rtol=1e-12)
  for key in ("ci_low", "ci_high", "p_value", "wilcoxon_p"):
    assert np.isnan(copies[key]), key
  # Draws that differ but whose difference is the same in every draw: deterministic, not copies.
  shift = evaluation.paired_difference(np.arange(16) + 7.25, np.arange(16.0))
  assert shift["deterministic"] and not shift["identical_draws"]
  assert shift["mean"] == 7.25 and np.isnan(shift["wilcoxon_p"])
  # No difference in any draw: still no test (p = 1 would be a test of nothing).
  same = evaluation.paired_difference(np.ones(5), np.ones(5))
  assert same["deterministic"] and same["mean"] == 0 and np.isnan(same["p_value"])
  # Differences that vary are tested as before (against NumPy/SciPy), and flagged neither way.
  rng = np.random.default_rng(1)
  a, b = rng.normal(size=20), rng.normal(size=20)
  out = evaluation.paired_difference(a, b)
  assert not out["deterministic"] and not out["identical_draws"]
  np.testing.assert_allclose(out["p_value"], scipy.stats.ttest_rel(a, b).pvalue, rtol=1e-10)
