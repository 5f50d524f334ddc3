"""The scaling benchmark (`launch/bench.py --config.mode=scale`): sample-rounds/s and peak memory
against the number of parameters d, of clients n and of draws S, for the MLP, the CNN at CIFAR
shape and the character transformer, with the memory plan's bytes beside the measured peak
(engine layer, beside `benchmark`).

A point is "model" or "model:option" over configs/default.py's job (one rule, one device):
  mlp:1024        digits, model_options.mlp.hidden = (1024,)          (mlp:1024x1024: two layers)
  cnn:32x64       cifar_shape, model_options.cnn.features = (32, 64)
  char_transformer:2x64   shakespeare, layers = 2, width = 64
Each point is planned (`memory.plan_simulator`, the clients streamed when they must be; a point
that cannot fit is reported with the plan's refusal and not run), its bytes per draw measured by
XLA's buffer assignment, then trained twice: the first run compiles, the second is timed, and its
peak is the resident memory it adds (VmHWM reset to VmRSS before it, glibc set to return freed
blocks at once so the peak is the run's own).
"""

from __future__ import annotations

import ctypes
import dataclasses
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_robust import config as config_lib
from fedjax_robust import experiment
from fedjax_robust import memory
from fedjax_robust.errors import ConfigError

MODELS = ("mlp", "cnn", "char_transformer")
# The data set each model of a point reads.
DATA = {"mlp": "digits", "cnn": "cifar_shape", "char_transformer": "shakespeare"}


@dataclasses.dataclass
class ScaleRow:
  point: str
  d: int
  n: int
  S: int
  rounds: int
  client_block: int        # clients streamed in blocks of this many (0: all at once)
  per_draw_mb: float       # XLA's buffer assignment, one-round program, per draw
  predicted_mb: float      # the plan: data + the evaluation + S × per draw
  peak_mb: float           # resident memory the timed run added
  peak_over_plan: float
  compile_s: float
  run_s: float
  sample_rounds_per_s: float
  note: str = ""


def parse_point(point: str) -> tuple[str, dict]:
  """'mlp:1024x1024' -> ("mlp", {"model_options.mlp.hidden": (1024, 1024)}); a ConfigError
  names the point and what is allowed."""
  model, _, option = point.partition(":")
  if model not in MODELS:
    raise ConfigError(f"scale.points: {point!r}: the model must be one of {', '.join(MODELS)}.")
  try:
    sizes = tuple(int(v) for v in option.split("x")) if option else ()
  except ValueError:
    sizes = (0,)
  if any(v < 1 for v in sizes) or (model == "char_transformer" and option and len(sizes) != 2):
    raise ConfigError(f"scale.points: {point!r}: allowed: mlp[:W1xW2...], cnn[:C1xC2...], "
                      "char_transformer[:LAYERSxWIDTH], positive integers.")
  if not sizes:
    return model, {}
  if model == "mlp":
    return model, {"model_options.mlp.hidden": sizes}
  if model == "cnn":
    return model, {"model_options.cnn.features": sizes}
  return model, {"model_options.char_transformer.layers": sizes[0],
                 "model_options.char_transformer.width": sizes[1]}


def job_of(point: str, *, num_clients: int, spec: str, rounds: int, budget_gb: float):
  """configs/default.py's job at `point` (one rule, one device, no baseline, an iid
  partition)."""
  from configs import default  # pylint: disable=g-import-not-at-top
  model, options = parse_point(point)
  c = default.get_config()
  c.model, c.aggregator, c.mesh, c.num_clients = model, spec, "", num_clients
  c.f = max(1, num_clients // 5)  # the default job's 5 of 25
  c.data.name = DATA[model]
  c.data.partition = "iid"  # speed and memory, not heterogeneity: any n the data can hold
  c.data.min_size = 1
  c.estimators.honest_optimum = False
  c.training.num_rounds = c.training.eval_every = rounds
  c.memory_budget_gb = budget_gb
  if model == "char_transformer":
    c.data.holdout_fraction = 0.0
    c.data.shakespeare.max_examples_per_client = 64
  for dotted, value in options.items():
    *path, leaf = dotted.split(".")
    node = c
    for part in path:
      node = node[part]
    node[leaf] = value
  return config_lib.job_of(c)


def _status(field: str) -> int:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field):
        return int(line.split()[1]) * 1024
  return 0


def _return_freed_memory() -> None:
  """glibc: blocks over 64 KB mapped apart and unmapped when freed, the heap trimmed at once."""
  try:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 65536)  # M_MMAP_THRESHOLD
    libc.mallopt(-1, 0)      # M_TRIM_THRESHOLD
  except (OSError, AttributeError):
    pass


def run_point(point: str, *, num_clients: int, num_samples: int, rounds: int, spec: str,
              budget_gb: float, log=print) -> ScaleRow:
  """One point: planned, measured, trained twice (compile, then timed)."""
  _return_freed_memory()
  job = job_of(point, num_clients=num_clients, spec=spec, rounds=rounds, budget_gb=budget_gb)
  fed = config_lib.make_data(job)
  sim = experiment.simulator(job, spec, fed)
  row = dict(point=point, d=sim.num_params, n=num_clients, S=num_samples, rounds=rounds)
  sim, plan = memory.plan_simulator(job, sim, fed, num_samples, devices=1)
  nan = math.nan
  if plan.refusal():
    return ScaleRow(**row, client_block=plan.client_block, per_draw_mb=plan.per_draw / 2**20,
                    predicted_mb=plan.bytes_per_device / 2**20, peak_mb=nan,
                    peak_over_plan=nan, compile_s=nan, run_s=nan, sample_rounds_per_s=nan,
                    note="refused: " + plan.refusal())
  per_draw = memory.measured_per_draw(sim, fed)
  predicted = (memory.fixed_memory(fed) + memory.measured_evaluation(sim, fed)
               + plan.chunk * per_draw)
  masks = jnp.asarray(np.random.default_rng(0).random((num_samples, num_clients)) > 0.2)

  def train():
    return experiment.run_monte_carlo(sim, fed, masks, init_key=jax.random.key(0),
                                      run_key=jax.random.key(1), num_rounds=rounds,
                                      eval_every=rounds, chunk=plan.chunk)

  start = time.perf_counter()
  first = train()
  compile_s = first.compile_seconds
  del first
  base = _status("VmRSS")
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")  # VmHWM := VmRSS
    peak_note = ""
  except OSError:
    peak_note = "peak includes earlier work (/proc/self/clear_refs not writable)"
  timed = train()
  peak = _status("VmHWM") - base
  run_s = timed.run_seconds
  log(f"  {point} n={num_clients} S={num_samples}: {time.perf_counter() - start:.1f} s")
  return ScaleRow(**row, client_block=sim.client_block, per_draw_mb=per_draw / 2**20,
                  predicted_mb=predicted / 2**20, peak_mb=peak / 2**20,
                  peak_over_plan=peak / predicted, compile_s=compile_s, run_s=run_s,
                  sample_rounds_per_s=num_samples * rounds / run_s, note=peak_note)


def scale(points, clients, samples, *, rounds: int, spec: str, budget_gb: float,
          log=print) -> list[ScaleRow]:
  """Every point at clients[0] and samples[0]; the first point also at every n of `clients`
  and every S of `samples` (the n and S axes)."""
  for point in points:
    parse_point(point)  # every point checked before any work
  grid = [(p, clients[0], samples[0]) for p in points]
  grid += [(points[0], n, samples[0]) for n in clients[1:]]
  grid += [(points[0], clients[0], s) for s in samples[1:]]
  rows = []
  for p, n, s in grid:  # each row printed as it is measured (a long grid shows its progress)
    rows.append(run_point(p, num_clients=n, num_samples=s, rounds=rounds, spec=spec,
                          budget_gb=budget_gb, log=log))
    log(format_rows(rows[-1:]).splitlines()[-1])
  return rows


def format_rows(rows: list[ScaleRow]) -> str:
  head = (f"{'point':<24}{'d':>10}{'n':>6}{'S':>6}{'block':>6}{'MB/draw':>9}{'plan MB':>9}"
          f"{'peak MB':>9}{'peak/plan':>10}{'compile s':>10}{'sample-rounds/s':>16}")
  lines = [head]
  for r in rows:
    lines.append(f"{r.point:<24}{r.d:>10,}{r.n:>6}{r.S:>6}{r.client_block:>6}"
                 f"{r.per_draw_mb:>9.1f}{r.predicted_mb:>9.0f}{r.peak_mb:>9.0f}"
                 f"{r.peak_over_plan:>10.2f}{r.compile_s:>10.1f}{r.sample_rounds_per_s:>16.1f}"
                 + (f"  {r.note}" if r.note else ""))
  return "\n".join(lines)
