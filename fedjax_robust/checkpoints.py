"""Checkpoints inside an aggregator's run (engine layer): a long run killed mid-aggregator resumes
from its last checkpoint instead of round 0, with the same numbers bit for bit.

`run_monte_carlo` trains a chunk of draws `eval_every` rounds at a time (one compiled program per
step); every `checkpoint.every_rounds` rounds it hands this store what resuming needs, gathered to
the host: the chunk's run state `[W, ...]` (`training.RunState`: parameters, server optimizer,
worker momentum, rule and attack states, the round counter, …; the draws' keys are derived from
the seed and the draw ids, so they are not saved), the metrics and diagnostics recorded so far in
the chunk, and the finished chunks' results. A store is one aggregator's run:
`workdir/checkpoints/<spec>/`, written with orbax-checkpoint (a checkpoint is written to a
temporary directory and renamed once complete, so a kill mid-save leaves the previous one; the
last two are kept). It is guarded like the run cache: its metadata records the run's
`fingerprint`, the chunk width and the draws, and `provenance.record()`; a store made by another
configuration, chunking, code or numerical stack is named, discarded and the run starts over.
Once the run is saved whole (`runs/<spec>.npz`) its store is deleted.

Why resuming is bit-identical: a step's program is a pure function of (state, masks, keys, data);
the state is restored exactly (host arrays, dtypes kept) and put back on the devices with the
layout a fresh chunk has, and the programs are the same compiled programs.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any, Callable

import jax
import numpy as np

from fedjax_robust import provenance

# Checkpoints kept per store: the newest and one before it (a damaged newest is not the only one).
KEEP = 2


class _OrbaxInfo(logging.Filter):
  """Drops orbax's INFO lines (dozens per save: handlers, threads, timings); its warnings stay."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or f"{os.sep}orbax{os.sep}" not in record.pathname


def _quiet_orbax() -> None:
  """Keeps orbax's INFO lines out of the run's output (absl's handler and the root logger's,
  whichever prints them)."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  for handler in (absl_logging.get_absl_handler(), *logging.getLogger().handlers):
    if not any(isinstance(f, _OrbaxInfo) for f in handler.filters):
      handler.addFilter(_OrbaxInfo())


def _flat(tree) -> tuple[dict[str, np.ndarray], Any]:
  """Host leaves keyed by position, and the tree's structure; typed PRNG keys as their data."""
  leaves, treedef = jax.tree.flatten(tree)
  out = {}
  for i, leaf in enumerate(leaves):
    if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
      raise TypeError("a run state holding typed PRNG keys cannot be checkpointed as arrays")
    out[f"{i:04d}"] = np.asarray(leaf)
  return out, treedef


class Store:
  """One aggregator run's checkpoints: `save` every `every_steps` evaluation steps, `restore`
  the newest one that matches the run (else None, the reason logged)."""

  def __init__(self, directory: str, *, key: str, chunk: int, num_samples: int,
               every_steps: int, log: Callable[[str], None] = print):
    self.directory = os.path.abspath(directory)
    self.meta = {"fingerprint": key, "chunk": int(chunk), "num_samples": int(num_samples)}
    self.every_steps = int(every_steps)
    self.log = log
    self._manager = None

  def manager(self):
    if self._manager is None:
      import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top  (seconds to import)
      _quiet_orbax()
      self._manager = ocp.CheckpointManager(
          self.directory, options=ocp.CheckpointManagerOptions(
              max_to_keep=KEEP, create=True, enable_async_checkpointing=True))
    return self._manager

  def due(self, part: int, step: int, num_steps: int, num_parts: int) -> bool:
    """Whether to save after evaluation step `step` (1-based) of chunk `part`: every
    `every_steps` steps, counted over the whole run, except after the run's last step (the run
    itself is then saved)."""
    done = part * num_steps + step
    return done % self.every_steps == 0 and done < num_parts * num_steps

  def save(self, part: int, step: int, num_steps: int, *, state, history: list[dict],
           aux_history: list[dict], finished: dict) -> None:
    """Saves the run after step `step` of chunk `part`: the chunk's host `state`, its evaluations
    so far (`history`: step + 1 dicts of [W] arrays; `aux_history`: step dicts), and the finished
    chunks' results (`finished`: name -> array, already concatenated over the chunks)."""
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    leaves, _ = _flat(state)
    groups = {}
    if history:
      groups["history"] = {k: np.stack([np.asarray(h[k]) for h in history]) for k in history[0]}
    if aux_history and aux_history[0]:
      groups["aux"] = {k: np.stack([np.asarray(a[k]) for a in aux_history])
                       for k in aux_history[0]}
    if finished:
      groups["finished"] = dict(finished)
    # Arrays under positional keys (orbax joins a tree's keys with dots, which names have);
    # their names go in the metadata.
    names = {g: sorted(d) for g, d in groups.items()}
    arrays = {"state": leaves} | {g: {f"{i:04d}": d[k] for i, k in enumerate(names[g])}
                                  for g, d in groups.items()}
    meta = self.meta | {"part": part, "step": step, "num_steps": num_steps, "names": names,
                        "provenance": provenance.record(seed=None)}
    # Written in the background while the next steps train (the arrays are host copies no one
    # else holds); a save waits for the one before it, and `wait` for the last.
    self.manager().save(part * num_steps + step, args=ocp.args.Composite(
        arrays=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta)))

  def wait(self) -> None:
    """Returns once the last save is on disk."""
    if self._manager is not None:
      self._manager.wait_until_finished()

  def restore(self, initial_state) -> dict | None:
    """The newest checkpoint of this run: {part, step, state (host arrays, the structure, shapes
    and dtypes of the chunk's state `initial_state`), history, aux, finished (name -> array, as
    `save` took them)}; None when there is none or it belongs to another run (named through
    `log`, and the store emptied)."""
    if not os.path.isdir(self.directory):
      return None
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    manager = self.manager()
    step = manager.latest_step()
    if step is None:
      return None
    try:
      meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # pylint: disable=broad-except  (a damaged store: start over)
      self.discard(f"unreadable ({type(e).__name__}: {e})")
      return None
    mine = {k: meta.get(k) for k in self.meta}
    if mine != self.meta:
      changed = ", ".join(f"{k} {mine[k]!r} -> {v!r}" for k, v in self.meta.items()
                          if mine[k] != v)
      self.discard(f"made by another run ({changed})")
      return None
    stale = provenance.reuse_mismatch(meta.get("provenance"))
    if stale:
      self.discard(f"made by other code or software ({stale})")
      return None
    expected, treedef = _flat(initial_state)
    restored = manager.restore(step, args=ocp.args.Composite(
        arrays=ocp.args.StandardRestore()))["arrays"]
    leaves = restored["state"]
    if (sorted(leaves) != sorted(expected)
        or any(np.shape(leaves[k]) != expected[k].shape for k in leaves)):
      self.discard("its state has another structure")
      return None
    state = jax.tree.unflatten(
        treedef, [np.asarray(leaves[k]).astype(expected[k].dtype, copy=False)
                  for k in sorted(leaves)])
    named = lambda g: {k: np.asarray(restored[g][f"{i:04d}"])
                       for i, k in enumerate(meta["names"].get(g, ()))}
    return {"part": int(meta["part"]), "step": int(meta["step"]), "state": state,
            "history": named("history"),
            "aux": named("aux"), "finished": named("finished")}

  def discard(self, why: str) -> None:
    self.log(f"checkpoints in {self.directory} {why}: discarded; the run starts over.")
    self.remove()

  def remove(self) -> None:
    """Deletes the store (the run is saved whole, or the store is another run's)."""
    if self._manager is not None:
      self._manager.wait_until_finished()
      self._manager.close()
      self._manager = None
    shutil.rmtree(self.directory, ignore_errors=True)

