"""Does the cost of privacy plus robustness grow with the model dimension d, and does
compression bend the curve? (issue 18; Guerraoui et al., PODC 2021; Zhu et al. 2023)

Guerraoui, Gupta, Pinot, Rouault and Stephan showed that with DP-SGD noise at the workers the
robust rules' error grows with d (their condition asks for a batch size ∝ √d). The remedy under
study is to lower the dimension the noise and the rule live in: shared random-k, where every
client privatizes and sends the same k = ⌈ratio·d⌉ coordinates and the rule aggregates in k
dimensions. With k = ⌈ratio·d⌉ the noise still lives in a dimension ∝ d, so only the constant
can move; the line with a fixed k (`K_FIXED` = 64 shared coordinates whatever d) is the one
where it may bend: the decoded update is (d/k)·(clipped k-coordinate gradient +
N(0, σ²C²I_k)/B), whose signal to noise ratio per round, B/(σ√k), no longer depends on d; the
price is the sparsifier's own variance (each coordinate is sent once every d/k rounds on
average).

Two tasks, d from 10² to 10⁵, at a fixed ε (DP-SGD, δ = 1e-5, the client with the fewest
examples), under ALIE (z = 3), n = 25, Bernoulli(p = 0.15), declared f = 5:
  - synthetic: least squares on the synthetic regression task, d = dim + 1 ∈ {10², 10³, 10⁴, 10⁵},
    without covariate shift (β = 0: inputs x ~ N(0, diag(j^-1.2)), so ‖x‖ and the targets keep
    their scale as d grows; with β = 1 the inputs' means grow ‖x‖² ∝ d and client lr 0.5
    diverged already without privacy) and without concept shift (α = 0: with α = 1 each
    client's own model differs from the global one in every coordinate, and at d = 1000 the
    control without privacy or attack ended at L_S = 3.40 from 3.58 at θ = 0, so the error
    measured no learning), client lr 0.2; the clients differ by their samples only;
  - digits: an MLP with one hidden layer of width w ∈ {4, 13, 40, 133}, d = 75w + 10 (310, 985,
    3,010, 9,985); w = 1 (d = 85) learned nothing even without privacy (89% error);
    w = 1333 (d = 99,985) is left out of the default grid: DP-SGD's per-example gradients
    `[n, m_max, d]` make each of its points take tens of minutes on 2 CPU cores
    (`--config.grid.digits_widths=4,13,40,133,1333` on an accelerator).
Rules: mean, trimmed mean, geometric median, NNM + trimmed mean; each with privacy and no
compression, with privacy and shared random-k at k = ⌈ratio·d⌉ and at k = 64 (both aggregated
in k dimensions), and without privacy or compression (the control: what the model and the
attack cost at that d).

  python launch/sweep.py --config=configs/sweep_dp_dimension.py --workdir=runs/dp_dimension

The report writes dp_dimension.csv and dp_error_vs_dimension.png: the honest error against d
(log scale) per rule, a panel per task: the honest loss L_S (synthetic) and the honest held-out
error 1 − accuracy (digits), mean and 95% CI over the draws.
"""

import math
import os

import ml_collections
import numpy as np

from configs import default
from fedjax_robust import domains as D
from fedjax_robust import results
from fedjax_robust import sweep
from fedjax_robust.sweep import Point
from fedjax_robust.sweep import as_list

SYNTHETIC_D = (100, 1000, 10000, 100000)
DIGITS_WIDTHS = (4, 13, 40, 133)
RULES = ("mean", "trimmed_mean", "geometric_median", "nnm+trimmed_mean")
K_FIXED = 64  # shared coordinates of the fixed-k line (every d of the grid is at least 100)
SETTINGS = {  # privacy and compression of each line
    "dp": {"privacy.kind": "example", "compression.kind": "none"},
    "dp+shared_random_k": {"privacy.kind": "example", "compression.kind": "shared_random_k",
                           "compression.aggregate_in": "k"},
    "dp+shared_random_k_fixed": {"privacy.kind": "example", "compression.kind": "shared_random_k",
                                 "compression.k": K_FIXED, "compression.aggregate_in": "k"},
    "no_dp": {"privacy.kind": "none", "compression.kind": "none"},
}
METRICS = {"synthetic": "honest_loss", "digits": "honest_holdout_accuracy"}


def get_config():
  base = default.get_config()
  base.num_samples = 8
  # One device: DP-SGD's per-example gradients [n, m_max, d] take ≈ 1.2 GB per draw at
  # d = 10⁵ on digits, and a two-device mesh would run at least 16 draws at once.
  base.mesh = ""
  base.training.num_rounds = 100
  base.training.eval_every = 20
  base.training.batch_size = 32
  base.estimators.honest_optimum = False
  base.theory.enabled = False
  base.privacy.target_epsilon = 8.0
  base.privacy.clip = 1.0
  base.compression.ratio = 0.1
  base.data.synthetic_examples_per_client = 64
  c = ml_collections.ConfigDict()
  c.base = base
  c.grid = ml_collections.ConfigDict({
      "tasks": ("digits", "synthetic"), "synthetic_d": SYNTHETIC_D,
      "digits_widths": DIGITS_WIDTHS, "rules": RULES, "settings": tuple(SETTINGS)})
  # The generic plots: a panel per rule, a line per task and setting (`line`); the report's
  # dp_error_vs_dimension.png is the one to read (log d, each task's own error).
  c.plot = ml_collections.ConfigDict({"x": "d", "series": "rule", "style": "line",
                                      "metric": "honest_loss", "series_keys": ("aggregator",)})
  return c


def _task(task: str, size: int) -> tuple[int, dict]:
  """(d, overrides) of one task at one size."""
  if task == "synthetic":
    return size, {"data.name": "synthetic", "data.synthetic_task": "regression",
                  "model": "linear_regression", "data.synthetic_beta": 0.0,
                  "data.synthetic_alpha": 0.0,
                  "training.client_lr": 0.2,
                  "data.synthetic_dim": size - 1, "data.holdout_fraction": 0.0}
  return 75 * size + 10, {"data.name": "digits", "model": "mlp",
                          "model_options.mlp.hidden": (size,)}


def points(c):
  out = []
  tasks, settings = as_list(c.grid.tasks, str), as_list(c.grid.settings, str)
  for task in tasks:
    D.Choice(*METRICS).check("grid.tasks", task)
  for setting in settings:
    D.Choice(*SETTINGS).check("grid.settings", setting)
  for task in tasks:
    sizes = as_list(c.grid.synthetic_d if task == "synthetic" else c.grid.digits_widths, int)
    for size in sizes:
      d, overrides = _task(task, size)
      for setting in settings:
        for rule in as_list(c.grid.rules, str):
          out.append(Point({"task": task, "d": d, "setting": setting, "rule": rule,
                            "line": f"{task}:{setting}"},
                           {**overrides, **SETTINGS[setting], "aggregator": rule}))
  return out


def plot_note(c) -> str:
  return (f"ALIE z = {c.base.attack_options.alie.z}, n = {c.base.num_clients}, f = {c.base.f}; "
          f"DP-SGD ε = {c.base.privacy.target_epsilon:g}, B = {c.base.training.batch_size}, "
          f"C = {c.base.privacy.clip:g}; shared random-k k = ⌈{c.base.compression.ratio}·d⌉ "
          f"or {K_FIXED}.")


def _as_error(task, mean, low, high, *, difference=False):
  """Error = the honest loss (synthetic) or 1 − held-out accuracy (digits), with its CI in
  order: a (difference of) accuracy changes sign, and the CI's bounds swap."""
  sign = 1.0 if task == "synthetic" else -1.0
  offset = 0.0 if difference or task == "synthetic" else 1.0
  lo, hi = offset + sign * low, offset + sign * high
  return offset + sign * mean, min(lo, hi), max(lo, hi)


def report(c, rows, workdir, ids, log=print) -> list[str]:
  """Error against d per task, rule and setting, and what privacy adds to it: each private
  setting minus the no-privacy control at the same task, d and rule, paired over the same draws
  (`sweep.paired_comparisons`); CSV and plot."""
  tags = ("task", "d", "setting", "rule")
  table = {}
  for r in rows:
    if r["point"] in ids and (r["metric"] == METRICS[r["task"]]
                              or (r["metric"], r["statistic"]) == ("diverged", "share")):
      e = table.setdefault(r["point"], {**{k: r[k] for k in tags}, "d": int(float(r["d"]))})
      e[(r["metric"], r["statistic"])] = float(r["value"])
  excess = {}
  compared = sweep.paired_comparisons(
      [{k: v for k, v in r.items() if k != "line"} for r in rows], workdir, series="setting",
      baseline="no_dp", only=sorted(ids), series_key=("privacy", "compression"), log=log)
  for cmp in compared:
    if cmp["metric"] == METRICS[cmp["task"]] and cmp["a"] != "no_dp":
      m, lo, hi = _as_error(cmp["task"], cmp["mean"], cmp["ci_low"], cmp["ci_high"],
                            difference=True)
      excess[(cmp["task"], int(float(cmp["d"])), cmp["a"], cmp["rule"])] = {
          "dp_excess": m, "dp_excess_ci_low": lo, "dp_excess_ci_high": hi,
          "dp_excess_pairs": cmp["pairs"],
          # no variance (e.g. identical draws): an exact difference, no CI
          "dp_excess_deterministic": int(cmp["deterministic"]),
          "dp_excess_identical_draws": int(cmp["identical_draws"])}
  entries = []
  for e in table.values():
    metric = METRICS[e["task"]]
    if (metric, "mean") not in e:
      continue
    m, lo, hi = _as_error(e["task"], e[(metric, "mean")],
                          *(e.get((metric, f"mean_ci_{b}"), math.nan) for b in ("low", "high")))
    entries.append({**{k: e[k] for k in tags}, "error": m, "error_ci_low": lo, "error_ci_high": hi,
                    "error_identical": int(e.get((metric, "identical"), 0)),
                    # a diverged draw is counted, never averaged in
                    "diverged_share": e.get(("diverged", "share"), math.nan),
                    **excess.get((e["task"], e["d"], e["setting"], e["rule"]),
                                 {**dict.fromkeys(("dp_excess", "dp_excess_ci_low",
                                                   "dp_excess_ci_high", "dp_excess_pairs"),
                                                  math.nan),
                                  "dp_excess_deterministic": 0,
                                  "dp_excess_identical_draws": 0})})
  if not entries:
    return []
  entries.sort(key=lambda e: (e["task"], e["setting"], e["rule"], int(e["d"])))
  path = sweep.write_table(os.path.join(workdir, "dp_dimension.csv"), entries)
  lines = []
  log("\nhonest error against d (synthetic: honest loss L_S; digits: held-out error 1 − acc), "
      "mean [95% CI]; private settings: (Δ what privacy adds, paired over the same draws with "
      "the no-privacy control, mean [paired-t 95% CI])")
  for task in dict.fromkeys(e["task"] for e in entries):
    for setting in dict.fromkeys(e["setting"] for e in entries):
      for rule in dict.fromkeys(e["rule"] for e in entries):
        mine = [e for e in entries if (e["task"], e["setting"], e["rule"]) == (task, setting, rule)]
        if mine:
          lines.append(f"{task:9s} {setting:24s} {rule:17s} " + "  ".join(
              f"d={int(e['d']):>6d}: " + _error_text(e)
              + (f" ({100 * e['diverged_share']:.0f}% diverged)"
                 if e["diverged_share"] > 0 else "")
              for e in mine))
  lines += results.report_notes(lines, any(e["dp_excess_identical_draws"] for e in entries))
  for line in lines:
    log(line)
  return [path, _plot(entries, workdir, plot_note(c))]


def _error_text(e) -> str:
  """'error [CI]' and, for a private setting, ' (Δ diff [CI])'; '(exact)§' for identical draws,
  'deterministic§' for a difference without variance (no CI: nothing to test)."""
  text = (f"{e['error']:.4g} {results.EXACT_MARK}" if e["error_identical"] else
          f"{e['error']:.4g} [{e['error_ci_low']:.4g}, {e['error_ci_high']:.4g}]")
  if math.isnan(e["dp_excess"]):
    return text
  if e["dp_excess_deterministic"]:
    return text + f" (Δ {e['dp_excess']:+.3g} {results.DETERMINISTIC_MARK})"
  return text + (f" (Δ {e['dp_excess']:+.3g} [{e['dp_excess_ci_low']:+.3g}, "
                 f"{e['dp_excess_ci_high']:+.3g}])")


def _plot(entries, workdir, note) -> str:
  """Top: the error per task against d; bottom: what privacy adds (paired, CI), with a √d
  guide through the smallest d (the growth the PODC 2021 analysis predicts for ‖noise‖)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  tasks = list(dict.fromkeys(e["task"] for e in entries))
  rules = list(dict.fromkeys(e["rule"] for e in entries))
  styles = {"dp": "-", "dp+shared_random_k": "--", "dp+shared_random_k_fixed": "-.",
            "no_dp": ":"}
  fig, axes = plt.subplots(2, len(tasks), figsize=(6 * len(tasks), 8.6), squeeze=False)
  for column, task in enumerate(tasks):
    for row, (value, low, high) in enumerate((("error", "error_ci_low", "error_ci_high"),
                                              ("dp_excess", "dp_excess_ci_low",
                                               "dp_excess_ci_high"))):
      ax = axes[row, column]
      for i, rule in enumerate(rules):
        for setting, ls in styles.items():
          mine = [e for e in entries if not math.isnan(e[value])
                  and (e["task"], e["rule"], e["setting"]) == (task, rule, setting)]
          if not mine:
            continue
          ax.errorbar([e["d"] for e in mine], [e[value] for e in mine],
                      yerr=np.nan_to_num([[max(e[value] - e[low], 0) for e in mine],
                                          [max(e[high] - e[value], 0) for e in mine]]),
                      color=f"C{i}", linestyle=ls, marker="o", capsize=2, markersize=3,
                      label=f"{rule}, {setting}")
      ax.set_xscale("log")
      ax.set_xlabel("d (parameters sent)")
      what = "honest loss L_S" if task == "synthetic" else "honest held-out error"
      ax.set_ylabel(what if row == 0 else f"privacy's cost: Δ {what} vs no privacy")
      ax.set_title(task, fontsize=9)
      ax.grid(alpha=0.3)
      ds = sorted({e["d"] for e in entries if e["task"] == task})
      first = [e[value] for e in entries if (e["task"], e["setting"], e["d"]) == (task, "dp", ds[0])
               and not math.isnan(e[value])]
      if row == 1 and first and sum(first) > 0:
        anchor = sum(first) / len(first)
        ax.plot(ds, [anchor * math.sqrt(d / ds[0]) for d in ds], color="grey", lw=0.8,
                label="∝ √d through the privacy line's mean at the smallest d")
        # the highest CI bound drawn (the value itself where it has none: identical draws)
        ax.set_ylim(top=max(e[value] if math.isnan(e[high]) else e[high] for e in entries
                            if e["task"] == task and not math.isnan(e[value])) * 1.15)
    axes[0, column].legend(fontsize=6, ncol=1, loc="best")
  axes[1, -1].legend(fontsize=6, ncol=1, loc="best")
  return sweep.save_figure(
      fig, os.path.join(workdir, "dp_error_vs_dimension.png"),
      "Privacy (solid), privacy + shared random-k at k ∝ d (dashed) and at fixed k (dash-dot), "
      "neither (dotted) against d", note, dpi=110)
