"""Aggregation rules against plain NumPy references, their properties, and non-finite input."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_robust import aggregators as agg
from fedjax_robust.aggregators import order_statistics

SHAPES = [(5, 1), (10, 3), (11, 5), (25, 5), (40, 12)]  # (n, f) with n > 2f
D = 7


# ----------------------------------------------------------------------- NumPy references
def np_trimmed_mean(x, f):
  s = np.sort(x.astype(np.float64), axis=0)
  return s[f:len(x) - f].mean(axis=0)


def np_weiszfeld(x, weights=None, nu=1e-6, iters=4000):
  x = x.astype(np.float64)
  w = np.ones(len(x)) if weights is None else np.asarray(weights, np.float64)
  z = w @ x / w.sum()
  for _ in range(iters):
    beta = w / np.maximum(np.linalg.norm(x - z, axis=1), nu)
    z = beta @ x / beta.sum()
  return z


def np_nnm(x, f):
  x = x.astype(np.float64)
  dist = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
  return np.stack([x[np.argsort(dist[i], kind="stable")[:len(x) - f]].mean(0)
                   for i in range(len(x))])


def data(rng, n, d=D, shift=0.0):
  return (rng.normal(size=(n, d)) + shift).astype(np.float32)


# ----------------------------------------------------------------------- exact values
@pytest.mark.parametrize("n,f", SHAPES)
def test_mean_matches_numpy(rng, n, f):
  x = data(rng, n)
  w = rng.uniform(0.5, 2, size=n).astype(np.float32)
  np.testing.assert_allclose(agg.mean(x), x.astype(np.float64).mean(0), atol=1e-5)
  np.testing.assert_allclose(agg.mean(x, weights=w), w @ x.astype(np.float64) / w.sum(),
                             atol=1e-5)


@pytest.mark.parametrize("n,f", SHAPES)
def test_coordinate_median_matches_numpy(rng, n, f):
  for m in (n, n + 1):  # odd and even counts
    x = data(rng, m)
    np.testing.assert_allclose(agg.coordinate_median(x), np.median(x, axis=0), atol=1e-6)


@pytest.mark.parametrize("n,f", SHAPES)
def test_trimmed_mean_matches_numpy(rng, n, f):
  x = data(rng, n)
  np.testing.assert_allclose(agg.trimmed_mean(x, f=f), np_trimmed_mean(x, f), atol=1e-5)


def test_trimmed_mean_with_f_zero_is_the_mean(rng):
  x = data(rng, 9)
  np.testing.assert_allclose(agg.trimmed_mean(x, f=0), x.mean(0), atol=1e-6)


@pytest.mark.parametrize("n,f", SHAPES)
def test_geometric_median_matches_numpy_weiszfeld(rng, n, f):
  x = data(rng, n, shift=3.0)
  w = rng.uniform(0.5, 2, size=n)
  for weights in (None, w):
    expected = np_weiszfeld(x, weights)
    got = agg.weiszfeld(x, weights=None if weights is None else jnp.asarray(weights, jnp.float32),
                        gtol=1e-7)
    spread = np.abs(x - expected).max()
    np.testing.assert_allclose(got.median, expected, atol=1e-4 * spread)
    assert 1 <= int(got.num_iterations) <= 100


def test_geometric_median_minimizes_the_objective(rng):
  x = data(rng, 15, d=3)
  z = np.asarray(agg.geometric_median(x), np.float64)
  objective = lambda p: np.linalg.norm(x - p, axis=1).sum()
  for _ in range(200):  # no nearby point does better
    assert objective(z) <= objective(z + 1e-2 * rng.normal(size=3)) + 1e-6


def test_geometric_median_of_collinear_points_is_their_median(rng):
  direction = rng.normal(size=(1, 20))
  t = rng.normal(size=(11, 1))
  x = (t * direction + 3.0).astype(np.float32)
  expected = np.median(t) * direction[0] + 3.0
  np.testing.assert_allclose(agg.geometric_median(x), expected, atol=1e-5)


def test_geometric_median_iteration_cap_and_one_step(rng):
  x = data(rng, 10)
  assert int(agg.weiszfeld(x, maxiter=1).num_iterations) == 1
  # One step from the mean equals one Weiszfeld update computed by hand.
  z0 = x.astype(np.float64).mean(0)
  beta = 1 / np.linalg.norm(x - z0, axis=1)
  np.testing.assert_allclose(agg.geometric_median(x, maxiter=1), beta @ x / beta.sum(), atol=1e-5)
  np.testing.assert_allclose(agg.geometric_median(x, maxiter=0), z0, atol=1e-6)


@pytest.mark.parametrize("n,f", SHAPES)
def test_nnm_matches_its_definition(rng, n, f):
  x = data(rng, n)
  np.testing.assert_allclose(agg.nearest_neighbor_mixing(x, f=f), np_nnm(x, f), atol=1e-5)


def test_nnm_with_f_zero_replaces_every_row_by_the_mean(rng):
  x = data(rng, 8)
  np.testing.assert_allclose(agg.nearest_neighbor_mixing(x, f=0),
                             np.broadcast_to(x.mean(0), x.shape), atol=1e-5)


def test_pairwise_distances_match_numpy_with_a_large_common_offset(rng):
  x = data(rng, 12, d=50) * 1e-3 + 100.0  # spread 1e-3 on top of a common vector of norm 700
  expected = ((x[:, None].astype(np.float64) - x[None]) ** 2).sum(-1)
  np.testing.assert_allclose(agg.pairwise_squared_distances(x), expected, rtol=2e-3, atol=1e-9)


def test_chain_applies_stages_in_order(rng):
  x = data(rng, 11)
  expected = np_trimmed_mean(np_nnm(x, 2).astype(np.float32), 2)
  np.testing.assert_allclose(agg.get("nnm+trimmed_mean", f=2)(x), expected, atol=1e-5)
  np.testing.assert_allclose(
      agg.get("nearest_neighbor_mixing+trimmed_mean", f=2)(x), expected, atol=1e-5)


# ----------------------------------------------------------------------- properties
RULES = ["mean", "coordinate_median", "trimmed_mean", "meamed", "phocas", "geometric_median",
         "krum",
         "multi_krum", "minimum_diameter_averaging", "bulyan", "caf", "smea",
         "nnm+trimmed_mean", "nnm+geometric_median", "nnm+coordinate_median", "arc+krum"]
# Not permutation invariant (a reference row, a random shuffle) or stateful: batching only.
OTHER_RULES = ["monna", "bucketing+geometric_median", "centered_clipping", "rfa_one_step",
               "static_clipping+mean", "nnm+bucketing+trimmed_mean"]
TIGHT = {"geometric_median": {"gtol": 1e-7}}  # properties of the rule, not of its stopping rule


@pytest.mark.parametrize("spec", RULES)
def test_permutation_invariance_and_translation_equivariance(rng, spec):
  x = data(rng, 11)
  rule = agg.get(spec, f=2, options=TIGHT)
  out = np.asarray(rule(x))
  if spec != "bulyan":  # its last Krum pools score by one neighbour: mutual neighbours tie
    np.testing.assert_allclose(rule(x[rng.permutation(11)]), out, atol=2e-5)
  if spec != "arc+krum":  # clipping depends on the origin
    shift = rng.normal(size=D).astype(np.float32) * 5
    np.testing.assert_allclose(rule(x + shift), out + shift, atol=5e-5)


@pytest.mark.parametrize("spec", ["coordinate_median", "trimmed_mean", "meamed", "phocas",
                                  "geometric_median"])
def test_output_stays_in_the_honest_box(rng, spec):
  """With f outliers far away, these rules stay within the coordinate range of the honest rows."""
  honest = data(rng, 15)
  x = np.concatenate([honest, np.full((4, D), 50.0, np.float32)])
  out = np.asarray(agg.get(spec, f=4, options=TIGHT)(x))
  assert np.all(out >= honest.min(0) - 1e-5) and np.all(out <= honest.max(0) + 1e-5)


def in_convex_hull(point, rows):
  """Is `point` a convex combination of `rows`? (LP feasibility.)"""
  from scipy.optimize import linprog  # pylint: disable=g-import-not-at-top
  k = len(rows)
  a_eq = np.vstack([rows.astype(np.float64).T, np.ones((1, k))])
  b_eq = np.concatenate([np.asarray(point, np.float64), [1.0]])
  res = linprog(np.zeros(k), A_eq=a_eq, b_eq=b_eq, bounds=[(0, None)] * k, method="highs")
  return res.status == 0 or np.abs(a_eq @ res.x - b_eq).max() < 1e-4 if res.x is not None else False


@pytest.mark.parametrize("spec", ["krum", "multi_krum", "minimum_diameter_averaging", "monna",
                                  "smea", "caf", "geometric_median", "bulyan",
                                  "nnm+multi_krum"])
def test_selection_rules_stay_in_the_convex_hull_of_the_honest_rows(rng, spec):
  """f far outliers: these rules return a convex combination of honest rows only (Bulyan and GM
  per coordinate/approximately: checked against the box of the honest rows)."""
  honest = data(rng, 16, d=4)
  x = np.concatenate([honest, 40.0 + data(rng, 3, d=4)])
  out = np.asarray(agg.get(spec, f=3, options=TIGHT)(x))
  if spec in ("bulyan", "geometric_median"):
    assert np.all(out >= honest.min(0) - 1e-5) and np.all(out <= honest.max(0) + 1e-5)
  else:
    assert in_convex_hull(out, honest), spec


# ----------------------------------------------------------------------- non-finite input
def poisoned(honest, kinds):
  rows = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf, "huge": 1e30, "large": 1e20}
  return np.concatenate([honest, np.stack([np.full(D, rows[k], np.float32) for k in kinds])])


@pytest.mark.parametrize("kinds", [("nan",), ("inf", "-inf"), ("nan", "inf", "huge"), ("large",)])
def test_coordinatewise_rules_drop_nonfinite_rows(rng, kinds):
  honest = data(rng, 12)
  f = len(kinds)
  x = poisoned(honest, kinds)
  # NaN sorts above +inf; both behave as "the largest values", exactly like finite huge values.
  stand_in = np.where(np.isnan(x) | (x == np.inf), 1e35, np.where(x == -np.inf, -1e35, x))
  np.testing.assert_allclose(agg.trimmed_mean(x, f=f), np_trimmed_mean(stand_in, f), atol=1e-5)
  np.testing.assert_allclose(agg.coordinate_median(x), np.median(stand_in, 0), atol=1e-6)


@pytest.mark.parametrize("kinds", [("nan",), ("inf", "-inf"), ("nan", "inf", "-inf")])
def test_geometric_median_ignores_nonfinite_rows(rng, kinds):
  honest = data(rng, 12)
  np.testing.assert_allclose(agg.geometric_median(poisoned(honest, kinds), gtol=1e-7),
                             agg.geometric_median(honest, gtol=1e-7), atol=1e-5)


@pytest.mark.parametrize("value", [1e20, 1e30])
def test_geometric_median_with_huge_finite_rows(rng, value):
  """Huge rows neither overflow nor stall the stopping rule; the result is the GM of all rows."""
  honest = data(rng, 12)
  x = np.concatenate([honest, np.full((3, D), value, np.float32)])
  got = np.asarray(agg.geometric_median(x))
  # The far rows pull with unit weight each, like a point at infinity in direction (1, ..., 1).
  far = np.concatenate([honest, np.full((3, D), 1e12)])
  np.testing.assert_allclose(got, np_weiszfeld(far), atol=1e-3)


def test_geometric_median_treats_rows_at_unrepresentable_distance_as_infinite(rng):
  """‖x_i − z‖ = √7·3e38 exceeds the float32 range: the row counts as infinitely far, like inf."""
  honest = data(rng, 12)
  x = np.concatenate([honest, np.full((3, D), 3e38, np.float32)])
  np.testing.assert_allclose(agg.geometric_median(x, gtol=1e-7),
                             agg.geometric_median(honest, gtol=1e-7), atol=1e-5)


@pytest.mark.parametrize("kinds", [("nan",), ("inf", "huge"), ("nan", "-inf", "large")])
def test_nnm_never_mixes_a_finite_row_with_a_nonfinite_one(rng, kinds):
  honest = data(rng, 12)
  x = poisoned(honest, kinds)
  f = len(kinds)
  out = np.asarray(agg.nearest_neighbor_mixing(x, f=f))
  far = np.concatenate([honest, 1e6 + np.arange(f * D, dtype=np.float32).reshape(f, D)])
  np.testing.assert_allclose(out[:12], np_nnm(far, f)[:12], atol=1e-5)
  assert np.all(np.isnan(out[12:]) | (np.abs(out[12:]) > 1e10))
  for spec in ("nnm+trimmed_mean", "nnm+geometric_median", "nnm+coordinate_median"):
    assert np.all(np.isfinite(agg.get(spec, f=f)(x))), spec


def test_mean_is_poisoned_by_design(rng):
  assert np.all(np.isnan(agg.mean(poisoned(data(rng, 5), ("nan",)))))


# ----------------------------------------------------------------------- batching
# The two geometric-median chains are slow to compile; geometric_median itself and the other
# chains run by default.
_SLOW_BATCHING = ("bucketing+geometric_median", "nnm+geometric_median")


@pytest.mark.parametrize("spec", [pytest.param(s, marks=pytest.mark.slow) if s in _SLOW_BATCHING
                                  else s for s in RULES + OTHER_RULES])
def test_vmap_over_samples_matches_unbatched(rng, spec):
  x = rng.normal(size=(4, 11, D)).astype(np.float32)
  x[1, 0] = np.nan  # one sample with a poisoned row
  rule = agg.get(spec, f=2, options=TIGHT)
  key = jax.random.key(0)
  one = lambda u: rule.apply(u, rule.init(D), key)[0]
  batched = jax.jit(jax.vmap(one))(x)
  single = jax.jit(one)  # one compile for the four unbatched calls
  for s in range(4):
    np.testing.assert_allclose(batched[s], single(x[s]), atol=1e-5, equal_nan=True)


# ----------------------------------------------------------------------- sorting
@pytest.mark.parametrize("n", range(1, 13))
def test_batcher_network_sorts_every_zero_one_input(n):
  """The 0-1 principle: a comparator network sorting all 2^n binary inputs sorts everything."""
  pairs = order_statistics.batcher_network(n)
  for bits in itertools.product((0, 1), repeat=n):
    v = list(bits)
    for a, b in pairs:
      if v[a] > v[b]:
        v[a], v[b] = v[b], v[a]
    assert v == sorted(bits)


@pytest.mark.parametrize("n", [2, 3, 17, 64, 100, 101])
def test_sort_clients_matches_numpy_with_special_values(rng, n):
  """n=101 takes the jnp.sort path on CPU, the others the network."""
  x = rng.normal(size=(n, 9)).astype(np.float32)
  x[0, :3] = [np.nan, np.inf, -np.inf]
  x[-1, 3:6] = [-0.0, np.nan, 3e38]
  got = np.asarray(order_statistics.sort_clients(jnp.asarray(x)))
  np.testing.assert_array_equal(got, np.sort(x, axis=0))


# ----------------------------------------------------------------------- registry errors
def test_unknown_aggregator_names_the_allowed_ones():
  with pytest.raises(ValueError, match=r"unknown aggregator 'krumm'.*trimmed_mean"):
    agg.get("krumm", f=1)


def test_spec_must_end_with_a_rule_and_chain_only_preaggregators():
  with pytest.raises(ValueError, match=r"stage 'trimmed_mean' is a rule, but a chain is"):
    agg.get("trimmed_mean+nnm", f=1)
  with pytest.raises(ValueError, match=r"stage 'nearest_neighbor_mixing' is a pre-aggregator, "):
    agg.get("nnm+nnm", f=1)


def test_unknown_option_is_an_error():
  with pytest.raises(ValueError, match=r"unknown option.*'maxiters'.*maxiter"):
    agg.get("geometric_median", f=1, options={"geometric_median": {"maxiters": 3}})


def test_too_few_clients_for_f_is_an_error(rng):
  with pytest.raises(ValueError, match=r"trimmed_mean: needs n >= 7 clients for f=3, got n=6"):
    agg.trimmed_mean(data(rng, 6), f=3)
  with pytest.raises(ValueError, match="non-negative"):
    agg.get("mean", f=-1)


def test_a_stage_that_breaks_the_shape_contract_raises_chex_assertion(rng):
  """`registry.check_stage_output` (chex, at trace time): before it, a plain-function rule that
  returned a scalar gave a scalar aggregate (1.0 for all-ones [5, 3] updates) and a
  pre-aggregator dropping a column gave a [2] aggregate, both without an error."""
  x = data(rng, 5, d=3)
  cases = [
      ((lambda u: jnp.median(u),), {},
       r"input 0 has shape \(\) but expected \(3\).*stage '<lambda>' \(the rule"),
      ((lambda u: u[:, :2], "mean"), {},
       r"shape \(5, 2\) but expected \(None, 3\).*\(a pre-aggregator.*must return \[n_out, 3\]"),
      ((lambda u: u.astype(jnp.int32), "mean"), {}, r"int32 but expected float32.*keep the"),
      ((lambda u, present: u[:4], "mean"), {"present": np.ones(5, bool)},
       r"shape \(4, 3\) but expected \(5, 3\).*presence mask keeps every row's position"),
  ]
  for stages, kwargs, message in cases:
    pipeline = agg.chain(*stages, f=1, presence="present" in kwargs)
    with pytest.raises(AssertionError, match=message):
      jax.jit(lambda u: pipeline(u, **kwargs))(x)  # at trace time, under jit too
    with pytest.raises(AssertionError, match=message):
      jax.vmap(lambda u: pipeline(u, **kwargs))(jnp.stack([x, x]))  # and per sample under vmap
  # A conforming plain-function stage is untouched by the checks.
  np.testing.assert_allclose(agg.chain(lambda u: u * 2.0, "mean", f=1)(x), 2 * x.mean(0),
                             rtol=1e-6)


# ----------------------------------------------------------------------- Phocas
def np_phocas(x, f):
  """Phocas (Xie, Koyejo, Gupta 2018) from its definition, one coordinate at a time in plain
  Python: c = the mean of the sorted values with f dropped at each end; then the mean of the
  n − f values closest to c, ties to the smaller value (the earlier in sorted order); a
  non-finite value is at distance +inf."""
  x = np.asarray(x, np.float64)
  n = len(x)
  out = []
  for col in x.T:
    s = np.sort(col)  # NaN last, as the rule's sort
    c = s[f:n - f].mean()
    dist = [abs(v - c) if np.isfinite(v) else np.inf for v in s]
    chosen = sorted(range(n), key=lambda i: (dist[i], i))[:n - f]
    out.append(s[chosen].mean())
  return np.array(out)


@pytest.mark.parametrize("n,f", [(5, 1), (7, 3), (11, 2), (12, 5)])
def test_phocas_matches_its_definition(rng, n, f):
  for _ in range(5):
    x = data(rng, n)
    np.testing.assert_allclose(agg.phocas(x, f=f), np_phocas(x, f), rtol=1e-5, atol=1e-5)
    rounded = np.round(x * 2) / 2  # many ties at equal distance on both sides
    np.testing.assert_allclose(agg.phocas(rounded, f=f), np_phocas(rounded, f), atol=1e-6)
    np.testing.assert_allclose(agg.get("phocas", f=f)(x), np_phocas(x, f), rtol=1e-5,
                               atol=1e-5)


def test_phocas_is_meamed_when_the_trimmed_mean_is_the_median():
  """Symmetric columns: the trimmed mean equals the median, so Phocas selects what MeaMed does."""
  x = np.array([[-3, -2], [-1, -1], [0, 0], [1, 1], [3, 2]], np.float32)
  np.testing.assert_allclose(agg.phocas(x, f=1), agg.meamed(x, f=1), atol=0)
  # The 4 values closest to 0: 0, ±1 and one of ±3 (±2): the tie goes to the smaller value.
  np.testing.assert_allclose(agg.phocas(x, f=1), [(-3 - 1 + 0 + 1) / 4, (-2 - 1 + 0 + 1) / 4],
                             atol=0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e30])
def test_phocas_is_not_poisoned_by_f_non_finite_or_huge_rows(rng, bad):
  """Up to f Byzantine rows of NaN, ±inf or 1e30: the trimmed mean drops them, no window holding
  one is taken, and the result is the definition's (finite, inside the honest range)."""
  n, f = 9, 3
  honest = data(rng, n - f)
  x = np.concatenate([honest, np.full((f, D), bad, np.float32)])
  out = np.asarray(agg.phocas(x, f=f))
  assert np.all(np.isfinite(out))
  np.testing.assert_allclose(out, np_phocas(x, f), rtol=1e-5, atol=1e-5)
  assert np.all(out >= honest.min(0) - 1e-5) and np.all(out <= honest.max(0) + 1e-5)


def test_phocas_needs_an_honest_majority():
  from fedjax_robust.errors import ConfigError  # pylint: disable=g-import-not-at-top
  with pytest.raises(ConfigError, match="phocas: needs n >= 5 clients for f=2, got n=4"):
    agg.phocas(np.zeros((4, 2), np.float32), f=2)
