"""The (f, κ)-robustness ratio of the vectors actually submitted each round: the attack's ratio.

A rule F is (f, κ)-robust if ‖F(x) − x̄_S‖² ≤ κ·(1/|S|) Σ_{i∈S} ‖x_i − x̄_S‖² for every honest set
S of size n − f (Allouah et al., AISTATS 2023, Definition 2). In a run, each round's submitted
vectors (after the attack) and the server's output give the ratio

    r_t(S) = ‖F(x) − x̄_S‖² / ((1/|S|) Σ_{i∈S} ‖x_i − x̄_S‖²)

for the draw's realized S. `training.Simulator` records max_t r_t per evaluation chunk (aux
`kappa_ratio`); `pipeline_kappa` turns the per-draw maxima into the attack's ratio.

The attack's ratio (the maximum over the draws with b = f and their rounds) is a property of the
attack seen on these vectors, not a robustness coefficient: κ of the rule is a supremum over
every input, so κ ≥ the attack's ratio, and κ ≥ f/(n − 2f) for every rule (Allouah et al.,
AISTATS 2023, Proposition 1); the ratio of one attack is often below that lower bound. A bound
built on it must say so (theory.report: the data-dependent κ = max(attack's ratio, f/(n − 2f))).

Draws with b ≠ f: the definition quantifies over |S| = n − f only. A draw with b < f has a larger
honest set: its ratio is reported per draw and separately (`attack_ratio_b_lt_f`) but not mixed
into the attack's ratio. A draw with b > f is outside the guarantee (more Byzantine clients than
the rule assumes): its ratio is reported separately (`attack_ratio_b_gt_f`) and never enters it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def robustness_ratio(updates: jax.Array, aggregate: jax.Array, honest: jax.Array) -> jax.Array:
  """r(S) for one round: submitted `updates [n, d]`, the rule's output `[d]`, `honest [n]`.

  Byzantine rows never enter x̄_S or the variance (they may be NaN or ±inf). +inf when the output
  is non-finite (the rule was poisoned) or when the honest rows are identical and the output
  differs from them; NaN when S is empty or output and honest rows coincide exactly (0/0)."""
  h = honest.astype(updates.dtype)
  m = jnp.sum(h)
  x = jnp.where(honest[:, None], updates, 0.0)
  mean = h @ x / jnp.maximum(m, 1.0)
  variance = h @ jnp.sum((x - mean) ** 2, axis=1) / jnp.maximum(m, 1.0)
  error = jnp.sum((aggregate - mean) ** 2)
  ratio = jnp.where(variance > 0, error / jnp.where(variance > 0, variance, 1.0),
                    jnp.where(error > 0, jnp.inf, jnp.nan))
  ratio = jnp.where(jnp.isfinite(error), ratio, jnp.inf)
  return jnp.where(m > 0, ratio, jnp.nan)


def pipeline_kappa(ratios: np.ndarray, counts: np.ndarray, f: int) -> dict:
  """The attack's ratio from per-draw ratios `[S]` (each draw's max over rounds) and realized b
  `[S]`: the max over draws with b = f, and, reported apart, over draws with b < f and b > f (see
  the module docstring). NaN where no draw of that kind has a defined ratio."""
  ratios = np.asarray(ratios, np.float64)
  counts = np.asarray(counts)

  def top(sel):
    values = ratios[sel & ~np.isnan(ratios)]
    return float(values.max()) if values.size else float("nan")

  return {"attack_ratio": top(counts == f), "draws_b_eq_f": int(np.sum(counts == f)),
          "attack_ratio_b_lt_f": top(counts < f), "attack_ratio_b_gt_f": top(counts > f)}
