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
them with `zcat`); `tests/golden/manifest.json` records each case's command and files, the
commit that made them and the numbers version (`fedjax_robust/provenance.py`'s
`NUMBERS_VERSION`) they were pinned at.
The test reruns the recorded command, so a later change of the smoke test's sizes does not move
the pin.

Regenerate only for a deliberate change of numbers (a fix or a new default that changes what a
job computes), in its own commit whose message says which numbers move and why. A refactor
never regenerates: that the pinned files still match is its proof that no number moved.

Moved numbers need a bump of `provenance.NUMBERS_VERSION` (which invalidates every cached run and
sweep point: they hold the old numbers): when the files a case's run writes differ from its
pinned ones (`differs`: the bytes, less `IGNORED_KEYS` of a JSON file, which say which code and
machine ran it), the script refuses, writes nothing for that case and exits 1, unless the
source's `NUMBERS_VERSION` is greater than the one the manifest records for the case. A case
whose files do not move is re-pinned as it is, at the source's version (after a bump, run every
case: `tests/test_numbers_pinned.py` checks that each is pinned at `NUMBERS_VERSION`). Bytes
that differ only in the last bits because another machine ran them (the test passes within its
rtol there) are no reason to regenerate.

To pin the numbers of a given commit while the working tree holds other edits, run from a
separate checkout of it, e.g.

  git worktree add --detach /tmp/pin <commit>
  python tests/golden/update.py --source=/tmp/pin
  git worktree remove /tmp/pin
"""

from __future__ import annotations

import argparse
import csv
import ast
import gzip
import io
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
# summary.json: the subtrees that are not numbers of the experiment (a key path, and everything
# under it), found by reading fedjax_robust/provenance.py and by diffing two runs. Neither this
# script's check for moved numbers nor tests/test_numbers_pinned.py compares them.
IGNORED_KEYS = (
    # package version, numbers version, source digest, git commit and dirty flag: which code
    # ran (a refactor changes some of them by definition)
    ("provenance", "code"),
    # Python, JAX, jaxlib, NumPy and scikit-learn versions, backend, device count and kind,
    # the OS platform string: which machine and software stack ran it
    ("provenance", "environment"),
)
# CSV files: the columns that are not numbers of the experiment, per file name. results.csv's
# `point` is a sweep point's id, the fingerprint of its raw configuration
# (experiment.fingerprint): it names the point (whose rows its tags name as well) and moves when
# the fingerprint's scheme does (89fdc3f), with no number moving. draws.csv: none.
IGNORED_COLUMNS = {"draws.csv": (), "results.csv": ("point",)}
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


def numbers_version(source: str = ROOT) -> int:
  """`NUMBERS_VERSION` of the checkout `source`, read from the text of its
  `fedjax_robust/provenance.py` (not imported: `source` may be another checkout than the package
  this interpreter imports)."""
  path = os.path.join(source, "fedjax_robust", "provenance.py")
  with open(path, encoding="utf-8") as fh:
    tree = ast.parse(fh.read(), path)
  for node in tree.body:
    if (isinstance(node, ast.Assign) and len(node.targets) == 1
        and isinstance(node.targets[0], ast.Name) and node.targets[0].id == "NUMBERS_VERSION"
        and isinstance(node.value, ast.Constant) and type(node.value.value) is int):
      return node.value.value
  raise RuntimeError(f"{path} does not set NUMBERS_VERSION to an int literal")


def _drop(value: dict, path: tuple) -> None:
  """Removes the subtree at key path `path` of a JSON object, if there."""
  for key in path[:-1]:
    value = value.get(key) if isinstance(value, dict) else None
  if isinstance(value, dict):
    value.pop(path[-1], None)


def comparable(value: dict) -> dict:
  """A JSON result as compared for moved numbers (in place, returned): without the subtrees of
  IGNORED_KEYS, and with its `config` (summary.json's) as the raw configuration, the dotted
  leaves off the schema's defaults (`experiment.fingerprint`'s: a key the schema gains at a
  default moves nothing; a changed default does, since a config that relied on it now shows
  it). The schema is the installed package's."""
  from fedjax_robust import experiment  # pylint: disable=g-import-not-at-top
  for path in IGNORED_KEYS:
    _drop(value, path)
  if isinstance(value.get("config"), dict):
    defaults = experiment._schema_defaults()  # pylint: disable=protected-access
    value["config"] = {k: v for k, v in experiment._leaves(value["config"]).items()  # pylint: disable=protected-access
                       if k not in defaults or json.dumps(v, sort_keys=True) != defaults[k]}
  return value


def _numbers(file: str, data: bytes) -> bytes:
  """A run's `file` as compared for moved numbers: its bytes, but a JSON file's `comparable`
  (re-serialized in its own key order; NaN and infinities as written) and a CSV file's without
  its IGNORED_COLUMNS (re-written by `csv`)."""
  if file.endswith(".json"):
    return json.dumps(comparable(json.loads(data))).encode()
  ignored = IGNORED_COLUMNS.get(file, ())
  if not ignored:
    return data
  rows = list(csv.reader(io.StringIO(data.decode())))
  keep = [i for i, h in enumerate(rows[0] if rows else []) if h not in ignored]
  out = io.StringIO()
  csv.writer(out, lineterminator="\n").writerows([[r[i] for i in keep if i < len(r)]
                                                  for r in rows])
  return out.getvalue().encode()


def differs(case: str, file: str, new_path: str) -> bool:
  """Whether the file a run wrote at `new_path` holds other numbers than the pinned `file` of
  `case` (compared uncompressed, byte for byte, IGNORED_KEYS aside); False when nothing is
  pinned yet (a new case or file moves no pinned number)."""
  pinned = golden_path(case, file)
  if not os.path.exists(pinned):
    return False
  with gzip.open(pinned, "rb") as fh:
    old = fh.read()
  with open(new_path, "rb") as fh:
    new = fh.read()
  return old != new and _numbers(file, old) != _numbers(file, new)


class NumbersMovedWithoutBump(Exception):
  """A case's run wrote other numbers than its pinned ones, and NUMBERS_VERSION was not bumped
  past the version they were pinned at."""


def pin(name: str, case: dict, workdir: str, manifest: dict, *, version: int,
        commit: str | None) -> list[str]:
  """Pins the files a run of case `name` wrote into `workdir`: writes them as its golden files
  and its manifest entry (command, files, `commit`, `version` as `numbers_version`) into
  `manifest`; returns the files whose numbers moved. Raises NumbersMovedWithoutBump, having
  written nothing, when some moved and `version` is not greater than the `numbers_version` the
  manifest records for the case."""
  moved = [file for file in case["files"] if differs(name, file, os.path.join(workdir, file))]
  pinned_at = manifest.get(name, {}).get("numbers_version")
  if moved and (pinned_at is None or version <= pinned_at):
    at = (f"version {pinned_at}" if pinned_at is not None
          else "a numbers version the manifest does not record")
    raise NumbersMovedWithoutBump(
        f"{name}: the numbers moved ({', '.join(moved)} "
        f"{'differs' if len(moved) == 1 else 'differ'} from the pinned "
        f"{os.path.relpath(os.path.join(GOLDEN, name), ROOT)}/), but NUMBERS_VERSION is "
        f"{version} and the case was pinned at {at}. Nothing was written for {name}.\n"
        f"If the change of numbers is deliberate, bump NUMBERS_VERSION in "
        f"fedjax_robust/provenance.py to {max(version, pinned_at or 0) + 1} (every cached run "
        "and sweep point made before is then recomputed, as it must be: it holds the old "
        "numbers), rerun this script, and say in the commit message which numbers move and why. "
        f"If it is not (a refactor), a number moved by mistake: `pytest "
        f"tests/test_numbers_pinned.py -k {name}` names the fields. If only the machine differs "
        "(the last bits; the test passes within its rtol), keep the pinned files.")
  for file in case["files"]:
    write_golden(os.path.join(workdir, file), name, file)
  manifest[name] = {**case, "commit": commit, "numbers_version": version}
  return moved


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
  version = numbers_version(source)
  for name in args.names or list(table):
    case = table[name]
    print(f"{name}: {' '.join(case['argv'])}", flush=True)
    with tempfile.TemporaryDirectory() as workdir:
      run(case["argv"], workdir, source=source)
      try:
        moved = pin(name, case, workdir, manifest, version=version, commit=commit)
      except NumbersMovedWithoutBump as e:
        sys.exit(f"update.py: refused: {e}")
    print(f"{name}: " + (f"numbers moved in {', '.join(moved)}" if moved else "numbers unchanged")
          + f"; pinned at numbers version {version}", flush=True)
    with open(MANIFEST, "w", encoding="utf-8") as fh:  # after each case: a long run may stop
      json.dump(dict(sorted(manifest.items())), fh, indent=1)
      fh.write("\n")
  print(f"wrote {GOLDEN}/<case>/ and manifest.json ({commit or 'not a git checkout'}, numbers "
        f"version {version})")


if __name__ == "__main__":
  main()
