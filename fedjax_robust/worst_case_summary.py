"""A searched worst case's record in numbers and words (engine layer, BUILD.md "Layers"): the
summary of re-measured values (`_value_summary`: mean, 95% CI, count, identical) and the line
that describes the chosen honest set (`format_worst_case`). The searches train, so they stay with
the Monte Carlo runner in `experiment` (`worst_case_mask`, `criterion_measure`, `criterion_score`),
which re-exports `format_worst_case`; the search algorithms are the library's `worst_case`.
"""

from __future__ import annotations

import numpy as np

from fedjax_robust import evaluation
from fedjax_robust import worst_case


def _value_summary(values: np.ndarray) -> dict:
  """Mean, 95% CI half-width and count of re-measured values, and whether they are `identical`
  (at least two, finite, all equal: deterministic training repeats one value, which has no
  interval)."""
  values = np.asarray(values, np.float64)
  s = evaluation.summarize(values, worst="max")
  identical = bool(values.size >= 2 and np.all(np.isfinite(values))
                   and np.all(values == values[0]))
  return {"mean": s["mean"], "ci95": float("nan") if identical else s["ci95"],
          "count": s["count"], "identical": identical}


def _spread(value: float, spread: float, what: str, identical: bool, seeds: int) -> str:
  """'v ± s (what)', or 'v (identical on every one of the k seeds)' when there is no spread."""
  if identical:
    return f"{value:.4g} (identical on all {seeds} seeds)"
  return f"{value:.4g} ± {spread:.4g} ({what})"


def _separation_text(info: dict) -> str:
  """Whether the pick is a clear maximum: its paired lead over the runner-up and the test it
  passed, or why it could not be separated."""
  gap = info.get("gap")
  test = f"one-sided paired t-tests, family-wise {100 * info['confidence']:g}%"
  if info["separated"] is None:
    return "the only candidate set"
  lead = (f"lead over the runner-up {info['runner_up']} "
          + _spread(gap["mean"], gap["se"], "paired se", gap["se"] == 0.0, gap["seeds"]))
  if info["separated"]:
    return f"separated from every other set ({test}); {lead}"
  if info["stopped"].startswith("seed cap"):
    return (f"NOT separated: {info['tied']} set(s) still tied with it ({test}) at the cap of "
            f"{info['max_seeds']} seeds; {lead}")
  return (f"NOT separated: tied with {info['tied']} set(s) on every seed (identical values or "
          f"all diverged: more seeds cannot separate them); {lead}")


def format_worst_case(info: dict) -> str:
  """One line on a chosen honest set: the worst case with its seeds, whether it separated from
  the runner-up, its fresh re-measurement (the interval of the maximum), optimism and the proxy's
  rank among the sets scored, or the proxy named as such (summaries saved before these fields
  existed print what they have)."""
  criterion = info.get("criterion")
  if criterion not in worst_case.CRITERIA:
    return (f"{info.get('label', worst_case.PROXY_NAME)}: Byzantine clients "
            f"{info['byzantine']} ({info['method']}); interval: "
            f"{info.get('interval', worst_case.TRAINING_NOISE_ONLY)}")
  label = info.get("label", worst_case.short_name(criterion))
  if "fresh" not in info:
    return f"{label}: Byzantine clients {info['byzantine']} ({info['method']})"
  fresh, proxy, gap, pick = info["fresh"], info["proxy"], info["gap_vs_proxy"], info["pick"]
  same = proxy["byzantine"] == info["byzantine"]
  return (f"{label}: Byzantine clients {info['byzantine']} ({info['method']}, "
          f"{info['scored']} sets scored, {info['trainings']} trainings). Search: "
          + _spread(pick["mean"], pick["se"], "se", pick["se"] == 0.0, info["pick_seeds"])
          + f" on {info['pick_seeds']} search seeds ({info['seeds']} for every set, up to "
          f"{info['max_seeds']} for the sets tied with the top), {_separation_text(info)}. "
          f"Fresh: " + _spread(fresh["mean"], fresh["ci95"], "95% CI", fresh.get("identical"),
                                info["fresh_seeds"])
          + f" on {info['fresh_seeds']} fresh seeds (optimism of the search "
          f"{info['optimism']:+.4g}). {proxy['name']}: "
          + ("the same set" if same else f"Byzantine clients {proxy['byzantine']}")
          + f", {proxy['rank_text']} by mean over the search's {info['seeds']} seeds"
          + ("" if same else
             ", fresh " + _spread(proxy["fresh"]["mean"], proxy["fresh"]["ci95"], "95% CI",
                                  proxy["fresh"].get("identical"), info["fresh_seeds"])
             + "; gap worst − proxy (fresh, paired) "
             + _spread(gap["mean"], gap["ci95"], "95% CI", gap.get("identical"),
                       info["fresh_seeds"]))
          + f". Interval of the run: {info['interval']}")
