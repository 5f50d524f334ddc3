"""Aggregator throughput: compile and run times per rule over a grid of (n, d), against the
machine's measured memory bandwidth."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_robust import aggregators
from fedjax_robust import numpy_reference


def _block(x):
  return jax.block_until_ready(x)


def time_call(fn: Callable[[], object], repeats: int) -> float:
  """Median wall time of `fn()` over `repeats` calls (each waits for the device)."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    _block(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def memory_bandwidth(num_bytes: int = 400 * 2**20, repeats: int = 5) -> float:
  """Read bandwidth in GB/s: a matrix-vector product streaming a 400 MiB array, measured with
  XLA itself. (A copy is the wrong yardstick here: writing a fresh output buffer each call is
  dominated by first-touch page faults, measured at 6.2 GB/s counting read + write on this
  2-core machine, while rules only read their input.)"""
  x = jnp.ones((64, num_bytes // 4 // 64), jnp.float32)
  read = jax.jit(lambda a: jnp.ones((64,), jnp.float32) @ a)
  _block(read(x))
  seconds = time_call(lambda: read(x), repeats)
  return num_bytes / seconds / 1e9


@dataclasses.dataclass
class Row:
  rule: str
  n: int
  d: int
  f: int
  batch: int               # S: samples aggregated at once under vmap (1: unbatched)
  compile_s: float
  median_s: float
  updates_per_s: float     # client updates aggregated per second (n·S / time)
  passes: int              # reads of the input the rule needs at least (see `nominal_passes`)
  effective_gb_per_s: float  # input bytes × passes / time
  bandwidth_fraction: float
  numpy_s: float = math.nan      # the NumPy reference on the same input (float64)
  numpy_max_diff: float = math.nan
  byzfl_s: float = math.nan      # ByzFL's numpy path, when the package is importable
  byzfl_max_diff: float = math.nan
  note: str = ""


def nominal_passes(spec: str, options: dict) -> int:
  """Reads of the `[n, d]` input a rule cannot do without: 1 for averages and coordinate-wise
  rules, 2 for clipping then averaging (norms, then the weighted sum), 2 per iteration for
  centered clipping. Rules bound by arithmetic (pairwise distances, Weiszfeld) count 1: their
  rate is then the plain input read rate."""
  stages = aggregators.split_spec(spec)
  passes = 1
  if any(s in ("static_clipping", "adaptive_robust_clipping") for s in stages[:-1]):
    passes = 2
  if stages[-1] == "centered_clipping":
    passes = 2 * options.get("centered_clipping", {}).get("iterations", 3)
  return passes


def _byzfl_pipeline(spec: str, f: int, options: dict):
  """ByzFL 0.0.x objects for `spec`, or None when ByzFL is not importable or lacks a stage
  (each stage's class and arguments: `registry.entry(name).byzfl`). Same parameters as ours
  where ByzFL has them (ByzFL's geometric median starts at 0 with ν = 0.1; its Krum counts
  n − f − 1 neighbours: their outputs then differ from ours)."""
  try:
    import byzfl  # pylint: disable=g-import-not-at-top
  except Exception:  # pylint: disable=broad-except
    return None
  stages = aggregators.split_spec(spec)
  # Each stage's ByzFL class and its arguments from this stage's options: its registry entry.
  equivalents = [aggregators.registry.entry(s).byzfl for s in stages]
  if any(e is None for e in equivalents):
    return None
  return [getattr(byzfl, e.name)(**e.args(f, options.get(s, {})))
          for s, e in zip(stages, equivalents)]


def _time_reference(fn, repeats):
  fn()
  return time_call(fn, repeats)


def bench_rule(spec: str, n: int, d: int, f: int, *, batch: int, repeats: int,
               bandwidth: float, options=None, seed: int = 0, reference_repeats: int = 0
               ) -> Row:
  """Times `spec` on random `[n, d]` inputs (or `[batch, n, d]` under vmap), and with
  `reference_repeats` > 0 the NumPy reference and ByzFL on the same (unbatched) input."""
  options = options or {}
  rule = aggregators.get(spec, f=f, options=options)
  shape = (n, d) if batch == 1 else (batch, n, d)
  x = jax.random.normal(jax.random.key(seed), shape, jnp.float32)
  key = jax.random.key(1)
  state = rule.init(d)

  def one(u):
    return rule.apply(u, state, key)[0]

  fn = jax.jit(one if batch == 1 else jax.vmap(one))
  start = time.perf_counter()
  compiled = fn.lower(x).compile()
  compile_s = time.perf_counter() - start
  out = _block(compiled(x))
  seconds = time_call(lambda: compiled(x), repeats)
  passes = nominal_passes(spec, options)
  gbps = x.size * 4 * passes / seconds / 1e9
  row = Row(spec, n, d, f, batch, compile_s, seconds, n * batch / seconds, passes, gbps,
            gbps / bandwidth)
  if reference_repeats > 0:
    x_np = np.asarray(x if batch == 1 else x[0])
    ours = np.asarray(out if batch == 1 else out[0], np.float64)
    stages = aggregators.split_spec(spec)
    if numpy_reference.has("+".join(stages)):
      np_options = {s: options.get(s, {}) for s in stages}
      ref = numpy_reference.aggregate("+".join(stages), x_np, f, np_options)
      row.numpy_s = _time_reference(
          lambda: numpy_reference.aggregate("+".join(stages), x_np, f, np_options),
          reference_repeats)
      row.numpy_max_diff = float(np.max(np.abs(ref - ours)))
    pipeline = _byzfl_pipeline(spec, f, options)
    if pipeline is not None:
      in_place = any(type(stage).__name__ in ("ARC", "Clipping") for stage in pipeline)

      def byz():  # ByzFL's clipping writes into its input: give it a copy
        y = np.array(x_np) if in_place else x_np
        for stage in pipeline:
          y = stage(y)
        return y
      byz_out = np.asarray(byz(), np.float64)
      row.byzfl_s = _time_reference(byz, reference_repeats)
      row.byzfl_max_diff = float(np.max(np.abs(byz_out - ours)))
  return row


def skip_reason(spec: str, n: int, f: int, max_elements: int, d: int, batch: int,
                max_subsets: int = 100_000) -> str:
  """Why a grid point is not run ('' when it is)."""
  if n * d * batch > max_elements:
    return f"n·d·S = {n * d * batch:.2g} > max_elements"
  stages = aggregators.split_spec(spec)
  if stages[-1] in ("minimum_diameter_averaging", "smea") and math.comb(n, f) > max_subsets:
    return f"C({n},{f}) = {math.comb(n, f):.2g} subsets"
  return ""


def run_grid(specs: Sequence[str], grid: Sequence[tuple[int, int]], *, f_fraction: float,
             batch: int, repeats: int, max_elements: int, options=None,
             reference_max_elements: int = 0, reference_repeats: int = 2,
             log: Callable[[str], None] = print) -> tuple[float, list[Row]]:
  """Every spec at every (n, d); the references run where n·d <= reference_max_elements."""
  for spec in specs:
    aggregators.get(spec, f=1, options=options)  # unknown names fail before any timing
  bandwidth = memory_bandwidth()
  log(f"measured read bandwidth: {bandwidth:.1f} GB/s")
  rows = []
  for n, d in grid:
    f = max(1, int(f_fraction * n))
    for spec in specs:
      # Bulyan needs n >= 4f + 3: use the largest f it allows when the grid's f is too big.
      f_rule = min(f, (n - 3) // 4) if aggregators.split_spec(spec)[-1] == "bulyan" else f
      reason = skip_reason(spec, n, f_rule, max_elements, d, batch)
      if reason:
        rows.append(Row(spec, n, d, f_rule, batch, *([math.nan] * 3), 0, math.nan, math.nan,
                        note=f"skipped: {reason}"))
        log(f"  {spec:<32} n={n:<5} d={d:<8} skipped ({reason})")
        continue
      refs = reference_repeats if n * d <= reference_max_elements else 0
      row = bench_rule(spec, n, d, f_rule, batch=batch, repeats=repeats, bandwidth=bandwidth,
                       options=options, reference_repeats=refs)
      rows.append(row)
      log(f"  {spec:<32} n={n:<5} d={d:<8} f={f_rule:<4} {row.median_s * 1e3:10.2f} ms  "
          f"(compile {row.compile_s:.1f} s)  {row.effective_gb_per_s:6.2f} GB/s"
          + (f"  numpy {row.numpy_s * 1e3:.1f} ms" if row.numpy_s == row.numpy_s else "")
          + (f"  byzfl {row.byzfl_s * 1e3:.1f} ms" if row.byzfl_s == row.byzfl_s else ""))
  return bandwidth, rows


def _ms(v):
  return f"{v * 1e3:.2f}" if v == v else "-"


def format_table(rows: Sequence[Row]) -> str:
  header = (f"{'rule':<28} {'n':>5} {'d':>8} {'f':>4} {'S':>4} {'time ms':>9} {'compile s':>9} "
            f"{'updates/s':>10} {'pass':>4} {'GB/s':>6} {'of bw':>6} {'numpy ms':>9} {'×':>6} "
            f"{'|Δ|':>8} {'byzfl ms':>9} {'×':>6} {'|Δ|':>8}  note")
  lines = [header, "-" * len(header)]
  for r in rows:
    np_x = f"{r.numpy_s / r.median_s:.1f}" if r.numpy_s == r.numpy_s else "-"
    bz_x = f"{r.byzfl_s / r.median_s:.1f}" if r.byzfl_s == r.byzfl_s else "-"
    lines.append(
        f"{r.rule:<28} {r.n:>5} {r.d:>8} {r.f:>4} {r.batch:>4} {_ms(r.median_s):>9} "
        f"{r.compile_s:>9.1f} {r.updates_per_s:>10.3g} {r.passes:>4} "
        f"{r.effective_gb_per_s:>6.2f} {100 * r.bandwidth_fraction:>5.1f}% {_ms(r.numpy_s):>9} "
        f"{np_x:>6} {r.numpy_max_diff:>8.1e} {_ms(r.byzfl_s):>9} {bz_x:>6} "
        f"{r.byzfl_max_diff:>8.1e}  {r.note}")
  return "\n".join(lines)


def write_csv(rows, path: str) -> None:
  """Dataclass rows to CSV."""
  import csv  # pylint: disable=g-import-not-at-top
  fields = [f.name for f in dataclasses.fields(rows[0])]
  with open(path, "w", newline="") as fh:
    writer = csv.DictWriter(fh, fieldnames=fields)
    writer.writeheader()
    for r in rows:
      writer.writerow(dataclasses.asdict(r))


def plot_time_vs_d(rows: Sequence[Row], path: str) -> None:
  """One panel per n: median time against d, one line per rule (log-log)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  ns = sorted({r.n for r in rows})
  fig, axes = plt.subplots(1, len(ns), figsize=(5 * len(ns), 4.5), squeeze=False)
  for ax, n in zip(axes[0], ns):
    for spec in dict.fromkeys(r.rule for r in rows):
      pts = sorted((r.d, r.median_s) for r in rows
                   if r.n == n and r.rule == spec and r.median_s == r.median_s)
      if pts:
        ax.plot(*zip(*pts), marker="o", label=spec)
    ax.set(xscale="log", yscale="log", xlabel="d", ylabel="median time (s)", title=f"n = {n}")
    ax.grid(True, which="both", alpha=0.3)
  axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


# ----------------------------------------------------------------------------- Monte Carlo
def numpy_layout(sim):
  """The simulator's flat parameter layout for `numpy_reference`'s MLP: returns
  (layers, flatten, unflatten) with layers a list of (kernel, bias) float64 arrays, for models
  made of Dense layers only (logistic, mlp)."""
  tree = sim._unravel(sim.init(jax.random.key(0)).params)  # pylint: disable=protected-access
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  order = []  # (layer index, 0 kernel / 1 bias, shape) in ravel order
  for path, leaf in leaves:
    names = [getattr(p, "key", str(p)) for p in path]
    if not names[-2].startswith("Dense_"):
      raise ValueError(f"the NumPy baseline supports Dense-only models, got layer {names}")
    order.append((int(names[-2].split("_")[1]), 0 if names[-1] == "kernel" else 1, leaf.shape))
  num_layers = max(o[0] for o in order) + 1
  sizes = [math.prod(shape) for _, _, shape in order]
  offsets = np.cumsum([0] + sizes)

  def flatten(layers):
    return np.concatenate([np.ravel(layers[i][k]) for i, k, _ in order])

  def unflatten(flat):
    layers = [[None, None] for _ in range(num_layers)]
    for (i, k, shape), a, b in zip(order, offsets[:-1], offsets[1:]):
      layers[i][k] = flat[a:b].reshape(shape)
    return [tuple(layer) for layer in layers]

  return flatten, unflatten


@dataclasses.dataclass
class ThroughputRow:
  method: str
  spec: str
  samples: int
  rounds: int
  compile_s: float
  seconds: float
  sample_rounds_per_s: float
  peak_memory_mb: float    # XLA's buffer plan (arguments + outputs + temporaries), or RSS growth
  speedup: float = math.nan  # over the sequential baseline
  block: int = 0           # draws per block of `blocked` (0: all S vmapped at once)
  # XLA's estimate of the bytes one round reads and writes per draw (`round_bytes_per_draw`).
  bytes_per_sample_round: float = math.nan
  devices: int = 1         # on the mesh's draws axis (`sharding`)
  vs_byzfl: float = math.nan  # over ByzFL's own federated loop on the same job (byzfl_loop)
  processes: int = 1       # OS processes the row's rate is over (ByzFL's pool: one per core)


def _peak_device_bytes():
  try:
    stats = jax.devices()[0].memory_stats() or {}
  except Exception:  # pylint: disable=broad-except
    stats = {}
  return stats.get("peak_bytes_in_use")


def _monte_carlo_job(config, spec: str, num_samples: int):
  """The Monte Carlo benchmarks' job: (the Job of `config` with `num_samples` draws, its data,
  the simulator of `spec`, the honest masks, their keys, the initial state)."""
  from fedjax_robust import config as config_lib  # pylint: disable=g-import-not-at-top
  from fedjax_robust import experiment  # pylint: disable=g-import-not-at-top
  from fedjax_robust import training  # pylint: disable=g-import-not-at-top

  job = config_lib.resolve(config).replaced({"num_samples": num_samples})
  fed = config_lib.make_data(job)
  sim = experiment.simulator(job, spec, fed)
  masks = jnp.asarray(experiment.draw_masks(job, fed))
  keys = training.sample_keys(jax.random.key(1), num_samples)
  return job, fed, sim, masks, keys, sim.init(jax.random.key(2))


def round_bytes_per_draw(sim, states, masks, keys, train) -> float:
  """XLA's cost-analysis estimate of the bytes one round of S vmapped draws reads and writes
  (every fused operation's operands and results, after fusion), divided by S: the memory
  traffic the compiled program plans per sample-round. Compiled for one round, since XLA counts
  a loop's body once whatever its trip count. Not a hardware measurement: caches can serve
  part of it, and it is NaN where the backend gives no estimate."""
  program = jax.jit(jax.vmap(functools.partial(sim.run_rounds, num_rounds=1),
                             in_axes=(0, 0, 0, None)))
  cost = program.lower(states, masks, keys, train).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  total = (cost or {}).get("bytes accessed")
  return math.nan if total is None else float(total) / masks.shape[0]


def monte_carlo_throughput(config, spec: str, sample_counts: Sequence[int], num_rounds: int,
                           *, baseline_samples: int = 1, repeats: int = 2,
                           block_sizes: Sequence[int] = (0,), meshes: Sequence[str] = ("",),
                           byzfl: bool = True, byzfl_processes: int | None = None,
                           whole_job: bool = False, whole_job_overrides: Sequence[str] = (),
                           log: Callable[[str], None] = print) -> list[ThroughputRow]:
  """Sample-rounds per second of `num_rounds` rounds of the vmapped training of S draws, for each
  S in `sample_counts`, each block size B in `block_sizes` that divides S and is below it
  (0: all S vmapped at once; else `training.blocked`; per device on a mesh) and each mesh of
  `meshes` ("" one device, else `config.mesh` syntax: the draws split over devices, S a
  multiple of their number), beside the sequential NumPy baseline (`baseline_samples` draws run
  one after the other, one client at a time) and, with `byzfl` when the package is importable,
  ByzFL's own federated loop on the same job as a pool of `byzfl_processes` one-thread
  processes (default one per core, `byzfl_loop.pool_rounds_per_second`; column vs_byzfl). With
  `whole_job`, also the whole launcher command at the largest S (`whole_job`: start-up, data,
  compile, the rounds, one evaluation, the report and its files), `whole_job_overrides` its
  further flags."""
  from fedjax_robust import experiment  # pylint: disable=g-import-not-at-top
  from fedjax_robust import sharding  # pylint: disable=g-import-not-at-top
  from fedjax_robust import training  # pylint: disable=g-import-not-at-top

  job, fed, sim, masks, keys, initial = _monte_carlo_job(config, spec, max(sample_counts))
  rows = []
  run = jax.vmap(functools.partial(sim.run_rounds, num_rounds=num_rounds),
                 in_axes=(0, 0, 0, None))
  for mesh_spec in meshes:
    mesh = sharding.make(mesh_spec)
    devices = sharding.draws_of(mesh)
    for s in sample_counts:
      for block in block_sizes:
        if block and (block >= s // devices or (s // devices) % block):
          continue
        if s % devices:
          log(f"  (mesh {mesh_spec!r}: S={s} is not a multiple of its {devices} devices)")
          break
        if mesh is None:
          args = (training.replicate(initial, s), masks[:s], keys[:s], fed.train)
          program = training.blocked(run, block) if block else run
          start = time.perf_counter()
          compiled = jax.jit(program).lower(*args).compile()
        else:
          place = experiment._Mesh(sim, s, mesh)  # pylint: disable=protected-access
          place.block = block
          args = (place.states(initial), place.put(np.asarray(masks[:s])),
                  place.put(keys[:s], keys=True), place.train_data(fed.train))
          start = time.perf_counter()
          compiled = place.advance(num_rounds, *args)
        compile_s = time.perf_counter() - start
        live = [args]

        def call():  # the mesh's program donates the states: each call takes the last ones
          out = compiled(*live[0])
          if mesh is not None:
            live[0] = (out[0],) + live[0][1:]
          return out
        _block(call())
        seconds = time_call(call, repeats)
        mem = compiled.memory_analysis()
        plan = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
                - mem.alias_size_in_bytes) if mem is not None else math.nan
        peak = _peak_device_bytes()
        method = (f"blocked JAX B={block}" if block else "vmapped JAX") + (
            f" on {devices} dev" if mesh is not None else "")
        moved = (round_bytes_per_draw(sim, *args) if not block and mesh is None
                 else math.nan)
        rows.append(ThroughputRow(method, spec, s, num_rounds, compile_s, seconds,
                                  s * num_rounds / seconds,
                                  (peak if peak is not None else plan) / 2**20, block=block,
                                  bytes_per_sample_round=moved, devices=devices))
        log(f"  {method:<26} S={s:<6} {seconds:8.3f} s  {rows[-1].sample_rounds_per_s:10.1f} "
            f"sample-rounds/s  (compile {compile_s:.1f} s, memory "
            f"{rows[-1].peak_memory_mb:.0f} MB"
            + ("" if math.isnan(moved) else f", XLA's estimate {moved / 2**20:.2f} MB moved "
               "per sample-round") + ")")
  if whole_job:  # cold (a first run: every program compiled), then warm (a repeat run: the
    # programs read back from the persistent compilation cache the cold run filled)
    with tempfile.TemporaryDirectory(prefix="xla_cache_") as cache:
      for method in (WHOLE_JOB, WHOLE_JOB_WARM):
        rows.append(run_whole_job(spec, max(sample_counts), num_rounds,
                                  overrides=whole_job_overrides, log=log, cache_dir=cache,
                                  method=method))
  if byzfl:
    _versus_byzfl(rows, job, spec, fed, np.asarray(masks[0]), num_rounds, log,
                  processes=byzfl_processes)

  # The sequential baseline: same data, model, attack and rule, in NumPy.
  if not baseline_samples:
    log("  (sequential NumPy baseline skipped: baseline_samples=0)")
  elif numpy_reference.has(spec) and job.attack in ("none", "alie"):
    flatten, unflatten = numpy_layout(sim)
    xs, ys = _client_arrays(fed, np.float64)
    t = job.training
    z = job.attack_options.alie.z
    attack = (None if job.attack == "none" else
              lambda u, h: numpy_reference.alie(u, h, z))
    options = job.options  # τ in the units the rules take
    aggregate_fn = lambda u: numpy_reference.aggregate(spec, u, job.f, options)
    layers0 = unflatten(np.asarray(initial.params, np.float64))
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for s in range(baseline_samples):
      numpy_reference.train_sequential(
          layers0, flatten, unflatten, xs, ys, np.asarray(masks[s]), rounds=num_rounds,
          local_steps=t.local_steps, batch_size=t.batch_size, lr=t.client_lr,
          momentum=t.client_momentum, server_lr=t.server_lr, aggregate_fn=aggregate_fn,
          attack_fn=attack, rng=rng)
    seconds = time.perf_counter() - start
    base_rate = baseline_samples * num_rounds / seconds
    rows.append(ThroughputRow("sequential NumPy", spec, baseline_samples, num_rounds, 0.0,
                              seconds, base_rate, math.nan, 1.0))
    log(f"  {'sequential NumPy':<20} S={baseline_samples:<6} {seconds:8.3f} s  {base_rate:10.1f} "
        "sample-rounds/s")
    for r in rows[:-1]:
      if r.method not in (BYZFL_LOOP, WHOLE_JOB, WHOLE_JOB_WARM):
        r.speedup = r.sample_rounds_per_s / base_rate
  else:
    log(f"  (no sequential NumPy baseline for {spec!r} with attack {job.attack!r})")
  return rows


BYZFL_LOOP = "ByzFL's own loop"
WHOLE_JOB = "whole job (launch/train.py)"
WHOLE_JOB_WARM = "whole job, repeated"  # its compiled programs read from the persistent cache


def whole_job_command(spec: str, num_samples: int, num_rounds: int, workdir: str,
                      overrides: Sequence[str] = (), cache_dir: str = "") -> list[str]:
  """The launcher command `run_whole_job` times: configs/default.py as shipped with one rule,
  S draws, `num_rounds` rounds evaluated once at the end, no honest-only baseline (theory is
  off in the default job), then `overrides`; the persistent compilation cache in `cache_dir`
  ('': none, every program compiled as on a first run)."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return [sys.executable, os.path.join(repo, "launch", "train.py"),
          f"--config={os.path.join(repo, 'configs', 'default.py')}",
          f"--config.aggregator={spec}", f"--config.num_samples={num_samples}",
          f"--config.training.num_rounds={num_rounds}",
          f"--config.training.eval_every={num_rounds}",
          "--config.estimators.honest_optimum=False", f"--compilation_cache={cache_dir}",
          *overrides,
          f"--workdir={workdir}"]


def launcher_env() -> dict[str, str]:
  """This process's environment without a forced host device count in XLA_FLAGS (a benchmark
  run with one must not hand it to the launcher, which picks its own devices: one per core for
  the default job's mesh)."""
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  if flags:
    env["XLA_FLAGS"] = " ".join(flags)
  else:
    env.pop("XLA_FLAGS", None)
  return env


def run_whole_job(spec: str, num_samples: int, num_rounds: int, *,
                  overrides: Sequence[str] = (), log: Callable[[str], None] = print,
                  cache_dir: str = "", method: str = WHOLE_JOB) -> ThroughputRow:
  """The whole launcher job as a user runs it (`whole_job_command`, a subprocess with a fresh
  --workdir in a temporary folder, so no cached run is reused), timed on the wall clock from
  start to exit: Python and JAX start-up, data, compilation, the rounds, the evaluation, the
  report (bootstrap CIs) and its files. sample_rounds_per_s = S · rounds / wall seconds;
  compile_s is the job's own compile time (timings.json), and the log line gives its
  `run_seconds` (the chunks' rounds and evaluations) and the rest."""
  with tempfile.TemporaryDirectory(prefix="whole_job_") as workdir:
    command = whole_job_command(spec, num_samples, num_rounds, workdir, overrides, cache_dir)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=launcher_env(),
                          check=False)
    seconds = time.perf_counter() - start
    if done.returncode:
      raise RuntimeError(f"the whole job failed (exit {done.returncode}): {' '.join(command)}\n"
                         + done.stderr[-3000:])
    with open(os.path.join(workdir, "timings.json")) as fh:
      timings = json.load(fh)
  compile_s = sum(t["compile_seconds"] for t in timings.values())
  run_s = sum(t["run_seconds"] for t in timings.values())
  row = ThroughputRow(method, spec, num_samples, num_rounds, compile_s, seconds,
                      num_samples * num_rounds / seconds, math.nan, devices=0)
  log(f"  {method:<26} S={num_samples:<6} {seconds:8.3f} s  {row.sample_rounds_per_s:10.1f} "
      f"sample-rounds/s  (compile {compile_s:.1f} s, training {run_s:.1f} s, the rest "
      f"{seconds - compile_s - run_s:.1f} s: start-up, data, report, files)")
  return row


def _client_arrays(fed, dtype):
  """Each client's own examples without padding: features flattened `[m_i, features]` as
  `dtype`, and labels."""
  counts = np.asarray(fed.train.counts)
  return ([np.asarray(fed.train.x[i, :c], dtype).reshape(c, -1) for i, c in enumerate(counts)],
          [np.asarray(fed.train.y[i, :c]) for i, c in enumerate(counts)])


def _versus_byzfl(rows, job, spec: str, fed, honest: np.ndarray, num_rounds: int,
                  log: Callable[[str], None], processes: int | None = None) -> None:
  """Appends ByzFL's own federated loop on the same clients' data, model, batch, learning rate,
  momentum, f and rule (`byzfl_loop`, one draw's honest set), run as a pool of `processes`
  one-thread processes side by side (default one per core: the cores our side uses), and sets
  every row's vs_byzfl to its rate over the pool's wall-clock rounds/s; says why when it
  cannot."""
  from fedjax_robust import byzfl_loop  # pylint: disable=g-import-not-at-top

  if not byzfl_loop.available():
    log("  (ByzFL's loop: the byzfl package is not importable here; install it in a separate "
        "venv, BUILD.md, for the vs_byzfl column)")
    return
  why = ("the rule has no ByzFL equivalent" if spec not in byzfl_loop.RULES else
         "ByzFL's loop runs ALIE or no attack" if job.attack not in ("none", "alie") else
         "the model is not the MLP" if job.model != "mlp" else
         "more than one local step" if job.training.local_steps != 1 else "")
  if why:
    log(f"  (no ByzFL loop for {spec!r}: {why})")
    return
  xs, ys = _client_arrays(fed, np.float32)
  t = job.training
  options = job.options.get(spec, {})
  pool = byzfl_loop.pool_rounds_per_second(
      xs, ys, honest, processes=processes, spec=spec, f=job.f,
      hidden=tuple(job.model_options.mlp.hidden), num_classes=fed.num_classes,
      batch_size=t.batch_size, lr=t.client_lr, momentum=t.client_momentum,
      num_rounds=num_rounds, attack=job.attack,
      aggregator_parameters={"T": options["maxiter"]} if spec == "geometric_median" else None)
  rate = pool.rounds_per_s
  rows.append(ThroughputRow(BYZFL_LOOP, spec, pool.processes, num_rounds, 0.0, pool.window_s,
                            rate, math.nan, devices=0, vs_byzfl=1.0, processes=pool.processes))
  log(f"  {BYZFL_LOOP:<26} S={pool.processes:<6} {pool.window_s:8.3f} s  {rate:10.1f} "
      f"sample-rounds/s ({pool.processes} one-thread processes side by side, rounds over the "
      f"common window; each alone {', '.join(f'{r:.1f}' for r in pool.per_process)} rounds/s, "
      f"sum {pool.sum_of_rates:.1f})")
  for r in rows[:-1]:
    r.vs_byzfl = r.sample_rounds_per_s / rate


@dataclasses.dataclass
class PhaseRow:
  spec: str
  samples: int
  phase: str                # local_training, attack, aggregation, round
  seconds: float            # one round's phase for S draws (median)
  sample_rounds_per_s: float


def monte_carlo_phases(config, spec: str, sample_counts: Sequence[int], *, repeats: int = 3,
                       log: Callable[[str], None] = print) -> list[PhaseRow]:
  """Where a round's time goes as S grows: each phase of `training.Simulator.round` compiled and
  timed alone for S draws at the initial model — local training of every client (vmapped over
  draws and clients), the attack on the `[S, n, d]` updates, the rule on them — beside one whole
  round. The phases do not add up to the round exactly (XLA fuses across them in the round)."""
  from fedjax_robust import training  # pylint: disable=g-import-not-at-top

  _, fed, sim, masks, keys, initial = _monte_carlo_job(config, spec, max(sample_counts))
  n = sim.num_clients
  train = fed.train

  def local(params, momentum, key, honest):
    return jax.vmap(sim.local_update, in_axes=(None, 0, 0, 0, 0, 0, 0))(
        params, momentum, train.x, train.y, train.counts, jax.random.split(key, n), ~honest)

  def attack(updates, key, honest, state):
    if sim.attack.poison is None:
      return updates
    return sim.attack.poison(key, updates, ~honest, state[0], None)[0]

  def aggregate(updates, key, state):
    return sim.aggregator.apply(updates, state, key, None)[0]

  rows = []
  for s in sample_counts:
    states = training.replicate(initial, s)
    m, k = masks[:s], keys[:s]
    updates = jax.jit(jax.vmap(local, in_axes=(0, 0, 0, 0)))(states.params, states.momentum, k,
                                                              m)[0]
    programs = {
        "local_training": (jax.vmap(local), (states.params, states.momentum, k, m)),
        "attack": (jax.vmap(attack), (updates, k, m, states.attack_state)),
        "aggregation": (jax.vmap(aggregate), (updates, k, states.aggregator_state)),
        "round": (jax.vmap(functools.partial(sim.run_rounds, num_rounds=1),
                           in_axes=(0, 0, 0, None)), (states, m, k, train)),
    }
    for phase, (fn, args) in programs.items():
      compiled = jax.jit(fn).lower(*args).compile()
      _block(compiled(*args))
      seconds = time_call(lambda: compiled(*args), repeats)
      rows.append(PhaseRow(spec, s, phase, seconds, s / seconds))
      log(f"  S={s:<6} {phase:<15} {1e3 * seconds:9.2f} ms  {s / seconds:10.1f} sample-rounds/s")
  return rows


def format_throughput(rows: Sequence[ThroughputRow]) -> str:
  header = (f"{'method':<28} {'spec':<22} {'S':>6} {'rounds':>6} {'seconds':>9} "
            f"{'sample-rounds/s':>16} {'speed-up':>9} {'vs ByzFL':>9} {'memory MB':>10} "
            f"{'compile s':>9} {'MB/sample-round':>15} {'procs':>5}")
  lines = [header, "-" * len(header)]
  for r in rows:
    lines.append(f"{r.method:<28} {r.spec:<22} {r.samples:>6} {r.rounds:>6} {r.seconds:>9.3f} "
                 f"{r.sample_rounds_per_s:>16.1f} {r.speedup:>8.1f}× {r.vs_byzfl:>8.1f}× "
                 f"{r.peak_memory_mb:>10.0f} {r.compile_s:>9.1f} "
                 f"{r.bytes_per_sample_round / 2**20:>15.2f} {r.processes:>5}")
  return "\n".join(lines)
