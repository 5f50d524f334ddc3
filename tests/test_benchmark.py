"""The benchmark's references: the sequential NumPy training baseline is the simulator's
algorithm, and the NumPy aggregation references agree with the JAX rules at benchmark scale."""

import csv
import math
import time

import jax
import numpy as np
import pytest

from conftest import tiny_config
from fedjax_robust import aggregators
from fedjax_robust import benchmark
from fedjax_robust import config as config_lib
from fedjax_robust import experiment
from fedjax_robust import numpy_reference
from fedjax_robust import training


@pytest.mark.parametrize("spec,attack", [("trimmed_mean", "alie"), ("nnm+geometric_median", "none")])
def test_sequential_numpy_training_is_the_simulators_algorithm(spec, attack):
  config = tiny_config()
  config.model = "mlp"
  config.model_options.mlp.hidden = (8,)
  config.attack = attack
  config.aggregator_options.geometric_median.maxiter = 5   # exactly 5 updates, as in NumPy
  config.aggregator_options.geometric_median.gtol = 0.0
  config.aggregator_options.geometric_median.ftol = 0.0
  config.training.batch_size = 0        # full local batches: no random stream to match
  config.training.local_steps = 2
  config.training.client_lr = 0.3
  fed = config_lib.make_data(config)
  sim = experiment.simulator(config, spec, fed)
  mask = np.array([True, False, True, True, True, True])
  state = sim.init(jax.random.key(3))
  final, _ = jax.jit(lambda s: sim.run_rounds(s, mask, jax.random.key(0), fed.train,
                                              num_rounds=3))(state)
  flatten, unflatten = benchmark.numpy_layout(sim)
  counts = np.asarray(fed.train.counts)
  xs = [np.asarray(fed.train.x[i, :c], np.float64).reshape(c, -1) for i, c in enumerate(counts)]
  ys = [np.asarray(fed.train.y[i, :c]) for i, c in enumerate(counts)]
  options = {"geometric_median": {"maxiter": 5}}
  theta = numpy_reference.train_sequential(
      unflatten(np.asarray(state.params, np.float64)), flatten, unflatten, xs, ys, mask,
      rounds=3, local_steps=2, batch_size=0, lr=0.3, momentum=config.training.client_momentum,
      server_lr=1.0, aggregate_fn=lambda u: numpy_reference.aggregate(spec, u, 1, options),
      attack_fn=(lambda u, h: numpy_reference.alie(u, h, 1.0)) if attack == "alie" else None,
      rng=np.random.default_rng(0))
  moved = np.abs(theta - np.asarray(state.params)).max()
  assert moved > 1e-2
  np.testing.assert_allclose(np.asarray(final.params), theta, atol=2e-5 * max(1.0, moved))


@pytest.mark.parametrize("spec", ["trimmed_mean", "coordinate_median", "krum", "multi_krum",
                                  "meamed", "centered_clipping", "nnm+trimmed_mean",
                                  "static_clipping+mean", "arc+mean", "monna", "caf"])
def test_numpy_references_agree_with_jax_at_scale(spec):
  x = np.random.default_rng(0).normal(size=(30, 20_000)).astype(np.float32)
  jax_out = np.asarray(aggregators.get(spec, f=3)(x))
  np.testing.assert_allclose(jax_out, numpy_reference.aggregate(spec, x, 3), atol=2e-5)


def test_numpy_geometric_median_with_equal_iteration_counts():
  x = np.random.default_rng(1).normal(size=(20, 5_000)).astype(np.float32)
  x[:3] += 50.0
  for maxiter in (1, 3):
    rule = aggregators.get("geometric_median", f=3, options={
        "geometric_median": {"maxiter": maxiter, "gtol": 0.0, "ftol": 0.0}})
    np.testing.assert_allclose(np.asarray(rule(x)),
                               numpy_reference.geometric_median(x, iterations=maxiter), atol=1e-5)


def test_blocked_draws_train_the_same_models_as_one_vmapped_batch():
  """`training.blocked` (lax.map over blocks of vmapped draws) is the same computation per
  draw as vmapping all S at once: same final parameters, draw by draw."""
  import functools  # pylint: disable=g-import-not-at-top
  config = tiny_config()
  fed = config_lib.make_data(config)
  sim = experiment.simulator(config, "trimmed_mean", fed)
  masks = jax.numpy.asarray(np.random.default_rng(0).random((8, 6)) > 0.2)
  keys = training.sample_keys(jax.random.key(1), 8)
  states = training.replicate(sim.init(jax.random.key(2)), 8)
  run = jax.vmap(functools.partial(sim.run_rounds, num_rounds=3), in_axes=(0, 0, 0, None))
  whole, _ = jax.jit(run)(states, masks, keys, fed.train)
  blocks, _ = jax.jit(training.blocked(run, 4))(states, masks, keys, fed.train)
  assert np.abs(np.asarray(whole.params) - np.asarray(states.params)).max() > 1e-3
  np.testing.assert_allclose(np.asarray(blocks.params), np.asarray(whole.params), atol=1e-6)


def test_a_chunk_in_blocks_gives_every_draw_the_same_numbers(monkeypatch):
  """run_monte_carlo runs a chunk as blocks of DRAWS_PER_BLOCK draws on CPU: 72 draws in one
  chunk (blocks of 8 = gcd(72, 64)), 128 draws (blocks of 64) and chunks of 8 (no blocks) give
  every draw bit-identical final metrics."""
  config = tiny_config()
  config.training.num_rounds, config.training.eval_every = 6, 3
  fed = config_lib.make_data(config)
  sim = experiment.simulator(config, "nnm+trimmed_mean", fed)
  masks = np.random.default_rng(1).random((128, 6)) > 0.25
  _, init_key, run_key = experiment._keys(config)  # pylint: disable=protected-access
  assert experiment.block_size(72) == 8 and experiment.block_size(128) == 64
  assert experiment.block_size(64) == 0
  run = lambda m, chunk: experiment.run_monte_carlo(
      sim, fed, jax.numpy.asarray(m), init_key=init_key, run_key=run_key, num_rounds=6,
      eval_every=3, chunk=chunk).metrics["honest_loss"][-1]
  small = run(masks, 8)
  np.testing.assert_array_equal(run(masks[:72], 72), small[:72])
  np.testing.assert_array_equal(run(masks, 128), small)
  monkeypatch.setattr(experiment, "DRAWS_PER_BLOCK", {})  # one block: the chunk vmapped at once
  np.testing.assert_array_equal(run(masks, 128), small)


def test_bytes_moved_per_sample_round_is_per_draw_and_covers_the_state():
  """XLA's estimate of a round's memory traffic per draw: at least the momentum `[n, d]` read
  and written once, and per draw the same at S = 8 and S = 32 (it scales with S)."""
  config = tiny_config()
  config.model = "mlp"
  fed = config_lib.make_data(config)
  sim = experiment.simulator(config, "trimmed_mean", fed)
  masks = jax.numpy.asarray(np.random.default_rng(0).random((32, 6)) > 0.2)
  keys = training.sample_keys(jax.random.key(1), 32)
  per_draw = []
  for s in (8, 32):
    states = training.replicate(sim.init(jax.random.key(2)), s)
    per_draw.append(benchmark.round_bytes_per_draw(sim, states, masks[:s], keys[:s], fed.train))
  assert per_draw[0] >= 2 * 4 * sim.num_clients * sim.num_params
  np.testing.assert_allclose(per_draw[1], per_draw[0], rtol=0.1)


def test_monte_carlo_bench_on_a_mesh_and_against_byzfls_loop(monkeypatch):
  """A mesh row per S its devices divide (the advance program of `run_monte_carlo`), and the
  ByzFL column: ByzFL's loop gets the job's data, model, batch, learning rate, momentum, f and
  GM iterations, and every row's vs_byzfl is its rate over ByzFL's."""
  from fedjax_robust import byzfl_loop
  c = tiny_config()
  c.model = "mlp"
  c.aggregator_options.geometric_median.maxiter = 7
  seen = {}

  def fake_pool(xs, ys, honest, **kw):
    seen.update(kw, xs=xs, ys=ys, honest=honest)
    return byzfl_loop.PoolRate(rounds_per_s=4.0, sum_of_rates=4.5, processes=3, window_s=1.5,
                               rounds=2, pids=(7, 8, 9), per_process=(1.5, 1.5, 1.5))

  monkeypatch.setattr(byzfl_loop, "available", lambda: True)
  monkeypatch.setattr(byzfl_loop, "pool_rounds_per_second", fake_pool)
  lines = []
  rows = benchmark.monte_carlo_throughput(c, "geometric_median", (8,), 2, baseline_samples=0,
                                          repeats=1, meshes=("draws=1",), byzfl_processes=3,
                                          log=lines.append)
  assert [(r.method, r.devices, r.processes) for r in rows] == [
      ("vmapped JAX on 1 dev", 1, 1), (benchmark.BYZFL_LOOP, 0, 3)]
  # The ratio is over the pool's wall-clock rate (4.0), not the sum of its processes' (4.5).
  for r in rows:
    assert r.vs_byzfl == pytest.approx(r.sample_rounds_per_s / 4.0)
  assert seen["processes"] == 3 and seen["num_rounds"] == 2
  assert seen["spec"] == "geometric_median" and seen["f"] == c.f
  assert seen["aggregator_parameters"] == {"T": 7}
  assert seen["hidden"] == tuple(c.model_options.mlp.hidden)
  assert (seen["batch_size"], seen["lr"], seen["momentum"]) == (
      c.training.batch_size, c.training.client_lr, c.training.client_momentum)
  fed = config_lib.make_data(c)
  counts = np.asarray(fed.train.counts)
  assert [len(x) for x in seen["xs"]] == list(counts)
  np.testing.assert_array_equal(seen["xs"][2], np.asarray(fed.train.x[2, :counts[2]]).reshape(
      counts[2], -1))
  # Not importable, or not the same job: said, no row.
  rows = rows[:1]
  rows[0].vs_byzfl = math.nan
  c.model = "logistic"
  benchmark._versus_byzfl(rows, c, "mean", fed, np.ones(6, bool), 2, lines.append)
  assert len(rows) == 1 and math.isnan(rows[0].vs_byzfl)
  assert lines[-1] == "  (no ByzFL loop for 'mean': the model is not the MLP)"
  monkeypatch.setattr(byzfl_loop, "available", lambda: False)
  benchmark._versus_byzfl(rows, c, "mean", fed, np.ones(6, bool), 2, lines.append)
  assert "byzfl package is not importable" in lines[-1] and len(rows) == 1


def test_the_whole_job_beside_the_kernel_is_timed_start_to_exit(monkeypatch, tmp_path):
  """monte_carlo.whole_job: the launcher job at the largest S as a subprocess in a fresh workdir,
  its rate S · rounds over the wall clock from start to exit (which holds the job's own compile
  and training times, and more: start-up, data, report), and its ratio to ByzFL's pool."""
  from fedjax_robust import byzfl_loop
  monkeypatch.setattr(byzfl_loop, "available", lambda: True)
  monkeypatch.setattr(byzfl_loop, "pool_rounds_per_second", lambda *a, **kw: byzfl_loop.PoolRate(
      rounds_per_s=0.25, sum_of_rates=0.25, processes=2, window_s=16.0, rounds=2, pids=(1, 2),
      per_process=(0.125, 0.125)))
  c = tiny_config()
  c.model = "mlp"
  tiny = ["--config.num_clients=6", "--config.f=1", "--config.model=logistic", "--config.mesh="]
  start = time.perf_counter()
  rows = benchmark.monte_carlo_throughput(c, "mean", (8,), 2, baseline_samples=0, repeats=1,
                                          whole_job=True, whole_job_overrides=tiny,
                                          log=lambda _: None)
  outside = time.perf_counter() - start
  assert [r.method for r in rows] == ["vmapped JAX", benchmark.WHOLE_JOB,
                                      benchmark.WHOLE_JOB_WARM, benchmark.BYZFL_LOOP]
  for whole in rows[1:3]:  # cold, then repeated with the cold run's compiled programs cached
    assert (whole.samples, whole.rounds) == (8, 2)
    assert whole.sample_rounds_per_s == pytest.approx(8 * 2 / whole.seconds)
    assert 0 < whole.compile_s < whole.seconds
    assert whole.vs_byzfl == pytest.approx(whole.sample_rounds_per_s / 0.25)
  assert rows[1].seconds + rows[2].seconds < outside
  benchmark.write_csv(rows, str(tmp_path / "monte_carlo.csv"))
  table = list(csv.DictReader(open(tmp_path / "monte_carlo.csv")))
  assert [int(r["processes"]) for r in table] == [1, 1, 1, 2]
  # The launcher's command: the default job with the one rule, one evaluation, no baseline.
  command = benchmark.whole_job_command("mean", 8, 2, "/w", tiny, "/cache")
  assert command[1].endswith("launch/train.py") and command[2].endswith("configs/default.py")
  assert {"--config.aggregator=mean", "--config.num_samples=8",
          "--config.training.num_rounds=2", "--config.training.eval_every=2",
          "--config.estimators.honest_optimum=False", "--compilation_cache=/cache",
          "--workdir=/w"} <= set(command)
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_cpu_foo=1")
  assert benchmark.launcher_env()["XLA_FLAGS"] == "--xla_cpu_foo=1"
