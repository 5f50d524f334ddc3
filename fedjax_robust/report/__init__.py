"""The report layer: turns a run's or a sweep's records into text, CSV files and figures, and
never trains. `sweeps/` holds each sweep config's own analysis, named by the config
(`configs/sweep_<name>.py` -> `report/sweeps/<name>.py`)."""
