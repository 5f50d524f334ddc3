"""A sweep's report: its rows of results.csv and its points' files (read through `store`) into
tables, paired comparisons (comparisons.csv) and figures; never trains. The report layer
(BUILD.md, "Layers"); `launch/sweep.py` calls it after the runner (`sweep.run`), and each sweep
config's own analysis (`report/sweeps/`) uses its helpers.

The reports (`table`, `comparison_table`, `theory_table`, `plot`, `plot_theory`) set expected
against worst case only at the same realized b: E[· | b = f] (the worst case's b) and
E[· | b ≤ f] with P(b > f) beside, the unconditioned mean apart; each figure has a one-line
title and its details in a caption file `<figure>.txt` beside it (`save_figure`).
"""

from __future__ import annotations

import csv
import functools
import os
import textwrap
from typing import Any, Callable, Sequence

import numpy as np

from fedjax_robust import evaluation
from fedjax_robust import results
from fedjax_robust import store
from fedjax_robust import worst_case


def progress_value(summary: dict, metric: str | None = None) -> str:
  """'E[<metric> | b = f] <mean>, over all draws <mean>' of one rule's summary (the value at the
  worst case's b first, as the sweep's table; 'E[<metric>] <mean>' for a summary without it),
  named as the sweep table names it (accuracies in percent): `metric`, or by default the
  held-out accuracy where it is measured, else the in-sample one; the honest loss where the
  accuracy is undefined (a regression task, or every draw diverged)."""
  names = [metric] if metric else ["honest_holdout_accuracy", "honest_accuracy"]
  name = next((m for m in names if m in summary and np.isfinite(summary[m]["mean"])),
              "honest_loss")
  text = lambda v: f"{100 * v:.2f}%" if _is_percent(name) else f"{v:.4g}"  # pylint: disable=unnecessary-lambda-assignment
  mean = summary[name]["mean"]
  at_f = summary.get(f"{name}_given_b_eq_f")
  if at_f is None:
    return f"E[{name}] {text(mean)}"
  return (f"E[{name} | b = f] {text(at_f['mean']) if at_f['count'] else 'n/a (no draw)'}, "
          f"over all draws {text(mean)}")


COMPARISON_FIELDS = ("a", "b", "metric", "same_draws", "mean", "ci_low", "ci_high", "p_value",
                     "wilcoxon_p", "median", "heavy_tail", "pairs", "wilcoxon_pairs",
                     "a_only_infinite", "b_only_infinite", "both_infinite", "undefined",
                     "deterministic", "identical_draws")


def draw_values(arrays: dict) -> dict[str, np.ndarray]:
  """A point's per-draw final metrics as the comparisons read them (results.loss_as_summarized:
  the honest loss of a diverged draw +inf, NaN where no client is honest; accuracies of diverged
  draws are NaN in the npz already)."""
  out = {}
  diverged = arrays.get("final_diverged", np.zeros(arrays["num_byzantine"].shape)) > 0
  num_honest = np.sum(arrays["honest_masks"], axis=1)
  for metric, _ in results.COMPARED:
    if f"final_{metric}" in arrays:
      values = np.asarray(arrays[f"final_{metric}"], np.float64)
      if metric.endswith("loss"):
        values = results.loss_as_summarized(values, diverged, num_honest)
      out[metric] = values
  return out


def paired_comparisons(rows: list[dict], workdir: str, *, series: str = "aggregator",
                       baseline: str | None = None, only: Sequence[str] | None = None,
                       series_key: str | Sequence[str] | None = None,
                       log: Callable[[str], None] = print) -> list[dict]:
  """Paired comparisons between points that differ only in tag `series` (the aggregator): in
  each group of such points, every value against `baseline` (default: the group's first point
  in sweep order), a − b per draw over the same draws (`evaluation.paired_difference`, for each
  metric of results.COMPARED). Points of one group share their masks and keys when they share
  the seed and μ_H; `same_draws` says whether the masks are equal (a per-aggregator worst case
  repeats a different set). Returns one dict per (group, a, metric): the group's tags, then
  COMPARISON_FIELDS; a point whose npz is unreadable is named through `log` and left out.
  `only` restricts the comparison to those point ids (the current sweep's: results.csv keeps the
  rows of points an earlier sweep left in the workdir), and two points are paired only when
  their saved configs (points/<id>.json) are equal apart from the config key `series_key`
  (default: `series`; several dotted keys when the tag sets more than one, e.g. a rule with the
  server's prior) that the tag sets."""
  points = _by_point(rows)
  if only is not None:
    points = {p: e for p, e in points.items() if p in set(only)}
  groups: dict[tuple, list[str]] = {}
  for pid, entry in points.items():
    if series not in entry:
      continue
    key = tuple(sorted((k, str(v)) for k, v in entry.items()
                       if isinstance(k, str) and k != series))
    groups.setdefault(key, []).append(pid)
  def readable(pid):
    try:
      return store.load_point(store.point_path(workdir, pid))
    except store.NPZ_ERRORS as e:
      log(f"sweep comparisons: WARNING {store.point_path(workdir, pid)} unreadable "
          f"({type(e).__name__}); left out")
      return None

  out = []
  for key, pids in groups.items():
    base_pid = next((p for p in pids if str(points[p][series]) == baseline), None) if baseline \
        else pids[0]
    if base_pid is None or len(pids) < 2:
      continue
    base = readable(base_pid)
    if base is None:
      continue
    base_values = draw_values(base)
    base_config = store.config_without(workdir, base_pid, series_key or series)
    for pid in pids:
      arrays = readable(pid) if pid != base_pid else None
      if arrays is None:
        continue
      if (base_config is None
          or store.config_without(workdir, pid, series_key or series) != base_config):
        log(f"sweep comparisons: {points[pid][series]} and {points[base_pid][series]} at "
            f"{dict(key)} differ in more than the {series} (points/<id>.json) or a config "
            "file is missing; not paired")
        continue
      values = draw_values(arrays)
      if len(arrays["num_byzantine"]) != len(base["num_byzantine"]):
        log(f"sweep comparisons: {points[pid][series]} and {points[base_pid][series]} at "
            f"{dict(key)} have different numbers of draws; not paired")
        continue
      same = ("honest_masks" in arrays and "honest_masks" in base
              and np.array_equal(arrays["honest_masks"], base["honest_masks"]))
      for metric, _ in results.COMPARED:
        if metric in values and metric in base_values:
          out.append({**dict(key), "a": str(points[pid][series]),
                      "b": str(points[base_pid][series]), "metric": metric, "same_draws": same,
                      **evaluation.paired_difference(values[metric], base_values[metric])})
  return out


def write_comparisons(path: str, comparisons: list[dict]) -> None:
  """comparisons.csv: one row per paired comparison (group tags, then COMPARISON_FIELDS)."""
  tags = sorted({k for c in comparisons for k in c} - set(COMPARISON_FIELDS) - {"test"})
  with open(path + ".tmp", "w", newline="") as fh:
    writer = csv.DictWriter(fh, fieldnames=tags + list(COMPARISON_FIELDS), extrasaction="ignore",
                            restval="")
    writer.writeheader()
    writer.writerows(comparisons)
  os.replace(path + ".tmp", path)


def comparison_table(comparisons: list[dict], metric: str = "honest_accuracy") -> str:
  """One line per paired comparison of `metric`: the group's tags, a − b, the mean difference
  with its paired-t 95% CI (percentage points for accuracies), the p-values, the pairs; a
  difference without variance (`deterministic`) is its exact value marked 'deterministic§',
  without CI or p-values, and a footnote says why."""
  chosen = [c for c in comparisons if c["metric"] == metric]
  if not chosen:
    return ""
  tags = [k for k in chosen[0] if k not in COMPARISON_FIELDS and k != "test"]
  percent = _is_percent(metric)
  text = functools.partial(_number_text, percent=percent)
  signed = lambda v: ("+" if v >= 0 else "") + text(v)  # pylint: disable=unnecessary-lambda-assignment
  lines = ["  ".join(f"{t:>12}" for t in tags) + f"  {'a − b':>44}  "
           f"{'mean diff [paired 95% CI]':>28}  {'p (t)':>7}  {'p (W)':>7}  pairs"]
  for c in chosen:
    pair = f"{c['a']} − {c['b']}" + ("" if c["same_draws"] else " (diff. sets)")
    if c.get("deterministic") and not np.isnan(c["mean"]):
      diff = f"{signed(c['mean'])} {results.DETERMINISTIC_MARK}"
      tests = f"{'':>7}  {'':>7}"
    else:
      diff = ("n/a" if np.isnan(c["mean"]) else
              f"{signed(c['mean'])} [{text(c['ci_low'])}, {text(c['ci_high'])}]")
      tests = (f"{results.format_p(c['p_value']):>7}  "
               f"{results.format_p(c['wilcoxon_p']):>7}")
    lines.append("  ".join(f"{str(c[t]):>12}" for t in tags) + f"  {pair:>44}  {diff:>28}  "
                 f"{tests}  {c['pairs']}")
  deterministic = {bool(c["identical_draws"]) for c in chosen if c.get("deterministic")}
  if deterministic:
    lines.append(results.deterministic_note(True in deterministic))
  return "\n".join(lines)


def _is_percent(metric: str, statistic: str = "mean") -> bool:
  """Accuracies are shown in percent (like the rest of the project); losses, counts and the law
  of b raw."""
  return "accuracy" in metric and statistic not in ("count", "undefined")


def mean_intervals(rows: list[dict], metric: str) -> dict[str, tuple[float, float]]:
  """point -> the 95% CI of `metric`'s mean: the configured interval (`mean_ci_low/high` rows:
  bootstrap or normal, see `report.interval`), or mean ± `ci95` for rows written without it."""
  stats: dict[str, dict] = {}
  for r in rows:
    if r["metric"] == metric and r["statistic"] in ("mean", "ci95", "mean_ci_low",
                                                      "mean_ci_high"):
      stats.setdefault(r["point"], {})[r["statistic"]] = float(r["value"])
  out = {}
  for pid, st in stats.items():
    if "mean_ci_low" in st and "mean_ci_high" in st:
      out[pid] = (st["mean_ci_low"], st["mean_ci_high"])
    elif "mean" in st:
      half = st.get("ci95", float("nan"))
      out[pid] = (st["mean"] - half, st["mean"] + half)
  return out


def _number_text(v: float, percent: bool) -> str:
  """A value for a table: accuracies in percent (2 decimals); other values with 4 decimals, or
  in scientific notation beyond 1e4 (a loss of 6.0e12 reads as such)."""
  if percent:
    return f"{100 * v:.2f}"
  return f"{v:.3e}" if np.isfinite(v) and v != 0 and not 1e-3 <= abs(v) < 1e4 else f"{v:.4f}"


def table(rows: list[dict], metric: str = "honest_accuracy", statistic: str = "mean",
          interval_name: str = "") -> str:
  """One line per point: its tags and `metric`'s `statistic`; accuracies in percent.

  For the mean, with rows conditioned on the realized b (`<metric>_given_b_eq_f` …, written by
  every point since issue 35), the expected value is given where a worst case can be set beside
  it: E[· | b = f] (the worst case's b: n − f honest) and E[· | b ≤ f], each with its 95% CI and
  draws, P(b > f) beside, then apart E[· | b > f] and the unconditioned E[·] over all draws,
  labelled so. Rows without them: the mean with its CI ('91.80 [88.60, 95.00]', or '91.80 ±
  3.20' for rows that carry only the normal half-width). Identical draws (a worst-case point
  under deterministic training) print their exact value marked '(exact)§', no CI.
  `interval_name` (e.g. evaluation.INTERVAL_NAMES[report.interval]) goes into the header."""
  if statistic == "mean" and any(r["metric"] == f"{metric}_given_b_eq_f" for r in rows):
    return _conditioned_table(rows, metric, interval_name)
  return _plain_table(rows, metric, statistic, interval_name)


def _conditioned_table(rows: list[dict], metric: str, interval_name: str) -> str:
  """`table` of the mean given b = f, b ≤ f, b > f and over all draws (see `table`)."""
  points = _by_point(rows)
  chosen = [p for p, e in points.items() if (metric, "mean") in e]
  tags = [k for k in points[chosen[0]] if isinstance(k, str)]
  percent = _is_percent(metric)

  def cell(e, name, *, ci=True, draws=True):
    mean, count = e.get((name, "mean"), np.nan), e.get((name, "count"), 0)
    if not count or np.isnan(mean):
      return "n/a (no draw)" if (name, "count") in e and not count else "n/a"
    text = _number_text(mean, percent)
    if e.get((name, "identical")):
      text += f" {results.EXACT_MARK}"
    elif ci:
      lo, hi = (e.get((name, "mean_ci_low"), np.nan), e.get((name, "mean_ci_high"), np.nan))
      text += (f" [{_number_text(lo, percent)}, {_number_text(hi, percent)}]"
               if np.isfinite(lo) and np.isfinite(hi) else " [n/a]")
    return text + (f" ({int(count)})" if draws else "")

  unit = " (%)" if percent else ""
  columns = [("E[· | b = f] [CI] (draws)", 34), ("E[· | b ≤ f] [CI] (draws)", 34),
             ("P(b > f)", 8), ("E[· | b > f] (draws)", 20), ("E[·] all draws [CI]", 30)]
  lines = [f"{metric}{unit}: expected values at the worst case's b (b = f: n − f honest) and "
           f"with the declared f holding (b ≤ f), P(b > f) beside; apart, given b > f and the "
           f"unconditioned mean over all draws (no worst case is comparable to it). "
           f"[CI]: {interval_name or '95% CI'} of the mean; (draws): draws with that b.",
           "  ".join(f"{t:>16}" for t in tags) + "  "
           + "  ".join(f"{name:>{width}}" for name, width in columns)]
  exact = False
  for pid in chosen:
    e = points[pid]
    p_gt = e.get(("byzantine_count", "p_exceeds_f"), np.nan)
    cells = [cell(e, f"{metric}_given_b_eq_f"), cell(e, f"{metric}_given_b_le_f"),
             "n/a" if np.isnan(p_gt) else f"{p_gt:.3f}",
             cell(e, f"{metric}_given_b_gt_f", ci=False), cell(e, metric, draws=False)]
    exact |= any(results.EXACT_MARK in c for c in cells)
    diverged = int(e.get(("diverged", "count"), 0))
    lines.append("  ".join(f"{str(e[t]):>16}" for t in tags) + "  "
                 + "  ".join(f"{c:>{width}}" for c, (_, width) in zip(cells, columns))
                 + (f"  ({diverged} diverged)" if diverged else ""))
  if exact:
    lines.append(results.EXACT_NOTE)
  return "\n".join(lines)


def _plain_table(rows: list[dict], metric: str, statistic: str, interval_name: str) -> str:
  """`table` of one statistic of `metric` (the mean with its CI)."""
  chosen = [r for r in rows if r["metric"] == metric and r["statistic"] == statistic]
  if not chosen:
    return "(no rows)"
  tags = [k for k in chosen[0] if k not in ("point", "metric", "statistic", "value")]
  has_interval = {r["point"] for r in rows if r["metric"] == metric
                  and r["statistic"] == "mean_ci_low"}
  intervals = mean_intervals(rows, metric)
  percent = _is_percent(metric, statistic)
  scale, digits = (100.0, 2) if percent else (1.0, 4)
  with_ci = statistic == "mean"
  lines = ["  ".join(f"{t:>16}" for t in tags) + f"  {metric} {statistic}"
           + (" (%)" if percent else "")
           + ((f" [{interval_name or '95% CI'}]" if has_interval else " ± CI95") if with_ci
              else "")]
  def stat(name, statistic_):
    return {r["point"]: float(r["value"]) for r in rows
            if r["metric"] == name and r["statistic"] == statistic_}

  # A statistic over fewer draws than the point ran says so: how many draws it covers, and how
  # many diverged (left out of accuracies) or were undefined.
  counts, undefined = stat(metric, "count"), stat(metric, "undefined")
  diverged, identical = stat("diverged", "count"), stat(metric, "identical")
  for r in chosen:
    value = f"{scale * float(r['value']):.{digits}f}"
    if with_ci and identical.get(r["point"]):
      value += f" {results.EXACT_MARK}"
    elif with_ci:
      lo, hi = intervals.get(r["point"], (float("nan"), float("nan")))
      value += (f" [{scale * lo:.{digits}f}, {scale * hi:.{digits}f}]"
                if r["point"] in has_interval else f" ± {scale * (hi - lo) / 2:.{digits}f}")
    p = r["point"]
    left_out = undefined.get(p, 0.0)
    if left_out > 0 or diverged.get(p, 0.0) > 0:
      value += (f"  (over {int(counts.get(p, 0))} of {int(counts.get(p, 0) + left_out)} draws; "
                f"{int(diverged.get(p, 0))} diverged)")
    lines.append("  ".join(f"{str(r[t]):>16}" for t in tags) + f"  {value}")
  if with_ci and any(identical.get(r["point"]) for r in chosen):
    lines.append(results.EXACT_NOTE)
  return "\n".join(lines)


def tag_value(v):
  """A tag's value as a float where it reads as one (grid values sort as numbers), else as
  it is."""
  try:
    return float(v)
  except (TypeError, ValueError):
    return v


def caption_path(path: str) -> str:
  """The caption file of a figure: `<figure>.txt` beside `<figure>.png`."""
  return os.path.splitext(path)[0] + ".txt"


def save_figure(fig, path: str, title: str, subtitle: str = "", *, dpi: int = 120) -> str:
  """Titles `fig` with the short `title` (wrapped to the figure's width), lays it out with the
  title inside, writes `path`, and writes the details, `subtitle` (what was run, how to read the
  figure), to its caption file `caption_path(path)` (the title first) rather than into the
  figure; closes the figure and returns `path`."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  width = int(12.5 * fig.get_size_inches()[0])  # characters per line at fontsize 9
  fig.suptitle(textwrap.fill(title, width), fontsize=9)
  fig.tight_layout()
  # A figure-level legend (below the panels, `_figure_legend`) is kept inside the saved image.
  fig.savefig(path, dpi=dpi, bbox_inches="tight" if fig.legends else None)
  plt.close(fig)
  with open(caption_path(path), "w", encoding="utf-8") as fh:
    fh.write("\n\n".join(textwrap.fill(t, 100) for t in (title, subtitle) if t) + "\n")
  return path


def _figure_saver(workdir: str, subtitle: str, paths: list[str]):
  """`save(fig, name, title, details)`: `save_figure` to `workdir/name`, its caption the
  `details` (how to read it) then `subtitle` (what was run); the path appended to `paths`."""
  def save(fig, name, title, details=""):
    caption = "\n\n".join(t for t in (details, f"What was run: {subtitle}" if subtitle else "")
                          if t)
    paths.append(save_figure(fig, os.path.join(workdir, name), title, caption))
  return save


def worst_case_label(criterion: str, metric: str) -> str:
  """How a figure of `metric` names its worst-case points: the worst case of `criterion` where the
  search maximized that quantity (worst_case.matches; for an accuracy, minimized it), else the
  set it is, saying it is no extremum of `metric`."""
  name = worst_case.short_name(criterion)
  if worst_case.matches(criterion, metric):
    return name
  return (f"set of the {name}: not a {'minimum' if 'accuracy' in metric else 'maximum'} of "
          f"{metric}")


def _set_grid_ticks(ax, xs: Sequence[Any]) -> None:
  """x ticks at the grid's own values (a single value centred, not a 0.19 … 0.21 range)."""
  ax.set_xticks(list(range(len(xs))), [f"{v:g}" if isinstance(v, float) else str(v)
                                       for v in xs])
  ax.set_xlim(-0.5, len(xs) - 0.5)


def _spans_orders(values) -> bool:
  """Whether positive `values` span more than an order of magnitude (a log axis then: on a
  linear one the smaller values would read as 0)."""
  v = np.asarray([x for x in values if np.isfinite(x)], np.float64)
  return bool(v.size >= 2 and np.all(v > 0) and v.max() / v.min() > 10)


def _style_colors(styles: Sequence[str], worst_label: str) -> dict[str, str]:
  return {st: f"C{i}" for i, st in enumerate(st for st in styles if st != worst_label)}


def _dodge(styles: Sequence[str], worst_label: str) -> dict[str, float]:
  """A small horizontal offset per μ_H, so that lines at the same grid value do not hide each
  other (the worst case at the grid value itself)."""
  others = [st for st in styles if st != worst_label]
  return {worst_label: 0.0, **{st: 0.08 * (j - (len(others) - 1) / 2)
                               for j, st in enumerate(others)}}


def _worst_artist(label: str):
  from matplotlib.lines import Line2D  # pylint: disable=g-import-not-at-top
  return Line2D([], [], color="black", linestyle=":", marker="X", markersize=8, label=label)


def _figure_legend(fig, handles, columns: int) -> None:
  """One legend for every panel, below them (save_figure keeps it in the image)."""
  fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0),
             ncol=min(len(handles), columns), fontsize=7, frameon=False)


def plot(rows: list[dict], workdir: str, *, x: str, series: str, style: str,
         metric: str = "honest_accuracy", worst_label: str = "worst_case",
         worst_criterion: str = "final_loss", subtitle: str = "",
         log: Callable[[str], None] = print) -> list[str]:
  """The sweep's figures of `metric`, each with a one-line title and its details in a caption
  file beside it (`save_figure`; `subtitle`: what was run, e.g. from `describe`); x ticks at the
  grid's values of tag `x`, a log axis where the values span orders of magnitude:
  - `expected_vs_worst.png`: a panel per `series` (the aggregator); E[metric | b = f] (solid,
    95% CI bars) and E[metric | b ≤ f] (dashed) per `style` (μ_H) against `x`, beside the
    `worst_label` points (b = f in every draw: n − f honest), named by `worst_case_label`
    (`worst_criterion`: what their search maximized); under each panel P(b > f) per μ_H;
  - `expected_unconditioned.png`: E[metric] over all draws (solid) and E[metric | b > f]
    (dotted) per μ_H: the laws' unconditioned means, with no worst case (its b is f);
  - `distributions.png`: the per-draw final metric at the largest `x`: boxes over the draws with
    b ≤ f (quartiles, whiskers 5–95%), the draws with b > f as red crosses, a panel per style;
  - `correlation.png`: at each `x`, the unconditioned E[metric] (± 95% CI) per series under each
    non-worst-case style;
  - `by_count.png`: E[metric | b] against the realized b at the largest `x`, the declared f
    marked.
  A point whose `points/<id>.npz` is missing or unreadable is left out of `distributions.png`
  with a warning through `log`."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from matplotlib.lines import Line2D  # pylint: disable=g-import-not-at-top

  points = _by_point(rows)
  tags = {p: e for p, e in points.items() if (metric, "mean") in e}
  if not tags or any(t not in next(iter(tags.values())) for t in (x, series, style)):
    return []
  percent = _is_percent(metric)
  scale, unit = (100.0, " (%)") if percent else (1.0, "")
  xs = sorted({tag_value(t[x]) for t in tags.values()},
              key=lambda v: (isinstance(v, str), v))
  at = {v: i for i, v in enumerate(xs)}  # grid value -> tick position
  series_values = list(dict.fromkeys(t[series] for t in tags.values()))
  styles = list(dict.fromkeys(t[style] for t in tags.values()))
  expected_styles = [st for st in styles if st != worst_label]
  colors = _style_colors(styles, worst_label)
  has_worst = worst_label in styles
  worst_name = worst_case_label(worst_criterion, metric)
  paths = []
  save = _figure_saver(workdir, subtitle, paths)

  def estimate(pid, name):
    """(value, lower error, upper error) of E[name] at a point, scaled; NaN where undefined."""
    e = tags[pid]
    mean = float(e.get((name, "mean"), np.nan))
    lo, hi = mean_intervals(rows, name).get(pid, (np.nan, np.nan)) if (name, "mean") in e \
        else (np.nan, np.nan)
    if not e.get((name, "count"), 1):
      mean = np.nan
    errs = ((max(mean - lo, 0.0), max(hi - mean, 0.0)) if np.isfinite(lo + hi + mean)
            else (np.nan, np.nan))
    return scale * mean, scale * errs[0], scale * errs[1]

  dodge = _dodge(styles, worst_label)

  def curve(s, st, name):
    pts = sorted((at[tag_value(t[x])], p) for p, t in tags.items()
                 if t[series] == s and t[style] == st)
    values = [estimate(p, name) for _, p in pts]
    return ([i + dodge[st] for i, _ in pts], [v[0] for v in values],
            np.array([[v[1] for v in values], [v[2] for v in values]]))

  def panels(height):
    cols = min(len(series_values), 3)
    nrows = -(-len(series_values) // cols)
    return cols, nrows, (max(8.0, 4.2 * cols), height * nrows + 1.6)

  # ---- expected_vs_worst.png: at the worst case's b.
  eq, le, gt = (f"{metric}_given_b_{c}" for c in ("eq_f", "le_f", "gt_f"))
  if any((eq, "mean") in e for e in tags.values()):
    cols, nrows, size = panels(4.2)
    fig, axes = plt.subplots(2 * nrows, cols, figsize=size, squeeze=False, sharex=True,
                             gridspec_kw={"height_ratios": [3, 1] * nrows})
    drawn = []
    for k, s in enumerate(series_values):
      ax, pax = axes[2 * (k // cols), k % cols], axes[2 * (k // cols) + 1, k % cols]
      for st in styles:
        if st == worst_label:
          # Its bars: the CI over its draws where they differ (stochastic training), none where
          # they are copies of one run.
          pos, val, err = curve(s, st, eq)
          ax.errorbar(pos, val, yerr=np.nan_to_num(err), color="black", linestyle=":",
                      marker="X", markersize=8, capsize=3)
          drawn += val
          continue
        pos, val, err = curve(s, st, eq)
        ax.errorbar(pos, val, yerr=err, color=colors[st], marker="o", capsize=3)
        pos_le, val_le, _ = curve(s, st, le)
        ax.plot(pos_le, val_le, color=colors[st], linestyle="--", marker="s", markersize=4,
                alpha=0.8)
        drawn += val + val_le
        p_gt = [float(tags[p].get(("byzantine_count", "p_exceeds_f"), np.nan))
                for _, p in sorted((at[tag_value(t[x])], p) for p, t in tags.items()
                                   if t[series] == s and t[style] == st)]
        pax.plot(pos, p_gt, color=colors[st], marker="o", markersize=4)
      ax.set_title(f"{series}={s}", fontsize=9)
      ax.set_ylabel(f"{metric}{unit}", fontsize=8)
      ax.grid(alpha=0.3, which="both")
      pax.set_ylim(-0.05, 1.05)
      pax.set_ylabel("P(b > f)", fontsize=8)
      pax.set_xlabel(x)
      pax.grid(alpha=0.3)
      _set_grid_ticks(pax, xs)
      pax.tick_params(labelbottom=True)  # every panel's grid values, not the last row's only
    if _spans_orders(drawn):
      for ax in axes[0::2].flat:
        ax.set_yscale("log")
    for k in range(len(series_values), nrows * cols):
      axes[2 * (k // cols), k % cols].set_visible(False)
      axes[2 * (k // cols) + 1, k % cols].set_visible(False)
    handles = [Line2D([], [], color=colors[st], marker="o", label=f"{style}={st}")
               for st in expected_styles]
    handles += [Line2D([], [], color="grey", marker="o", label="E[· | b = f] (bars: 95% CI)"),
                Line2D([], [], color="grey", linestyle="--", marker="s", markersize=4,
                       label="E[· | b ≤ f]")]
    if has_worst:
      handles.append(_worst_artist(f"{style}={worst_label}: {worst_name} (b = f)"))
    _figure_legend(fig, handles, 3)
    save(fig, "expected_vs_worst.png",
         f"{metric}: expected under μ_H at b = f and b ≤ f vs the worst case (b = f)",
         _expected_vs_worst_caption(metric, style, worst_label, worst_name, has_worst))
  else:
    log(f"sweep plot: no {eq} rows (points computed before issue 35): expected_vs_worst.png "
        "not drawn (it sets expected against worst case only at the same b)")

  # ---- expected_unconditioned.png: the laws' means over all draws, no worst case.
  if expected_styles:
    cols, nrows, size = panels(3.6)
    fig, axes = plt.subplots(nrows, cols, figsize=size, squeeze=False, sharex=True)
    drawn = []
    for ax, s in zip(axes.flat, series_values):
      for st in expected_styles:
        pos, val, err = curve(s, st, metric)
        ax.errorbar(pos, val, yerr=err, color=colors[st], marker="o", capsize=3)
        pos_gt, val_gt, _ = curve(s, st, gt)
        ax.plot(pos_gt, val_gt, color=colors[st], linestyle=":", marker="v", alpha=0.8)
        drawn += val + val_gt
      ax.set_title(f"{series}={s}", fontsize=9)
      ax.set_xlabel(x)
      ax.set_ylabel(f"{metric}{unit}", fontsize=8)
      ax.grid(alpha=0.3, which="both")
      _set_grid_ticks(ax, xs)
    if _spans_orders(drawn):
      for ax in axes.flat:
        ax.set_yscale("log")
    for ax in axes.flat[len(series_values):]:
      ax.set_visible(False)
    handles = [Line2D([], [], color=colors[st], marker="o", label=f"{style}={st}")
               for st in expected_styles]
    handles += [Line2D([], [], color="grey", marker="o", label="E[·] over all draws"),
                Line2D([], [], color="grey", linestyle=":", marker="v", label="E[· | b > f]")]
    _figure_legend(fig, handles, 4)
    save(fig, "expected_unconditioned.png",
         f"{metric}: unconditioned E[·] under μ_H and E[· | b > f] (no worst case: its b = f)",
         f"Solid (bars: 95% CI of the mean): E[{metric}] over all draws of each μ_H, the "
         f"unconditioned mean, which the draws with b > f (the declared f exceeded) can "
         f"dominate. Dotted: E[{metric} | b > f] over those draws alone. No worst case is drawn: "
         f"it has b = f in every draw; compare it with E[· | b = f] in expected_vs_worst.png.")

  # ---- distributions.png: per draw at the largest x, b ≤ f boxed, b > f as crosses.
  draws = {}
  for pid, t in tags.items():
    if tag_value(t[x]) != xs[-1]:
      continue
    try:
      arrays = store.load_point(store.point_path(workdir, pid))
    except store.NPZ_ERRORS as e:
      log(f"sweep plot: WARNING {store.point_path(workdir, pid)} ({series}={t[series]}, "
          f"{style}={t[style]}) is missing or unreadable ({type(e).__name__}: {e}); "
          "left out of distributions.png")
      continue
    # The final metric per draw, or a theory quantity's per-draw array (theory_error …).
    key = next((k for k in (f"final_{metric}", metric) if k in arrays), None)
    if key is not None:
      f = t.get(("byzantine_count", "declared_f"))
      counts = np.asarray(arrays["num_byzantine"])
      within = np.ones(len(counts), bool) if f is None else counts <= f
      draws[(t[series], t[style])] = (scale * np.asarray(arrays[key], np.float64), within,
                                      counts, pid)
  if draws:
    fig, axes = plt.subplots(1, len(styles), figsize=(max(8, 3.6 * len(styles)), 4.6),
                             sharey=True, squeeze=False)
    shown = []
    for ax, st in zip(axes[0], styles):
      inside, beyond = [], []
      for i, s in enumerate(series_values):
        v, within = draws.get((s, st), (np.array([np.nan]), np.array([True])))[:2]
        inside.append(v[within & ~np.isnan(v)])
        beyond.append(v[~within & ~np.isnan(v)])
        ax.plot(np.full(beyond[-1].size, i + 1.0), beyond[-1], "x", color="C3", markersize=5)
        shown += [*inside[-1], *beyond[-1]]
      ax.boxplot(inside, whis=(5, 95))
      ax.set_xticks(range(1, len(series_values) + 1), series_values, rotation=60, fontsize=7)
      ax.set_title(f"{style}={st}", fontsize=9)
      ax.grid(alpha=0.3, which="both")
    if _spans_orders(shown):
      axes[0][0].set_yscale("log")
    axes[0][0].set_ylabel(f"final {metric} per draw{unit}")
    axes[0][-1].legend(handles=[Line2D([], [], color="C3", marker="x", linestyle="",
                                       label="a draw with b > f")], fontsize=7)
    save(fig, "distributions.png", f"final {metric} per draw of μ_H at {x}={xs[-1]}",
         "Boxes: the draws with b ≤ f (the declared f holds): quartiles and median, whiskers "
         "5–95%, circles single draws beyond them. Red crosses: the draws with b > f, each "
         "drawn apart. A worst-case panel's draws all have b = f.")

  # ---- correlation.png: the unconditioned means at each x (no worst case).
  if expected_styles:
    fig, axes = plt.subplots(1, len(xs), figsize=(max(8, 4.2 * len(xs)), 4.6), sharey=True,
                             squeeze=False)
    width = 0.8 / len(expected_styles)
    shown = []
    for ax, xv in zip(axes[0], xs):
      for j, st in enumerate(expected_styles):
        vals, errs = [], []
        for s in series_values:
          match = [p for p, t in tags.items() if t[series] == s and t[style] == st
                   and tag_value(t[x]) == xv]
          v = estimate(match[0], metric) if match else (np.nan, np.nan, np.nan)
          vals.append(v[0])
          errs.append([0.0 if np.isnan(v[1]) else v[1], 0.0 if np.isnan(v[2]) else v[2]])
        shown += vals
        ax.bar(np.arange(len(series_values)) + j * width, vals, width,
               yerr=np.array(errs, float).T, capsize=2, color=colors[st],
               label=f"{style}={st}")
      ax.set_xticks(np.arange(len(series_values)) + 0.4 - width / 2, series_values,
                    rotation=60, fontsize=7)
      ax.set_title(f"{x}={xv}", fontsize=9)
      ax.grid(alpha=0.3, axis="y", which="both")
    if _spans_orders(shown):
      axes[0][0].set_yscale("log")
    axes[0][0].set_ylabel(f"E[{metric}] over all draws{unit}")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    what = ("same marginal corruption rate, different correlation" if style == "mu_H"
            else f"each {style} at the same {x}")
    save(fig, "correlation.png", f"{what}: E[{metric}] over all draws",
         f"Bars: the unconditioned E[{metric}] over all draws of each μ_H (error bars: 95% CI "
         f"of the mean), per {series}; the laws differ in P(b > f) too (expected_vs_worst.png "
         "gives it, and the means at b = f and b ≤ f).")

  # ---- by_count.png: E[metric | b] against the realized count b, at the largest x.
  by_b = {}
  for r in rows:
    if r["metric"].startswith(f"{metric}|b=") and r["point"] in tags:
      b = int(r["metric"].split("|b=")[1])
      by_b.setdefault(r["point"], {}).setdefault(b, {})[r["statistic"]] = float(r["value"])
  at_x = {p: v for p, v in by_b.items() if tag_value(tags[p][x]) == xs[-1]}
  if not at_x:
    # No E[metric | b] rows (they are tabulated for the loss and accuracy): from the per-draw
    # values read for distributions.png, each b's mean with a normal 95% half-width.
    for v, _, counts, pid in draws.values():
      for b, c in evaluation.by_count(v / scale, counts,
                                      worst="min" if "accuracy" in metric else "max").items():
        at_x.setdefault(pid, {})[b] = c
  if at_x:
    fig, axes = plt.subplots(1, len(styles), figsize=(max(8, 3.8 * len(styles)), 4.2),
                             sharey=True, squeeze=False)
    shown, bs = [], sorted({b for v in at_x.values() for b in v})
    fs = {tags[p].get(("byzantine_count", "declared_f")) for p in at_x} - {None}
    for ax, st in zip(axes[0], styles):
      for i, s in enumerate(series_values):
        match = [p for p in at_x if tags[p][series] == s and tags[p][style] == st]
        if not match:
          continue
        cells = sorted(at_x[match[0]].items())
        ax.errorbar([b for b, _ in cells], [scale * c["mean"] for _, c in cells],
                    yerr=[scale * c.get("ci95", np.nan) for _, c in cells], marker="o",
                    capsize=2, color=f"C{i}", label=f"{series}={s}")
        shown += [scale * c["mean"] for _, c in cells]
        for b, c in cells:
          ax.annotate(f"{int(c.get('count', 0) + c.get('undefined', 0))}",
                      (b, scale * c["mean"]), fontsize=6, textcoords="offset points",
                      xytext=(2, 2))
      for f in fs:
        ax.axvline(f, color="grey", linestyle="--", lw=0.8)
      ax.set_xticks(bs)
      ax.set_title(f"{style}={st}", fontsize=9)
      ax.set_xlabel("realized number of Byzantine clients b")
      ax.grid(alpha=0.3, which="both")
    if _spans_orders(shown):
      axes[0][0].set_yscale("log")
    axes[0][0].set_ylabel(f"E[{metric} | b]{unit}")
    next((ax for ax in axes[0] if ax.get_legend_handles_labels()[0]), axes[0][0]).legend(
        fontsize=6)
    save(fig, "by_count.png", f"E[{metric} | b] per realized Byzantine count b, {x}={xs[-1]}",
         "Error bars: 95% CI over the draws with that b (none with one draw, or with identical "
         "draws); numbers: the draws at each b; dashed: the declared f.")
  return paths


def _expected_vs_worst_caption(metric: str, style: str, worst_label: str, worst_name: str,
                               has_worst: bool) -> str:
  return (
      f"Solid (bars: 95% CI of the mean; none where the draws are identical): E[{metric} | "
      f"b = f] under each μ_H, over its draws whose realized number of Byzantine clients b "
      f"equals the declared f, the b of the worst case (n − f honest). Dashed: E[{metric} | "
      f"b ≤ f], the declared f holding. Lower panels: P(b > f) under each μ_H, the mass these "
      f"conditional means leave out; E[{metric}] over all draws and given b > f are in "
      f"expected_unconditioned.png (never set against the worst case, whose b is f)."
      + (f" Black crosses ({style}={worst_label}): the {worst_name}, one honest set with b = f "
         "repeated over the draws (bars: the 95% CI of its mean where the draws differ, e.g. "
         "random buckets or minibatches; none where they are copies of one run)."
         if has_worst else ""))


def _by_point(rows: list[dict]) -> dict[str, dict]:
  """point -> {tags..., (metric, statistic): value}."""
  out = {}
  for r in rows:
    entry = out.setdefault(r["point"], {k: v for k, v in r.items()
                                        if k not in ("point", "metric", "statistic", "value")})
    entry[(r["metric"], r["statistic"])] = r["value"]
  return out


def theory_table(rows: list[dict]) -> str:
  """One line per point with theory rows: its tags, κ (published bound, the attack's ratio),
  E[G²], E[B²], P(invalid), E[bound | valid], E[measured error | valid]; the measured error
  where a worst case can be set beside it: P(b > f), E[error | b = f] (the worst case's b) and
  E[error | b ≤ f]; apart, E[error] over all draws (unconditioned); tightness (median and 90%
  quantile of bound/measured over valid draws), the median of the Byzantine term κG²/(1 − κB²)
  over what it is compared with (`κ-term/excess`: the excess of the error over the honest-only
  run's, or `κ-term/err`), violations (valid draws whose bound is below the measured error: a
  finding) and the median bound/measured of the data-dependent bound (κ = max(attack's ratio,
  f/(n − 2f))); '' if none."""
  points = {p: e for p, e in _by_point(rows).items() if ("theory", "p_invalid") in e}
  if not points:
    return ""
  tags = [k for k in next(iter(points.values())) if isinstance(k, str)]
  # The Byzantine term κG²/(1 − κB²) is divided by the excess over the honest-only run where the
  # points have one (non-convex), else by the error (theory.report.per_draw's `compared`).
  compared = ("excess" if any(np.isfinite(e.get(("theory_excess", "mean"), np.nan))
                              for e in points.values()) else "err")
  cols = [("κ bound", ("theory_kappa", "upper")), ("atk ratio", ("theory_kappa", "attack_ratio")),
          ("E[G²]", ("theory_g2", "mean")), ("E[B²]", ("theory_b2", "mean")),
          ("P(inv)", ("theory", "p_invalid")), ("E[bnd|val]", ("theory_bound", "mean")),
          ("E[err|val]", ("theory_error_given_valid", "mean")),
          ("P(b>f)", ("byzantine_count", "p_exceeds_f")),
          ("E[err|b=f]", ("theory_error_given_b_eq_f", "mean")),
          ("E[err|b≤f]", ("theory_error_given_b_le_f", "mean")),
          ("E[err] all b", ("theory_error", "mean")),
          ("bnd/err q50", ("theory_tightness", "q50")),
          ("bnd/err q90", ("theory_tightness", "q90")),
          (f"κ-term/{compared}", ("theory_byzantine_ratio", "q50")),
          ("viol", ("theory", "violations")), ("dd bnd/err", ("theory_tightness_plugin", "q50"))]
  lines = ["  ".join(f"{t:>16}" for t in tags) + "  " + "  ".join(f"{c:>12}" for c, _ in cols)]
  for e in points.values():
    cells = []
    for _, key in cols:
      v = e.get(key, float("nan"))
      cells.append(f"{'n/a' if v is None or (isinstance(v, float) and np.isnan(v)) else f'{v:.3g}':>12}")
    lines.append("  ".join(f"{str(e[t]):>16}" for t in tags) + "  " + "  ".join(cells))
  return "\n".join(lines)


def plot_theory(rows: list[dict], workdir: str, *, x: str, series: str, style: str,
                worst_label: str = "worst_case", worst_criterion: str = "final_loss",
                subtitle: str = "", log: Callable[[str], None] = print) -> list[str]:
  """Two PNGs of the theory beside the measurement, each with a one-line title and a caption
  file (`save_figure`); x ticks at the grid's values of tag `x`:
  - `theory_vs_experiment.png`: a column per `series` (the rule). Top: over μ_H (each non-worst
    `style`), the measured E[error | valid] (solid) and the predicted E[bound | valid] (dashed,
    same colour): the bound's tightness in expectation. Bottom: at the worst case's b, the
    measured E[error | b = f] per μ_H beside the error and the bound at the `worst_label` set
    (black), named by `worst_case_label` of `worst_criterion` for the theory's error (a set
    searched by another criterion is said to be no maximum of it);
  - `tightness.png`: histograms of per-draw tightness bound/measured (valid draws, all points of
    a rule pooled; log scale), with the published κ and with the data-dependent κ, a panel per
    rule.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from matplotlib.lines import Line2D  # pylint: disable=g-import-not-at-top

  points = {p: e for p, e in _by_point(rows).items() if ("theory", "p_invalid") in e}
  if not points or any(t not in next(iter(points.values())) for t in (x, series, style)):
    return []
  series_values = list(dict.fromkeys(e[series] for e in points.values()))
  styles = list(dict.fromkeys(e[style] for e in points.values()))
  colors = _style_colors(styles, worst_label)
  xs = sorted({tag_value(e[x]) for e in points.values()}, key=lambda v: (isinstance(v, str), v))
  at = {v: i for i, v in enumerate(xs)}
  worst_name = worst_case_label(worst_criterion, "theory_error")
  paths = []
  save = _figure_saver(workdir, subtitle, paths)

  dodge = _dodge(styles, worst_label)

  def curve(s, st, key):
    pts = sorted(((at[tag_value(e[x])], e) for e in points.values()
                  if e[series] == s and e[style] == st), key=lambda pe: pe[0])
    return [i + dodge[st] for i, _ in pts], [float(e.get(key, np.nan)) for _, e in pts]

  fig, axes = plt.subplots(2, len(series_values), figsize=(max(8, 4.2 * len(series_values)), 7.4),
                           squeeze=False, sharex=True)
  plugin_used, drawn = False, [[], []]
  for k, s in enumerate(series_values):
    top, bottom = axes[0, k], axes[1, k]
    for st in styles:
      pts = [e for e in points.values() if e[series] == s and e[style] == st]
      # The bound with the published κ where the rule has one, else the data-dependent bound;
      # the measured error on the same (valid) draws.
      plugin = all(np.isnan(e.get(("theory_bound", "mean"), np.nan)) for e in pts)
      plugin_used |= plugin
      suffix = "_plugin" if plugin else ""
      pos, measured = curve(s, st, (f"theory_error_given_valid{suffix}", "mean"))
      _, bound = curve(s, st, (f"theory_bound{suffix}", "mean"))
      if st == worst_label:
        bottom.plot(pos, measured, color="black", linestyle=":", marker="X", markersize=8)
        bottom.plot(pos, bound, color="black", linestyle="--", marker="+", markersize=9)
        drawn[1] += measured + bound
        continue
      top.plot(pos, measured, "-o", color=colors[st])
      top.plot(pos, bound, "--s", color=colors[st], markersize=4)
      _, at_f = curve(s, st, ("theory_error_given_b_eq_f", "mean"))
      bottom.plot(pos, at_f, "-o", color=colors[st])
      drawn[0] += measured + bound
      drawn[1] += at_f
    top.set_title(f"{series}={s}", fontsize=9)
    bottom.set_xlabel(x)
    _set_grid_ticks(bottom, xs)
    for ax in (top, bottom):
      ax.grid(alpha=0.3, which="both")
  for row, values in zip(axes, drawn):
    if _spans_orders(values):
      for ax in row:
        ax.set_yscale("log")
  axes[0, 0].set_ylabel("over μ_H, valid draws", fontsize=8)
  axes[1, 0].set_ylabel("at b = f", fontsize=8)
  expected = [st for st in styles if st != worst_label]
  handles = [Line2D([], [], color=colors[st], marker="o", label=f"{style}={st}")
             for st in expected]
  handles += [Line2D([], [], color="grey", marker="o", label="measured error (mean)"),
              Line2D([], [], color="grey", linestyle="--", marker="s", markersize=4,
                     label="bound (mean)")]
  if worst_label in styles:
    handles += [_worst_artist(f"error at the {worst_name}"),
                Line2D([], [], color="black", linestyle="--", marker="+", markersize=9,
                       label="bound at that set")]
  _figure_legend(fig, handles, 4)
  save(fig, "theory_vs_experiment.png",
       "theory's error: measured vs the robust D-GD bound (top), expected vs worst case at b = f "
       "(bottom)",
       "Top, over the valid draws of each μ_H (b ≤ f, κB² < 1, step ≤ 1/L): the measured error "
       "(solid; L_S(θ_T) − L_S* on convex tasks, else the mean ‖∇L_S‖² after the burn-in) and "
       "the bound (dashed), both means over those draws"
       + (", the bound with the published κ, or the data-dependent κ where a rule has none" if
          plugin_used else ", the bound with the published κ")
       + ". Bottom, at the declared f: E[error | b = f] of each μ_H over its draws with b = f "
       "(solid)"
       + (f", beside the error (black crosses) and the bound (black +) at the {worst_name}, "
          "one honest set with b = f." if worst_label in styles else ".")
       + " P(b > f) and E[error] over all draws: the sweep's theory table.")

  fig, axes = plt.subplots(1, len(series_values), figsize=(max(8, 4.4 * len(series_values)), 4),
                           squeeze=False)
  for ax, s in zip(axes[0], series_values):
    ratios = {"theory_tightness": [], "theory_tightness_plugin": []}
    for pid, e in points.items():
      if e[series] != s:
        continue
      try:
        arrays = store.load_point(store.point_path(workdir, pid))
      except store.NPZ_ERRORS as err:
        log(f"sweep plot: WARNING {store.point_path(workdir, pid)} unreadable "
            f"({type(err).__name__}); left out of tightness.png")
        continue
      for key, parts in ratios.items():
        if key in arrays:
          parts.append(arrays[key])
    counts = []
    for (key, parts), color, label in zip(ratios.items(), ("C0", "C1"),
                                          ("published κ", "data-dependent κ")):
      values = np.concatenate(parts) if parts else np.array([])
      values = values[np.isfinite(values)]  # undefined (NaN) where not valid or error ≤ 0
      counts.append(values.size)
      if values.size:
        ax.hist(values, bins=np.geomspace(values.min(), values.max() * 1.0001, 30), color=color,
                alpha=0.6, label=f"{label}: median {np.median(values):.3g}")
    ax.set_xscale("log")
    ax.axvline(1.0, color="red", lw=1, label="bound = measured")
    ax.legend(fontsize=6)
    ax.set_title(f"{s}\n({counts[0]} / {counts[1]} valid draws)", fontsize=8)
    ax.set_xlabel("bound / measured (per draw)")
  save(fig, "tightness.png", "tightness of the robust D-GD bound per draw",
       "Histograms of bound / measured error per valid draw, every point of a rule pooled (log "
       "scale); below 1 (red line) a bound would be violated. Title counts: valid draws with the "
       "published κ / with the data-dependent κ.")
  return paths
