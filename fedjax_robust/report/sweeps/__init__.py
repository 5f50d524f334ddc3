"""Each sweep config's own analysis, run by `launch/sweep.py` after the generic tables and plots:
`configs/sweep_<name>.py` (data: get_config(), points()) has its report in `<name>.py` here, a
function report(config, rows, workdir, ids, log) -> the paths it wrote; a config of another
name has its report through `REPORTS`. A report reads its config's module for the constants it
needs (the config is the data the report reads)."""

import importlib
from typing import Callable

# The reports here: configs/sweep_<name>.py -> sweeps/<name>.py (and REPORTS' configs).
NAMES = ("backdoors", "deployed", "dp_compression", "dp_dimension", "mu_aware", "privacy", "rfa")
# Configs of configs/ not named sweep_<name> that have a report here: study configs (issue 29)
# that are a sweep config's points on another grid get their sweep's; the backdoor benchmark's
# sweep (issue 32) its own.
REPORTS = {"study_mu_aware": "mu_aware", "backdoors": "backdoors"}


def for_config(module_name: str) -> Callable | None:
  """The report of the sweep config imported as `module_name` ('configs.sweep_mu_aware' ->
  `sweeps.mu_aware.report`; a config of `REPORTS` gets the report it names there); None for a
  config without one (or a config file loaded from outside configs/)."""
  package, _, name = module_name.rpartition(".")
  if package != "configs":
    return None
  if name in REPORTS:
    report_name = REPORTS[name]
  elif name.startswith("sweep_"):
    report_name = name.removeprefix("sweep_")
  else:
    return None
  if report_name not in NAMES:
    return None
  return importlib.import_module(f"{__name__}.{report_name}").report
