"""Monte Carlo estimates over draws of the honest set: means with 95% CIs, quantiles, worst case.

The per-sample quantities (honest loss L_S(θ̂_S), honest accuracy, test accuracy) come from
`training.Simulator.evaluate`; this module turns `[S]` vectors of them into estimates of
E_{S~μ_H}[·] and its spread.
"""

from __future__ import annotations

import math
from typing import Sequence
import warnings

import numpy as np

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
_Z95 = 1.959963984540054


CVAR_LEVELS = (0.5, 0.9)


def cvar(values: np.ndarray, alpha: float, *, worst: str = "max") -> float:
  """CVaR_α: the mean of the worst ⌈(1 − α)·K⌉ of K values (the upper tail when worst='max').
  α = 0 is the mean; α → 1 approaches the worst value."""
  if not 0 <= alpha < 1:
    raise ValueError(f"CVaR level alpha must lie in [0, 1), got {alpha}.")
  values = np.sort(np.asarray(values, np.float64))
  if worst == "max":
    values = values[::-1]
  k = int(np.ceil((1 - alpha) * len(values) - 1e-9))  # (1 − 0.999)·1000 is 1.0000000000000009
  return float(np.mean(values[:k])) if k else float("nan")


def identical_values(values) -> bool:
  """Whether the defined (non-NaN) `values` are at least 2, finite and all equal: identical draws
  (e.g. one honest set repeated under deterministic training), whose spread is zero because they
  are copies, not because the estimate is exact over μ_H. Their value is exact; an interval or a
  test over them would treat copies as replicates."""
  x = _defined(values)
  return bool(x.size >= 2 and np.all(np.isfinite(x)) and np.all(x == x[0]))


IDENTICAL_NOTE = ("identical draws: every draw gave the same value (e.g. one honest set "
                  "repeated under deterministic training), an exact value: no CI or test")


def summarize(values: np.ndarray, *, worst: str = "max",
              quantiles: Sequence[float] = QUANTILES) -> dict[str, float]:
  """Mean, 95% CI half-width (normal approximation, 1.96·sd/√k), quantiles and worst value of
  the defined entries of `values` (NaN marks a sample where the quantity is undefined, e.g. no
  honest client). A sample where training diverged should be passed as +inf (loss): the mean is
  then +inf, as it should be, and quantiles stay meaningful ("inverted_cdf" picks sample values).
  `identical` (0/1): the defined values are identical draws (`identical_values`); their CI
  half-width is then NaN, not 0 (there is no interval, the value is exact).
  """
  if worst not in ("max", "min"):
    raise ValueError(f"worst must be 'max' or 'min', got {worst!r}.")
  values = np.asarray(values, np.float64)
  defined = values[~np.isnan(values)]
  out = {"count": int(defined.size), "undefined": int(values.size - defined.size),
         "identical": int(identical_values(defined))}
  if defined.size == 0:
    nan = float("nan")
    return {**out, "mean": nan, "ci95": nan, "std": nan, "worst": nan,
            **{f"q{round(100 * q):02d}": nan for q in quantiles},
            **{f"cvar{round(100 * a)}": nan for a in CVAR_LEVELS}}
  if defined.size > 1:
    std = float(np.std(defined, ddof=1)) if np.all(np.isfinite(defined)) else float("inf")
  else:
    std = 0.0
  mean = float(np.mean(defined))
  ci = (float("nan") if out["identical"] else
        _Z95 * std / math.sqrt(defined.size) if np.isfinite(mean) else float("inf"))
  out.update(mean=mean, ci95=ci, std=std,
             worst=float(defined.max() if worst == "max" else defined.min()))
  for q in quantiles:
    out[f"q{round(100 * q):02d}"] = float(np.quantile(defined, q, method="inverted_cdf"))
  for a in CVAR_LEVELS:
    out[f"cvar{round(100 * a)}"] = cvar(defined, a, worst=worst)
  return out


def diverged_as_inf(loss: np.ndarray, num_honest: np.ndarray) -> np.ndarray:
  """Honest losses with non-finite values (a diverged model) set to +inf, and NaN kept only for
  samples without any honest client (where L_S is undefined)."""
  loss = np.where(np.isfinite(loss), loss, np.inf)
  return np.where(num_honest > 0, loss, np.nan)


def byzantine_counts(masks: np.ndarray) -> np.ndarray:
  """Realized b per sample from honest masks `[S, n]`."""
  return np.sum(~np.asarray(masks, bool), axis=1)


def count_law(counts: np.ndarray, num_clients: int, *, f: int,
              exact_pmf: np.ndarray | None = None) -> dict:
  """The empirical law of b over samples, P(b > f) and P(b ≥ n/2), with the exact law if known."""
  counts = np.asarray(counts)
  empirical = np.bincount(counts, minlength=num_clients + 1) / counts.size
  out = {"empirical_pmf": empirical.tolist(), "mean": float(counts.mean()),
         "p_exceeds_f": float(np.mean(counts > f)),
         "p_no_honest_majority": float(np.mean(2 * counts >= num_clients)),
         "no_honest_majority_draws": np.flatnonzero(2 * counts >= num_clients).tolist()}
  if exact_pmf is not None:
    b = np.arange(num_clients + 1)
    out.update(exact_pmf=np.asarray(exact_pmf).tolist(),
               exact_mean=float(b @ exact_pmf),
               exact_p_exceeds_f=float(np.sum(exact_pmf[b > f])))
  return out


# ------------------------------------------------------------------- intervals for heavy tails
INTERVALS = ("normal", "bca", "percentile")
INTERVAL_NAMES = {
    "normal": "normal 95% CI (mean ± 1.96·sd/√k)",
    "bca": "bootstrap BCa 95% CI",
    "percentile": "bootstrap percentile 95% CI",
}
MEDIAN_INTERVAL_NAME = "exact order-statistic 95% CI (distribution-free)"


def _defined(values) -> np.ndarray:
  values = np.asarray(values, np.float64)
  return values[~np.isnan(values)]


def bootstrap_interval(values, statistic: str = "mean", *, method: str = "bca",
                       confidence: float = 0.95, resamples: int = 4999,
                       seed: int = 0) -> tuple[float, float, str]:
  """A bootstrap CI (scipy.stats.bootstrap, `method` 'bca' or 'percentile', a fixed seed so the
  same values give the same interval) of `statistic` ('mean', 'cvar90' upper tail, 'cvar90_low'
  lower tail) over the defined (non-NaN) `values`. Undefined (NaN, NaN) with fewer than 2
  values; (+inf, +inf) when a value is +inf (a diverged draw makes the mean and the upper CVaR
  infinite); (c, c) when every value equals c (the bootstrap is degenerate but the statistic is
  not). The third value is the method used: `method`, or 'percentile' where BCa is undefined
  (all jackknife values equal)."""
  import scipy.stats  # pylint: disable=g-import-not-at-top
  if method not in ("bca", "percentile"):
    raise ValueError(f"bootstrap method must be 'bca' or 'percentile', got {method!r}.")
  x = _defined(values)
  if x.size < 2:
    return float("nan"), float("nan"), method
  if statistic == "mean":
    fn = lambda v, axis=-1: np.mean(v, axis=axis)
  elif statistic in ("cvar90", "cvar90_low"):
    k = int(np.ceil(0.1 * x.size - 1e-9))
    sign = 1.0 if statistic == "cvar90" else -1.0
    fn = lambda v, axis=-1: sign * np.mean(-np.sort(-sign * v, axis=axis)[..., :k], axis=axis)
  else:
    raise ValueError(f"bootstrap statistic must be 'mean', 'cvar90' or 'cvar90_low', got "
                     f"{statistic!r}.")
  if not np.all(np.isfinite(x)):
    value = float(fn(x))
    if not np.isfinite(value):
      return value, value, method
  if np.ptp(x) == 0:
    return float(x[0]), float(x[0]), method
  def run(how):
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # BCa on degenerate jackknife values: NaN, handled below
      res = scipy.stats.bootstrap((x,), fn, method=how, confidence_level=confidence,
                                  n_resamples=resamples, vectorized=True,
                                  random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)
  lo, hi = run("BCa" if method == "bca" else "percentile")
  if method == "bca" and (np.isnan(lo) or np.isnan(hi)):
    # BCa's acceleration is undefined when the jackknife values are all equal (e.g. a CVaR of a
    # few tied values): the percentile interval is given instead, and `intervals` says so.
    lo, hi = run("percentile")
    return lo, hi, "percentile"
  return lo, hi, method


def quantile_interval(values, q: float = 0.5, *,
                      confidence: float = 0.95) -> tuple[float, float]:
  """The exact distribution-free CI of the q-quantile from order statistics (binomial;
  scipy.stats.quantile_test): valid for any continuous law, heavy tails and +inf values
  (diverged draws) included. With K values, the CI's lower end is the order statistic X_(j) with
  P(Binomial(K, q) < j) ≤ (1 − confidence)/2; when even X_(1) does not reach that (K too small
  for a tail quantile: q05 needs K ≥ 72 at 95%, the median K ≥ 6), the sample cannot bound the
  quantile from below and the end is −inf (the interval (−inf, X_(k)] still covers with at least
  that confidence); the upper end likewise +inf. (NaN, NaN) without any defined value."""
  import scipy.stats  # pylint: disable=g-import-not-at-top
  x = _defined(values)
  if x.size == 0:
    return float("nan"), float("nan")
  ci = scipy.stats.quantile_test(x, q=float(np.quantile(x[np.isfinite(x)], q))
                                 if np.any(np.isfinite(x)) else 0.0,
                                 p=q).confidence_interval(confidence)
  # scipy gives NaN for an end no order statistic reaches: unbounded by the sample.
  low, high = float(ci.low), float(ci.high)
  return (-math.inf if np.isnan(low) else low), (math.inf if np.isnan(high) else high)


def heavy_tail(values, *, worst: str = "max") -> bool:
  """Whether the worst tail is heavy enough that a mean ± normal CI misleads: a value is
  infinite (a diverged draw), or lies beyond Tukey's far-out fence (q75 + 3·IQR when worst is
  'max', q25 − 3·IQR when 'min')."""
  x = _defined(values)
  if x.size < 4:
    return False
  if not np.all(np.isfinite(x)):
    return True
  q25, q75 = np.quantile(x, [0.25, 0.75])
  iqr = q75 - q25
  return bool(x.max() > q75 + 3 * iqr) if worst == "max" else bool(x.min() < q25 - 3 * iqr)


def intervals(values, *, worst: str = "max", method: str = "bca",
              resamples: int = 4999) -> dict:
  """The intervals a table shows beside a mean: `mean_ci` by `method` ('normal': mean ±
  1.96·sd/√k; 'bca'/'percentile': bootstrap), `median_ci` and `worst_quantile_ci` (q95 of a
  loss, q05 of an accuracy; exact order statistics), `cvar90_ci`
  of the worst tail (bootstrap, or NaN with 'normal'), `heavy_tail`, and the names of the
  intervals shown. Identical draws (`identical_values`) get no interval of any kind (all NaN,
  `identical` 1, as `summarize` gives it): their value is exact, and copies are not
  replicates."""
  if method not in INTERVALS:
    raise ValueError(f"interval method must be one of {INTERVALS}, got {method!r}.")
  x = _defined(values)
  used = method
  if identical_values(x):
    nan = [float("nan"), float("nan")]
    return {"interval": "none", "interval_name": IDENTICAL_NOTE, "identical": 1,
            "mean_ci": nan, "median_ci": nan, "worst_quantile": 0.95 if worst == "max" else 0.05,
            "worst_quantile_ci": nan, "cvar90_ci": nan, "heavy_tail": False}
  if method == "normal":
    s = summarize(x, worst=worst)
    mean_ci = (s["mean"] - s["ci95"], s["mean"] + s["ci95"])
    cvar_ci = (float("nan"), float("nan"))
  else:
    *mean_ci, used = bootstrap_interval(x, "mean", method=method, resamples=resamples)
    *cvar_ci, _ = bootstrap_interval(x, "cvar90" if worst == "max" else "cvar90_low",
                                     method=method, resamples=resamples)
  return {"interval": used, "interval_name": INTERVAL_NAMES[used]
          + (" (BCa undefined: all jackknife values equal)" if used != method else ""),
          "mean_ci": list(mean_ci), "median_ci": list(quantile_interval(x, 0.5)),
          # The exact CI of the worst-side 95% quantile (q95 of a loss, q05 of an accuracy).
          "worst_quantile": 0.95 if worst == "max" else 0.05,
          "worst_quantile_ci": list(quantile_interval(x, 0.95 if worst == "max" else 0.05)),
          "cvar90_ci": list(cvar_ci), "heavy_tail": heavy_tail(x, worst=worst),
          "identical": 0}


# ----------------------------------------------------------------------- paired comparisons
def paired_difference(a, b, *, confidence: float = 0.95) -> dict:
  """Rule A minus rule B on the same draws (same masks and keys): the mean of the per-draw
  differences a_s − b_s with its paired-t CI and two-sided p-value (scipy.stats.ttest_rel), the
  median difference, and the Wilcoxon signed-rank p-value as a distribution-free check.

  The t statistics use the draws where both values are finite (`pairs`). The Wilcoxon test also
  keeps the draws where exactly one side is infinite (a diverged draw's loss is +inf: its
  difference ranks as the largest, so a rule that diverges where the other does not is not
  compared only on the draws it survived; `wilcoxon_pairs`). Counted apart: `undefined` (a NaN on
  either side, e.g. the accuracy of a diverged draw), `a_only_infinite` / `b_only_infinite` and
  `both_infinite`. With fewer than 2 pairs the estimates are NaN.

  `deterministic`: every difference (the Wilcoxon set, at least 2) is the same value c, so the
  differences have no variance: the mean and median are c exactly and there is no CI and no
  p-value (NaN; a test would count copies as replicates: 32 equal differences give a Wilcoxon
  p < 1e-4 from nothing). `identical_draws`: moreover each side is one value repeated in every
  draw (copies of one run, e.g. a worst-case point under deterministic training)."""
  import scipy.stats  # pylint: disable=g-import-not-at-top
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape:
    raise ValueError(f"paired values need the same draws: shapes {a.shape} and {b.shape}.")
  nan_either = np.isnan(a) | np.isnan(b)
  inf_a, inf_b = np.isinf(a) & ~nan_either, np.isinf(b) & ~nan_either
  both = np.isfinite(a) & np.isfinite(b)
  d = a[both] - b[both]
  one_sided = inf_a ^ inf_b
  ranked = np.concatenate([d, a[one_sided] - b[one_sided]])  # ±inf where one side diverged
  out = {"pairs": int(both.sum()), "wilcoxon_pairs": int(ranked.size),
         "undefined": int(nan_either.sum()),
         "a_only_infinite": int((inf_a & ~inf_b).sum()),
         "b_only_infinite": int((inf_b & ~inf_a).sum()),
         "both_infinite": int((inf_a & inf_b).sum()),
         "mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"),
         "p_value": float("nan"), "wilcoxon_p": float("nan"), "median": float("nan"),
         "heavy_tail": False, "test": "paired t", "deterministic": False,
         "identical_draws": False}
  if ranked.size >= 2 and np.all(ranked == ranked[0]):
    out.update(deterministic=True, test="none (deterministic: no variance)",
               identical_draws=bool(np.all(a == a[0]) and np.all(b == b[0])))
    if d.size >= 2:
      out["mean"] = out["median"] = float(d[0])
    return out
  if np.any(ranked != 0):
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # scipy's notes on ties and small samples
      out["wilcoxon_p"] = float(scipy.stats.wilcoxon(ranked, zero_method="wilcox").pvalue)
  elif ranked.size:
    out["wilcoxon_p"] = 1.0  # no difference in any draw
  if d.size < 2:
    return out
  out["mean"], out["median"] = float(d.mean()), float(np.median(d))
  # Heavy-tailed differences make the t interval unreliable: flagged (read the median and the
  # Wilcoxon p-value).
  out["heavy_tail"] = heavy_tail(d, worst="max") or heavy_tail(d, worst="min")
  if np.ptp(d) == 0:  # the finite pairs agree (the one-sided divergences differ): no t test
    return out
  t = scipy.stats.ttest_rel(a[both], b[both])
  ci = t.confidence_interval(confidence)
  out.update(ci_low=float(ci.low), ci_high=float(ci.high), p_value=float(t.pvalue))
  return out


def by_count(values, counts, *, worst: str = "max") -> dict[int, dict]:
  """`summarize` of `values` over the draws with each realized Byzantine count b: {b: summary}
  for every b that occurs (its `count` + `undefined` is the number of draws with that b)."""
  values, counts = np.asarray(values, np.float64), np.asarray(counts)
  return {int(b): summarize(values[counts == b], worst=worst) for b in np.unique(counts)}
