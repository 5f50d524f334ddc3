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

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "default.py")
_CONFIG = errors.define_config_flag(
    _DEFAULT_CONFIG,
    "Experiment configuration file (a get_config() returning a ConfigDict).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Where results are written.")
_RECOMPUTE = flags.DEFINE_bool(
    "recompute", False, "Ignore the cached runs in --workdir/runs and train everything again "
    "(cached runs made by other code or another JAX/backend are recomputed anyway).")
_START = sharding.define_flags()


def _progress(p: dict) -> None:
  """One line per evaluation step: the share of the job's trainings done (every aggregator's,
  then the honest-only baseline's), and the ETA of the trainings left, which a step that
  compiled cannot give; after the last step, what the job still does."""
  eta = ("after the next step (this one compiled)" if p["eta"] is None
         else experiment.human_seconds(p["eta"]))
  print(f"  [{100 * p['fraction']:5.1f}% of the training] {p['spec']}: chunk {p['chunk']}/"
        f"{p['num_chunks']}, round {p['round']}/{p['num_rounds']}  elapsed "
        f"{experiment.human_seconds(p['elapsed'])}  ETA {eta}", flush=True)
  if p["after"] is not None:
    print("  training done; next: " + ", ".join(p["after"] + ("writing the tables and files",))
          + " (not in the ETA)", flush=True)


def main(_):  # errors.run_main refuses positional arguments
  workdir = _WORKDIR.value
  _START(_CONFIG.value.mesh)
  writer = sharding.is_writer()  # multi-host: process 0 prints and writes
  try:
    exp = experiment.run(_CONFIG.value, workdir=workdir,
                         progress=_progress if writer else None, recompute=_RECOMPUTE.value,
                         log=(lambda msg: print(msg, flush=True)) if writer else (lambda _: None))
  except KeyboardInterrupt:
    saved = sorted(os.listdir(os.path.join(workdir, "runs"))) if os.path.isdir(
        os.path.join(workdir, "runs")) else []
    print(f"\ninterrupted: {len(saved)} finished aggregator run(s) saved in "
          f"{os.path.join(workdir, 'runs')}; rerun the same command to resume from them.",
          file=sys.stderr)
    sys.exit(130)
  if not writer:
    return
  summary = results.write_all(exp, workdir)
  command = html.rerun_command(sys.argv, default_config=_DEFAULT_CONFIG, workdir=workdir,
                               root=os.path.join(os.path.dirname(__file__), ".."))
  report = html.write_run_report(exp, summary, workdir, command)
  print()
  print(results.format_table(summary))
  print(f"\nwrote {os.path.join(workdir, 'summary.json')}, metrics.csv, draws.csv, "
        f"timings.json, honest_accuracy.png, {os.path.basename(report)}\nreport: {report} "
        "(open it in a browser)")


if __name__ == "__main__":
  errors.run_main(main, _DEFAULT_CONFIG)
