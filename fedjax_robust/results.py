"""Summaries, tables, files and plots of an experiment's Monte Carlo samples."""

from __future__ import annotations

import csv
import json
import os
from typing import Any, Mapping

import numpy as np

from fedjax_robust import config as config_lib
from fedjax_robust import evaluation
from fedjax_robust import honest_sets
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


def summarize_run(run: AggregatorRun, counts: np.ndarray, *, num_clients: int, f: int,
                  reference: AggregatorRun | None = None, theory: dict | None = None) -> dict:
  """Final-round estimates over samples for one aggregator; `counts` is b per sample;
  `reference` the honest-optimum run on the same draws (for the excess L_S(θ̂_S) − L_S*).

  Diverged draws (a non-finite parameter) are counted (`diverged`: count and share) and their
  honest loss is +inf (so the mean loss is +inf, the median stays meaningful); their accuracies
  are undefined and left out of the accuracy estimates, whose `count` says how many draws
  remain."""
  diverged = diverged_draws(run)[-1]
  metrics = defined_metrics(run)
  loss = evaluation.diverged_as_inf(run.metrics["honest_loss"][-1], num_clients - counts)
  loss = np.where(diverged & (num_clients - counts > 0), np.inf, loss)
  accuracy = metrics["honest_accuracy"][-1]
  within = counts <= f
  out = {
      "diverged": {"count": int(diverged.sum()), "share": float(diverged.mean()),
                   "draws": np.flatnonzero(diverged).tolist()},
      "honest_loss": evaluation.summarize(loss, worst="max"),
      "honest_accuracy": evaluation.summarize(accuracy, worst="min"),
      "test_accuracy": evaluation.summarize(metrics["test_accuracy"][-1], worst="min"),
      "honest_accuracy_given_b_le_f": evaluation.summarize(accuracy[within], worst="min"),
      "honest_accuracy_given_b_gt_f": evaluation.summarize(accuracy[~within], worst="min"),
      # The expected loss conditioned on the declared f holding (b ≤ f) and failing (b > f),
      # beside the unconditioned `honest_loss` and P(b > f); diverged draws count +inf.
      "honest_loss_given_b_le_f": evaluation.summarize(loss[within], worst="max"),
      "honest_loss_given_b_gt_f": evaluation.summarize(loss[~within], worst="max"),
      "draws_per_chunk": int(run.draws_per_chunk),
  }
  if reference is not None:
    optimum = reference.metrics["honest_loss"][-1]
    out["honest_optimum_loss"] = evaluation.summarize(optimum, worst="max")
    out["honest_excess_loss"] = evaluation.summarize(loss - optimum, worst="max")
  if "backdoor_accuracy" in run.metrics:
    out["backdoor_accuracy"] = evaluation.summarize(metrics["backdoor_accuracy"][-1],
                                                    worst="max")
  # Aggregator diagnostics averaged over rounds and draws; the per-round κ ratio is reported
  # (as κ̂, a maximum) in the theory block instead.
  out.update({name: float(np.mean(values)) for name, values in run.aux.items()
              if name not in training.MAX_AUX})
  if theory is not None:
    out["theory"] = theory_report.summarize(theory, counts, f)
  return out


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
  `worst_case` (criterion "final_loss", a maximum of loss) or `max_heterogeneity_proxy`
  (criterion "heterogeneity", not a loss maximum), each with the `interval` it supports."""
  config = experiment.config
  n = config.num_clients
  exact = None
  if config.honest_set != "worst_case":
    spec = config_lib.honest_set_spec(config)
    if config.honest_set in honest_sets.GRAPH_BASED:
      spec["adjacency"] = config_lib.make_adjacency(config, experiment.data)
    pmf, is_exact = honest_sets.byzantine_count_pmf(spec, num_clients=n)
    exact = pmf if is_exact else None
  out = {
      "config": json.loads(config.to_json()),
      "byzantine_count": evaluation.count_law(_counts(experiment), n, f=config.f,
                                              exact_pmf=exact),
      "aggregators": {
          name: summarize_run(run, _counts(experiment, name), num_clients=n, f=config.f,
                              reference=experiment.references.get(name),
                              theory=experiment.theory.get(name))
          for name, run in experiment.runs.items()},
  }
  for name, info in experiment.worst_case.items():  # the proxy is never filed as a worst case
    key = "worst_case" if info.get("criterion") == "final_loss" else "max_heterogeneity_proxy"
    out.setdefault(key, {})[name] = info
  if experiment.oracle is not None:
    out["oracle"] = experiment.oracle
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


def format_table(summary: dict) -> str:
  """A plain-text table: one row per aggregator, final-round estimates over samples."""
  law = summary["byzantine_count"]
  cfg = summary["config"]
  header = (f"{'aggregator':<28} {'E[honest loss] ± CI95':>22} {'median':>7} "
            f"{'E[honest acc %] ± CI':>21} "
            f"{'worst acc':>9} {'acc|b≤f':>8} {'acc|b>f':>8} {'test acc':>8} {'P(b>f)':>7} "
            f"{'diverged':>8}")
  backdoor = any("backdoor_accuracy" in s for s in summary["aggregators"].values())
  if backdoor:
    header += f" {'backdoor %':>10}"
  lines = [header, "-" * len(header)]
  for name, s in summary["aggregators"].items():
    loss, acc = s["honest_loss"], s["honest_accuracy"]
    loss_txt = f"{loss['mean']:.4f} ± {loss['ci95']:.4f}"
    acc_txt = ("n/a" if np.isnan(acc["mean"])  # no draw with a defined accuracy
               else f"{_pct(acc['mean'])} ± {100 * acc['ci95']:.2f}")
    lines.append(
        f"{name:<28} {loss_txt:>22} {loss['q50']:>7.4f} {acc_txt:>21} {_pct(acc['worst']):>9} "
        f"{_pct(s['honest_accuracy_given_b_le_f']['mean']):>8} "
        f"{_pct(s['honest_accuracy_given_b_gt_f']['mean']):>8} "
        f"{_pct(s['test_accuracy']['mean']):>8} {law['p_exceeds_f']:>7.3f} "
        f"{s['diverged']['count']:>8d}"
        + (f" {_pct(s['backdoor_accuracy']['mean']):>10}" if backdoor else ""))
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
      extras.append(f"{name}: E[L_S(θ̂_S) − L_S*] = {e['mean']:.4f} ± {e['ci95']:.4f} "
                    f"(CVaR90 {e['cvar90']:.4f})")
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
  lines.append(
      f"\nS={cfg['num_samples']} draws of μ_H={_honest_set_name(cfg)}, n={cfg['num_clients']}, "
      f"declared f={cfg['f']}, attack={cfg['attack']}, {cfg['training']['num_rounds']} rounds. "
      f"Realized b: mean {law['mean']:.3f}{exact}; "
      f"P(b ≥ n/2) = {law['p_no_honest_majority']:.3f}.")
  lines.extend(extras)
  return "\n".join(lines)


def _g(x: float) -> str:
  return "n/a" if x is None or np.isnan(x) else f"{x:.3g}"


ERROR_NAMES = {"excess_loss": "L_S(θ_T) − L_S*",
               "gradient_norm": "(1/T)Σ‖∇L_S(θ_t)‖² (on the evaluation rounds)"}


def format_theory(summary: dict) -> str:
  """The theory beside the measurement, one row per aggregator: heterogeneity of the realized
  honest sets (E[G²], E[B²]), κ (lower bound f/(n−2f), published bound, κ̂ measured on draws with
  b = f), P(bound invalid), E[bound | valid], the measured error on the same draws and on all,
  and the tightness bound/measured (median and 90% quantile over valid draws). '' if no run has
  theory measurements."""
  rows = {name: s["theory"] for name, s in summary["aggregators"].items() if "theory" in s}
  if not rows:
    return ""
  first = next(iter(rows.values()))
  header = (f"{'aggregator':<28} {'E[G²]':>9} {'E[B²]':>8} {'κ low':>7} {'κ bound':>8} "
            f"{'κ̂ (b=f)':>8} {'P(inv)':>6} {'E[bound|valid]':>14} {'E[err|valid]':>12} "
            f"{'E[err]':>9} {'tight q50':>9} {'tight q90':>9} {'viol':>4} "
            f"{'plug-in bound':>13} {'tight q50':>9}")
  lines = [f"Theory beside experiment — error = {ERROR_NAMES[first['error_kind']]}; bound: "
           f"robust D-GD with the published κ; plug-in: the same bound with κ̂ "
           f"(over valid draws: b ≤ f, κB² < 1)", header, "-" * len(header)]
  notes = []
  for name, t in rows.items():
    k = t["kappa"]
    lines.append(
        f"{name:<28} {_g(t['g2']['mean']):>9} {_g(t['b2']['mean']):>8} {_g(k['lower']):>7} "
        f"{_g(k['upper']):>8} {_g(k['kappa_hat']):>8} {t['p_invalid']:>6.3f} "
        f"{_g(t['bound_given_valid']['mean']):>14} {_g(t['error_given_valid']['mean']):>12} "
        f"{_g(t['error']['mean']):>9} {_g(t['tightness']['q50']):>9} "
        f"{_g(t['tightness']['q90']):>9} {t['violations']:>4d} "
        f"{_g(t['bound_plugin_given_valid']['mean']):>13} {_g(t['tightness_plugin']['q50']):>9}")
    if t["violations"] or t["violations_plugin"]:
      exact = t["premises"]["dgd"] and t["error_kind"] == "excess_loss"
      notes.append(
          f"{'FINDING' if exact else 'NOTE'}: {name}: {t['violations']} valid draw(s) with the "
          f"published-κ bound below the measured error, {t['violations_plugin']} with the plug-in "
          "bound (κ̂ ≤ κ, so the plug-in bound is no guarantee)"
          + ("." if exact else "; the theorem's premises are not all met or L is estimated, so "
             "this is not a counterexample."))
    extra = (f"P(breakdown: f/n ≥ 1/(2 + B₀²), B₀² = max_t h_t/u_t) = {t['p_breakdown']:.3f}"
             + (f"; {t['error_nonpositive']} valid draw(s) with measured error ≤ 0 (rounding; "
                "no tightness)" if t.get("error_nonpositive") else ""))
    if "lower_bound_order" in t:
      extra += (f"; lower-bound order f/(n − (2 + B²)f)·G²/μ (constant omitted) over valid "
                f"draws: mean {_g(t['lower_bound_order']['mean'])}")
    notes.append(f"{name}: {extra}; κ̂ on draws with b < f: {_g(k['kappa_hat_b_lt_f'])}, "
                 f"b > f: {_g(k['kappa_hat_b_gt_f'])} (not mixed into κ̂)")
    if k["upper"] is None:
      notes.append(f"{name}: no published κ recorded ({k.get('source') or 'none'}); only the "
                   "plug-in bound is given.")
  prem = first["premises"]
  if not prem["dgd"]:
    notes.append("Premises not met (the bounds are reference values, not guarantees): "
                 + "; ".join(prem["reasons"]) + ".")
  if first["error_kind"] == "gradient_norm":
    notes.append("L is estimated (Hessian power iteration at θ_T) and L_S* by 0: an estimate.")
  return "\n".join(lines + notes)


def write_metrics_csv(experiment: Experiment, path: str) -> None:
  """One row per aggregator × evaluation round × metric, with estimates over samples."""
  n = experiment.config.num_clients
  fields = ["aggregator", "round", "metric", "mean", "ci95", "q05", "q50", "q95", "worst",
            "cvar90", "undefined"]
  with open(path + ".tmp", "w", newline="") as fh:
    writer = csv.DictWriter(fh, fieldnames=fields)
    writer.writeheader()
    for name, run in experiment.runs.items():
      counts = _counts(experiment, name)
      metrics = defined_metrics(run)
      for e, rnd in enumerate(run.rounds):
        for metric, values in metrics.items():
          values = values[e]
          if metric == "honest_loss":
            values = evaluation.diverged_as_inf(values, n - counts)
          s = evaluation.summarize(values, worst="max" if metric.endswith("loss") else "min")
          writer.writerow({"aggregator": name, "round": int(rnd), "metric": metric,
                           **{k: s[k] for k in fields[3:]}})
  os.replace(path + ".tmp", path)


# Per-draw theory columns of draws.csv.
DRAW_THEORY = ("g2", "b2", "kappa_ratio", "smoothness", "bound", "valid", "error", "tightness",
               "bound_plugin", "tightness_plugin")


def write_draws_csv(experiment: Experiment, path: str) -> None:
  """One row per draw of μ_H: its realized b, whether it has no honest majority (b ≥ n/2, run
  anyway and flagged here), each aggregator's final-round metrics and, with theory measurements,
  its per-draw theory (theory.report.per_draw: G², B², κ ratio, bound, validity, measured error,
  tightness)."""
  counts = _counts(experiment)
  n = experiment.config.num_clients
  columns = [(name, metric, experiment.runs[name].metrics[metric][-1])
             for name, run in experiment.runs.items() for metric in run.metrics]
  columns += [(name, f"theory_{key}", np.asarray(theory[key], np.float64))
              for name, theory in experiment.theory.items() for key in DRAW_THEORY
              if key in theory]
  with open(path + ".tmp", "w", newline="") as fh:
    writer = csv.writer(fh)
    writer.writerow(["draw", "num_byzantine", "no_honest_majority",
                     *[f"{name}:{metric}" for name, metric, _ in columns]])
    for s, b in enumerate(counts):
      writer.writerow([s, int(b), int(2 * b >= n),
                       *[float(values[s]) for _, _, values in columns]])
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


def plot(experiment: Experiment, path: str) -> str:
  """Honest accuracy over rounds (mean, 5–95% band over draws) and its final distribution (box:
  quartiles, whiskers 5–95%), titled with what was run: the data, n, μ_H and its parameters, the
  declared f, the attack and its options, S and the rounds. Returns the figure's title."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import textwrap  # pylint: disable=g-import-not-at-top
  from matplotlib.patches import Patch  # pylint: disable=g-import-not-at-top

  cfg = experiment.config
  if cfg.honest_set == "worst_case":
    law = (f"{worst_case.short_name(cfg.honest_set_options.worst_case.criterion)}, one honest "
           "set repeated (band: training noise only)")
  else:
    spec = config_lib.honest_set_spec(cfg)
    law = f"{spec.pop('name')}({format_options(spec, {'num_byzantine': 'b'})})"
    if cfg.honest_set in honest_sets.GRAPH_BASED:
      law += f" on the {cfg.graph.kind} graph"
  attack_opts = format_options(dict(cfg.attack_options.get(cfg.attack, {})))
  title = (f"{cfg.data.name}, n={cfg.num_clients}, μ_H={law}, declared f={cfg.f}, attack "
           f"{cfg.attack}" + (f"({attack_opts})" if attack_opts else "")
           + f", S={cfg.num_samples} draws, {cfg.training.num_rounds} rounds")

  fig, (ax, box) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [3, 2]})
  finals, names = [], []
  for name, run in experiment.runs.items():
    acc = 100 * defined_metrics(run)["honest_accuracy"]  # diverged draws left out
    mean = np.nanmean(acc, axis=1)
    lo, hi = np.nanquantile(acc, 0.05, axis=1), np.nanquantile(acc, 0.95, axis=1)
    (line,) = ax.plot(run.rounds, mean, label=name)
    ax.fill_between(run.rounds, lo, hi, color=line.get_color(), alpha=0.2)
    finals.append(acc[-1][~np.isnan(acc[-1])])
    names.append(name)
  ax.set(xlabel="round", ylabel="honest accuracy (%)",
         title="line: mean over draws; band: 5–95% over draws")
  ax.title.set_fontsize(9)
  ax.grid(alpha=0.3)
  handles, labels = ax.get_legend_handles_labels()
  ax.legend(handles + [Patch(color="gray", alpha=0.3)], labels + ["5–95% over draws"],
            fontsize=8)
  box.boxplot(finals, vert=False, whis=(5, 95), showfliers=True)
  box.set_yticks(range(1, len(names) + 1), names, fontsize=8)
  box.set(xlabel="final honest accuracy (%)",
          title="over draws of μ_H: box quartiles, whiskers 5–95%")
  box.title.set_fontsize(9)
  box.grid(alpha=0.3)
  fig.suptitle(textwrap.fill(title, 150), fontsize=9)
  fig.tight_layout()
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
