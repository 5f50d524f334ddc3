"""An experiment's per-round metrics as TensorBoard scalars (`--config.report.tensorboard=True`).

One run directory per aggregator spec under `logdir` (`<logdir>/<spec>`), and one per honest-only
baseline the experiment has (`results.baselines`: `honest_only`, or `<spec>.honest_only` when each
rule has its own draws), so TensorBoard overlays the rules on one chart per tag. For every metric
the run recorded (honest_loss, honest_accuracy, test_loss, test_accuracy, backdoor_accuracy, the
hold-out metrics, ... ; not `diverged`) and every evaluation round t of `run.rounds`
(global_step = t), over the draws s that did not diverge by round t (`results.diverged_draws`) and
whose value is defined (not NaN: e.g. an empty honest set S):

    <metric>/mean = mean_s x_{t,s}
    <metric>/q05, /q50, /q95 = the 5, 50, 95 % quantiles of {x_{t,s}}
                                          (evaluation.summarize, as metrics.csv: method
                                          "inverted_cdf", sample values)

and `draws/not_diverged` = the number of draws not diverged at t. A metric with no defined draw at
a round writes nothing there. Unlike metrics.csv, where a diverged draw's honest loss counts as
+inf (the mean is then +inf), the scalars here are over the draws that did not diverge: the
`draws/not_diverged` chart says how many those are.

Written through tensorboardX's `SummaryWriter` (the optional extra `pip install -e
'.[tensorboard]'`, never a core dependency), imported lazily: `require` is called by the launcher
before any work, so a missing package is refused up front (ConfigError). Writing again to the same
`logdir` replaces the event files of the run directories written (TensorBoard would otherwise show
every point twice).
"""

from __future__ import annotations

import glob
import os
import warnings

import numpy as np

from fedjax_robust import evaluation
from fedjax_robust import results
from fedjax_robust.errors import ConfigError
from fedjax_robust.experiment import Experiment
from fedjax_robust.run_cache import AggregatorRun

QUANTILES = (0.05, 0.50, 0.95)
NOT_DIVERGED_TAG = "draws/not_diverged"
_EVENTS = "events.out.tfevents.*"


def require():
  """tensorboardX's `SummaryWriter`; ConfigError with the install command when it is missing."""
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ConfigError("report.tensorboard=True needs tensorboardX: "
                      "pip install -e '.[tensorboard]'") from e
  return SummaryWriter


def run_dir_name(name: str) -> str:
  """A spec or baseline name as one directory name (a path separator would nest it)."""
  for sep in {os.sep, os.altsep or os.sep, "/"}:
    name = name.replace(sep, "_")
  return name


def scalars(run: AggregatorRun) -> list[tuple[str, int, float]]:
  """(tag, round, value) for every scalar of one run (the module docstring's formulas), in
  round order then tag order."""
  diverged = results.diverged_draws(run)
  metrics = {k: np.where(diverged, np.nan, np.asarray(v, np.float64))
             for k, v in results.defined_metrics(run).items() if k != "diverged"}
  out = []
  for e, rnd in enumerate(np.asarray(run.rounds)):
    step = int(rnd)
    out.append((NOT_DIVERGED_TAG, step, float(np.sum(~diverged[e]))))
    for metric in sorted(metrics):
      with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a mean of +inf and -inf losses: NaN
        stats = evaluation.summarize(metrics[metric][e], quantiles=QUANTILES)
      if not stats["count"]:
        continue
      out += [(f"{metric}/{name}", step, stats[name])
              for name in ("mean", *(f"q{round(100 * q):02d}" for q in QUANTILES))]
  return out


def write(exp: Experiment, logdir: str) -> list[str]:
  """Writes every aggregator's and baseline's scalars (`scalars`) to `<logdir>/<name>/`; returns
  the event files written, one per run directory."""
  summary_writer = require()
  runs = list(exp.runs.items()) + results.baselines(exp)
  written = []
  for name, run in runs:
    run_dir = os.path.join(logdir, run_dir_name(name))
    for old in glob.glob(os.path.join(glob.escape(run_dir), _EVENTS)):
      os.remove(old)
    writer = summary_writer(logdir=run_dir)
    try:
      for tag, step, value in scalars(run):
        writer.add_scalar(tag, value, global_step=step)
    finally:
      writer.close()
    written += sorted(glob.glob(os.path.join(glob.escape(run_dir), _EVENTS)))
  return written
