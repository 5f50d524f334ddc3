"""(f, κ)-robustness: the empirical coefficient κ̂ of a rule and the published bounds on κ.

A rule F is (f, κ)-robust if for every honest set S of n − f inputs
    ‖F(x_1..x_n) − x̄_S‖² ≤ κ · (1/|S|) Σ_{i∈S} ‖x_i − x̄_S‖²
(Allouah, Farhadkhani, Guerraoui, Gupta, Pinot, Stephan, AISTATS 2023). κ ≥ f/(n − 2f) for any
rule; `kappa_upper_bound` gives the bound proven for a rule, `empirical_kappa` a lower estimate of
its κ on given honest vectors: the worst ratio over a set of attacks.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_robust.aggregators import base
from fedjax_robust.aggregators import registry


def kappa_lower_bound(n: int, f: int) -> float:
  """No rule is (f, κ)-robust with κ < f/(n − 2f)."""
  return f / (n - 2 * f)


def kappa_upper_bound(spec: str, n: int, f: int) -> float | None:
  """The published κ of a rule, with r = f/(n − 2f): trimmed mean 6r(1 + r), coordinate median
  and geometric median 4(1 + r)², Krum and Multi-Krum 6(1 + r) (Allouah et al. 2023, Table 1),
  and NNM before a rule F: (8f/(n − f))(κ_F + 1) (their Lemma 2). None where no bound is
  recorded here."""
  stages = registry.split_spec(spec)
  *pre, rule = stages
  if any(p != "nearest_neighbor_mixing" for p in pre) or len(pre) > 1:
    return None
  r = f / (n - 2 * f)
  bounds = {"trimmed_mean": 6 * r * (1 + r), "coordinate_median": 4 * (1 + r) ** 2,
            "geometric_median": 4 * (1 + r) ** 2, "krum": 6 * (1 + r),
            "multi_krum": 6 * (1 + r), "mean": None}
  kappa = bounds.get(rule)
  if kappa is None or not pre:
    return kappa
  return 8 * f / (n - f) * (kappa + 1)


def empirical_kappa(aggregator: base.Aggregator, honest: jax.Array, f: int,
                    attack_names: Sequence[str] | None = None, *,
                    key: jax.Array | None = None) -> dict[str, float]:
  """κ̂ = max over attacks of ‖F(honest ∪ f Byzantine rows) − x̄_S‖² / var_S on `honest [n − f, d]`.

  Each attack (by name from `fedjax_robust.attacks`, all model-poisoning attacks by default,
  the line-searched `optimal_alie` and `optimal_ipm` included) fills the f Byzantine rows
  knowing the honest ones and, for the adaptive ones, the rule. Returns the ratio per attack and their
  maximum under "kappa" (+inf when an attack makes the output non-finite).
  """
  from fedjax_robust import attacks  # pylint: disable=g-import-not-at-top
  honest = jnp.asarray(honest)
  m, d = honest.shape
  names = list(attack_names or attacks.model_poisoning_names())
  mean = jnp.mean(honest, axis=0)
  variance = float(jnp.mean(jnp.sum((honest - mean) ** 2, axis=1)))
  byzantine = jnp.arange(m + f) >= m
  padded = jnp.concatenate([honest, jnp.zeros((f, d), honest.dtype)])
  key = jax.random.key(0) if key is None else key
  ratios = {}
  for name in names:
    attack = attacks.get(name, num_classes=2)
    if attack.poison is None:
      raise ValueError(f"empirical_kappa needs model-poisoning attacks; {name!r} is not one.")
    poisoned = attack.poison_updates(key, padded, byzantine, lambda u: aggregator(u, key))
    out = aggregator(poisoned, key)
    error = float(jnp.sum((out - mean) ** 2))
    ratios[name] = error / variance if np.isfinite(error) else float("inf")
  return {"kappa": max(ratios.values()), **ratios}
