"""Runs one expected-robustness experiment: S draws of μ_H × each configured aggregator.

  python launch/train.py                                   # configs/default.py, offline digits
  python launch/train.py --config=configs/default.py --config.aggregator=trimmed_mean \
      --config.num_samples=512 --workdir=runs/tm

Prints progress while it runs, then a table of final-round estimates over samples, and writes
summary.json, metrics.csv, honest_accuracy.png and the per-sample arrays (runs/*.npz, which a
rerun with the same configuration reuses) into --workdir.
"""

import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fedjax_robust import experiment  # pylint: disable=g-import-not-at-top,wrong-import-position
from fedjax_robust import results  # pylint: disable=g-import-not-at-top,wrong-import-position

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "..", "configs", "default.py"),
    "Experiment configuration file (a get_config() returning a ConfigDict).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Where results are written.")


def _progress(spec: str, done: int, total: int, elapsed: float, eta: float) -> None:
  print(f"  {spec}: round {done}/{total}  elapsed {elapsed:6.1f} s  ETA {eta:6.1f} s", flush=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  exp = experiment.run(_CONFIG.value, workdir=_WORKDIR.value, progress=_progress,
                       log=lambda msg: print(msg, flush=True))
  summary = results.write_all(exp, _WORKDIR.value)
  print()
  print(results.format_table(summary))
  print(f"\nwrote {os.path.join(_WORKDIR.value, 'summary.json')}, metrics.csv, "
        f"honest_accuracy.png")


if __name__ == "__main__":
  app.run(main)
