"""A sweep's files: its points (`points/<id>.json`, `points/<id>.npz`) and its results
(`results.csv`, `timings.csv`), one format each, with the vocabulary of their rows. The store
layer (BUILD.md, "Layers"): it writes and reads what the runner (`sweep.run`) computed and the
report (`report.tables`, `report/sweeps/`) reads; it never trains and formats nothing.

A point's files, in the order the runner writes them:
- `workdir/points/<id>.json`: its record (`save_record`, `load_record`): tags, full resolved
  config, provenance (code version, JAX/jaxlib, backend and devices, seed, draws per chunk) and
  its rows of results.csv: the point id of results.csv resolves to it;
- `workdir/points/<id>.npz`: its per-draw values and provenance (`save_point`: written to a
  temporary file, then renamed; `load_point`);
- `workdir/results.csv`: its statistics (one row per point × metric × statistic: 'point', the
  tags, then RESULTS_FIELDS' other columns; `write_results` rewrites the file atomically,
  integer statistics as integers, `read_results` reads it back or says how it is damaged,
  `rows_from_records` rebuilds its rows from the records);
- `workdir/timings.csv`: its compile and run seconds (one row per point, TIMING_FIELDS; kept out
  of results.csv because they differ from run to run).

The names of results.csv's statistics (STATISTICS, INTERVAL_STATISTICS, PAIRED_STATISTICS) and
theory rows (THEORY_METRICS, THEORY_SCALARS), and of the npz's per-draw theory arrays
(THEORY_DRAWS), are the files' vocabulary and live here. Which final metrics a point reports
(`sweep.FINAL_METRICS`, read from `results.HEADLINE`, the report's) is the runner's choice and
stays with it, so the store imports nothing of the report.
"""

from __future__ import annotations

import csv
import io
import json
import os
from typing import Callable, Mapping, Sequence

import numpy as np

from fedjax_robust import experiment

# Per-draw theory arrays kept in a point's npz (theory.report.per_draw).
THEORY_DRAWS = ("g2", "b2", "bound", "valid", "error", "tightness", "bound_plugin",
                "valid_plugin", "tightness_plugin", "kappa_ratio")
# Per-evaluation curves `curve_<metric>` ([E + 1, S], accuracies of diverged draws NaN) kept
# in a point's npz beside `eval_rounds` ([E + 1], 0 first) where the run measures a backdoor:
# a backdoor's durability after the attack stops is read from them
# (report/sweeps/backdoors.py); other points keep their final values only.
CURVE_METRICS = ("backdoor_accuracy", "test_accuracy")
# The statistics of a metric of results.csv (evaluation.summarize's keys).
STATISTICS = ("mean", "ci95", "std", "q05", "q25", "q50", "q75", "q95", "worst", "cvar50",
              "cvar90", "count", "undefined", "identical")
# The columns of timings.csv after the tags.
TIMING_FIELDS = ("compile_seconds", "run_seconds")
NPZ_ERRORS = experiment.NPZ_ERRORS  # what reading a damaged points/<id>.npz raises


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


def interval_values(s: dict) -> dict:
  """The INTERVAL_STATISTICS of a headline metric's summary, in that order."""
  return {**{f"{k}_{end}": s[k][i] for k in _INTERVALS for i, end in enumerate(("low", "high"))},
          "heavy_tail": int(s["heavy_tail"])}


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


def _number(text: str) -> int | float:
  """A value as written by csv: '64' reads back as the int 64 (so it is written '64' again, not
  '64.0'), anything else as a float ('0.5', '1.0', 'nan', 'inf')."""
  try:
    return int(text)
  except ValueError:
    return float(text)


# results.csv's columns: "point", then (after the tags) the other three.
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


def write_csv(path: str, rows: list[dict], last: Sequence[str], *,
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


def write_results(path: str, rows: list[dict], *, unless_same: bool = False) -> None:
  """results.csv's rows to `path` (`write_csv`: 'point', the tags, then RESULTS_FIELDS')."""
  write_csv(path, rows, RESULTS_FIELDS[1:], unless_same=unless_same)


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


def save_record(path: str, record: dict) -> None:
  """A point's record (`load_record`) to `path` as JSON (indent 1, NaN and inf as JSON's
  extensions) atomically: a temporary file beside it, then renamed onto `path`."""
  with open(path + ".tmp", "w") as fh:
    json.dump(record, fh, indent=1, allow_nan=True)
  os.replace(path + ".tmp", path)


def rows_from_records(workdir: str, order: Mapping[str, int],
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


def config_without(workdir: str, pid: str, key: str | Sequence[str]) -> dict | None:
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
