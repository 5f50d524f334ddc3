"""Throughput benchmarks.

  python launch/bench.py --workdir=runs/bench                        # everything (configs/bench.py)
  python launch/bench.py --config.mode=aggregators --config.grid='((100,100000),)'
  python launch/bench.py --config.mode=monte_carlo --config.monte_carlo.sample_counts='(1,256)'
  python launch/bench.py --config.mode=scale --config.scale.points='("mlp:32","cnn:32x64")'

Aggregators: median time per rule over a grid of (n, d) with compile time apart, updates/s,
the effective read rate (input bytes × passes / time) against this machine's measured read
bandwidth, and the same inputs through the NumPy references (and ByzFL's rules when the
`byzfl` package is importable): speed-up and max |difference|. Writes bench.csv and
bench_time_vs_d.png.

Monte Carlo: sample-rounds/s and memory of the vmapped training of the default digits job as
S grows (and with `monte_carlo.block_sizes`, the S draws run as a lax.map over blocks of B),
beside the sequential NumPy baseline and, when `byzfl` is importable, ByzFL's own federated loop
(Client/Server/RobustAggregator) on the same job, as a pool of one-thread processes, one per core
(`monte_carlo.byzfl_processes`; column vs_byzfl, over the pool's wall-clock rounds/s);
`monte_carlo.whole_job=True` also times the whole launcher command (launch/train.py, the default
job with the one rule at the largest S, one evaluation, no baseline: start-up, compile and
writing included) beside the kernel's rows; `monte_carlo.meshes` adds the
draws split over devices (e.g. '("","draws=2","draws")' with
XLA_FLAGS=--xla_force_host_platform_device_count=8); `monte_carlo.phases=True` also times local
training, the attack and the rule of one round alone per S. Writes monte_carlo.csv (monte_carlo_phases.csv).
"""

import os
import sys

from absl import flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fedjax_robust import aggregators  # pylint: disable=g-import-not-at-top,wrong-import-position
from fedjax_robust import benchmark  # pylint: disable=g-import-not-at-top,wrong-import-position
from fedjax_robust import config as config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from fedjax_robust import domains as D  # pylint: disable=g-import-not-at-top,wrong-import-position
from fedjax_robust import errors  # pylint: disable=g-import-not-at-top,wrong-import-position
from fedjax_robust import sharding  # pylint: disable=g-import-not-at-top,wrong-import-position

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "bench.py")
_CONFIG = errors.define_config_flag(_DEFAULT_CONFIG, "Benchmark configuration.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/bench", "Where the CSV files and plot go.")

# "scale" runs only when asked (minutes to hours: every point compiled and trained twice).
_MODES = ("aggregators", "monte_carlo", "all", "scale")
# The declared domain of every key of configs/bench.py (aggregator options: the rules' own).
_DOMAINS = {
    "mode": D.Choice(*_MODES),
    "rules": D.Domain("str", note="comma-separated aggregator specs"),
    "grid": D.Tuple(D.Tuple(D.POSITIVE_INT, 2), 1, note="(n, d) pairs"),
    "f_fraction": D.Float(0, 0.5, high_open=True, note="f = max(1, ⌊f_fraction·n⌋)"),
    "batch": D.POSITIVE_INT,
    "repeats": D.POSITIVE_INT,
    "max_elements": D.POSITIVE_INT,
    "reference_max_elements": D.NONNEGATIVE_INT,
    "reference_repeats": D.NONNEGATIVE_INT,
    "monte_carlo.spec": D.Domain("str", note="an aggregator spec"),
    "monte_carlo.sample_counts": D.Tuple(D.POSITIVE_INT, 1, note="values of S"),
    "monte_carlo.num_rounds": D.POSITIVE_INT,
    "monte_carlo.baseline_samples": D.Int(0, note="0: no sequential NumPy baseline"),
    "monte_carlo.block_sizes": D.Tuple(D.NONNEGATIVE_INT, 1, note="0: all S draws at once; B: "
                                       "lax.map over blocks of B draws"),
    "monte_carlo.meshes": D.Tuple(D.Domain("str"), 1, note="config.mesh syntax, '' one device"),
    "monte_carlo.byzfl": D.Bool(),
    "monte_carlo.phases": D.Bool(),
    "monte_carlo.byzfl_processes": D.Int(0, note="0: one per core"),
    "monte_carlo.whole_job": D.Bool(),
    "scale.points": D.Tuple(D.Domain("str"), 1, note="'mlp[:W1xW2]', 'cnn[:C1xC2]', "
                            "'char_transformer[:LAYERSxWIDTH]'"),
    "scale.clients": D.Tuple(D.Int(2), 1, note="values of n (the first: every point)"),
    "scale.samples": D.Tuple(D.POSITIVE_INT, 1, note="values of S (the first: every point)"),
    "scale.num_rounds": D.POSITIVE_INT,
    "scale.spec": D.Domain("str", note="an aggregator spec"),
    "scale.memory_budget_gb": D.POSITIVE,
}


def _check(c) -> None:
  """Every key against its domain, the meshes against the devices and the Monte Carlo job's
  rule and options against the default job, before any timing (a ConfigError names the key)."""
  for dotted, domain in _DOMAINS.items():
    node = c
    for part in dotted.split("."):
      node = node[part]
    domain.check(dotted, node)
  for mesh in c.monte_carlo.meshes:
    try:
      sharding.axis_sizes(mesh)
    except errors.ConfigError as e:
      raise errors.ConfigError(f"monte_carlo.meshes: {e}") from None
  if c.mode == "scale":
    from fedjax_robust import scaling  # pylint: disable=g-import-not-at-top
    for point in c.scale.points:
      scaling.parse_point(point)
    aggregators.get(c.scale.spec, f=1)
  if c.mode in ("monte_carlo", "all"):
    job = config_lib.resolve(_monte_carlo_job(c))
    aggregators.get(c.monte_carlo.spec, f=job.f, options=job.options)


def _monte_carlo_job(c):
  """configs/default.py's job with the options of `monte_carlo.aggregator_options`."""
  from configs import default  # pylint: disable=g-import-not-at-top
  job = default.get_config()
  for rule, options in c.monte_carlo.aggregator_options.items():  # e.g. GM's maxiter
    for key, value in options.items():
      if rule not in job.aggregator_options or key not in job.aggregator_options[rule]:
        raise errors.ConfigError(f"monte_carlo.aggregator_options.{rule}.{key}: no such option "
                                 "of a registered rule.")
      job.aggregator_options[rule][key] = value
  return job


def main(_):  # errors.run_main refuses positional arguments
  c = _CONFIG.value
  _check(c)
  log = lambda m: print(m, flush=True)
  workdir = _WORKDIR.value
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise errors.ConfigError(f"--workdir {workdir!r} cannot be created ({e.strerror or e}); "
                             "choose a writable directory.") from None
  import jax  # pylint: disable=g-import-not-at-top
  log(f"devices: {jax.devices()}")
  if c.mode == "scale":
    from fedjax_robust import scaling  # pylint: disable=g-import-not-at-top
    s = c.scale
    log(f"\nScaling: {s.spec}, {s.num_rounds} round(s), one device, budget "
        f"{s.memory_budget_gb:g} GB")
    rows = scaling.scale(tuple(s.points), tuple(s.clients), tuple(s.samples),
                         rounds=s.num_rounds, spec=s.spec, budget_gb=s.memory_budget_gb, log=log)
    log("\n" + scaling.format_rows(rows))
    benchmark.write_csv(rows, os.path.join(workdir, "scale.csv"))
    log(f"\nwrote {workdir}/scale.csv")
    return
  if c.mode in ("aggregators", "all"):
    specs = [s.strip() for s in c.rules.split(",") if s.strip()]
    _, rows = benchmark.run_grid(
        specs, [tuple(p) for p in c.grid], f_fraction=c.f_fraction, batch=c.batch,
        repeats=c.repeats, max_elements=c.max_elements,
        options=c.aggregator_options.to_dict(),
        reference_max_elements=c.reference_max_elements,
        reference_repeats=c.reference_repeats, log=log)
    log("\n" + benchmark.format_table(rows))
    benchmark.write_csv(rows, os.path.join(workdir, "bench.csv"))
    benchmark.plot_time_vs_d(rows, os.path.join(workdir, "bench_time_vs_d.png"))
    log(f"\nwrote {workdir}/bench.csv, bench_time_vs_d.png")
  if c.mode in ("monte_carlo", "all"):
    m = c.monte_carlo
    job = _monte_carlo_job(c)
    log(f"\nMonte Carlo throughput: default digits job, {m.spec}, {m.num_rounds} rounds"
        + "".join(f", {rule}.{k}={v}" for rule, o in m.aggregator_options.items()
                  for k, v in o.items()))
    rows = benchmark.monte_carlo_throughput(
        job, m.spec, tuple(m.sample_counts), m.num_rounds,
        baseline_samples=m.baseline_samples, block_sizes=tuple(m.block_sizes),
        meshes=tuple(m.meshes), byzfl=m.byzfl, byzfl_processes=m.byzfl_processes or None,
        whole_job=m.whole_job,
        whole_job_overrides=[f"--config.aggregator_options.{rule}.{k}={v}"
                             for rule, o in m.aggregator_options.items() for k, v in o.items()],
        log=log)
    log("\n" + benchmark.format_throughput(rows))
    benchmark.write_csv(rows, os.path.join(workdir, "monte_carlo.csv"))
    log(f"\nwrote {workdir}/monte_carlo.csv")
    if m.phases:
      log(f"\nPhases of one round, each compiled alone ({m.spec}):")
      phases = benchmark.monte_carlo_phases(job, m.spec,
                                            tuple(m.sample_counts), log=log)
      benchmark.write_csv(phases, os.path.join(workdir, "monte_carlo_phases.csv"))
      log(f"wrote {workdir}/monte_carlo_phases.csv")


if __name__ == "__main__":
  errors.run_main(main, _DEFAULT_CONFIG)
