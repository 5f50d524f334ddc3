"""Fast paths: the batch-uniform branch, ordinary-input paths against the exact fallback, and the
fused pre-aggregator + mean pipelines against the unfused composition."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_robust import aggregators as agg
from fedjax_robust.aggregators import base
from test_aggregators import data
from test_clipping_and_bucketing import np_centered_clipping


def _branch_taken(pred, x):
  # Branches that give different values, so the output tells which one ran.
  return base.uniform_cond(pred, lambda x: x + 100.0, lambda x: x - 100.0, x)


def test_uniform_cond_unbatched_is_cond():
  assert float(_branch_taken(jnp.array(True), jnp.float32(0))) == 100.0
  assert float(_branch_taken(jnp.array(False), jnp.float32(0))) == -100.0


def test_uniform_cond_gives_each_sample_its_own_branch():
  x = jnp.zeros((4,))
  out = jax.jit(jax.vmap(_branch_taken))(jnp.array([False, True, False, False]), x)
  np.testing.assert_array_equal(out, [-100.0, 100.0, -100.0, -100.0])
  out = jax.vmap(_branch_taken)(jnp.zeros((4,), bool), x)
  np.testing.assert_array_equal(out, [-100.0] * 4)
  # Nested vmaps; an unbatched operand is broadcast.
  preds = jnp.zeros((2, 3), bool).at[1, 2].set(True)
  nested = jax.vmap(jax.vmap(_branch_taken, in_axes=(0, None)), in_axes=(0, None))
  np.testing.assert_array_equal(nested(preds, 1.0), np.where(preds, 101.0, -99.0))
  np.testing.assert_array_equal(nested(~preds | True, 1.0), np.full((2, 3), 101.0))
  out = jax.vmap(_branch_taken, in_axes=(None, 0))(jnp.array(False), x)
  np.testing.assert_array_equal(out, [-100.0] * 4)
  # Still a branch under vmap (the exact path runs only when a sample needs it), not a select.
  jaxpr = str(jax.make_jaxpr(jax.vmap(_branch_taken))(jnp.zeros((4,), bool), x))
  assert "cond[" in jaxpr


def _with_nan_row(x):
  return x.at[0].set(jnp.nan)


RULES = [
    ("static_clipping", lambda x: agg.static_clipping(x, threshold=1.5)),
    ("adaptive_robust_clipping", lambda x: agg.adaptive_robust_clipping(x, f=2)),
    ("static_clipping_mean", lambda x: agg.clipping.static_clipping_mean(x, threshold=1.5)),
    ("arc_mean", lambda x: agg.clipping.adaptive_robust_clipping_mean(x, f=2)),
    ("centered_clipping", lambda x: agg.centered_clipping(x, center=jnp.full(x.shape[1:], 0.3),
                                                          tau=1.0, iterations=3)),
    ("geometric_median_3", lambda x: agg.weiszfeld(x, maxiter=3).median),
    ("geometric_median", lambda x: agg.weiszfeld(x, maxiter=100).median),
    ("krum", lambda x: agg.krum(x, f=2)),
    ("multi_krum", lambda x: agg.multi_krum(x, f=2)),
    ("nnm", lambda x: agg.nearest_neighbor_mixing(x, f=2)),
    ("mda", lambda x: agg.minimum_diameter_averaging(x, f=2)),
    ("monna", lambda x: agg.monna(x, f=2, reference_index=3)),
]


@pytest.mark.parametrize(
    "name,rule", [pytest.param(*r, marks=pytest.mark.slow) if r[0] == "geometric_median" else r
                  for r in RULES],  # 100 Weiszfeld iterations; geometric_median_3 runs by default
    ids=[r[0] for r in RULES])
def test_fast_path_equals_exact_fallback(rng, name, rule):
  # The exact path, forced on ordinary input, equals the fast path; and under vmap a sample with
  # a NaN row next to an ordinary one leaves the ordinary sample's (fast) value bit-identical.
  x = jnp.asarray(data(rng, 12, shift=1.0) * rng.uniform(0.2, 3, (12, 1)).astype(np.float32))
  alone = rule(x)
  with base.force_exact_paths():
    exact = jax.jit(lambda y: rule(y))(x)  # a new function: traced under the context
  np.testing.assert_allclose(exact, alone, rtol=2e-5, atol=2e-6)
  batched = jax.jit(jax.vmap(rule))  # as the simulator runs it; one compile for the 3 batches
  batch = batched(jnp.stack([x, _with_nan_row(x)]))
  np.testing.assert_array_equal(batch[0], batched(jnp.stack([x, x]))[0])
  # and the fast path is what a batch of ordinary samples gets
  np.testing.assert_allclose(batched(jnp.stack([x, 2 * x]))[0], alone, rtol=2e-5, atol=2e-6)


def test_fast_path_is_left_for_huge_and_nonfinite_rows(rng):
  # The exact path keeps clipping exact where ‖x‖² overflows; a NaN row is sent to 0.
  x = jnp.asarray(data(rng, 6))
  big = x.at[1].set(1e30).at[2].set(jnp.nan)
  out = agg.static_clipping(big, threshold=1.0)
  np.testing.assert_allclose(out[1], np.full(x.shape[1], 1 / np.sqrt(x.shape[1])), rtol=1e-6)
  np.testing.assert_array_equal(out[2], 0.0)
  # Centered clipping with a 1e30 row: the fast path's ‖x_i − v‖ would overflow to inf and
  # drop the row; the exact path clips it to length τ, as the float64 reference does.
  v = jnp.full(x.shape[1], 0.3, jnp.float32)
  huge = x.at[1].set(1e30)
  np.testing.assert_allclose(agg.centered_clipping(huge, center=v, tau=1.0, iterations=2),
                             np_centered_clipping(np.asarray(huge), np.asarray(v), 1.0, 2),
                             rtol=1e-5, atol=1e-6)


FUSED = ["static_clipping+mean", "arc+mean", "bucketing+mean", "nnm+bucketing+mean",
         "bucketing+arc+mean"]


@pytest.mark.parametrize("spec", FUSED)
@pytest.mark.parametrize("kind", ["ordinary", "nan_row", "huge_row"])
def test_fused_pipelines_equal_the_unfused_chain(rng, spec, kind):
  options = {"bucketing": {"bucket_size": 3}, "static_clipping": {"threshold": 2.0}}
  x = data(rng, 11) * rng.uniform(0.5, 4, (11, 1)).astype(np.float32)
  if kind == "nan_row":
    x[4] = np.nan
  if kind == "huge_row":
    x[4] = 1e30
  stages = agg.split_spec(spec)
  fused = agg.get(spec, f=2, options=options)
  assert len(fused.init(7)) == len(stages) - 1   # the last two stages ran as one
  unfused = agg.chain(*stages[:-1], lambda u: jnp.mean(u, axis=0), f=2, options=options)
  key = jax.random.key(7)
  got, want = np.asarray(fused(x, key)), np.asarray(unfused(x, key))
  np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
  np.testing.assert_allclose(got[np.isfinite(want)], want[np.isfinite(want)], rtol=1e-5,
                             atol=1e-6)


@pytest.mark.parametrize("spec", ["static_clipping+mean", "arc+mean", "bucketing+mean"])
def test_fused_pipelines_weighted(rng, spec):
  x = data(rng, 10) * rng.uniform(0.5, 4, (10, 1)).astype(np.float32)
  w = rng.uniform(1, 3, 10).astype(np.float32)
  pre = agg.split_spec(spec)[0]
  got = agg.get(spec, f=2, weighted=True)(x, jax.random.key(0), weights=w)
  if pre == "bucketing":
    # bucket-weighted mean of weighted bucket means = the weighted mean of the rows
    want = w @ x.astype(np.float64) / w.sum()
  else:
    fn = {"static_clipping": functools.partial(agg.static_clipping, threshold=2.0),
          "adaptive_robust_clipping": functools.partial(agg.adaptive_robust_clipping, f=2)}[pre]
    want = w @ np.asarray(fn(x), np.float64) / w.sum()
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_bucketing_short_bucket_does_not_see_the_padding_row(rng):
  # The short last bucket's missing slots point at the first shuffled row; an inf there must
  # only poison that row's own bucket.
  x = data(rng, 10)
  key = jax.random.key(3)
  perm = np.asarray(jax.random.permutation(key, 10))
  x[perm[0]] = np.inf
  out = np.asarray(agg.bucketing(x, key=key, bucket_size=3))
  np.testing.assert_array_equal(np.isfinite(out).all(axis=1), [False, True, True, True])
  np.testing.assert_allclose(out[3], x[perm[9]], rtol=1e-6)
  # Large buckets (the matrix-product form) agree with the gather form's definition.
  out = np.asarray(agg.bucketing(x, key=key, bucket_size=9))
  np.testing.assert_array_equal(np.isfinite(out).all(axis=1), [False, True])
  np.testing.assert_allclose(out[1], x[perm[9]], rtol=1e-6)
