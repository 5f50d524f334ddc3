"""Runs a resumable Monte Carlo sweep: every point of a sweep config, one vmapped batch of S
draws each, appending to --workdir/results.csv (statistics) and --workdir/timings.csv (seconds);
rerun with the same --workdir to resume.

  python launch/sweep.py --config=configs/sweep_core.py --workdir=runs/sweep_core
  python launch/sweep.py --config=configs/sweep_core.py --config.base.num_samples=16

Grid axes are set as comma-separated lists (no spaces, or quote the argument); aggregator specs
keep their '+', and numbers are read as numbers:

  python launch/sweep.py --config=configs/sweep_core.py --workdir=runs/small \\
    --config.grid.aggregators=mean,nnm+trimmed_mean --config.grid.corruption=0.12,0.28 \\
    --config.grid.mu_h=independent,worst_case

A sweep config file defines get_config() (a ConfigDict with `base`, the experiment config every
point starts from, `grid`, its axes, and `plot`, the tags to plot: x, series, style, metric) and
points(config) (a list of sweep.Point; read each grid axis with sweep.as_list(value, cast) so
comma-separated overrides work). It may define plot_note(config), a sentence appended to the
plots' titles (e.g. how f and each μ_H's parameters follow the swept rate); the titles also say
the attack and its options, S, rounds, n and the declared f per value of the plot's x. A sweep's
own analysis, run after the generic tables and plots, lives in the report layer under the
config's name: configs/sweep_<name>.py -> fedjax_robust/report/sweeps/<name>.py
(`report.sweeps.for_config`). Last, everything printed and plotted goes into one page a browser
opens offline, --workdir/report.html (fedjax_robust/report/html.py).
"""

import importlib.util
import os
import sys

from absl import flags
from ml_collections import config_flags

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from fedjax_robust import errors  # pylint: disable=g-import-not-at-top,wrong-import-position
from fedjax_robust import evaluation  # pylint: disable=g-import-not-at-top,wrong-import-position
from fedjax_robust import sharding  # pylint: disable=g-import-not-at-top,wrong-import-position
from fedjax_robust import sweep  # pylint: disable=g-import-not-at-top,wrong-import-position
from fedjax_robust.report import html  # pylint: disable=g-import-not-at-top,wrong-import-position
from fedjax_robust.report import sweeps as report_sweeps  # pylint: disable=g-import-not-at-top,wrong-import-position

_DEFAULT_CONFIG = os.path.join(ROOT, "configs", "sweep_core.py")
_CONFIG = errors.define_config_flag(
    _DEFAULT_CONFIG, "Sweep configuration file.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/sweep_core", "Where results are written.")
_COMPARE_BASELINE = flags.DEFINE_string(
    "compare_baseline", None, "The value of the plot's series tag (e.g. an aggregator spec) every "
    "other point is compared against, pairwise over the same draws (default: the first).")
_RECOMPUTE = flags.DEFINE_bool(
    "recompute", False, "Recompute every point, even those already in --workdir (points made "
    "by other code or another JAX/backend are recomputed anyway).")
_START = sharding.define_flags()


def _sweep_module(path: str, config):
  """The sweep config file's module: a file of configs/ is imported as configs.<name>, the module
  its report reads (`report.sweeps.for_config`; what points() records there, e.g. the refused
  points, is then the report's to read), any other file is loaded from its path. A file that is
  not a sweep config (no points(config), or a get_config() without `base`, `grid` and `plot`) is
  a ConfigError."""
  folder, name = os.path.split(os.path.realpath(path))
  if folder == os.path.realpath(os.path.join(ROOT, "configs")) and name.endswith(".py"):
    module = importlib.import_module(f"configs.{name[:-len('.py')]}")
  else:
    spec = importlib.util.spec_from_file_location("sweep_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  missing = [k for k in ("base", "grid", "plot") if k not in config]
  if not hasattr(module, "points") or missing:
    raise errors.ConfigError(
        f"--config={path} is not a sweep config: it must define points(config), and its "
        f"get_config() must have the keys base, grid and plot"
        + (f" (missing: {', '.join(missing)})" if missing else "")
        + "; launch/train.py runs an experiment config.")
  return module


def _check_plot_tags(plot, points) -> None:
  """plot.x, plot.series and plot.style name tags of every point (else the figures and paired
  comparisons would be left out after the whole sweep has run)."""
  tags = sorted(set.intersection(*(set(p.tags) for p in points))) if points else []
  for key in ("x", "series", "style"):
    if plot[key] not in tags:
      raise errors.ConfigError(f"plot.{key}={plot[key]!r} is not a tag of every point of this "
                               f"sweep; allowed: {', '.join(tags) or 'none'}."
                               f"{errors.close_matches(str(plot[key]), tags)}")


def main(_):  # errors.run_main refuses positional arguments
  config = _CONFIG.value
  module = _sweep_module(config_flags.get_config_filename(flags.FLAGS["config"]), config)
  # Devices first: a sweep config's points() may validate its points, and validating a mesh
  # counts the devices, which starts the backend (after which the CPU device count is fixed).
  _START(config.base.mesh)
  points = module.points(config)
  _check_plot_tags(config.plot, points)
  writer = sharding.is_writer()  # multi-host: process 0 prints and writes
  log = (lambda m: print(m, flush=True)) if writer else (lambda _: None)
  try:
    rows = sweep.run(config.base, points, _WORKDIR.value, log=log, recompute=_RECOMPUTE.value,
                     metric=config.plot.metric)
  except KeyboardInterrupt:
    done = len({r["point"] for r in sweep.read_results(
        os.path.join(_WORKDIR.value, "results.csv"))})
    stores = os.path.join(_WORKDIR.value, "checkpoints")
    started = os.listdir(stores) if os.path.isdir(stores) else []
    print(f"\ninterrupted: {done} finished point(s) saved in "
          f"{os.path.join(_WORKDIR.value, 'results.csv')}"
          + (f", and checkpoints of {len(started)} point(s) in {stores}" if started else "")
          + "; rerun the same command to resume.", file=sys.stderr)
    sys.exit(130)
  if not writer:
    return
  print()
  interval_name = evaluation.INTERVAL_NAMES[config.base.report.interval]
  printed = [("As printed: the sweep's table",
              sweep.table(rows, config.plot.metric, interval_name=interval_name))]
  print(printed[0][1])
  note = module.plot_note(config) if hasattr(module, "plot_note") else ""
  subtitle = sweep.describe(config.base, points, x=config.plot.x, note=note)
  criterion = config.base.honest_set_options.worst_case.criterion
  paths = sweep.plot(rows, _WORKDIR.value, x=config.plot.x, series=config.plot.series,
                     style=config.plot.style, metric=config.plot.metric, subtitle=subtitle,
                     worst_criterion=criterion, log=log)
  ids = [sweep.point_id(sweep.apply_overrides(config.base, p.overrides)) for p in points]
  series_keys = tuple(config.plot.get("series_keys", ())) or None
  compared = sweep.paired_comparisons(rows, _WORKDIR.value, series=config.plot.series,
                                      baseline=_COMPARE_BASELINE.value, only=ids,
                                      series_key=series_keys, log=log)
  if compared:
    sweep.write_comparisons(os.path.join(_WORKDIR.value, "comparisons.csv"), compared)
    print(f"\nPaired comparisons ({config.plot.metric}; each {config.plot.series} against "
          f"{_COMPARE_BASELINE.value or 'the first'} at the same other tags, over the same "
          "draws; all metrics in comparisons.csv)")
    print(sweep.comparison_table(compared, config.plot.metric))
    printed.append(("As printed: the paired comparisons",
                    sweep.comparison_table(compared, config.plot.metric)))
  theory = sweep.theory_table(rows)
  if theory:
    legend = ("bound: robust D-GD with the published κ; tightness = bound / measured over "
              "valid draws; viol = valid draws with bound < measured; E[err|b=f]: at the worst "
              "case's b, E[err] all b: unconditioned")
    print(f"\nTheory beside experiment ({legend})")
    print(theory)
    printed.append(("Theory beside experiment", f"{legend[0].upper()}{legend[1:]}.\n\n{theory}"))
    paths += sweep.plot_theory(
        rows, _WORKDIR.value, x=config.plot.x, series=config.plot.series,
        style=config.plot.style, subtitle=subtitle, log=log, worst_criterion=criterion)
  report = report_sweeps.for_config(module.__name__)
  if report is not None:  # the sweep's own analysis (e.g. fedjax_robust/report/sweeps/mu_aware.py)
    own = []
    def own_log(message):  # printed, and kept for report.html
      log(message)
      own.append(message)
    paths += report(config, rows, _WORKDIR.value, set(ids), log=own_log)
    printed.append((f"The sweep's own report ({module.__name__})", "\n".join(own)))
  command = html.rerun_command(sys.argv, default_config=_DEFAULT_CONFIG, workdir=_WORKDIR.value,
                               root=ROOT)
  report_path = html.write_sweep_report(
      config, rows, _WORKDIR.value, paths, command, point_ids=ids, subtitle=subtitle,
      comparisons=compared, compare_baseline=_COMPARE_BASELINE.value,
      interval_name=interval_name, printed=printed,
      name=os.path.relpath(
          os.path.realpath(config_flags.get_config_filename(flags.FLAGS["config"])),
          os.path.realpath(ROOT)))
  print(f"\nwrote {os.path.join(_WORKDIR.value, 'results.csv')}, timings.csv, points/<id>.json"
        + (", comparisons.csv" if compared else "") +
        "".join(f", {os.path.basename(p)}"
                + (" (+ .txt caption)" if os.path.exists(sweep.caption_path(p)) else "")
                for p in paths) + f", {os.path.basename(report_path)}\nreport: {report_path} "
        "(open it in a browser)")


if __name__ == "__main__":
  errors.run_main(main, _DEFAULT_CONFIG)
