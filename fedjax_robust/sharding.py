"""Devices: a mesh with named axes for the Monte Carlo draws and the clients; multi-host start.

`config.mesh` names the mesh (`parse`): "" runs on one device as before; "draws" shards the
draws of every chunk across all devices; "draws=4,clients=2" uses 8 devices, the draws over 4
and each draw's clients over 2.

* **draws** (`shard_draws`): the chunk's draws are split across the axis with `shard_map`; each
  device runs the single-device program on its W/D draws, so there is no communication during
  training and a draw's numbers are bit-identical to a one-device run (tested on 8 simulated CPU
  devices). The evaluation runs the one-device program on each device's own draws
  (`local_parts`, `assemble`). Results leave the devices once per evaluation step (`gather`),
  never per round. On a CPU, one device per core (`define_flags`' --cpu_devices) trains the
  draws of every core in parallel, which one XLA:CPU device does not.
* **clients** (`constrain`, large n): local training runs sharded over the clients (each device
  trains n/C clients, its momentum rows stay there); before the attack and the aggregation the
  `[n, d]` updates are resharded from client rows to coordinate columns, which XLA implements
  as one all-to-all, so coordinate-wise rules (trimmed mean, median, ...) work on their own
  coordinates and norm-based ones (geometric median, Krum, clipping) sum partial squared norms
  across the axis (an all-reduce of n numbers). Sums are taken in another order than on one
  device: numbers agree to float32 rounding, not bitwise.

Multi-host (`initialize`, GPU pods and TPU slices): every process calls
`jax.distributed.initialize()` before touching a device; the mesh then spans every process's
devices, every process builds the same configuration and masks, trains the draws its own
devices hold, and `gather` assembles the full results on every process (only process 0 writes
files: `is_writer`).
"""

from __future__ import annotations

import os
from typing import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from fedjax_robust import errors

DRAWS, CLIENTS = "draws", "clients"
AXES = (DRAWS, CLIENTS)


def parse(spec: str) -> dict[str, int]:
  """`config.mesh` as {axis: size}; "" -> {} (no mesh); a bare "draws" takes every device.

  Raises a ConfigError naming the key, the value and what is allowed."""
  spec = (spec or "").strip()
  if not spec:
    return {}
  sizes = {}
  for part in spec.split(","):
    name, _, size = part.strip().partition("=")
    name = name.strip()
    if name not in AXES or name in sizes:
      raise errors.ConfigError(f"mesh={spec!r}: axis {name!r} is not allowed; axes are {AXES}, "
                               "each at most once, e.g. 'draws', 'draws=4' or 'draws=4,clients=2'")
    if not size.strip():
      if name != DRAWS:
        raise errors.ConfigError(f"mesh={spec!r}: the {name} axis needs a size ('{name}=2')")
      sizes[name] = 0  # every device left over
      continue
    if not size.strip().isdigit() or int(size) < 1:
      raise errors.ConfigError(f"mesh={spec!r}: {name}={size.strip()!r} is not a positive "
                               "integer")
    sizes[name] = int(size)
  return sizes


def axis_sizes(spec: str, num_devices: int | None = None) -> dict[str, int]:
  """{draws: D, clients: C} for `spec` on `num_devices` devices (default: all of them); raises
  a ConfigError when they do not divide the devices."""
  sizes = parse(spec)
  total = jax.device_count() if num_devices is None else num_devices
  if not sizes:
    return {DRAWS: 1, CLIENTS: 1}
  clients = sizes.get(CLIENTS, 1)
  draws = sizes.get(DRAWS, 1)
  if draws == 0:
    if total % clients:
      raise errors.ConfigError(f"mesh={spec!r}: clients={clients} does not divide the {total} "
                               "devices")
    draws = total // clients
  if draws * clients > total:
    raise errors.ConfigError(f"mesh={spec!r} needs {draws * clients} devices; this process sees "
                             f"{total} ({jax.default_backend()}; on a CPU, "
                             "XLA_FLAGS=--xla_force_host_platform_device_count=N simulates N)")
  return {DRAWS: draws, CLIENTS: clients}


def check(spec: str, num_clients: int, num_devices: int | None = None) -> None:
  """Config-time check of `config.mesh` against the devices (default: all) and n."""
  sizes = axis_sizes(spec, num_devices)
  if num_clients % sizes[CLIENTS]:
    raise errors.ConfigError(f"mesh={spec!r}: clients={sizes[CLIENTS]} must divide num_clients="
                             f"{num_clients} (each device trains the same number of clients)")


def make(spec: str) -> jax.sharding.Mesh | None:
  """The mesh `spec` names over the first D·C devices (None for ""). Axes are Auto: XLA's
  partitioner places what `constrain` does not."""
  if not parse(spec):
    return None
  sizes = axis_sizes(spec)
  devices = np.asarray(jax.devices()[:sizes[DRAWS] * sizes[CLIENTS]]).reshape(
      sizes[DRAWS], sizes[CLIENTS])
  return jax.sharding.Mesh(devices, AXES,
                           axis_types=(jax.sharding.AxisType.Auto,) * len(AXES))


def describe(mesh: jax.sharding.Mesh | None) -> str:
  if mesh is None:
    return "one device"
  return (f"mesh draws={mesh.shape[DRAWS]} × clients={mesh.shape[CLIENTS]} over "
          f"{mesh.devices.size} {mesh.devices.flat[0].platform} device(s)"
          + (f" in {jax.process_count()} processes" if jax.process_count() > 1 else ""))


def draws_of(mesh: jax.sharding.Mesh | None) -> int:
  return 1 if mesh is None else mesh.shape[DRAWS]


def clients_of(mesh: jax.sharding.Mesh | None) -> int:
  return 1 if mesh is None else mesh.shape[CLIENTS]


def constrain(x: jax.Array, spec: P) -> jax.Array:
  """`x` constrained to `spec` on the mesh being traced for when it has a clients axis of size
  > 1 (`with jax.set_mesh(mesh)`), else `x` unchanged: the single-device program is untouched."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or dict(mesh.shape).get(CLIENTS, 1) == 1:
    return x
  return jax.lax.with_sharding_constraint(x, spec)


def put(mesh: jax.sharding.Mesh, host, spec: P) -> jax.Array:
  """The global array with value `host` (the same on every process) laid out as `spec`; every
  process fills only its own devices' shards (no transfer between processes)."""
  host = np.asarray(host)
  return jax.make_array_from_callback(host.shape, NamedSharding(mesh, spec),
                                      lambda index: host[index])


def put_tree(mesh: jax.sharding.Mesh, tree, spec: P):
  return jax.tree.map(lambda a: put(mesh, a, spec), tree)


def gather(x) -> np.ndarray:
  """The whole of a (possibly multi-process) array on the host of every process."""
  if jax.process_count() > 1 and isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def shard_draws(fn: Callable, mesh: jax.sharding.Mesh, num_sharded: int, num_replicated: int,
                donate: bool = False):
  """`fn(*sharded, *replicated)` jitted with the first `num_sharded` arguments (pytrees with a
  leading draws axis) split over the mesh's draws axis and the rest replicated; each device runs
  `fn` on its own draws (its outputs: pytrees with a leading draws axis)."""
  in_specs = (P(DRAWS),) * num_sharded + (P(),) * num_replicated
  mapped = jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=P(DRAWS), check_vma=False)
  return jax.jit(mapped, donate_argnums=(0,) if donate else ())


def group_order(width: int, num_devices: int, group: int) -> np.ndarray:
  """The draws a chunk of `width` draws evaluates in its groups: group j takes `group` draws
  from each device's contiguous W/D (device-major), so concatenated group outputs hold draw
  `order[k]` at position k."""
  local = width // num_devices
  return np.concatenate([
      (np.arange(num_devices)[:, None] * local + j + np.arange(group)[None, :]).reshape(-1)
      for j in range(0, local, group)])


def local_parts(tree) -> dict:
  """{device: the tree of the shards on that device} over this process's devices."""
  leaves, treedef = jax.tree.flatten(tree)
  by_device = [{shard.device: shard.data for shard in leaf.addressable_shards}
               for leaf in leaves]
  return {device: treedef.unflatten([b[device] for b in by_device]) for device in by_device[0]}


def assemble(parts: dict, mesh: jax.sharding.Mesh):
  """The global arrays split over `mesh`'s draws axis made of `parts`, {device: tree of arrays
  on that device} (every addressable device's part of the leading axis)."""
  draws = NamedSharding(mesh, P(DRAWS))
  return jax.tree.map(
      lambda *shards: jax.make_array_from_single_device_arrays(
          (shards[0].shape[0] * mesh.shape[DRAWS],) + shards[0].shape[1:], draws, list(shards)),
      *parts.values())


def initialize(coordinator: str = "", num_processes: int = 0, process_id: int = -1) -> None:
  """`jax.distributed.initialize()` (multi-host GPU and TPU: arguments from the cluster
  environment when empty; on a CPU, local processes need all three)."""
  kwargs = {}
  if coordinator:
    kwargs["coordinator_address"] = coordinator
  if num_processes:
    kwargs["num_processes"] = num_processes
  if process_id >= 0:
    kwargs["process_id"] = process_id
  jax.distributed.initialize(**kwargs)


def is_writer() -> bool:
  """Whether this process writes results (process 0 of a multi-host run, or the only one)."""
  return jax.process_index() == 0


def compilation_cache_dir(flag: str | None) -> str:
  """The persistent compilation cache's folder for the launchers' --compilation_cache: the
  flag's value ('' off), else $JAX_COMPILATION_CACHE_DIR, else $FEDJAX_ROBUST_CACHE/xla or
  ~/.cache/fedjax_robust/xla."""
  if flag is not None:
    return flag
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return os.environ["JAX_COMPILATION_CACHE_DIR"]
  root = os.environ.get("FEDJAX_ROBUST_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "fedjax_robust")
  return os.path.join(root, "xla")


def define_flags(flag_values=None):
  """The launchers' device flags; returns `start(mesh)`, to call first in `main`, before any
  device is used: --cpu_devices sets the number of CPU devices (`jax_num_cpu_devices`); with
  --distributed it runs `initialize` and checks the mesh (`config.mesh`) is set, since without
  one every process would train every draw."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  where = {"flag_values": flags.FLAGS if flag_values is None else flag_values}
  cpu_devices = flags.DEFINE_integer(
      "cpu_devices", 0, "CPU devices JAX creates. 0: one per core this process may use when "
      "--config.mesh is a bare 'draws' (all devices), else JAX's default (one). XLA:CPU runs "
      "one device's small batched operations on about one core, so a mesh of one device per "
      "core trains the draws in parallel (BUILD.md, 'Devices'); the numbers do not change.",
      **where)
  distributed = flags.DEFINE_bool(
      "distributed", False, "Multi-host: call jax.distributed.initialize() first (GPU pods, TPU "
      "slices; on a CPU give the three flags below); every process trains the draws its "
      "devices hold on the mesh of --config.mesh; process 0 writes the results.", **where)
  coordinator = flags.DEFINE_string("coordinator_address", "",
                                    "host:port of process 0 (with --distributed).", **where)
  processes = flags.DEFINE_integer("num_processes", 0, "Processes in all (with --distributed).",
                                   **where)
  process_id = flags.DEFINE_integer("process_id", -1, "This process's index (--distributed).",
                                    **where)
  compilation_cache = flags.DEFINE_string(
      "compilation_cache", None, "Folder of JAX's persistent compilation cache: a program "
      "compiled once (≥ 1 s) is read back by later runs of the same shapes instead of compiled "
      "again (the same executable, so the same numbers). Default: $FEDJAX_ROBUST_CACHE/xla or "
      "~/.cache/fedjax_robust/xla (or $JAX_COMPILATION_CACHE_DIR when set); '' turns it off.",
      **where)

  def start(mesh: str) -> None:
    count = cpu_devices.value
    if count < 0:
      raise errors.ConfigError(f"--cpu_devices={count}: a number of devices >= 1 (0: one per "
                               "core with --config.mesh=draws, else one)")
    if count == 0 and parse(mesh).get(DRAWS) == 0:
      count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
          os.cpu_count() or 1)
    if count:  # the CPU backend only: a GPU or TPU host's accelerators are unaffected
      jax.config.update("jax_num_cpu_devices", count)
    folder = compilation_cache_dir(compilation_cache.value)
    if folder:
      jax.config.update("jax_compilation_cache_dir", folder)
    if not distributed.value:
      return
    if not parse(mesh):
      raise errors.ConfigError("--distributed needs a mesh to share the draws: set "
                               "--config.mesh (e.g. --config.mesh=draws); config.mesh='' runs "
                               "every draw in every process")
    initialize(coordinator.value, processes.value, process_id.value)
  return start
