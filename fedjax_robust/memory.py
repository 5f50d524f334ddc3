"""How a job's draws are chunked, and the memory a chunk takes (engine layer, BUILD.md
"Layers"): the vmapped width's alignment (DRAW_ALIGNMENT, `align_draws`), the bytes of a draw
(`Footprint`) and of the data (`fixed_memory`), and the chunking within
`memory_budget_gb` per device (`memory_plan`, `MemoryPlan`, `chunk_size`), read from XLA's buffer
assignment of the compiled one-round program (`footprint`: measured, or a traced upper bound when
even that fits), with the clients streamed in blocks when one draw does not fit whole
(`plan_simulator`). `experiment` runs the chunks and re-exports the public names.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_robust import sharding
from fedjax_robust.data import FederatedData


# The number of draws trained at once (the vmapped width) is always a multiple of this; a chunk
# with fewer draws is padded (padding rows are discarded). Measured on XLA:CPU (AVX, 8 float32
# lanes): widths that are multiples of 8 give every draw bit-identical numbers (8, 16, 24, 32,
# 40 over 20 rounds of GM, bucketing+GM, NNM+TM), while other widths (1, 2, 3, 5, 7, 9) change
# the rounding of batched products and reductions by ~1e-7, which training can amplify into
# different models. See BUILD.md, "Batch independence".
DRAW_ALIGNMENT = 8


def align_draws(width: int, devices: int = 1) -> int:
  """`width` rounded up to a multiple of DRAW_ALIGNMENT per device (`devices` on the mesh's
  draws axis)."""
  unit = DRAW_ALIGNMENT * devices
  return -(-max(1, width) // unit) * unit


def local_batch_size(job, max_count: int | None = None) -> int:
  """Examples computed per local step: `training.batch_size`, or (<= 0) the largest client's
  data; with DP-SGD (privacy.kind='example') every position of the largest client's data (each
  example's gradient is computed, the Poisson-sampled ones kept)."""
  b = job.training.batch_size
  return b if b > 0 and job.privacy.kind != "example" else (max_count or 64)


# What a draw's bytes are read from: "bound" (the sum of every value of the traced one-round
# program, no buffer reused: an upper bound, 8–18× XLA's figure on the digits MLP and a CIFAR-
# shaped CNN, used only to skip the compile when even it fits) or "measured" (XLA's buffer
# assignment of the compiled one-round program, `memory_analysis()`).
BOUND, MEASURED = "bound", "measured"


@dataclasses.dataclass(frozen=True)
class Footprint:
  """The bytes one draw adds to a chunk (`per_draw`), how they were found (BOUND or MEASURED),
  and the client block they hold for (0: every client vmapped at once)."""
  per_draw: int
  how: str
  client_block: int = 0
  # Bytes of the evaluation's working set (its program at DRAW_ALIGNMENT draws, less the data),
  # once per device whatever the chunk: the evaluation runs DRAW_ALIGNMENT draws at a time.
  evaluation: int = 0


def program_bytes(compiled) -> int:
  """Peak bytes of a compiled program by XLA's buffer assignment: arguments + outputs +
  temporaries − the outputs that alias (donated) arguments."""
  m = compiled.memory_analysis()
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)


def _nbytes(var) -> int:
  aval = getattr(var, "aval", None)
  try:
    return math.prod(aval.shape) * np.dtype(aval.dtype).itemsize
  except (AttributeError, TypeError):  # tokens, key arrays' opaque dtypes count nothing here
    return 0


def jaxpr_bytes(jaxpr) -> int:
  """Σ of the bytes of every value a jaxpr computes, loop bodies once (their buffers are
  reused across iterations), a `cond` its largest branch: no buffer is shared, so it bounds
  what XLA allocates for them from above."""
  total = 0
  for eqn in jaxpr.eqns:
    total += sum(_nbytes(v) for v in eqn.outvars)
    subs = [q.jaxpr if hasattr(q, "jaxpr") and hasattr(q, "consts") else q
            for value in eqn.params.values()
            for q in (value if isinstance(value, (tuple, list)) else (value,))
            if hasattr(q, "eqns") or (hasattr(q, "jaxpr") and hasattr(q, "consts"))]
    sizes = [jaxpr_bytes(q) for q in subs]
    total += max(sizes, default=0) if eqn.primitive.name == "cond" else sum(sizes)
  return total


def _abstract_states(sim, width: int):
  """The shapes of `width` draws' RunStates (nothing computed)."""
  state = jax.eval_shape(sim.init, jax.random.key(0))
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct((width,) + a.shape, a.dtype), state)


def _one_round(sim, fed: FederatedData):
  """The program of one round of DRAW_ALIGNMENT vmapped draws (one block), its abstract
  arguments (states, masks, keys, the clients' data) and the data's bytes among them."""
  from fedjax_robust import training  # pylint: disable=g-import-not-at-top
  masks = jax.ShapeDtypeStruct((DRAW_ALIGNMENT, sim.num_clients), jnp.bool_)
  keys = jax.eval_shape(lambda: training.sample_keys(jax.random.key(0), DRAW_ALIGNMENT))
  run = jax.vmap(functools.partial(sim.run_rounds, num_rounds=1), in_axes=(0, 0, 0, None))
  return (jax.jit(run, donate_argnums=0),
          (_abstract_states(sim, DRAW_ALIGNMENT), masks, keys, fed.train),
          _data_bytes(fed.train))


def _data_bytes(tree) -> int:
  return int(sum(np.dtype(a.dtype).itemsize * math.prod(a.shape)
                 for a in jax.tree.leaves(tree)))


def _evaluation(sim, fed: FederatedData):
  """The evaluation's program at DRAW_ALIGNMENT draws (`Simulator.evaluate` vmapped, as
  `experiment` compiles it), its abstract arguments and the data's bytes among them."""
  params = jax.eval_shape(sim.eval_params, _abstract_states(sim, DRAW_ALIGNMENT))
  masks = jax.ShapeDtypeStruct((DRAW_ALIGNMENT, sim.num_clients), jnp.bool_)
  test = (fed.test_x, fed.test_y) + ((fed.holdout,) if fed.holdout is not None else ())
  program = jax.jit(jax.vmap(sim.evaluate, in_axes=(0, 0, None) + (None,) * len(test)))
  return program, (params, masks, fed.train, *test), _data_bytes((fed.train, test))


def _bound(program, args, data: int) -> int:
  """BOUND bytes of a program beyond its data: `jaxpr_bytes` of its trace plus its arguments
  (traced, not compiled)."""
  jaxpr = program.trace(*args).jaxpr.jaxpr
  return max(0, jaxpr_bytes(jaxpr) + sum(_nbytes(v) for v in jaxpr.invars) - data)


def _measured(program, args, data: int) -> int:
  """MEASURED bytes of a program beyond its data: `program_bytes` of it compiled."""
  return max(0, program_bytes(program.lower(*args).compile()) - data)


def bound_per_draw(sim, fed: FederatedData) -> int:
  """BOUND bytes per draw: of the one-round program at DRAW_ALIGNMENT draws, per draw."""
  return -(-_bound(*_one_round(sim, fed)) // DRAW_ALIGNMENT)


def measured_per_draw(sim, fed: FederatedData) -> int:
  """MEASURED bytes per draw: of the compiled one-round program at DRAW_ALIGNMENT draws (one
  block), per draw. XLA's figure is linear in the draws (temporaries 5,206,400 / 10,411,968
  bytes at 8 / 16 draws of the digits job)."""
  return -(-_measured(*_one_round(sim, fed)) // DRAW_ALIGNMENT)


def bound_evaluation(sim, fed: FederatedData) -> int:
  """BOUND bytes of the evaluation's working set."""
  return _bound(*_evaluation(sim, fed))


def measured_evaluation(sim, fed: FederatedData) -> int:
  """MEASURED bytes of the evaluation's working set (XLA's buffer assignment)."""
  return _measured(*_evaluation(sim, fed))


def footprint(sim, fed: FederatedData, *, draws: int, fixed: int, budget: int) -> Footprint:
  """The bytes a draw of `sim` needs and the evaluation's working set, found as cheaply as the
  budget allows: the BOUND when `draws` per device fit under it (no compile); else MEASURED;
  and when not even DRAW_ALIGNMENT draws fit with every client vmapped at once, the largest
  client block (`training.map_clients`) whose measured footprint lets them fit, if any (else
  the smallest block's footprint, which the plan then refuses)."""
  bound, bound_eval = bound_per_draw(sim, fed), bound_evaluation(sim, fed)
  if fixed + bound_eval + draws * bound <= budget:
    return Footprint(bound, BOUND, evaluation=bound_eval)

  def measured(block):
    s = dataclasses.replace(sim, client_block=block)
    return Footprint(measured_per_draw(s, fed), MEASURED, block, measured_evaluation(s, fed))

  room = lambda f: fixed + f.evaluation + DRAW_ALIGNMENT * f.per_draw <= budget
  whole = measured(0)
  n = sim.num_clients
  if room(whole) or n == 1:
    return whole
  least = measured(1)
  if not room(least):
    return least
  # Between block 1 and all n clients the footprint grows about linearly with the block: the
  # largest block the line lets fit, then halved until its measured footprint fits.
  slope = max(whole.per_draw + whole.evaluation / DRAW_ALIGNMENT
              - least.per_draw - least.evaluation / DRAW_ALIGNMENT, 1) / (n - 1)
  spare = (budget - fixed - least.evaluation) / DRAW_ALIGNMENT - least.per_draw
  block = max(1, min(n - 1, int(spare / slope) + 1))
  while block > 1:
    if block > DRAW_ALIGNMENT:  # whole groups of DRAW_ALIGNMENT, as the draws' widths
      block = block // DRAW_ALIGNMENT * DRAW_ALIGNMENT
    found = measured(block)
    if room(found):
      return found
    block //= 2
  return least


def fixed_memory(fed: FederatedData) -> int:
  """Bytes each device holds whatever the chunk: the clients' training data and held-out splits,
  the test set and the server's root data (replicated on every device of a mesh)."""
  return _data_bytes((fed.train, fed.test_x, fed.test_y, fed.holdout, fed.root))


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
  """How a job's draws are chunked, and the memory per device that plan takes: `fixed` +
  `evaluation` + `draws_per_device` × `per_draw` bytes (the chunk's padding draws included,
  since they are computed), against `budget` (`memory_budget_gb`, per device). `how` says whether `per_draw`
  is XLA's measured figure or the traced program's upper bound (`Footprint`); `client_block`
  > 0: the clients are streamed in blocks of that many (`training.map_clients`)."""
  chunk: int             # draws trained at once, over all the devices of the draws axis
  devices: int           # devices on the mesh's draws axis
  per_draw: int          # bytes, `Footprint.per_draw`
  fixed: int             # bytes, `fixed_memory`
  budget: int            # bytes per device
  automatic: bool        # chosen from the budget (num_samples_per_chunk = 0)
  how: str = MEASURED
  client_block: int = 0
  num_clients: int = 0
  evaluation: int = 0    # bytes, `Footprint.evaluation` (once per device)

  @property
  def draws_per_device(self) -> int:
    return self.chunk // self.devices

  @property
  def bytes_per_device(self) -> int:
    return self.fixed + self.evaluation + self.draws_per_device * self.per_draw

  @property
  def largest_chunk(self) -> int:
    """The largest chunk within the budget (0: not even DRAW_ALIGNMENT draws per device)."""
    fit = max(self.budget - self.fixed - self.evaluation, 0) // self.per_draw
    return fit // DRAW_ALIGNMENT * DRAW_ALIGNMENT * self.devices

  def describe(self) -> str:
    """'memory ≈ 2.02 GB per device (256 draws × 8 MB measured + 1 MB of data; budget 4 GB)',
    with '≤' and 'bound' for the traced program's upper bound, and the client blocks when the
    clients are streamed."""
    where = " per device" if self.devices > 1 else ""
    approx = "≈" if self.how == MEASURED else "≤"
    how = ("measured: XLA's buffer assignment" if self.how == MEASURED
           else "bound: the traced program, no buffer reused")
    streamed = (f"; clients streamed in blocks of {self.client_block}: one draw with all "
                f"{self.num_clients} clients vmapped at once does not fit"
                if self.client_block else "")
    return (f"memory {approx} {_human_bytes(self.bytes_per_device)}{where} "
            f"({self.draws_per_device} draws × {_human_bytes(self.per_draw)} ({how}) + "
            + (f"{_human_bytes(self.evaluation)} for the evaluation + " if self.evaluation
               else "")
            + f"{_human_bytes(self.fixed)} of data; budget {self.budget / 2**30:.3g} GB{where})"
            + streamed)

  def refusal(self) -> str:
    """'' when the plan is within the budget, else why the job cannot run as configured and
    the settings that would fit (the plan is then MEASURED: a bound over the budget is
    measured before anything is refused)."""
    if self.bytes_per_device <= self.budget:
      return ""
    need = -(-self.bytes_per_device * 100 // 2**30) / 100  # GB, rounded up to 0.01
    what = (f"memory: a chunk of {self.chunk} draws ({self.draws_per_device} per device) needs "
            f"{_human_bytes(self.bytes_per_device)} per device ({self.draws_per_device} × "
            f"{_human_bytes(self.per_draw)} per draw, measured by XLA's buffer assignment, + "
            + (f"{_human_bytes(self.evaluation)} for the evaluation + " if self.evaluation
               else "")
            + f"{_human_bytes(self.fixed)} of data), more than memory_budget_gb="
            f"{self.budget / 2**30:.3g}.")
    if self.largest_chunk:  # num_samples_per_chunk asked for more than fits
      return (f"{what} num_samples_per_chunk sets this chunk; allowed: num_samples_per_chunk <= "
              f"{self.largest_chunk} (or 0: chosen from the budget), or memory_budget_gb >= "
              f"{need:g} if the device has that much.")
    streamed = (f" even with the clients streamed one at a time" if self.client_block == 1
                else "")
    fewer = ""
    if self.num_clients > 1:  # a draw's bytes grow about linearly with its clients
      room = (self.budget - self.fixed) / (self.draws_per_device * self.per_draw
                                           + self.evaluation)
      clients = int(self.num_clients * room)
      if clients >= 1:
        fewer = f", num_clients <= about {clients}"
    return (f"{what} The smallest chunk is {DRAW_ALIGNMENT} draws per device (DRAW_ALIGNMENT)"
            f"{streamed}. Would fit: memory_budget_gb >= {need:g} if the device has that "
            f"much{fewer}, more devices on the mesh's draws axis, or a smaller model.")


def memory_plan(job, footprint: Footprint | int, num_samples: int, *, fixed: int = 0,
                devices: int | None = None, num_clients: int = 0) -> MemoryPlan:
  """The chunking of `num_samples` draws over `devices` (default: `job.mesh`'s draws axis):
  `num_samples_per_chunk` as given (rounded up to DRAW_ALIGNMENT per device), or (0) the fewest
  chunks whose memory per device, `fixed` + draws per device × `footprint.per_draw` (padding
  included), stays within `memory_budget_gb`, the draws spread evenly over them (S = 1024 with
  room for 1008: two chunks of 512, not 1008 + 1008 with 992 padding draws). When not even
  DRAW_ALIGNMENT draws per device fit, that smallest chunk (`MemoryPlan.refusal` says so).
  A draw's numbers do not depend on the chunking (see DRAW_ALIGNMENT). An int `footprint` is
  taken as MEASURED bytes per draw."""
  if not isinstance(footprint, Footprint):
    footprint = Footprint(int(footprint), MEASURED)
  if devices is None:
    devices = sharding.axis_sizes(job.mesh)[sharding.DRAWS]
  plan = functools.partial(
      MemoryPlan, devices=devices, per_draw=max(1, footprint.per_draw), fixed=fixed,
      budget=int(job.memory_budget_gb * 2**30), automatic=not job.num_samples_per_chunk,
      how=footprint.how, client_block=footprint.client_block, num_clients=num_clients,
      evaluation=footprint.evaluation)
  if job.num_samples_per_chunk:
    return plan(chunk=align_draws(min(job.num_samples_per_chunk, num_samples), devices))
  room = plan(chunk=devices).largest_chunk // devices  # draws per device within the budget
  need = align_draws(num_samples, devices) // devices  # per device, all the draws at once
  if room == 0:
    return plan(chunk=DRAW_ALIGNMENT * devices)
  chunks = -(-need // room)
  return plan(chunk=align_draws(-(-need // chunks), 1) * devices)


def chunk_size(job, footprint: Footprint | int, num_samples: int, *, fixed: int = 0) -> int:
  """Draws trained at once (`memory_plan(...).chunk`): a multiple of DRAW_ALIGNMENT per device
  of `job.mesh`'s draws axis, within `memory_budget_gb` per device whenever the smallest
  chunk is, `fixed` bytes per device (`fixed_memory`) included."""
  return memory_plan(job, footprint, num_samples, fixed=fixed).chunk


def plan_simulator(job, sim, fed: FederatedData, num_samples: int, *, devices: int | None = None
                   ) -> tuple[Any, MemoryPlan]:
  """(`sim`, streamed when it must be, and its memory plan): `footprint` for the draws per
  device that `num_samples` asks, then `memory_plan`."""
  if devices is None:
    devices = sharding.axis_sizes(job.mesh)[sharding.DRAWS]
  fixed = fixed_memory(fed)
  draws = align_draws(min(job.num_samples_per_chunk or num_samples, num_samples),
                      devices) // devices
  found = footprint(sim, fed, draws=draws, fixed=fixed,
                    budget=int(job.memory_budget_gb * 2**30))
  if found.client_block:
    sim = dataclasses.replace(sim, client_block=found.client_block)
  return sim, memory_plan(job, found, num_samples, fixed=fixed, devices=devices,
                          num_clients=sim.num_clients)


def _human_bytes(n: float) -> str:
  """'4.04 GB', '81 MB', '0.5 MB' (GB = 2^30 bytes, as memory_budget_gb)."""
  if n >= 2**30:
    return f"{n / 2**30:.2f} GB"
  return f"{n / 2**20:.0f} MB" if n >= 10 * 2**20 else f"{n / 2**20:.1f} MB"
