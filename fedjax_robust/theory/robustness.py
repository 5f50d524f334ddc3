"""κ measured in a run: the (f, κ)-robustness ratio of the vectors actually submitted each round.

A rule F is (f, κ)-robust if ‖F(x) − x̄_S‖² ≤ κ·(1/|S|) Σ_{i∈S} ‖x_i − x̄_S‖² for every honest set
S of size n − f (Allouah et al., AISTATS 2023, Definition 2). In a run, each round's submitted
vectors (after the attack) and the server's output give the ratio

    r_t(S) = ‖F(x) − x̄_S‖² / ((1/|S|) Σ_{i∈S} ‖x_i − x̄_S‖²)

for the draw's realized S. `training.Simulator` records max_t r_t per evaluation chunk (aux
`kappa_ratio`); `pipeline_kappa` turns the per-draw maxima into κ̂ of the pipeline.

Draws with b ≠ f: the definition quantifies over |S| = n − f only. A draw with b = f measures the
definition's ratio on its S; κ̂ of the pipeline is the maximum over those draws (and rounds), a
lower estimate of the pipeline's κ under the configured attack. A draw with b < f has a larger
honest set: its ratio is reported per draw and separately (`kappa_hat_b_lt_f`) but not mixed into
κ̂. A draw with b > f is outside the guarantee (more Byzantine clients than the rule assumes): its
ratio is reported separately (`kappa_hat_b_gt_f`) and never enters κ̂.
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
  """κ̂ from per-draw ratios `[S]` (each draw's max over rounds) and realized b `[S]`: the max over
  draws with b = f, and, reported apart, over draws with b < f and b > f (see the module
  docstring). NaN where no draw of that kind has a defined ratio."""
  ratios = np.asarray(ratios, np.float64)
  counts = np.asarray(counts)

  def top(sel):
    values = ratios[sel & ~np.isnan(ratios)]
    return float(values.max()) if values.size else float("nan")

  return {"kappa_hat": top(counts == f), "draws_b_eq_f": int(np.sum(counts == f)),
          "kappa_hat_b_lt_f": top(counts < f), "kappa_hat_b_gt_f": top(counts > f)}
