"""Robust aggregation rules `[n, d] -> [d]` and pre-aggregators `[n, d] -> [n', d]`.

    from fedjax_robust import aggregators
    agg = aggregators.get("nnm+trimmed_mean", f=3)
    aggregate = agg(updates)          # updates: [n, d]

Every function is pure and works under `jax.jit` and `jax.vmap` (n, f and iteration caps are
static). Where a rule can exclude NaN, ±inf or huge rows by its definition, it does; each
docstring says what happens.
"""

from fedjax_robust.aggregators.averaging import mean
from fedjax_robust.aggregators.base import Aggregator
from fedjax_robust.aggregators.bucketing import bucketing
from fedjax_robust.aggregators.bulyan import bulyan
from fedjax_robust.aggregators.clipping import adaptive_robust_clipping
from fedjax_robust.aggregators.clipping import centered_clipping
from fedjax_robust.aggregators.clipping import static_clipping
from fedjax_robust.aggregators.coordinatewise import coordinate_median
from fedjax_robust.aggregators.coordinatewise import meamed
from fedjax_robust.aggregators.coordinatewise import phocas
from fedjax_robust.aggregators.coordinatewise import trimmed_mean
from fedjax_robust.aggregators.distances import pairwise_squared_distances
from fedjax_robust.aggregators.geometric_median import geometric_median
from fedjax_robust.aggregators.geometric_median import weiszfeld
from fedjax_robust.aggregators.geometric_median import WeiszfeldResult
from fedjax_robust.aggregators.krum import krum
from fedjax_robust.aggregators.krum import krum_scores
from fedjax_robust.aggregators.krum import multi_krum
from fedjax_robust.aggregators.minimum_diameter import minimum_diameter_averaging
from fedjax_robust.aggregators.nearest_neighbors import monna
from fedjax_robust.aggregators.nearest_neighbors import nearest_neighbor_mixing
from fedjax_robust.aggregators.registry import canonical_name
from fedjax_robust.aggregators.registry import chain
from fedjax_robust.aggregators.registry import get
from fedjax_robust.aggregators.registry import names
from fedjax_robust.aggregators.registry import option_domains
from fedjax_robust.aggregators.registry import options
from fedjax_robust.aggregators.registry import split_spec
from fedjax_robust.aggregators.robustness import empirical_kappa
from fedjax_robust.aggregators.robustness import kappa_bounds
from fedjax_robust.aggregators.robustness import kappa_lower_bound
from fedjax_robust.aggregators.robustness import kappa_upper_bound
from fedjax_robust.aggregators.spectral import caf
from fedjax_robust.aggregators.spectral import divide_and_conquer
from fedjax_robust.aggregators.spectral import smea
