"""FLTrust (Cao, Fang, Liu, Gong, "FLTrust: Byzantine-robust federated learning via trust
bootstrapping", NDSS 2021): the server's own update g₀, from a small clean root data set, scores
every client by direction and fixes every client's magnitude.

g₀ comes from elsewhere (the simulator trains the current model on the root data set each round
and passes it as `server_update`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fedjax_robust.aggregators import base
from fedjax_robust.aggregators.clustering import Filtered


def fltrust_with_share(updates: jax.Array, *, server_update: jax.Array) -> Filtered:
  """`fltrust` and the share of rows with a positive trust score (`Filtered.kept_share`).
  Secure aggregation: no (see `fltrust`)."""
  n, d = base.check_updates(updates, "fltrust")
  if server_update.shape != (d,):
    raise ValueError(f"fltrust: server_update must have shape ({d},), got {server_update.shape}.")
  g0 = server_update.astype(updates.dtype)
  g0_finite = jnp.all(jnp.isfinite(g0))
  g0 = jnp.where(g0_finite, g0, jnp.zeros_like(g0))
  g0_scale = base.power_of_two_scale(jnp.max(jnp.abs(g0)), g0.dtype)
  g0_scaled = g0 * g0_scale                      # direction of g₀, without overflow
  g0_scaled_norm = jnp.linalg.norm(g0_scaled)
  g0_norm = g0_scaled_norm / g0_scale            # ‖g₀‖

  # g₀'s terms go through `ordinary_or_exact` as operands, not closures: under vmap they are
  # batched (one server update per draw), which `uniform_cond`'s branches must be told.
  def aggregate(y, finite, g0_scaled, g0_scaled_norm, g0_norm, g0_finite):
    """y_i = s_i x_i (s_i a power of two, 1 for ordinary rows), zero where not finite."""
    ynorm = jnp.sqrt(base.row_squared_norms(y))
    denominator = ynorm * g0_scaled_norm
    cosine = (y @ g0_scaled) / jnp.where(denominator > 0, denominator, 1.0)
    trust = jnp.where(finite & (denominator > 0) & g0_finite, jnp.maximum(cosine, 0.0), 0.0)
    total = jnp.sum(trust)
    # TS_i · x_i ‖g₀‖/‖x_i‖ = TS_i · y_i ‖g₀‖/‖y_i‖.
    weights = trust * (g0_norm / jnp.where(ynorm > 0, ynorm, 1.0))
    value = (weights @ y) / jnp.where(total > 0, total, 1.0)
    return Filtered(jnp.where(total > 0, value, jnp.zeros_like(value)),
                    jnp.mean((trust > 0).astype(jnp.float32)))

  def fast(x, sq, *g):
    return aggregate(x, jnp.ones((n,), bool), *g)

  def exact(x, *g):
    finite = base.finite_rows(x)
    x = base.zero_nonfinite_rows(x, finite)
    scale = base.power_of_two_scale(jnp.max(jnp.abs(x), axis=1), x.dtype)
    return aggregate(x * scale[:, None], finite, *g)

  return base.ordinary_or_exact(updates, fast, exact, g0_scaled, g0_scaled_norm, g0_norm,
                                g0_finite)


def fltrust(updates: jax.Array, *, server_update: jax.Array) -> jax.Array:
  """FLTrust: with g₀ = `server_update` `[d]`,

    TS_i = ReLU(cos(x_i, g₀)),   x̃_i = x_i · ‖g₀‖/‖x_i‖,   output = Σ_i TS_i x̃_i / Σ_i TS_i.

  Σ TS_i = 0 (no client points within 90° of g₀): the zero vector, as in the MXNet `fltrust`
  circulated with the paper (weights TS_i/(Σ TS + 1e-9), so every weight is 0); that code also
  adds 1e-9 to every norm, which this exact formula leaves out.
  A zero row (or a zero g₀) has no direction: trust 0, as torch's `cosine_similarity` (with its
  eps) gives. Non-finite rows: trust 0, never averaged (they are zeroed first, so 0·inf never
  occurs). A non-finite g₀: every trust is 0, the output is 0. Huge rows: norms and cosines are
  computed on rows scaled by an exact power of two, so nothing overflows and each x̃_i has norm
  ‖g₀‖ exactly (‖g₀‖ itself must be within the float range).
  Cost: one matrix-vector product for the cosines and one for the weighted sum.

  Secure aggregation: no, as counted here (`registry.SECURE_AVERAGES`): the server compares
  each row with its own update g₀ (a cosine and a norm per row). Clients given g₀ could compute
  their own weights and send one secure average of Σ TS_i x̃_i and Σ TS_i, but that reveals g₀,
  the update of the server's private root data, to them; that variant is not counted.
  """
  return fltrust_with_share(updates, server_update=server_update).value
