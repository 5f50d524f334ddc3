"""How much of the robust rules' cost is paid for protection against faults that are actually
accidental? Digits, the default job's population (25 clients, Dirichlet α = 1, each client
faulty independently with p = 0.15, declared f = 5), and every faulty client running one
behaviour: no fault (the faulty clients train honestly), ALIE (z = 3, the default job's attack),
each inadvertent fault of `fedjax_robust.attacks.faults`, the numeric NaN fault, and a mixed population
where most faults are accidental (label noise) and some malicious (ALIE). The same draws of μ_H
for every point; each rule paired with the mean and with the baseline without the faulty
clients (`estimators.honest_optimum`).

  python launch/sweep.py --config=configs/faults.py --workdir=runs/faults

Threats are behaviour specs (`attacks.parse_population`); a subset from the command line:

  python launch/sweep.py --config=configs/faults.py --workdir=runs/faults_small \\
    --config.grid.threats=none,label_noise,dropout --config.base.num_samples=16
"""

import ml_collections

from configs import default
from fedjax_robust.sweep import Point
from fedjax_robust.sweep import as_list
from fedjax_robust.sweep import axis
from fedjax_robust.sweep import product

P = 0.15
THREATS = ("none", "alie", "label_noise", "label_noise_pair", "feature_noise",
           "missing_features", "feature_shift", "biased_data", "stale", "dropout", "crash_stop",
           "nan", "label_noise:0.7,alie:0.3")
# Threat labels that are one behaviour with non-default options.
VARIANTS = {"label_noise_pair": ("label_noise", {"attack_options.label_noise.kind": "pair"})}


def get_config():
  base = default.get_config()
  base.num_samples = 64
  base.training.num_rounds = 100
  base.honest_set_options.bernoulli.p = P
  base.theory.enabled = False
  c = ml_collections.ConfigDict()
  c.base = base
  c.grid = ml_collections.ConfigDict({
      "aggregators": ("mean", "trimmed_mean", "geometric_median", "nnm+trimmed_mean"),
      "threats": THREATS})
  c.plot = ml_collections.ConfigDict({"x": "corruption", "series": "aggregator",
                                      "style": "threat", "metric": "honest_holdout_accuracy"})
  return c


def threat_overrides(threat: str) -> dict:
  name, options = VARIANTS.get(threat, (threat, {}))
  return {"attack": name, **options}


def points(c):
  """aggregator × threat (a behaviour name, a variant of VARIANTS, or a mixture spec)."""
  # Mixture specs hold commas: the threats axis is read whole when it is the config's tuple.
  threats = (list(c.grid.threats) if isinstance(c.grid.threats, (tuple, list))
             and all(isinstance(t, str) for t in c.grid.threats) and len(c.grid.threats) > 1
             else as_list(c.grid.threats, str))
  levels = [Point({"corruption": P, "threat": t}, threat_overrides(t)) for t in threats]
  return product(axis("aggregator", as_list(c.grid.aggregators, str)), levels)


def plot_note(c) -> str:
  return (f"each client faulty independently with p = {P}; declared f = {c.base.f}, "
          f"n = {c.base.num_clients}; threat = what every faulty client does (a mixture: each "
          "faulty client's behaviour drawn once per draw).")
