"""Resumable Monte Carlo sweeps: many experiment points, one vmapped batch of S draws each.

A sweep is a base configuration and a list of points; a point is a set of overrides (dotted keys
of the base config) and tags (labels for tables and plots). Build grids with `axis` and
`product`; `as_list` turns a grid axis given on the command line as one comma-separated string
(`--config.grid.aggregators=mean,trimmed_mean`) into its values. Each point runs one aggregator
on S draws of μ_H (`run`). Its files (`fedjax_robust.store`, which reads and writes them), in
the order they are written:
- `workdir/points/<id>.json`: its record (`store.load_record`): tags, full resolved config,
  provenance (code version, JAX/jaxlib, backend and devices, seed, draws per chunk) and its rows
  of results.csv: the point id of results.csv resolves to it;
- `workdir/points/<id>.npz`: its per-draw values and provenance (written to a temporary file,
  then renamed); a backdoor run's also its per-evaluation curves (store.CURVE_METRICS);
- `workdir/results.csv`: its statistics (one row per point × metric × statistic; the file is
  rewritten atomically after every point, rows in the order of the sweep's points, integer
  statistics as integers), so the same sweep gives the same file byte for byte however often it
  was interrupted;
- `workdir/timings.csv`: its compile and run seconds (one row per point; kept out of
  results.csv because they differ from run to run).
A rerun with the same workdir skips the points already in results.csv whose npz reads back in
full and whose record reads; a point whose npz or record is missing, truncated or unreadable is
named in the log and recomputed (its stale rows replaced), so an interrupted sweep loses at most
the point in progress; so is a point computed by code declaring other numbers
(`provenance.NUMBERS_VERSION`) or on another JAX/backend (named with both versions). A
results.csv that does not read back in full (cut mid-row) is named and rebuilt from the records
(a record without rows, from older code: its point is recomputed). Reused points carry the
current sweep's tags. Points that differ only in μ_H, the seed or the number of draws reuse
the compiled program of an earlier point (`experiment.simulator_cache`).

The sweep layer (BUILD.md, "Layers") keeps the grid and the runner (the summary's rows of
results.csv: `_rows`, FINAL_METRICS); the files are the store's (`fedjax_robust.store`), the
tables and figures the report's (`fedjax_robust.report.tables`: `table`, `comparison_table`,
`theory_table`, `plot`, `plot_theory`, which set expected against worst case only at the same
realized b). Their public names are re-exported here, the sweep's interface for
`launch/sweep.py`, the configs and the tests.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from fedjax_robust import config as config_lib
from fedjax_robust import errors
from fedjax_robust import evaluation
from fedjax_robust import experiment
from fedjax_robust import provenance
from fedjax_robust import results
from fedjax_robust import sharding
from fedjax_robust import store
from fedjax_robust import worst_case
from fedjax_robust.report import tables

# re-exported: the sweep's public interface (launch/sweep.py, configs/, tests/ call them as
# sweep.<name>); the report layer imports them from store and report.tables, never from here.
from fedjax_robust.store import config_path
from fedjax_robust.store import config_without as _config_without
from fedjax_robust.store import DamagedResults
from fedjax_robust.store import INTERVAL_STATISTICS
from fedjax_robust.store import load_point
from fedjax_robust.store import load_record
from fedjax_robust.store import NPZ_ERRORS
from fedjax_robust.store import PAIRED_STATISTICS
from fedjax_robust.store import point_path
from fedjax_robust.store import read_results
from fedjax_robust.store import read_timings
from fedjax_robust.store import RECORD_ERRORS
from fedjax_robust.store import RESULTS_FIELDS
from fedjax_robust.store import save_point
from fedjax_robust.store import STATISTICS
from fedjax_robust.store import THEORY_DRAWS
from fedjax_robust.store import THEORY_METRICS
from fedjax_robust.store import THEORY_SCALARS
from fedjax_robust.store import TIMING_FIELDS
from fedjax_robust.store import write_table
from fedjax_robust.report.tables import caption_path
from fedjax_robust.report.tables import COMPARISON_FIELDS
from fedjax_robust.report.tables import comparison_table
from fedjax_robust.report.tables import draw_values
from fedjax_robust.report.tables import mean_intervals
from fedjax_robust.report.tables import paired_comparisons
from fedjax_robust.report.tables import plot
from fedjax_robust.report.tables import plot_theory
from fedjax_robust.report.tables import progress_value
from fedjax_robust.report.tables import save_figure
from fedjax_robust.report.tables import table
from fedjax_robust.report.tables import theory_table
from fedjax_robust.report.tables import worst_case_label
from fedjax_robust.report.tables import write_comparisons  # pylint: disable=g-importing-member


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


def as_list(value: Any, cast: Callable[[Any], Any] = str) -> list:
  """The values of one grid axis, each passed through `cast`.

  `value` is a sequence (`("mean", "trimmed_mean")`), one comma-separated string
  (`"mean,trimmed_mean"`), or a sequence whose strings hold commas: a command-line override of a
  tuple field, `--config.grid.aggregators=mean,trimmed_mean`, reaches the config as the 1-tuple
  `("mean,trimmed_mean",)`. Strings are split on commas; whitespace, brackets and quotes around
  each piece are dropped, so `(mean, 'nnm+trimmed_mean')` works too. A single non-string value is
  a list of one. Aggregator specs hold '+' but never commas, so splitting is safe for them.
  """
  items = [value] if isinstance(value, str) or not isinstance(value, (list, tuple)) else value
  out = []
  for item in items:
    pieces = item.split(",") if isinstance(item, str) else [item]
    for piece in pieces:
      if isinstance(piece, str):
        piece = piece.strip().strip("()[]").strip().strip("'\"").strip()
        if not piece:
          continue
      try:
        out.append(cast(piece))
      except (TypeError, ValueError) as e:
        raise errors.ConfigError(f"grid value {piece!r} (from {value!r}) is not a valid "
                         f"{getattr(cast, '__name__', cast)}: {e}") from e
  if not out:
    raise errors.ConfigError(f"grid axis {value!r} has no values.")
  return out


def apply_overrides(base, overrides: Mapping[str, Any]):
  """A copy of `base` with dotted keys set; an unknown key is an error naming it."""
  config = base.copy_and_resolve_references()
  for dotted, value in overrides.items():
    *path, leaf = dotted.split(".")
    node = config
    for part in path:
      if part not in node:
        raise errors.ConfigError(f"sweep override {dotted!r}: config key {part!r} does not exist.")
      node = node[part]
    if leaf not in node:
      raise errors.ConfigError(f"sweep override {dotted!r}: config key {leaf!r} does not exist; allowed "
                       f"here: {', '.join(sorted(node.keys()))}.")
    with node.unlocked():
      try:
        node[leaf] = value
      except TypeError:
        # A key whose default is one type and whose domain allows another (a probability or
        # one per client): the type is the domain's to check (config.validate), not the
        # default's.
        with node.ignore_type():
          node[leaf] = value
  return config


def point_id(config) -> str:
  return experiment.fingerprint(config)


# The final metrics of a point's rows, each also given b = f, b ≤ f and b > f
# (results.CONDITIONS; `<metric>_given_b_eq_f` …) where the summary has it.
FINAL_METRICS = (*(name for name, _ in results.HEADLINE), "honest_excess_loss",
                 "backdoor_accuracy")


def _rows(pid: str, tags: Mapping[str, Any], summary: dict) -> list[dict]:
  s = summary["aggregators"][summary["config"]["aggregator"]]
  rows = []
  for metric in (f"{name}{suffix}" for name in FINAL_METRICS
                 for suffix in ("", *(f"_given_{c}" for c in results.CONDITIONS))):
    if metric in s:
      rows += [{"point": pid, **tags, "metric": metric, "statistic": stat, "value": s[metric][stat]}
               for stat in store.STATISTICS]
      if "mean_ci" in s[metric]:
        rows += [{"point": pid, **tags, "metric": metric, "statistic": k, "value": v}
                 for k, v in store.interval_values(s[metric]).items()]
  # Aggregator diagnostics (mean over rounds and non-diverged draws), e.g. clipped_share.
  rows += [{"point": pid, **tags, "metric": f"aux:{name}", "statistic": "mean", "value": value}
           for name, value in s.items()
           if name.endswith(("clipped_share", "gm_iterations", "kept_share", "present_share",
                             "skipped_round", "secure_averages", "numbers_sent",
                             "secure_averages_total", "numbers_sent_total",
                             "sampled_byzantine", "sampled_byzantine_max", "sampled_within_f",
                             "sampled_minority"))]
  # A mixed population: each behaviour's clients on their own data.
  for name, value in s.items():
    if name.startswith("behaviour_"):
      rows += [{"point": pid, **tags, "metric": name, "statistic": stat, "value": value[stat]}
               for stat in ("mean", "ci95", "count", "undefined")]
  # E[· | b] per realized count b, with the number of draws at that b.
  for entry in s["by_b"]:
    for metric in ("honest_accuracy", "honest_loss", "honest_holdout_accuracy"):
      if metric in entry:
        rows += [{"point": pid, **tags, "metric": f"{metric}|b={entry['b']}", "statistic": stat,
                  "value": entry[metric][stat]} for stat in ("mean", "ci95", "count", "undefined")]
  # The baseline without Byzantine clients on the same draws, and the paired differences.
  if "honest_only" in summary:
    for metric in ("honest_loss", "honest_accuracy", "honest_holdout_accuracy"):
      if metric in summary["honest_only"]:
        rows += [{"point": pid, **tags, "metric": f"honest_only_{metric}", "statistic": stat,
                  "value": summary["honest_only"][metric][stat]} for stat in store.STATISTICS]
  for c in summary.get("comparisons", ()):
    rows += [{"point": pid, **tags, "metric": f"paired:{c['metric']}:{c['a']}-{c['b']}",
              "statistic": stat, "value": int(c[stat]) if isinstance(c[stat], bool) else c[stat]}
           for stat in store.PAIRED_STATISTICS]
  rows += [{"point": pid, **tags, "metric": "diverged", "statistic": k,
            "value": s["diverged"][k]} for k in ("count", "share")]
  law = summary["byzantine_count"]
  rows += [{"point": pid, **tags, "metric": "byzantine_count", "statistic": k, "value": law[k]}
           for k in ("mean", "p_exceeds_f", "p_no_honest_majority")]
  rows.append({"point": pid, **tags, "metric": "byzantine_count", "statistic": "declared_f",
               "value": int(summary["config"]["f"])})
  if "theory" in s:
    rows += _theory_rows(pid, tags, s["theory"])
  return rows


def _curves(run_) -> dict[str, np.ndarray]:
  """A backdoor run's per-evaluation curves for its npz (store.CURVE_METRICS, with the rounds
  they were taken at); {} for a run without a backdoor metric."""
  if "backdoor_accuracy" not in run_.metrics:
    return {}
  metrics = results.defined_metrics(run_)
  return {"eval_rounds": np.asarray(run_.rounds),
          **{f"curve_{k}": np.asarray(metrics[k]) for k in store.CURVE_METRICS if k in metrics}}


def _theory_rows(pid: str, tags: Mapping[str, Any], t: dict) -> list[dict]:
  rows = []
  for metric, key in store.THEORY_METRICS.items():
    if key in t:
      rows += [{"point": pid, **tags, "metric": metric, "statistic": stat, "value": t[key][stat]}
               for stat in (*store.STATISTICS, "q10", "q90") if stat in t[key]]
  rows += [{"point": pid, **tags, "metric": "theory", "statistic": k, "value": t[k]}
           for k in store.THEORY_SCALARS]
  k = t["kappa"]
  rows += [{"point": pid, **tags, "metric": "theory_kappa", "statistic": name,
            "value": float("nan") if k[name] is None else k[name]}
           for name in ("lower", "upper", "attack_ratio", "plugin")]
  return rows


def _theory_condition_rows(pid: str, tags: Mapping[str, Any], error, counts, f: int, *,
                           interval: str, resamples: int) -> list[dict]:
  """The theory's measured error per draw (theory.report.per_draw's `error`) summarized given
  b = f, b ≤ f and b > f (`theory_error_given_b_eq_f` …, results.CONDITIONS, with intervals),
  so that a worst case (b = f) is set beside the expected error at its own b."""
  error, counts = np.asarray(error, np.float64), np.asarray(counts)
  rows = []
  for condition, select in results.CONDITIONS.items():
    values = error[select(counts, f)]
    s = {**evaluation.summarize(values, worst="max"),
         **evaluation.intervals(values, worst="max", method=interval, resamples=resamples)}
    rows += [{"point": pid, **tags, "metric": f"theory_error_given_{condition}",
              "statistic": stat, "value": value}
             for stat, value in ({k: s[k] for k in store.STATISTICS}
                                 | store.interval_values(s)).items()]
  return rows


def _in_sweep_order(rows: list[dict], order: Mapping[str, int]) -> list[dict]:
  """Rows ordered by their point's place in the sweep (rows of points no longer in the sweep
  last, as they were), each point's rows in their own order."""
  return sorted(rows, key=lambda r: order.get(r["point"], len(order)))


def run(base, points: Sequence[Point], workdir: str, *,
        log: Callable[[str], None] = print, stop_after: int | None = None,
        recompute: bool = False, metric: str | None = None) -> list[dict]:
  """Runs every point not yet done in `workdir` (see the module docstring); returns the rows of
  results.csv of this sweep's points, which its tables, plots and reports show (results.csv keeps
  the rows of points of an earlier grid too, with the tags they were written with). A point done by code declaring other numbers or on another JAX/backend (its npz's
  provenance, `provenance.reuse_mismatch`) is named and recomputed; `recompute` recomputes every
  point. `stop_after` ends the sweep after that many new points (to test resumption). Each point's
  progress line gives E[`metric`] (the one the sweep's table shows; `progress_value`)."""
  experiment.check_workdir(workdir)
  os.makedirs(os.path.join(workdir, "points"), exist_ok=True)
  path = os.path.join(workdir, "results.csv")
  timings_path = os.path.join(workdir, "timings.csv")
  configs = [apply_overrides(base, p.overrides) for p in points]
  for c, p in zip(configs, points):  # every point valid before any long work starts
    if "," in c.aggregator:
      raise errors.ConfigError(
          f"a sweep point runs one aggregator; point {dict(p.tags)} has {c.aggregator!r}. "
          "Make the aggregator an axis (e.g. --config.grid.aggregators=mean,trimmed_mean).")
    if ":" in c.report.compare:
      raise errors.ConfigError(
          f"report.compare={c.report.compare!r} names pairs of aggregators of one run; a sweep "
          "point runs one aggregator. Sweeps compare points that differ only in the aggregator "
          "(launch/sweep.py --compare_baseline=<spec>); leave report.compare '' or 'none'.")
  # Each point validated once, here, and run as the Job it gives.
  jobs = [config_lib.resolve(c) for c in configs]
  ids = [point_id(c) for c in configs]
  order = {pid: i for i, pid in enumerate(dict.fromkeys(ids))}
  tags_of = {}
  for pid, p in zip(ids, points):
    tags_of.setdefault(pid, dict(p.tags))
  try:
    rows = store.read_results(path)
  except store.DamagedResults as e:
    log(f"sweep: WARNING {path} is damaged ({e}); rebuilt from the points' records "
        "(points/<id>.json)")
    rows = store.rows_from_records(workdir, order, log)
  # Timing rows of results.csv files written before timings.csv existed are dropped. A point of
  # this sweep carries its current tags (a sweep config may have added or renamed one).
  rows = [{"point": r["point"], **tags_of[r["point"]],
           **{k: r[k] for k in store.RESULTS_FIELDS[1:]}} if r["point"] in tags_of else r
          for r in rows if r["metric"] != "seconds"]
  timings = [{"point": t["point"], **tags_of[t["point"]],
              **{k: t[k] for k in store.TIMING_FIELDS if k in t}} if t["point"] in tags_of else t
             for t in store.read_timings(timings_path)]
  done = set()
  for pid in dict.fromkeys(r["point"] for r in rows):
    if pid not in order:
      continue  # not a point of this sweep: kept as it is
    tags = tags_of[pid]
    try:
      arrays = store.load_point(store.point_path(workdir, pid))
    except store.NPZ_ERRORS as e:
      log(f"sweep: WARNING point {pid} {tags} is in results.csv but "
          f"{store.point_path(workdir, pid)} is missing or unreadable ({type(e).__name__}: {e}); "
          "recomputing it")
      continue
    try:
      store.load_record(store.config_path(workdir, pid))
    except store.RECORD_ERRORS as e:
      log(f"sweep: WARNING point {pid} {tags} is in results.csv but "
          f"{store.config_path(workdir, pid)} is missing or unreadable ({type(e).__name__}: {e}); "
          "recomputing it")
      continue
    stale = provenance.reuse_mismatch(
        json.loads(str(arrays["provenance"])) if "provenance" in arrays else None)
    if recompute:
      continue
    if stale:
      log(f"sweep: WARNING point {pid} {tags} was computed by other code or software "
          f"({stale}); recomputing it")
      continue
    done.add(pid)
  stale = {r["point"] for r in rows} & (set(order) - done)
  rows = [r for r in rows if r["point"] not in stale]
  timings = [t for t in timings if t["point"] not in stale]
  if sharding.is_writer() and rows:  # a rebuilt or relabelled table on disk before long work
    store.write_results(path, rows, unless_same=True)
    store.write_csv(timings_path, timings, store.TIMING_FIELDS, unless_same=True)
  todo, queued = [], set()
  for job, p, pid in zip(jobs, points, ids):
    if pid not in done and pid not in queued:
      todo.append((job, p, pid))
      queued.add(pid)
  log(f"sweep: {len(points)} points, {len(points) - len(todo)} already done, {len(todo)} to run")
  start = time.perf_counter()
  for i, (job, point, pid) in enumerate(todo[:stop_after]):
    t0 = time.perf_counter()
    # A point's checkpoints (checkpoint.every_rounds) under the sweep's workdir: a sweep killed
    # mid-point resumes that point where its last checkpoint left it.
    checkpoint_dir = os.path.join(workdir, "checkpoints", pid)
    # (experiment.run deletes them once the point's runs are done)
    exp = experiment.run(job, log=lambda _: None, checkpoint_dir=checkpoint_dir,
                         recompute=recompute)
    job = exp.job  # as it ran: the prior's f, privacy's σ
    summary = results.summarize(exp)
    run_ = exp.runs[job.aggregator]
    counts = evaluation.byzantine_counts(exp.masks[job.aggregator])
    # The npz first: a point is in results.csv only once its per-draw values are on disk.
    theory = exp.theory.get(job.aggregator, {})
    record = summary["provenance"]
    new_rows = _rows(pid, point.tags, summary)
    if "error" in theory:
      new_rows += _theory_condition_rows(pid, point.tags, theory["error"], counts, job.f,
                                         interval=job.report.interval,
                                         resamples=job.report.bootstrap_resamples)
    rows = _in_sweep_order(rows + new_rows, order)
    s = summary["aggregators"][job.aggregator]
    timings = [t for t in timings if t["point"] != pid]
    timings = _in_sweep_order(timings + [{"point": pid, **point.tags,
                                          **{k: getattr(run_, k) for k in store.TIMING_FIELDS}}],
                             order)
    if sharding.is_writer():  # multi-host: process 0 writes, every process keeps the rows
      store.save_record(store.config_path(workdir, pid), {
          "point": pid, "tags": dict(point.tags), "config": summary["config"],
          "provenance": record,
          **{k: summary[k] for k in ("privacy", "compression") if k in summary},
          # results.csv's rows of the point, each value as csv writes it (str), so a damaged
          # results.csv is rebuilt byte for byte
          "rows": [[r["metric"], r["statistic"], str(r["value"])] for r in new_rows]})
      store.save_point(store.point_path(workdir, pid), tags=json.dumps(dict(point.tags)),
                       num_byzantine=counts, provenance=json.dumps(record),
                       honest_masks=np.asarray(exp.masks[job.aggregator], bool),
                       **{f"final_{k}": v[-1] for k, v in results.defined_metrics(run_).items()},
                       **_curves(run_),
                       **{f"theory_{k}": np.asarray(theory[k]) for k in store.THEORY_DRAWS
                          if k in theory})
      store.write_results(path, rows)
      store.write_csv(timings_path, timings, store.TIMING_FIELDS)
    elapsed = time.perf_counter() - start
    headline = tables.progress_value(s, metric)
    eta = elapsed / (i + 1) * (len(todo) - i - 1)
    diverged = s["diverged"]["count"]
    never = [k for k, v in s.items() if k.endswith("clipped_share") and v == 0.0]
    log(f"[{len(points) - len(todo) + i + 1}/{len(points)}] "
        f"{' '.join(f'{k}={v}' for k, v in point.tags.items())}: {headline} "
        f"in {time.perf_counter() - t0:.1f} s; ETA "
        f"{experiment.human_seconds(eta)}"
        + (f"; WARNING: {diverged} of {job.num_samples} draws diverged (left out of the "
           "accuracy, loss +inf)" if diverged else "")
        + (f"; WARNING: the clipping stage never clipped ({', '.join(never)} = 0): these are "
           "the numbers of the rule without clipping" if never else ""))
  return [r for r in rows if r["point"] in order]


def describe(base, points: Sequence[Point], *, x: str | None = None, note: str = "") -> str:
  """One line for plot titles saying what every point of the sweep ran: μ_H (its options when
  one law is swept), the declared f (per value of tag `x` when it follows it), the attack and its
  options, S, rounds, n and the data; then `note` (e.g. how the sweep config sets f and each
  μ_H's parameters)."""
  configs = [apply_overrides(base, p.overrides) for p in points]
  if not configs:
    return note
  parts = []
  laws = list(dict.fromkeys(c.honest_set for c in configs))
  if len(laws) == 1 and laws[0] != "worst_case":
    opts = [dict(c.honest_set_options.get(laws[0], {})) for c in configs]
    fixed = {k: v for k, v in opts[0].items() if all(o.get(k) == v for o in opts)}
    varying = [k for k in opts[0] if k not in fixed]
    inside = ", ".join(filter(None, [results.format_options(fixed)] + [f"{k} per point"
                                                                 for k in varying]))
    parts.append(f"μ_H={laws[0]}({inside})")
  elif len(laws) == 1:
    parts.append("μ_H=" + worst_case.short_name(
        configs[0].honest_set_options.worst_case.criterion))
  else:
    parts.append(f"μ_H ∈ {{{', '.join(laws)}}}")
  fs = sorted({c.f for c in configs})
  by_x = {}
  if x is not None:
    for p, c in zip(points, configs):
      if x in p.tags:
        by_x.setdefault(p.tags[x], set()).add(c.f)
  if len(fs) == 1:
    parts.append(f"declared f={fs[0]}")
  elif by_x and all(len(v) == 1 for v in by_x.values()):  # f follows x
    values = sorted(by_x, key=lambda v: (isinstance(tables.tag_value(v), str), tables.tag_value(v)))
    parts.append(f"declared f={next(iter(by_x[values[0]]))} at {x}={values[0]}, "
                 + ", ".join(f"{next(iter(by_x[v]))} at {v}" for v in values[1:]))
  else:
    parts.append(f"declared f ∈ {{{', '.join(map(str, fs))}}}")
  attacks = list(dict.fromkeys(
      (c.attack, results.format_options(dict(c.attack_options.get(c.attack, {}))))
      for c in configs))
  parts.append("attack " + "; ".join(f"{a}({o})" if o else a for a, o in attacks))
  for label, values in (("S", [c.num_samples for c in configs]),
                        ("rounds", [c.training.num_rounds for c in configs]),
                        ("n", [c.num_clients for c in configs])):
    values = list(dict.fromkeys(values))
    parts.append(f"{label}={values[0]}" if len(values) == 1
                 else f"{label} ∈ {{{', '.join(map(str, values))}}}")
  parts.append(f"data {', '.join(dict.fromkeys(c.data.name for c in configs))}")
  return ", ".join(parts) + (f". {note}" if note else "")
