"""Monte Carlo summaries against NumPy."""

import numpy as np

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

