"""What results.py writes and draws, checked on hand-made runs (no training): diverged draws in
draws.csv and the plot, the honest-only baseline's per-draw values."""

import csv

import numpy as np

from conftest import tiny_config
from fedjax_robust import config as config_lib
from fedjax_robust import evaluation
from fedjax_robust import results
from fedjax_robust.experiment import AggregatorRun
from fedjax_robust.experiment import Experiment

ROUNDS = np.array([0, 5, 10])


def _run(spec, accuracy, loss, diverged):
  """A run of 4 draws over ROUNDS; `diverged` `[3, 4]` (1: non-finite parameters then)."""
  accuracy, loss = np.asarray(accuracy, np.float64), np.asarray(loss, np.float64)
  return AggregatorRun(spec=spec, rounds=ROUNDS, aux={}, compile_seconds=0.0, run_seconds=0.0,
                       metrics={"diverged": np.asarray(diverged, np.float64),
                                "honest_accuracy": accuracy, "honest_loss": loss,
                                "test_accuracy": accuracy})


def _experiment():
  """Two rules on 4 draws (one Byzantine client each) and the honest-only baseline. The mean's
  draw 1 diverges at round 5, its draw 2 at round 10 (their accuracies then those of NaN logits,
  ~10%); the trimmed mean's every draw diverged."""
  c = tiny_config()
  c.aggregator = "mean,trimmed_mean"
  c.estimators.honest_optimum = True
  masks = np.ones((4, c.num_clients), bool)
  masks[:, 0] = False
  mean = _run("mean",
              [[0.2, 0.2, 0.2, 0.2], [0.6, 0.1, 0.9, 0.5], [0.8, 0.1, 0.1, 0.9]],
              [[2.0, 2.0, 2.0, 2.0], [0.9, np.nan, 0.3, 1.1], [0.5, np.nan, np.nan, 0.4]],
              [[0, 0, 0, 0], [0, 1, 0, 0], [0, 1, 1, 0]])
  trimmed = _run("trimmed_mean", np.full((3, 4), 0.1), np.full((3, 4), np.nan),
                 [[0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]])
  honest = _run("honest_optimum", [[0.2] * 4, [0.7] * 4, [0.75, 0.85, 0.95, 0.8]],
                [[2.0] * 4, [0.8] * 4, [0.45, 0.35, 0.25, 0.3]], np.zeros((3, 4)))
  return Experiment(job=config_lib.resolve(c), data=None,
                    masks={"mean": masks, "trimmed_mean": masks},
                    runs={"mean": mean, "trimmed_mean": trimmed},
                    references={"mean": honest, "trimmed_mean": honest})


def _read(path):
  with open(path) as fh:
    rows = list(csv.DictReader(fh))
  return {k: [r[k] for r in rows] for k in rows[0]}


def test_draws_csv_leaves_diverged_draws_empty_and_flags_them(tmp_path):
  exp = _experiment()
  results.write_draws_csv(exp, str(tmp_path / "draws.csv"))
  cols = _read(tmp_path / "draws.csv")
  assert cols["mean:diverged"] == ["0", "1", "1", "0"]
  assert cols["mean:honest_accuracy"] == ["0.8", "", "", "0.9"]
  assert cols["mean:honest_loss"] == ["0.5", "", "", "0.4"]
  assert cols["trimmed_mean:diverged"] == ["1"] * 4
  assert cols["trimmed_mean:honest_accuracy"] == [""] * 4
  # A column's average is the table's: over the draws that did not diverge.
  summary = results.summarize(exp)["aggregators"]["mean"]
  column = np.array([float(v) for v in cols["mean:honest_accuracy"] if v])
  assert column.mean() == summary["honest_accuracy"]["mean"] == np.mean([0.8, 0.9])
  assert summary["diverged"]["count"] == sum(map(int, cols["mean:diverged"]))


def test_draws_csv_holds_the_honest_only_baseline_and_its_comparisons_recompute(tmp_path):
  exp = _experiment()
  results.write_draws_csv(exp, str(tmp_path / "draws.csv"))
  cols = _read(tmp_path / "draws.csv")
  assert cols["honest_only:diverged"] == ["0"] * 4
  assert cols["honest_only:honest_loss"] == ["0.45", "0.35", "0.25", "0.3"]
  # The paired comparison mean − honest_only, from the file alone (the unpaired draws empty,
  # as a diverged draw is in the comparison), is the summary's.
  rows = {r["metric"]: r for r in results.comparisons(exp)
          if r["a"] == "mean" and r["b"] == "honest_only"}
  for metric in ("honest_accuracy", "honest_loss"):
    a, b = cols[f"mean:{metric}"], cols[f"honest_only:{metric}"]
    diffs = np.array([float(x) - float(y) for x, y in zip(a, b) if x and y])
    expected = evaluation.paired_difference(
        np.array([float(x) if x else np.nan for x in a]), np.array([float(y) for y in b]))
    assert rows[metric]["pairs"] == len(diffs) == 2
    np.testing.assert_allclose(rows[metric]["mean"], diffs.mean(), rtol=1e-12)
    np.testing.assert_allclose(rows[metric]["mean"], expected["mean"], rtol=1e-12)


def test_each_rules_own_baseline_is_named_after_it(tmp_path):
  """Under a worst case searched per rule each rule's baseline trains on its own draws."""
  exp = _experiment()
  other = _run("honest_optimum", np.full((3, 4), 0.5), np.full((3, 4), 0.6), np.zeros((3, 4)))
  exp.references["trimmed_mean"] = other
  assert [name for name, _ in results.baselines(exp)] == ["mean.honest_only",
                                                          "trimmed_mean.honest_only"]
  results.write_draws_csv(exp, str(tmp_path / "draws.csv"))
  cols = _read(tmp_path / "draws.csv")
  assert cols["mean.honest_only:honest_loss"] == ["0.45", "0.35", "0.25", "0.3"]
  assert cols["trimmed_mean.honest_only:honest_loss"] == ["0.6"] * 4
  assert "honest_only:honest_loss" not in cols


def test_the_plot_says_how_many_draws_diverged_and_draws_the_others():
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  exp = _experiment()
  fig, _ = results.figure(exp)
  try:
    ax, box = fig.axes[:2]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[:2] == ["mean (2/4 diverged; the other 2 plotted)",
                          "trimmed_mean (4/4 diverged: nothing to plot)"]
    mean_line, trimmed_line = ax.get_lines()[:2]
    # The same two draws (0 and 3, never diverged) at every round: not draw 2 at round 5.
    np.testing.assert_allclose(mean_line.get_ydata(), [20.0, 55.0, 85.0])
    assert mean_line.get_linestyle() == "--" and len(trimmed_line.get_ydata()) == 0
    assert [t.get_text() for t in box.get_yticklabels()] == labels[:2]
  finally:
    plt.close(fig)


def test_expected_values_are_given_at_the_worst_cases_b_and_below_it():
  """Issue 35, item 1: the sweep set the unconditioned E[loss] (8.1e10–6.0e12, driven by the draws
  with b > f) beside a worst case at b = f (0.39–0.62). Each headline metric (and the excess
  loss) is summarized given b = f, b ≤ f and b > f, with its interval, against NumPy on the
  draws of each condition."""
  rng = np.random.default_rng(3)
  S, n, f = 48, 10, 2
  counts = rng.integers(0, 5, size=S)
  loss = rng.uniform(0.3, 0.7, size=(3, S))
  loss[-1, counts > f] = 1e12 * rng.uniform(1, 6, size=int(np.sum(counts > f)))
  accuracy = rng.uniform(0.5, 0.9, size=(3, S))
  run = AggregatorRun(spec="x", rounds=ROUNDS, aux={}, compile_seconds=0.0, run_seconds=0.0,
                      metrics={"honest_loss": loss, "honest_accuracy": accuracy,
                               "test_accuracy": accuracy, "diverged": np.zeros((3, S))})
  optimum = rng.uniform(0.1, 0.2, size=(3, S))
  reference = AggregatorRun(spec="x", rounds=ROUNDS, aux={}, compile_seconds=0.0,
                            run_seconds=0.0, metrics={"honest_loss": optimum})
  s = results.summarize_run(run, counts, num_clients=n, f=f, reference=reference,
                            interval="normal")
  final = {"honest_loss": loss[-1], "honest_accuracy": accuracy[-1],
           "honest_excess_loss": loss[-1] - optimum[-1]}
  for name, x in final.items():
    for cond, select in (("b_eq_f", counts == f), ("b_le_f", counts <= f),
                         ("b_gt_f", counts > f)):
      got = s[f"{name}_given_{cond}"]
      v = x[select]
      half = 1.959963984540054 * v.std(ddof=1) / np.sqrt(v.size)
      assert got["count"] == v.size, (name, cond)
      np.testing.assert_allclose(got["mean"], v.mean(), rtol=1e-12)
      np.testing.assert_allclose(got["mean_ci"], [v.mean() - half, v.mean() + half], rtol=1e-10)
  # At b = f the loss is of the worst case's order, the unconditioned mean is not.
  assert s["honest_loss_given_b_eq_f"]["mean"] < 1 < 1e11 < s["honest_loss"]["mean"]


def test_identical_draws_print_exact_values_without_intervals_or_tests():
  """Issue 35, item 3: at a worst-case point under deterministic training every draw is a copy
  of one run, yet the run table printed '−0.0077 [−0.0077, −0.0077] … p < 1e-4' for a paired
  difference. The table prints the exact values marked '(exact)§' and 'deterministic§', says
  why, and has no interval and no p-value for them."""
  c = tiny_config()
  c.aggregator = "mean,trimmed_mean"
  c.honest_set = "worst_case"
  c.estimators.honest_optimum = False
  S = 32
  masks = np.ones((S, c.num_clients), bool)
  masks[:, :c.f] = False
  copies = lambda acc, loss: AggregatorRun(  # pylint: disable=unnecessary-lambda-assignment
      spec="", rounds=ROUNDS, aux={}, compile_seconds=0.0, run_seconds=0.0,
      metrics={"diverged": np.zeros((3, S)), "honest_accuracy": np.full((3, S), acc),
               "honest_loss": np.full((3, S), loss), "test_accuracy": np.full((3, S), acc)})
  exp = Experiment(job=config_lib.resolve(c), data=None,
                   masks={"mean": masks, "trimmed_mean": masks},
                   runs={"mean": copies(0.51, 0.62), "trimmed_mean": copies(0.5023, 0.39)})
  summary = results.summarize(exp)
  text = results.format_table(summary)
  acc = next(x for x in summary["comparisons"] if x["metric"] == "honest_accuracy")
  assert acc["deterministic"] and acc["identical_draws"]
  row = next(line for line in text.splitlines() if line.startswith("trimmed_mean − mean"))
  assert "-0.77 deterministic§" in row and "<1e-4" not in row and "[" not in row, row
  assert results.deterministic_note(True) in text and results.EXACT_NOTE in text
  assert "‡" not in text  # no interval at all, not a substitute one
  table_row = next(line for line in text.splitlines() if line.startswith("trimmed_mean "))
  assert "0.3900 (exact)§" in table_row and "50.23 (exact)§" in table_row
  assert "[" not in table_row, table_row


def test_the_sweeps_own_reports_format_differences_and_means_without_pseudo_replication():
  """The helpers the configs' reports (sweep_rfa, sweep_deployed, sweep_dp_dimension,
  sweep_mu_aware) print with: a paired difference of copies of one run is its exact value,
  'deterministic§', and its sign counts; one with variance gets its paired-t CI (SciPy)."""
  import scipy.stats  # pylint: disable=g-import-not-at-top
  same = evaluation.paired_difference(np.full(8, 0.75), np.full(8, 0.5))
  assert results.difference_text(same, scale=100, digits=2) == "+25.00 deterministic§"
  assert results.difference_sign(same) == 1
  assert results.difference_sign(evaluation.paired_difference(np.full(8, 0.5),
                                                              np.full(8, 0.75))) == -1
  a = np.array([0.9, 0.7, 0.8, 0.6, 0.85])
  b = np.array([0.8, 0.75, 0.6, 0.55, 0.8])
  d = a - b
  half = scipy.stats.t.ppf(0.975, 4) * d.std(ddof=1) / np.sqrt(5)
  text = results.difference_text(evaluation.paired_difference(a, b))
  assert text == f"{d.mean():+.4f} [{d.mean() - half:+.4f}, {d.mean() + half:+.4f}]"
  assert results.difference_sign(evaluation.paired_difference(a, b)) == 0  # CI covers 0
  assert results.mean_text(0.5, float("nan"), float("nan"), identical=True) == "0.5000 (exact)§"
  assert results.mean_text(0.5, 0.4, 0.6, scale=100, digits=1) == "50.0 [40.0, 60.0]"
  notes = results.report_notes([text, "1.0 (exact)§", "+2 deterministic§"], True)
  assert notes == [results.EXACT_NOTE, results.deterministic_note(True)]
  assert results.report_notes([text]) == []
