"""Resumable sweeps: an interrupted sweep, rerun, gives the table of an uninterrupted one."""

import os

import pytest

from fedjax_robust import sweep
from tiny_config import get_config


def points():
  return sweep.product(sweep.axis("aggregator", ["mean", "trimmed_mean"]),
                       sweep.axis("p", [0.1, 0.3], key="honest_set_options.bernoulli.p"))


def base():
  c = get_config()
  c.honest_set = "bernoulli"
  c.num_samples = 3
  return c


def values(rows):
  return sorted((r["point"], r["metric"], r["statistic"], r["value"]) for r in rows
                if r["metric"] != "seconds")


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
  assert len(os.listdir(tmp_path / "b" / "points")) == 4
  assert {r["aggregator"] for r in on_disk} == {"mean", "trimmed_mean"}
  paths = sweep.plot(on_disk, str(tmp_path / "b"), x="p", series="aggregator", style="p")
  assert all(os.path.exists(p) for p in paths) and len(paths) == 3


def test_bad_points_fail_before_any_work(tmp_path):
  bad = [sweep.Point({"x": 1}, {"honest_set_options.bernoulli.q": 0.1})]
  with pytest.raises(ValueError, match=r"'honest_set_options.bernoulli.q'.*'q' does not exist"):
    sweep.run(base(), bad, str(tmp_path))
  with pytest.raises(ValueError, match="one aggregator"):
    sweep.run(base(), [sweep.Point({}, {"aggregator": "mean,krum"})], str(tmp_path))
  assert not os.path.exists(tmp_path / "results.csv")
