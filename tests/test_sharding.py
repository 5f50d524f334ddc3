"""Draws and clients over a device mesh, and a two-process jax.distributed run (issue 14).

The device count is fixed when JAX starts, so the mesh checks run the tiny job in a fresh
process on 8 simulated CPU devices (tests/sharded_checks.py) and assert on what it reports; the
multi-host check starts two launcher processes on localhost."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, tiny_config
from fedjax_robust import config as config_lib
from fedjax_robust import errors
from fedjax_robust import experiment
from fedjax_robust import results
from fedjax_robust import sharding


def _env(devices: int) -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _sharded_checks(full: bool) -> dict:
  out = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "sharded_checks.py")]
                       + (["--full"] if full else []), env=_env(8), capture_output=True,
                       text=True, timeout=900, check=False)
  lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
  assert out.returncode == 0 and lines, out.stderr[-3000:]
  return json.loads(lines[-1][len("RESULT "):])


@pytest.fixture(scope="module")
def checks():
  return _sharded_checks(full=False)


def test_draws_sharded_over_8_devices_equal_one_device_draw_by_draw(checks):
  assert checks["devices"] == 8
  got = checks["nnm+trimmed_mean@draws"]
  assert got["draws_per_chunk"] == 64  # 20 draws padded to 8 per device
  assert got["diff"] and all(v == 0.0 for v in got["diff"].values()), got["diff"]


def test_a_run_resumed_from_a_checkpoint_on_a_mesh_is_bit_identical(checks):
  # Stopped after its first step, checkpointed, resumed: the state goes back with the layout
  # of a fresh chunk, over the draws axis and with momentum rows over the clients axis.
  for case in ("resume@draws", "resume@clients"):
    assert checks[case] and all(v == 0.0 for v in checks[case].values()), (case, checks[case])


def test_a_sharded_run_of_the_same_shapes_compiles_nothing(checks):
  # The per-device evaluation compiled once on each of the 8 devices, then never again.
  assert checks["per_device_programs"] == [8]
  assert checks["recompiled"] == []


def test_the_draws_axis_is_actually_sharded(checks):
  layout = checks["layout"]
  for key in ("input_spec", "output_spec", "momentum_spec", "aux_spec"):
    assert layout[key] == "P('draws',)", (key, layout[key])
  assert layout["devices"] == 8
  assert layout["global_shape"][0] == 64 and layout["shard_shape"][0] == 8
  assert layout["collectives"] == []  # draws never talk to each other during training


def _assert_clients_run(got, metrics_tol=1e-4):
  for k, v in got["diff"].items():
    if k.startswith("metrics."):
      name = k.split(".", 1)[1]
      assert v <= metrics_tol * max(1.0, got["scale"][name]), (k, v)
  assert "all-to-all" in got["collectives"]  # rows -> coordinate columns, explicitly
  assert got["whole_update_gathers"] == []   # never every client's whole update on a device


def test_clients_sharded_trimmed_mean_matches_one_device(checks):
  _assert_clients_run(checks["trimmed_mean@clients"])
  assert checks["trimmed_mean@clients"]["diff"]["metrics.honest_accuracy"] == 0.0


@pytest.mark.slow
def test_clients_sharded_mean_and_geometric_median_and_draws_over_two_devices():
  checks = _sharded_checks(full=True)
  assert all(v == 0.0 for v in checks["nnm+trimmed_mean@draws=2"]["diff"].values())
  _assert_clients_run(checks["mean@clients"])
  # The geometric median's partial squared norms are summed across the clients axis (an
  # all-reduce): its stopping test may stop an iteration earlier or later than on one device.
  _assert_clients_run(checks["geometric_median@clients"], metrics_tol=1e-4)
  assert "all-reduce" in checks["geometric_median@clients"]["collectives"]
  # Whole jobs over two devices: every metric of every run and reference bit-identical.
  assert checks["paths"] == {k: True for k in ("mixture", "personal", "theory", "sampling",
                                               "honest_optimum", "worst_case")}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


# The heaviest default test (two launcher processes, twice: ~45 s of the 2-core run); the mesh
# it spans is the draws mesh test_draws_sharded_over_8_devices checks draw by draw by default.
@pytest.mark.slow
def test_two_process_distributed_run_gives_the_single_process_numbers(tmp_path):
  """Two processes with 2 CPU devices each (a 4-device mesh over draws), process 0 writing;
  the same draws.csv as one process on one device; a rerun resumes from process 0's files."""
  train = os.path.join(ROOT, "launch", "train.py")
  config = os.path.join(ROOT, "tests", "tiny_config.py")
  port = _free_port()

  def distributed(workdir):
    procs = [subprocess.Popen(
        [sys.executable, train, f"--config={config}", "--config.mesh=draws",
         "--config.aggregator=nnm+trimmed_mean",
         f"--workdir={workdir}", "--distributed", f"--coordinator_address=localhost:{port}",
         "--num_processes=2", f"--process_id={i}", "--cpu_devices=2"], env=_env(1),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    return logs

  logs = distributed(tmp_path / "mh")
  assert "over 4 cpu device(s) in 2 processes" in logs[0] and "wrote" in logs[0]
  assert "wrote" not in logs[1]  # only process 0 writes
  c = tiny_config()  # this process: one device
  c.aggregator = "nnm+trimmed_mean"
  results.write_all(experiment.run(c, log=lambda _: None), str(tmp_path / "one"))
  assert (tmp_path / "mh" / "draws.csv").read_text() == (tmp_path / "one" / "draws.csv"
                                                         ).read_text()
  port = _free_port()
  again = distributed(tmp_path / "mh")
  assert again[0].count("loaded from") == 1 and "compiling" not in again[0]


@pytest.mark.parametrize("value, says", [
    ("gpus=2", "axis 'gpus' is not allowed"),
    ("draws=0", "is not a positive integer"),
    ("draws=2,draws=2", "at most once"),
    ("clients", "needs a size"),
    ("draws=4", "needs 4 devices; this process sees 1"),
])
def test_a_bad_mesh_is_refused_at_config_time(value, says):
  c = tiny_config()
  c.mesh = value
  with pytest.raises(errors.ConfigError, match="mesh=") as e:
    config_lib.validate(c)
  assert says in str(e.value)


def test_the_clients_axis_must_divide_n():
  with pytest.raises(ValueError, match="clients=4 must divide num_clients=6"):
    sharding.check("draws,clients=4", 6, num_devices=8)
  sharding.check("draws,clients=2", 6, num_devices=8)


def test_axis_sizes_fill_the_devices():
  assert sharding.axis_sizes("draws", 8) == {"draws": 8, "clients": 1}
  assert sharding.axis_sizes("draws,clients=2", 8) == {"draws": 4, "clients": 2}
  assert sharding.axis_sizes("draws=2,clients=2", 8) == {"draws": 2, "clients": 2}
  assert sharding.axis_sizes("", 8) == {"draws": 1, "clients": 1}


def test_group_order_takes_each_devices_draws_in_turn():
  # 2 devices × 16 draws, groups of 8: device 0's first 8, device 1's first 8, then the rest.
  order = sharding.group_order(32, 2, 8)
  np.testing.assert_array_equal(order, np.r_[0:8, 16:24, 8:16, 24:32])
  assert sorted(order) == list(range(32))


def test_launcher_flags_one_cpu_device_per_core_for_a_bare_draws_mesh(monkeypatch):
  from absl import flags  # pylint: disable=g-import-not-at-top
  calls = []
  monkeypatch.setattr(sharding.jax.config, "update", lambda *a: calls.append(a))

  def start(mesh, *argv):
    values = flags.FlagValues()
    begin = sharding.define_flags(values)
    values(["launcher", "--compilation_cache=", *argv])
    calls.clear()
    begin(mesh)
    return list(calls)

  cores = len(os.sched_getaffinity(0))
  assert start("draws") == [("jax_num_cpu_devices", cores)]
  assert start("draws", "--cpu_devices=3") == [("jax_num_cpu_devices", 3)]
  assert start("") == [] and start("draws=2") == []  # JAX's default device count
  with pytest.raises(errors.ConfigError, match="--cpu_devices=-1"):
    start("draws", "--cpu_devices=-1")
  with pytest.raises(errors.ConfigError, match="--distributed needs a mesh"):
    start("", "--distributed")


def test_launcher_flags_set_the_persistent_compilation_cache(monkeypatch, tmp_path):
  from absl import flags  # pylint: disable=g-import-not-at-top
  calls = []
  monkeypatch.setattr(sharding.jax.config, "update", lambda *a: calls.append(a))
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  monkeypatch.setenv("FEDJAX_ROBUST_CACHE", str(tmp_path))

  def cache(*argv):
    values = flags.FlagValues()
    begin = sharding.define_flags(values)
    values(["launcher", *argv])
    calls.clear()
    begin("")
    return [v for k, v in calls if k == "jax_compilation_cache_dir"]

  assert cache() == [str(tmp_path / "xla")]
  assert cache("--compilation_cache=/some/where") == ["/some/where"]
  assert cache("--compilation_cache=") == []  # off
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/from/jax")
  assert cache() == ["/from/jax"]
  monkeypatch.delenv("FEDJAX_ROBUST_CACHE")
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert cache() == [str(tmp_path / "home" / ".cache" / "fedjax_robust" / "xla")]
