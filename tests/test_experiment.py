"""experiment.py's cache: what a cached run is keyed by, what a recomputation says, and the
honest-only baseline cached like a rule's run; the job's plan before any compile (chunking
against the memory budget, the cost of exact subset searches) and its progress while it runs."""

import csv
import math

import numpy as np
import pytest

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


def test_a_key_added_to_the_schema_at_its_default_keeps_every_fingerprint(monkeypatch):
  """Fingerprints hash the raw configuration (the leaves off the schema's defaults): a key the
  schema gains at a default keeps every cached run's and sweep point's key; the key set to
  another value changes it, as does any leaf off its default."""
  from fedjax_robust import config as config_lib  # pylint: disable=g-import-not-at-top
  c = tiny_config()
  before = experiment.fingerprint(experiment.run_config(c, "mean"))
  real = config_lib.base_config

  def extended():
    b = real()
    with b.unlocked():
      b.training.new_knob = 0.5
    return b

  monkeypatch.setattr(config_lib, "base_config", extended)
  experiment._schema_defaults.cache_clear()  # pylint: disable=protected-access
  try:
    grown = tiny_config()
    with grown.unlocked():
      grown.training.new_knob = 0.5
    assert experiment.fingerprint(experiment.run_config(grown, "mean")) == before
    grown.training.new_knob = 0.7
    assert experiment.fingerprint(experiment.run_config(grown, "mean")) != before
  finally:
    monkeypatch.undo()
    experiment._schema_defaults.cache_clear()  # pylint: disable=protected-access
  # Without the patch, the same extra key is not in the schema: it is raw, so it counts.
  with c.unlocked():
    c.training.new_knob = 0.5
  assert experiment.fingerprint(experiment.run_config(c, "mean")) != before


def test_config_changes_names_the_keys_that_differ():
  saved = {"report": {"interval": "bca"}, "training": {"client_lr": 0.5, "l2": 0.0},
           "mesh": ""}
  now = {"report": {"interval": "bca"}, "training": {"client_lr": 0.25, "l2": 0.0},
         "seed": 1}
  assert experiment.config_changes(saved, now) == (
      "mesh: '' → (absent); seed: (absent) → 1; training.client_lr: 0.5 → 0.25")
  assert experiment.config_changes(saved, saved).startswith("no key differs")


@pytest.mark.slow
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


# ------------------------------------------------------------------ chunks within the budget

GB = 2**30


def test_the_issue_reproducer_fits_its_budget():
  """`launch/train.py --config.num_samples=1024` (2 CPU devices, 4 GB): with 8,481,600 bytes a
  draw one chunk of 1024 would need 4.34e9 bytes per device against 4.29e9; two of 512 fit."""
  c = tiny_config()
  c.num_clients, c.num_samples, c.memory_budget_gb = 25, 1024, 4.0
  plan = experiment.memory_plan(c, 8_481_600, 1024, fixed=500_000, devices=2)
  assert plan.chunk == 512 and plan.bytes_per_device <= 4 * GB
  assert plan.refusal() == ""
  # The same budget on one device: 506.4 draws fit, 504 in whole groups of 8; 1024 draws need
  # three chunks, of 344.
  c.mesh = ""
  chunk = experiment.chunk_size(c, 8_481_600, 1024)
  assert chunk == 344 and chunk * plan.per_draw <= 4 * GB


@pytest.mark.parametrize("devices", [1, 2, 4])
def test_automatic_chunks_never_exceed_the_budget_when_the_smallest_chunk_fits(devices):
  c = tiny_config()
  per_draw = 3_000_017
  unit = experiment.DRAW_ALIGNMENT
  for fixed in (0, 3 * per_draw + 7):
    for draws_in_budget in (7.5, 8, 9, 15.9, 16, 100, 503.7, 504, 1000, 5000):
      c.memory_budget_gb = (fixed + draws_in_budget * per_draw) / GB
      budget = int(c.memory_budget_gb * GB)
      for samples in (1, 7, 8, 9, 100, 1000, 1010, 1024, 4096):
        plan = experiment.memory_plan(c, per_draw, samples, fixed=fixed, devices=devices)
        assert plan.chunk % (unit * devices) == 0
        assert plan.chunk <= -(-samples // (unit * devices)) * unit * devices  # no extra chunk
        room = (budget - fixed) // per_draw // unit * unit  # whole groups of draws per device
        if room == 0:  # not even the smallest chunk fits: it is taken, and refused
          assert plan.chunk == unit * devices
          assert "smallest chunk is 8 draws per device" in plan.refusal()
          continue
        assert plan.fixed + plan.chunk // devices * per_draw <= budget, (samples, devices)
        assert plan.refusal() == ""
        # The fewest chunks the budget allows, the draws spread evenly over them.
        need = -(-samples // (unit * devices)) * unit
        assert -(-samples // plan.chunk) == -(-need // room)


def test_a_chunk_beyond_the_budget_is_refused_with_what_would_fit():
  c = tiny_config()
  per_draw = 3_000_017
  c.memory_budget_gb = (1_000_000 + 20 * per_draw) / GB
  c.num_samples_per_chunk = 64
  plan = experiment.memory_plan(c, per_draw, 256, fixed=1_000_000, devices=2, num_clients=10)
  assert plan.chunk == 64 and plan.bytes_per_device > plan.budget
  text = plan.refusal()
  assert text.startswith("memory: a chunk of 64 draws (32 per device) needs")
  assert "more than memory_budget_gb=" in text
  # 20 draws per device fit: 16 in whole groups of 8, so 32 over the two devices.
  assert "allowed: num_samples_per_chunk <= 32 (or 0: chosen from the budget)" in text
  c.num_samples_per_chunk = 0
  assert experiment.memory_plan(c, per_draw, 256, fixed=1_000_000, devices=2).chunk == 32
  c.memory_budget_gb = 1e-2
  text = experiment.memory_plan(c, per_draw, 256, fixed=1_000_000, devices=2,
                                num_clients=10).refusal()
  assert "The smallest chunk is 8 draws per device (DRAW_ALIGNMENT)" in text
  need = math.ceil((1_000_000 + 8 * per_draw) * 100 / GB) / 100
  assert f"memory_budget_gb >= {need:g} if the device has that much" in text
  # a draw's bytes grow about linearly with its clients: 10 × (budget − data) / (8 × per draw)
  clients = int(10 * (0.01 * GB - 1_000_000) / (8 * per_draw))
  assert f"num_clients <= about {clients}" in text


# ------------------------------------------------------------------ progress and its ETA


class _FakeClock:
  """A clock that reads `t`, which the test advances."""

  def __init__(self):
    self.t = 0.0

  def __call__(self):
    return self.t


def test_the_eta_leaves_out_compiling_and_the_last_step_names_what_follows():
  """Two runs (an aggregator, then the honest-only baseline) of 1 chunk × 3 steps: each first
  step compiles (100 s, then 50 s), steady steps take 2 s. The old clock took the first step
  for the rate: ETA 5 × 100 s = 8 min 20 s with 56 s left."""
  now, seen = _FakeClock(), []
  clock = experiment._JobClock(6, 2, seen.append, after=("the theory of every draw",), now=now)
  steps = [("mean", 100.0), ("mean", 2.0), ("mean", 2.0),
           ("honest_optimum", 50.0), ("honest_optimum", 2.0), ("honest_optimum", 2.0)]
  report = None
  for i, (spec, seconds) in enumerate(steps):
    if i % 3 == 0:
      report = clock.callback(spec, 1, 5)  # the run starts: compiling begins
    now.t += seconds
    report(0, i % 3 + 1, 3)
  etas = [p["eta"] for p in seen]
  assert etas[0] is None  # only a step that compiled was timed: no rate yet
  # Steady steps left × 2 s, plus the baseline's first step taken as the mean first (100 s).
  assert etas[1:3] == [3 * 2.0 + 100.0, 2 * 2.0 + 100.0]
  # The baseline's first step compiled (50 s): the ETA after it is its 2 steady steps only.
  assert etas[3:] == [2 * 2.0, 1 * 2.0, 0.0]
  assert [p["fraction"] for p in seen] == [k / 6 for k in range(1, 7)]
  assert [p["after"] for p in seen] == [None] * 5 + [("the theory of every draw",)]
  assert seen[-1]["elapsed"] == sum(s for _, s in steps)


def test_a_run_loaded_from_the_cache_leaves_the_clock():
  now, seen = _FakeClock(), []
  clock = experiment._JobClock(4, 2, seen.append, now=now)
  clock.skip(2)  # the first aggregator's run was cached
  report = clock.callback("b", 1, 1)
  for step, seconds in ((1, 30.0), (2, 1.0)):
    now.t += seconds
    report(0, step, 2)
  assert [(p["fraction"], p["eta"], p["after"]) for p in seen] == [(0.5, None, None),
                                                                  (1.0, 0.0, ())]


def test_the_job_counts_the_baseline_and_announces_what_follows_training():
  c = tiny_config()
  c.aggregator = "mean"
  c.estimators.honest_optimum = True
  logs, seen = [], []
  experiment.run(c, log=logs.append, progress=seen.append)
  job = next(line for line in logs if line.startswith("job:"))
  assert "4 draws × 10 rounds × 1 aggregator(s) + 1 honest-only baseline(s) (80 sample-rounds" in job
  assert [p["spec"] for p in seen] == ["mean"] * 2 + ["honest_optimum"] * 2
  assert [p["fraction"] for p in seen] == [0.25, 0.5, 0.75, 1.0]
  assert seen[0]["eta"] is None and seen[-1]["eta"] == 0
  assert [p["after"] for p in seen] == [None] * 3 + [()]


# ------------------------------------------------------------------ the cost of subset searches


class _PlanRead(Exception):
  """Raised by the test's log at the first compile: the plan is all the test needs."""


def _plan(config) -> list[str]:
  logs = []

  def log(line):
    logs.append(line)
    if "compiling" in line:
      raise _PlanRead

  with pytest.raises(_PlanRead):
    experiment.run(config, log=log)
  return logs


def test_the_plan_estimates_and_warns_about_an_exact_subset_search():
  """The issue's job: MDA on 25 clients with f = 5 searches C(25, 5) = 53,130 subsets of 20
  rows at each of 256 draws × 200 rounds; at 4 ns per distance looked up (400 per subset) that is
  ≈ 1 h 13 min of CPU, which the plan used not to mention."""
  from fedjax_robust.aggregators import minimum_diameter  # pylint: disable=g-import-not-at-top
  c = tiny_config()
  c.num_clients, c.f, c.num_samples = 25, 5, 256
  c.aggregator = "mean,minimum_diameter_averaging"
  c.honest_set_options.fixed_count.num_byzantine = 5
  c.training.num_rounds, c.training.eval_every = 200, 10
  logs = _plan(c)
  seconds = 256 * 200 * math.comb(25, 5) * 20**2 * 4e-9
  assert seconds == pytest.approx(
      256 * 200 * minimum_diameter.search_seconds("minimum_diameter_averaging", 25, 5))
  line = next(x for x in logs if x.startswith("minimum_diameter_averaging: exact search"))
  assert ("C(n=25, f=5) = 53,130 subsets of 20 rows at every aggregation, 256 draws × 200 "
          f"rounds: 2.72e+09 subsets, ≈ {experiment.human_seconds(seconds)}") in line
  assert experiment.human_seconds(seconds) == "1 h 12 min"
  warning = next(x for x in logs if x.startswith("WARNING: minimum_diameter_averaging"))
  assert "this warning's threshold: 1 min 00 s" in warning and "training.clients_per_round" in warning
  job = next(x for x in logs if x.startswith("job:"))
  assert "time ≈ 1 h" in job  # the search is in the job's estimate
  assert logs.index(warning) < len(logs) - 1  # said before the first compile


def test_the_subset_search_counts_the_rows_the_rule_sees():
  c = tiny_config()
  c.num_clients, c.f = 25, 5
  c.training.num_rounds = 10
  c.aggregator_options.bucketing.bucket_size = 2
  specs = ["bucketing+mda", "nnm+smea", "mean"]
  found = experiment._subset_searches(c, specs, 8)
  assert list(found) == ["bucketing+mda", "nnm+smea"]
  assert "C(n=13, f=5) = 1,287 subsets of 8 rows" in found["bucketing+mda"][0]  # ⌈25/2⌉ rows
  assert found["nnm+smea"][1] == pytest.approx(8 * 10 * math.comb(25, 5) * 20**3 * 1.5e-8)
  c.training.clients_per_round = 15
  assert "C(n=15, f=5) = 3,003 subsets" in experiment._subset_searches(c, ["mda"], 8)["mda"][0]
