"""Privacy × compression × robust rule on digits under ALIE (issue 18's table).

The default job's setting (digits, Dirichlet α = 1, n = 25, Bernoulli(p = 0.15), declared f = 5,
ALIE z = 3, 200 rounds), 64 draws, on the same draws in every cell:

  - privacy: none, or DP-SGD (example-level, `privacy.kind = "example"`: Poisson-sampled
    minibatches of expected size B = 32, per-example clipping to C = 1, Gaussian noise) with σ
    calibrated to ε = 8 or ε = 1 at δ = 1e-5 for the client with the fewest examples;
  - compression: none, top-k, or shared random-k, both at k = ⌈0.1·d⌉ (with shared random-k
    DP-SGD noises the k sent coordinates only);
  - rule: trimmed mean, NNM + trimmed mean.

  python launch/sweep.py --config=configs/sweep_dp_compression.py --workdir=runs/dp_compression

The report (`fedjax_robust/report/sweeps/dp_compression.py`) prints the honest held-out accuracy
(mean, 95% CI) per cell with the ε reached and the bits per round, and writes dp_compression.csv.
"""

import ml_collections

from configs import default
from fedjax_robust import domains as D
from fedjax_robust.sweep import Point
from fedjax_robust.sweep import as_list

PRIVACY = {"none": {"privacy.kind": "none"},
           "eps8": {"privacy.kind": "example", "privacy.target_epsilon": 8.0},
           "eps1": {"privacy.kind": "example", "privacy.target_epsilon": 1.0}}
COMPRESSION = {"none": {"compression.kind": "none"},
               "top_k": {"compression.kind": "top_k"},
               "shared_random_k": {"compression.kind": "shared_random_k"}}
RULES = ("trimmed_mean", "nnm+trimmed_mean")


def get_config():
  base = default.get_config()
  base.num_samples = 64
  base.aggregator = RULES[0]
  base.estimators.honest_optimum = False
  base.theory.enabled = False
  base.privacy.clip = 1.0
  base.compression.ratio = 0.1
  c = ml_collections.ConfigDict()
  c.base = base
  c.grid = ml_collections.ConfigDict({"privacy": tuple(PRIVACY),
                                      "compression": tuple(COMPRESSION), "rules": RULES})
  c.plot = ml_collections.ConfigDict({"x": "privacy", "series": "rule", "style": "compression",
                                      "metric": "honest_holdout_accuracy",
                                      "series_keys": ("aggregator",)})
  return c


def points(c):
  privacy, compression = as_list(c.grid.privacy, str), as_list(c.grid.compression, str)
  for p in privacy:
    D.Choice(*PRIVACY).check("grid.privacy", p)
  for k in compression:
    D.Choice(*COMPRESSION).check("grid.compression", k)
  return [Point({"privacy": p, "compression": k, "rule": r},
                {**PRIVACY[p], **COMPRESSION[k], "aggregator": r})
          for p in privacy for k in compression for r in as_list(c.grid.rules, str)]


def plot_note(c) -> str:
  return (f"digits, n = {c.base.num_clients}, Bernoulli(p = "
          f"{c.base.honest_set_options.bernoulli.p}), f = {c.base.f}, ALIE z = "
          f"{c.base.attack_options.alie.z}; DP-SGD B = {c.base.training.batch_size}, "
          f"C = {c.base.privacy.clip}; k = ⌈{c.base.compression.ratio}·d⌉.")
