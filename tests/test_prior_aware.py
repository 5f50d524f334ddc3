"""Prior-aware rules (issue 15) against independent NumPy float64 transcriptions."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_robust.aggregators import prior_aware
from fedjax_robust.errors import ConfigError

TINY32 = float(np.finfo(np.float32).tiny)


def np_log_densities(xf, centre, finite, faulty_scale):
  """log L_h and log L_f of each row's distance to `centre` (the documented densities)."""
  r = np.linalg.norm(xf - centre, axis=1)
  m = np.median(r[finite])
  s = max(1.4826 * np.median(np.abs(r[finite] - m)), 1e-6 * m, TINY32)
  sigma_f = faulty_scale * (m + s)
  log_h = -0.5 * ((r - m) / s) ** 2 - np.log(s) - 0.5 * np.log(2 * np.pi)
  log_f = 0.5 * np.log(2 / np.pi) - np.log(sigma_f) - 0.5 * (r / sigma_f) ** 2
  return log_h, log_f


def np_posterior_filter(x, p, iterations=3, faulty_scale=10.0):
  """The documented model in float64: densities written out, posteriors by logaddexp."""
  x = np.asarray(x, np.float64)
  p = np.asarray(p, np.float64)
  finite = np.isfinite(x).all(1)
  xf = np.where(finite[:, None], x, 0.0)
  centre = np.median(x[finite], axis=0)
  for _ in range(iterations):
    log_h, log_f = np_log_densities(xf, centre, finite, faulty_scale)
    with np.errstate(divide="ignore"):
      a, b = np.log(p) + log_h, np.log1p(-p) + log_f
    post = np.where(finite, np.exp(a - np.logaddexp(a, b)), 0.0)
    centre = post @ xf / post.sum()
  return centre, post


def np_adaptive_trim(x, max_f, gap_factor=2.0):
  x = np.asarray(x, np.float64)
  n = len(x)
  finite = np.isfinite(x).all(1)
  bad = int((~finite).sum())
  if bad > max_f:
    return np.full(x.shape[1], np.nan), bad
  centre = np.median(x[finite], axis=0)
  r = np.where(finite, np.linalg.norm(np.where(finite[:, None], x, 0.0) - centre, axis=1), np.inf)
  order = np.argsort(r, kind="stable")
  rs = r[order]
  best_k, best_gap = bad, -np.inf
  for k in range(bad + 1, max_f + 1):
    hi, lo = rs[n - k], rs[n - k - 1]
    gap = hi / lo if lo > 0 else (np.inf if hi > 0 else 1.0)
    if gap > best_gap:
      best_k, best_gap = k, gap
  k = best_k if best_gap > gap_factor else bad
  return x[order[:n - k]].mean(0), k


def np_cluster_aggregate(x, clusters, f, inner):
  x = np.asarray(x, np.float64)
  clusters = np.asarray(clusters)
  aggs = []
  for k in range(clusters.max() + 1):
    rows = x[clusters == k]
    if inner == "mean":
      aggs.append(rows.mean(0) if np.isfinite(rows).all() else np.full(x.shape[1], np.nan))
    else:
      aggs.append(np.median(rows, axis=0))
  aggs = np.sort(np.asarray(aggs), axis=0)   # NaN sorts last
  return aggs[f:len(aggs) - f].mean(0)


def as_numpy(fn):
  return lambda *a, **k: jax.tree.map(np.asarray, fn(*a, **k))


posterior = as_numpy(jax.jit(prior_aware.posterior_filter,
                             static_argnames=("iterations", "faulty_scale")))
trim = as_numpy(jax.jit(prior_aware.adaptive_trim, static_argnames=("max_f", "gap_factor")))


def two_groups(rng, n=20, d=200, byzantine=(3, 8, 12, 17), offset=50.0):
  x = rng.normal(size=(n, d)).astype(np.float32)
  direction = rng.normal(size=d)
  direction /= np.linalg.norm(direction)
  x[list(byzantine)] += (offset * direction).astype(np.float32)
  return x


# --- posterior_filter -----------------------------------------------------------------------

def test_posterior_with_certain_priors_is_the_mean_of_finite_rows(rng):
  x = two_groups(rng)
  out = posterior(jnp.asarray(x), prior_honest=jnp.ones(20))
  np.testing.assert_allclose(out.value, x.mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(out.posterior, np.ones(20))
  assert float(out.honest_mass) == 1.0
  x[[4, 9]] = np.nan
  x[5, 0] = -np.inf
  out = posterior(jnp.asarray(x), prior_honest=jnp.ones(20))
  np.testing.assert_allclose(out.value, np.delete(x, [4, 5, 9], 0).mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(out.posterior[[4, 5, 9]], 0.0)
  # p = 0 gives π = 0: only the rows with p = 1 are averaged.
  p = np.ones(20, np.float32)
  p[:10] = 0.0
  out = posterior(jnp.asarray(x), prior_honest=jnp.asarray(p))
  np.testing.assert_allclose(out.value, x[10:].mean(0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("faulty_scale", [10.0, 100.0])
def test_posterior_recovers_a_separated_byzantine_group(rng, faulty_scale):
  """Honest rows' π is capped near p·R/(p·R + 1 − p) with R ≈ σ_f/(2s)·exp(−z_h²/2): with the
  default width (R ≈ 100 at d = 200) an honest row 2s from m gets π ≈ 0.97, so "every honest
  π > 0.99" holds only with a broader faulty density (faulty_scale = 100)."""
  byz = [3, 8, 12, 17]
  x = two_groups(rng, byzantine=byz)
  out = posterior(jnp.asarray(x), prior_honest=jnp.full(20, 0.8), faulty_scale=faulty_scale)
  post = np.asarray(out.posterior)
  honest = np.delete(np.arange(20), byz)
  assert np.all(post[byz] < 0.01)
  assert np.mean(post[honest]) > 0.99
  assert np.all(post[honest] > (0.99 if faulty_scale >= 100 else 0.95)), post[honest]
  honest_mean = x[honest].mean(0)
  # Within a small fraction of the honest mean's own noise (σ√(d/16) ≈ 3.5 in norm).
  assert np.linalg.norm(out.value - honest_mean) < 0.05
  np.testing.assert_allclose(out.honest_mass, post.mean(), rtol=1e-6)


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow),
                                  pytest.param(2, marks=pytest.mark.slow)])
def test_posterior_matches_numpy(seed):
  rng = np.random.default_rng(seed)
  n, d = 11, 6
  x = rng.normal(size=(n, d))
  x[rng.choice(n, 3, replace=False)] += rng.normal(scale=4.0, size=(3, d))
  p = rng.uniform(0.1, 0.95, size=n)
  for iterations in (1, 3):
    got = posterior(jnp.asarray(x, jnp.float32), prior_honest=jnp.asarray(p, jnp.float32),
                    iterations=iterations)
    want, want_post = np_posterior_filter(x.astype(np.float32), p.astype(np.float32), iterations)
    np.testing.assert_allclose(got.posterior, want_post, atol=2e-4)
    np.testing.assert_allclose(got.value, want, rtol=1e-4, atol=1e-4)


def test_posterior_nonfinite_rows_and_vmap(rng):
  draws, n, d = 4, 11, 6
  x = rng.normal(size=(draws, n, d)).astype(np.float32)
  x[:, 2] += 8.0
  x[1, 5] = np.nan
  x[3, 0, 3] = np.inf
  x[3, 7] = -np.inf
  p = rng.uniform(0.2, 0.9, size=(draws, n)).astype(np.float32)
  batched = as_numpy(jax.jit(jax.vmap(lambda u, q: prior_aware.posterior_filter(u, prior_honest=q))))(
      jnp.asarray(x), jnp.asarray(p))
  for s in range(draws):
    single = posterior(jnp.asarray(x[s]), prior_honest=jnp.asarray(p[s]))
    np.testing.assert_allclose(batched.value[s], single.value, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(batched.posterior[s], single.posterior, rtol=1e-6, atol=1e-7)
    want, want_post = np_posterior_filter(x[s], p[s])
    np.testing.assert_allclose(single.posterior, want_post, atol=2e-4)
    np.testing.assert_allclose(single.value, want, rtol=1e-4, atol=1e-4)
    assert np.all(np.isfinite(single.value))
  assert batched.posterior[1, 5] == 0 and batched.posterior[3, 0] == 0
  assert batched.posterior[3, 7] == 0
  # A non-finite row changes nothing but the mean posterior (the finite rows' path is exact).
  clean = posterior(jnp.asarray(np.delete(x[1], 5, 0)), prior_honest=jnp.asarray(np.delete(p[1], 5)))
  np.testing.assert_allclose(batched.value[1], clean.value, rtol=1e-6, atol=1e-6)


def test_posterior_invalid_prior_and_options():
  x = jnp.ones((5, 3))
  out = posterior(x, prior_honest=jnp.array([0.5, 0.5, 1.5, 0.5, 0.5]))
  assert np.all(np.isnan(out.value)) and np.isnan(out.honest_mass)
  out = posterior(x, prior_honest=jnp.zeros(5))                 # nobody honest: undefined
  assert np.all(np.isnan(out.value))
  out = posterior(x, prior_honest=jnp.full(5, 0.5))             # identical rows: their value
  np.testing.assert_allclose(out.value, np.ones(3))
  with pytest.raises(ConfigError, match="shape"):
    prior_aware.posterior_filter(x, prior_honest=jnp.ones(4))
  with pytest.raises(ConfigError, match="iterations"):
    prior_aware.posterior_filter(x, prior_honest=jnp.ones(5), iterations=0)
  with pytest.raises(ConfigError, match="faulty_scale"):
    prior_aware.posterior_filter(x, prior_honest=jnp.ones(5), faulty_scale=1.0)


# --- posterior_trim -------------------------------------------------------------------------

def np_posterior_trim(x, p, delta=0.05):
  """The documented rule in float64: the NumPy posterior, b's law by enumerating every
  Byzantine set (2^n subsets, not the recursion), the smallest t with P(b > t) ≤ δ, then the
  coordinate-wise trimmed mean by sorting the finite rows' coordinates."""
  import itertools  # pylint: disable=g-import-not-at-top
  x = np.asarray(x, np.float64)
  n = len(x)
  _, post = np_posterior_filter(x, p)
  q = 1.0 - post
  pmf = np.zeros(n + 1)
  for bits in itertools.product((0, 1), repeat=n):
    bits = np.asarray(bits)
    pmf[bits.sum()] += np.prod(np.where(bits == 1, q, 1.0 - q))
  tails = 1.0 - np.cumsum(pmf)
  t_max = (n - 1) // 2
  t = next((t for t in range(t_max + 1) if tails[t] <= delta), t_max)
  ordered = np.sort(x, axis=0)
  return ordered[t:n - t].mean(0), t, tails[t]


ptrim = as_numpy(jax.jit(prior_aware.posterior_trim, static_argnames=("delta",)))


@pytest.mark.parametrize("seed", range(3))
def test_posterior_trim_matches_numpy_and_trims_by_the_posterior(seed):
  rng = np.random.default_rng(seed)
  n = 10
  x = two_groups(rng, n=n, d=30, byzantine=(1, 6), offset=30.0)
  p = rng.uniform(0.6, 1.0, size=n)
  want, t, tail = np_posterior_trim(x, p)
  got = ptrim(jnp.asarray(x), prior_honest=jnp.asarray(p, jnp.float32))
  assert int(got.trimmed) == t
  np.testing.assert_allclose(got.tail, tail, atol=1e-5)
  np.testing.assert_allclose(got.value, want, rtol=1e-5, atol=1e-5)
  # The two far rows are found (t ≥ 2): the output is far closer to the honest mean than the
  # mean of all rows is (which the two rows at distance 30 move by 6).
  assert t >= 2
  honest = np.delete(x, (1, 6), axis=0).mean(0)
  assert np.linalg.norm(got.value - honest) < 0.5 * np.linalg.norm(x.mean(0) - honest)


def test_posterior_trim_is_the_mean_when_the_prior_is_certain_and_trims_certain_faults(rng):
  x = rng.normal(size=(9, 4)).astype(np.float32)
  got = ptrim(jnp.asarray(x), prior_honest=jnp.ones(9))
  assert int(got.trimmed) == 0
  np.testing.assert_allclose(got.value, x.astype(np.float64).mean(0), rtol=1e-5, atol=1e-6)
  # Two clients certainly faulty (p = 0), placed where the distances cannot see them: t = 2.
  got = ptrim(jnp.asarray(x), prior_honest=jnp.asarray([0, 0] + [1] * 7, jnp.float32))
  assert int(got.trimmed) == 2
  np.testing.assert_allclose(got.value, np.sort(x.astype(np.float64), 0)[2:7].mean(0),
                             rtol=1e-5, atol=1e-6)


def test_posterior_trim_never_averages_nonfinite_rows_and_batches(rng):
  x = rng.normal(size=(11, 5)).astype(np.float32)
  x[2] = np.nan
  x[5, 0] = np.inf
  x[8, 3] = -np.inf
  x[9] = 1e30
  got = ptrim(jnp.asarray(x), prior_honest=jnp.full(11, 0.9))
  assert np.all(np.isfinite(got.value)) and int(got.trimmed) >= 4
  clean = np.delete(x.astype(np.float64), (2, 5, 8, 9), axis=0).mean(0)
  assert np.linalg.norm(got.value - clean) < 1.0
  xs = np.stack([x, rng.normal(size=(11, 5)).astype(np.float32)])
  ps = np.stack([np.full(11, 0.9), np.ones(11)]).astype(np.float32)
  batched = as_numpy(jax.jit(jax.vmap(lambda u, q: prior_aware.posterior_trim(
      u, prior_honest=q))))(jnp.asarray(xs), jnp.asarray(ps))
  for s in range(2):
    one = ptrim(jnp.asarray(xs[s]), prior_honest=jnp.asarray(ps[s]))
    np.testing.assert_array_equal(batched.value[s], one.value)
    assert int(batched.trimmed[s]) == int(one.trimmed)


def test_count_pmf_is_the_poisson_binomial_law(rng):
  q = rng.uniform(size=7)
  want = np.zeros(8)
  for bits in np.ndindex(*(2,) * 7):
    bits = np.asarray(bits)
    want[bits.sum()] += np.prod(np.where(bits == 1, q, 1 - q))
  np.testing.assert_allclose(np.asarray(prior_aware.count_pmf(jnp.asarray(q, jnp.float64)
                                                              if jax.config.jax_enable_x64
                                                              else jnp.asarray(q))),
                             want, atol=1e-6)


def test_posterior_trim_is_nan_on_a_prior_outside_zero_one(rng):
  x = rng.normal(size=(7, 3)).astype(np.float32)
  for bad in (1.5, np.nan):
    prior = jnp.asarray([0.9] * 6 + [bad], jnp.float32)
    assert np.all(np.isnan(ptrim(jnp.asarray(x), prior_honest=prior).value))


def test_posterior_trim_refuses_a_delta_outside_its_domain():
  with pytest.raises(ConfigError, match=r"delta must be a float in \(0, 1\), got 1.5"):
    prior_aware.posterior_trim(jnp.ones((5, 2)), prior_honest=jnp.ones(5), delta=1.5)


# --- adaptive_trim --------------------------------------------------------------------------

def test_adaptive_trim_finds_no_outliers_and_a_separated_group(rng):
  x = rng.normal(size=(20, 100)).astype(np.float32)
  out = trim(jnp.asarray(x), max_f=5)
  assert int(out.num_removed) == 0
  np.testing.assert_allclose(out.value, x.mean(0), rtol=1e-5, atol=1e-6)
  x[[1, 6, 13]] += 30.0
  out = trim(jnp.asarray(x), max_f=5)
  assert int(out.num_removed) == 3
  np.testing.assert_allclose(out.value, np.delete(x, [1, 6, 13], 0).mean(0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, pytest.param(2, marks=pytest.mark.slow),
                                  pytest.param(3, marks=pytest.mark.slow)])
def test_adaptive_trim_matches_numpy(seed):
  rng = np.random.default_rng(seed)
  n, d, max_f = 15, 40, 4
  x = rng.normal(size=(n, d))
  count = seed % 4                                   # 0..3 outliers at random scales
  x[rng.choice(n, count, replace=False)] *= rng.uniform(3.0, 10.0, size=(count, 1))
  got = trim(jnp.asarray(x, jnp.float32), max_f=max_f)
  want, k = np_adaptive_trim(x.astype(np.float32), max_f)
  assert int(got.num_removed) == k
  np.testing.assert_allclose(got.value, want, rtol=1e-5, atol=1e-5)


def test_adaptive_trim_nonfinite_rows_and_vmap(rng):
  draws, n, d, max_f = 4, 12, 30, 3
  x = rng.normal(size=(draws, n, d)).astype(np.float32)
  x[0, [2, 9]] += 25.0                # two outliers
  x[1, 4] = np.nan                    # a NaN row, no outliers
  x[2, 3, 0] = np.inf
  x[2, 8] += 25.0                     # an inf row and an outlier
  x[3, :4] = np.nan                   # more non-finite rows than max_f
  batched = as_numpy(jax.jit(jax.vmap(lambda u: prior_aware.adaptive_trim(u, max_f=max_f))))(
      jnp.asarray(x))
  np.testing.assert_array_equal(batched.num_removed, [2, 1, 2, 4])
  for s in range(draws):
    single = trim(jnp.asarray(x[s]), max_f=max_f)
    want, k = np_adaptive_trim(x[s], max_f)
    assert int(single.num_removed) == k
    np.testing.assert_allclose(batched.value[s], single.value, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(single.value, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(batched.value[1], np.delete(x[1], 4, 0).mean(0), rtol=1e-5, atol=1e-6)
  assert np.all(np.isfinite(batched.value[:3])) and np.all(np.isnan(batched.value[3]))
  with pytest.raises(ConfigError, match="needs n >= 4"):
    prior_aware.adaptive_trim(jnp.ones((3, 2)), max_f=3)
  with pytest.raises(ConfigError, match="gap_factor"):
    prior_aware.adaptive_trim(jnp.ones((5, 2)), max_f=1, gap_factor=0.5)


# --- cluster_aggregate ----------------------------------------------------------------------

CLUSTERS = (0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 4, 4)


@functools.partial(jax.jit, static_argnames=("clusters", "f_clusters", "inner"))
def cluster(x, clusters=CLUSTERS, f_clusters=1, inner="mean"):
  return prior_aware.cluster_aggregate(x, clusters=clusters, f_clusters=f_clusters, inner=inner)


@pytest.mark.parametrize("inner", ["mean", "median"])
def test_cluster_aggregate_matches_numpy_and_trims_a_far_cluster(rng, inner):
  x = rng.normal(size=(12, 9)).astype(np.float32)
  np.testing.assert_allclose(cluster(jnp.asarray(x), inner=inner),
                             np_cluster_aggregate(x, CLUSTERS, 1, inner), rtol=1e-5, atol=1e-6)
  x[[7, 8, 9]] += 1e4                 # cluster 3 compromised, far away
  got = np.asarray(cluster(jnp.asarray(x), inner=inner))
  np.testing.assert_allclose(got, np_cluster_aggregate(x, CLUSTERS, 1, inner), rtol=1e-5,
                             atol=1e-5)
  assert np.all(np.abs(got) < 3.0)


def test_cluster_aggregate_nonfinite_rows_and_vmap(rng):
  x = rng.normal(size=(3, 12, 9)).astype(np.float32)
  x[1, 3] = np.nan                    # one spoiled cluster (1): dropped by the trimmed mean
  x[2, 0, 4] = np.inf
  x[2, 11] = np.nan                   # two spoiled clusters (0 and 4) with f_clusters = 1
  batched = np.asarray(jax.jit(jax.vmap(lambda u: prior_aware.cluster_aggregate(
      u, clusters=CLUSTERS, f_clusters=1)))(jnp.asarray(x)))
  for s in range(3):
    single = cluster(jnp.asarray(x[s]))
    np.testing.assert_allclose(batched[s], single, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(single, np_cluster_aggregate(x[s], CLUSTERS, 1, "mean"),
                               rtol=1e-5, atol=1e-6)
  assert np.all(np.isfinite(batched[:2]))
  # Draw 1: the NaN takes a top trimmed slot: the 4 clean ones trimmed by 1 below, 0 above.
  clean = np.sort(np.stack([x[1][np.asarray(CLUSTERS) == k].mean(0) for k in (0, 2, 3, 4)]), 0)
  np.testing.assert_allclose(batched[1], clean[1:4].mean(0), rtol=1e-5, atol=1e-6)
  assert np.all(np.isnan(batched[2]))     # more spoiled clusters than f_clusters: NaN
  # The median inner absorbs a NaN row in a cluster of three.
  y = x[1].copy()
  y[2] = np.nan
  assert np.all(np.isfinite(cluster(jnp.asarray(y), inner="median")))


def test_cluster_aggregate_domains():
  x = jnp.ones((4, 2))
  with pytest.raises(ValueError, match="K > 2"):
    prior_aware.cluster_aggregate(x, clusters=(0, 0, 1, 1), f_clusters=1)
  with pytest.raises(ValueError, match="must occur"):
    prior_aware.cluster_aggregate(x, clusters=(0, 0, 2, 2), f_clusters=0)
  with pytest.raises(ValueError, match="inner"):
    prior_aware.cluster_aggregate(x, clusters=(0, 1, 2, 3), f_clusters=1, inner="max")
  with pytest.raises(ValueError, match="one per row"):
    prior_aware.cluster_aggregate(x, clusters=(0, 1, 2), f_clusters=1)


def test_huge_finite_rows_get_no_weight():
  """A finite row near the float maximum: its distance is computed without overflow and its
  log-likelihood ratio is −inf (never inf − inf), so π = 0; adaptive_trim removes it."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(11, 6)).astype(np.float32)
  x[4], x[7, 0] = 3e37, -3e38
  out = posterior(jnp.asarray(x), prior_honest=jnp.full(11, 0.7))
  assert out.posterior[4] == 0 and out.posterior[7] == 0
  assert np.all(np.isfinite(out.value)) and np.all(np.abs(out.value) < 2)
  y = rng.normal(size=(15, 40)).astype(np.float32)
  y[9] *= 1e37
  got = trim(jnp.asarray(y), max_f=4)
  assert int(got.num_removed) == 1
  np.testing.assert_allclose(got.value, np.delete(y, 9, 0).mean(0), rtol=1e-5, atol=1e-6)
