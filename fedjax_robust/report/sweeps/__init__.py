"""Each sweep config's own analysis, run by `launch/sweep.py` after the generic tables and plots:
`configs/sweep_<name>.py` (data: get_config(), points()) has its report in `<name>.py` here, a
function report(config, rows, workdir, ids, log) -> the paths it wrote. A report reads its
config's module for the constants it needs (the config is the data the report reads)."""

import importlib
from typing import Callable

# The sweep configs with a report of their own: configs/sweep_<name>.py -> sweeps/<name>.py.
NAMES = ("deployed", "dp_compression", "dp_dimension", "mu_aware", "privacy", "rfa")
# Study configs (issue 29) that are a sweep config's points on another grid: their report.
STUDIES = {"study_mu_aware": "mu_aware"}


def for_config(module_name: str) -> Callable | None:
  """The report of the sweep config imported as `module_name` ('configs.sweep_mu_aware' ->
  `sweeps.mu_aware.report`; a study of `STUDIES` gets its sweep's); None for a config without
  one (or a config file loaded from outside configs/)."""
  package, _, name = module_name.rpartition(".")
  sweep_name = STUDIES.get(name) or name.removeprefix("sweep_")
  if package != "configs" or sweep_name == name or sweep_name not in NAMES:
    return None
  return importlib.import_module(f"{__name__}.{sweep_name}").report
