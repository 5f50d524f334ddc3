"""Does the cost of privacy plus robustness grow with the model dimension d, and does
compression bend the curve? (issue 18; Guerraoui et al., PODC 2021; Zhu et al. 2023)

Guerraoui, Gupta, Pinot, Rouault and Stephan showed that with DP-SGD noise at the workers the
robust rules' error grows with d (their condition asks for a batch size ∝ √d). The remedy under
study is to lower the dimension the noise and the rule live in: shared random-k, where every
client privatizes and sends the same k = ⌈ratio·d⌉ coordinates and the rule aggregates in k
dimensions. With k = ⌈ratio·d⌉ the noise still lives in a dimension ∝ d, so only the constant
can move; the line with a fixed k (`K_FIXED` = 64 shared coordinates whatever d) is the one
where it may bend: the decoded update is (d/k)·(clipped k-coordinate gradient +
N(0, σ²C²I_k)/B), whose signal to noise ratio per round, B/(σ√k), no longer depends on d; the
price is the sparsifier's own variance (each coordinate is sent once every d/k rounds on
average).

Two tasks, d from 10² to 10⁵, at a fixed ε (DP-SGD, δ = 1e-5, the client with the fewest
examples), under ALIE (z = 3), n = 25, Bernoulli(p = 0.15), declared f = 5:
  - synthetic: least squares on the synthetic regression task, d = dim + 1 ∈ {10², 10³, 10⁴, 10⁵},
    without covariate shift (β = 0: inputs x ~ N(0, diag(j^-1.2)), so ‖x‖ and the targets keep
    their scale as d grows; with β = 1 the inputs' means grow ‖x‖² ∝ d and client lr 0.5
    diverged already without privacy) and without concept shift (α = 0: with α = 1 each
    client's own model differs from the global one in every coordinate, and at d = 1000 the
    control without privacy or attack ended at L_S = 3.40 from 3.58 at θ = 0, so the error
    measured no learning), client lr 0.2; the clients differ by their samples only;
  - digits: an MLP with one hidden layer of width w ∈ {4, 13, 40, 133}, d = 75w + 10 (310, 985,
    3,010, 9,985); w = 1 (d = 85) learned nothing even without privacy (89% error);
    w = 1333 (d = 99,985) is left out of the default grid: DP-SGD's per-example gradients
    `[n, m_max, d]` make each of its points take tens of minutes on 2 CPU cores
    (`--config.grid.digits_widths=4,13,40,133,1333` on an accelerator).
Rules: mean, trimmed mean, geometric median, NNM + trimmed mean; each with privacy and no
compression, with privacy and shared random-k at k = ⌈ratio·d⌉ and at k = 64 (both aggregated
in k dimensions), and without privacy or compression (the control: what the model and the
attack cost at that d).

  python launch/sweep.py --config=configs/sweep_dp_dimension.py --workdir=runs/dp_dimension

The report (`fedjax_robust/report/sweeps/dp_dimension.py`) writes dp_dimension.csv and
dp_error_vs_dimension.png: the honest error against d (log scale) per rule, a panel per task: the
honest loss L_S (synthetic) and the honest held-out error 1 − accuracy (digits), mean and 95% CI
over the draws.
"""

import ml_collections

from configs import default
from fedjax_robust import domains as D
from fedjax_robust.sweep import Point
from fedjax_robust.sweep import as_list

SYNTHETIC_D = (100, 1000, 10000, 100000)
DIGITS_WIDTHS = (4, 13, 40, 133)
RULES = ("mean", "trimmed_mean", "geometric_median", "nnm+trimmed_mean")
K_FIXED = 64  # shared coordinates of the fixed-k line (every d of the grid is at least 100)
SETTINGS = {  # privacy and compression of each line
    "dp": {"privacy.kind": "example", "compression.kind": "none"},
    "dp+shared_random_k": {"privacy.kind": "example", "compression.kind": "shared_random_k",
                           "compression.aggregate_in": "k"},
    "dp+shared_random_k_fixed": {"privacy.kind": "example", "compression.kind": "shared_random_k",
                                 "compression.k": K_FIXED, "compression.aggregate_in": "k"},
    "no_dp": {"privacy.kind": "none", "compression.kind": "none"},
}
METRICS = {"synthetic": "honest_loss", "digits": "honest_holdout_accuracy"}


def get_config():
  base = default.get_config()
  base.num_samples = 8
  # One device: DP-SGD's per-example gradients [n, m_max, d] take ≈ 1.2 GB per draw at
  # d = 10⁵ on digits, and a two-device mesh would run at least 16 draws at once.
  base.mesh = ""
  base.training.num_rounds = 100
  base.training.eval_every = 20
  base.training.batch_size = 32
  base.estimators.honest_optimum = False
  base.theory.enabled = False
  base.privacy.target_epsilon = 8.0
  base.privacy.clip = 1.0
  base.compression.ratio = 0.1
  base.data.synthetic_examples_per_client = 64
  c = ml_collections.ConfigDict()
  c.base = base
  c.grid = ml_collections.ConfigDict({
      "tasks": ("digits", "synthetic"), "synthetic_d": SYNTHETIC_D,
      "digits_widths": DIGITS_WIDTHS, "rules": RULES, "settings": tuple(SETTINGS)})
  # The generic plots: a panel per rule, a line per task and setting (`line`); the report's
  # dp_error_vs_dimension.png is the one to read (log d, each task's own error).
  c.plot = ml_collections.ConfigDict({"x": "d", "series": "rule", "style": "line",
                                      "metric": "honest_loss", "series_keys": ("aggregator",)})
  return c


def _task(task: str, size: int) -> tuple[int, dict]:
  """(d, overrides) of one task at one size."""
  if task == "synthetic":
    return size, {"data.name": "synthetic", "data.synthetic_task": "regression",
                  "model": "linear_regression", "data.synthetic_beta": 0.0,
                  "data.synthetic_alpha": 0.0,
                  "training.client_lr": 0.2,
                  "data.synthetic_dim": size - 1, "data.holdout_fraction": 0.0}
  return 75 * size + 10, {"data.name": "digits", "model": "mlp",
                          "model_options.mlp.hidden": (size,)}


def points(c):
  out = []
  tasks, settings = as_list(c.grid.tasks, str), as_list(c.grid.settings, str)
  for task in tasks:
    D.Choice(*METRICS).check("grid.tasks", task)
  for setting in settings:
    D.Choice(*SETTINGS).check("grid.settings", setting)
  for task in tasks:
    sizes = as_list(c.grid.synthetic_d if task == "synthetic" else c.grid.digits_widths, int)
    for size in sizes:
      d, overrides = _task(task, size)
      for setting in settings:
        for rule in as_list(c.grid.rules, str):
          out.append(Point({"task": task, "d": d, "setting": setting, "rule": rule,
                            "line": f"{task}:{setting}"},
                           {**overrides, **SETTINGS[setting], "aggregator": rule}))
  return out


def plot_note(c) -> str:
  return (f"ALIE z = {c.base.attack_options.alie.z}, n = {c.base.num_clients}, f = {c.base.f}; "
          f"DP-SGD ε = {c.base.privacy.target_epsilon:g}, B = {c.base.training.batch_size}, "
          f"C = {c.base.privacy.clip:g}; shared random-k k = ⌈{c.base.compression.ratio}·d⌉ "
          f"or {K_FIXED}.")
