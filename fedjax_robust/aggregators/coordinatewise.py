"""Coordinate-wise rules: each coordinate is aggregated on its own (Yin et al., ICML 2018).

Both rules sort every coordinate over the clients (`order_statistics.sort_clients`). NaN sorts
above +inf (NumPy's order), so a Byzantine row of NaN or ±inf lands at an end of the order, where
these rules drop it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fedjax_robust.aggregators import base
from fedjax_robust.aggregators import order_statistics


def coordinate_median(updates: jax.Array) -> jax.Array:
  """Coordinate-wise median (CWMed); for even n the mean of the two middle values (NumPy's).

  Yin, Chen, Ramchandran, Bartlett, "Byzantine-robust distributed learning: towards optimal
  statistical rates", ICML 2018.

  Non-finite input: exact as long as fewer than n/2 rows are non-finite at a coordinate (the
  middle order statistics are then finite values). Cost: a sort of `[n, d]` along clients.
  """
  n, _ = base.check_updates(updates, "coordinate_median")
  ordered = order_statistics.sort_clients(updates)
  lower, upper = ordered[(n - 1) // 2], ordered[n // 2]
  return lower if n % 2 else 0.5 * (lower + upper)


def trimmed_mean(updates: jax.Array, *, f: int) -> jax.Array:
  """Coordinate-wise trimmed mean (CWTM): drop the f largest and f smallest values of each
  coordinate, average the n − 2f values left.

  Yin et al., ICML 2018. Needs n > 2f.

  Non-finite input: exact as long as at most f rows are non-finite (NaN and +inf are dropped
  from the top, −inf from the bottom). Cost: a sort of `[n, d]` along clients, fused with the sum.
  """
  n, _ = base.check_updates(updates, "trimmed_mean", f=f, min_n=lambda f: 2 * f + 1)
  kept = order_statistics.sort_clients(updates)[f:n - f]
  return jnp.sum(kept, axis=0) / (n - 2 * f)  # a sum, not a matmul: keeps the sort fused
