"""Runs one experiment: S draws of μ_H × every configured aggregator, on one compiled program each.

Rounds run in chunks of `eval_every` (one compiled `lax.scan` of vmapped rounds per chunk, called
from a Python loop over chunks, never over clients or samples), so progress can be reported and
the honest metrics recorded between chunks.

The engine's other parts are their own modules, whose public names are re-exported here: the
cache of the runs (`run_cache`), the chunking and memory plan (`memory`) and a worst case's record
(`worst_case_summary`). The worst-case searches train, so they stay here with the runner.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import math
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
import numpy as np

from fedjax_robust import aggregators
from fedjax_robust import build
from fedjax_robust import checkpoints as checkpoints_lib
from fedjax_robust import config as config_lib
from fedjax_robust import honest_sets
from fedjax_robust import pretraining
from fedjax_robust import provenance
from fedjax_robust import server_prior
from fedjax_robust import sharding
from fedjax_robust import training
from fedjax_robust import worst_case
from fedjax_robust.aggregators import minimum_diameter
from fedjax_robust.theory import report as theory_report
from fedjax_robust.data import FederatedData
from fedjax_robust.errors import ConfigError
# re-exported: experiment's public interface (the callers, configs and tests use them as
# experiment.<name>), with the private names run() and the tests use. The run cache, the memory
# plan and the worst case's record live in their own engine modules; this one runs the job.
from fedjax_robust.memory import _human_bytes
from fedjax_robust.memory import align_draws
from fedjax_robust.memory import chunk_size
from fedjax_robust.memory import DRAW_ALIGNMENT
from fedjax_robust.memory import fixed_memory
from fedjax_robust.memory import local_batch_size
from fedjax_robust.memory import memory_plan
from fedjax_robust.memory import MemoryPlan
from fedjax_robust.memory import plan_simulator
from fedjax_robust.run_cache import _leaves
from fedjax_robust.run_cache import _load_worst_case
from fedjax_robust.run_cache import _NOT_IN_REFERENCE
from fedjax_robust.run_cache import _save_worst_case
from fedjax_robust.run_cache import _schema_defaults
from fedjax_robust.run_cache import AggregatorRun
from fedjax_robust.run_cache import config_changes
from fedjax_robust.run_cache import fingerprint
from fedjax_robust.run_cache import NOT_IN_RUN
from fedjax_robust.run_cache import NPZ_ERRORS
from fedjax_robust.run_cache import reference_config
from fedjax_robust.run_cache import run_config
from fedjax_robust.worst_case_summary import _value_summary
from fedjax_robust.worst_case_summary import format_worst_case

METRICS = ("honest_loss", "honest_accuracy", "test_loss", "test_accuracy")  # + backdoor_accuracy


# Called after every evaluation step with a dict: spec, chunk, num_chunks, round, num_rounds,
# and, over every training of the job (each aggregator's chunks, then the honest-only
# baseline's), fraction (of their steps), elapsed and eta (s; None until a step without compiling
# has been timed, see `_JobClock`); after: None, or on the last step the phases still to come.
Progress = Callable[[dict], None]

# Simulators and compiled programs reused across runs whose configurations differ only in what
# the program does not depend on (μ_H, seed, number of draws): a sweep compiles once per shape.
# Only the MAX_CACHED_SIMULATORS most recently used simulators are kept, with their programs:
# every compiled program holds its JIT code pages, and an unbounded cache made a 245-point sweep
# fail after ~100 points (XLA:CPU "LLVM compilation error: Cannot allocate memory", the process's
# memory maps at the kernel's limit, then a crash).
MAX_CACHED_SIMULATORS = 16
simulator_cache: collections.OrderedDict[str, training.Simulator] = collections.OrderedDict()
_programs: dict[tuple, Callable] = {}
# (id(simulator), draws, ...) -> (the simulator as planned, its MemoryPlan): `_planned`.
_plans: dict[tuple, tuple] = {}
_NOT_IN_PROGRAM = ("seed", "honest_set", "honest_set_options", "graph", "num_samples",
                   "num_samples_per_chunk", "memory_budget_gb", "estimators", "report",
                   "checkpoint", "draw_condition")

# Draws per block inside a chunk's compiled program: the chunk's rounds run as a `lax.map` over
# blocks of vmapped draws (`training.blocked`), so a block's [B, n, d] working set stays in cache
# while the chunk can stay large. Per backend, measured (BUILD.md, "Monte Carlo"): on this CPU
# the digits job with the trimmed mean ran 1902 sample-rounds/s at S = 1024 vmapped at once and
# 2880 in blocks of 64 (2572 at S = 16); on the H100 one block (the GPU wants width). A block is
# a multiple of DRAW_ALIGNMENT, so a draw's numbers do not depend on it.
DRAWS_PER_BLOCK = {"cpu": 64}
# The same per device on a mesh of several devices (`sharding`): on this CPU with two devices
# (one per core) blocks of 8 draws per device ran the geometric median at 3035 sample-rounds/s
# (S = 256; 2807 with 16, 2601 with 32) and the trimmed mean at 4135 (3425 with 64).
DRAWS_PER_BLOCK_ON_MESH = {"cpu": 8}


def block_size(chunk: int, devices: int = 1) -> int:
  """Draws per block of a chunk of `chunk` draws on one of `devices` devices (0: the chunk is
  one block): the backend's DRAWS_PER_BLOCK (DRAWS_PER_BLOCK_ON_MESH on several devices),
  reduced to a divisor of the chunk that is a multiple of DRAW_ALIGNMENT."""
  target = (DRAWS_PER_BLOCK_ON_MESH if devices > 1 else DRAWS_PER_BLOCK).get(
      jax.default_backend(), 0)
  if not target or chunk <= target:
    return 0
  return math.gcd(chunk, target)


def _block_of(chunk: int, mesh) -> int:
  """Draws per block on each device for a chunk of `chunk` draws on `mesh` (None: one device);
  0 with a clients axis (XLA's partitioner places those programs, without blocks)."""
  if sharding.clients_of(mesh) > 1:
    return 0
  devices = sharding.draws_of(mesh)
  return block_size(chunk // devices, devices)


def simulator(job, spec: str, fed: FederatedData, *,
              reference: str | None = None) -> training.Simulator:
  """`build.make_simulator`, cached by everything its program depends on. A reference
  simulator (`reference="honest_optimum"`: the mean of the honest clients, no attack) does not
  depend on the aggregator, its options, f or the server's prior: one serves every rule. `job`:
  a Job (or a ConfigDict, resolved by the builder)."""
  c = config_lib.config_of(job).copy_and_resolve_references()
  with c.unlocked():
    c.aggregator = spec if reference is None else f"reference:{reference}"
    for key in _NOT_IN_PROGRAM + (() if reference is None else _NOT_IN_REFERENCE):
      del c[key]
  key = hashlib.sha256((c.to_json(sort_keys=True) + str(fed.input_shape) +
                        str(fed.num_classes)).encode()).hexdigest()
  if key in simulator_cache:
    simulator_cache.move_to_end(key)
    return simulator_cache[key]
  sim = build.make_simulator(job, spec, fed, reference=reference)
  if reference == "honest_optimum" and job.theory.enabled:
    # The non-convex theory compares a rule's ‖∇L_S(θ_t)‖² with the honest-only run's on the
    # same draws (theory.report.per_draw's `excess`): the baseline measures it too.
    sim = dataclasses.replace(sim, measure_theory=True)
  simulator_cache[key] = sim
  while len(simulator_cache) > MAX_CACHED_SIMULATORS:
    _, evicted = simulator_cache.popitem(last=False)
    for program_key in [k for k in _programs if k[1] == id(evicted)]:
      del _programs[program_key]
    for plan_key in [k for k in _plans if k[0] == id(evicted)]:
      del _plans[plan_key]
  return simulator_cache[key]


def _program(kind: str, sim, build, *args):
  """`build()` jitted and compiled for `args`' shapes, cached per simulator."""
  shapes = tuple((getattr(a, "shape", None), str(getattr(a, "dtype", type(a))))
                 for a in jax.tree.leaves(args))
  key = (kind, id(sim), shapes)
  if key not in _programs:
    _programs[key] = build().lower(*args).compile()
  return _programs[key]


def _pad_to(x: jax.Array, size: int) -> jax.Array:
  """x `[k, ...]` padded to `[size, ...]` by repeating its first row (results are discarded)."""
  if x.shape[0] == size:
    return x
  return jnp.concatenate([x, jnp.repeat(x[:1], size - x.shape[0], axis=0)])


def _in_groups(fn, params, masks, *shared):
  """`fn(params, masks, *shared)` (compiled for DRAW_ALIGNMENT draws) over `[W, ...]` draws, one
  group of DRAW_ALIGNMENT at a time, outputs (an array or a dict of arrays) concatenated: the
  same compiled program whatever W, so evaluation metrics are bit-identical across chunk sizes
  (XLA:CPU vectorizes the mean over the test set differently at W = 8 and W = 24, and simplifies
  a one-trip `lax.map` differently from a longer one)."""
  width = jax.tree.leaves(params)[0].shape[0]
  # Every group dispatched before any is read back: the device never waits on the host.
  parts = [fn(jax.tree.map(lambda a: a[g:g + DRAW_ALIGNMENT], params),
              masks[g:g + DRAW_ALIGNMENT], *shared)
           for g in range(0, width, DRAW_ALIGNMENT)]
  return _concat(jax.device_get(parts))


def _concat(parts):
  return jax.tree.map(lambda *p: np.concatenate([np.asarray(x) for x in p]), *parts)


def _host_states(initial, chunk: int):
  """A chunk's initial states `[W, ...]` on the host (broadcast views: nothing copied)."""
  return jax.tree.map(lambda a: np.broadcast_to(np.asarray(a), (chunk,) + np.shape(a)), initial)


class _OneDevice:
  """How a chunk's draws are placed and its programs built on the default device."""

  def __init__(self, sim, chunk: int):
    self.sim, self.chunk = sim, chunk
    self.block = _block_of(chunk, None)

  def put(self, host, *, keys: bool = False):
    return jnp.asarray(host) if not keys else host

  def states(self, initial):
    return training.replicate(initial, self.chunk)

  def restore(self, host):
    """A chunk's state `[W, ...]` from host arrays (a checkpoint), placed as `states` places
    a fresh one."""
    return jax.tree.map(jnp.asarray, host)

  def advance(self, eval_every, *args):
    def build():
      run = jax.vmap(functools.partial(self.sim.run_rounds, num_rounds=eval_every),
                     in_axes=(0, 0, 0, None))
      return jax.jit(training.blocked(run, self.block) if self.block else run, donate_argnums=0)
    return _program(f"advance{eval_every}/{self.block}", self.sim, build, *args)

  def grouped(self, kind: str, fn, params, masks, *shared):
    """`fn(params, masks, *shared) -> (dict of) [W, ...]` per group of DRAW_ALIGNMENT draws,
    as a callable of the same arguments returning host arrays in draw order."""
    program = _program(kind, self.sim, lambda: jax.jit(fn),
                       jax.tree.map(lambda a: a[:DRAW_ALIGNMENT], params),
                       masks[:DRAW_ALIGNMENT], *shared)
    return lambda p, m, *sh: _in_groups(program, p, m, *sh)

  gather = staticmethod(lambda x: jax.device_get(x))


class _Mesh(_OneDevice):
  """A chunk's draws split over the mesh's draws axis (each device runs the one-device program
  on its W/D draws, blocks included), each draw's clients over its clients axis
  (`sharding.constrain`, XLA's partitioner; no blocks)."""

  def __init__(self, sim, chunk: int, mesh):
    self.sim, self.chunk, self.mesh = sim, chunk, mesh
    self.devices = sharding.draws_of(mesh)
    self.by_clients = sharding.clients_of(mesh) > 1
    self.block = _block_of(chunk, mesh)
    self.name = f"mesh{dict(mesh.shape)}"

  def put(self, host, *, keys: bool = False):
    if keys:  # typed keys travel as their raw data
      self.key_impl = jax.random.key_impl(host)
      host = jax.random.key_data(host)
    return sharding.put(self.mesh, host, sharding.P(sharding.DRAWS))

  def replicated(self, tree):
    return sharding.put_tree(self.mesh, tree, sharding.P())

  def _state_specs(self, state):
    """Every leaf split over the draws; with a clients axis the momentum (and error-feedback)
    rows `[W, n, d]` also over the clients (they stay on the device that trains the client)."""
    specs = jax.tree.map(lambda _: sharding.P(sharding.DRAWS), state)
    if self.by_clients:
      specs = specs._replace(momentum=sharding.P(sharding.DRAWS, sharding.CLIENTS))
      if not isinstance(state.residual, tuple):  # error-feedback residuals: rows like momentum
        specs = specs._replace(residual=sharding.P(sharding.DRAWS, sharding.CLIENTS))
    return specs

  def states(self, initial):
    return self.restore(_host_states(initial, self.chunk))

  def restore(self, host):
    return jax.tree.map(lambda a, spec: sharding.put(self.mesh, a, spec), host,
                        self._state_specs(host))

  def train_data(self, train):
    """The clients' data: replicated, or split over the clients axis."""
    return sharding.put_tree(self.mesh, train, sharding.P(
        sharding.CLIENTS if self.by_clients else None))

  def _keys(self, data):
    return jax.random.wrap_key_data(data, impl=self.key_impl)

  def advance(self, eval_every, *args):
    def build():
      run_rounds = functools.partial(self.sim.run_rounds, num_rounds=eval_every)
      if self.by_clients:
        run = jax.vmap(run_rounds, in_axes=(0, 0, 0, None), spmd_axis_name=sharding.DRAWS)
        named = lambda spec: jax.sharding.NamedSharding(self.mesh, spec)
        states = jax.tree.map(named, self._state_specs(args[0]))
        return jax.jit(lambda st, m, k, train: run(st, m, self._keys(k), train),
                       out_shardings=(states, named(sharding.P(sharding.DRAWS))),
                       donate_argnums=0)
      run = jax.vmap(run_rounds, in_axes=(0, 0, 0, None))
      run = training.blocked(run, self.block) if self.block else run
      return sharding.shard_draws(lambda st, m, k, train: run(st, m, self._keys(k), train),
                                  self.mesh, 3, 1, donate=True)
    with jax.set_mesh(self.mesh):
      return _program(f"advance{eval_every}/{self.block}/{self.name}", self.sim, build, *args)

  def grouped(self, kind: str, fn, params, masks, *shared):
    """Group j takes draws j·G ... j·G + G − 1 of every device's own W/D draws (G =
    DRAW_ALIGNMENT) and runs the one-device program of G draws on each device, on the data
    already there; the groups' outputs are gathered and put back in draw order. (One program
    partitioned over the mesh changed the honest loss of some draws by 1 ulp on XLA:CPU.)"""
    group = DRAW_ALIGNMENT
    key = (kind, id(self.sim), "per-device")
    if key not in _programs:  # jit compiles it once per device, on first use
      _programs[key] = jax.jit(fn)
    program = _programs[key]
    local = self.chunk // self.devices
    order = np.argsort(sharding.group_order(self.chunk, self.devices, group))

    def run(p, m, *sh):
      mine = sharding.local_parts((p, m))
      common = sharding.local_parts(sh)
      # Every group dispatched on every device before any is gathered to the host.
      dispatched = [sharding.assemble(
          {device: program(*jax.tree.map(lambda a: a[j:j + group], mine[device]),
                           *common[device]) for device in mine}, self.mesh)
                    for j in range(0, local, group)]
      parts = [jax.tree.map(sharding.gather, out) for out in dispatched]
      return jax.tree.map(lambda a: a[order], _concat(parts))
    return run

  gather = staticmethod(lambda x: jax.tree.map(sharding.gather, x))


def run_monte_carlo(sim: training.Simulator, fed: FederatedData, masks: jax.Array, *,
                    init_key: jax.Array, run_key: jax.Array, num_rounds: int, eval_every: int,
                    spec: str = "", chunk: int | None = None,
                    progress: Callable[[int, int, int], None] | None = None,
                    draw_ids: np.ndarray | None = None, mesh=None,
                    checkpoints: checkpoints_lib.Store | None = None,
                    resumed: Callable[[int], None] | None = None) -> AggregatorRun:
  """Trains S models, one per honest mask `[S, n]`, and evaluates them every `eval_every` rounds.

  The S draws run `chunk` at a time (rounded up to a multiple of DRAW_ALIGNMENT; all at once by
  default), the last chunk padded; draw s always uses the key fold_in(run_key, s), or
  fold_in(run_key, draw_ids[s]) when `draw_ids` is given (common random numbers). A draw's
  numbers are bit-identical whatever the chunk size and whichever draws share its chunk
  (measured on XLA:CPU; see DRAW_ALIGNMENT and `aggregators.base.uniform_cond`).
  With a `mesh` (`sharding.make`), a chunk's draws are split over its draws axis (the chunk is
  then a multiple of DRAW_ALIGNMENT per device) and each draw's clients over its clients axis.
  `progress(chunk_index, evaluation_step, num_steps_per_chunk)` is called after each step.
  With `checkpoints` (a `checkpoints.Store`) the run resumes from the store's newest checkpoint
  (`resumed(steps)` is told how many evaluation steps it skips) and saves one when the store says
  it is due; the numbers are those of an uninterrupted run, bit for bit.
  """
  num_samples = masks.shape[0]
  devices = sharding.draws_of(mesh)
  chunk = align_draws(num_samples if chunk is None else min(chunk, num_samples), devices)
  all_keys = training.sample_keys(run_key, num_samples, draw_ids)
  # A mixed population: the evaluation takes each client's behaviour code in place of the
  # honest mask (0 = honest), to report every behaviour's metrics; the draw's composition is
  # kept (`final["composition.<behaviour>"]`, written to draws.csv).
  composition = {}
  if sim.population:
    codes = sim.behaviour_codes(masks, all_keys)
    composition = {f"composition.{a.name}": np.asarray(jnp.sum(codes == k + 1, axis=1))
                   for k, a in enumerate(sim.behaviours)}
    eval_masks = codes
  else:
    eval_masks = masks
  place = _OneDevice(sim, chunk) if mesh is None else _Mesh(sim, chunk, mesh)
  initial = sim.init(init_key)
  # The evaluation's shared inputs after (params, mask, train): the test set, and each
  # client's held-out split when there is one (honest_holdout_* metrics).
  test = (fed.test_x, fed.test_y) + ((fed.holdout,) if fed.holdout is not None else ())
  train = everyone = fed.train  # what training reads, and what the evaluation reads
  if mesh is not None:
    train, everyone, test = (place.train_data(train), place.replicated(train),
                             place.replicated(test))
  start = time.perf_counter()
  states0 = place.states(initial)
  chunk_of = lambda a, first: place.put(_pad_to(a[first:first + chunk], chunk),
                                        keys=a is all_keys)
  probe_masks, probe_keys = chunk_of(masks, 0), chunk_of(all_keys, 0)
  advance = place.advance(eval_every, states0, probe_masks, probe_keys, train)
  evaluate = place.grouped(
      "evaluate", jax.vmap(sim.evaluate, in_axes=(0, 0, None) + (None,) * len(test)),
      sim.eval_params(states0), chunk_of(eval_masks, 0), everyone, *test)
  smoothness = None
  if sim.measure_theory:
    smoothness = place.grouped(
        "smoothness", jax.vmap(sim.honest_smoothness, in_axes=(0, 0, None)),
        states0.params, probe_masks, everyone)
  # The compiles' example states are a whole chunk's: freed before the chunks' own (the memory
  # plan counts one chunk of states, not two).
  del states0
  compile_seconds = time.perf_counter() - start

  num_steps = num_rounds // eval_every
  starts = list(range(0, num_samples, chunk))
  history_parts, aux_parts, final_parts = [], [], []
  resume = None
  if checkpoints is not None:
    resume = checkpoints.restore(_host_states(initial, chunk))
  if resume is not None:  # the finished chunks' results as one part; the chunk's state below
    done = resume["finished"]
    if resume["part"]:
      history_parts.append({k[7:]: v for k, v in done.items() if k.startswith("metric.")})
      aux_parts.append({k[4:]: v for k, v in done.items() if k.startswith("aux.")})
      if "final" in done:
        final_parts.append(done["final"])
    skipped = resume["part"] * num_steps + resume["step"]
    checkpoints.log(f"{spec}: resumed from its checkpoint after round "
                    f"{resume['step'] * eval_every} of chunk {resume['part'] + 1}/{len(starts)} "
                    f"({skipped} of {len(starts) * num_steps} evaluation steps done)")
    if resumed is not None:
      resumed(skipped)

  def finished() -> dict:
    """The finished chunks' results, concatenated over the draws (what a checkpoint keeps)."""
    if not history_parts:
      return {}
    out = {f"metric.{k}": np.concatenate([p[k] for p in history_parts], axis=1)
           for k in history_parts[0]}
    out |= {f"aux.{k}": np.concatenate([p[k] for p in aux_parts], axis=1) for k in aux_parts[0]}
    if final_parts:
      out["final"] = np.concatenate(final_parts)
    return out

  start = time.perf_counter()
  try:
    for part, first in enumerate(starts):
      if resume is not None and part < resume["part"]:
        continue
      size = min(chunk, num_samples - first)
      part_masks, part_keys = chunk_of(masks, first), chunk_of(all_keys, first)
      part_eval = chunk_of(eval_masks, first)
      if resume is not None and part == resume["part"]:
        states = place.restore(resume["state"])
        history = [{k: v[i] for k, v in resume["history"].items()}
                   for i in range(resume["step"] + 1)]
        aux_history = [{k: v[i] for k, v in resume["aux"].items()} for i in range(resume["step"])]
        first_step = resume["step"]
      else:
        states = place.states(initial)
        history = [evaluate(sim.eval_params(states), part_eval, everyone, *test)]
        aux_history, first_step = [], 0
      for step in range(first_step, num_steps):
        states, aux = advance(states, part_masks, part_keys, train)
        history.append(evaluate(sim.eval_params(states), part_eval, everyone, *test))
        aux_history.append(place.gather(aux))
        if checkpoints is not None and checkpoints.due(part, step + 1, num_steps, len(starts)):
          checkpoints.save(part, step + 1, num_steps, state=place.gather(states),
                           history=history, aux_history=aux_history, finished=finished())
        if progress is not None:
          progress(part, step + 1, num_steps)
      history_parts.append({k: np.stack([np.asarray(h[k])[:size] for h in history])
                            for k in history[0]})
      aux_parts.append({k: np.stack([np.asarray(a[k])[:size] for a in aux_history])
                        for k in (aux_history[0] if aux_history else {})})
      if smoothness is not None:
        final_parts.append(smoothness(states.params, part_masks, everyone)[:size])
  finally:  # a run stopped (Ctrl-C, an error) still finishes the save under way
    if checkpoints is not None:
      checkpoints.wait()
  run_seconds = time.perf_counter() - start
  return AggregatorRun(
      spec=spec,
      rounds=np.arange(num_steps + 1) * eval_every,
      metrics={k: np.concatenate([p[k] for p in history_parts], axis=1)
               for k in history_parts[0]},
      aux={k: np.concatenate([p[k] for p in aux_parts], axis=1) for k in aux_parts[0]},
      compile_seconds=compile_seconds, run_seconds=run_seconds, draws_per_chunk=chunk,
      final=({"honest_smoothness": np.concatenate(final_parts)} if final_parts else {})
      | composition)


@dataclasses.dataclass
class Experiment:
  job: config_lib.Job              # what ran: its effective f, σ, rules' options, μ_H
  data: FederatedData
  masks: dict[str, np.ndarray]       # spec -> [S, n] True = honest (shared unless worst case
                                     # per aggregator)
  runs: dict[str, AggregatorRun]
  worst_case: dict[str, dict] = dataclasses.field(default_factory=dict)
  references: dict[str, AggregatorRun] = dataclasses.field(default_factory=dict)
  oracle: dict | None = None
  # spec -> per-draw theory quantities (theory.report.per_draw), when job.theory.enabled.
  theory: dict[str, dict] = dataclasses.field(default_factory=dict)
  # Convex tasks: min E_S L_S vs min max_{|S|=n−f} L_S solved exactly (theory.report.objectives).
  objectives: dict | None = None
  # The server's prior and what it set (server_prior.resolve), when job.server_prior is on.
  server_prior: dict | None = None
  # DP (client- or example-level): σ, clip, and the run's ε at δ with what it is over
  # (config_lib.resolve_privacy), when on.
  privacy: dict | None = None
  # Compressed updates: kind, k, bits per round (config_lib.compression_info), when on.
  compression: dict | None = None


def _planned(job, sim: training.Simulator, fed: FederatedData, num_samples: int, *,
             devices: int | None = None) -> tuple[training.Simulator, MemoryPlan]:
  """`memory.plan_simulator` (the simulator, its clients streamed when they must be, and its
  memory plan), cached per simulator and size; a job that cannot fit is refused here, before
  its program is compiled (ConfigError: the memory it needs and the settings that would)."""
  key = (id(sim), num_samples, devices, job.num_samples_per_chunk, job.memory_budget_gb,
         job.mesh)
  if key not in _plans:
    _plans[key] = plan_simulator(job, sim, fed, num_samples, devices=devices)
  planned, plan = _plans[key]
  if plan.refusal():
    raise ConfigError(plan.refusal())
  return planned, plan


def _keys(job):
  root = jax.random.key(job.seed)
  return tuple(jax.random.fold_in(root, i) for i in range(3))  # masks, init, run


def criterion_measure(job, sim: training.Simulator, fed: FederatedData, criterion: str,
                      spec: str) -> worst_case.Measure:
  """One training per row: honest masks `[K, n]` and draw ids `[K]` -> the value `[K]` of
  `criterion` (worst_case.CRITERIA) at the end of training under mask k with draw key
  fold_in(run_key, draw_ids[k]); a diverged training is +inf. The draws run in chunks of
  `chunk_size`, and a draw's numbers do not depend on its batch position.

  - an evaluation metric (final_loss, holdout_loss; honest_error, holdout_error as 1 − accuracy)
    is read at θ_T;
  - excess_loss is L_S(θ_T) − L_S* with L_S* of each distinct mask solved once
    (theory.report.convex_constants);
  - theory_error is theory.report.per_draw's `error` of the trainings (`sim` must measure the
    theory: its rounds are evaluated every training.eval_every, as the run's).
  A value undefined without divergence (NaN: e.g. no honest client with held-out examples) is an
  error naming the sets, never scored."""
  crit = worst_case.CRITERIA[criterion]
  theory = criterion == "theory_error"
  if theory and not sim.measure_theory:
    raise ValueError("criterion 'theory_error' needs a simulator that measures the theory.")
  convex = theory_report.is_convex_task(job)
  solved = {}  # mask bytes -> its convex constants (each distinct honest set solved once)
  _, init_key, run_key = _keys(job)
  every = job.training.eval_every if theory else job.training.num_rounds

  def constants(masks: np.ndarray) -> dict:
    new = {m.tobytes(): m for m in masks if m.tobytes() not in solved}
    if new:
      out = theory_report.convex_constants(job, fed, sim, np.stack(list(new.values())))
      for i, key in enumerate(new):
        solved[key] = {k: (v[i] if np.ndim(v) else v) for k, v in out.items()}
    rows = [solved[m.tobytes()] for m in masks]
    return {k: (np.array([r[k] for r in rows]) if np.ndim(v) == 0 and k != "smoothness_exact"
                else v) for k, v in rows[0].items()}

  def measure(masks: np.ndarray, draw_ids: np.ndarray) -> np.ndarray:
    masks = np.asarray(masks, bool)
    planned, plan = _planned(job, sim, fed, len(masks))
    run = run_monte_carlo(planned, fed, jnp.asarray(masks), init_key=init_key, run_key=run_key,
                          num_rounds=job.training.num_rounds, eval_every=every, spec=spec,
                          chunk=plan.chunk, draw_ids=np.asarray(draw_ids),
                          mesh=sharding.make(job.mesh))
    if theory:
      value = theory_report.per_draw(job, run, np.sum(~masks, axis=1),
                                     exact=constants(masks) if convex else None,
                                     spec=spec)["error"]
    elif criterion == "excess_loss":
      value = (np.asarray(run.metrics["honest_loss"][-1], np.float64)
               - constants(masks)["optimum"])
    else:
      value = np.asarray(run.metrics[crit.metric][-1], np.float64)
      value = 1.0 - value if crit.complement else value
    diverged = np.asarray(run.metrics["diverged"][-1]) > 0
    undefined = np.isnan(value) & ~diverged
    if undefined.any():
      raise ValueError(
          f"worst-case criterion {criterion!r} ({crit.quantity}) is undefined (NaN) for the "
          f"honest sets with Byzantine clients "
          f"{[worst_case.byzantine(m) for m in masks[undefined][:3]]}; it cannot be maximized.")
    return np.where(np.isfinite(value) & ~diverged, value, np.inf)

  return measure


def criterion_score(job, sim: training.Simulator, fed: FederatedData, criterion: str,
                    spec: str, draw_ids: np.ndarray) -> worst_case.Score:
  """A batched score: candidate masks `[K, n]` -> `[K]` mean of `criterion` over the R =
  len(draw_ids) draws with those ids, the same R for every candidate (common random numbers: a
  mask's score does not depend on its batch position or on the other candidates); a diverged
  training makes its candidate's score +inf. All K·R trainings run as one batch."""
  measure = criterion_measure(job, sim, fed, criterion, spec)
  draw_ids = np.asarray(draw_ids)

  def score(candidates: np.ndarray) -> np.ndarray:
    values = measure(np.repeat(candidates, len(draw_ids), axis=0),
                     np.tile(draw_ids, len(candidates)))
    return worst_case.mean_over_seeds(values, len(draw_ids))

  return score


def worst_case_mask(job, fed: FederatedData, spec: str) -> tuple[np.ndarray, dict]:
  """The honest set of size n − f chosen by `job.honest_set_options.worst_case`, and a
  description of it (JSON-ready; summary.json's `worst_case` / `max_heterogeneity_proxy`).

  - criterion "heterogeneity": the max-heterogeneity honest set (a proxy, not a loss maximum:
    var_S of the clients' gradients at the initial model, closed form; no training).
  - any other criterion (worst_case.CRITERIA): the worst case, max over |S| = n − f of the
    criterion's mean over trainings per candidate (`criterion_measure`). Every candidate trains
    with the same draw ids SEARCH_DRAW_OFFSET + r (common random numbers: the score of a mask
    does not depend on where it sits in the batch, and candidates differ only by their Byzantine
    set); a diverged training scores +inf. The search scores every set on R = `seeds` seeds;
    then the sets tied with the top get more seeds, doubling up to `max_seeds`, until the top
    set's lead over each of them passes a one-sided paired t-test at `separation_confidence`
    (worst_case.separate). The maximum of noisy means is optimistic, so the pick — and the
    proxy's pick, for comparison — are re-measured on `fresh_seeds` draws with ids 0, 1, …
    (disjoint from the search's; the ids of the worst-case run's own draws).

  The info of a worst case: `criterion`, `quantity`, `label`, `method`, `scored`, `trainings`;
  the race (worst_case.separate): `seeds` (R, every scored set), `max_seeds`, `confidence`,
  `pick_seeds` (the seeds the pick's score averages), `pick` {mean, se, seeds}, `separated`
  (True / False / None with one set), `gap` {mean, se, seeds} over the `runner_up`, `tied`,
  `stopped`, `top` (the TOP_SETS sets of largest mean on the pick's seeds); `score` =
  `search_score` (the pick's mean), `fresh` {mean, ci95, count} (the interval of the maximum on
  fresh seeds), `optimism` = search − fresh, the `proxy` (its search score, `rank` of `rank_of`
  with `rank_text` saying among which sets, fresh value) and `gap_vs_proxy` (fresh, paired)."""
  options = job.honest_set_options.worst_case
  criterion = options.criterion
  n, f = job.num_clients, job.f
  _, init_key, _ = _keys(job)
  # measured only for the theory's error
  job = config_lib.job_of(job).replaced({"theory.enabled": criterion == "theory_error"})
  sim = simulator(job, spec, fed)
  # The proxy's gradients at the initial model (with personal heads: every head is the
  # initial output layer, so the full initial model).
  gradients = sim.client_gradients(ravel_pytree(sim.model.init(init_key))[0], fed.train)
  proxy_mask, proxy_value, proxy_info = worst_case.search(
      worst_case.heterogeneity_score(gradients), n, f,
      exhaustive_limit=options.exhaustive_limit, max_sweeps=options.max_sweeps)
  proxy = {"name": worst_case.PROXY_NAME, "byzantine": worst_case.byzantine(proxy_mask),
           "heterogeneity": float(proxy_value), "method": proxy_info["method"]}
  if criterion == worst_case.PROXY:
    return proxy_mask, {
        "criterion": criterion, "label": worst_case.describe(criterion, n, f, 0),
        "method": proxy_info["method"], "scored": proxy_info["scored"], "trainings": 0,
        "score": float(proxy_value), "byzantine": proxy["byzantine"],
        "interval": worst_case.TRAINING_NOISE_ONLY}

  R, fresh = int(options.seeds), int(options.fresh_seeds)
  table = worst_case.SeedTable(criterion_measure(job, sim, fed, criterion, spec), R)
  _, _, info = worst_case.search(table, n, f, exhaustive_limit=options.exhaustive_limit,
                                 max_sweeps=options.max_sweeps)
  mask, race = worst_case.separate(table, honest=n - f, max_seeds=int(options.max_seeds),
                                   confidence=float(options.separation_confidence))
  added = proxy_mask.tobytes() not in table.table  # a greedy search may not have scored it
  proxy["search_score"] = float(table(proxy_mask[None])[0])
  proxy["rank"], proxy["rank_of"] = table.rank(proxy_mask)
  proxy["rank_text"] = worst_case.rank_text(proxy["rank"], proxy["rank_of"], info["method"], n,
                                            f, added=added)
  fresh_ids = np.arange(fresh)
  values = table.measure(np.repeat(np.stack([mask, proxy_mask]), fresh, axis=0),
                         np.tile(fresh_ids, 2))
  pick_fresh, proxy_fresh = values[:fresh], values[fresh:]
  proxy["fresh"] = _value_summary(proxy_fresh)
  fresh_summary = _value_summary(pick_fresh)
  score = race["pick"]["mean"]
  return mask, {
      **info, **race, "criterion": criterion,
      "quantity": worst_case.CRITERIA[criterion].quantity,
      "label": worst_case.describe(criterion, n, f, R, int(options.max_seeds)),
      "maximizes_over": f"honest sets S with |S| = n − f = {n - f}",
      "fresh_seeds": fresh,
      "search_draw_ids": [worst_case.SEARCH_DRAW_OFFSET,
                          worst_case.SEARCH_DRAW_OFFSET + race["pick_seeds"] - 1],
      "fresh_draw_ids": [0, fresh - 1],
      "trainings": table.trainings + 2 * fresh,
      "score": score, "search_score": score, "fresh": fresh_summary,
      "optimism": float(score - fresh_summary["mean"]),
      "byzantine": worst_case.byzantine(mask),
      "proxy": proxy,
      "gap_vs_proxy": _value_summary(pick_fresh - proxy_fresh),
      "interval": worst_case.TRAINING_NOISE_ONLY}


def draw_masks(job, fed: FederatedData) -> np.ndarray:
  """`[S, n]` honest masks from the job's μ_H (`Job.law`: a sampler, not the worst case),
  conditioned on the realized b when `draw_condition` says so; a ConfigDict is resolved
  first."""
  job = config_lib.job_of(job)
  mask_key, _, _ = _keys(job)
  try:
    return np.asarray(job.law(fed).sample(mask_key, job.num_samples,
                                          condition=job.draw_condition, f=job.f))
  except ValueError as e:
    if job.draw_condition == "none":
      raise
    raise ConfigError(str(e)) from None


def check_workdir(workdir: str) -> None:
  """Creates `workdir/runs` and proves it writable, before any data or compile work."""
  try:
    os.makedirs(os.path.join(workdir, "runs"), exist_ok=True)
    probe = os.path.join(workdir, "runs", f".write-test-{os.getpid()}")
    with open(probe, "w") as fh:
      fh.write("ok")
    os.remove(probe)
  except OSError as e:
    raise ConfigError(f"--workdir {workdir!r} is not writable ({e.strerror or e}); results "
                     "could not be saved. Choose a writable directory.") from None


def human_seconds(seconds: float) -> str:
  """'2 h 05 min', '3 min 20 s', '45 s'."""
  if not np.isfinite(seconds):
    return "unknown"
  seconds = int(round(seconds))
  if seconds >= 3600:
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
  if seconds >= 60:
    return f"{seconds // 60} min {seconds % 60:02d} s"
  return f"{seconds} s"


# A rough work rate for the up-front time estimate (XLA:CPU on 2 cores runs the default digits
# job at ~1,500 sample-rounds/s of ~11 MFLOP each); the estimate is refined from measured rounds.
_ASSUMED_CPU_FLOPS = 15e9


def _flops_per_sample_round(job, num_params: int, max_count: int) -> float:
  """About 6 flops per parameter per example (forward + backward) for every client's minibatch."""
  local = config_lib.make_local_training(job)
  # Under Poisson client sampling every client trains (the unsampled rows are then dropped).
  clients = (job.num_clients if job.training.client_sampling == "poisson"
             else job.training.clients_per_round or job.num_clients)
  batch = (local.epoch_batch(max_count) if local.local_epochs
           else local_batch_size(job, max_count))
  return 6.0 * num_params * clients * local.steps(max_count) * batch


# The plan warns when a rule's exact subset search is estimated above this many CPU seconds.
SUBSET_SEARCH_WARN_SECONDS = 60.0


def _rows_at_rule(job, spec: str) -> int:
  """The rows the last stage of `spec` aggregates: a round's clients, regrouped by the
  pre-aggregators before it (bucketing: ⌈m/s⌉), read from their traced output's shape."""
  stages = aggregators.split_spec(spec)
  rows = (job.num_clients if job.training.client_sampling == "poisson"
          else job.training.clients_per_round or job.num_clients)
  if len(stages) == 1:
    return rows
  seen = []  # the rows reaching the rule, recorded while tracing (a shape is static)

  def rule(u):
    seen.append(u.shape[0])
    return u[0]  # an aggregate of the shape a rule returns ([d]: the stage check holds)

  pre = aggregators.chain(*stages[:-1], rule, f=job.f,
                          options=config_lib.job_of(job).options)
  jax.eval_shape(lambda u: pre.apply(u, pre.init(1), jax.random.key(0))[0],
                 jax.ShapeDtypeStruct((rows, 1), jnp.float32))
  return seen[0]


def _subset_searches(job, specs: list[str], draws: int) -> dict[str, tuple[str, float]]:
  """For each spec whose rule searches every subset of n − f rows (`minimum_diameter.SEARCH_COST`:
  MDA, SMEA), what the job's `draws` (padding included) × rounds aggregations cost: a line for
  the plan, and the estimated CPU seconds."""
  out = {}
  for spec in specs:
    rule = aggregators.split_spec(spec)[-1]
    if rule not in minimum_diameter.SEARCH_COST:
      continue
    n, f, rounds = _rows_at_rule(job, spec), job.f, job.training.num_rounds
    seconds = draws * rounds * minimum_diameter.search_seconds(rule, n, f)
    out[spec] = (f"{spec}: exact search over C(n={n}, f={f}) = {math.comb(n, f):,} subsets of "
                 f"{n - f} rows at every aggregation, {draws} draws × {rounds} rounds: "
                 f"{draws * rounds * math.comb(n, f):.3g} subsets, ≈ {human_seconds(seconds)} "
                 "on the 2-core CPU where its rate was measured", seconds)
  return out


class _JobClock:
  """Progress over every training of the job: each aggregator's chunks and evaluation steps, then
  the honest-only baseline's (`estimators.honest_optimum`). A run's first step includes its
  compilation (and its programs' first calls), so it is timed apart from the steady steps:

      ETA = (steps left − first steps left) × median steady step + first steps left × mean first

  with one first step left per run not started yet. While steady steps are left and none has been
  timed, the ETA is None (unknown: a step that compiled gives no rate). `after` names what the
  job does once the last step is done (not in the fraction nor the ETA); the last step's report
  carries it. `now` is the clock (a fake one in the tests)."""

  def __init__(self, total_steps: int, num_runs: int, progress: Progress | None,
               after: tuple[str, ...] = (), now: Callable[[], float] = time.perf_counter):
    self.total, self.done = max(total_steps, 1), 0
    self.runs_left = num_runs
    self.now = now
    self.start = now()
    self.progress = progress
    self.after = tuple(after)
    self.step_seconds: list[float] = []
    self.first_seconds: list[float] = []

  def skip(self, steps: int) -> None:
    """A run loaded from the cache: its steps leave the job."""
    self.total = max(self.total - steps, 1)
    self.runs_left -= 1

  def resumed(self, steps: int) -> None:
    """A run resumed from a checkpoint: the steps it skips leave the job."""
    self.total = max(self.total - steps, 1)

  def eta(self) -> float | None:
    left = max(self.total - self.done, 0)
    steady_left = left - self.runs_left
    if steady_left > 0 and not self.step_seconds:
      return None
    steady = float(np.median(self.step_seconds)) if self.step_seconds else 0.0
    first = float(np.mean(self.first_seconds)) if self.first_seconds else 0.0
    return steady_left * steady + self.runs_left * first

  def callback(self, spec: str, num_chunks: int, eval_every: int):
    """`run_monte_carlo`'s progress for one run, started now (its compilation included)."""
    last = [self.now()]
    started = [False]
    self.runs_left -= 1

    def report(chunk: int, step: int, num_steps: int) -> None:
      now = self.now()
      seconds, last[0] = now - last[0], now
      self.done += 1
      (self.step_seconds if started[0] else self.first_seconds).append(seconds)
      started[0] = True
      if self.progress is None:
        return
      self.progress({"spec": spec, "chunk": chunk + 1, "num_chunks": num_chunks,
                     "round": step * eval_every, "num_rounds": num_steps * eval_every,
                     "fraction": min(self.done / self.total, 1.0), "elapsed": now - self.start,
                     "eta": self.eta(),
                     "after": self.after if self.done >= self.total else None})
    return report


def _checkpoints(job, directory: str | None, name: str, key: str, chunk: int, log, *,
                 recompute: bool = False) -> checkpoints_lib.Store | None:
  """The store of run `name`'s checkpoints (`directory/<name>`), when the job asks for them
  (checkpoint.every_rounds) and has somewhere to keep them; emptied first with `recompute`."""
  every = job.checkpoint.every_rounds
  if not (directory and every):
    return None
  store = checkpoints_lib.Store(
      os.path.join(directory, name), key=key, chunk=chunk,
      num_samples=job.num_samples, every_steps=every // job.training.eval_every, log=log)
  if recompute:
    store.remove()
  return store


def run(job, *, workdir: str | None = None, progress: Progress | None = None,
        log: Callable[[str], None] = print, recompute: bool = False,
        checkpoint_dir: str | None = None) -> Experiment:
  """Runs a `config_lib.Job` (a ConfigDict is resolved into one first: validated, everything
  derived once): builds the data and the honest masks, and runs every aggregator.

  With `honest_set = "worst_case"` every draw uses one honest set of size n − f: the worst case (a
  maximum of the criterion, e.g. "final_loss": searched per aggregator, see `worst_case_mask`; saved
  beside the run as `<spec>.worst_case.json`) or the max-heterogeneity proxy (criterion
  "heterogeneity", found once, not a loss maximum); draws then differ only by their training
  randomness, so their intervals cover training noise only. With a `workdir`, each aggregator's
  draws are saved to `workdir/runs/<spec>.npz` as soon as it finishes (the honest-only baseline of
  `estimators.honest_optimum` to `runs/honest_only.npz`), and a rerun with the same configuration
  (`run_config`: the keys of NOT_IN_RUN, which only change what is printed or which other runs are
  made, do not count) loads them instead of training again (a damaged file, one made by code
  declaring other numbers (provenance.NUMBERS_VERSION) or on another JAX/backend, or one made by
  another configuration is named — with the keys that changed — and recomputed; `recompute` ignores
  every cached file). Before any training it logs the whole job: draws × rounds × aggregators (+ the
  honest-only baseline), chunks, the memory per device (`memory_plan`), the cost of exact subset
  searches (MDA, SMEA) and a rough time estimate, with a warning for each of them over its limit;
  `progress` then gets the share of the trainings done and their ETA (`_JobClock`). With
  checkpoint.every_rounds, each run saves its state to `checkpoint_dir/<spec>` (default:
  `workdir/checkpoints`; none without either) and a rerun resumes it (`checkpoints`).
  """
  job = config_lib.job_of(job)
  if workdir:
    check_workdir(workdir)
  if checkpoint_dir is None and workdir:
    checkpoint_dir = os.path.join(workdir, "checkpoints")
  if job.checkpoint.every_rounds and jax.process_count() > 1:
    raise ConfigError(f"checkpoint.every_rounds={job.checkpoint.every_rounds}: checkpoints are "
                      f"saved by one process; this job runs on {jax.process_count()}. Allowed: "
                      "0 on several processes.")
  # The server's prior (server_prior): the f it declares, when the prior's quantile sets it,
  # replaces the configured f for everything below (rules, worst case, tables): the Job's
  # effective f. Said here.
  prior_info = job.prior_info
  if prior_info:
    log(server_prior.describe(prior_info))
  fed = config_lib.make_data(job)
  max_count = int(fed.train.counts.max())
  log(f"data {fed.name}: {job.num_clients} clients, {int(fed.train.counts.sum())} training "
      f"examples (per client {int(fed.train.counts.min())}..{max_count}), "
      f"{fed.test_y.shape[0]} test examples, "
      + ("real targets (regression)" if fed.num_classes is None else f"{fed.num_classes} classes"))
  if job.pretraining.enabled:  # trained once and cached before any simulator is built
    _, base_info = pretraining.base_params(job, input_shape=fed.input_shape,
                                           num_classes=fed.num_classes)
    log(pretraining.describe(base_info))
  # DP: σ for a target ε, and ε; DP-SGD's accounting needs the clients' example counts.
  job = job.with_privacy(np.asarray(fed.train.counts))
  privacy_info = job.privacy_info
  if privacy_info:
    log(config_lib.describe_privacy(privacy_info))
  _, init_key, run_key = _keys(job)
  specs = list(job.specs)
  t = job.training
  S, num_steps = job.num_samples, t.num_rounds // t.eval_every

  # The job, before any compile: what runs, in how many chunks, what it needs.
  sims = {spec: simulator(job, spec, fed) for spec in specs}
  num_params = max(sim.num_params for sim in sims.values())
  compression_info = config_lib.compression_info(job, next(iter(sims.values())).num_shared)
  if compression_info:
    log(config_lib.describe_compression(compression_info))
  mesh = sharding.make(job.mesh)
  devices = sharding.draws_of(mesh)
  # Each rule's bytes per draw (a traced bound, or XLA's measured figure when the bound does
  # not fit; its clients streamed when one draw does not fit whole); the smallest chunk among
  # the rules' plans is the job's.
  plans = {}
  for spec in specs:
    sims[spec], plans[spec] = _planned(job, sims[spec], fed, S, devices=devices)
  memory = min(plans.values(), key=lambda p: (p.chunk, -p.bytes_per_device))
  chunk, per_draw = memory.chunk, memory.per_draw
  num_chunks = -(-S // chunk)
  # The honest-only baseline (estimators.honest_optimum) trains too: once, or once per
  # aggregator when each searches its own worst case.
  references = 0
  if job.estimators.honest_optimum:
    per_spec = (job.honest_set == "worst_case"
                and job.honest_set_options.worst_case.criterion != "heterogeneity")
    references = len(specs) if per_spec else 1
  flops = (_flops_per_sample_round(job, num_params, max_count) * S * t.num_rounds
           * (len(specs) + references))
  searches = _subset_searches(job, specs, chunk * num_chunks)
  estimate = (flops / _ASSUMED_CPU_FLOPS + sum(s for _, s in searches.values())
              if jax.default_backend() == "cpu" else float("nan"))
  log(f"job: {S} draws × {t.num_rounds} rounds × {len(specs)} aggregator(s) "
      + (f"+ {references} honest-only baseline(s) " if references else "")
      + f"({S * t.num_rounds * (len(specs) + references):,} sample-rounds, "
      f"{num_params:,} parameters); "
      f"{num_chunks} chunk(s) of {chunk} draws per aggregator"
      + (f" ({chunk * num_chunks - S} padding draws)" if chunk * num_chunks > S else "")
      + f"; {memory.describe()}"
      + (f"; {sharding.describe(mesh)}" if mesh is not None else "")
      + (f"; time ≈ {human_seconds(estimate)} (rough, from the work; refined as it runs)"
         if np.isfinite(estimate) else ""))
  for spec, (line, seconds) in searches.items():
    log(line)
    if seconds > SUBSET_SEARCH_WARN_SECONDS:
      log(f"WARNING: {spec}: its exact subset search alone is estimated at ≈ "
          f"{human_seconds(seconds)} on a 2-core CPU (this warning's threshold: "
          f"{human_seconds(SUBSET_SEARCH_WARN_SECONDS)}); it grows as C(n, f). Fewer rows "
          "(training.clients_per_round, or bucketing before the rule) or a smaller f shrink it; "
          "a rule without subset search (e.g. multi_krum, nnm+trimmed_mean) avoids it.")
  if t.batch_size > max_count and job.privacy.kind != "example":  # DP-SGD: q = 1
    log(f"WARNING: training.batch_size={t.batch_size} exceeds every client's data (largest "
        f"client: {max_count} examples); minibatches are drawn with replacement, so each local "
        f"step processes {t.batch_size} examples per client: ≈ {_human_bytes(per_draw)} per draw, "
        f"{chunk} draw(s) per chunk.")
  if estimate > 3600:
    log(f"WARNING: this job is estimated at ≈ {human_seconds(estimate)} on this CPU.")

  masks, worst = {}, {}
  if job.honest_set != "worst_case":
    shared = draw_masks(job, fed)
    masks = {spec: shared for spec in specs}
  elif job.honest_set_options.worst_case.criterion == "heterogeneity":
    mask, info = worst_case_mask(job, fed, specs[0])
    log(f"{info['label']}: Byzantine clients {info['byzantine']} ({info['method']}); every draw "
        f"uses this one set, so intervals cover {worst_case.TRAINING_NOISE_ONLY}")
    masks = {spec: np.repeat(mask[None], S, axis=0) for spec in specs}
    worst = {spec: info for spec in specs}
  else:
    options = job.honest_set_options.worst_case
    method, most = worst_case.search_size(job.num_clients, job.f,
                                          exhaustive_limit=options.exhaustive_limit,
                                          max_sweeps=options.max_sweeps)
    label = worst_case.describe(options.criterion, job.num_clients, job.f, options.seeds,
                                options.max_seeds)
    log(f"{label}: {method} search per aggregator, ≤ {most} honest sets × {options.seeds} seeds "
        f"(+ up to {options.max_seeds - options.seeds} more seeds for each set tied with the "
        f"top) + 2 × {options.fresh_seeds} fresh = ≤ "
        f"{most * options.max_seeds + 2 * options.fresh_seeds:,} trainings of {t.num_rounds} "
        f"rounds each, before the {S} draws")

  clock = _JobClock((len(specs) + references) * num_chunks * num_steps, len(specs) + references,
                    progress, after=tuple(name for name, on in (
                        ("the oracle's training", job.estimators.oracle),
                        ("the theory of every draw", job.theory.enabled)) if on))
  runs = {}
  for spec in specs:
    path = os.path.join(workdir, "runs", spec + ".npz") if workdir else None
    spec_config = run_config(job, spec)
    key = fingerprint(spec_config)
    cached = AggregatorRun.load(path, spec_config, log) if path and not recompute else None
    if spec not in masks:  # a worst case (not the proxy): searched for this aggregator
      found = _load_worst_case(path, key, log) if path and not recompute else None
      if found is None:
        log(f"{spec}: searching the worst case by "
            f"{worst_case.CRITERIA[job.honest_set_options.worst_case.criterion].quantity}")
        found = worst_case_mask(job, fed, spec)
        if path and sharding.is_writer():
          _save_worst_case(path, key, *found)
      mask, worst[spec] = found
      log(f"{spec}: {format_worst_case(worst[spec])}")
      masks[spec] = np.repeat(mask[None], S, axis=0)
    if cached is not None:
      log(f"{spec}: loaded from {path}")
      runs[spec] = cached
      clock.skip(num_chunks * num_steps)
      continue
    sim = sims[spec]
    log(f"{spec}: compiling ({sim.num_params} parameters, {S} draws, {chunk} per chunk)")
    store = _checkpoints(job, checkpoint_dir, spec, key, chunk, log, recompute=recompute)
    runs[spec] = run_monte_carlo(
        sim, fed, jnp.asarray(masks[spec]), init_key=init_key, run_key=run_key,
        num_rounds=t.num_rounds, eval_every=t.eval_every, spec=spec, chunk=chunk,
        progress=clock.callback(spec, num_chunks, t.eval_every), mesh=mesh,
        checkpoints=store, resumed=clock.resumed)
    runs[spec].provenance = provenance.record(
        seed=job.seed, draws_per_chunk=chunk,
        draws_per_block=_block_of(chunk, mesh),
        mesh=sharding.describe(mesh), client_block=sim.client_block)
    log(f"{spec}: compiled in {runs[spec].compile_seconds:.1f} s, ran in "
        f"{runs[spec].run_seconds:.1f} s")
    if path and sharding.is_writer():  # multi-host: process 0 writes
      runs[spec].save(path, spec_config)
    if store is not None:  # the run is saved whole: its checkpoints are spent
      store.remove()
  exp = Experiment(job, fed, masks, runs, worst, server_prior=prior_info,
                   privacy=privacy_info, compression=compression_info)
  # One baseline per distinct set of draws: fewer than planned when searched worst cases agree.
  distinct = len({fingerprint(reference_config(job, m)) for m in masks.values()})
  for _ in range(references - distinct if references else 0):
    clock.skip(num_chunks * num_steps)
  _run_references(exp, init_key, run_key, log, workdir=workdir, recompute=recompute,
                  clock=clock, checkpoint_dir=checkpoint_dir)
  _run_theory(exp, log)
  if checkpoint_dir and os.path.isdir(checkpoint_dir) and not os.listdir(checkpoint_dir):
    os.rmdir(checkpoint_dir)  # every run saved whole: no checkpoint left
  return exp


def _run_theory(exp: Experiment, log) -> None:
  """Per-draw theory of every run (theory.report): from the run's own measurements, plus, on a
  convex task, the exact L_S*, L_S and μ_S of each draw's honest set (once per mask array)."""
  job = exp.job
  if not job.theory.enabled:
    return
  exact_by_masks = {}
  for spec, run in exp.runs.items():
    masks = exp.masks[spec]
    exact = None
    if theory_report.is_convex_task(job):
      if id(masks) not in exact_by_masks:
        log("theory: exact L_S*, L_S and μ_S of every draw's honest set (convex task)")
        exact_by_masks[id(masks)] = theory_report.convex_constants(
            job, exp.data, simulator(job, spec, exp.data), masks)
      exact = exact_by_masks[id(masks)]
    exp.theory[spec] = theory_report.per_draw(
        job, run, np.sum(~np.asarray(masks, bool), axis=1), exact=exact, spec=spec,
        reference=exp.references.get(spec))
  if (theory_report.is_convex_task(job) and job.theory.objectives
      and job.honest_set != "worst_case"):
    spec = next(iter(exp.runs))
    weights, how = None, f"estimated from the {job.num_samples} draws"
    if job.honest_set == "bernoulli" and job.draw_condition == "none":
      weights = honest_sets.expected_objective_weights(
          job.sampler["p"], job.num_clients)
      how = "exact (independent corruption)"
    log("theory: solving min_θ E_S L_S(θ) and min_θ max_{|S|=n−f} L_S(θ) exactly")
    exp.objectives = {**theory_report.objectives(job, exp.data,
                                                  simulator(job, spec, exp.data),
                                                  exp.masks[spec], weights),
                      "weights_from": how}


def _run_references(exp: Experiment, init_key, run_key, log, *, workdir: str | None = None,
                    recompute: bool = False, clock: _JobClock | None = None,
                    checkpoint_dir: str | None = None) -> None:
  """The optional reference runs of `job.estimators`. The honest-only baseline (honest
  optimum) is one run per distinct set of draws (usually every spec shares one), cached like an
  aggregator's run: `workdir/runs/honest_only.npz`, or `runs/<spec>.honest_only.npz` for each
  spec's own draws (a worst case searched per aggregator), keyed by `reference_config`."""
  job, fed = exp.job, exp.data
  rounds, every = job.training.num_rounds, job.training.eval_every
  if job.estimators.honest_optimum:
    configs = {spec: reference_config(job, masks) for spec, masks in exp.masks.items()}
    shared = len({fingerprint(c) for c in configs.values()}) == 1
    by_key = {}
    for spec, masks in exp.masks.items():
      ref_config = configs[spec]
      key = fingerprint(ref_config)
      if key not in by_key:
        name = "honest_only" if shared else f"{spec}.honest_only"
        path = os.path.join(workdir, "runs", name + ".npz") if workdir else None
        cached = AggregatorRun.load(path, ref_config, log) if path and not recompute else None
        if cached is not None:
          log(f"honest optimum L_S* of every draw: loaded from {path}")
          by_key[key] = cached
          if clock is not None:
            clock.skip(-(-job.num_samples // cached.draws_per_chunk) * (rounds // every))
        else:
          sim = simulator(job, spec, fed, reference="honest_optimum")
          log("honest optimum L_S* of every draw (mean of the honest clients, no attack)")
          mesh = sharding.make(job.mesh)
          sim, plan = _planned(job, sim, fed, job.num_samples)
          chunk = plan.chunk
          store = _checkpoints(job, checkpoint_dir, name, key, chunk, log,
                               recompute=recompute)
          ref = run_monte_carlo(
              sim, fed, jnp.asarray(masks), init_key=init_key, run_key=run_key,
              num_rounds=rounds, eval_every=every, spec="honest_optimum", mesh=mesh, chunk=chunk,
              progress=(clock.callback("honest_optimum", -(-job.num_samples // chunk), every)
                        if clock is not None else None),
              checkpoints=store, resumed=clock.resumed if clock is not None else None)
          ref.provenance = provenance.record(
              seed=job.seed, draws_per_chunk=ref.draws_per_chunk,
              draws_per_block=_block_of(ref.draws_per_chunk, mesh),
              mesh=sharding.describe(mesh), client_block=sim.client_block)
          if path and sharding.is_writer():
            ref.save(path, ref_config)
          if store is not None:
            store.remove()
          by_key[key] = ref
      exp.references[spec] = by_key[key]
  if job.estimators.oracle:
    weights = honest_sets.expected_objective_weights(job.sampler["p"], job.num_clients)
    sim = build.make_simulator(job, "mean", fed, reference="oracle",
                                    client_weights=weights / weights.sum())
    everyone = jnp.ones((job.num_clients,), bool)
    state, _ = jax.jit(functools.partial(sim.run_rounds, num_rounds=rounds))(
        sim.init(init_key), everyone, jax.random.fold_in(run_key, 0), fed.train)
    losses, _ = sim.client_metrics(state.params, fed.train)
    metrics = sim.evaluate(state.params, everyone, fed.train, fed.test_x, fed.test_y)
    exp.oracle = {"weights": weights.tolist(),
                  "expected_objective": float(np.asarray(losses, np.float64) @ weights),
                  "test_accuracy": float(metrics["test_accuracy"])}
    log(f"oracle trained on the expected objective: E_S[L_S(θ)] = Σ w_i L_i(θ) = "
        f"{exp.oracle['expected_objective']:.4f}")
