"""experiment.py's cache: what a cached run is keyed by, what a recomputation says, and the
honest-only baseline cached like a rule's run."""

import csv

import numpy as np

from conftest import tiny_config
from fedjax_robust import experiment
from fedjax_robust import results


def test_what_only_changes_the_report_does_not_change_a_runs_fingerprint():
  c = tiny_config()
  key = experiment.fingerprint(experiment.run_config(c, "mean"))
  printed = tiny_config()
  printed.report.interval, printed.report.bootstrap_resamples = "percentile", 99
  printed.report.compare, printed.estimators.honest_optimum = "none", True
  printed.theory.objectives = False
  printed.aggregator = "mean,geometric_median"  # the other rules are other runs
  assert experiment.fingerprint(experiment.run_config(printed, "mean")) == key
  for dotted, value in (("training.client_lr", 0.25), ("seed", 3), ("theory.enabled", True),
                        ("num_samples", 8)):
    changed = tiny_config()
    *path, leaf = dotted.split(".")
    node = changed
    for part in path:
      node = node[part]
    node[leaf] = value
    assert experiment.fingerprint(experiment.run_config(changed, "mean")) != key, dotted
  # The baseline's: not the attack or the rule, but the draws it trains on.
  masks = np.ones((4, 6), bool)
  masks[:, 0] = False
  ref = experiment.fingerprint(experiment.reference_config(c, masks))
  attacked = tiny_config()
  attacked.attack, attacked.f = "sign_flip", 2
  attacked.aggregator_options.trimmed_mean.beta = 0.3
  assert experiment.fingerprint(experiment.reference_config(attacked, masks)) == ref
  other = masks.copy()
  other[3] = [True, False, True, True, True, True]
  assert experiment.fingerprint(experiment.reference_config(c, other)) != ref


def test_config_changes_names_the_keys_that_differ():
  saved = {"report": {"interval": "bca"}, "training": {"client_lr": 0.5, "l2": 0.0},
           "mesh": ""}
  now = {"report": {"interval": "bca"}, "training": {"client_lr": 0.25, "l2": 0.0},
         "seed": 1}
  assert experiment.config_changes(saved, now) == (
      "mesh: '' → (absent); seed: (absent) → 1; training.client_lr: 0.5 → 0.25")
  assert experiment.config_changes(saved, saved).startswith("no key differs")


def test_a_report_option_reuses_the_cache_and_a_recomputation_names_the_changed_key(tmp_path):
  c = tiny_config()
  c.aggregator = "mean"
  first = experiment.run(c, workdir=str(tmp_path), log=lambda _: None)
  c.report.interval, c.report.compare = "percentile", "none"
  logs = []
  again = experiment.run(c, workdir=str(tmp_path), log=logs.append)
  assert any(line.startswith("mean: loaded from") for line in logs), logs
  assert not any("compiling" in line for line in logs)
  np.testing.assert_array_equal(again.runs["mean"].metrics["honest_loss"],
                                first.runs["mean"].metrics["honest_loss"])
  c.training.client_lr = 0.25
  logs.clear()
  experiment.run(c, workdir=str(tmp_path), log=logs.append)
  path = tmp_path / "runs" / "mean.npz"
  assert (f"cached run {path} was made with another configuration (training.client_lr: "
          "0.5 → 0.25); recomputing it.") in logs


def test_the_honest_only_baseline_is_cached_and_written_per_draw(tmp_path):
  c = tiny_config()
  c.aggregator = "mean"
  c.estimators.honest_optimum = True
  first = experiment.run(c, workdir=str(tmp_path), log=lambda _: None)
  assert (tmp_path / "runs" / "honest_only.npz").exists()
  logs = []
  again = experiment.run(c, workdir=str(tmp_path), log=logs.append)
  path = tmp_path / "runs" / "honest_only.npz"
  assert f"honest optimum L_S* of every draw: loaded from {path}" in logs
  assert not any("mean of the honest clients, no attack" in line for line in logs)
  for name, values in first.references["mean"].metrics.items():
    np.testing.assert_array_equal(again.references["mean"].metrics[name], values)
  assert again.references["mean"].provenance["seed"] == c.seed
  results.write_draws_csv(again, str(tmp_path / "draws.csv"))
  with open(tmp_path / "draws.csv") as fh:
    rows = list(csv.DictReader(fh))
  np.testing.assert_array_equal(
      [float(r["honest_only:honest_loss"]) for r in rows],
      np.asarray(first.references["mean"].metrics["honest_loss"][-1], np.float64))
