"""ByzFL's own federated training loop, timed: the yardstick for a "ratio to ByzFL's loop" column.

ByzFL (`pip install byzfl`, which brings PyTorch) is optional: this module imports without it, and
`available()` says whether it can run. Tested against byzfl 0.0.11.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import queue as queue_lib
import time
import traceback
from typing import Callable

import numpy as np

from fedjax_robust.aggregators import registry

# The pipelines timed against ByzFL's loop, as a config names them ("median": coordinate_median's
# alias). The loop gives each ByzFL class {"f": f} alone (ByzFL's RobustAggregator passes on only
# the parameters a class takes: Average, Median and GeometricMedian take no f), plus
# `aggregator_parameters`; a stage whose ByzFL arguments come from its options (centered
# clipping, static clipping, bucketing) would run at ByzFL's defaults instead of ours.
SPECS = ("mean", "median", "trimmed_mean", "geometric_median", "krum", "nnm+trimmed_mean")


def _byzfl_names(spec: str) -> tuple[str, list[str]]:
  """(ByzFL aggregator, [ByzFL pre-aggregators]) for `spec`: each stage's class name from its
  registry entry (`registry.entry(name).byzfl`)."""
  *pre, rule = (registry.entry(stage).byzfl.name for stage in registry.split_spec(spec))
  return rule, pre


# Our spec -> (ByzFL aggregator, [ByzFL pre-aggregators]).
RULES = {spec: _byzfl_names(spec) for spec in SPECS}


def available() -> bool:
  """Whether `byzfl` and `torch` import."""
  try:
    import byzfl  # pylint: disable=g-import-not-at-top,unused-import
    import torch  # pylint: disable=g-import-not-at-top,unused-import
  except Exception:  # pylint: disable=broad-except
    return False
  return True


def rounds_per_second(xs, ys, honest, *, num_rounds=20, warmup_rounds=2, **kwargs) -> float:
  """Rounds per second of ByzFL's own D-SGD loop (`prepare_round`, whose arguments `kwargs`
  are), one process on one CPU thread: `warmup_rounds` untimed rounds, then `num_rounds` timed
  (ByzFL's periodic evaluation is not run)."""
  one_round, close = prepare_round(xs, ys, honest, **kwargs)
  try:
    for _ in range(warmup_rounds):
      one_round()
    start = time.perf_counter()
    for _ in range(num_rounds):
      one_round()
    return num_rounds / (time.perf_counter() - start)
  finally:
    close()


def prepare_round(xs, ys, honest, *, spec: str, f: int, hidden=(64, 32), num_classes=10,
                  batch_size=32, lr=0.5, momentum=0.9, attack="alie", seed=0,
                  aggregator_parameters=None) -> tuple[Callable[[], None], Callable[[], None]]:
  """(one_round, close): one round of ByzFL's own D-SGD loop, its `Client`, `ByzantineClient`
  and `Server` (with its `RobustAggregator`), exactly as `byzfl.benchmark.train` runs them, on
  one CPU thread (`torch.set_num_threads(1)` until `close()`, which undoes the set-up).

  One timed round: every honest `Client.compute_gradients()` (the next batch of its shuffled
  `DataLoader`, forward and backward of the MLP), `get_flat_gradients_with_momentum()`,
  `ByzantineClient.apply_attack(honest_vectors)`, `Server.update_model_with_gradients(...)`
  (pre-aggregators, aggregator, SGD step at `lr`), then the new global state sent to each client
  with `set_model_state`.

  xs[i] is client i's float32 features `[m_i, features]`, ys[i] its integer labels. Adaptations
  to ByzFL's API: it builds models by name from `byzfl.fed_framework.models`, so our MLP
  (features -> *hidden -> num_classes, ReLU) is registered there for the call; its Byzantine
  clients hold no data, so clients with `honest[i]` False only count: ALIE (`ALittleIsEnough`,
  ByzFL's default tau = 1.5, mean + tau·std) sends their vectors. With `attack="none"` every
  client is an honest `Client` and the attack is ByzFL's "NoAttack". `spec` is a key of `RULES`,
  whose aggregators get `f`; `aggregator_parameters` overrides the aggregator's, e.g. {"T": 100}
  for GeometricMedian's iterations (ByzFL's default T = 3, nu = 0.1). Server SGD without
  momentum or weight decay; the momentum is the clients' (ByzFL's D-SGD).
  """
  import torch  # pylint: disable=g-import-not-at-top
  from torch.utils import data as torch_data  # pylint: disable=g-import-not-at-top
  import byzfl  # pylint: disable=g-import-not-at-top
  from byzfl.fed_framework import models as byzfl_models  # pylint: disable=g-import-not-at-top
  from byzfl.utils import misc  # pylint: disable=g-import-not-at-top

  if attack not in ("alie", "none"):
    raise ValueError(f"attack must be 'alie' or 'none', got {attack!r}")
  agg_name, pre_names = RULES[spec]
  honest = np.asarray(honest, bool)
  if attack == "none":
    honest = np.ones_like(honest)
  num_byzantine = int(np.sum(~honest))
  sizes = [xs[0].shape[1], *hidden, num_classes]

  class Mlp(torch.nn.Module):
    def __init__(self):
      super().__init__()
      layers = []
      for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
      self.net = torch.nn.Sequential(*layers[:-1])

    def forward(self, x):
      return self.net(x)

  model_name = "fedjax_robust_mlp_" + "_".join(map(str, sizes))
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  setattr(byzfl_models, model_name, Mlp)

  def close():
    if hasattr(byzfl_models, model_name):
      delattr(byzfl_models, model_name)
    torch.set_num_threads(threads)

  try:
    misc.set_random_seed(seed)

    def loader(x, y, shuffle=True):
      dataset = torch_data.TensorDataset(torch.as_tensor(np.asarray(x, np.float32)),
                                         torch.as_tensor(np.asarray(y, np.int64)))
      return torch_data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle)

    aggregator_info = {"name": agg_name,
                       "parameters": {"f": f, **(aggregator_parameters or {})}}
    pre_agg_list = [{"name": name, "parameters": {"f": f}} for name in pre_names]
    common = {"model_name": model_name, "device": "cpu", "learning_rate": float(lr),
              "weight_decay": 0.0, "milestones": [], "learning_rate_decay": 1.0}
    clients = [
        byzfl.Client({**common, "optimizer_name": None, "loss_name": "CrossEntropyLoss",
                      "LabelFlipping": False, "training_dataloader": loader(xs[i], ys[i]),
                      "momentum": float(momentum), "nb_labels": num_classes,
                      "store_per_client_metrics": False})
        for i in np.flatnonzero(honest)]
    server = byzfl.Server({**common, "optimizer_name": "SGD", "aggregator_info": aggregator_info,
                           "pre_agg_list": pre_agg_list,
                           "test_loader": loader(xs[0][:1], ys[0][:1], shuffle=False)})
    byz_client = byzfl.ByzantineClient({
        "name": "ALittleIsEnough" if attack == "alie" else "NoAttack", "f": num_byzantine,
        "parameters": {"aggregator_info": aggregator_info, "pre_agg_list": pre_agg_list,
                       "f": num_byzantine}})
    state = server.get_dict_parameters()
    for client in clients:
      client.set_model_state(state)

    def one_round():  # byzfl.benchmark.train's D-SGD step, minus loss bookkeeping
      for client in clients:
        client.compute_gradients()
      honest_gradients = [client.get_flat_gradients_with_momentum() for client in clients]
      byz_vectors = byz_client.apply_attack(honest_gradients)
      server.update_model_with_gradients(honest_gradients + byz_vectors)
      new_state = server.get_dict_parameters()
      for client in clients:
        client.set_model_state(new_state)
  except BaseException:
    close()
    raise
  return one_round, close


@dataclasses.dataclass(frozen=True)
class PoolRate:
  """What `pool_rounds_per_second` measured. `rounds_per_s` is the figure to compare against:
  every process's timed rounds over the common window, from the first process's start to the
  last one's end (the pool's throughput as a wall clock sees it). `sum_of_rates`, the sum of each
  process's own rounds/s, is at least that (a process that finishes early leaves the others a
  freer machine) and is given beside it, not used."""
  rounds_per_s: float
  sum_of_rates: float
  processes: int
  window_s: float                  # last end − first start
  rounds: int                      # timed rounds of each process
  pids: tuple[int, ...]
  per_process: tuple[float, ...]   # each process's own rounds/s


def _pool_worker(prepare, args, kwargs, warmup_rounds, num_rounds, barrier, queue,
                 timeout_s):
  """One process of the pool: set up (`prepare(*args, **kwargs)` gives (one_round, close)) and
  warm up, wait for every other process at `barrier`, then time `num_rounds` rounds on
  `time.monotonic` (CLOCK_MONOTONIC: one clock for every process of the machine) and report
  (pid, start, end), or the traceback."""
  try:
    one_round, close = prepare(*args, **kwargs)
    try:
      for _ in range(warmup_rounds):
        one_round()
      barrier.wait(timeout=timeout_s)
      start = time.monotonic()
      for _ in range(num_rounds):
        one_round()
      end = time.monotonic()
    finally:
      close()
    queue.put(("ok", os.getpid(), start, end))
  except BaseException:  # pylint: disable=broad-except
    barrier.abort()  # the others stop waiting
    queue.put(("error", os.getpid(), traceback.format_exc(), None))


def cores() -> int:
  """The cores this process may run on: the pool's default size, and what `sharding` gives the
  launchers' one-device-per-core mesh."""
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
      os.cpu_count() or 1)


def pool_rounds_per_second(xs, ys, honest, *, processes: int | None = None,
                           num_rounds: int = 20, warmup_rounds: int = 2,
                           prepare: Callable = prepare_round, timeout_s: float = 600.0,
                           **kwargs) -> PoolRate:
  """ByzFL's loop as a pool of `processes` concurrent one-thread processes (default `cores()`,
  the cores our side's mesh uses), each running `prepare`'s rounds on the same job: the
  same-cores yardstick, since ByzFL's loop runs one draw on one thread and a Monte Carlo job of
  many draws would run one such process per core.

  The processes start by 'spawn' (no state forked from a process that has started JAX or torch
  threads), set up and warm up apart, then start their `num_rounds` timed rounds together at a
  barrier. rounds_per_s = P · num_rounds / (max_p end_p − min_p start_p), the pool's wall-clock
  throughput (`PoolRate`). `prepare` is a module-level function (spawn pickles it by name)
  returning (one_round, close), called as `prepare(xs, ys, honest, **kwargs)`; the default
  `prepare_round` needs `byzfl`."""
  processes = cores() if processes is None else processes
  if processes < 1:
    raise ValueError(f"processes must be >= 1, got {processes}")
  ctx = multiprocessing.get_context("spawn")
  barrier = ctx.Barrier(processes)
  queue = ctx.Queue()
  workers = [ctx.Process(target=_pool_worker, daemon=True,
                         args=(prepare, (xs, ys, honest), kwargs, warmup_rounds, num_rounds,
                               barrier, queue, timeout_s))
             for _ in range(processes)]
  for w in workers:
    w.start()
  reports = []
  deadline = time.monotonic() + timeout_s
  try:
    while len(reports) < processes:
      try:
        reports.append(queue.get(timeout=1.0))
      except queue_lib.Empty:
        dead = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
        if dead or time.monotonic() > deadline:
          why = f"died (exit codes {dead})" if dead else f"took over {timeout_s} s"
          raise RuntimeError(f"the pool's processes {why}") from None
  finally:
    for w in workers:
      w.join(timeout=10)
      if w.is_alive():
        w.terminate()
  errors = sorted((r for r in reports if r[0] == "error"),
                  key=lambda r: "BrokenBarrierError" in r[2])  # the cause before its echoes
  if errors:
    raise RuntimeError(f"{len(errors)} of {processes} pool processes failed; the first:\n"
                       + errors[0][2])
  starts = [r[2] for r in reports]
  ends = [r[3] for r in reports]
  window = max(ends) - min(starts)
  per_process = tuple(num_rounds / (e - s) for s, e in zip(starts, ends))
  return PoolRate(rounds_per_s=processes * num_rounds / window, sum_of_rates=sum(per_process),
                  processes=processes, window_s=window, rounds=num_rounds,
                  pids=tuple(r[1] for r in reports), per_process=per_process)
