"""The sweep configs' own reports (`fedjax_robust/report/sweeps/`): each config is data
(get_config(), points()) and its report, named by it, is found by `sweeps.for_config`; each
report's tables, CSV files and figures on hand-made points."""

import ast
import csv
import glob
import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.stats

from configs import sweep_dp_compression
from configs import sweep_dp_dimension
from configs import sweep_mu_aware
from configs import sweep_privacy
from fedjax_robust import results
from fedjax_robust import sweep
from fedjax_robust.report import sweeps
from fedjax_robust.report.sweeps import dp_compression
from fedjax_robust.report.sweeps import dp_dimension
from fedjax_robust.report.sweeps import mu_aware
from fedjax_robust.report.sweeps import privacy as privacy_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRIC = "honest_holdout_accuracy"


def test_configs_hold_no_report_and_each_sweep_report_is_found_by_its_config():
  """Issue 30: five config files held analysis and plotting code (a report() and matplotlib);
  configs are data now, and the launcher finds a sweep's report by the config's module name."""
  offenders = []
  for path in sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))):
    with open(path, encoding="utf-8") as fh:
      tree = ast.parse(fh.read())
    name = os.path.basename(path)
    offenders += [f"{name}: def report" for node in tree.body
                  if isinstance(node, ast.FunctionDef) and node.name == "report"]
    for node in ast.walk(tree):
      modules = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                 [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
      offenders += [f"{name}: imports {m}" for m in modules if m.split(".")[0] == "matplotlib"]
  assert not offenders, offenders
  for name in ("deployed", "dp_compression", "dp_dimension", "mu_aware", "rfa"):
    report = sweeps.for_config(f"configs.sweep_{name}")
    assert (report.__module__, report.__name__) == (f"fedjax_robust.report.sweeps.{name}",
                                                    "report")
  # a study config on a sweep's points gets that sweep's report
  assert sweeps.for_config("configs.study_mu_aware") is mu_aware.report
  # configs without a report of their own; a file loaded from elsewhere ("sweep_config")
  for name in ("configs.sweep_core", "configs.theory_digits", "configs.default", "sweep_config",
               "sweep_mu_aware", "configs.rfa"):
    assert sweeps.for_config(name) is None, name


def test_the_launcher_runs_the_report_of_the_config_whose_points_it_built(tmp_path):
  """launch/sweep.py imports a config of configs/ as configs.<name>, the module its report
  reads: the points configs/sweep_mu_aware.py refuses while building them (under the prior ×2,
  the clustered law's quantile f = 13 of 25 leaves no honest majority) are listed by the report.
  sweep.run is replaced by a probe, so nothing trains."""
  probe = textwrap.dedent(f"""
      import runpy, sys
      sys.path.insert(0, {ROOT!r})
      from fedjax_robust import sweep
      def probe(base, points, workdir, **kwargs):
        print("PROBE", [p.tags["rule"] for p in points], flush=True)
        return []
      sweep.run = probe
      sys.argv = ["launch/sweep.py", "--config=configs/sweep_mu_aware.py",
                  "--workdir={tmp_path}", "--config.grid.blocks=prior",
                  "--config.grid.mu_h=clustered", "--config.grid.rules=trimmed_mean@quantile_f",
                  "--config.base.num_samples=2", "--config.base.training.num_rounds=1",
                  "--config.base.training.eval_every=1"]
      runpy.run_path("launch/sweep.py", run_name="__main__")
      """)
  out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                       timeout=300, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "PROBE ['trimmed_mean@quantile_f|×0.5']\n" in out.stdout
  refused = [line for line in out.stdout.splitlines() if line.startswith("mu_aware report: ")]
  assert len(refused) == 1 and "'trimmed_mean@quantile_f|×2'): server_prior: the 0.95-quantile " \
      "of b under the prior is f=13, which leaves no honest majority" in refused[0], out.stdout


def _dp_dimension_pair(tmp_path, acc, identical=0):
  """The point files and rows of one line of configs/sweep_dp_dimension.py at one d: privacy
  (p1) and its no-privacy control (p0), held-out accuracies `acc[pid]` over 4 draws."""
  os.makedirs(tmp_path / "points")
  rows = []
  for pid, setting in (("p0", "no_dp"), ("p1", "dp")):
    tags = {"task": "digits", "d": "985", "setting": setting, "rule": "mean",
            "line": f"digits:{setting}"}
    sweep.save_point(sweep.point_path(str(tmp_path), pid), tags=json.dumps(tags),
                     num_byzantine=np.array([1, 2, 0, 3]), honest_masks=np.ones((4, 5), bool),
                     final_honest_holdout_accuracy=acc[pid])
    with open(sweep.config_path(str(tmp_path), pid), "w") as fh:
      json.dump({"config": {"privacy": {"kind": setting}, "seed": 0}}, fh)
    rows += [{**tags, "point": pid, "metric": m, "statistic": st, "value": v}
             for m, st, v in [("honest_holdout_accuracy", "mean", acc[pid].mean()),
                              ("honest_holdout_accuracy", "mean_ci_low", acc[pid].mean() - 0.1),
                              ("honest_holdout_accuracy", "mean_ci_high", acc[pid].mean() + 0.1),
                              ("honest_holdout_accuracy", "identical", identical),
                              ("diverged", "share", 0.125 if pid == "p1" else 0.0)]]
  return rows


def test_the_d_sweep_reports_identical_draws_as_exact_values(tmp_path):
  """Issue 35, item 3, in the d sweep's own report: draws that are copies of one run (p0, p1
  each one value) printed a CI of them and a paired-t CI of '+nan'; they read '(exact)§' and
  'deterministic§' with the footnotes."""
  acc = {"p0": np.full(4, 0.875), "p1": np.full(4, 0.625)}
  logs = []
  rows = _dp_dimension_pair(tmp_path, acc, identical=1)
  dp_dimension.report(sweep_dp_dimension.get_config(), rows, str(tmp_path), {"p0", "p1"},
                      log=logs.append)
  line = next(l for l in logs if l.startswith("digits") and " dp " in l)
  assert line.split("d=")[1].strip() == ("985: 0.375 (exact)§ (Δ +0.25 deterministic§) (12% "
                                         "diverged)"), line
  text = "\n".join(logs)
  assert "nan" not in text and results.EXACT_NOTE in text
  assert results.deterministic_note(True) in text


def test_the_d_sweep_reports_error_with_its_divergence(tmp_path):
  """The d sweep's report turns held-out accuracy into error (CI bounds swapped) and carries the
  diverged share; privacy's cost is paired with the no-privacy control (paired t, SciPy)."""
  c = sweep_dp_dimension.get_config()
  # Two points of one line at one d: privacy (p1) and its no-privacy control (p0), 4 draws.
  acc = {"p0": np.array([0.9, 0.8, 0.85, 0.95]), "p1": np.array([0.7, 0.5, 0.75, 0.85])}
  rows = _dp_dimension_pair(tmp_path, acc)
  dp_dimension.report(c, rows, str(tmp_path), {"p0", "p1"}, log=lambda *_: None)
  got = {r["setting"]: r for r in csv.DictReader(open(tmp_path / "dp_dimension.csv"))}
  assert [float(got["dp"][k]) for k in ("error", "error_ci_low", "error_ci_high",
                                         "diverged_share")] == pytest.approx([0.3, 0.2, 0.4, 0.125])
  # Privacy's cost in error = −(accuracy difference), its paired-t CI with bounds swapped.
  diff = acc["p0"] - acc["p1"]
  half = scipy.stats.t.ppf(0.975, 3) * diff.std(ddof=1) / 2
  assert [float(got["dp"][k]) for k in ("dp_excess", "dp_excess_ci_low", "dp_excess_ci_high")
          ] == pytest.approx([diff.mean(), diff.mean() - half, diff.mean() + half])
  assert got["no_dp"]["dp_excess"] == "nan"
  assert (tmp_path / "dp_error_vs_dimension.png").stat().st_size > 0


def test_the_d_sweep_plot_title_is_inside_the_figure_with_one_task(tmp_path, monkeypatch):
  """dp_error_vs_dimension.png with one task (`--config.grid.tasks=synthetic`) is one panel wide:
  its title, wrapped to that width, must lie inside the figure as saved (it was one line per
  sentence, wider than the figure and cut on both sides: 'ivacy (solid), …')."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  figures = []
  monkeypatch.setattr(plt, "close", figures.append)  # keep the figure as it was saved
  entries = [{"task": "synthetic", "d": d, "setting": setting, "rule": "trimmed_mean",
              "error": 1.0 + d / 1e5, "error_ci_low": 0.9, "error_ci_high": 1.2 + d / 1e5,
              "diverged_share": 0.0, "dp_excess": 0.1 if setting == "dp" else math.nan,
              "dp_excess_ci_low": 0.05, "dp_excess_ci_high": 0.15, "dp_excess_pairs": 8}
             for d in (100, 1000) for setting in ("dp", "no_dp")]
  path = dp_dimension._plot(entries, str(tmp_path),  # pylint: disable=protected-access
                           sweep_dp_dimension.plot_note(sweep_dp_dimension.get_config()))
  assert os.path.getsize(path) > 0 and len(figures) == 1
  fig = figures[0]
  fig.canvas.draw()
  title = fig._suptitle  # pylint: disable=protected-access
  inside = title.get_window_extent().transformed(fig.transFigure.inverted())
  assert inside.x0 >= 0 and inside.y0 >= 0 and inside.x1 <= 1 and inside.y1 <= 1, inside
  assert "Privacy (solid)" in title.get_text()
  with open(sweep.caption_path(path), encoding="utf-8") as fh:  # the details: in the caption
    assert "ALIE z = 3" in fh.read()


def test_the_privacy_compression_table_has_a_column_per_rule_that_ran(tmp_path):
  """configs/sweep_dp_compression.py with `--config.grid.rules=trimmed_mean`: the report's
  columns are the rules that ran (it printed a `nan [nan, nan]` column for NNM + trimmed mean,
  which never ran)."""
  c = sweep_dp_compression.get_config()
  c.grid.rules = ("trimmed_mean",)
  points = sweep_dp_compression.points(c)
  os.makedirs(tmp_path / "points")
  rows = []
  for i, p in enumerate(points[:2]):  # (none, none) and (none, top_k)
    pid = f"p{i}"
    with open(sweep.config_path(str(tmp_path), pid), "w") as fh:
      json.dump({"config": {}, **({"compression": {"bits_per_round": 1e4,
                                                  "uncompressed_bits_per_round": 1e5}}
                                 if i else {})}, fh)
    rows += [{**p.tags, "point": pid, "metric": "honest_holdout_accuracy", "statistic": st,
              "value": v} for st, v in (("mean", 0.9 - i / 10), ("mean_ci_low", 0.85 - i / 10),
                                        ("mean_ci_high", 0.95 - i / 10))]
  logs = []
  dp_compression.report(c, rows, str(tmp_path), {"p0", "p1"}, log=logs.append)
  with open(tmp_path / "dp_compression.csv") as fh:
    table = list(csv.DictReader(fh))
  assert [k for k in table[0] if k.endswith("_mean")] == ["trimmed_mean_mean"]
  assert [float(t["trimmed_mean_mean"]) for t in table] == pytest.approx([0.9, 0.8])
  printed = "\n".join(logs)
  assert "nnm+trimmed_mean" not in printed and "nan" not in printed
  assert "90.00 [ 85.00,  95.00]" in printed and "80.00 [ 75.00,  85.00]" in printed


# Hand-made points of one setting (digits α = 1, ALIE, independent): label -> (f the record's
# resolved config holds, per-draw values on the tuning draws or None, on the evaluation draws).
# On the tuning draws trimmed_mean is best at f = 5 and is the best classic rule; on the
# evaluation draws trimmed_mean at f = 3 and the geometric median would be.
_TUNE_DRAWS = np.array([0.93, 0.95, 0.97, 0.95])     # means below: 0.90, 0.93, 0.95, 0.94
_EVAL_DRAWS = np.array([0.90, 0.92, 0.90, 0.92])
POINTS = {
    "mean": (5, _TUNE_DRAWS - 0.05, _EVAL_DRAWS - 0.11),
    "trimmed_mean[f=3]": (3, _TUNE_DRAWS - 0.02, _EVAL_DRAWS + 0.06),
    "trimmed_mean[f=5]": (5, _TUNE_DRAWS, _EVAL_DRAWS),
    "geometric_median": (5, _TUNE_DRAWS - 0.01, _EVAL_DRAWS + np.array([0.05, 0.04, 0.06, 0.05])),
    "trimmed_mean@quantile_f": (6, None, _EVAL_DRAWS + np.array([0.01, 0.0, 0.02, 0.01])),
}


@pytest.fixture
def hand_made(tmp_path):
  c = sweep_mu_aware.get_config()
  c.base.num_samples = 4
  workdir = str(tmp_path)
  os.makedirs(tmp_path / "points")
  eval_masks = np.ones((4, 25), bool)
  eval_masks[:, :3] = False
  tune_masks = np.ones((4, 25), bool)
  tune_masks[:, 20:24] = False
  rows, ids = [], set()
  for label, (f, tune_values, eval_values) in POINTS.items():
    for block, values, masks in (("tune", tune_values, tune_masks),
                                 ("main", eval_values, eval_masks)):
      if values is None:
        continue
      pid = f"{block}-{label}"
      aggregator = label.split("[")[0].split("@")[0]
      tags = {"block": block, "task": "digits_a1", "threat": "alie", "mu_H": "independent",
              "prior": "correct", "rule": label}
      sweep.save_point(sweep.point_path(workdir, pid), tags=json.dumps(tags),
                       num_byzantine=(~masks).sum(1), honest_masks=masks,
                       **{f"final_{METRIC}": values})
      with open(sweep.config_path(workdir, pid), "w") as fh:
        json.dump({"config": {"aggregator": aggregator, "f": f}}, fh)
      rows += [{"point": pid, **tags, "metric": METRIC, "statistic": "mean",
                "value": float(np.mean(values))},
               {"point": pid, **tags, "metric": METRIC, "statistic": "cvar90",
                "value": float(np.min(values))}]
      ids.add(pid)
  logs = []
  paths = mu_aware.report(c, rows, workdir, ids, log=logs.append)
  with open(os.path.join(workdir, "mu_aware_gains.csv")) as fh:
    header, *lines = [line.rstrip("\n").split(",") for line in fh]
  table = {line[header.index("rule")]: dict(zip(header, line)) for line in lines}
  return table, "\n".join(logs), paths


def test_the_best_classic_rule_is_the_best_on_the_tuning_draws(hand_made):
  table, _, _ = hand_made
  # Every rule is compared with trimmed_mean at f = 5 (best on the tuning draws, 0.95), not with
  # trimmed_mean at f = 3 or the geometric median (better on the evaluation draws).
  assert {t["best_classic"] for t in table.values()} == {"trimmed_mean"}
  assert {t["best_classic_f"] for t in table.values()} == {"5"}
  # trimmed_mean runs its f tuned on the tuning draws (5), not the evaluation draws' best (3).
  assert set(table) == {"mean", "trimmed_mean", "geometric_median", "trimmed_mean@quantile_f"}
  assert table["trimmed_mean"]["f"] == "5"
  assert table["mean"]["f"] == table["geometric_median"]["f"] == ""   # they take no f
  # The differences are over the evaluation draws, paired, against trimmed_mean at f = 5.
  reference = POINTS["trimmed_mean[f=5]"][2]
  for rule, label in (("geometric_median", "geometric_median"), ("mean", "mean"),
                      ("trimmed_mean@quantile_f", "trimmed_mean@quantile_f")):
    assert float(table[rule]["gain"]) == pytest.approx(np.mean(POINTS[label][2] - reference))
    assert float(table[rule]["mean"]) == pytest.approx(np.mean(POINTS[label][2]))
    assert table[rule]["same_draws"] == "True"
  # The classic rules' tuning means are the tuning draws' (the prior rule was not tuned).
  assert float(table["trimmed_mean"]["tuning_mean"]) == pytest.approx(0.95)
  assert float(table["geometric_median"]["tuning_mean"]) == pytest.approx(0.94)
  assert table["trimmed_mean@quantile_f"]["tuning_mean"] == ""
  # A classic rule may now beat the best classic rule on the evaluation draws.
  assert float(table["geometric_median"]["gain"]) > 0


def test_the_printed_table_says_each_rules_f(hand_made):
  _, text, _ = hand_made
  lines = {line.split()[4]: line for line in text.splitlines()
           if line.startswith("main ") and " vs " in line}
  assert set(lines) == {"mean", "trimmed_mean", "geometric_median", "trimmed_mean@quantile_f"}
  assert lines["trimmed_mean"].split()[5] == "f=5"
  assert lines["trimmed_mean@quantile_f"].split()[5] == "f=6"   # the prior's quantile
  assert lines["mean"].split()[5] == lines["geometric_median"].split()[5] == "–"  # no f
  assert all("vs trimmed_mean f=5" in line for line in lines.values())
  assert lines["trimmed_mean"].endswith("(itself)")   # no difference of a rule from itself
  assert "picked on the tuning draws" in text
  # The tuning is printed: every classic rule's candidates with their tuning means, the pick
  # marked.
  assert "trimmed_mean: f=3 93.00, f=5 95.00*" in text


def test_a_difference_without_variance_reads_deterministic_and_counts_by_its_sign(hand_made):
  """Issue 35, item 3, in this sweep's own report: the mean is 0.11 below the best classic rule
  in every draw (a difference without variance). It printed '[  +nan,   +nan]' and counted as a
  tie; it reads '-11.00 deterministic§' with the footnote, and counts as a loss."""
  table, log, _ = hand_made
  assert table["mean"]["deterministic"] == "True"
  line = next(l for l in log.splitlines() if l.split()[:5] == ["main", "digits_a1", "alie",
                                                              "independent", "mean"])
  assert line.endswith("-11.00 deterministic§"), line
  assert "nan" not in log and results.deterministic_note(False) in log
  summary = next(l for l in log.splitlines() if l.startswith("mean "))
  assert summary.split()[-3:] == ["0", "0", "1"], summary  # wins, ties, losses


def test_the_regret_summary_counts_the_groups_block_apart():
  """The groups block (issue 29) is summarized in its own section, never mixed into the main +
  tasks summary; wins/losses by the paired CI."""
  def row(block, rule, gain, low, high):
    return {"block": block, "rule": rule, "gain": gain, "ci_low": low, "ci_high": high,
            "n": 32, "std": 0.01}
  table = [row("main", "posterior_filter", -0.01, -0.02, 0.0),
           row("groups", "posterior_trim", 0.02, 0.01, 0.03),
           row("groups", "posterior_trim", 0.04, 0.03, 0.05),
           row("groups", "posterior_filter", -0.03, -0.05, -0.01)]
  text = mu_aware.regret_summary(table).splitlines()
  groups_at = next(i for i, line in enumerate(text) if "groups block" in line)
  main = text[1:groups_at]
  assert [line.split()[0] for line in main] == ["posterior_filter"]
  trim = next(line for line in text[groups_at:] if line.startswith("posterior_trim"))
  # 2 settings, mean +3.00 points, worst +2.00, 2 wins, 0 ties, 0 losses
  assert trim.split()[1:] == ["2", "+3.00", "+2.00", "2", "0", "0"]
  pf = next(line for line in text[groups_at:] if line.startswith("posterior_filter"))
  assert pf.split()[1:] == ["1", "-3.00", "-3.00", "0", "0", "1"]


def test_a_prior_rule_is_also_compared_with_the_classic_rule_it_modifies(hand_made):
  """sweep_mu_aware.FAMILY: trimmed_mean@quantile_f against the trimmed mean at its tuned f (5,
  picked on the tuning draws), paired over the evaluation draws: +0.01 exactly by
  construction of the hand-made draws ([+0.01, 0, +0.02, +0.01]); a classic rule has none."""
  table, text, _ = hand_made
  row = table["trimmed_mean@quantile_f"]
  assert row["family"] == "trimmed_mean[f=5]"
  diff = POINTS["trimmed_mean@quantile_f"][2] - POINTS["trimmed_mean[f=5]"][2]
  assert float(row["family_gain"]) == pytest.approx(diff.mean())
  half = 3.182446305284263 * diff.std(ddof=1) / 2   # t(0.975, 3) · s / √4
  assert float(row["family_ci_low"]) == pytest.approx(diff.mean() - half, rel=1e-6)
  assert table["geometric_median"]["family"] == ""
  assert "What the prior adds to the rule it modifies" in text
  assert "trimmed_mean@quantile_f" in text.split("What the prior adds")[1]


def test_the_privacy_report_pairs_central_with_local_at_the_same_epsilon(tmp_path):
  """configs/sweep_privacy.py's report on hand-made points: central − local is the paired mean
  difference over the draws with the paired t interval (SciPy here), per rule at the same ε; a
  secagg − none difference that is the same in every draw is printed as deterministic, without
  an interval; each cell's ε is the one its record holds."""
  c = sweep_privacy.get_config()
  workdir = str(tmp_path)
  os.makedirs(tmp_path / "points")
  metric = c.plot.metric
  masks = np.ones((5, 24), bool)
  base = np.array([0.5, 0.625, 0.75, 0.5, 0.625])  # exact in binary: equal differences stay equal
  values = {("local", 8.0): base, ("central", 8.0): base + np.array([0.2, 0.1, 0.15, 0.3, 0.1]),
            ("none", 0.0): base + 0.25, ("secagg", 0.0): base + 0.125}
  rows, ids = [], set()
  for (mechanism, eps), v in values.items():
    pid = f"{mechanism}-{eps:g}"
    tags = {"threat": "alie_p0.1", "mu_H": "independent", "sampling": 1.0, "mechanism": mechanism,
            "epsilon": eps, "rule": "mean"}
    sweep.save_point(sweep.point_path(workdir, pid), tags=json.dumps(tags),
                     num_byzantine=(~masks).sum(1), honest_masks=masks,
                     **{f"final_{metric}": v})
    with open(sweep.config_path(workdir, pid), "w") as fh:
      json.dump({"config": {}, **({"privacy": {"epsilon": eps - 0.01, "noise_multiplier": 2.0}}
                                 if eps else {})}, fh)
    rows += [{"point": pid, **tags, "metric": metric, "statistic": st, "value": val}
             for st, val in (("mean", float(v.mean())), ("mean_ci_low", float(v.min())),
                             ("mean_ci_high", float(v.max())), ("identical", 0.0))]
    ids.add(pid)
  logs = []
  privacy_report.report(c, rows, workdir, ids, log=logs.append)
  with open(tmp_path / "privacy_differences.csv") as fh:
    diffs = {(d["a"], d["b"]): d for d in csv.DictReader(fh)}
  d = values[("central", 8.0)] - values[("local", 8.0)]
  half = scipy.stats.t.ppf(0.975, 4) * d.std(ddof=1) / np.sqrt(5)
  central = diffs[("central", "local")]
  assert float(central["mean"]) == pytest.approx(d.mean())
  assert float(central["ci_low"]) == pytest.approx(d.mean() - half)
  assert float(central["ci_high"]) == pytest.approx(d.mean() + half)
  assert diffs[("secagg", "none")]["deterministic"] == "True"
  printed = "\n".join(logs)
  assert "secagg − none (no noise), mean: -12.50 deterministic§" in printed
  with open(tmp_path / "privacy.csv") as fh:
    table = {(t["mechanism"], float(t["target_epsilon"])): t for t in csv.DictReader(fh)}
  assert float(table[("central", 8.0)]["epsilon"]) == pytest.approx(7.99)
  assert table[("none", 0.0)]["epsilon"] == "inf"


# ------------------------------------------------------------ configs/backdoors.py (issue 32)
def _read_csv(path):
  with open(path) as fh:
    return list(csv.DictReader(fh))


def _same(a, b):
  """Equal floats, NaN equal to NaN (an undefined interval on both sides)."""
  a, b = float(a), float(b)
  return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-9, abs=1e-12)


def test_the_backdoor_config_is_found_and_refuses_unknown_grid_values():
  """configs/backdoors.py (not named sweep_<name>) has its report through REPORTS; points() is
  μ_H × attack × defence with the two laws of the same mean p, and a value outside the planned
  names is a ConfigError naming the axis, the value and what is allowed."""
  from configs import backdoors  # pylint: disable=g-import-not-at-top
  from fedjax_robust import errors  # pylint: disable=g-import-not-at-top
  from fedjax_robust.report.sweeps import backdoors as backdoors_report  # pylint: disable=g-import-not-at-top
  assert sweeps.for_config("configs.backdoors") is backdoors_report.report
  c = backdoors.get_config()
  pts = backdoors.points(c)
  assert len(pts) == 2 * len(backdoors.ATTACKS) * len(backdoors.DEFENCES)
  clustered = next(p.overrides for p in pts if p.tags["mu_H"] == "clustered")
  assert (clustered["honest_set_options.clusters.pi"] * clustered["honest_set_options.clusters.q1"]
          == pytest.approx(backdoors.P))
  assert 2 * c.base.f < c.base.num_clients and c.base.data.root_examples > 0
  clip = next(p for p in pts if p.tags["defence"] == "norm_clipping").overrides
  assert clip["aggregator"] == "static_clipping+mean"
  for axis, bad in (("attack", "trojan"), ("defence", "krum"), ("mu_h", "graph")):
    c = backdoors.get_config()
    c.grid[axis] = (bad,)
    with pytest.raises(errors.ConfigError, match=rf"grid\.{axis}='{bad}' is outside its domain: "
                       r"one of '"):
      backdoors.points(c)


@pytest.fixture(scope="module")
def backdoor_sweep(tmp_path_factory):
  """configs/backdoors.py's points at a tiny size, really trained: model replacement under
  norm clipping, both laws, 4 draws, 4 rounds evaluated every 2; the attackers stop after round
  2 (training.attack_rounds = 2). Returns (config, workdir, rows, ids, printed)."""
  from configs import backdoors  # pylint: disable=g-import-not-at-top
  from fedjax_robust.report.sweeps import backdoors as backdoors_report  # pylint: disable=g-import-not-at-top
  c = backdoors.get_config()
  c.base.num_samples = 4
  c.base.training.num_rounds = 4
  c.base.training.eval_every = 2
  c.base.mesh = ""
  c.grid.attack = ("model_replacement",)
  c.grid.defence = ("norm_clipping",)
  c.base.training.attack_rounds = 2
  workdir = str(tmp_path_factory.mktemp("backdoors"))
  pts = backdoors.points(c)
  rows = sweep.run(c.base, pts, workdir, log=lambda _: None)
  ids = {sweep.point_id(sweep.apply_overrides(c.base, p.overrides)) for p in pts}
  printed = []
  paths = backdoors_report.report(c, rows, workdir, ids, log=printed.append)
  assert [os.path.basename(p) for p in paths] == ["backdoors.csv", "backdoors_by_b.csv",
                                                  "backdoors_durability.csv"]
  return c, workdir, rows, ids, "\n".join(printed)


def test_the_backdoor_report_gives_each_points_stored_draws(backdoor_sweep):
  """The headline table against the stored per-draw values, recomputed here: E[backdoor
  success] at the attack's last evaluated round R = 2 (the stored curve's) their mean, CVaR90
  the mean of the worst ⌈0.1·K⌉ draws (the highest success; and evaluation.cvar), E[main
  accuracy] at the last round and its CI those results.csv holds for test_accuracy."""
  from fedjax_robust import evaluation  # pylint: disable=g-import-not-at-top
  _, workdir, rows, ids, printed = backdoor_sweep
  table = {t["point"]: t for t in _read_csv(os.path.join(workdir, "backdoors.csv"))}
  assert set(table) == ids
  for pid, t in table.items():
    arrays = sweep.load_point(sweep.point_path(workdir, pid))
    success = arrays["curve_backdoor_accuracy"][1].astype(np.float64)   # round 2 = R
    assert int(t["backdoor_round"]) == 2 and not np.isnan(success).any()
    assert float(t["backdoor_mean"]) == pytest.approx(success.mean(), rel=1e-12)
    k = math.ceil(0.1 * success.size)
    worst = np.sort(success)[::-1][:k].mean()
    assert float(t["backdoor_cvar90"]) == pytest.approx(worst, rel=1e-12)
    assert float(t["backdoor_cvar90"]) == pytest.approx(evaluation.cvar(success, 0.9))
    stored = {r["statistic"]: r["value"] for r in rows
              if r["point"] == pid and r["metric"] == "test_accuracy"}
    for ours, theirs in (("main_mean", "mean"), ("main_ci_low", "mean_ci_low"),
                         ("main_ci_high", "mean_ci_high")):
      assert _same(t[ours], stored[theirs]), (ours, t[ours], stored[theirs])
    line = next(line for line in printed.splitlines()
                if line.startswith(f"{t['mu_H']:12s} model_replacement  norm_clipping"))
    assert f"{100 * worst:.2f}" in line


def test_the_backdoor_report_conditions_on_every_realized_b(backdoor_sweep):
  """E[backdoor success | b]: one row per realized b, no other, with its draws and the mean of
  the stored values of those draws."""
  _, workdir, _, _, printed = backdoor_sweep
  by_b = _read_csv(os.path.join(workdir, "backdoors_by_b.csv"))
  table = _read_csv(os.path.join(workdir, "backdoors.csv"))
  for t in table:
    arrays = sweep.load_point(sweep.point_path(workdir, t["point"]))
    counts, success = arrays["num_byzantine"], arrays["curve_backdoor_accuracy"][1]
    mine = [r for r in by_b if r["mu_H"] == t["mu_H"]]
    assert [int(r["b"]) for r in mine] == sorted(set(counts.tolist()))
    for r in mine:
      at = counts == int(r["b"])
      assert int(r["draws"]) == at.sum()
      assert float(r["backdoor_mean"]) == pytest.approx(success[at].astype(np.float64).mean())
      assert int(r["b_gt_f"]) == (int(r["b"]) > int(t["f"]))
  assert "E[backdoor success | b]" in printed


def test_the_backdoor_report_gives_durability_after_the_attack_stops(backdoor_sweep):
  """Durability rows: every evaluation at t ≥ R = 2 (t − R clean rounds since the last attacked
  round), the mean over draws of the stored curve there; the curve's last row is the stored
  final value (the sweep keeps a backdoor point's curves)."""
  _, workdir, _, ids, printed = backdoor_sweep
  durability = _read_csv(os.path.join(workdir, "backdoors_durability.csv"))
  for pid in ids:
    arrays = sweep.load_point(sweep.point_path(workdir, pid))
    tags = json.loads(str(arrays["tags"]))
    np.testing.assert_array_equal(arrays["eval_rounds"], [0, 2, 4])
    curve = arrays["curve_backdoor_accuracy"].astype(np.float64)
    np.testing.assert_array_equal(curve[-1], arrays["final_backdoor_accuracy"])
    np.testing.assert_array_equal(arrays["curve_test_accuracy"][-1],
                                  arrays["final_test_accuracy"])
    mine = [r for r in durability if r["mu_H"] == tags["mu_H"]]
    assert [(int(r["round"]), int(r["rounds_since_attack"])) for r in mine] == [(2, 0), (4, 2)]
    for r, k in zip(mine, (1, 2)):
      assert float(r["backdoor_mean"]) == pytest.approx(curve[k].mean(), rel=1e-12)
      assert float(r["main_mean"]) == pytest.approx(
          arrays["curve_test_accuracy"][k].astype(np.float64).mean(), rel=1e-12)
  assert "Durability: backdoor success" in printed


def test_the_backdoor_report_says_what_is_exact_saturated_or_undefined(tmp_path):
  """On hand-made points: copies of one honest set print '(exact)§' without a CI; different
  honest sets all at 100% print '(every draw)†' without a CI; a b no draw realized has no row;
  a b whose draws all diverged has its draws and an undefined mean ('n/a'); a point attacked in
  every round has no durability row, one without stored curves is named."""
  from configs import backdoors  # pylint: disable=g-import-not-at-top
  from fedjax_robust.report.sweeps import backdoors as backdoors_report  # pylint: disable=g-import-not-at-top
  c = backdoors.get_config()
  workdir = str(tmp_path)
  os.makedirs(tmp_path / "points")
  n = 6
  varied = np.ones((4, n), bool)
  varied[0, :1] = varied[1, :3] = varied[2, :3] = varied[3, :1] = False   # b = 1, 3, 3, 1
  same = np.tile(varied[:1], (4, 1))                                       # b = 1 in every draw
  nan = float("nan")
  spec = {  # pid: (defence, masks, backdoor values, attack_rounds, curves kept)
      "saturated": ("mean", varied, [1.0, 1.0, 1.0, 1.0], 2, True),
      "copies": ("flame", same, [0.25] * 4, 0, True),
      "diverged": ("trimmed_mean", varied, [0.5, nan, nan, 0.25], 2, False)}
  rows = []
  for pid, (defence, masks, values, attack_rounds, curves) in spec.items():
    tags = {"mu_H": "independent", "attack": "square", "defence": defence}
    values = np.asarray(values)
    extra = ({"eval_rounds": np.array([0, 2, 4]),
              "curve_backdoor_accuracy": np.stack([values * 0, values, values])}
             if curves else {})
    sweep.save_point(sweep.point_path(workdir, pid), tags=json.dumps(tags),
                     num_byzantine=(~masks).sum(1), honest_masks=masks,
                     final_backdoor_accuracy=values, final_test_accuracy=np.full(4, 0.875),
                     provenance="{}", **extra)
    with open(sweep.config_path(workdir, pid), "w") as fh:
      json.dump({"tags": tags, "provenance": {}, "config": {
          "f": 1, "training": {"num_rounds": 4, "attack_rounds": attack_rounds},
          "report": {"interval": "bca", "bootstrap_resamples": 999}}}, fh)
    rows.append({"point": pid, **tags, "metric": "test_accuracy", "statistic": "mean",
                 "value": 0.875})
  printed = []
  backdoors_report.report(c, rows, workdir, set(spec), log=printed.append)
  text = "\n".join(printed)
  lines = {pid: next(line for line in printed if f" {spec[pid][0]:14s} " in line
                     and line.startswith("independent")) for pid in spec}
  assert "100.00 (every draw)†" in lines["saturated"] and "[" not in lines["saturated"]
  assert backdoors_report.EVERY_DRAW_NOTE in text
  assert "25.00 (exact)§" in lines["copies"] and results.EXACT_NOTE in text
  assert "87.50 (exact)§" in lines["copies"]       # main accuracy: copies too
  assert "87.50 (every draw)†" in lines["saturated"]
  assert "(2 of 4 draws diverged: left out)" in lines["diverged"]
  by_b = _read_csv(tmp_path / "backdoors_by_b.csv")
  got = {(r["defence"], int(r["b"])): r for r in by_b}
  assert set(got) == {("mean", 1), ("mean", 3), ("flame", 1), ("trimmed_mean", 1),
                      ("trimmed_mean", 3)}                           # b = 0, 2 never realized
  assert (got[("trimmed_mean", 3)]["draws"], got[("trimmed_mean", 3)]["backdoor_defined"]) == (
      "2", "0")
  assert math.isnan(float(got[("trimmed_mean", 3)]["backdoor_mean"]))
  assert float(got[("trimmed_mean", 1)]["backdoor_mean"]) == pytest.approx(0.375)
  assert "b=3*: n/a (2)" in text
  durability = _read_csv(tmp_path / "backdoors_durability.csv")
  assert [(r["defence"], r["rounds_since_attack"], float(r["backdoor_mean"]))
          for r in durability] == [("mean", "0", 1.0), ("mean", "2", 1.0)]
  assert "point diverged" in text and "no per-evaluation curves" in text


def test_the_backdoor_report_pairs_each_defence_with_no_defence_on_the_same_draws():
  """backdoors_differences.csv: a defence minus the first defence of its μ_H × attack, paired
  draw by draw (the mean of the differences, NumPy), not where the draws differ, and without a
  CI where every difference is the same."""
  from fedjax_robust.report.sweeps import backdoors as backdoors_report  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  masks = rng.uniform(size=(8, 5)) < 0.8
  base = rng.uniform(size=8)
  other = rng.uniform(size=8)
  draws = {("independent", "square"): {
      "mean": (masks, None, base, base + 0.1),
      "flame": (masks, None, other, base),
      "zeroed": (masks, None, base - 0.25, base + 0.1),
      "elsewhere": (~masks, None, other, base)}}
  rows = {r["defence"]: r for r in backdoors_report._differences(draws)}
  assert set(rows) == {"flame", "zeroed"}            # other draws: not compared
  assert rows["flame"]["backdoor_mean"] == pytest.approx(np.mean(other - base), rel=1e-12)
  assert rows["flame"]["main_mean"] == pytest.approx(-0.1, rel=1e-9)
  assert rows["flame"]["baseline"] == "mean" and rows["flame"]["backdoor_pairs"] == 8
  assert rows["flame"]["backdoor_ci_low"] < rows["flame"]["backdoor_mean"]
  assert rows["zeroed"]["backdoor_deterministic"] == 1
  assert np.isnan(rows["zeroed"]["backdoor_ci_low"])
  assert "deterministic§" in rows["zeroed"]["backdoor_text"]
