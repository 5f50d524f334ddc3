"""Summaries, tables, files and plots of an experiment's Monte Carlo samples."""

from __future__ import annotations

import csv
import functools
import json
import os
from typing import Any, Mapping, Sequence

import ml_collections
import numpy as np

from fedjax_robust import config as config_lib
from fedjax_robust import evaluation
from fedjax_robust import honest_sets
from fedjax_robust import server_prior
from fedjax_robust import provenance
from fedjax_robust import training
from fedjax_robust import worst_case
from fedjax_robust import experiment as experiment_lib
from fedjax_robust.experiment import AggregatorRun
from fedjax_robust.experiment import Experiment
from fedjax_robust.theory import report as theory_report


def diverged_draws(run: AggregatorRun) -> np.ndarray:
  """Boolean `[E + 1, S]`: draws whose model has a non-finite parameter at each evaluation (runs
  saved before the `diverged` metric existed: a non-finite test loss; neither recorded: none)."""
  if "diverged" in run.metrics:
    return run.metrics["diverged"] > 0
  if "test_loss" in run.metrics:
    return ~np.isfinite(run.metrics["test_loss"])
  return np.zeros(next(iter(run.metrics.values())).shape, bool)


def defined_metrics(run: AggregatorRun) -> dict[str, np.ndarray]:
  """`run.metrics` with every accuracy of a diverged draw set to NaN: the accuracy of NaN logits
  is undefined, so `evaluation.summarize` counts it as undefined instead of averaging it in
  (tables, metrics.csv, plots and sweep point files all read the metrics through this)."""
  diverged = diverged_draws(run)
  return {k: np.where(diverged, np.nan, v) if "accuracy" in k else v
          for k, v in run.metrics.items()}


HONEST_ONLY_NAME = ("baseline without Byzantine clients: the same draws with the Byzantine "
                    "clients absent (no data, no updates), the honest clients' updates averaged "
                    "by the unweighted mean (D-SGD on L_S, whatever training.weighted_aggregation "
                    "says), no attack")

# The final-round metrics a summary gives intervals for, with their worst direction.
HEADLINE = (("honest_loss", "max"), ("honest_accuracy", "min"), ("honest_holdout_loss", "max"),
            ("honest_holdout_accuracy", "min"), ("honest_finetuned_holdout_loss", "max"),
            ("honest_finetuned_holdout_accuracy", "min"), ("test_accuracy", "min"))


# The conditions on the realized b each HEADLINE metric is also summarized under: the worst
# case's b (n − f honest), the declared f holding, and failing.
CONDITIONS = {"b_eq_f": lambda b, f: b == f, "b_le_f": lambda b, f: b <= f,
              "b_gt_f": lambda b, f: b > f}
CONDITION_NAMES = {"b_eq_f": "b = f", "b_le_f": "b ≤ f", "b_gt_f": "b > f"}


def loss_as_summarized(loss: np.ndarray, diverged: np.ndarray, num_honest: np.ndarray
                       ) -> np.ndarray:
  """An honest loss per draw as the summaries and comparisons read it: +inf where the draw
  diverged or its loss is non-finite (if it has an honest client), NaN where S is empty."""
  return np.where(diverged & (num_honest > 0), np.inf,
                  evaluation.diverged_as_inf(loss, num_honest))


def final_values(run: AggregatorRun, counts: np.ndarray, num_clients: int
                 ) -> dict[str, np.ndarray]:
  """Each final-round metric per draw `[S]` as the summaries read it: accuracies of diverged
  draws NaN (undefined), honest losses by `loss_as_summarized`."""
  diverged = diverged_draws(run)[-1]
  out = {}
  for name, values in defined_metrics(run).items():
    values = np.asarray(values[-1], np.float64)
    if name.startswith("honest") and name.endswith("loss"):
      values = loss_as_summarized(values, diverged, num_clients - counts)
    out[name] = values
  return out


def summarize_run(run: AggregatorRun, counts: np.ndarray, *, num_clients: int, f: int,
                  reference: AggregatorRun | None = None, theory: dict | None = None,
                  interval: str = "bca", resamples: int = 4999) -> dict:
  """Final-round estimates over samples for one aggregator; `counts` is b per sample;
  `reference` the honest-optimum run on the same draws (for the excess L_S(θ̂_S) − L_S*).

  Diverged draws (a non-finite parameter) are counted (`diverged`: count and share) and their
  honest loss is +inf (so the mean loss is +inf, the median stays meaningful); their accuracies
  are undefined and left out of the accuracy estimates, whose `count` says how many draws
  remain. The HEADLINE metrics also get `evaluation.intervals` (`interval`: the mean's CI,
  'bca'/'percentile' bootstrap or 'normal'; the median's exact CI; the worst tail's CVaR90 CI;
  a heavy-tail flag); `by_b` splits loss and accuracy by the realized count b.

  Each HEADLINE metric (and the excess loss) is also given conditioned on the realized b
  (`<metric>_given_b_eq_f`, `_b_le_f`, `_b_gt_f`, CONDITIONS, with the same intervals): a worst
  case at the declared f has b = f in every draw, so it is compared with E[· | b = f] (and
  E[· | b ≤ f]), never with the unconditioned mean, which the draws with b > f can dominate."""
  diverged = diverged_draws(run)[-1]
  values = final_values(run, counts, num_clients)
  out = {
      "diverged": {"count": int(diverged.sum()), "share": float(diverged.mean()),
                   "draws": np.flatnonzero(diverged).tolist()},
      "draws_per_chunk": int(run.draws_per_chunk),
  }
  estimate = lambda v, worst: {  # pylint: disable=unnecessary-lambda-assignment
      **evaluation.summarize(v, worst=worst),
      **evaluation.intervals(v, worst=worst, method=interval, resamples=resamples)}
  conditioned = HEADLINE
  if reference is not None:
    optimum = reference.metrics["honest_loss"][-1]
    out["honest_optimum_loss"] = evaluation.summarize(optimum, worst="max")
    values["honest_excess_loss"] = values["honest_loss"] - optimum
    out["honest_excess_loss"] = evaluation.summarize(values["honest_excess_loss"], worst="max")
    conditioned += (("honest_excess_loss", "max"),)
  for name, worst in HEADLINE:
    if name in values:
      out[name] = estimate(values[name], worst)
  # Diverged draws count +inf in the losses, as unconditioned.
  for name, worst in conditioned:
    if name in values:
      for condition, select in CONDITIONS.items():
        out[f"{name}_given_{condition}"] = estimate(values[name][select(counts, f)], worst)
  out["by_b"] = [
      {"b": b, "draws": int(np.sum(counts == b)),
       **{name: evaluation.summarize(values[name][counts == b], worst=worst)
          for name, worst in HEADLINE if name in values}}
      for b in map(int, np.unique(counts))]
  if "backdoor_accuracy" in run.metrics:
    out["backdoor_accuracy"] = evaluation.summarize(values["backdoor_accuracy"], worst="max")
  # A mixed population: each behaviour's clients, on their own data (NaN in a draw without
  # such clients, and in a diverged draw: left out).
  for name in run.metrics:
    if name.startswith("behaviour_"):
      v = np.where(diverged, np.nan, np.asarray(run.metrics[name][-1], np.float64))
      out[name] = evaluation.summarize(v, worst="max" if name.endswith("_loss") else "min")
  # Aggregator diagnostics averaged over rounds and draws; the per-round κ ratio (as the
  # attack's ratio, a maximum) and the per-round h_t, u_t are reported in the theory block
  # instead.
  # Diverged draws are left out (their NaN rows would count as clipped, their iterations as
  # whatever the NaN made them).
  kept = ~diverged
  out.update({name: float(np.mean(np.asarray(v)[:, kept])) if kept.any() else float("nan")
              for name, v in run.aux.items()
              if name not in training.MAX_AUX + training.ROUND_AUX})
  # Client sampling: the largest realized Byzantine count among the sampled, over rounds and
  # draws (the per-round mean and the event shares are in the means above).
  if "sampled_byzantine_max" in run.aux and kept.any():
    out["sampled_byzantine_max"] = float(np.max(np.asarray(run.aux["sampled_byzantine_max"])[:, kept]))
  # Cumulative communication over the run (per-round values summed over every round; the aux
  # holds per-chunk means over equal chunks of rounds).
  if "numbers_sent" in run.aux and kept.any():
    rounds = int(run.rounds[-1])
    for name in ("numbers_sent", "secure_averages"):
      out[f"{name}_total"] = float(np.mean(np.asarray(run.aux[name])[:, kept]) * rounds)
  if theory is not None:
    out["theory"] = theory_report.summarize(theory, counts, f)
  return out


# Per-draw metrics compared pairwise (a − b on the same draws), with their better direction.
COMPARED = (("honest_accuracy", "higher"), ("honest_loss", "lower"),
            ("honest_holdout_accuracy", "higher"), ("honest_finetuned_holdout_accuracy", "higher"),
            ("test_accuracy", "higher"))


def comparisons(experiment: Experiment) -> list[dict]:
  """The paired comparisons of `report.compare` (config.comparison_pairs): for each pair (a, b)
  and each COMPARED metric both runs have, `evaluation.paired_difference` of a − b over the
  draws (the same masks and keys for every aggregator of a run; `same_draws` is False under a
  per-aggregator worst case, whose sets differ, so the difference then includes the sets'). b =
  'honest_only' is the baseline without Byzantine clients (the honest-optimum reference run on
  a's draws)."""
  job = experiment.job
  n = job.num_clients
  out = []
  for a, b in job.comparisons:
    run_a = experiment.runs[a]
    counts_a = _counts(experiment, a)
    if b == config_lib.HONEST_ONLY:
      run_b, counts_b, masks_b = experiment.references[a], counts_a, experiment.masks[a]
    else:
      run_b, counts_b, masks_b = experiment.runs[b], _counts(experiment, b), experiment.masks[b]
    va, vb = final_values(run_a, counts_a, n), final_values(run_b, counts_b, n)
    same = bool(np.array_equal(experiment.masks[a], masks_b))
    for metric, better in COMPARED:
      if metric in va and metric in vb:
        out.append({"a": a, "b": b, "metric": metric, "better": better, "same_draws": same,
                    **evaluation.paired_difference(va[metric], vb[metric])})
  return out


def alie_degenerate(job, counts: np.ndarray) -> dict | None:
  """With ALIE's z from the formula (attack_options.alie.z unset), the share of draws with
  Byzantine clients whose realized b gives z(n, b) ≤ 0 (the attack then sends the honest mean
  or less): judged on the realized b, not the declared f. None for other attacks or a set z."""
  z = job.attack_options.alie.z
  if job.attack != "alie" or not (z is None or np.isnan(z)):
    return None
  from fedjax_robust import attacks  # pylint: disable=g-import-not-at-top
  attacked = counts > 0
  zs = np.asarray(attacks.alie_z(job.num_clients, np.asarray(counts)))
  bad = attacked & (zs <= 0)
  return {"share": float(bad.sum() / max(attacked.sum(), 1)),
          "byzantine_counts": sorted(set(map(int, counts[bad])))}


def timings(experiment: Experiment) -> dict:
  """Compile and run seconds per aggregator (kept out of summary.json, which a rerun of the same
  configuration reproduces byte for byte)."""
  return {name: {"compile_seconds": run.compile_seconds, "run_seconds": run.run_seconds,
                 "draws_per_chunk": int(run.draws_per_chunk)}
          for name, run in experiment.runs.items()}


def _counts(experiment: Experiment, spec: str | None = None) -> np.ndarray:
  masks = experiment.masks[spec or next(iter(experiment.masks))]
  return evaluation.byzantine_counts(masks)


def summarize(experiment: Experiment) -> dict:
  """Everything summary.json holds: the config, the law of b, per-aggregator estimates, and,
  when present, the reference runs and the one honest set a `worst_case` run repeated: under
  `worst_case` (a maximum of its criterion, worst_case.CRITERIA) or `max_heterogeneity_proxy`
  (criterion "heterogeneity", not a loss maximum), each with the `interval` it supports."""
  job = experiment.job
  n = job.num_clients
  exact = None
  if job.sampler is not None:
    pmf, is_exact = job.law(experiment.data).count_pmf()
    if is_exact and job.draw_condition != "none":
      pmf = honest_sets.conditioned_pmf(pmf, job.draw_condition, num_clients=n, f=job.f)
    exact = pmf if is_exact else None
  report = job.report
  out = {
      "config": json.loads(job.effective.to_json()),
      "provenance": provenance.record(
          seed=job.seed,
          draws_per_chunk={name: int(run.draws_per_chunk)
                           for name, run in experiment.runs.items()},
          mesh=", ".join(sorted({(run.provenance or {}).get("mesh", "")
                                 for run in experiment.runs.values()} - {""}))),
      "byzantine_count": {**evaluation.count_law(_counts(experiment), n, f=job.f,
                                                 exact_pmf=exact),
                          "condition": job.draw_condition},
      "aggregators": {
          name: summarize_run(run, _counts(experiment, name), num_clients=n, f=job.f,
                              reference=experiment.references.get(name),
                              theory=experiment.theory.get(name), interval=report.interval,
                              resamples=report.bootstrap_resamples)
          for name, run in experiment.runs.items()},
  }
  if experiment.references:
    first = next(iter(experiment.runs))
    baseline = summarize_run(experiment.references[first], _counts(experiment, first),
                             num_clients=n, f=job.f, interval=report.interval,
                             resamples=report.bootstrap_resamples)
    out["honest_only"] = {"what": HONEST_ONLY_NAME, **baseline}
  compared = comparisons(experiment)
  if compared:
    out["comparisons"] = compared
  alie = alie_degenerate(job, _counts(experiment))
  if alie is not None:
    out["alie_degenerate"] = alie
  for name, info in experiment.worst_case.items():  # the proxy is never filed as a worst case
    key = ("worst_case" if info.get("criterion") in worst_case.CRITERIA
           else "max_heterogeneity_proxy")
    out.setdefault(key, {})[name] = info
  if experiment.oracle is not None:
    out["oracle"] = experiment.oracle
  if experiment.server_prior is not None:
    out["server_prior"] = experiment.server_prior
  if experiment.privacy is not None:
    out["privacy"] = experiment.privacy
  if experiment.compression is not None:
    out["compression"] = experiment.compression
  if experiment.objectives is not None:
    out["objectives"] = experiment.objectives
  return out


def _pct(x: float) -> str:
  return "   n/a" if np.isnan(x) else f"{100 * x:6.2f}"


def _honest_set_name(cfg: dict) -> str:
  """μ_H as the table's footer names it: the law, or what the one repeated honest set is."""
  if cfg["honest_set"] != "worst_case":
    return cfg["honest_set"]
  criterion = cfg["honest_set_options"]["worst_case"].get("criterion", "heterogeneity")
  return f"one honest set repeated: {worst_case.short_name(criterion)}"


def _interval(lo: float, hi: float, scale: float = 1.0, digits: int = 4) -> str:
  if lo is None or hi is None or np.isnan(lo) or np.isnan(hi):
    return "[n/a]"
  return f"[{scale * lo:.{digits}f}, {scale * hi:.{digits}f}]"


# Printed in place of an interval or a test where the draws are identical (evaluation
# .identical_values) or a paired difference has no variance; the footnote says why.
EXACT_MARK = "(exact)§"
EXACT_NOTE = ("§ identical draws: every draw gave the same value, so there is no spread to build a "
              "CI or p-value from: the exact value when one honest set is repeated under "
              "deterministic training; otherwise different draws whose values coincide (an "
              "accuracy is a ratio of counts, so a few draws of different honest sets can tie): "
              "the sample's common value, not an exact expectation.")
DETERMINISTIC_MARK = "deterministic§"


def deterministic_note(identical_draws: bool) -> str:
  """The footnote of DETERMINISTIC_MARK; `identical_draws`: some such pair is copies of one run."""
  return ("§ deterministic: the difference a − b is the same in every draw (no variance), so "
          "there is nothing to test: the exact difference, no CI or p-value"
          + ("; identical draws: each rule gave one value in every draw (one honest set "
             "repeated under deterministic training)." if identical_draws else "."))


def mean_text(mean: float, low: float, high: float, *, identical: bool = False,
              scale: float = 1.0, digits: int = 4) -> str:
  """A mean with its interval for a sweep's own report: 'm [lo, hi]', 'm (exact)§' where the
  draws are identical (`identical`: the rows' 'identical' statistic; no interval then), 'n/a'
  where the mean is undefined. Reports that use it print EXACT_NOTE when it marked one."""
  if mean is None or np.isnan(mean):
    return "n/a"
  if identical:
    return f"{scale * mean:.{digits}f} {EXACT_MARK}"
  return f"{scale * mean:.{digits}f} {_interval(low, high, scale, digits)}"


def difference_text(d: dict | None, *, scale: float = 1.0, digits: int = 4) -> str:
  """A paired difference (evaluation.paired_difference) for a report: '+m [lo, hi]' (paired t
  95% CI), '+m deterministic§' where it has no variance (no CI: there is nothing to test; the
  report prints deterministic_note), 'n/a' where undefined."""
  if d is None or np.isnan(d["mean"]):
    return "n/a"
  if d.get("deterministic"):
    return f"{scale * d['mean']:+.{digits}f} {DETERMINISTIC_MARK}"
  lo, hi = (f"{scale * d[k]:+.{digits}f}" if np.isfinite(d[k]) else "n/a"
            for k in ("ci_low", "ci_high"))
  return f"{scale * d['mean']:+.{digits}f} [{lo}, {hi}]"


def difference_sign(d: dict | None) -> int:
  """+1 where a paired difference is above 0 (its 95% CI, or the exact value of a deterministic
  one), −1 where below, 0 where its CI covers 0 or it is undefined."""
  if d is None or np.isnan(d["mean"]):
    return 0
  low, high = (d["mean"], d["mean"]) if d.get("deterministic") else (d["ci_low"], d["ci_high"])
  return 1 if low > 0 else -1 if high < 0 else 0


def report_notes(texts: Sequence[str], identical_draws: bool = False) -> list[str]:
  """The footnotes the marks in `texts` need: EXACT_NOTE for '(exact)§', deterministic_note for
  'deterministic§' (`identical_draws`: some such pair is copies of one run)."""
  notes = []
  if any(EXACT_MARK in t for t in texts):
    notes.append(EXACT_NOTE)
  if any(DETERMINISTIC_MARK in t for t in texts):
    notes.append(deterministic_note(identical_draws))
  return notes


def _estimate(s: dict | None, *, percent: bool, configured: str = "") -> str:
  """'mean [CI]' (accuracies in percent), '†' appended where the tail is heavy, '‡' where the
  interval is not the `configured` one (BCa undefined: percentile given); 'mean (exact)§' for
  identical draws (no interval)."""
  if not s or s.get("count", 0) == 0 or np.isnan(s["mean"]):
    return "n/a"
  scale, digits = (100.0, 2) if percent else (1.0, 4)
  text = mean_text(s["mean"], *s["mean_ci"], identical=bool(s.get("identical")), scale=scale,
                   digits=digits)
  if s.get("identical"):
    return text
  return (text + ("†" if s.get("heavy_tail") else "")
          + ("‡" if configured and s.get("interval", configured) != configured else ""))


def _median(s: dict | None, *, percent: bool) -> str:
  if not s or s.get("count", 0) == 0:
    return "n/a"
  scale, digits = (100.0, 2) if percent else (1.0, 4)
  return mean_text(s["q50"], *s["median_ci"], identical=bool(s.get("identical")), scale=scale,
                   digits=digits)


def table_notes(summary: Mapping[str, Any]) -> list[str]:
  """The footnotes of the final-round table (`format_table`, the HTML report's): † heavy tail,
  ‡ BCa undefined, § identical draws, and the honest-only baseline's name, each where a row
  (an aggregator's or the baseline's) needs it."""
  configured = summary["config"].get("report", {}).get("interval", "normal")
  rows = list(summary["aggregators"].values()) + (
      [summary["honest_only"]] if "honest_only" in summary else [])
  notes = []
  if any(s["honest_loss"].get("heavy_tail") or s["honest_accuracy"].get("heavy_tail")
         for s in rows):
    notes.append("† heavy tail (a diverged draw, or draws beyond Tukey's far-out fence q75 + "
                 "3·IQR of the worst side): read the median and its CI beside the mean.")
  if any(s[m].get("interval", configured) not in (configured, "none") for s in rows
         for m in ("honest_loss", "honest_accuracy", "honest_holdout_accuracy") if m in s):
    notes.append("‡ BCa undefined (all jackknife values equal): the bootstrap percentile 95% CI "
                 "is shown.")
  if any(s[m].get("identical") for s in rows
         for m in ("honest_loss", "honest_accuracy", "honest_holdout_accuracy",
                   "honest_finetuned_holdout_accuracy") if m in s):
    notes.append(EXACT_NOTE)
  if "honest_only" in summary:
    notes.append(f"(honest only: no Byzantine) is the {HONEST_ONLY_NAME}.")
  return notes


def format_table(summary: dict) -> str:
  """Plain-text tables: one row per aggregator (and the honest-only baseline), final-round
  estimates over samples with the intervals the config chose; then the paired comparisons, the
  split by realized b and the notes."""
  law = summary["byzantine_count"]
  cfg = summary["config"]
  aggs = dict(summary["aggregators"])
  holdout = any("honest_holdout_accuracy" in s for s in aggs.values())
  tuned = any("honest_finetuned_holdout_accuracy" in s for s in aggs.values())
  configured = cfg.get("report", {}).get("interval", "normal")
  interval = evaluation.INTERVAL_NAMES[configured]
  header = (f"{'aggregator':<28} {'E[honest loss] [CI]':>27} {'median loss [CI]':>27} "
            f"{'E[honest acc %] [CI]':>22} {'median acc':>10} {'worst acc':>9} {'acc|b=f':>8} "
            f"{'acc|b≤f':>8} {'acc|b>f':>8}" + (f" {'held-out acc [CI]':>22}" if holdout else "")
            + (f" {'fine-tuned acc [CI]':>22}" if tuned else "")
            + f" {'test acc':>8} {'diverged':>8}")
  backdoor = any("backdoor_accuracy" in s for s in aggs.values())
  if backdoor:
    header += f" {'backdoor %':>10}"
  lines = [f"Final round. honest loss/acc: in-sample (each honest client's own training data, "
           f"averaged over the honest set S)"
           + ("; held-out: each honest client's own held-out split" if holdout else "")
           + ("; fine-tuned: the same after each client's local fine-tuning" if tuned else "")
           + f"; test: the global test set. [CI] of a mean: {interval}; of a median: "
           f"{evaluation.MEDIAN_INTERVAL_NAME}.", header, "-" * len(header)]
  rows = list(aggs.items())
  if "honest_only" in summary:
    rows.append(("(honest only: no Byzantine)", summary["honest_only"]))
  est = functools.partial(_estimate, configured=configured)
  for name, s in rows:
    lines.append(
        f"{name:<28} {est(s['honest_loss'], percent=False):>27} "
        f"{_median(s['honest_loss'], percent=False):>27} "
        f"{est(s['honest_accuracy'], percent=True):>22} "
        f"{_pct(s['honest_accuracy']['q50']):>10} {_pct(s['honest_accuracy']['worst']):>9} "
        f"{_pct(s['honest_accuracy_given_b_eq_f']['mean']):>8} "
        f"{_pct(s['honest_accuracy_given_b_le_f']['mean']):>8} "
        f"{_pct(s['honest_accuracy_given_b_gt_f']['mean']):>8}"
        + (f" {est(s.get('honest_holdout_accuracy'), percent=True):>22}" if holdout else "")
        + (f" {est(s.get('honest_finetuned_holdout_accuracy'), percent=True):>22}" if tuned
           else "")
        + f" {_pct(s['test_accuracy']['mean']):>8} {s['diverged']['count']:>8d}"
        + (f" {_pct(s['backdoor_accuracy']['mean']):>10}" if backdoor and
           "backdoor_accuracy" in s else ""))
  lines += table_notes(summary)
  compared = format_comparisons(summary)
  if compared:
    lines.append("\n" + compared)
  lines.append("\n" + format_by_b(summary))
  exact = (f" (exact {law['exact_mean']:.3f}, P(b>f) exact {law['exact_p_exceeds_f']:.3f})"
           if "exact_mean" in law else "")
  extras = []
  for name, s in summary["aggregators"].items():
    if s["diverged"]["count"]:
      extras.append(
          f"WARNING: {name}: {s['diverged']['count']} of {cfg['num_samples']} draws diverged "
          f"({100 * s['diverged']['share']:.1f}%: a non-finite parameter); their honest loss "
          f"counts as +inf and their accuracies are left out of the accuracy columns (draws "
          f"{s['diverged']['draws'][:10]}{' …' if s['diverged']['count'] > 10 else ''}).")
  for name, s in summary["aggregators"].items():
    if "honest_excess_loss" in s:
      e = s["honest_excess_loss"]
      spread = (f" {EXACT_MARK}, " if e["identical"] else
                f" ± {e['ci95']:.4f} (normal CI), median {e['q50']:.4f}, CVaR90 "
                f"{e['cvar90']:.4f}; ")
      extras.append(f"{name}: E[L_S(θ̂_S) − L_S*] = {e['mean']:.4f}{spread}L_S* estimated by "
                    "the honest-only run's final L_S (T rounds, not an exact optimum: the "
                    "excess can be negative)")
  if "objectives" in summary:
    o = summary["objectives"]
    extras.append(
        f"objectives solved exactly (convex task; w_i {o['weights_from']}): min_θ E_S[L_S(θ)] = "
        f"{o['min_expected']:.5f} (at θ_E the worst case max_{{|S|=n−f}} L_S = "
        f"{o['worst_case_loss_at_theta_expected']:.5f}); min_θ max_{{|S|=n−f}} L_S(θ) = "
        f"{o['min_max']:.5f} (certified gap {o['min_max_gap']:.1e}; at θ_max E_S[L_S] = "
        f"{o['expected_loss_at_theta_minimax']:.5f}); P(b > f) = {o['p_b_gt_f']:.3f}"
        + (" (μ_H puts mass on b > f: min E ≤ min max need not hold)" if o["p_b_gt_f"] else ""))
  if "oracle" in summary:
    accuracy = summary["oracle"]["test_accuracy"]  # NaN for a regression model
    extras.append(f"oracle on the expected objective: Σ w_i L_i = "
                  f"{summary['oracle']['expected_objective']:.4f}, test accuracy "
                  + ("n/a" if np.isnan(accuracy) else f"{100 * accuracy:.2f}%"))
  for name, info in {**summary.get("max_heterogeneity_proxy", {}),
                     **summary.get("worst_case", {})}.items():
    extras.append(f"{name}: {experiment_lib.format_worst_case(info)}")
  theory = format_theory(summary)
  if theory:
    lines.append("\n" + theory)
  condition = honest_sets.CONDITION_NAMES.get(law.get("condition", "none"), "")
  lines.append(
      f"\nS={cfg['num_samples']} draws of μ_H={_honest_set_name(cfg)}"
      + (f" {condition} (rejection per draw)" if condition else "")
      + f", n={cfg['num_clients']}, declared f={cfg['f']}, attack={cfg['attack']}, "
      f"{cfg['training']['num_rounds']} rounds. Realized b: mean {law['mean']:.3f}{exact}; "
      f"P(b > f) = {law['p_exceeds_f']:.3f}; P(b ≥ n/2) = {law['p_no_honest_majority']:.3f}.")
  extras += [line for line in [_describe_rounds(cfg["training"])] if line]
  if "server_prior" in summary:
    extras.append(server_prior.describe(summary["server_prior"]))
  if "privacy" in summary:
    extras.append(config_lib.describe_privacy(summary["privacy"]))
  if "compression" in summary:
    extras.append(config_lib.describe_compression(summary["compression"]))
  if law["p_exceeds_f"] == 1.0:
    extras.append(f"NOTE: the realized b exceeds the declared f={cfg['f']} in every draw: the "
                  "rules run beyond the corruption they were configured for.")
  alie = summary.get("alie_degenerate")
  if alie and alie["share"] > 0:
    extras.append(
        f"WARNING: ALIE's z from the formula is ≤ 0 for the realized b ∈ "
        f"{alie['byzantine_counts']} ({100 * alie['share']:.1f}% of the draws with Byzantine "
        "clients): there the attack sends the honest mean or less. Set attack_options.alie.z "
        "to study a real attack.")
  for name, s in summary["aggregators"].items():
    if s.get("skipped_round", 0) > 0:
      extras.append(f"NOTE: {name}: {100 * s['skipped_round']:.2f}% of rounds skipped (at most "
                    "2f clients present: the server did not update the model).")
    if "present_share" in s:
      extras.append(f"{name}: share of clients present per round, mean over rounds and draws: "
                    f"{s['present_share']:.3f}")
    if "sampled_byzantine" in s:
      m = cfg["training"]["clients_per_round"]
      extras.append(
          f"{name}: {m} of {cfg['num_clients']} clients sampled per round; Byzantine among them "
          f"b_t: mean {s['sampled_byzantine']:.3f}, max {s['sampled_byzantine_max']:.0f}; rounds "
          f"with b_t <= f: {100 * s['sampled_within_f']:.2f}%, with b_t < m/2 (RFA's event "
          f"|S_t ∩ C| <= θm, θ < 1/2): {100 * s['sampled_minority']:.2f}% (over rounds and "
          "draws)")
    if "kept_share" in s:
      extras.append(f"{name}: share of rows the filter kept per round, mean over rounds and "
                    f"draws: {s['kept_share']:.3f}")
    behaviours = [k for k in s if k.startswith("behaviour_") and k.endswith("_accuracy")]
    if behaviours:
      extras.append(f"{name}: accuracy of each behaviour's clients on their own data (mean over "
                    "the draws that have such clients): " + ", ".join(
                        f"{k[len('behaviour_'):-len('_accuracy')]} {100 * s[k]['mean']:.2f}% "
                        f"({s[k]['count']} draws)" for k in behaviours))
    for key in sorted(k for k in s if k.endswith("clipped_share")):
      if s[key] == 0.0:
        extras.append(
            f"WARNING: {name}: the clipping stage clipped no row in any round of any draw "
            f"({key} = 0), so its numbers are those of the rule without clipping; lower the "
            "threshold (centered clipping: tau_units='published_momentum' converts τ from the "
            "published code's units) to study clipping.")
      else:
        extras.append(f"{name}: share of rows clipped per round ({key}), mean over rounds and "
                      f"draws: {s[key]:.3f}")
  lines.extend(extras)
  return "\n".join(lines)


def _describe_rounds(t: Mapping[str, Any]) -> str:
  """The round's protocol when it is not the default one (K = 1 step of D-SGD with worker
  momentum, every client, constant η, the server's plain SGD), else ''."""
  parts = []
  if t.get("clients_per_round", 0):
    parts.append(f"{t['clients_per_round']} clients sampled per round (the honest-only "
                 "baseline, when shown, with every client in every round)")
  if t.get("local_epochs"):
    parts.append(f"{t['local_epochs']} local epoch(s) of batches of {t['batch_size']} without "
                 "replacement")
  elif t.get("local_steps", 1) != 1:
    parts.append(f"{t['local_steps']} local steps")
  if t.get("client_update", "momentum_gradient") != "momentum_gradient":
    parts.append("FedAvg model deltas (local momentum reset each round)")
  if t.get("tail_average", 1) > 1:
    parts.append(f"tail average of the last {t['tail_average']} local iterates")
  if t.get("client_lr_schedule", "constant") != "constant":
    options = t.get("client_lr_schedule_options", {}).get(t["client_lr_schedule"], {})
    parts.append(f"client lr {t['client_lr']} with a {t['client_lr_schedule']} schedule "
                 f"({format_options(options)})")
  if t.get("personalization", "none") != "none":
    parts.append("a personal output layer per client (never sent; FedPer)")
  if t.get("fine_tune_steps", 0):
    parts.append(f"local fine-tuning at evaluation: {t['fine_tune_steps']} full-batch steps")
  if t.get("server_optimizer", "sgd") != "sgd":
    parts.append(f"server optimizer {t['server_optimizer']} (lr {t['server_lr']})")
  return "Rounds: " + "; ".join(parts) + "." if parts else ""


def format_comparisons(summary: dict) -> str:
  """The paired comparisons a − b (same draws), one line per pair: for the in-sample honest
  accuracy, the held-out accuracy (when measured) and the honest loss, the mean difference with
  its paired-t 95% CI and p-value, and the Wilcoxon p-value, or the exact difference marked
  'deterministic' where it has no variance (no CI, no test); then the draws left unpaired
  (diverged or undefined). summary.json has every compared metric. '' if none."""
  compared = summary.get("comparisons", [])
  if not compared:
    return ""
  metrics = [m for m in ("honest_accuracy", "honest_holdout_accuracy", "honest_loss")
             if any(c["metric"] == m and not np.isnan(c["mean"]) for c in compared)]
  by_pair: dict[tuple, dict] = {}
  for c in compared:
    by_pair.setdefault((c["a"], c["b"], c["same_draws"]), {})[c["metric"]] = c
  names = {"honest_accuracy": "Δ honest acc (pp)", "honest_holdout_accuracy": "Δ held-out acc (pp)",
           "honest_loss": "Δ honest loss"}
  header = f"{'a − b':<44} " + " ".join(f"{names[m] + ' [CI] p(t) p(W)':>46}" for m in metrics)
  deterministic = set()
  lines = ["Paired comparisons over the same draws: mean of the per-draw differences a − b with its "
           "paired-t 95% CI, the paired-t and Wilcoxon signed-rank p-values; draws where either "
           "side diverged or is undefined are not paired (counted at the right); † heavy-tailed "
           "differences (beyond Tukey's far-out fences): the t interval is unreliable there, read "
           "the Wilcoxon p-value", header,
           "-" * (len(header) + 24)]
  for (a, b, same), cells in by_pair.items():
    parts, skipped = [], {}
    for m in metrics:
      c = cells.get(m)
      if c is None or np.isnan(c["mean"]):
        parts.append(f"{'n/a':>46}")
        continue
      scale, digits = (100.0, 2) if "accuracy" in m else (1.0, 4)
      if c.get("deterministic"):
        deterministic.add(bool(c["identical_draws"]))
        text = f"{scale * c['mean']:+.{digits}f} {DETERMINISTIC_MARK}"
      else:
        text = (f"{scale * c['mean']:+.{digits}f} "
                f"{_interval(c['ci_low'], c['ci_high'], scale, digits)}"
                + ("†" if c.get("heavy_tail") else "")
                + f" {format_p(c['p_value'])} {format_p(c['wilcoxon_p'])}")
      parts.append(f"{text:>46}")
    # Unpaired draws counted once, from the loss (a diverged draw's loss is +inf and its
    # accuracy NaN: one draw, not two), or from the first metric when no loss was compared.
    c = cells.get("honest_loss") or next(iter(cells.values()))
    for key, label in (("a_only_infinite", "a diverged"), ("b_only_infinite", "b diverged"),
                       ("both_infinite", "both diverged"), ("undefined", "undefined")):
      skipped[label] = c[key]
    pair = f"{a} − {b}" + ("" if same else " (different sets)")
    rest = ", ".join(f"{v} {k}" for k, v in skipped.items() if v)
    lines.append(f"{pair:<44} " + " ".join(parts) + (f"  unpaired: {rest}" if rest else ""))
  if deterministic:
    lines.append(deterministic_note(True in deterministic))
  return "\n".join(lines)


def format_p(p: float) -> str:
  return "n/a" if p is None or np.isnan(p) else ("<1e-4" if p < 1e-4 else f"{p:.4f}")


def format_by_b(summary: dict) -> str:
  """Expected honest accuracy (loss for a regression model) per realized Byzantine count b,
  with the number of draws at each b: one row per aggregator."""
  aggs = summary["aggregators"]
  values = sorted({row["b"] for s in aggs.values() for row in s["by_b"]})
  accuracy = any(not np.isnan(s["honest_accuracy"]["mean"]) for s in aggs.values())
  metric = "honest_accuracy" if accuracy else "honest_loss"
  draws = {row["b"]: row["draws"] for row in next(iter(aggs.values()))["by_b"]}
  header = f"{'by realized b (draws)':<28} " + " ".join(
      f"{f'b={b} ({draws.get(b, 0)})':>12}" for b in values)
  lines = [f"E[{'honest accuracy %' if accuracy else 'honest loss'} | b] (in-sample), per "
           "realized number of Byzantine clients b", header, "-" * len(header)]
  rows = list(aggs.items())
  if "honest_only" in summary:
    rows.append(("(honest only: no Byzantine)", summary["honest_only"]))
  for name, s in rows:
    cells = {row["b"]: row[metric]["mean"] for row in s["by_b"]}
    lines.append(f"{name:<28} " + " ".join(
        f"{(_pct(cells[b]).strip() if accuracy else _g(cells[b])) if b in cells else '-':>12}"
        for b in values))
  return "\n".join(lines)


def _g(x: float) -> str:
  return "n/a" if x is None or np.isnan(x) else f"{x:.3g}"


def _error_name(t: dict) -> str:
  if t["error_kind"] == "excess_loss":
    return "L_S(θ_T) − L_S*"
  return (f"(1/(T − t₀))Σ_{{t₀≤t<T}}‖∇L_S(θ_t)‖², after a burn-in of t₀ = {t['burn_in']} rounds "
          f"(T − t₀ = {t['rounds']}; the bound restarts at θ_t₀)")


# Where theory beside experiment is run under the theorems' premises.
THEORY_CONFIGS = ("configs/theory_synthetic.py (convex, exact constants) or "
                  "configs/theory_digits.py (digits)")


def format_theory(summary: dict) -> str:
  """The theory beside the measurement, one row per aggregator: heterogeneity of the realized
  honest sets (E[G²], E[B²]), κ (lower bound f/(n−2f), published bound) and the attack's ratio
  (on draws with b = f), P(bound invalid), E[bound | valid] and its Byzantine term, the measured
  error on the valid draws and on all, bound/measured (median and 90% quantile over valid
  draws), Byzantine term/measured (median), violations, and the data-dependent bound (κ =
  max(attack's ratio, f/(n−2f))). A job whose training is not robust D-GD (theory.report.premises)
  gets one line pointing to the theory configurations instead, whether its theory measurements
  are on or not; '' for a D-GD job without them."""
  cfg = summary["config"]
  prem = theory_report.premises(ml_collections.ConfigDict(cfg))
  rows = {name: s["theory"] for name, s in summary["aggregators"].items() if "theory" in s}
  if not prem["dgd"]:
    return ("Theory: the robust D-GD bounds (Allouah et al., NeurIPS 2023) are about full-batch "
            "D-GD, and this job trains otherwise (" + "; ".join(prem["reasons"]) + ")"
            + (", so they are not printed (per-draw values: draws.csv, theory_*)" if rows else "")
            + f"; theory beside experiment: python launch/sweep.py --config={THEORY_CONFIGS}.")
  if not rows:
    return ""
  first = next(iter(rows.values()))
  byzantine = "κG²/(2μ(1 − κB²))" if first["error_kind"] == "excess_loss" else "κG²/(1 − κB²)"
  excess = first["compared"] == "excess"
  compared = "excess" if excess else "err"
  header = (f"{'aggregator':<28} {'E[G²]':>9} {'E[B²]':>8} {'κ low':>7} {'κ pub':>7} "
            f"{'atk ratio':>9} {'P(inv)':>6} {'E[bound|val]':>12} {'E[κ-term|val]':>13} "
            f"{'E[err|val]':>10} {'E[err]':>9}" + (f" {'E[excess|val]':>13}" if excess else "")
            + f" {'bnd/err q50':>11} {'bnd/err q90':>11} {f'κ-term/{compared} q50':>17} "
            f"{'viol':>4} {'E[dd bound|val]':>15} {'dd bnd/err q50':>14}")
  lines = [
      "Theory beside experiment (robust D-GD, Allouah et al. NeurIPS 2023), over the valid draws "
      "(b ≤ f, κB² < 1, step ≤ 1/L):",
      f"  err = {_error_name(first)}; bound: the robust D-GD bound on err with the published κ; "
      f"κ-term: its Byzantine term {byzantine} (the bound less its optimization transient), "
      + ("compared with excess = err − the honest-only run's err on the same draws (the "
         "transient cancels) in κ-term/excess;" if excess else
         "compared with err in κ-term/err;"),
      "  atk ratio: max_t ‖F(x) − x̄_S‖²/var_S of this attack on the draws with b = f (the "
      "attack's ratio, not a robustness coefficient); dd bound: data-dependent, the same bound "
      "with κ = max(atk ratio, f/(n − 2f)), assumes the attack seen is the worst (no rule's "
      "guarantee).", header, "-" * len(header)]
  notes = []
  for name, t in rows.items():
    k = t["kappa"]
    lines.append(
        f"{name:<28} {_g(t['g2']['mean']):>9} {_g(t['b2']['mean']):>8} {_g(k['lower']):>7} "
        f"{_g(k['upper']):>7} {_g(k['attack_ratio']):>9} {t['p_invalid']:>6.3f} "
        f"{_g(t['bound_given_valid']['mean']):>12} "
        f"{_g(t['byzantine_term_given_valid']['mean']):>13} "
        f"{_g(t['error_given_valid']['mean']):>10} {_g(t['error']['mean']):>9}"
        + (f" {_g(t['excess_given_valid']['mean']):>13}" if excess else "")
        + f" {_g(t['tightness']['q50']):>11} {_g(t['tightness']['q90']):>11} "
        f"{_g(t['byzantine_ratio']['q50']):>17} {t['violations']:>4d} "
        f"{_g(t['bound_plugin_given_valid']['mean']):>15} {_g(t['tightness_plugin']['q50']):>14}")
    if t["violations"] or t["violations_plugin"]:
      exact = t["error_kind"] == "excess_loss"
      notes.append(
          f"{'FINDING' if exact else 'NOTE'}: {name}: {t['violations']} valid draw(s) with the "
          f"published-κ bound below the measured error, {t['violations_plugin']} with the "
          "data-dependent bound (its κ may be below the rule's, so it is no guarantee)"
          + ("." if exact else "; L is estimated, so this is not a counterexample."))
    extra = [f"attack ratio on draws with b < f: {_g(k['attack_ratio_b_lt_f'])}, b > f: "
             f"{_g(k['attack_ratio_b_gt_f'])} (not mixed into atk ratio)"]
    if t.get("error_nonpositive"):
      extra.append(f"{t['error_nonpositive']} valid draw(s) with measured error ≤ 0 (rounding; "
                   "no ratio)")
    if excess and t.get("compared_nonpositive"):
      extra.append(f"{t['compared_nonpositive']} valid draw(s) with err ≤ the honest-only run's "
                   "(no κ-term/excess)")
    if "lower_bound_order" in t:
      extra.append(f"lower-bound order f/(n − (2 + B²)f)·G²/μ (constant omitted) over valid "
                   f"draws: mean {_g(t['lower_bound_order']['mean'])}")
    notes.append(f"{name}: " + "; ".join(extra))
    if k["upper"] is None:
      notes.append(f"{name}: no published κ recorded ({k.get('source') or 'none'}); only the "
                   "data-dependent bound is given.")
    elif "unverified" in (k.get("source") or ""):
      upper_source = (k.get("source") or "").split("upper: ", 1)[-1]
      notes.append(f"{name}: κ pub = {_g(k['upper'])} uses an unverified constant "
                   f"({upper_source}).")
  n, f = cfg["num_clients"], cfg["f"]
  notes.append(f"Breakdown: f/n = {f / n:.3g} is past breakdown only for (G, B) classes with "
               f"B² ≥ (n − 2f)/f = {_g(first['breakdown_b2'])}; a draw with finite h_t lies in a "
               "class below it (B² = 0, G² = max_t h_t), so no draw is flagged.")
  notes.append("Unverified constants: the bounds' forms and the condition κB² < 1 are "
               "corroborated by later papers' restatements, their constant factors (2L/T, 1/(2μ), "
               "the κ factors marked above) were not checked against the papers' text "
               "(theory/bounds.py, aggregators/robustness.py).")
  if first["error_kind"] == "gradient_norm":
    notes.append("L is estimated (Hessian power iteration at θ_T) and L_S* by 0: an estimate.")
  return "\n".join(lines + notes)


def write_metrics_csv(experiment: Experiment, path: str) -> None:
  """One row per aggregator × evaluation round × metric, with estimates over samples; the
  aggregator diagnostics (`aux:<name>`, e.g. clipped_share) per chunk of rounds."""
  n = experiment.job.num_clients
  fields = ["aggregator", "round", "metric", "mean", "ci95", "q05", "q50", "q95", "worst",
            "cvar90", "undefined"]
  with open(path + ".tmp", "w", newline="") as fh:
    writer = csv.DictWriter(fh, fieldnames=fields)
    writer.writeheader()
    for name, run in experiment.runs.items():
      counts = _counts(experiment, name)
      metrics = defined_metrics(run)
      for e, (rnd, diverged) in enumerate(zip(run.rounds, diverged_draws(run))):
        for metric, values in metrics.items():
          values = values[e]
          if metric.startswith("honest") and metric.endswith("loss"):
            values = loss_as_summarized(values, diverged, n - counts)
          s = evaluation.summarize(values, worst="max" if metric.endswith("loss") else "min")
          writer.writerow({"aggregator": name, "round": int(rnd), "metric": metric,
                           **{k: s[k] for k in fields[3:]}})
        # Aggregator diagnostics of the chunk of rounds ending here (e.g. clipped_share: the
        # share of rows clipped, averaged over the chunk's rounds), over the draws not diverged
        # by then; `undefined` counts the draws left out.
        if e == 0:
          continue
        for metric, values in run.aux.items():
          if metric in training.ROUND_AUX:  # per round, for the theory (draws.csv has its G²)
            continue
          series = {metric: np.asarray(values[e - 1], np.float64)}
          if metric in ("numbers_sent", "secure_averages"):  # communication up to this round
            chunk_rounds = np.diff(run.rounds[:e + 1]).astype(np.float64)
            series[f"{metric}_cumulative"] = chunk_rounds @ np.asarray(values[:e], np.float64)
          for label, v in series.items():
            s = evaluation.summarize(np.where(diverged, np.nan, v), worst="max")
            writer.writerow({"aggregator": name, "round": int(rnd), "metric": f"aux:{label}",
                             **{k: s[k] for k in fields[3:]}})
  os.replace(path + ".tmp", path)


# Per-draw theory columns of draws.csv.
DRAW_THEORY = ("g2", "b2", "kappa_ratio", "smoothness", "bound", "bound_byzantine", "valid",
               "error", "excess", "tightness", "byzantine_ratio", "bound_plugin",
               "tightness_plugin")


def baselines(experiment: Experiment) -> list[tuple[str, AggregatorRun]]:
  """The honest-only baseline runs (estimators.honest_optimum), each once, named as draws.csv
  and the cache name them: 'honest_only' when every aggregator's draws share one, else
  '<spec>.honest_only' for each aggregator's own draws (a worst case searched per aggregator)."""
  refs = experiment.references
  if len({id(r) for r in refs.values()}) == 1:
    return [("honest_only", next(iter(refs.values())))]
  seen, out = set(), []
  for spec, run in refs.items():
    if id(run) not in seen:
      seen.add(id(run))
      out.append((f"{spec}.honest_only", run))
  return out


def write_draws_csv(experiment: Experiment, path: str) -> None:
  """One row per draw of μ_H: its realized b, whether it has no honest majority (b ≥ n/2, run
  anyway and flagged here), each aggregator's final-round metrics and, with theory measurements,
  its per-draw theory (theory.report.per_draw: G², B², the attack's κ ratio, bound and its
  Byzantine term, validity, measured error and its excess over the honest-only run, tightness and
  Byzantine term / measured), then the honest-only baseline's final-round metrics (`baselines`:
  the draws the paired comparisons against it pair). Each run has a `<name>:diverged` column
  (1: a non-finite parameter at the final model); a diverged draw's other values of that run are
  left empty (its accuracies would be those of NaN logits, its loss NaN), so a column's average is
  over the draws that did not diverge, as in the tables."""
  counts = _counts(experiment)
  n = experiment.job.num_clients
  diverged = {name: diverged_draws(run)[-1] for name, run in experiment.runs.items()}
  metrics_of = lambda name, run: (
      [(name, "diverged", diverged[name].astype(int))]
      + [(name, metric, values[-1]) for metric, values in run.metrics.items()
         if metric != "diverged"])
  columns = [c for name, run in experiment.runs.items() for c in metrics_of(name, run)]
  columns += [(name, f"theory_{key}", np.asarray(theory[key], np.float64))
              for name, theory in experiment.theory.items() for key in DRAW_THEORY
              if key in theory]
  for name, run in baselines(experiment):
    diverged[name] = diverged_draws(run)[-1]
    columns += metrics_of(name, run)
  # A mixed population: how many clients of each behaviour the draw has (the same draws, hence
  # the same composition, for every aggregator: taken from the first run that records it).
  composition = next((run.final for run in experiment.runs.values()
                      if any(k.startswith("composition.") for k in run.final)), {})
  behaviours = [(k.split(".", 1)[1], np.asarray(v)) for k, v in composition.items()
                if k.startswith("composition.")]
  with open(path + ".tmp", "w", newline="") as fh:
    writer = csv.writer(fh)
    writer.writerow(["draw", "num_byzantine", "no_honest_majority",
                     *[f"num_{name}" for name, _ in behaviours],
                     *[f"{name}:{metric}" for name, metric, _ in columns]])
    cell = lambda name, metric, values, s: (
        int(values[s]) if metric == "diverged" else "" if diverged[name][s]
        else float(values[s]))
    for s, b in enumerate(counts):
      writer.writerow([s, int(b), int(2 * b >= n), *[int(v[s]) for _, v in behaviours],
                       *[cell(*column, s) for column in columns]])
  os.replace(path + ".tmp", path)


def format_value(v) -> str:
  """A config value for a title: floats short, long tuples cut after 4 values."""
  if isinstance(v, float):
    return f"{v:g}"
  if isinstance(v, (tuple, list)):
    head = ", ".join(format_value(x) for x in v[:4])
    return f"({head}, …; {len(v)} values)" if len(v) > 4 else f"({head})"
  return str(v)


def format_options(options: Mapping[str, Any], rename: Mapping[str, str] | None = None) -> str:
  """'name=value' pairs of set options (None means "the rule's default" and is left out)."""
  rename = rename or {}
  return ", ".join(f"{rename.get(k, k)}={format_value(v)}" for k, v in options.items()
                   if v is not None)


def diverged_label(name: str, run: AggregatorRun) -> str:
  """A rule's label in the plot: its name, and, when draws diverged, how many of the S and that
  its curve and box are over the others (none: no curve)."""
  diverged = diverged_draws(run)[-1]
  k, total = int(diverged.sum()), int(diverged.size)
  if not k:
    return name
  if k == total:
    return f"{name} ({k}/{total} diverged: nothing to plot)"
  return f"{name} ({k}/{total} diverged; the other {total - k} plotted)"


def figure(experiment: Experiment):
  """Honest accuracy over rounds (mean, 5–95% band over draws) and its final distribution (box:
  quartiles, whiskers 5–95%; a rule's box in its curve's colour), titled with what was run: the
  data, n, μ_H and its parameters, the declared f, the attack and its options, S and the rounds.
  A rule's curve, band and box are over its draws that did not diverge by the final round (the
  same draws at every round), its curve dashed when some did, and its label says how many of the
  S (`diverged_label`). Returns the figure (the caller closes it) and its title."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import textwrap  # pylint: disable=g-import-not-at-top
  from matplotlib.patches import Patch  # pylint: disable=g-import-not-at-top

  cfg = experiment.job
  if cfg.sampler is None:
    law = (f"{worst_case.short_name(cfg.honest_set_options.worst_case.criterion)}, one honest "
           "set repeated (band: training noise only)")
  else:
    spec = {k: v for k, v in cfg.sampler.items() if k != "adjacency"}
    law = f"{spec.pop('name')}({format_options(spec, {'num_byzantine': 'b'})})"
    if cfg.honest_set in honest_sets.GRAPH_BASED:
      law += f" on the {cfg.graph.kind} graph"
  attack_opts = format_options(dict(cfg.attack_options.get(cfg.attack, {})))
  title = (f"{cfg.data.name}, n={cfg.num_clients}, μ_H={law}, declared f={cfg.f}, attack "
           f"{cfg.attack}" + (f"({attack_opts})" if attack_opts else "")
           + f", S={cfg.num_samples} draws, {cfg.training.num_rounds} rounds")

  fig, (ax, box) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [3, 2]})
  finals, names, colors = [], [], []
  for name, run in experiment.runs.items():
    kept = ~diverged_draws(run)[-1]
    acc = 100 * np.asarray(defined_metrics(run)["honest_accuracy"], np.float64)[:, kept]
    label = diverged_label(name, run)
    defined = ~np.all(np.isnan(acc), axis=1)  # rounds with a draw to average (none: no curve)
    if defined.any():
      rounds, acc_defined = run.rounds[defined], acc[defined]
      (line,) = ax.plot(rounds, np.nanmean(acc_defined, axis=1), label=label,
                        linestyle="-" if kept.all() else "--")
      ax.fill_between(rounds, np.nanquantile(acc_defined, 0.05, axis=1),
                      np.nanquantile(acc_defined, 0.95, axis=1), color=line.get_color(),
                      alpha=0.2)
    else:
      (line,) = ax.plot([], [], label=label)
    colors.append(line.get_color())
    finals.append(acc[-1][~np.isnan(acc[-1])])
    names.append(label)
  ax.set(xlabel="round", ylabel="honest accuracy (%)",
         title="line: mean over the draws that did not diverge (dashed: some did); band: "
               "5–95% over them")
  ax.title.set_fontsize(9)
  ax.grid(alpha=0.3)
  handles, labels = ax.get_legend_handles_labels()
  ax.legend(handles + [Patch(color="gray", alpha=0.3)], labels + ["5–95% over draws"],
            fontsize=8)
  boxes = box.boxplot(finals, vert=False, whis=(5, 95), showfliers=True, patch_artist=True,
                      medianprops={"color": "black"})
  for patch, color in zip(boxes["boxes"], colors):  # each rule in its curve's colour
    patch.set(facecolor=color, alpha=0.45, edgecolor=color)
  box.set_yticks(range(1, len(names) + 1), names, fontsize=8)
  box.set(xlabel="final honest accuracy (%)",
          title="over draws of μ_H: box quartiles, whiskers 5–95%")
  box.title.set_fontsize(9)
  box.grid(alpha=0.3)
  fig.suptitle(textwrap.fill(title, 150), fontsize=9)
  fig.tight_layout()
  return fig, title


def plot(experiment: Experiment, path: str) -> str:
  """`figure` saved to `path`; returns its title."""
  fig, title = figure(experiment)
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top  (after figure's backend)
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return title


def write_all(experiment: Experiment, workdir: str) -> dict:
  """summary.json, timings.json, metrics.csv, draws.csv and honest_accuracy.png in `workdir`;
  returns the summary."""
  os.makedirs(workdir, exist_ok=True)
  summary = summarize(experiment)
  with open(os.path.join(workdir, "summary.json.tmp"), "w") as fh:
    json.dump(summary, fh, indent=1, allow_nan=True)
  os.replace(os.path.join(workdir, "summary.json.tmp"), os.path.join(workdir, "summary.json"))
  with open(os.path.join(workdir, "timings.json.tmp"), "w") as fh:
    json.dump(timings(experiment), fh, indent=1)
  os.replace(os.path.join(workdir, "timings.json.tmp"), os.path.join(workdir, "timings.json"))
  write_metrics_csv(experiment, os.path.join(workdir, "metrics.csv"))
  write_draws_csv(experiment, os.path.join(workdir, "draws.csv"))
  plot(experiment, os.path.join(workdir, "honest_accuracy.png"))
  return summary
