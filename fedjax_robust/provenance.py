"""What made a number: the code version, the software and the hardware it ran on.

Every result the simulator writes (summary.json, a sweep point's record, a cached run) carries
`record()`, and a cached run is reused only when its `code_version()` digest matches this
process's (see `experiment.AggregatorRun.load`): after a change to the package, old numbers are
named as stale and recomputed, not silently reloaded.

The code version is a digest of the package's own source files (every `*.py` under
`fedjax_robust/`, path and content), so it changes with any edit, committed or not, and works
without git; the git commit and a dirty flag are recorded beside it when git is available.
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
  """The package version, its source digest, and the git commit with a dirty flag."""
  return {"package_version": fedjax_robust.__version__, "source_digest": source_digest(),
          **git_state()}


def describe_code(code: dict | None) -> str:
  """'0.1.0, source 1a2b…, commit 189b4b8 (dirty)'; 'unknown (recorded before versions were
  kept)' for None."""
  if not code:
    return "unknown (recorded before code versions were kept)"
  text = f"{code.get('package_version')}, source {code.get('source_digest')}"
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


# What a cached result must share with this process to be reused: the same code and the same
# numerical stack (another JAX, jaxlib, backend or device kind rounds differently; NumPy and
# scikit-learn make the data). The vmapped width is not
# in it: a draw's numbers do not depend on it (experiment.DRAW_ALIGNMENT).
REUSE_FIELDS = (("code", "source_digest"), ("environment", "jax"), ("environment", "jaxlib"),
                ("environment", "backend"), ("environment", "device_kind"),
                ("environment", "numpy"), ("environment", "scikit_learn"))


def reuse_mismatch(saved: dict | None) -> str | None:
  """None when a result recorded with provenance `saved` may be reused by this process, else a
  sentence naming what differs, e.g. "code: saved 0.1.0, source 1a2b… ≠ now 0.1.0, source
  3c4d…"."""
  now = {"code": code_version(), "environment": environment()}
  if not saved or "code" not in saved:
    return f"code: saved {describe_code(None)} ≠ now {describe_code(now['code'])}"
  diffs = []
  for group, key in REUSE_FIELDS:
    old, new = saved.get(group, {}).get(key), now[group][key]
    if old != new:
      diffs.append(f"code: saved {describe_code(saved['code'])} ≠ now "
                   f"{describe_code(now['code'])}" if group == "code"
                   else f"{key}: saved {old} ≠ now {new}")
  return "; ".join(diffs) or None


def record(*, seed: int | None, draws_per_chunk: int | dict | None = None,
           draws_per_block: int | None = None, mesh: str | None = None) -> dict:
  """The provenance block of a result: code version, environment, seed and the vmapped width
  the draws ran at (per aggregator when a dict), the draws per block inside a chunk (per
  device) when the chunk ran in blocks (`experiment.block_size`), and the devices' mesh when
  there was one (`sharding.describe`)."""
  out = {"code": code_version(), "environment": environment(),
         "seed": None if seed is None else int(seed), "draws_per_chunk": draws_per_chunk}
  if draws_per_block:
    out["draws_per_block"] = int(draws_per_block)
  if mesh and mesh != "one device":
    out["mesh"] = mesh
  return out
