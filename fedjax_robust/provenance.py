"""What made a number: the code version, the software and the hardware it ran on.

Every result the simulator writes (summary.json, a sweep point's record, a cached run) carries
`record()`. A cached run, worst-case search or sweep point is reused only when its configuration
(the run's key, `experiment.fingerprint`), its declared numbers version and its numerical stack
match this process's (`reuse_mismatch`, used by `experiment.AggregatorRun.load` and
`sweep.run`): after a change that moves numbers, old numbers are named as stale and recomputed,
not silently reloaded; after a refactor, which moves none, they are reused.

`NUMBERS_VERSION` is that declaration: an integer bumped by any change that moves a number a run
writes. The golden files enforce it (`tests/golden/update.py` refuses to write numbers that
differ from the pinned ones unless the version was bumped past the one they were pinned at, and
`tests/test_numbers_pinned.py` checks that the pins are at this version). A record without it
(made before numbers versions were kept) is never reused.

The code version also records a digest of the package's own source files (every `*.py` under
`fedjax_robust/`, path and content), which changes with any edit, committed or not, and works
without git, and the git commit with a dirty flag when git is available: which code ran, for
the record; neither decides reuse.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess

import jax

import fedjax_robust

PACKAGE_DIR = os.path.dirname(os.path.abspath(fedjax_robust.__file__))

# Bumped by any change that moves a number a run writes (draws.csv, summary.json, a sweep's
# results.csv, a cached run's arrays): a fix, a new default, another order of floating-point
# operations. Bumping it invalidates every cached run and sweep point; a refactor that moves no
# number leaves it, and the caches, as they are. `tests/golden/update.py` refuses to pin moved
# numbers without a bump, and `tests/test_numbers_pinned.py` checks that the golden files were
# pinned at this version. `tests/golden/update.py` reads it from this file's text (an
# `int` literal).
NUMBERS_VERSION = 1


@functools.lru_cache(maxsize=None)
def source_digest() -> str:
  """sha256 (16 hex digits) over the package's `*.py` files, each as its path relative to the
  package and its bytes, in sorted order."""
  h = hashlib.sha256()
  for root, dirs, files in os.walk(PACKAGE_DIR):
    dirs[:] = sorted(d for d in dirs if d != "__pycache__")
    for name in sorted(files):
      if name.endswith(".py"):
        path = os.path.join(root, name)
        h.update(os.path.relpath(path, PACKAGE_DIR).replace(os.sep, "/").encode() + b"\0")
        with open(path, "rb") as fh:
          h.update(fh.read() + b"\0")
  return h.hexdigest()[:16]


def _git(*args: str) -> str | None:
  try:
    out = subprocess.run(["git", "-C", PACKAGE_DIR, *args], capture_output=True, text=True,
                         timeout=10, check=True)
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout.strip()


@functools.lru_cache(maxsize=None)
def git_state() -> dict:
  """The git commit of the package's checkout and whether its package sources differ from it
  (`dirty`); both None outside a git checkout (an installed wheel)."""
  commit = _git("rev-parse", "HEAD")
  if not commit:
    return {"commit": None, "dirty": None}
  status = _git("status", "--porcelain", "--", PACKAGE_DIR)
  return {"commit": commit, "dirty": None if status is None else bool(status)}


def code_version() -> dict:
  """The package version, the numbers version (`NUMBERS_VERSION`, which decides reuse), the
  source digest, and the git commit with a dirty flag (informational)."""
  return {"package_version": fedjax_robust.__version__, "numbers_version": NUMBERS_VERSION,
          "source_digest": source_digest(), **git_state()}


def describe_code(code: dict | None) -> str:
  """'0.1.0, numbers version 1, source 1a2b…, commit 189b4b8 (dirty)'; the numbers version
  'not recorded (made before numbers versions were kept)' when the record lacks it; 'unknown
  (recorded before code versions were kept)' for None."""
  if not code:
    return "unknown (recorded before code versions were kept)"
  numbers = code.get("numbers_version")
  text = (f"{code.get('package_version')}, numbers version "
          + (f"{numbers}" if numbers is not None
             else "not recorded (made before numbers versions were kept)")
          + f", source {code.get('source_digest')}")
  if code.get("commit"):
    text += f", commit {code['commit'][:7]}" + (" (dirty)" if code.get("dirty") else "")
  return text


def environment() -> dict:
  """Python, JAX and jaxlib versions, the backend and its devices."""
  import jaxlib  # pylint: disable=g-import-not-at-top
  import numpy  # pylint: disable=g-import-not-at-top
  import sklearn  # pylint: disable=g-import-not-at-top
  devices = jax.devices()
  return {"python": platform.python_version(), "jax": jax.__version__,
          "jaxlib": getattr(jaxlib, "__version__", None) or jaxlib.version.__version__,
          # NumPy and scikit-learn build the partitions, the held-out split and the digits data.
          "numpy": numpy.__version__, "scikit_learn": sklearn.__version__,
          "backend": jax.default_backend(), "device_count": len(devices),
          "device_kind": devices[0].device_kind if devices else None,
          "platform": platform.platform(terse=True)}


# What a cached result must share with this process to be reused (besides its configuration,
# which keys it): the same numbers version (NUMBERS_VERSION; not the source digest, which any
# refactor changes) and the same numerical stack (another JAX, jaxlib, backend or device kind
# rounds differently; NumPy and scikit-learn make the data). A record without a numbers version
# (older code) differs from every one. The vmapped width is not in it: a draw's numbers do not
# depend on it (experiment.DRAW_ALIGNMENT).
REUSE_FIELDS = (("code", "numbers_version"), ("environment", "jax"), ("environment", "jaxlib"),
                ("environment", "backend"), ("environment", "device_kind"),
                ("environment", "numpy"), ("environment", "scikit_learn"))


def reuse_mismatch(saved: dict | None) -> str | None:
  """None when a result recorded with provenance `saved` may be reused by this process, else a
  sentence naming what differs, e.g. "code: saved 0.1.0, numbers version 1, source 1a2b… ≠ now
  0.1.0, numbers version 2, source 3c4d…" (a saved record without a numbers version: "numbers
  version not recorded (made before numbers versions were kept)")."""
  now = {"code": code_version(), "environment": environment()}
  if not saved or "code" not in saved:
    return f"code: saved {describe_code(None)} ≠ now {describe_code(now['code'])}"
  diffs = []
  for group, key in REUSE_FIELDS:
    old, new = (saved.get(group) or {}).get(key), now[group][key]
    if old != new:
      diffs.append(f"code: saved {describe_code(saved['code'])} ≠ now "
                   f"{describe_code(now['code'])}" if group == "code"
                   else f"{key}: saved {old} ≠ now {new}")
  return "; ".join(diffs) or None


def record(*, seed: int | None, draws_per_chunk: int | dict | None = None,
           draws_per_block: int | None = None, mesh: str | None = None,
           client_block: int = 0) -> dict:
  """The provenance block of a result: code version, environment, seed and the vmapped width
  the draws ran at (per aggregator when a dict), the draws per block inside a chunk (per
  device) when the chunk ran in blocks (`experiment.block_size`), and the devices' mesh when
  there was one (`sharding.describe`), and the clients per block when the memory plan streamed
  them (`training.map_clients`)."""
  out = {"code": code_version(), "environment": environment(),
         "seed": None if seed is None else int(seed), "draws_per_chunk": draws_per_chunk}
  if draws_per_block:
    out["draws_per_block"] = int(draws_per_block)
  if mesh and mesh != "one device":
    out["mesh"] = mesh
  if client_block:
    out["client_block"] = int(client_block)
  return out
