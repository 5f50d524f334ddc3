"""Runs the tiny job on a mesh of simulated CPU devices and prints what test_sharding checks, as
JSON. Started by test_sharding in a fresh process, since the device count is fixed when JAX
starts: XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/sharded_checks.py."""

import json
import os
import re
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fedjax_robust import build  # pylint: disable=g-import-not-at-top,wrong-import-position
from fedjax_robust import checkpoints  # pylint: disable=g-import-not-at-top,wrong-import-position
from fedjax_robust import config as config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from fedjax_robust import experiment  # pylint: disable=g-import-not-at-top,wrong-import-position
from fedjax_robust import sharding  # pylint: disable=g-import-not-at-top,wrong-import-position
from tiny_config import get_config  # pylint: disable=g-import-not-at-top,wrong-import-position

COLLECTIVES = ("all-to-all", "all-gather", "all-reduce", "collective-permute", "reduce-scatter")


def run(sim, fed, masks, mesh, chunk, **kw):
  _, init_key, run_key = experiment._keys(get_config())  # pylint: disable=protected-access
  return experiment.run_monte_carlo(sim, fed, jnp.asarray(masks), init_key=init_key,
                                    run_key=run_key, num_rounds=10, eval_every=5, chunk=chunk,
                                    mesh=mesh, **kw)


class _Stop(Exception):
  pass


def resumed(sim, fed, masks, mesh, chunk):
  """The run stopped after its first step (checkpointed), then resumed from the checkpoint."""
  directory = tempfile.mkdtemp()
  store = lambda: checkpoints.Store(directory, key="k", chunk=chunk, num_samples=len(masks),
                                    every_steps=1, log=lambda _: None)

  def stop(*_):
    raise _Stop()
  try:
    run(sim, fed, masks, mesh, chunk, checkpoints=store(), progress=stop)
  except _Stop:
    pass
  return run(sim, fed, masks, mesh, chunk, checkpoints=store())


def differences(ref, out):
  """{name: largest |difference|} over metrics and aux (0.0: bit-identical, NaNs included)."""
  diff = {}
  for group in ("metrics", "aux"):
    a, b = getattr(ref, group), getattr(out, group)
    assert set(a) == set(b), (group, set(a) ^ set(b))
    for k in a:
      same = np.array_equal(a[k], b[k], equal_nan=True)
      diff[f"{group}.{k}"] = 0.0 if same else float(np.nanmax(np.abs(a[k] - b[k])))
  return diff


def collectives(compiled, num_clients, num_params):
  """The collectives of a compiled program: (op, shape) pairs, and whether any moves a whole
  `[n, d]` update matrix (an all-gather of every client's full update)."""
  found = []
  for line in compiled.as_text().splitlines():
    m = re.search(r"= (.*?) (" + "|".join(COLLECTIVES) + r")(-start)?\(", line)
    if m:
      found.append((m.group(2), m.group(1)))
  whole = [f"{op} {shape}" for op, shape in found
           if op == "all-gather" and f",{num_clients},{num_params}]" in shape.replace(" ", "")]
  return found, whole


def main(full: bool):
  """`full`: also draws over 2 devices, and the mean and the geometric median over clients."""
  out = {"devices": jax.device_count()}
  c = get_config()
  c.attack = "alie"
  fed = config_lib.make_data(c)
  rng = np.random.default_rng(0)
  masks = np.ones((20, c.num_clients), bool)
  for s in range(20):  # one or two Byzantine clients per draw
    masks[s, rng.choice(c.num_clients, 1 + s % 2, replace=False)] = False
  # Draws over 8 and over 2 devices (with padding), against one device: bit for bit.
  spec = "nnm+trimmed_mean"
  sim = build.make_simulator(c, spec, fed)
  ref = run(sim, fed, masks, None, 24)
  for mesh_spec, chunk in (("draws", 64),) + ((("draws=2", 16),) if full else ()):
    mesh = sharding.make(mesh_spec)
    got = run(sim, fed, masks, mesh, chunk)
    out[f"{spec}@{mesh_spec}"] = {"diff": differences(ref, got),
                                  "draws_per_chunk": got.draws_per_chunk}
  # Checkpointed after the first step and resumed on the mesh (the state put back with the
  # shardings a fresh chunk has): the uninterrupted run, bit for bit.
  out["resume@draws"] = differences(got, resumed(sim, fed, masks, mesh, chunk))
  # A second run of the same shapes (other masks, fewer draws, two chunks) compiles nothing:
  # neither an AOT program nor a per-device evaluation.
  programs = dict(experiment._programs)  # pylint: disable=protected-access
  jitted = {k: v._cache_size() for k, v in programs.items() if hasattr(v, "_cache_size")}
  mesh = sharding.make("draws")
  run(sim, fed, masks[::-1][:12], mesh, 64)
  run(sim, fed, np.concatenate([masks, masks[:60]]), mesh, 64)
  out["recompiled"] = (sorted(set(experiment._programs) - set(programs), key=str)  # pylint: disable=protected-access
                       + [str(k) for k, size in jitted.items()
                          if experiment._programs[k]._cache_size() != size])  # pylint: disable=protected-access
  out["per_device_programs"] = sorted(jitted.values())
  # Where the draws live: a chunk's states and the advance program's outputs.
  mesh = sharding.make("draws")
  place = experiment._Mesh(sim, 64, mesh)  # pylint: disable=protected-access
  states = place.states(sim.init(jax.random.key(0)))
  advance = place.advance(5, states, place.put(masks[:1].repeat(64, 0)),
                          place.put(jax.random.split(jax.random.key(1), 64), keys=True),
                          place.train_data(fed.train))
  new_states, aux = advance(states, place.put(masks[:1].repeat(64, 0)),
                            place.put(jax.random.split(jax.random.key(1), 64), keys=True),
                            place.train_data(fed.train))
  out["layout"] = {
      "input_spec": str(states.params.sharding.spec),
      "output_spec": str(new_states.params.sharding.spec),
      "momentum_spec": str(new_states.momentum.sharding.spec),
      "aux_spec": str(next(iter(aux.values())).sharding.spec),
      "devices": len({s.device for s in new_states.params.addressable_shards}),
      "shard_shape": list(new_states.params.addressable_shards[0].data.shape),
      "global_shape": list(new_states.params.shape),
      "collectives": [op for op, _ in collectives(advance, c.num_clients, sim.num_params)[0]],
  }
  # Clients over 2 devices (draws over 4): each rule against one device, within rounding.
  for spec in ("trimmed_mean",) + (("mean", "geometric_median") if full else ()):
    sim = build.make_simulator(c, spec, fed)
    ref = run(sim, fed, masks, None, 24)
    got = run(sim, fed, masks, sharding.make("draws=4,clients=2"), 32)
    scale = {k: float(np.nanmax(np.abs(v))) for k, v in ref.metrics.items()}
    program = [v for k, v in experiment._programs.items()  # pylint: disable=protected-access
               if k[0].startswith("advance") and "clients" in k[0] and k[1] == id(sim)][0]
    found, whole = collectives(program, c.num_clients, sim.num_params)
    if spec == "trimmed_mean":  # momentum rows split over the clients axis, restored so
      out["resume@clients"] = differences(
          got, resumed(sim, fed, masks, sharding.make("draws=4,clients=2"), 32))
    out[f"{spec}@clients"] = {"diff": differences(ref, got), "scale": scale,
                              "collectives": sorted({op for op, _ in found}),
                              "whole_update_gathers": whole}
  if full:
    out["paths"] = paths_on_two_devices()
  print("RESULT " + json.dumps(out))


def paths_on_two_devices():
  """Whole jobs (`experiment.run`) on mesh 'draws=2' vs one device: {case: identical?} over every
  metric of every run and reference (mixtures with absences, personal heads with fine-tuning,
  the theory, client sampling, the honest-only baseline, the worst-case search)."""
  cases = {}
  c = get_config()
  c.attack = "dropout:0.5,label_noise:0.5"
  c.num_clients, c.f = 8, 1
  c.honest_set_options.fixed_count.num_byzantine = 3
  cases["mixture"] = c
  c = get_config()
  c.model, c.aggregator, c.data.holdout_fraction = "mlp", "mean", 0.2
  c.training.personalization, c.training.fine_tune_steps = "personal_head", 2
  cases["personal"] = c
  c = get_config()
  c.theory.enabled, c.aggregator = True, "trimmed_mean"
  cases["theory"] = c
  c = get_config()
  c.training.clients_per_round, c.aggregator = 4, "trimmed_mean"
  cases["sampling"] = c
  c = get_config()
  c.estimators.honest_optimum, c.aggregator = True, "geometric_median"
  cases["honest_optimum"] = c
  c = get_config()
  c.honest_set, c.aggregator, c.num_clients = "worst_case", "mean", 5
  c.honest_set_options.worst_case.criterion = "final_loss"
  cases["worst_case"] = c
  out = {}
  for name, c in cases.items():
    metrics = []
    for mesh in ("", "draws=2"):
      c.mesh = mesh
      exp = experiment.run(c, log=lambda _: None)
      metrics.append({f"{s}.{k}": v for runs in (exp.runs, exp.references)
                      for s, r in runs.items() for k, v in r.metrics.items()})
    out[name] = bool(metrics[0]) and metrics[0].keys() == metrics[1].keys() and all(
        np.array_equal(metrics[0][k], metrics[1][k], equal_nan=True) for k in metrics[0])
  return out


if __name__ == "__main__":
  main(full="--full" in sys.argv)
