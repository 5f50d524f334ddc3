"""Robust aggregation rules `[n, d] -> [d]` and pre-aggregators `[n, d] -> [n', d]`.

    from fedjax_robust import aggregators
    agg = aggregators.get("nnm+trimmed_mean", f=3)
    aggregate = agg(updates)          # updates: [n, d]
"""

from fedjax_robust.aggregators.averaging import mean
from fedjax_robust.aggregators.base import Aggregator
from fedjax_robust.aggregators.coordinatewise import coordinate_median
from fedjax_robust.aggregators.coordinatewise import trimmed_mean
from fedjax_robust.aggregators.distances import pairwise_squared_distances
from fedjax_robust.aggregators.geometric_median import geometric_median
from fedjax_robust.aggregators.geometric_median import weiszfeld
from fedjax_robust.aggregators.geometric_median import WeiszfeldResult
from fedjax_robust.aggregators.preaggregators import nearest_neighbor_mixing
from fedjax_robust.aggregators.registry import canonical_name
from fedjax_robust.aggregators.registry import get
from fedjax_robust.aggregators.registry import names
from fedjax_robust.aggregators.registry import split_spec
