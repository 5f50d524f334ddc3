"""Runs one expected-robustness experiment: S draws of μ_H × each configured aggregator.

  python launch/train.py                                   # configs/default.py, offline digits
  python launch/train.py --config=configs/default.py --config.aggregator=trimmed_mean \
      --config.num_samples=512 --workdir=runs/tm

Prints progress while it runs, then a table of final-round estimates over samples, and writes
summary.json, metrics.csv, honest_accuracy.png, report.html (everything in one page a browser
opens offline: fedjax_robust/report/html.py) and the per-sample arrays (runs/*.npz, which a
rerun with the same configuration and code reuses; --recompute ignores them) into --workdir.
A job whose training is not robust D-GD (the default: minibatches, worker momentum) prints one
line on the theory instead of the bounds, pointing to launch/sweep.py with
configs/theory_synthetic.py or configs/theory_digits.py, which run D-GD with the theory on.
On a terminal the progress is a live bar with the whole job's ETA (plain lines in logs and CI).
--config.checkpoint.every_rounds=K saves each aggregator's run every K rounds
(workdir/checkpoints), so a killed run resumes mid-aggregator, bit-identically;
--config.report.tensorboard=True also writes per-round scalars to workdir/tensorboard (the
optional extra: pip install -e '.[tensorboard]').
"""

import os
import sys

from absl import flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fedjax_robust import errors  # pylint: disable=g-import-not-at-top,wrong-import-position
from fedjax_robust import experiment  # pylint: disable=g-import-not-at-top,wrong-import-position
from fedjax_robust import results  # pylint: disable=g-import-not-at-top,wrong-import-position
from fedjax_robust import sharding  # pylint: disable=g-import-not-at-top,wrong-import-position
from fedjax_robust.report import html  # pylint: disable=g-import-not-at-top,wrong-import-position
# pylint: disable=g-import-not-at-top,wrong-import-position
from fedjax_robust.report import progress as progress_lib
from fedjax_robust.report import tensorboard
# pylint: enable=g-import-not-at-top,wrong-import-position

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "default.py")
_CONFIG = errors.define_config_flag(
    _DEFAULT_CONFIG,
    "Experiment configuration file (a get_config() returning a ConfigDict).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Where results are written.")
_RECOMPUTE = flags.DEFINE_bool(
    "recompute", False, "Ignore the cached runs in --workdir/runs and train everything again "
    "(cached runs made by other code or another JAX/backend are recomputed anyway).")
_START = sharding.define_flags()


def main(_):  # errors.run_main refuses positional arguments
  workdir = _WORKDIR.value
  config = _CONFIG.value
  if config.report.tensorboard:
    tensorboard.require()  # the optional extra, refused before any work
  _START(config.mesh)
  writer = sharding.is_writer()  # multi-host: process 0 prints and writes
  # On a terminal a live bar with the whole job's ETA; in logs and CI one plain line per step.
  terminal = progress_lib.Terminal() if writer else None
  try:
    try:
      exp = experiment.run(config, workdir=workdir,
                           progress=terminal.update if writer else None,
                           recompute=_RECOMPUTE.value,
                           log=terminal.log if writer else (lambda _: None))
    finally:
      if terminal is not None:
        terminal.close()  # before any message below
  except KeyboardInterrupt:
    runs, stores = (os.path.join(workdir, d) for d in ("runs", "checkpoints"))
    saved = [f for f in os.listdir(runs) if f.endswith(".npz")] if os.path.isdir(runs) else []
    started = sorted(os.listdir(stores)) if os.path.isdir(stores) else []
    print(f"\ninterrupted: {len(saved)} finished aggregator run(s) saved in {runs}"
          + (f", and checkpoints of {', '.join(started)} in {stores}" if started else "")
          + "; rerun the same command to resume from them.", file=sys.stderr)
    sys.exit(130)
  if not writer:
    return
  summary = results.write_all(exp, workdir)
  command = html.rerun_command(sys.argv, default_config=_DEFAULT_CONFIG, workdir=workdir,
                               root=os.path.join(os.path.dirname(__file__), ".."))
  report = html.write_run_report(exp, summary, workdir, command)
  if config.report.tensorboard:
    logdir = os.path.join(workdir, "tensorboard")
    tensorboard.write(exp, logdir)
  print()
  print(results.format_table(summary))
  print(f"\nwrote {os.path.join(workdir, 'summary.json')}, metrics.csv, draws.csv, "
        f"timings.json, honest_accuracy.png, {os.path.basename(report)}\nreport: {report} "
        "(open it in a browser)"
        + (f"\ntensorboard: tensorboard --logdir {logdir}" if config.report.tensorboard else ""))


if __name__ == "__main__":
  errors.run_main(main, _DEFAULT_CONFIG)
