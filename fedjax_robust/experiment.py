"""Runs one experiment: S draws of μ_H × every configured aggregator, on one compiled program each.

Rounds run in chunks of `eval_every` (one compiled `lax.scan` of vmapped rounds per chunk, called
from a Python loop over chunks, never over clients or samples), so progress can be reported and
the honest metrics recorded between chunks.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_robust import config as config_lib
from fedjax_robust import honest_sets
from fedjax_robust import training
from fedjax_robust.data import FederatedData

METRICS = ("honest_loss", "honest_accuracy", "test_loss", "test_accuracy")  # + backdoor_accuracy


@dataclasses.dataclass
class AggregatorRun:
  """Every sample's metrics over evaluation rounds for one aggregator spec."""
  spec: str
  rounds: np.ndarray                 # [E + 1] rounds at which metrics were taken (0 first)
  metrics: dict[str, np.ndarray]     # name -> [E + 1, S]
  aux: dict[str, np.ndarray]         # aggregator diagnostics averaged per chunk -> [E, S]
  compile_seconds: float
  run_seconds: float

  def save(self, path: str, fingerprint: str) -> None:
    arrays = {f"metric.{k}": v for k, v in self.metrics.items()}
    arrays.update({f"aux.{k}": v for k, v in self.aux.items()})
    tmp = path + ".tmp.npz"
    np.savez(tmp, rounds=self.rounds, fingerprint=fingerprint, spec=self.spec,
             timing=np.array([self.compile_seconds, self.run_seconds]), **arrays)
    os.replace(tmp, path)  # atomic: an interrupted run never leaves a half-written result

  @classmethod
  def load(cls, path: str, fingerprint: str) -> "AggregatorRun | None":
    """The saved run, or None if absent or made by a different configuration."""
    if not os.path.exists(path):
      return None
    with np.load(path) as z:
      if str(z["fingerprint"]) != fingerprint:
        return None
      return cls(str(z["spec"]), z["rounds"],
                 {k[7:]: z[k] for k in z.files if k.startswith("metric.")},
                 {k[4:]: z[k] for k in z.files if k.startswith("aux.")},
                 float(z["timing"][0]), float(z["timing"][1]))


def fingerprint(config) -> str:
  """A hash of everything that determines the numbers of one aggregator's run."""
  return hashlib.sha256(config.to_json(sort_keys=True).encode()).hexdigest()[:16]


Progress = Callable[[str, int, int, float, float], None]  # spec, done, total, elapsed, eta


def run_monte_carlo(sim: training.Simulator, fed: FederatedData, masks: jax.Array, *,
                    init_key: jax.Array, run_key: jax.Array, num_rounds: int, eval_every: int,
                    spec: str = "", progress: Progress | None = None) -> AggregatorRun:
  """Trains S models, one per honest mask `[S, n]`, and evaluates them every `eval_every` rounds."""
  num_samples = masks.shape[0]
  states = training.replicate(sim.init(init_key), num_samples)
  keys = training.sample_keys(run_key, num_samples)
  test = (fed.test_x, fed.test_y)
  evaluate = jax.jit(jax.vmap(sim.evaluate, in_axes=(0, 0, None, None, None)))
  advance = jax.jit(
      jax.vmap(functools.partial(sim.run_rounds, num_rounds=eval_every), in_axes=(0, 0, 0, None)),
      donate_argnums=0)
  start = time.perf_counter()
  advance = advance.lower(states, masks, keys, fed.train).compile()
  compile_seconds = time.perf_counter() - start

  history = [jax.device_get(evaluate(states.params, masks, fed.train, *test))]
  aux_history = []
  start = time.perf_counter()
  num_chunks = num_rounds // eval_every
  for chunk in range(num_chunks):
    states, aux = advance(states, masks, keys, fed.train)
    history.append(jax.device_get(evaluate(states.params, masks, fed.train, *test)))
    aux_history.append(jax.device_get(aux))
    if progress is not None:
      elapsed = time.perf_counter() - start
      progress(spec, (chunk + 1) * eval_every, num_rounds, elapsed,
               elapsed / (chunk + 1) * (num_chunks - chunk - 1))
  run_seconds = time.perf_counter() - start
  return AggregatorRun(
      spec=spec,
      rounds=np.arange(num_chunks + 1) * eval_every,
      metrics={k: np.stack([np.asarray(h[k]) for h in history]) for k in history[0]},
      aux={k: np.stack([np.asarray(a[k]) for a in aux_history]) for k in
           (aux_history[0] if aux_history else {})},
      compile_seconds=compile_seconds, run_seconds=run_seconds)


@dataclasses.dataclass
class Experiment:
  config: object
  data: FederatedData
  masks: np.ndarray                  # [S, n] True = honest
  runs: dict[str, AggregatorRun]


def run(config, *, workdir: str | None = None, progress: Progress | None = None,
        log: Callable[[str], None] = print) -> Experiment:
  """Validates `config`, builds the data and the honest masks, and runs every aggregator.

  With a `workdir`, each aggregator's samples are saved to `workdir/runs/<spec>.npz` as soon as
  it finishes, and a rerun with the same configuration loads them instead of training again.
  """
  config_lib.validate(config)
  fed = config_lib.make_data(config)
  log(f"data {fed.name}: {config.num_clients} clients, {int(fed.train.counts.sum())} training "
      f"examples (per client {int(fed.train.counts.min())}..{int(fed.train.counts.max())}), "
      f"{fed.test_y.shape[0]} test examples, {fed.num_classes} classes")
  root = jax.random.key(config.seed)
  mask_key, init_key, run_key = (jax.random.fold_in(root, i) for i in range(3))
  masks = honest_sets.sample(mask_key, config_lib.honest_set_spec(config),
                             num_clients=config.num_clients, num_samples=config.num_samples)
  runs = {}
  for spec in config_lib.aggregator_specs(config):
    path = os.path.join(workdir, "runs", spec + ".npz") if workdir else None
    spec_config = config.copy_and_resolve_references()
    spec_config.aggregator = spec
    key = fingerprint(spec_config)
    cached = AggregatorRun.load(path, key) if path else None
    if cached is not None:
      log(f"{spec}: loaded from {path}")
      runs[spec] = cached
      continue
    sim = config_lib.make_simulator(config, spec, fed)
    log(f"{spec}: compiling ({sim.num_params} parameters, {config.num_samples} samples)")
    runs[spec] = run_monte_carlo(
        sim, fed, masks, init_key=init_key, run_key=run_key,
        num_rounds=config.training.num_rounds, eval_every=config.training.eval_every,
        spec=spec, progress=progress)
    log(f"{spec}: compiled in {runs[spec].compile_seconds:.1f} s, ran in "
        f"{runs[spec].run_seconds:.1f} s")
    if path:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      runs[spec].save(path, key)
  return Experiment(config, fed, np.asarray(masks), runs)
