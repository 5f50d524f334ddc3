"""Regenerates the golden files that `tests/test_numbers_pinned.py` compares each run with.

  python tests/golden/update.py                        # every case, with this checkout's code
  python tests/golden/update.py tiny_config default    # some cases (names: see CASES)
  python tests/golden/update.py --source=/tmp/old      # with another checkout's code

Each case is a launcher command at a small size: the tests' tiny config as it is, the default
job and every shipped sweep config at the tiny size the documented-commands smoke test runs
(`tests/documented_commands.py`: `_TINY_TRAIN`, `_TINY_GRID`). The command runs in a fresh
temporary workdir with the code of `--source` (its `launch/` scripts, its package first on the
path), and the files it writes that hold the experiment's numbers (`draws.csv` and
`summary.json` of a training job, `results.csv` of a sweep) are copied to `tests/golden/<case>/`,
gzipped (`<file>.gz`, without a time stamp: the same bytes give the same file; 10-15x smaller, read
them with `zcat`); `tests/golden/manifest.json` records each case's command and files and the
commit that made them.
The test reruns the recorded command, so a later change of the smoke test's sizes does not move
the pin.

Regenerate only for a deliberate change of numbers (a fix or a new default that changes what a
job computes), in its own commit whose message says which numbers move and why. A refactor
never regenerates: that the pinned files still match is its proof that no number moved. To pin
the numbers of a given commit while the working tree holds other edits, run from a separate
checkout of it, e.g.

  git worktree add --detach /tmp/pin <commit>
  python tests/golden/update.py --source=/tmp/pin
  git worktree remove /tmp/pin
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile

GOLDEN = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(GOLDEN)
ROOT = os.path.dirname(TESTS)
MANIFEST = os.path.join(GOLDEN, "manifest.json")

sys.path.insert(0, TESTS)
import documented_commands as docs  # pylint: disable=g-import-not-at-top,wrong-import-position

_TRAIN_FILES = ("draws.csv", "summary.json")
_SWEEP_CONFIGS = ("sweep_core", "theory_synthetic", "theory_digits", "faults", "sweep_rfa",
                  "sweep_deployed", "sweep_mu_aware", "sweep_dp_compression",
                  "sweep_dp_dimension")


def _tiny(*argv: str) -> list[str]:
  """The documented command at the smoke test's tiny size, its `--workdir` left to the run."""
  sized = docs.tiny(docs.Command("tests/golden/update.py", " ".join(argv), argv), "WORKDIR")
  assert sized[-1] == "--workdir=WORKDIR", sized
  return sized[:-1]


def cases() -> dict[str, dict]:
  """Case name -> {"argv": the command (argv[0] `python`), "files": the files pinned}."""
  out = {"tiny_config": {"argv": ["python", "launch/train.py", "--config=tests/tiny_config.py"],
                         "files": list(_TRAIN_FILES)},
         "default": {"argv": _tiny("python", "launch/train.py", "--config=configs/default.py"),
                     "files": list(_TRAIN_FILES)}}
  for name in _SWEEP_CONFIGS:
    out[name] = {"argv": _tiny("python", "launch/sweep.py", f"--config=configs/{name}.py"),
                 "files": ["results.csv"]}
  return out


def golden_path(case: str, file: str) -> str:
  return os.path.join(GOLDEN, case, file + ".gz")


def write_golden(source_path: str, case: str, file: str) -> None:
  """Stores `source_path` as the golden `file` of `case`, gzipped with no name or time in the
  header."""
  target = golden_path(case, file)
  os.makedirs(os.path.dirname(target), exist_ok=True)
  with open(source_path, "rb") as src, open(target, "wb") as fh:
    with gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0) as out:
      shutil.copyfileobj(src, out)


def run(argv: list[str], workdir: str, *, source: str = ROOT,
        timeout: float = 3600) -> subprocess.CompletedProcess:
  """Runs a case's command with `source`'s code into `workdir` (this interpreter for
  `python`); raises with the command's stderr tail if it fails."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [source] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
  out = subprocess.run([sys.executable, *argv[1:], f"--workdir={workdir}"], cwd=source,
                       env=env, capture_output=True, text=True, timeout=timeout, check=False)
  if out.returncode != 0:
    raise RuntimeError(f"{' '.join(argv)} exited {out.returncode}:\n{out.stderr[-3000:]}")
  return out


def _commit(source: str) -> str | None:
  out = subprocess.run(["git", "-C", source, "rev-parse", "HEAD"], capture_output=True,
                       text=True, check=False)
  dirty = subprocess.run(["git", "-C", source, "status", "--porcelain", "--", "fedjax_robust",
                          "launch", "configs"], capture_output=True, text=True, check=False)
  if out.returncode != 0:
    return None
  return out.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("names", nargs="*", help="cases to regenerate (default: all)")
  parser.add_argument("--source", default=ROOT,
                      help="checkout whose code makes the numbers (default: this one)")
  args = parser.parse_args()
  source = os.path.abspath(args.source)
  table = cases()
  unknown = sorted(set(args.names) - set(table))
  if unknown:
    parser.error(f"unknown case(s) {', '.join(unknown)}; the cases are {', '.join(table)}")
  manifest = {}
  if os.path.exists(MANIFEST):
    with open(MANIFEST, encoding="utf-8") as fh:
      manifest = json.load(fh)
  commit = _commit(source)
  for name in args.names or list(table):
    case = table[name]
    print(f"{name}: {' '.join(case['argv'])}", flush=True)
    with tempfile.TemporaryDirectory() as workdir:
      run(case["argv"], workdir, source=source)
      for file in case["files"]:
        write_golden(os.path.join(workdir, file), name, file)
    manifest[name] = {**case, "commit": commit}
    with open(MANIFEST, "w", encoding="utf-8") as fh:  # after each case: a long run may stop
      json.dump(dict(sorted(manifest.items())), fh, indent=1)
      fh.write("\n")
  print(f"wrote {GOLDEN}/<case>/ and manifest.json ({commit or 'not a git checkout'})")


if __name__ == "__main__":
  main()
