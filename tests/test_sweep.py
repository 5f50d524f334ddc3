"""Resumable sweeps: an interrupted sweep, rerun, gives the table of an uninterrupted one, byte
for byte; damaged point files are recomputed; grids from the command line; tables and plots."""

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
import types

import ml_collections
import numpy as np
import pytest

from fedjax_robust import config as config_lib
from fedjax_robust import results
from fedjax_robust import store
from fedjax_robust import sweep
from conftest import config_module
from tiny_config import get_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sweep_core():
  return config_module("sweep_core")


def points():
  return sweep.product(sweep.axis("aggregator", ["mean", "trimmed_mean"]),
                       sweep.axis("p", [0.1, 0.3], key="honest_set_options.bernoulli.p"))


def base():
  c = get_config()
  c.honest_set = "bernoulli"
  c.num_samples = 3
  return c


def values(rows):
  """Rows as sortable tuples; NaN (an undefined statistic, e.g. a median CI from 4 draws) as the
  string 'nan', so equal files compare equal."""
  return sorted((r["point"], r["metric"], r["statistic"],
                 "nan" if isinstance(r["value"], float) and math.isnan(r["value"]) else r["value"])
                for r in rows if r["metric"] != "seconds")


def test_interrupted_sweep_resumes_without_loss(tmp_path):
  logs = []
  partial = sweep.run(base(), points(), str(tmp_path / "a"), log=logs.append, stop_after=2)
  assert len({r["point"] for r in partial}) == 2
  resumed = sweep.run(base(), points(), str(tmp_path / "a"), log=logs.append)
  assert "2 already done, 2 to run" in logs[-3]
  whole = sweep.run(base(), points(), str(tmp_path / "b"), log=lambda _: None)
  assert values(resumed) == values(whole)
  again = sweep.run(base(), points(), str(tmp_path / "b"), log=logs.append)
  assert "4 already done, 0 to run" in logs[-1] and values(again) == values(whole)
  on_disk = sweep.read_results(str(tmp_path / "b" / "results.csv"))
  assert values(on_disk) == values(whole)
  assert len([f for f in os.listdir(tmp_path / "b" / "points") if f.endswith(".npz")]) == 4
  assert {r["aggregator"] for r in on_disk} == {"mean", "trimmed_mean"}
  paths = sweep.plot(on_disk, str(tmp_path / "b"), x="p", series="aggregator", style="p")
  assert all(os.path.exists(p) for p in paths) and len(paths) == 5


def test_a_rerun_with_another_grid_returns_its_own_points_and_keeps_the_others(tmp_path):
  """Rows of a point outside the current grid (an earlier grid's, with tags the current one no
  longer has) stay in results.csv but are not returned: the sweep's table, plots and report
  show its own points (the table crashed on the missing tag before)."""
  workdir = str(tmp_path)
  first = points()[:1]
  sweep.run(base(), first, workdir, log=lambda _: None)
  path = os.path.join(workdir, "results.csv")
  on_disk = sweep.read_results(path)
  foreign = [{"point": "0" * 16, "metric": r["metric"], "statistic": r["statistic"],
              "value": r["value"], "old_axis": "x"} for r in on_disk]
  store.write_csv(path, on_disk + foreign, store.RESULTS_FIELDS[1:])
  rows = sweep.run(base(), first, workdir, log=lambda _: None)
  assert {r["point"] for r in rows} == {r["point"] for r in on_disk}
  assert "0" * 16 in {r["point"] for r in sweep.read_results(path)}
  table = sweep.table(rows)
  assert "old_axis" not in table and first[0].tags["aggregator"] in table


def test_bad_points_fail_before_any_work(tmp_path):
  bad = [sweep.Point({"x": 1}, {"honest_set_options.bernoulli.q": 0.1})]
  with pytest.raises(ValueError, match=r"'honest_set_options.bernoulli.q'.*'q' does not exist"):
    sweep.run(base(), bad, str(tmp_path))
  with pytest.raises(ValueError, match="one aggregator"):
    sweep.run(base(), [sweep.Point({}, {"aggregator": "mean,krum"})], str(tmp_path))
  assert not os.path.exists(tmp_path / "results.csv")


def _by_point(rows, workdir):
  return {r["point"]: os.path.join(workdir, "points", r["point"] + ".npz") for r in rows}


def test_point_file_is_on_disk_before_its_rows(tmp_path, monkeypatch):
  """A kill after a point's rows reach results.csv must not leave it without its npz: the npz
  is written (atomically) first."""
  workdir = str(tmp_path / "a")
  real = store.write_results

  def killed(path, rows):
    raise KeyboardInterrupt("killed while writing results.csv")

  monkeypatch.setattr(store, "write_results", killed)
  with pytest.raises(KeyboardInterrupt):
    sweep.run(base(), points()[:1], workdir, log=lambda _: None)
  assert not os.path.exists(os.path.join(workdir, "results.csv"))
  files = os.listdir(os.path.join(workdir, "points"))
  assert [f for f in files if f.endswith(".npz") and not f.startswith(".")] == [
      sweep.point_id(sweep.apply_overrides(base(), points()[0].overrides)) + ".npz"]
  monkeypatch.setattr(store, "write_results", real)
  rows = sweep.run(base(), points()[:1], workdir, log=lambda _: None)
  assert {r["point"] for r in rows} == {f[:-4] for f in files if f.endswith(".npz")}
  assert [f for f in os.listdir(os.path.join(workdir, "points")) if f.startswith(".")] == []


def test_missing_or_damaged_point_files_are_recomputed(tmp_path):
  workdir = str(tmp_path / "a")
  rows = sweep.run(base(), points(), workdir, log=lambda _: None)
  before = open(os.path.join(workdir, "results.csv"), "rb").read()
  paths = list(_by_point(rows, workdir).items())
  os.remove(paths[0][1])                                   # missing
  with open(paths[1][1], "r+b") as fh:                     # truncated
    fh.truncate(os.path.getsize(paths[1][1]) // 2)
  with open(paths[2][1], "wb") as fh:                      # not an npz at all
    fh.write(b"not a zip file")
  open(paths[3][1], "wb").close()                          # empty
  logs = []
  again = sweep.run(base(), points(), workdir, log=logs.append)
  warnings = [m for m in logs if "WARNING" in m]
  assert len(warnings) == 4 and all(any(pid in m for m in warnings) for pid, _ in paths)
  assert "0 already done, 4 to run" in logs[len(warnings)]
  assert values(again) == values(rows)
  assert open(os.path.join(workdir, "results.csv"), "rb").read() == before
  for _, path in paths:
    sweep.load_point(path)
  # plot() skips an unreadable file with a warning rather than crashing.
  with open(paths[1][1], "wb") as fh:
    fh.write(b"PK\x03\x04garbage")
  logs = []
  out = sweep.plot(sweep.read_results(os.path.join(workdir, "results.csv")), workdir, x="p",
                   series="aggregator", style="p", log=logs.append)
  assert len(out) == 5 and all(os.path.exists(p) for p in out)
  assert any(paths[1][0] in m and "WARNING" in m for m in logs)


def test_interrupted_and_resumed_results_csv_is_byte_identical(tmp_path):
  sweep.run(base(), points(), str(tmp_path / "whole"), log=lambda _: None)
  sweep.run(base(), points(), str(tmp_path / "resumed"), log=lambda _: None, stop_after=1)
  sweep.run(base(), points(), str(tmp_path / "resumed"), log=lambda _: None)
  whole = open(tmp_path / "whole" / "results.csv", "rb").read()
  assert open(tmp_path / "resumed" / "results.csv", "rb").read() == whole
  assert b"seconds" not in whole and b",count,64.0" not in whole and b",count,3\r\n" in whole
  timings = sweep.read_timings(str(tmp_path / "resumed" / "timings.csv"))
  assert len(timings) == 4 and all(t["compile_seconds"] >= 0 and t["run_seconds"] > 0
                                   for t in timings)
  assert [r["value"] for r in sweep.read_results(str(tmp_path / "whole" / "results.csv"))
          if r["statistic"] == "count"][:1] == [3]


def test_a_sweep_killed_mid_point_resumes_that_point_from_its_checkpoint(tmp_path,
                                                                        monkeypatch):
  """checkpoint.every_rounds in a sweep: the point running when the sweep dies resumes from its
  checkpoint (workdir/checkpoints/<point>), and results.csv is the uninterrupted sweep's."""
  from fedjax_robust import checkpoints  # pylint: disable=g-import-not-at-top
  c = base()
  c.training.eval_every = 1
  c.checkpoint.every_rounds = 2
  one = sweep.product(sweep.axis("aggregator", ["trimmed_mean"]))
  sweep.run(c, one, str(tmp_path / "whole"), log=lambda _: None)
  save, saves = checkpoints.Store.save, []

  def dies_after_the_third_save(self, *args, **kw):
    save(self, *args, **kw)
    saves.append(args)
    if len(saves) == 3:  # after round 6 of 10
      raise KeyboardInterrupt
  monkeypatch.setattr(checkpoints.Store, "save", dies_after_the_third_save)
  with pytest.raises(KeyboardInterrupt):
    sweep.run(c, one, str(tmp_path / "killed"), log=lambda _: None)
  pid = sweep.point_id(sweep.apply_overrides(c, one[0].overrides))
  assert sorted(os.listdir(tmp_path / "killed" / "checkpoints" / pid / "trimmed_mean")) == [
      "4", "6"]
  resumed = []
  monkeypatch.setattr(checkpoints.Store, "restore", lambda self, *a, _r=checkpoints.Store.restore:
                      resumed.append(_r(self, *a)) or resumed[-1])
  sweep.run(c, one, str(tmp_path / "killed"), log=lambda _: None)
  # Resumed after round 6; saved once more, after round 8 (round 10 ends the run: no save).
  assert resumed[0]["step"] == 6 and [a[1] for a in saves] == [2, 4, 6, 8]
  assert ((tmp_path / "killed" / "results.csv").read_bytes()
          == (tmp_path / "whole" / "results.csv").read_bytes())
  assert not os.path.exists(tmp_path / "killed" / "checkpoints" / pid)


def test_grid_axes_accept_comma_separated_strings():
  assert sweep.as_list("mean,nnm+trimmed_mean") == ["mean", "nnm+trimmed_mean"]
  assert sweep.as_list(("mean,trimmed_mean",)) == ["mean", "trimmed_mean"]
  assert sweep.as_list(("mean", "krum")) == ["mean", "krum"]
  assert sweep.as_list("(mean, 'bucketing+geometric_median')") == [
      "mean", "bucketing+geometric_median"]
  assert sweep.as_list("0.12,0.28", float) == [0.12, 0.28]
  assert sweep.as_list((0.1, 0.2), float) == [0.1, 0.2]
  assert sweep.as_list(0.3, float) == [0.3]
  with pytest.raises(ValueError, match="'x'"):
    sweep.as_list("0.1,x", float)
  with pytest.raises(ValueError, match="no values"):
    sweep.as_list(",")


def test_sweep_core_grid_from_command_line_overrides():
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  path = os.path.join(ROOT, "configs", "sweep_core.py")
  argv = ["sweep", f"--config={path}", "--config.grid.aggregators=mean,nnm+trimmed_mean",
          "--config.grid.corruption=0.12,0.28", "--config.grid.mu_h=independent,worst_case"]
  fv = flags.FlagValues()
  holder = config_flags.DEFINE_config_file("config", path, flag_values=fv, lock_config=True,
                                           sys_argv=argv)
  fv(argv)
  config = holder.value
  assert config.grid.aggregators == ("mean,nnm+trimmed_mean",)  # what config_flags gives
  module = sweep_core()
  pts = module.points(config)
  assert len(pts) == 2 * 2 * 2
  assert {p.tags["aggregator"] for p in pts} == {"mean", "nnm+trimmed_mean"}
  assert {p.tags["corruption"] for p in pts} == {0.12, 0.28}
  assert {p.tags["mu_H"] for p in pts} == {"independent", "worst_case"}
  for p in pts:  # what sweep.run checks before any work
    c = sweep.apply_overrides(config.base, p.overrides)
    assert "," not in c.aggregator
    config_lib.validate(c)
  assert {sweep.apply_overrides(config.base, p.overrides).f for p in pts} == {3, 7}
  # Plain strings work as well as tuples.
  config = module.get_config()
  config.grid = ml_collections.ConfigDict(
      {"aggregators": "nnm+trimmed_mean", "corruption": "0.2,0.28", "mu_h": "graph"})
  assert [(p.tags["aggregator"], p.tags["corruption"], p.tags["mu_H"])
          for p in module.points(config)] == [("nnm+trimmed_mean", 0.2, "graph"),
                                              ("nnm+trimmed_mean", 0.28, "graph")]


def test_table_shows_accuracies_in_percent_and_losses_raw():
  rows = [{"point": "a", "agg": "mean", "metric": m, "statistic": s, "value": v}
          for m, s, v in [("honest_accuracy", "mean", 0.918), ("honest_accuracy", "ci95", 0.032),
                          ("honest_accuracy", "count", 64), ("honest_loss", "mean", 0.25),
                          ("honest_loss", "ci95", 0.0125)]]
  acc = sweep.table(rows)
  assert "91.80 ± 3.20" in acc and "(%)" in acc.splitlines()[0]
  loss = sweep.table(rows, "honest_loss")
  assert "0.2500 ± 0.0125" in loss and "%" not in loss
  assert "64" in sweep.table(rows, "honest_accuracy", "count")
  assert "6400" not in sweep.table(rows, "honest_accuracy", "count")
  # With the configured (here asymmetric bootstrap) interval, the table shows it as [lo, hi].
  rows += [{"point": "a", "agg": "mean", "metric": "honest_accuracy", "statistic": s, "value": v}
           for s, v in (("mean_ci_low", 0.88), ("mean_ci_high", 0.93))]
  acc = sweep.table(rows, interval_name="bootstrap BCa 95% CI")
  assert "91.80 [88.00, 93.00]" in acc and "[bootstrap BCa 95% CI]" in acc.splitlines()[0]
  assert sweep.mean_intervals(rows, "honest_loss")["a"] == pytest.approx((0.2375, 0.2625))
  assert "draws" not in acc  # every draw counted: no note
  # A mean over fewer draws than the point ran (diverged draws left out) says so.
  rows += [{"point": "a", "agg": "mean", "metric": m, "statistic": s, "value": v}
           for m, s, v in (("honest_accuracy", "undefined", 63), ("diverged", "count", 63))]
  rows = [dict(r, value=1) if (r["metric"], r["statistic"]) == ("honest_accuracy", "count")
          else r for r in rows]
  assert "91.80 [88.00, 93.00]  (over 1 of 64 draws; 63 diverged)" in sweep.table(rows)


def _capture_titles(monkeypatch):
  """Records, for every figure saved, its file name, suptitle, axes titles and legend texts."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import figure  # pylint: disable=g-import-not-at-top
  saved = {}
  real = figure.Figure.savefig

  def savefig(fig, path, *args, **kwargs):
    flat = lambda t: " ".join(t.split())  # pylint: disable=unnecessary-lambda-assignment
    saved[os.path.basename(str(path))] = {
        "suptitle": flat(fig._suptitle.get_text()) if fig._suptitle else "",  # pylint: disable=protected-access
        "axes": [ax.get_title() for ax in fig.axes if ax.get_visible()],
        "legend": [t.get_text() for lg in [*fig.legends, *(ax.get_legend() for ax in fig.axes)]
                   if lg for t in lg.get_texts()]}
    return real(fig, path, *args, **kwargs)

  monkeypatch.setattr(figure.Figure, "savefig", savefig)
  return saved


def test_sweep_plots_say_what_was_run(tmp_path, monkeypatch):
  workdir = str(tmp_path)
  rows = sweep.run(base(), points(), workdir, log=lambda _: None)
  subtitle = sweep.describe(base(), points(), x="p", note="f is fixed here.")
  for part in ("μ_H=bernoulli(p per point)", "declared f=1", "attack alie(z=1)", "S=3",
               "rounds=10", "n=6", "f is fixed here."):
    assert part in subtitle, part
  saved = _capture_titles(monkeypatch)
  paths = sweep.plot(rows, workdir, x="p", series="aggregator", style="p", subtitle=subtitle)
  assert sorted(map(os.path.basename, paths)) == sorted(saved) == [
      "by_count.png", "correlation.png", "distributions.png", "expected_unconditioned.png",
      "expected_vs_worst.png"]
  # What was run and how to read each figure: in its caption file, not its title.
  captions = {os.path.basename(p): open(sweep.caption_path(p)).read() for p in paths}
  for name, caption in captions.items():
    assert subtitle in " ".join(caption.split()), name
    assert saved[name]["suptitle"] in " ".join(caption.split()), name
  assert "bars: 95% CI of the mean" in captions["expected_vs_worst.png"]
  assert "whiskers 5–95%" in " ".join(captions["distributions.png"].split())
  assert "95% CI" in captions["correlation.png"]
  assert "per realized Byzantine count b" in saved["by_count.png"]["suptitle"]
  # One panel per aggregator, the μ_H styles (here p) as lines within it.
  assert [t for t in saved["expected_vs_worst.png"]["axes"] if t] == [
      "aggregator=mean", "aggregator=trimmed_mean"]
  assert {"p=0.1", "p=0.3"} <= set(saved["expected_vs_worst.png"]["legend"])


def test_sweep_describe_gives_f_per_rate():
  pts = [sweep.Point({"p": p}, {"f": f, "honest_set_options.bernoulli.p": p})
         for p, f in [(0.3, 2), (0.1, 1)]]
  text = sweep.describe(base(), pts, x="p")
  assert "declared f=1 at p=0.1, 2 at 0.3" in text


def test_single_run_plot_title_says_what_was_run(tmp_path, monkeypatch):
  config = base()
  config.honest_set_options.bernoulli.p = 0.2
  rng = np.random.default_rng(0)
  exp = types.SimpleNamespace(config=config, job=config_lib.resolve(config), runs={
      name: types.SimpleNamespace(rounds=np.array([0, 5, 10]),
                                  metrics={"honest_accuracy": rng.random((3, 3))})
      for name in ("mean", "nnm+trimmed_mean")})
  saved = _capture_titles(monkeypatch)
  title = results.plot(exp, str(tmp_path / "honest_accuracy.png"))
  assert os.path.exists(tmp_path / "honest_accuracy.png")
  for part in ("μ_H=bernoulli(p=0.2)", "declared f=1", "attack alie(z=1)", "S=3 draws",
               "10 rounds"):
    assert part in title, part
  fig = saved["honest_accuracy.png"]
  assert " ".join(title.split()) == fig["suptitle"]
  assert "5–95% over draws" in fig["legend"]
  assert any("whiskers 5–95%" in t for t in fig["axes"])


# The smallest μ_H-aware sweep whose points() validates configs: the prior block, one law, one
# rule (its ×2 and ×0.5 priors: 2 points), 2 draws of 1 round.
_MU_AWARE_TINY = ("--config.grid.blocks=prior", "--config.grid.mu_h=independent",
                  "--config.grid.rules=trimmed_mean@quantile_f", "--config.base.num_samples=2",
                  "--config.base.training.num_rounds=1", "--config.base.training.eval_every=1",
                  "--config.base.model=logistic", "--config.base.estimators.honest_optimum=False")


@pytest.mark.slow
def test_sweep_launcher_sets_up_devices_before_building_points(tmp_path):
  """points() of configs/sweep_mu_aware.py validates its prior block's configs, and validating
  the default mesh ('draws') counts the devices, which starts the JAX backend: the launcher must
  make its CPU devices (one per core for mesh='draws') before that (it set them after, and
  crashed: 'jax_num_cpu_devices config should be updated before backends are initialized').
  sweep.run is replaced by a probe, so nothing trains: what is checked is that the launcher gets
  to the sweep with every point built and one device per core."""
  probe = textwrap.dedent(f"""
      import runpy, sys
      sys.path.insert(0, {ROOT!r})
      import jax
      from fedjax_robust import sweep
      def probe(base, points, workdir, **kwargs):
        print("PROBE", len(points), jax.device_count(), flush=True)
        return []
      sweep.run = probe
      sys.argv = ["launch/sweep.py", "--config=configs/sweep_mu_aware.py",
                  "--workdir={tmp_path}", *{list(_MU_AWARE_TINY)!r}]
      runpy.run_path("launch/sweep.py", run_name="__main__")
      """)
  out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                       timeout=300, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-2000:]
  assert f"PROBE 2 {len(os.sched_getaffinity(0))}\n" in out.stdout


@pytest.mark.slow
def test_mu_aware_sweep_runs_from_the_command_line(tmp_path):
  """The documented command of configs/sweep_mu_aware.py, at a tiny size and the default mesh:
  both points run and the report is printed."""
  out = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "sweep.py"),
                        "--config=configs/sweep_mu_aware.py", f"--workdir={tmp_path}",
                        *_MU_AWARE_TINY], capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "sweep: 2 points, 0 already done, 2 to run" in out.stdout
  assert {r["rule"] for r in sweep.read_results(str(tmp_path / "results.csv"))} == {
      "trimmed_mean@quantile_f|×2", "trimmed_mean@quantile_f|×0.5"}


@pytest.mark.slow
def test_progress_line_shows_the_tables_metric_by_its_name(tmp_path):
  """The progress line gave the in-sample accuracy as 'E[honest acc]' while every table reads
  the held-out one (96.69% against 95.50% for one point): it now gives the table's metric
  (`metric`; by default the held-out accuracy where measured), named as the table names it."""
  c = base()
  c.data.holdout_fraction = 0.25
  pts = points()[:1]
  for metric in (None, "honest_accuracy"):
    logs = []
    rows = sweep.run(c, pts, str(tmp_path), log=logs.append, metric=metric, recompute=True)
    shown = metric or "honest_holdout_accuracy"
    mean = next(r["value"] for r in rows if (r["metric"], r["statistic"]) == (shown, "mean"))
    at_f = {r["statistic"]: r["value"] for r in rows if r["metric"] == f"{shown}_given_b_eq_f"}
    progress = next(m for m in logs if m.startswith("[1/1]"))
    # At the worst case's b first (issue 35, item 1), then over all draws.
    at_f = f"{100 * at_f['mean']:.2f}%" if at_f["count"] else "n/a (no draw)"
    assert f": E[{shown} | b = f] {at_f}, over all draws {100 * mean:.2f}% in " in progress, (
        progress)


@pytest.fixture(scope="module")
def computed_sweep(tmp_path_factory):
  """The four points of `points()` computed once: (workdir, rows); each test damages a copy."""
  workdir = str(tmp_path_factory.mktemp("computed") / "w")
  return workdir, sweep.run(base(), points(), workdir, log=lambda _: None)


def _copy_of(computed, tmp_path) -> str:
  shutil.copytree(computed[0], tmp_path / "w")
  return str(tmp_path / "w")


def test_a_damaged_point_record_is_named_and_recomputed(computed_sweep, tmp_path):
  """A points/<id>.json cut short or missing was neither named nor recomputed: the point counted
  as done and its paired comparisons vanished (13 → 9 lines in the issue's run). Like a damaged
  npz, it is named in the log and its point recomputed."""
  workdir = _copy_of(computed_sweep, tmp_path)
  results_csv = os.path.join(workdir, "results.csv")
  whole = open(results_csv, "rb").read()
  compared = sweep.paired_comparisons(computed_sweep[1], computed_sweep[0], log=lambda _: None)
  pids = list(dict.fromkeys(r["point"] for r in computed_sweep[1]))
  cut, missing = sweep.config_path(workdir, pids[1]), sweep.config_path(workdir, pids[3])
  with open(cut, "r+") as fh:
    fh.truncate(os.path.getsize(cut) // 2)
  os.remove(missing)
  logs = []
  again = sweep.run(base(), points(), workdir, log=logs.append)
  warnings = [m for m in logs if "WARNING" in m]
  assert len(warnings) == 2 and cut in warnings[0] and missing in warnings[1], warnings
  assert "2 already done, 2 to run" in logs[2]
  assert values(again) == values(computed_sweep[1])
  assert open(results_csv, "rb").read() == whole
  assert len(sweep.paired_comparisons(again, workdir, log=lambda _: None)) == len(compared) > 0


def test_a_cut_results_csv_is_named_and_rebuilt_from_the_point_files(computed_sweep, tmp_path):
  """A results.csv cut mid-row made the resume crash (TypeError in read_results: the cut row's
  missing fields are None). It is named, rebuilt from the points' records (points/<id>.json
  keeps each point's rows) byte for byte, and the sweep goes on; a point whose record has no
  rows (written by older code) is named and recomputed."""
  workdir = _copy_of(computed_sweep, tmp_path)
  results_csv = os.path.join(workdir, "results.csv")
  whole = open(results_csv, "rb").read()
  middle = whole.index(b"\n", len(whole) // 2) + 8  # 8 characters into a row
  for damage in ("cut", "old record"):
    if damage == "old record":
      record = sweep.config_path(workdir, computed_sweep[1][0]["point"])
      with open(record) as fh:
        saved = json.load(fh)
      del saved["rows"]
      with open(record, "w") as fh:
        json.dump(saved, fh)
    with open(results_csv, "wb") as fh:
      fh.write(whole[:middle])
    with pytest.raises(sweep.DamagedResults, match="ends mid-row"):
      sweep.read_results(results_csv)
    logs = []
    again = sweep.run(base(), points(), workdir, log=logs.append)
    assert results_csv in logs[0] and "ends mid-row" in logs[0] and "rebuilt" in logs[0], logs
    if damage == "cut":
      assert "4 already done, 0 to run" in logs[1], logs
    else:
      assert record in logs[1] and "no rows" in logs[1], logs
      assert "3 already done, 1 to run" in logs[2], logs
    assert values(again) == values(computed_sweep[1])
    assert open(results_csv, "rb").read() == whole


def test_a_reused_point_carries_the_sweeps_current_tags(computed_sweep, tmp_path):
  """Tags label points; a sweep config that adds one (configs/sweep_mu_aware.py's `prior`)
  relabels the points it reuses, so its tables group them by it."""
  workdir = _copy_of(computed_sweep, tmp_path)
  relabelled = [sweep.Point({**p.tags, "prior": "correct"}, p.overrides) for p in points()]
  logs = []
  rows = sweep.run(base(), relabelled, workdir, log=logs.append)
  assert "4 already done, 0 to run" in logs[-1]
  on_disk = sweep.read_results(os.path.join(workdir, "results.csv"))
  assert {r["prior"] for r in rows} == {r["prior"] for r in on_disk} == {"correct"}
  assert {r["prior"] for r in sweep.read_timings(os.path.join(workdir, "timings.csv"))} == {
      "correct"}


def _capture_figures(monkeypatch):
  """For every figure saved: its suptitle, and per visible axes its title, y scale, x tick
  labels and the y data of its lines (errorbar and plot lines alike), by axes."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import figure  # pylint: disable=g-import-not-at-top
  saved = {}
  real = figure.Figure.savefig

  def savefig(fig, path, *args, **kwargs):
    fig.canvas.draw()
    saved[os.path.basename(str(path))] = {
        "suptitle": fig._suptitle.get_text() if fig._suptitle else "",  # pylint: disable=protected-access
        "axes": [{"title": ax.get_title(), "yscale": ax.get_yscale(),
                  "xticks": [t.get_text() for t in ax.get_xticklabels()],
                  "lines": [np.asarray(line.get_ydata(), float) for line in ax.get_lines()]}
                 for ax in fig.axes if ax.get_visible()],
        "legend": [t.get_text() for lg in [*fig.legends, *(ax.get_legend() for ax in fig.axes)]
                   if lg for t in lg.get_texts()]}
    return real(fig, path, *args, **kwargs)

  monkeypatch.setattr(figure.Figure, "savefig", savefig)
  return saved


def _law_rows(pid, agg, p, law, *, eq, le, gt, all_b, p_gt, identical=0):
  """A point's rows of honest_loss: its mean over all draws and given b = f, b ≤ f, b > f."""
  tags = {"aggregator": agg, "corruption": p, "mu_H": law}
  rows = []
  for metric, (mean, count) in (("honest_loss", all_b), ("honest_loss_given_b_eq_f", eq),
                                ("honest_loss_given_b_le_f", le),
                                ("honest_loss_given_b_gt_f", gt)):
    ci = (float("nan"),) * 2 if identical else (0.9 * mean, 1.1 * mean)
    rows += [{"point": pid, **tags, "metric": metric, "statistic": s, "value": v}
             for s, v in (("mean", mean), ("count", count), ("undefined", 0),
                          ("identical", identical if count else 0),
                          ("mean_ci_low", ci[0]), ("mean_ci_high", ci[1]))]
  rows += [{"point": pid, **tags, "metric": "byzantine_count", "statistic": s, "value": v}
           for s, v in (("p_exceeds_f", p_gt), ("declared_f", 2))]
  return rows


def _mixed_b_rows():
  """The issue's synthetic sweep in miniature: under one μ_H the unconditioned E[loss] is ~1e12
  (the draws with b > f), under another ~1; at b = f both are ~0.5–0.8, the worst case (b = f,
  identical draws) 0.65–0.75."""
  rows = []
  for k, agg in enumerate(("trimmed_mean", "geometric_median")):
    for p in (0.2, 0.3):
      rows += _law_rows(f"i{k}{p}", agg, p, "independent", eq=(0.50 + p, 20), le=(0.40 + p, 40),
                        gt=(3e12, 24), all_b=(1.2e12, 64), p_gt=0.375)
      rows += _law_rows(f"c{k}{p}", agg, p, "clustered", eq=(0.55 + p, 10), le=(0.45 + p, 50),
                        gt=(2.5, 14), all_b=(0.9 + p, 64), p_gt=0.219)
      rows += _law_rows(f"w{k}{p}", agg, p, "worst_case", eq=(0.45 + p, 16), le=(0.45 + p, 16),
                        gt=(float("nan"), 0), all_b=(0.45 + p, 16), p_gt=0.0, identical=1)
  return rows


def test_expected_is_set_against_the_worst_case_at_the_same_b(tmp_path, monkeypatch):
  """Issue 35, item 1: expected_vs_worst.png and the sweep's first table set the unconditioned
  E[loss] (1e12, from the draws with b > f) beside a worst case at b = f (0.45): the figure read
  'expected ≫ worst', an artefact. They now set E[· | b = f] and E[· | b ≤ f] against it, with
  P(b > f) beside; the unconditioned mean is drawn apart, labelled, without the worst case."""
  rows = _mixed_b_rows()
  text = sweep.table(rows, "honest_loss")
  header = text.splitlines()[1]
  assert header.index("E[· | b = f]") < header.index("P(b > f)") < header.index("E[·] all draws")
  line = next(l for l in text.splitlines() if "independent" in l and "0.2 " in l
              and "trimmed_mean" in l)
  cells = line.split()
  assert cells[3] == "0.7000" and "0.375" in cells and "1.200e+12" in cells, line
  assert line.index("0.7000") < line.index("1.200e+12")
  worst = next(l for l in text.splitlines() if "worst_case" in l and "0.2 " in l
               and "trimmed_mean" in l)
  assert "0.6500 (exact)§ (16)" in worst and "n/a (no draw)" in worst, worst
  assert results.EXACT_NOTE in text

  saved = _capture_figures(monkeypatch)
  logs = []
  paths = sweep.plot(rows, str(tmp_path), x="corruption", series="aggregator", style="mu_H",
                     metric="honest_loss", log=logs.append)
  fig = saved["expected_vs_worst.png"]
  main = [a for a in fig["axes"] if a["title"] == "aggregator=trimmed_mean"][0]
  drawn = np.concatenate(main["lines"])
  # E[· | b = f] (0.7, 0.8), E[· | b ≤ f] (0.6, 0.7) and the worst case (0.65, 0.75); never 1e12.
  for expected in ([0.7, 0.8], [0.6, 0.7], [0.65, 0.75]):
    assert any(np.allclose(l, expected) for l in main["lines"]), (expected, main["lines"])
  assert drawn.max() < 1 and main["yscale"] == "linear"
  p_axes = [a for a in fig["axes"] if any(np.allclose(l, [0.375, 0.375]) for l in a["lines"])]
  assert len(p_axes) == 2  # P(b > f) under each panel
  assert p_axes[0]["xticks"] == ["0.2", "0.3"]  # the grid's own values
  uncond = saved["expected_unconditioned.png"]["axes"][0]
  assert uncond["yscale"] == "log"  # 1.1 … 3e12: orders of magnitude
  assert any(np.allclose(l, [1.2e12, 1.2e12]) for l in uncond["lines"])
  assert not any(np.allclose(l, [0.65, 0.75]) for l in uncond["lines"])  # no worst case there
  # One-line titles; the details in a caption file beside each figure.
  for name, f in saved.items():
    assert "\n" not in f["suptitle"] and len(f["suptitle"]) < 110, (name, f["suptitle"])
  for path in paths:
    with open(sweep.caption_path(path)) as fh:
      assert fh.read().startswith(saved[os.path.basename(path)]["suptitle"])
  caption = open(sweep.caption_path(os.path.join(str(tmp_path), "expected_vs_worst.png"))).read()
  assert "b = f" in caption and "P(b > f)" in caption
  # One grid value: one tick at it (not 0.1900 … 0.2100 around it).
  sweep.plot([r for r in rows if r["corruption"] == 0.2], str(tmp_path), x="corruption",
             series="aggregator", style="mu_H", metric="honest_loss", log=logs.append)
  assert {tuple(a["xticks"]) for a in saved["expected_vs_worst.png"]["axes"]} - {()} == {("0.2",)}


def test_a_worst_case_is_drawn_as_one_only_against_what_its_search_maximized(tmp_path,
                                                                             monkeypatch):
  """Issue 35 (items 1–2, the figures' side): a set searched by the final loss is the worst case
  of the loss figure, but on an accuracy figure it is named as the set it is, no minimum of it."""
  assert sweep.worst_case_label("final_loss", "honest_loss") == "worst case (max final honest loss)"
  label = sweep.worst_case_label("final_loss", "honest_accuracy")
  assert "not a minimum of honest_accuracy" in label
  assert "not a maximum of theory_error" in sweep.worst_case_label("final_loss", "theory_error")
  assert "not" not in sweep.worst_case_label("theory_error", "theory_error")
  saved = _capture_figures(monkeypatch)
  sweep.plot(_mixed_b_rows(), str(tmp_path), x="corruption", series="aggregator", style="mu_H",
             metric="honest_loss", worst_criterion="heterogeneity", log=lambda _: None)
  assert any("proxy" in t and "not a maximum of honest_loss" in t
             for t in saved["expected_vs_worst.png"]["legend"])


def test_a_comparison_of_identical_draws_is_deterministic_in_the_sweep_table():
  """Issue 35, item 3: 'geometric_median − trimmed_mean +7.24 [7.24, 7.24] n/a <1e-4 16' for 16
  copies of one draw. The sweep's paired table gives the exact difference, 'deterministic', no
  CI and no p-value, and says why."""
  from fedjax_robust import evaluation  # pylint: disable=g-import-not-at-top
  c = {"mu_H": "worst_case", "a": "geometric_median", "b": "trimmed_mean",
       "metric": "honest_loss", "same_draws": True,
       **evaluation.paired_difference(np.full(16, 7.64), np.full(16, 0.40))}
  text = sweep.comparison_table([c], "honest_loss")
  line = text.splitlines()[1]
  assert "+7.2400 deterministic§" in line and "<1e-4" not in line and "[" not in line, line
  assert results.deterministic_note(True) in text


def test_the_theory_error_is_given_at_the_worst_cases_b(tmp_path, monkeypatch):
  """Issue 35, item 1, for the theory: the theory plot and table set the worst-case set's error
  beside E[error | valid] (b < f and b = f mixed) and E[error] over all draws (1e11 from b > f).
  The per-draw error is summarized given b = f, b ≤ f, b > f (against NumPy), the table gives
  E[err | b = f] and P(b > f), and the figure's worst case is drawn beside E[err | b = f] only."""
  rng = np.random.default_rng(0)
  counts = rng.integers(0, 5, size=40)
  error = np.where(counts > 2, 1e11, rng.uniform(0.01, 0.05, size=40))
  rows = sweep._theory_condition_rows("p", {"mu_H": "independent"}, error, counts, 2,  # pylint: disable=protected-access
                                      interval="normal", resamples=0)
  got = {(r["metric"], r["statistic"]): r["value"] for r in rows}
  for condition, select in (("b_eq_f", counts == 2), ("b_le_f", counts <= 2),
                            ("b_gt_f", counts > 2)):
    np.testing.assert_allclose(got[(f"theory_error_given_{condition}", "mean")],
                               error[select].mean(), rtol=1e-12)
    assert got[(f"theory_error_given_{condition}", "count")] == int(select.sum())
  # A sweep's rows: a random law and the worst case, with the theory block's rows.
  def point(pid, law, at_f, valid, all_b, p_gt):
    tags = {"aggregator": "trimmed_mean", "corruption": 0.2, "mu_H": law}
    return [{"point": pid, **tags, "metric": m, "statistic": st, "value": v} for m, st, v in (
        ("theory", "p_invalid", 0.3), ("theory", "violations", 0),
        ("theory_error_given_valid", "mean", valid), ("theory_bound", "mean", 1.2),
        ("theory_error", "mean", all_b), ("theory_error_given_b_eq_f", "mean", at_f),
        ("theory_error_given_b_le_f", "mean", valid), ("byzantine_count", "p_exceeds_f", p_gt),
        ("honest_loss", "mean", 0.4))]
  table_rows = (point("a", "independent", 0.05, 0.0335, 4.6e11, 0.375)
                + point("w", "worst_case", 0.0493, 0.0493, 0.0493, 0.0))
  text = sweep.theory_table(table_rows)
  header, line = text.splitlines()[0], text.splitlines()[1]
  assert "E[err|b=f]" in header and "P(b>f)" in header and "E[err] all b" in header
  assert "0.05" in line.split() and "0.375" in line.split() and "4.6e+11" in line.split()
  saved = _capture_figures(monkeypatch)
  sweep.plot_theory(table_rows, str(tmp_path), x="corruption", series="aggregator",
                    style="mu_H", log=lambda _: None)
  fig = saved["theory_vs_experiment.png"]
  bottom = fig["axes"][1]  # at b = f
  assert any(np.allclose(l, [0.05]) for l in bottom["lines"])       # E[err | b = f]
  assert any(np.allclose(l, [0.0493]) for l in bottom["lines"])     # the worst case's error
  assert not any(np.allclose(l, [0.0335]) for l in bottom["lines"])  # not E[err | valid]
  assert any("not a maximum of theory_error" in t for t in fig["legend"])


def test_a_theory_quantity_gets_its_per_draw_figures_from_the_point_files(tmp_path,
                                                                          monkeypatch):
  """theory_synthetic's headline is theory_error, which has no final_<metric> array and no
  E[· | b] rows: distributions.png and by_count.png read its per-draw array from points/<id>.npz
  (they were silently not drawn). E[· | b] is the mean over the draws with that b (NumPy)."""
  rng = np.random.default_rng(1)
  counts = rng.integers(0, 5, size=24)
  error = np.where(counts > 2, 1e11, rng.uniform(0.01, 0.05, size=24))
  tags = {"aggregator": "trimmed_mean", "corruption": 0.2, "mu_H": "independent"}
  rows = [{"point": "a", **tags, "metric": m, "statistic": st, "value": v} for m, st, v in (
      ("theory_error", "mean", error.mean()), ("theory_error_given_b_eq_f", "mean", 0.03),
      ("byzantine_count", "declared_f", 2), ("byzantine_count", "p_exceeds_f", 0.4))]
  os.makedirs(tmp_path / "points")
  sweep.save_point(sweep.point_path(str(tmp_path), "a"), tags=json.dumps(tags),
                   num_byzantine=counts, theory_error=error)
  saved = _capture_figures(monkeypatch)
  sweep.plot(rows, str(tmp_path), x="corruption", series="aggregator", style="mu_H",
             metric="theory_error", log=lambda _: None)
  assert "distributions.png" in saved and "by_count.png" in saved
  line = saved["by_count.png"]["axes"][0]["lines"][0]
  np.testing.assert_allclose(line, [error[counts == b].mean() for b in np.unique(counts)])


def test_a_worst_case_whose_draws_differ_is_drawn_with_its_interval(tmp_path, monkeypatch):
  """The maximum carries its uncertainty in the figure too: a worst case whose draws differ
  (random buckets, minibatches) gets its 95% CI bars in expected_vs_worst.png (it had none);
  one whose draws are copies of one run (test above) gets none."""
  rows = []
  for p in (0.2, 0.3):
    rows += _law_rows(f"i{p}", "trimmed_mean", p, "independent", eq=(0.50 + p, 20),
                      le=(0.40 + p, 40), gt=(3.0, 24), all_b=(1.2, 64), p_gt=0.375)
    rows += _law_rows(f"w{p}", "trimmed_mean", p, "worst_case", eq=(0.45 + p, 16),
                      le=(0.45 + p, 16), gt=(float("nan"), 0), all_b=(0.45 + p, 16), p_gt=0.0)
  saved = _capture_figures(monkeypatch)
  sweep.plot(rows, str(tmp_path), x="corruption", series="aggregator", style="mu_H",
             metric="honest_loss", log=lambda _: None)
  main = saved["expected_vs_worst.png"]["axes"][0]
  for bound in (0.9, 1.1):  # the rows' CI: 0.9 and 1.1 × the mean
    assert any(np.allclose(l, [bound * 0.65, bound * 0.75]) for l in main["lines"]), bound


def test_each_point_is_validated_once(tmp_path, monkeypatch):
  """Issue 30: every sweep point was validated twice (by the sweep, then by experiment.run).
  The sweep's validation gives the point's Job, which the run takes as it is."""
  calls = []
  real = config_lib._validate  # pylint: disable=protected-access
  monkeypatch.setattr(config_lib, "_validate", lambda c: calls.append(1) or real(c))
  grid = points()[:2]
  sweep.run(base(), grid, str(tmp_path), log=lambda _: None)
  assert len(calls) == len(grid)


def test_a_backdoor_points_file_keeps_its_per_evaluation_curves(tmp_path):
  """A point whose run measures a backdoor keeps, beside its final values, the curves of
  store.CURVE_METRICS over every evaluation (`eval_rounds`; the durability of a backdoor is read
  from them, report/sweeps/backdoors.py): their last row is the final value, diverged draws'
  accuracies NaN as in the final values; a point without a backdoor keeps final values only."""
  c = base()
  c.num_samples = 2
  pts = sweep.product(sweep.axis("attack", ["backdoor", "alie"]),
                      sweep.axis("aggregator", ["mean"]))
  sweep.run(c, pts, str(tmp_path), log=lambda _: None)
  for p in pts:
    pid = sweep.point_id(sweep.apply_overrides(c, p.overrides))
    arrays = sweep.load_point(sweep.point_path(str(tmp_path), pid))
    if p.tags["attack"] == "alie":
      assert not any(k.startswith("curve_") or k == "eval_rounds" for k in arrays)
      continue
    np.testing.assert_array_equal(arrays["eval_rounds"], [0, 5, 10])
    for metric in store.CURVE_METRICS:
      curve = arrays[f"curve_{metric}"]
      assert curve.shape == (3, 2)
      np.testing.assert_array_equal(curve[-1], arrays[f"final_{metric}"])
    assert np.all(np.isfinite(arrays["curve_backdoor_accuracy"]))  # no draw diverged here
