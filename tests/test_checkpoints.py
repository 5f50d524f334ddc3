"""Checkpoints inside an aggregator's run (fedjax_robust/checkpoints.py, issue 34): a run killed
with SIGKILL at a random round resumes from its last checkpoint and writes the same draws.csv,
byte for byte, as the run that was never interrupted; a store made by another run is refused."""

import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from conftest import tiny_config
from fedjax_robust import checkpoints
from fedjax_robust import experiment
from fedjax_robust import provenance
from fedjax_robust.errors import ConfigError

# One aggregator, 16 draws in 2 chunks of 8, 8 rounds evaluated (and checkpointed) every round:
# 16 evaluation steps, the kill lands in either chunk.
_FLAGS = ("--config.aggregator=nnm+trimmed_mean", "--config.num_samples=16",
          "--config.num_samples_per_chunk=8", "--config.training.num_rounds=8",
          "--config.training.eval_every=1")


def _launch(workdir, *flags, popen=False):
  argv = [sys.executable, os.path.join(ROOT, "launch", "train.py"),
          f"--config={os.path.join(ROOT, 'tests', 'tiny_config.py')}", f"--workdir={workdir}",
          *_FLAGS, *flags]
  if popen:
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=ROOT)
  return subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_sigkill_at_a_random_round_then_resume_gives_the_same_draws_csv(tmp_path):
  whole = _launch(tmp_path / "whole", "--config.report.tensorboard=True")
  assert whole.returncode == 0, whole.stderr[-2000:]
  # (the launcher's TensorBoard option: one event file per rule, its command printed)
  assert f"tensorboard: tensorboard --logdir {tmp_path / 'whole' / 'tensorboard'}" in whole.stdout
  assert [len(os.listdir(tmp_path / "whole" / "tensorboard" / d)) for d in os.listdir(
      tmp_path / "whole" / "tensorboard")] == [1]
  # A random evaluation step (1..15 of 16): the child is killed when it reports it, i.e. just
  # after that step's checkpoint or somewhere in the next step (mid-compute or mid-save).
  kill_at = int(np.random.default_rng().integers(1, 16))
  chunk, rnd = 1 + (kill_at - 1) // 8, 1 + (kill_at - 1) % 8
  marker = f"chunk {chunk}/2, round {rnd}/8"
  proc = _launch(tmp_path / "killed", "--config.checkpoint.every_rounds=1", popen=True)
  seen = []
  for line in proc.stdout:
    seen.append(line)
    if marker in line:
      proc.send_signal(signal.SIGKILL)
      break
  proc.communicate(timeout=120)
  assert proc.returncode == -signal.SIGKILL, f"killed at {marker}: {''.join(seen)[-2000:]}"
  assert not os.path.exists(tmp_path / "killed" / "draws.csv")
  resumed = _launch(tmp_path / "killed", "--config.checkpoint.every_rounds=1")
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "nnm+trimmed_mean: resumed from its checkpoint after round" in resumed.stdout, (
      f"killed at {marker}; {resumed.stdout[-2000:]}")
  for name in ("draws.csv", "metrics.csv"):
    assert ((tmp_path / "killed" / name).read_bytes()
            == (tmp_path / "whole" / name).read_bytes()), f"{name}, killed at {marker}"
  # The run is saved whole: its checkpoints are deleted.
  assert not os.path.exists(tmp_path / "killed" / "checkpoints")


def _config(every=1):
  c = tiny_config()
  c.aggregator = "mean"
  c.num_samples, c.num_samples_per_chunk = 16, 8
  c.training.num_rounds, c.training.eval_every = 4, 1
  c.checkpoint.every_rounds = every
  return c


class _Stop(Exception):
  pass


def _stop_after(steps):
  count = [0]

  def progress(_):
    count[0] += 1
    if count[0] == steps:
      raise _Stop()
  return progress


def test_resume_in_process_is_bit_identical_and_skips_the_steps_done(tmp_path):
  whole = experiment.run(_config(0), log=lambda _: None)
  with pytest.raises(_Stop):  # stopped after 6 of 8 steps: chunk 2, round 2
    experiment.run(_config(), workdir=str(tmp_path), progress=_stop_after(6),
                   log=lambda _: None)
  store = tmp_path / "checkpoints" / "mean"
  assert sorted(os.listdir(store)) == ["5", "6"]  # the last two kept (global steps, 1-based)
  logs, reports = [], []
  again = experiment.run(_config(), workdir=str(tmp_path), progress=reports.append,
                         log=logs.append)
  assert any("resumed from its checkpoint after round 2 of chunk 2/2 (6 of 8 evaluation steps "
             "done)" in line for line in logs), logs
  assert len(reports) == 2 and reports[-1]["fraction"] == 1.0  # only the 2 steps left ran
  for k, v in whole.runs["mean"].metrics.items():
    np.testing.assert_array_equal(again.runs["mean"].metrics[k], v, err_msg=k)
  assert not store.exists()


def test_a_store_of_another_run_is_named_and_discarded(tmp_path):
  with pytest.raises(_Stop):
    experiment.run(_config(), workdir=str(tmp_path), progress=_stop_after(3),
                   log=lambda _: None)
  changed = _config()
  changed.training.client_lr = 0.25  # another fingerprint: the checkpoint is not this run's
  logs = []
  experiment.run(changed, workdir=str(tmp_path), log=logs.append)
  assert any("made by another run (fingerprint" in line and "discarded" in line
             for line in logs), logs
  assert not any("resumed" in line for line in logs)


def test_a_store_made_by_other_code_is_discarded(tmp_path, monkeypatch):
  store = checkpoints.Store(str(tmp_path / "s"), key="k", chunk=8, num_samples=8, every_steps=1,
                            log=lambda _: None)
  state = {"w": np.arange(8, dtype=np.float32)}
  store.save(0, 1, 2, state=state, history=[{"a": np.zeros(8)}] * 2, aux_history=[{}],
             finished={})
  restored = store.restore(state)
  np.testing.assert_array_equal(restored["state"]["w"], state["w"])
  assert restored["part"] == 0 and restored["step"] == 1
  logs = []
  monkeypatch.setattr(provenance, "reuse_mismatch", lambda saved: "numbers version 1 -> 2")
  other = checkpoints.Store(str(tmp_path / "s"), key="k", chunk=8, num_samples=8, every_steps=1,
                            log=logs.append)
  assert other.restore(state) is None
  assert "made by other code or software (numbers version 1 -> 2): discarded" in logs[0]
  assert not (tmp_path / "s").exists()


def test_due_counts_steps_over_the_whole_run_and_never_the_last():
  store = checkpoints.Store("/nonexistent", key="k", chunk=8, num_samples=16, every_steps=3)
  due = [(p, s) for p in range(2) for s in range(1, 5) if store.due(p, s, 4, 2)]
  assert due == [(0, 3), (1, 2)]  # global steps 3 and 6; 8 is the run's end


def test_every_rounds_must_be_a_multiple_of_eval_every():
  c = _config()
  c.training.eval_every, c.training.num_rounds = 2, 4
  c.checkpoint.every_rounds = 3
  with pytest.raises(ConfigError, match=r"checkpoint.every_rounds=3 must be 0 \(none\) or a "
                     r"multiple of training.eval_every=2"):
    experiment.run(c, log=lambda _: None)
