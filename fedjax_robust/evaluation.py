"""Monte Carlo estimates over draws of the honest set: means with 95% CIs, quantiles, worst case.

The per-sample quantities (honest loss L_S(θ̂_S), honest accuracy, test accuracy) come from
`training.Simulator.evaluate`; this module turns `[S]` vectors of them into estimates of
E_{S~μ_H}[·] and its spread.
"""

from __future__ import annotations

import math
from typing import Sequence

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


def summarize(values: np.ndarray, *, worst: str = "max",
              quantiles: Sequence[float] = QUANTILES) -> dict[str, float]:
  """Mean, 95% CI half-width (normal approximation, 1.96·sd/√k), quantiles and worst value of
  the defined entries of `values` (NaN marks a sample where the quantity is undefined, e.g. no
  honest client). A sample where training diverged should be passed as +inf (loss): the mean is
  then +inf, as it should be, and quantiles stay meaningful ("inverted_cdf" picks sample values).
  """
  if worst not in ("max", "min"):
    raise ValueError(f"worst must be 'max' or 'min', got {worst!r}.")
  values = np.asarray(values, np.float64)
  defined = values[~np.isnan(values)]
  out = {"count": int(defined.size), "undefined": int(values.size - defined.size)}
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
  ci = _Z95 * std / math.sqrt(defined.size) if np.isfinite(mean) else float("inf")
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
