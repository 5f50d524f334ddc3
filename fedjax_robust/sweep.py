"""Resumable Monte Carlo sweeps: many experiment points, one vmapped batch of S draws each.

A sweep is a base configuration and a list of points; a point is a set of overrides (dotted keys
of the base config) and tags (labels for tables and plots). Build grids with `axis` and
`product`. Each point runs one aggregator on S draws of μ_H; its statistics are appended to
`workdir/results.csv` (one row per point × metric × statistic; the file is rewritten atomically
after every point) and its per-draw values to `workdir/points/<id>.npz`. A rerun with the same
workdir skips the points already in the table, so an interrupted sweep loses at most the point
in progress. Points that differ only in μ_H, the seed or the number of draws reuse the compiled
program of an earlier point (`experiment.simulator_cache`).
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import os
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from fedjax_robust import config as config_lib
from fedjax_robust import evaluation
from fedjax_robust import experiment
from fedjax_robust import results

STATISTICS = ("mean", "ci95", "std", "q05", "q25", "q50", "q75", "q95", "worst", "cvar50",
              "cvar90", "count", "undefined")


@dataclasses.dataclass(frozen=True)
class Point:
  tags: Mapping[str, Any]
  overrides: Mapping[str, Any]


def axis(name: str, values: Sequence[Any], key: str | None = None) -> list[Point]:
  """One point per value, tagged `name=value` and setting config key `key` (default `name`)."""
  return [Point({name: v}, {key or name: v}) for v in values]


def product(*axes: Sequence[Point]) -> list[Point]:
  """The cartesian product of axes; tags and overrides of the combined points are merged."""
  points = []
  for combo in itertools.product(*axes):
    tags, overrides = {}, {}
    for p in combo:
      tags.update(p.tags)
      overrides.update(p.overrides)
    points.append(Point(tags, overrides))
  return points


def apply_overrides(base, overrides: Mapping[str, Any]):
  """A copy of `base` with dotted keys set; an unknown key is an error naming it."""
  config = base.copy_and_resolve_references()
  for dotted, value in overrides.items():
    *path, leaf = dotted.split(".")
    node = config
    for part in path:
      if part not in node:
        raise ValueError(f"sweep override {dotted!r}: config key {part!r} does not exist.")
      node = node[part]
    if leaf not in node:
      raise ValueError(f"sweep override {dotted!r}: config key {leaf!r} does not exist; allowed "
                       f"here: {', '.join(sorted(node.keys()))}.")
    with node.unlocked():
      node[leaf] = value
  return config


def point_id(config) -> str:
  return experiment.fingerprint(config)


def _rows(pid: str, tags: Mapping[str, Any], summary: dict) -> list[dict]:
  s = summary["aggregators"][summary["config"]["aggregator"]]
  rows = []
  for metric in ("honest_loss", "honest_accuracy", "test_accuracy", "honest_accuracy_given_b_le_f",
                 "honest_accuracy_given_b_gt_f", "honest_excess_loss", "backdoor_accuracy"):
    if metric in s:
      rows += [{"point": pid, **tags, "metric": metric, "statistic": stat, "value": s[metric][stat]}
               for stat in STATISTICS]
  law = summary["byzantine_count"]
  rows += [{"point": pid, **tags, "metric": "byzantine_count", "statistic": k, "value": law[k]}
           for k in ("mean", "p_exceeds_f", "p_no_honest_majority")]
  rows += [{"point": pid, **tags, "metric": "seconds", "statistic": k, "value": s[k]}
           for k in ("compile_seconds", "run_seconds")]
  return rows


def read_results(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path, newline="") as fh:
    return [{**r, "value": float(r["value"])} for r in csv.DictReader(fh)]


def _write_results(path: str, rows: list[dict]) -> None:
  fields = ["point"] + sorted({k for r in rows for k in r} - {"point", "metric", "statistic",
                                                              "value"}) + ["metric", "statistic",
                                                                            "value"]
  with open(path + ".tmp", "w", newline="") as fh:
    writer = csv.DictWriter(fh, fieldnames=fields, restval="")
    writer.writeheader()
    writer.writerows(rows)
  os.replace(path + ".tmp", path)


def run(base, points: Sequence[Point], workdir: str, *,
        log: Callable[[str], None] = print, stop_after: int | None = None) -> list[dict]:
  """Runs every point not yet in `workdir/results.csv`; returns all rows. `stop_after` ends the
  sweep after that many new points (to test resumption)."""
  os.makedirs(os.path.join(workdir, "points"), exist_ok=True)
  path = os.path.join(workdir, "results.csv")
  configs = [apply_overrides(base, p.overrides) for p in points]
  for c, p in zip(configs, points):  # every point valid before any long work starts
    if "," in c.aggregator:
      raise ValueError(f"a sweep point runs one aggregator; point {dict(p.tags)} has "
                       f"{c.aggregator!r}. Make the aggregator an axis.")
    config_lib.validate(c)
  rows = read_results(path)
  done = {r["point"] for r in rows}
  todo = [(c, p) for c, p in zip(configs, points) if point_id(c) not in done]
  log(f"sweep: {len(points)} points, {len(points) - len(todo)} already done, {len(todo)} to run")
  start = time.perf_counter()
  for i, (config, point) in enumerate(todo[:stop_after]):
    pid = point_id(config)
    t0 = time.perf_counter()
    exp = experiment.run(config, log=lambda _: None)
    summary = results.summarize(exp)
    rows += _rows(pid, point.tags, summary)
    _write_results(path, rows)
    run_ = exp.runs[config.aggregator]
    counts = evaluation.byzantine_counts(exp.masks[config.aggregator])
    np.savez(os.path.join(workdir, "points", pid + ".npz"), tags=json.dumps(dict(point.tags)),
             num_byzantine=counts,
             **{f"final_{k}": v[-1] for k, v in run_.metrics.items()})
    elapsed = time.perf_counter() - start
    acc = summary["aggregators"][config.aggregator]["honest_accuracy"]["mean"]
    eta = elapsed / (i + 1) * (len(todo) - i - 1)
    log(f"[{len(points) - len(todo) + i + 1}/{len(points)}] "
        f"{' '.join(f'{k}={v}' for k, v in point.tags.items())}: E[honest acc] "
        f"{100 * acc:.2f}% in {time.perf_counter() - t0:.1f} s; ETA {eta / 60:.1f} min")
  return rows


def table(rows: list[dict], metric: str = "honest_accuracy", statistic: str = "mean") -> str:
  """One line per point: its tags and `metric`'s `statistic`."""
  chosen = [r for r in rows if r["metric"] == metric and r["statistic"] == statistic]
  if not chosen:
    return "(no rows)"
  tags = [k for k in chosen[0] if k not in ("point", "metric", "statistic", "value")]
  ci = {r["point"]: r["value"] for r in rows if r["metric"] == metric and r["statistic"] == "ci95"}
  lines = ["  ".join(f"{t:>16}" for t in tags) + f"  {metric} {statistic} ± CI95"]
  for r in chosen:
    lines.append("  ".join(f"{str(r[t]):>16}" for t in tags)
                 + f"  {float(r['value']):.4f} ± {float(ci.get(r['point'], 'nan')):.4f}")
  return "\n".join(lines)


def _float(v):
  try:
    return float(v)
  except (TypeError, ValueError):
    return v


def plot(rows: list[dict], workdir: str, *, x: str, series: str, style: str,
         metric: str = "honest_accuracy", worst_label: str = "worst_case") -> list[str]:
  """Three PNGs from the sweep's results:
  - `expected_vs_worst.png`: E[metric] (± 95% CI) against tag `x`, a colour per `series` (the
    aggregator), a line style per `style` (μ_H; the worst case dashed black-edged);
  - `distributions.png`: the per-draw final metric at the largest `x`, a box per series, a panel
    per style;
  - `correlation.png`: at each `x`, E[metric] per series under each non-worst-case style (the
    effect of correlated corruption at the same marginal rate).
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  mean = {r["point"]: float(r["value"]) for r in rows
          if r["metric"] == metric and r["statistic"] == "mean"}
  ci = {r["point"]: float(r["value"]) for r in rows
        if r["metric"] == metric and r["statistic"] == "ci95"}
  tags = {r["point"]: r for r in rows if r["metric"] == metric and r["statistic"] == "mean"}
  if not tags or any(t not in next(iter(tags.values())) for t in (x, series, style)):
    return []
  xs = sorted({_float(t[x]) for t in tags.values()})
  series_values = list(dict.fromkeys(t[series] for t in tags.values()))
  styles = list(dict.fromkeys(t[style] for t in tags.values()))
  colors = {s: f"C{i}" for i, s in enumerate(series_values)}
  linestyles = dict(zip(styles, ["-", "--", ":", "-.", (0, (5, 1)), (0, (1, 3))]))
  paths = []

  fig, ax = plt.subplots(figsize=(9, 5.5))
  for s in series_values:
    for st in styles:
      pts = sorted((_float(t[x]), p) for p, t in tags.items() if t[series] == s and t[style] == st)
      if pts:
        ax.errorbar([v for v, _ in pts], [100 * mean[p] for _, p in pts],
                    yerr=[100 * ci[p] for _, p in pts], color=colors[s], linestyle=linestyles[st],
                    marker="o" if st != worst_label else "x", capsize=3,
                    label=f"{s} / {st}")
  ax.set(xlabel=x, ylabel=f"{metric} (%)", title=f"expected (over μ_H) vs worst case: {metric}")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  paths.append(os.path.join(workdir, "expected_vs_worst.png"))
  fig.savefig(paths[-1], dpi=120)
  plt.close(fig)

  draws = {}
  for name in os.listdir(os.path.join(workdir, "points")):
    with np.load(os.path.join(workdir, "points", name)) as z:
      t = json.loads(str(z["tags"]))
      if x in t and _float(t[x]) == xs[-1] and f"final_{metric}" in z.files:
        draws[(t[series], t[style])] = 100 * z[f"final_{metric}"]
  if draws:
    fig, axes = plt.subplots(1, len(styles), figsize=(4 * len(styles), 4.5), sharey=True,
                             squeeze=False)
    for ax, st in zip(axes[0], styles):
      data = [draws.get((s, st), np.array([np.nan])) for s in series_values]
      ax.boxplot([d[~np.isnan(d)] for d in data], whis=(5, 95))
      ax.set_xticks(range(1, len(series_values) + 1), series_values, rotation=60, fontsize=7)
      ax.set_title(f"{style}={st}, {x}={xs[-1]}", fontsize=9)
      ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"final {metric} per draw (%)")
    fig.tight_layout()
    paths.append(os.path.join(workdir, "distributions.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

  expected_styles = [st for st in styles if st != worst_label]
  fig, axes = plt.subplots(1, len(xs), figsize=(4.5 * len(xs), 4.5), sharey=True, squeeze=False)
  width = 0.8 / max(1, len(expected_styles))
  for ax, xv in zip(axes[0], xs):
    for j, st in enumerate(expected_styles):
      vals, errs = [], []
      for s in series_values:
        match = [p for p, t in tags.items() if t[series] == s and t[style] == st
                 and _float(t[x]) == xv]
        vals.append(100 * mean[match[0]] if match else np.nan)
        errs.append(100 * ci[match[0]] if match else 0)
      ax.bar(np.arange(len(series_values)) + j * width, vals, width, yerr=errs, capsize=2,
             label=st)
    ax.set_xticks(np.arange(len(series_values)) + 0.4 - width / 2, series_values, rotation=60,
                  fontsize=7)
    ax.set_title(f"{x}={xv}", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
  axes[0][0].set_ylabel(f"E[{metric}] (%)")
  axes[0][-1].legend(fontsize=7)
  fig.suptitle("same marginal corruption rate, different correlation", fontsize=10)
  fig.tight_layout()
  paths.append(os.path.join(workdir, "correlation.png"))
  fig.savefig(paths[-1], dpi=120)
  plt.close(fig)
  return paths
