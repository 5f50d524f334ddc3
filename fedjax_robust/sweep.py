"""Resumable Monte Carlo sweeps: many experiment points, one vmapped batch of S draws each.

A sweep is a base configuration and a list of points; a point is a set of overrides (dotted keys
of the base config) and tags (labels for tables and plots). Build grids with `axis` and
`product`; `as_list` turns a grid axis given on the command line as one comma-separated string
(`--config.grid.aggregators=mean,trimmed_mean`) into its values. Each point runs one aggregator
on S draws of μ_H. Its files, in the order they are written:
- `workdir/points/<id>.json`: its record (`load_record`): tags, full resolved config,
  provenance (code version, JAX/jaxlib, backend and devices, seed, draws per chunk) and its rows
  of results.csv: the point id of results.csv resolves to it;
- `workdir/points/<id>.npz`: its per-draw values and provenance (written to a temporary file,
  then renamed);
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

The reports (`table`, `comparison_table`, `theory_table`, `plot`, `plot_theory`) set expected
against worst case only at the same realized b: E[· | b = f] (the worst case's b) and
E[· | b ≤ f] with P(b > f) beside, the unconditioned mean apart; each figure has a one-line
title and its details in a caption file `<figure>.txt` beside it (`save_figure`).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import itertools
import json
import os
import textwrap
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
from fedjax_robust import worst_case

# Per-draw theory arrays kept in a point's npz (theory.report.per_draw).
THEORY_DRAWS = ("g2", "b2", "bound", "valid", "error", "tightness", "bound_plugin",
                "valid_plugin", "tightness_plugin", "kappa_ratio")
STATISTICS = ("mean", "ci95", "std", "q05", "q25", "q50", "q75", "q95", "worst", "cvar50",
              "cvar90", "count", "undefined", "identical")
TIMING_FIELDS = ("compile_seconds", "run_seconds")
NPZ_ERRORS = experiment.NPZ_ERRORS  # what reading a damaged points/<id>.npz raises


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


# Interval statistics of the headline metrics (results.HEADLINE): the mean's CI by the config's
# `report.interval`, the exact CIs of the median and of the worst-side 95% quantile, the worst
# tail's CVaR90 CI, the heavy-tail flag.
_INTERVALS = ("mean_ci", "median_ci", "worst_quantile_ci", "cvar90_ci")
INTERVAL_STATISTICS = (*(f"{k}_{end}" for k in _INTERVALS for end in ("low", "high")),
                       "heavy_tail")
# Statistics of a paired comparison row (metric 'paired:<metric>:<a>-<b>').
PAIRED_STATISTICS = ("mean", "ci_low", "ci_high", "p_value", "wilcoxon_p", "pairs",
                     "a_only_infinite", "b_only_infinite", "undefined", "deterministic",
                     "identical_draws")


def _interval_values(s: dict) -> dict:
  """The INTERVAL_STATISTICS of a headline metric's summary, in that order."""
  return {**{f"{k}_{end}": s[k][i] for k in _INTERVALS for i, end in enumerate(("low", "high"))},
          "heavy_tail": int(s["heavy_tail"])}


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
               for stat in STATISTICS]
      if "mean_ci" in s[metric]:
        rows += [{"point": pid, **tags, "metric": metric, "statistic": k, "value": v}
                 for k, v in _interval_values(s[metric]).items()]
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
                  "value": summary["honest_only"][metric][stat]} for stat in STATISTICS]
  for c in summary.get("comparisons", ()):
    rows += [{"point": pid, **tags, "metric": f"paired:{c['metric']}:{c['a']}-{c['b']}",
              "statistic": stat, "value": int(c[stat]) if isinstance(c[stat], bool) else c[stat]}
           for stat in PAIRED_STATISTICS]
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


# Theory rows of a point (metric name -> key of the summary's theory block), each with the
# statistics of STATISTICS that the block has, plus q10/q90 for the tightness ratios.
THEORY_METRICS = {"theory_g2": "g2", "theory_b2": "b2", "theory_bound": "bound_given_valid",
                  "theory_error_given_valid": "error_given_valid", "theory_error": "error",
                  "theory_tightness": "tightness", "theory_bound_plugin": "bound_plugin_given_valid",
                  "theory_error_given_valid_plugin": "error_given_valid_plugin",
                  "theory_tightness_plugin": "tightness_plugin", "theory_lower_bound_order": "lower_bound_order",
                  "theory_byzantine_term": "byzantine_term_given_valid",
                  "theory_byzantine_ratio": "byzantine_ratio",
                  "theory_excess": "excess_given_valid"}
THEORY_SCALARS = ("p_invalid", "violations", "p_invalid_plugin", "violations_plugin")


def _theory_rows(pid: str, tags: Mapping[str, Any], t: dict) -> list[dict]:
  rows = []
  for metric, key in THEORY_METRICS.items():
    if key in t:
      rows += [{"point": pid, **tags, "metric": metric, "statistic": stat, "value": t[key][stat]}
               for stat in (*STATISTICS, "q10", "q90") if stat in t[key]]
  rows += [{"point": pid, **tags, "metric": "theory", "statistic": k, "value": t[k]}
           for k in THEORY_SCALARS]
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
             for stat, value in ({k: s[k] for k in STATISTICS} | _interval_values(s)).items()]
  return rows


def _number(text: str) -> int | float:
  """A value as written by csv: '64' reads back as the int 64 (so it is written '64' again, not
  '64.0'), anything else as a float ('0.5', '1.0', 'nan', 'inf')."""
  try:
    return int(text)
  except ValueError:
    return float(text)


RESULTS_FIELDS = ("point", "metric", "statistic", "value")


class DamagedResults(ValueError):
  """A results.csv that does not read back in full: what is wrong with it."""


def read_results(path: str) -> list[dict]:
  """The rows of a sweep's results.csv (tags as strings, values as int or float); [] if absent.

  The file is written whole and atomically, so a sound one ends with a line end and every row
  has a field per column and a number for its value; anything else (a file cut mid-row, an
  empty file, a missing column) raises DamagedResults saying what and where."""
  if not os.path.exists(path):
    return []
  with open(path, newline="") as fh:
    text = fh.read()
  if not text.endswith("\n"):
    raise DamagedResults("it is empty" if not text
                         else "it ends mid-row (no line end after its last row)")
  reader = csv.DictReader(io.StringIO(text, newline=""))
  missing = [k for k in RESULTS_FIELDS if k not in (reader.fieldnames or ())]
  if missing:
    raise DamagedResults(f"its header lacks the column(s) {', '.join(missing)}")
  rows = []
  for r in reader:
    if None in r or None in r.values():
      raise DamagedResults(f"line {reader.line_num} has {len(r) - (None in r)} fields, the "
                           f"header {len(reader.fieldnames)}")
    try:
      rows.append({**r, "value": _number(r["value"])})
    except ValueError:
      raise DamagedResults(f"line {reader.line_num}'s value {r['value']!r} is not a "
                           "number") from None
  return rows


def read_timings(path: str) -> list[dict]:
  """The rows of a sweep's timings.csv (one per point; seconds as floats); [] if absent."""
  if not os.path.exists(path):
    return []
  with open(path, newline="") as fh:
    return [{**r, **{k: float(r[k]) for k in TIMING_FIELDS if r.get(k)}}
            for r in csv.DictReader(fh)]


def _csv_text(rows: list[dict], last: Sequence[str]) -> str:
  """Rows as CSV text: 'point', the tags sorted, then the columns `last`."""
  fields = (["point"] + sorted({k for r in rows for k in r} - {"point", *last}) + list(last))
  out = io.StringIO(newline="")
  writer = csv.DictWriter(out, fieldnames=fields, restval="")
  writer.writeheader()
  writer.writerows(rows)
  return out.getvalue()


def _write_csv(path: str, rows: list[dict], last: Sequence[str], *,
               unless_same: bool = False) -> None:
  """Rows to `path` (`_csv_text`) atomically (a temporary file, synced, then renamed);
  `unless_same`: not if the file already holds that text."""
  text = _csv_text(rows, last)
  if unless_same and os.path.exists(path):
    with open(path, newline="") as fh:
      if fh.read() == text:
        return
  with open(path + ".tmp", "w", newline="") as fh:
    fh.write(text)
    fh.flush()
    os.fsync(fh.fileno())
  os.replace(path + ".tmp", path)


def write_table(path: str, table: list[dict]) -> str:
  """A report's table to CSV at `path` (columns: the first row's keys, in order); returns
  `path`."""
  with open(path + ".tmp", "w", newline="") as fh:
    writer = csv.DictWriter(fh, fieldnames=list(table[0]), restval="")
    writer.writeheader()
    writer.writerows(table)
  os.replace(path + ".tmp", path)
  return path


def _write_results(path: str, rows: list[dict], *, unless_same: bool = False) -> None:
  _write_csv(path, rows, RESULTS_FIELDS[1:], unless_same=unless_same)


def point_path(workdir: str, pid: str) -> str:
  return os.path.join(workdir, "points", pid + ".npz")


def save_point(path: str, **arrays) -> None:
  """`np.savez` to `path` atomically: a hidden temporary file beside it (written through a file
  object, so np.savez adds no '.npz'), synced, then renamed onto `path`."""
  tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
  with open(tmp, "wb") as fh:
    np.savez(fh, **arrays)
    fh.flush()
    os.fsync(fh.fileno())
  os.replace(tmp, path)


def load_point(path: str) -> dict[str, np.ndarray]:
  """Every array of a point's npz, read in full (so a truncated file fails here, not later);
  raises one of NPZ_ERRORS if the file is missing, truncated, unreadable or lacks its tags or
  Byzantine counts."""
  with np.load(path, allow_pickle=False) as z:
    arrays = {k: z[k] for k in z.files}
  for key in ("tags", "num_byzantine"):
    if key not in arrays:
      raise KeyError(f"{key!r} not in {path}")
  json.loads(str(arrays["tags"]))
  return arrays


def _in_sweep_order(rows: list[dict], order: Mapping[str, int]) -> list[dict]:
  """Rows ordered by their point's place in the sweep (rows of points no longer in the sweep
  last, as they were), each point's rows in their own order."""
  return sorted(rows, key=lambda r: order.get(r["point"], len(order)))


def config_path(workdir: str, pid: str) -> str:
  """`workdir/points/<id>.json`: the point's record (`load_record`)."""
  return os.path.join(workdir, "points", pid + ".json")


# What reading a damaged points/<id>.json raises (JSONDecodeError and UnicodeDecodeError are
# ValueErrors).
RECORD_ERRORS = (OSError, ValueError, KeyError, TypeError)


def load_record(path: str) -> dict:
  """A point's record: its tags, full resolved config, provenance and (written since issue 36)
  its rows of results.csv as [metric, statistic, value as written]; raises one of RECORD_ERRORS
  if the file is missing, cut or unreadable or lacks its tags, config or provenance."""
  with open(path, encoding="utf-8") as fh:
    record = json.load(fh)
  if not isinstance(record, dict):
    raise TypeError(f"{path} holds a {type(record).__name__}, not a point's record")
  for key in ("tags", "config", "provenance"):
    if key not in record:
      raise KeyError(f"{key!r} not in {path}")
  return record


def _rows_from_records(workdir: str, order: Mapping[str, int],
                       log: Callable[[str], None]) -> list[dict]:
  """results.csv's rows rebuilt from the records in workdir/points (the sweep's points in its
  order, then any others by id); a record that is unreadable or has no rows is named, and its
  point is not in the rows (so a point of the sweep is recomputed)."""
  names = [f[:-len(".json")] for f in os.listdir(os.path.join(workdir, "points"))
           if f.endswith(".json") and not f.startswith(".")]
  rows = []
  for pid in sorted(names, key=lambda p: (order.get(p, len(order)), p)):
    what = "recomputing it" if pid in order else "left out of results.csv"
    try:
      record = load_record(config_path(workdir, pid))
      if "rows" not in record:
        log(f"sweep: WARNING {config_path(workdir, pid)} has no rows (written before records "
            f"kept them); {what}")
        continue
      rows += [{"point": pid, **record["tags"], "metric": m, "statistic": st,
                "value": _number(v)} for m, st, v in record["rows"]]
    except RECORD_ERRORS as e:
      log(f"sweep: WARNING {config_path(workdir, pid)} is unreadable ({type(e).__name__}: {e}); "
          f"{what}")
  return rows


def run(base, points: Sequence[Point], workdir: str, *,
        log: Callable[[str], None] = print, stop_after: int | None = None,
        recompute: bool = False, metric: str | None = None) -> list[dict]:
  """Runs every point not yet done in `workdir` (see the module docstring); returns all rows of
  results.csv. A point done by code declaring other numbers or on another JAX/backend (its npz's
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
    rows = read_results(path)
  except DamagedResults as e:
    log(f"sweep: WARNING {path} is damaged ({e}); rebuilt from the points' records "
        "(points/<id>.json)")
    rows = _rows_from_records(workdir, order, log)
  # Timing rows of results.csv files written before timings.csv existed are dropped. A point of
  # this sweep carries its current tags (a sweep config may have added or renamed one).
  rows = [{"point": r["point"], **tags_of[r["point"]],
           **{k: r[k] for k in RESULTS_FIELDS[1:]}} if r["point"] in tags_of else r
          for r in rows if r["metric"] != "seconds"]
  timings = [{"point": t["point"], **tags_of[t["point"]],
              **{k: t[k] for k in TIMING_FIELDS if k in t}} if t["point"] in tags_of else t
             for t in read_timings(timings_path)]
  done = set()
  for pid in dict.fromkeys(r["point"] for r in rows):
    if pid not in order:
      continue  # not a point of this sweep: kept as it is
    tags = tags_of[pid]
    try:
      arrays = load_point(point_path(workdir, pid))
    except NPZ_ERRORS as e:
      log(f"sweep: WARNING point {pid} {tags} is in results.csv but "
          f"{point_path(workdir, pid)} is missing or unreadable ({type(e).__name__}: {e}); "
          "recomputing it")
      continue
    try:
      load_record(config_path(workdir, pid))
    except RECORD_ERRORS as e:
      log(f"sweep: WARNING point {pid} {tags} is in results.csv but "
          f"{config_path(workdir, pid)} is missing or unreadable ({type(e).__name__}: {e}); "
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
    _write_results(path, rows, unless_same=True)
    _write_csv(timings_path, timings, TIMING_FIELDS, unless_same=True)
  todo, queued = [], set()
  for job, p, pid in zip(jobs, points, ids):
    if pid not in done and pid not in queued:
      todo.append((job, p, pid))
      queued.add(pid)
  log(f"sweep: {len(points)} points, {len(points) - len(todo)} already done, {len(todo)} to run")
  start = time.perf_counter()
  for i, (job, point, pid) in enumerate(todo[:stop_after]):
    t0 = time.perf_counter()
    exp = experiment.run(job, log=lambda _: None)
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
                                          **{k: getattr(run_, k) for k in TIMING_FIELDS}}],
                             order)
    if sharding.is_writer():  # multi-host: process 0 writes, every process keeps the rows
      with open(config_path(workdir, pid) + ".tmp", "w") as fh:
        json.dump({"point": pid, "tags": dict(point.tags), "config": summary["config"],
                   "provenance": record,
                   **{k: summary[k] for k in ("privacy", "compression") if k in summary},
                   # results.csv's rows of the point, each value as csv writes it (str), so a
                   # damaged results.csv is rebuilt byte for byte
                   "rows": [[r["metric"], r["statistic"], str(r["value"])] for r in new_rows]},
                  fh, indent=1, allow_nan=True)
      os.replace(config_path(workdir, pid) + ".tmp", config_path(workdir, pid))
      save_point(point_path(workdir, pid), tags=json.dumps(dict(point.tags)),
                 num_byzantine=counts, provenance=json.dumps(record),
                 honest_masks=np.asarray(exp.masks[job.aggregator], bool),
                 **{f"final_{k}": v[-1] for k, v in results.defined_metrics(run_).items()},
                 **{f"theory_{k}": np.asarray(theory[k]) for k in THEORY_DRAWS
                    if k in theory})
      _write_results(path, rows)
      _write_csv(timings_path, timings, TIMING_FIELDS)
    elapsed = time.perf_counter() - start
    headline = progress_value(s, metric)
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
  return rows


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


def _config_without(workdir: str, pid: str, key: str | Sequence[str]) -> dict | None:
  """The point's saved config (points/<id>.json) without `key` (one dotted key, or several),
  or None if unreadable."""
  try:
    with open(config_path(workdir, pid)) as fh:
      config = json.load(fh)["config"]
  except (OSError, ValueError, KeyError, TypeError):
    return None
  for dotted in ([key] if isinstance(key, str) else key):
    *path, leaf = dotted.split(".")
    node = config
    for part in path:
      node = node.get(part, {}) if isinstance(node, dict) else {}
    if isinstance(node, dict):
      node.pop(leaf, None)
  return config


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
      return load_point(point_path(workdir, pid))
    except NPZ_ERRORS as e:
      log(f"sweep comparisons: WARNING {point_path(workdir, pid)} unreadable "
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
    base_config = _config_without(workdir, base_pid, series_key or series)
    for pid in pids:
      arrays = readable(pid) if pid != base_pid else None
      if arrays is None:
        continue
      if base_config is None or _config_without(workdir, pid, series_key or series) != base_config:
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


def _float(v):
  try:
    return float(v)
  except (TypeError, ValueError):
    return v


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
    values = sorted(by_x, key=lambda v: (isinstance(_float(v), str), _float(v)))
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
  xs = sorted({_float(t[x]) for t in tags.values()},
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
    pts = sorted((at[_float(t[x])], p) for p, t in tags.items()
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
                for _, p in sorted((at[_float(t[x])], p) for p, t in tags.items()
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
    if _float(t[x]) != xs[-1]:
      continue
    try:
      arrays = load_point(point_path(workdir, pid))
    except NPZ_ERRORS as e:
      log(f"sweep plot: WARNING {point_path(workdir, pid)} ({series}={t[series]}, "
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
                   and _float(t[x]) == xv]
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
  at_x = {p: v for p, v in by_b.items() if _float(tags[p][x]) == xs[-1]}
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
  xs = sorted({_float(e[x]) for e in points.values()}, key=lambda v: (isinstance(v, str), v))
  at = {v: i for i, v in enumerate(xs)}
  worst_name = worst_case_label(worst_criterion, "theory_error")
  paths = []
  save = _figure_saver(workdir, subtitle, paths)

  dodge = _dodge(styles, worst_label)

  def curve(s, st, key):
    pts = sorted(((at[_float(e[x])], e) for e in points.values()
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
        arrays = load_point(point_path(workdir, pid))
      except NPZ_ERRORS as err:
        log(f"sweep plot: WARNING {point_path(workdir, pid)} unreadable ({type(err).__name__}); "
            "left out of tightness.png")
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
