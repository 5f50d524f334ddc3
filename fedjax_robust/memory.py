"""How a job's draws are chunked, and the memory a chunk is estimated to take (engine layer,
BUILD.md "Layers"): the vmapped width's alignment (DRAW_ALIGNMENT, `align_draws`), the bytes of a
draw and of the data (`memory_per_draw`, `fixed_memory`), and the chunking within
`memory_budget_gb` per device (`memory_plan`, `MemoryPlan`, `chunk_size`). `experiment` runs the
chunks and re-exports the public names.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
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


def memory_per_draw(job, num_params: int, max_count: int | None = None) -> int:
  """Estimated bytes one draw needs: about 8 `[n, d]` float32 arrays (momentum, updates, an
  aggregator's working copies) plus the model's activations on every client's minibatch (taken
  as 1024 floats per example); with DP-SGD also the per-example gradients, `[n, m_max, d]`."""
  n, batch = job.num_clients, local_batch_size(job, max_count)
  per_example = n * batch * num_params if job.privacy.kind == "example" else 0
  return 4 * (8 * n * num_params + n * max(batch, 64) * 1024 + per_example)


def fixed_memory(fed: FederatedData) -> int:
  """Bytes each device holds whatever the chunk: the clients' training data and held-out splits,
  the test set and the server's root data (replicated on every device of a mesh)."""
  return int(sum(np.dtype(a.dtype).itemsize * math.prod(a.shape) for a in jax.tree.leaves(
      (fed.train, fed.test_x, fed.test_y, fed.holdout, fed.root))))


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
  """How a job's draws are chunked, and the memory per device that plan is estimated to take:
  `fixed` + `draws_per_device` × `per_draw` bytes (the chunk's padding draws included, since
  they are computed), against `budget` (`memory_budget_gb`, per device)."""
  chunk: int             # draws trained at once, over all the devices of the draws axis
  devices: int           # devices on the mesh's draws axis
  per_draw: int          # bytes, `memory_per_draw`
  fixed: int             # bytes, `fixed_memory`
  budget: int            # bytes per device
  automatic: bool        # chosen from the budget (num_samples_per_chunk = 0)

  @property
  def draws_per_device(self) -> int:
    return self.chunk // self.devices

  @property
  def bytes_per_device(self) -> int:
    return self.fixed + self.draws_per_device * self.per_draw

  @property
  def largest_chunk(self) -> int:
    """The largest chunk within the budget (0: not even DRAW_ALIGNMENT draws per device)."""
    fit = max(self.budget - self.fixed, 0) // self.per_draw
    return fit // DRAW_ALIGNMENT * DRAW_ALIGNMENT * self.devices

  def describe(self) -> str:
    """'memory ≈ 2.02 GB per device (256 draws × 8 MB + 1 MB of data; budget 4 GB)'."""
    where = " per device" if self.devices > 1 else ""
    return (f"memory ≈ {_human_bytes(self.bytes_per_device)}{where} ({self.draws_per_device} "
            f"draws × {_human_bytes(self.per_draw)} + {_human_bytes(self.fixed)} of data; "
            f"budget {self.budget / 2**30:g} GB{where})")

  def warning(self) -> str:
    """'' when the plan is within the budget, else what exceeds what and what to change."""
    if self.bytes_per_device <= self.budget:
      return ""
    need = -(-self.bytes_per_device * 100 // 2**30) / 100  # GB, rounded up to 0.01
    what = (f"WARNING: memory: a chunk of {self.chunk} draws ({self.draws_per_device} per "
            f"device) is estimated at {_human_bytes(self.bytes_per_device)} per device "
            f"({self.draws_per_device} × {_human_bytes(self.per_draw)} per draw + "
            f"{_human_bytes(self.fixed)} of data), more than memory_budget_gb="
            f"{self.budget / 2**30:g}.")
    if self.largest_chunk:  # num_samples_per_chunk asked for more than fits
      return (f"{what} num_samples_per_chunk sets this chunk; set num_samples_per_chunk="
              f"{self.largest_chunk} (or 0: chosen from the budget), or memory_budget_gb="
              f"{need:g} if the device has that much.")
    return (f"{what} The smallest chunk is {DRAW_ALIGNMENT} draws per device (DRAW_ALIGNMENT); "
            f"set memory_budget_gb={need:g} if the device has that much, or make a draw "
            "cheaper (training.batch_size, num_clients, the model).")


def memory_plan(job, num_params: int, num_samples: int, max_count: int | None = None, *,
                fixed: int = 0, devices: int | None = None) -> MemoryPlan:
  """The chunking of `num_samples` draws over `devices` (default: `job.mesh`'s draws axis):
  `num_samples_per_chunk` as given (rounded up to DRAW_ALIGNMENT per device), or (0) the fewest
  chunks whose memory per device, `fixed` + draws per device × `memory_per_draw` (padding
  included), stays within `memory_budget_gb`, the draws spread evenly over them (S = 1024 with
  room for 1008: two chunks of 512, not 1008 + 1008 with 992 padding draws). When not even
  DRAW_ALIGNMENT draws per device fit, that smallest chunk (`MemoryPlan.warning` says so).
  A draw's numbers do not depend on the chunking (see DRAW_ALIGNMENT)."""
  if devices is None:
    devices = sharding.axis_sizes(job.mesh)[sharding.DRAWS]
  plan = functools.partial(
      MemoryPlan, devices=devices, per_draw=memory_per_draw(job, num_params, max_count),
      fixed=fixed, budget=int(job.memory_budget_gb * 2**30),
      automatic=not job.num_samples_per_chunk)
  if job.num_samples_per_chunk:
    return plan(chunk=align_draws(min(job.num_samples_per_chunk, num_samples), devices))
  room = plan(chunk=devices).largest_chunk // devices  # draws per device within the budget
  need = align_draws(num_samples, devices) // devices  # per device, all the draws at once
  if room == 0:
    return plan(chunk=DRAW_ALIGNMENT * devices)
  chunks = -(-need // room)
  return plan(chunk=align_draws(-(-need // chunks), 1) * devices)


def chunk_size(job, num_params: int, num_samples: int, max_count: int | None = None, *,
               fixed: int = 0) -> int:
  """Draws trained at once (`memory_plan(...).chunk`): a multiple of DRAW_ALIGNMENT per device
  of `job.mesh`'s draws axis, within `memory_budget_gb` per device whenever the smallest
  chunk is, `fixed` bytes per device (`fixed_memory`) included."""
  return memory_plan(job, num_params, num_samples, max_count, fixed=fixed).chunk


def _human_bytes(n: float) -> str:
  """'4.04 GB', '81 MB', '0.5 MB' (GB = 2^30 bytes, as memory_budget_gb)."""
  if n >= 2**30:
    return f"{n / 2**30:.2f} GB"
  return f"{n / 2**20:.0f} MB" if n >= 10 * 2**20 else f"{n / 2**20:.1f} MB"
