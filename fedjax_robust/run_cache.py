"""The cache of a job's runs (engine layer, BUILD.md "Layers"): an aggregator's run
(`AggregatorRun`) saved to and loaded from `workdir/runs/<spec>.npz`, keyed by the `fingerprint`
of what determines its numbers (`run_config`; `reference_config` for the honest-only baseline),
the keys that changed named when a cached run is recomputed (`config_changes`); and a searched
worst case saved beside its run (`<spec>.worst_case.json`: `_save_worst_case`,
`_load_worst_case`). `experiment` runs the jobs and re-exports the public names.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from typing import Callable
import zipfile
import zlib

import numpy as np

from fedjax_robust import config as config_lib
from fedjax_robust import provenance


# What reading a damaged cached .npz raises: missing (OSError), empty (EOFError), truncated or
# corrupted (BadZipFile, zlib.error), not an npz (ValueError), or lacking an array (KeyError).
NPZ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError)


@dataclasses.dataclass
class AggregatorRun:
  """Every sample's metrics over evaluation rounds for one aggregator spec."""
  spec: str
  rounds: np.ndarray                 # [E + 1] rounds at which metrics were taken (0 first)
  metrics: dict[str, np.ndarray]     # name -> [E + 1, S]
  aux: dict[str, np.ndarray]         # aggregator diagnostics averaged per chunk -> [E, S]; the
                                     # theory's training.ROUND_AUX per round -> [E, S, e]
  compile_seconds: float
  run_seconds: float
  draws_per_chunk: int = 0           # the vmapped width the draws ran at (0: unknown)
  # Quantities taken once at the final model, name -> [S] (with theory measurements: the
  # estimated smoothness of L_S at θ_T, `honest_smoothness`).
  final: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  # What made these numbers (provenance.record): code version, software, device, seed, chunk.
  provenance: dict | None = None

  def save(self, path: str, config) -> None:
    """Writes the run to `path` with `config` (`run_config` or `reference_config`: what made
    these numbers), its `fingerprint` and the run's provenance."""
    arrays = {f"metric.{k}": v for k, v in self.metrics.items()}
    arrays.update({f"aux.{k}": v for k, v in self.aux.items()})
    arrays.update({f"final.{k}": v for k, v in self.final.items()})
    tmp = path + ".tmp.npz"
    np.savez(tmp, rounds=self.rounds, fingerprint=fingerprint(config),
             config=config.to_json(sort_keys=True), spec=self.spec,
             timing=np.array([self.compile_seconds, self.run_seconds]),
             draws_per_chunk=self.draws_per_chunk,
             provenance=json.dumps(self.provenance or provenance.record(
                 seed=None, draws_per_chunk=self.draws_per_chunk)), **arrays)
    os.replace(tmp, path)  # atomic: an interrupted run never leaves a half-written result

  @classmethod
  def load(cls, path: str, config,
           log: Callable[[str], None] | None = None) -> "AggregatorRun | None":
    """The run saved with the same `config` (see `save`), or None if absent, made by a
    different configuration (the keys that changed are named through `log`, from the
    configuration saved beside the run), made by code that declares other numbers
    (`provenance.NUMBERS_VERSION`) or on another numerical stack (`provenance.reuse_mismatch`:
    named through `log`), or unreadable (a truncated or damaged file is named through `log`);
    each of these is recomputed."""
    if not os.path.exists(path):
      return None
    try:
      with np.load(path) as z:
        if str(z["fingerprint"]) != fingerprint(config):
          if log is not None:
            changes = (config_changes(json.loads(str(z["config"])),
                                      json.loads(config.to_json()))
                       if "config" in z.files else "the file does not record its configuration")
            log(f"cached run {path} was made with another configuration ({changes}); "
                "recomputing it.")
          return None
        saved = json.loads(str(z["provenance"])) if "provenance" in z.files else None
        stale = provenance.reuse_mismatch(saved)
        if stale:
          if log is not None:
            log(f"WARNING: cached run {path} has the same configuration but was made by other "
                f"code or software ({stale}); recomputing it.")
          return None
        return cls(str(z["spec"]), z["rounds"],
                   {k[7:]: z[k] for k in z.files if k.startswith("metric.")},
                   {k[4:]: z[k] for k in z.files if k.startswith("aux.")},
                   float(z["timing"][0]), float(z["timing"][1]),
                   int(z["draws_per_chunk"]) if "draws_per_chunk" in z.files else 0,
                   {k[6:]: z[k] for k in z.files if k.startswith("final.")}, saved)
    except NPZ_ERRORS as e:
      if log is not None:
        log(f"WARNING: cached run {path} is unreadable ({type(e).__name__}: {e}); "
            "recomputing it.")
      return None


def fingerprint(config) -> str:
  """A hash of a configuration: a sweep point's id, and, of `run_config` or `reference_config`,
  the key of a cached run (with the numbers version and the numerical stack, checked by
  `provenance.reuse_mismatch` when a cached run is loaded, everything that determines its
  numbers).

  It hashes the raw configuration: the leaves whose value differs from the schema's default
  (`config.base_config`), and those the schema does not have (e.g. `honest_masks_sha256`). A key
  added to the schema at a default that keeps the old behaviour therefore changes no
  fingerprint, and the runs and sweep points cached before it are reused; a change of a
  default's value moves numbers, so it bumps `provenance.NUMBERS_VERSION`, which invalidates
  them."""
  leaves = _leaves(json.loads(config.to_json()))
  defaults = _schema_defaults()
  raw = {k: v for k, v in leaves.items()
         if k not in defaults or json.dumps(v, sort_keys=True) != defaults[k]}
  return hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def _schema_defaults() -> dict[str, str]:
  """Every leaf of `config.base_config()` (dotted) -> its default as JSON."""
  return {k: json.dumps(v, sort_keys=True)
          for k, v in _leaves(json.loads(config_lib.base_config().to_json())).items()}


# Keys no aggregator's run reads: how its numbers are summarized and printed, and which other
# runs are made. Changing them reuses the cached runs. report.*: the intervals, resamples and
# compared pairs of the summaries; estimators.*: the reference runs (cached on their own, by
# `reference_config`); theory.objectives: the objectives solved after the runs;
# pretraining.cache_dir: where the pretrained base is kept (what makes it is in the run's
# configuration); checkpoint.*: when a run saves its state. (The draws per chunk stay in: they
# shape the compiled program, and a run records the width it ran at.)
NOT_IN_RUN = ("report", "checkpoint", "estimators", "theory.objectives",
              "pretraining.cache_dir")

# What a reference simulator (`build.make_simulator(reference=...)`: the mean, no attack)
# does not read beyond experiment._NOT_IN_PROGRAM. It reads `theory`: with the theory on, the
# honest-only baseline records h_t and ‖∇L_S(θ_t)‖² at every round too (`experiment.simulator`),
# the non-convex theory's baseline.
_NOT_IN_REFERENCE = ("f", "aggregator_options", "server_prior", "attack", "attack_options")


def _drop(config, keys) -> None:
  """Deletes the dotted `keys` from an unlocked ConfigDict."""
  for key in keys:
    *path, leaf = key.split(".")
    node = config
    for part in path:
      node = node[part]
    del node[leaf]


def run_config(job, spec: str):
  """What determines the numbers of `spec`'s run: the job's effective configuration (a Job's
  `effective`, or a ConfigDict) with `aggregator` = `spec`, less NOT_IN_RUN. Its `fingerprint`
  keys the cached run, and it is saved beside the run, so that a recomputation names the keys
  that changed (`config_changes`)."""
  c = config_lib.config_of(job).copy_and_resolve_references()
  with c.unlocked():
    c.aggregator = spec
    _drop(c, NOT_IN_RUN)
  return c


def reference_config(job, masks: np.ndarray):
  """The same for the honest-only baseline trained on the draws `masks` `[S, n]`: `run_config`
  of the reference, less what its simulator never reads (_NOT_IN_REFERENCE), plus a digest of
  the masks (under a worst case searched per aggregator they come from the search, not from
  the configuration)."""
  c = run_config(job, "reference:honest_optimum")
  masks = np.asarray(masks, bool)
  with c.unlocked():
    _drop(c, _NOT_IN_REFERENCE)
    c.honest_masks_sha256 = hashlib.sha256(
        str(masks.shape).encode() + np.packbits(masks).tobytes()).hexdigest()[:16]
  return c


def _leaves(tree: dict, prefix: str = "") -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict) and value:
      out.update(_leaves(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = value
  return out


def config_changes(saved: dict, now: dict, most: int = 8) -> str:
  """The leaves that differ between two configurations (as JSON dicts), 'key: old → new', at most
  `most` named; a key one side lacks shows as '(absent)'."""
  old, new = _leaves(saved), _leaves(now)
  shown = lambda tree, k: repr(tree[k]) if k in tree else "(absent)"
  changed = [f"{k}: {shown(old, k)} → {shown(new, k)}"
             for k in sorted(old.keys() | new.keys())
             if k not in old or k not in new or json.dumps(old[k]) != json.dumps(new[k])]
  if not changed:
    return "no key differs from the one the file records (fingerprinted by older code)"
  return "; ".join(changed[:most]) + (f"; and {len(changed) - most} more" if len(changed) > most
                                      else "")


def _worst_case_path(run_path: str) -> str:
  return run_path[:-len(".npz")] + ".worst_case.json"


def _save_worst_case(run_path: str, fingerprint_: str, mask: np.ndarray, info: dict) -> None:
  """The searched honest set beside the run (`<spec>.worst_case.json`), so a rerun of the same
  configuration does not search again."""
  path = _worst_case_path(run_path)
  with open(path + ".tmp", "w") as fh:
    json.dump({"fingerprint": fingerprint_, "mask": np.asarray(mask, bool).tolist(),
               "info": info, "provenance": provenance.record(seed=None)}, fh, allow_nan=True)
  os.replace(path + ".tmp", path)


def _load_worst_case(run_path: str, fingerprint_: str,
                     log: Callable[[str], None] | None = None) -> tuple[np.ndarray, dict] | None:
  """The saved search of the same configuration, or None (absent, other config, other numbers
  version or numerical stack — named through `log` —, unreadable)."""
  try:
    with open(_worst_case_path(run_path)) as fh:
      saved = json.load(fh)
    if saved["fingerprint"] != fingerprint_:
      return None
    stale = provenance.reuse_mismatch(saved.get("provenance"))
    if stale:
      if log is not None:
        log(f"WARNING: saved worst-case search {_worst_case_path(run_path)} was made by other "
            f"code or software ({stale}); searching again.")
      return None
    return np.asarray(saved["mask"], bool), saved["info"]
  except (OSError, ValueError, KeyError, TypeError):
    return None
