"""Aggregator throughput: median time per rule over a grid of (n, d), compile time apart, and
the input read rate against this machine's measured memory bandwidth.

  python launch/bench.py --workdir=runs/bench
  python launch/bench.py --config.rules=trimmed_mean,krum --config.grid='((100,100000),)'

Prints a table and writes bench.csv into --workdir.
"""

import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fedjax_robust import benchmark  # pylint: disable=g-import-not-at-top,wrong-import-position

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "..", "configs", "bench.py"),
    "Benchmark configuration.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/bench", "Where bench.csv is written.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  c = _CONFIG.value
  specs = [s.strip() for s in c.rules.split(",") if s.strip()]
  _, rows = benchmark.run_grid(specs, [tuple(p) for p in c.grid], f_fraction=c.f_fraction,
                               batch=c.batch, repeats=c.repeats, max_elements=c.max_elements,
                               log=lambda m: print(m, flush=True))
  print()
  print(benchmark.format_table(rows))
  os.makedirs(_WORKDIR.value, exist_ok=True)
  benchmark.write_csv(rows, os.path.join(_WORKDIR.value, "bench.csv"))
  print(f"\nwrote {os.path.join(_WORKDIR.value, 'bench.csv')}")


if __name__ == "__main__":
  app.run(main)
