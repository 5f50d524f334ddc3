"""Runs a resumable Monte Carlo sweep: every point of a sweep config, one vmapped batch of S
draws each, appending to --workdir/results.csv; rerun with the same --workdir to resume.

  python launch/sweep.py --config=configs/sweep_core.py --workdir=runs/sweep_core
  python launch/sweep.py --config=configs/sweep_core.py --config.base.num_samples=16

A sweep config file defines get_config() (a ConfigDict with `base`, the experiment config every
point starts from, and `plot`, the tags to plot) and points(config) (a list of sweep.Point).
"""

import importlib.util
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from fedjax_robust import sweep  # pylint: disable=g-import-not-at-top,wrong-import-position

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(ROOT, "configs", "sweep_core.py"), "Sweep configuration file.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/sweep_core", "Where results are written.")


def _points_function(path: str):
  spec = importlib.util.spec_from_file_location("sweep_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "points"):
    raise ValueError(f"sweep config {path} must define points(config).")
  return module.points


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  points = _points_function(config_flags.get_config_filename(flags.FLAGS["config"]))(config)
  rows = sweep.run(config.base, points, _WORKDIR.value, log=lambda m: print(m, flush=True))
  print()
  print(sweep.table(rows, config.plot.metric))
  paths = sweep.plot(rows, _WORKDIR.value, x=config.plot.x, series=config.plot.series,
                     style=config.plot.style, metric=config.plot.metric)
  print(f"\nwrote {os.path.join(_WORKDIR.value, 'results.csv')}" +
        "".join(f", {os.path.basename(p)}" for p in paths))


if __name__ == "__main__":
  app.run(main)
