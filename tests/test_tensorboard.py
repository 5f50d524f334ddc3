"""report/tensorboard.py: the event files are read back here without tensorboardX's reader (the
TFRecord framing parsed by hand, both CRC32C checksums verified by a table CRC written here, each
record decoded with the Event protobuf) and every scalar is checked against np.nanmean /
np.nanquantile of the run's arrays with the diverged draws removed."""

import os
import struct
import sys

import numpy as np
import pytest

from conftest import tiny_config
from fedjax_robust import errors
from fedjax_robust import experiment as experiment_lib
from fedjax_robust.report import tensorboard
from fedjax_robust.run_cache import AggregatorRun


def _crc32c_table():
  poly = 0x82F63B78  # Castagnoli, reflected
  table = []
  for i in range(256):
    c = i
    for _ in range(8):
      c = (c >> 1) ^ poly if c & 1 else c >> 1
    table.append(c)
  return table


_TABLE = _crc32c_table()


def _masked_crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  crc ^= 0xFFFFFFFF
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_crc32c_matches_the_standard_check_value():
  crc = 0xFFFFFFFF
  for byte in b"123456789":
    crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  assert crc ^ 0xFFFFFFFF == 0xE3069283  # CRC-32C's check value (RFC 3720)


def read_scalars(path: str) -> dict[str, list[tuple[int, float]]]:
  """tag -> [(step, value)] of one event file: records are uint64 length, uint32 masked CRC32C of
  the length, the data, uint32 masked CRC32C of the data (little endian)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  out = {}
  with open(path, "rb") as fh:
    blob = fh.read()
  pos = 0
  while pos < len(blob):
    header = blob[pos:pos + 8]
    (length,) = struct.unpack("<Q", header)
    (length_crc,) = struct.unpack("<I", blob[pos + 8:pos + 12])
    assert length_crc == _masked_crc32c(header)
    data = blob[pos + 12:pos + 12 + length]
    (data_crc,) = struct.unpack("<I", blob[pos + 12 + length:pos + 16 + length])
    assert data_crc == _masked_crc32c(data)
    pos += 16 + length
    event = event_pb2.Event()
    event.ParseFromString(data)
    for value in event.summary.value:
      out.setdefault(value.tag, []).append((event.step, value.simple_value))
  assert pos == len(blob)
  return out


def _run(spec, rng, rounds=(0, 5, 10), samples=7, diverge=()):
  e = len(rounds)
  metrics = {"honest_loss": rng.uniform(0.1, 3.0, (e, samples)),
             "honest_accuracy": rng.uniform(0.0, 1.0, (e, samples)),
             "test_loss": rng.uniform(0.1, 3.0, (e, samples)),
             "test_accuracy": rng.uniform(0.0, 1.0, (e, samples)),
             "diverged": np.zeros((e, samples))}
  for t, s in diverge:  # diverged from round index t on: NaN loss, an accuracy of NaN logits
    metrics["diverged"][t:, s] = 1
    metrics["honest_loss"][t:, s] = np.nan
    metrics["test_loss"][t:, s] = np.inf
    metrics["honest_accuracy"][t:, s] = 0.1
  return AggregatorRun(spec=spec, rounds=np.asarray(rounds), metrics=metrics, aux={},
                       compile_seconds=0.0, run_seconds=0.0)


def _expected(run):
  diverged = run.metrics["diverged"] > 0
  out = {"draws/not_diverged": [(int(r), float(np.sum(~d))) for r, d in zip(run.rounds, diverged)]}
  for metric, values in run.metrics.items():
    if metric == "diverged":
      continue
    kept = np.where(diverged, np.nan, values)
    out[f"{metric}/mean"] = [(int(r), np.nanmean(v)) for r, v in zip(run.rounds, kept)]
    for q, label in ((0.05, "q05"), (0.5, "q50"), (0.95, "q95")):
      out[f"{metric}/{label}"] = [(int(r), np.nanquantile(v, q, method="inverted_cdf"))
                                  for r, v in zip(run.rounds, kept)]
  return out


def _check(path, run):
  got = read_scalars(path)
  want = _expected(run)
  assert set(got) == set(want)
  for tag, points in want.items():
    assert [s for s, _ in got[tag]] == [s for s, _ in points], tag
    np.testing.assert_allclose([v for _, v in got[tag]], [v for _, v in points], rtol=1e-6,
                               err_msg=tag)


def test_scalars_are_the_mean_and_quantiles_over_the_draws_not_diverged(tmp_path, rng):
  krum = _run("krum", rng, diverge=[(1, 2), (2, 5)])
  mean = _run("cwtm/beta=0.1", rng, samples=7)
  baseline = _run("honest_optimum", rng)
  exp = experiment_lib.Experiment(job=None, data=None, masks={}, runs={"krum": krum,
                                  "cwtm/beta=0.1": mean},
                                  references={"krum": baseline, "cwtm/beta=0.1": baseline})
  files = tensorboard.write(exp, str(tmp_path))
  dirs = [os.path.basename(os.path.dirname(f)) for f in files]
  assert dirs == ["krum", "cwtm_beta=0.1", "honest_only"]
  for path, run in zip(files, (krum, mean, baseline)):
    _check(path, run)
  # The diverged draws are out: with them, the accuracy mean at the last round would differ.
  got = dict(read_scalars(files[0])["honest_accuracy/mean"])
  assert got[10] != pytest.approx(krum.metrics["honest_accuracy"][2].mean(), rel=1e-4)
  assert dict(read_scalars(files[0])["draws/not_diverged"]) == {0: 7.0, 5: 6.0, 10: 5.0}
  # Writing again replaces the event files: one per run directory, the same scalars.
  again = tensorboard.write(exp, str(tmp_path))
  assert len(again) == 3
  assert [len(os.listdir(os.path.dirname(f))) for f in again] == [1, 1, 1]
  _check(again[0], krum)


def test_a_round_where_every_draw_diverged_writes_only_the_count(tmp_path, rng):
  run = _run("krum", rng, samples=2, diverge=[(2, 0), (2, 1)])
  exp = experiment_lib.Experiment(job=None, data=None, masks={}, runs={"krum": run})
  (path,) = tensorboard.write(exp, str(tmp_path))
  got = read_scalars(path)
  assert [s for s, _ in got["honest_accuracy/q50"]] == [0, 5]
  assert got["draws/not_diverged"][-1] == (10, 0.0)


def test_per_aggregator_baselines_each_get_a_run_directory(tmp_path, rng):
  a, b = _run("a", rng), _run("b", rng)
  exp = experiment_lib.Experiment(job=None, data=None, masks={}, runs={"a": a, "b": b},
                                  references={"a": _run("ra", rng), "b": _run("rb", rng)})
  files = tensorboard.write(exp, str(tmp_path))
  assert [os.path.basename(os.path.dirname(f)) for f in files] == [
      "a", "b", "a.honest_only", "b.honest_only"]
  _check(files[3], exp.references["b"])


def test_require_names_the_extra_when_tensorboardx_is_missing(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorboardX", None)  # `import` then raises ImportError
  with pytest.raises(errors.ConfigError, match=r"pip install -e '\.\[tensorboard\]'"):
    tensorboard.require()
  with pytest.raises(errors.ConfigError, match="report.tensorboard=True needs tensorboardX"):
    tensorboard.write(experiment_lib.Experiment(job=None, data=None, masks={}, runs={}), "x")


def test_a_tiny_job_end_to_end(tmp_path):
  """A real run of the tiny job with its honest-only baseline: one event file for the rule and
  one for the baseline, every recorded metric at every evaluation round."""
  c = tiny_config()
  c.aggregator = "mean"
  c.estimators.honest_optimum = True
  exp = experiment_lib.run(c, log=lambda _: None)
  files = tensorboard.write(exp, str(tmp_path))
  (spec,) = exp.runs
  assert [os.path.basename(os.path.dirname(f)) for f in files] == [spec, "honest_only"]
  for path, run in zip(files, [exp.runs[spec], exp.references[spec]]):
    _check(path, run)
