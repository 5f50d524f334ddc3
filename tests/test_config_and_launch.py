"""Bad input stops at once with a clear message; the launcher runs end to end and resumes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from conftest import tiny_config
from fedjax_robust import config as config_lib
from fedjax_robust import experiment
from fedjax_robust import results


def mutate(**changes):
  c = tiny_config()
  for dotted, value in changes.items():
    *path, leaf = dotted.split("__")
    node = c
    for p in path:
      node = node[p]
    node[leaf] = value
  return c


@pytest.mark.parametrize("changes,match", [
    ({"f": 3}, r"declared f=3 must satisfy 0 <= f < n/2 = 3.0 \(num_clients=6\)"),
    ({"aggregator": "mean,krumm"}, r"unknown aggregator 'krumm'; rules: .*trimmed_mean"),
    ({"attack": "alei"}, r"attack='alei' is outside its domain: one of .*'alie'.* Did you mean "
                         r"'alie'"),
    ({"data__name": "mnsit"}, r"data.name='mnsit' is outside its domain: .*Did you mean 'mnist'"),
    ({"model": "resnet"}, r"model='resnet' is outside its domain: one of 'cnn', 'linear_regression', 'logistic', 'mlp'"),
    ({"honest_set": "bernoulli", "honest_set_options__bernoulli__p": 1.5},
     r"honest_set_options.bernoulli.p=1.5 is outside its domain: a finite float in \[0, 1\]"),
    ({"num_samples": 0}, r"num_samples=0 is outside its domain: an int >= 1"),
    ({"training__num_rounds": 12}, r"num_rounds=12 must be a positive multiple of .*eval_every=5"),
    ({"training__server_optimizer": "adagradd"},
     r"training.server_optimizer='adagradd' is outside its domain: one of .*'adagrad'"),
])
def test_bad_config_values_are_rejected(changes, match):
  with pytest.raises(ValueError, match=match):
    config_lib.validate(mutate(**changes))


def test_unknown_key_in_a_config_file_is_rejected():
  c = tiny_config()
  c.unlock()
  c.aggregater = "mean"
  with pytest.raises(ValueError, match=r"config key 'aggregater' does not exist. Did you mean "
                                       r"'aggregator'.* Allowed here: .*aggregator"):
    config_lib.validate(c)
  c = tiny_config()
  c.data.unlock()
  c.data.alpah = 0.3
  with pytest.raises(ValueError, match=r"config key 'data.alpah' does not exist.*alpha"):
    config_lib.validate(c)


def test_rule_constraints_are_checked_before_any_work():
  c = mutate(num_clients=7, f=3, aggregator="nnm+trimmed_mean")
  config_lib.validate(c)  # n = 2f + 1 is allowed for the trimmed mean
  c = mutate(aggregator="geometric_median", aggregator_options__geometric_median__maxiter=3)
  config_lib.validate(c)


def test_alie_warns_when_its_z_is_zero():
  c = mutate(num_clients=10, f=2, attack="alie", attack_options__alie__z=None)
  with pytest.warns(UserWarning, match=r"ALIE's z from \(n, f\) = \(10, 2\) is"):
    config_lib.validate(c)


@pytest.mark.slow  # test_referee (summary.json, reuse, recompute) and the launcher test cover it
def test_experiment_writes_results_and_resumes(tmp_path):
  logs = []
  first = experiment.run(tiny_config(), workdir=str(tmp_path), log=logs.append)
  summary = results.write_all(first, str(tmp_path))
  for name in ("summary.json", "metrics.csv", "draws.csv", "honest_accuracy.png", "runs/mean.npz",
               "runs/nnm+trimmed_mean.npz"):
    assert os.path.exists(tmp_path / name), name
  on_disk = json.loads((tmp_path / "summary.json").read_text())
  assert set(on_disk["aggregators"]) == {"mean", "nnm+trimmed_mean"}
  assert on_disk["byzantine_count"]["p_exceeds_f"] == 0.0  # exactly one Byzantine per draw
  assert "run_seconds" not in on_disk["aggregators"]["mean"]  # timings in their own file
  assert json.loads((tmp_path / "timings.json").read_text())["mean"]["run_seconds"] > 0
  assert on_disk["aggregators"]["mean"]["draws_per_chunk"] == 8  # 4 draws padded to 8
  draws = (tmp_path / "draws.csv").read_text().strip().splitlines()
  assert draws[0].startswith("draw,num_byzantine,no_honest_majority,") and "mean:honest_loss" in draws[0]
  assert len(draws) == 1 + 4 and all(line.split(",")[1] == "1" for line in draws[1:])
  rows = (tmp_path / "metrics.csv").read_text().strip().splitlines()
  assert len(rows) == 1 + 2 * 3 * 5  # header + aggregators × evaluations × metrics
  table = results.format_table(summary)
  assert "nnm+trimmed_mean" in table and "P(b>f)" in table

  logs.clear()
  second = experiment.run(tiny_config(), workdir=str(tmp_path), log=logs.append)
  assert sum("loaded from" in line for line in logs) == 2  # nothing retrained
  for spec in first.runs:
    np.testing.assert_array_equal(second.runs[spec].metrics["honest_accuracy"],
                                  first.runs[spec].metrics["honest_accuracy"])
  changed = tiny_config()
  changed.training.client_lr = 0.25
  logs.clear()
  experiment.run(changed, workdir=str(tmp_path), log=logs.append)
  assert not any("loaded from" in line for line in logs)  # a different config is not reused


def run_launcher(tmp_path, *flags):
  return subprocess.run(
      [sys.executable, os.path.join(ROOT, "launch", "train.py"),
       f"--config={os.path.join(ROOT, 'tests', 'tiny_config.py')}", f"--workdir={tmp_path}",
       *flags], capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_launcher_end_to_end(tmp_path):
  out = run_launcher(tmp_path, "--config.aggregator=trimmed_mean", "--config.num_samples=3",
                     "--config.attack_options.alie.z=nan")
  assert out.returncode == 0, out.stderr[-2000:]
  assert "[100.0% of the training] trimmed_mean: chunk 1/1, round 10/10" in out.stdout
  assert "ETA after the next step (this one compiled)" in out.stdout
  assert "training done; next: writing the tables and files (not in the ETA)" in out.stdout
  assert "job: 3 draws × 10 rounds × 1 aggregator(s)" in out.stdout
  assert "E[honest loss]" in out.stdout and "P(b>f)" in out.stdout
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert list(summary["aggregators"]) == ["trimmed_mean"]
  assert summary["config"]["num_samples"] == 3


def test_launcher_rejects_a_key_that_does_not_exist(tmp_path):
  out = run_launcher(tmp_path, "--config.aggregatr=mean")
  assert out.returncode != 0
  assert "aggregatr" in out.stderr
