"""SignGuard, clipped clustering, FLAME and FLTrust against float64 NumPy transcriptions of their
definitions (scikit-learn's HDBSCAN and AgglomerativeClustering as the clusterers of record)."""

from fractions import Fraction
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.cluster import HDBSCAN
from sklearn.cluster import AgglomerativeClustering

from fedjax_robust.aggregators import clustering
from fedjax_robust.aggregators import fltrust as fltrust_lib

N, D = 12, 400   # d: enough coordinates for sign statistics to tell groups apart
HISTORY = 30

signguard = jax.jit(clustering.signguard_with_share,
                    static_argnames=("lower", "upper", "coordinate_fraction"))
flame = jax.jit(clustering.flame_with_share, static_argnames=("noise_lambda",))
clipped_clustering = jax.jit(clustering.clipped_clustering_with_share,
                             static_argnames=("history",))
fltrust = jax.jit(fltrust_lib.fltrust_with_share)
hdbscan_members = jax.jit(clustering.hdbscan_majority_members)


# ----------------------------------------------------------------------------------------------
# NumPy transcriptions (float64)


def np_norms(x):
  """‖x_i‖ in float64, +inf for a row with a NaN or ±inf entry; and the finite mask."""
  x = np.asarray(x, np.float64)
  finite = np.all(np.isfinite(x), axis=1)
  norms = np.full(len(x), np.inf)
  norms[finite] = np.linalg.norm(x[finite], axis=1)
  return norms, finite


def np_clipped_mean(x, kept, bound):
  """Mean over the kept rows of x_i·min(1, bound/‖x_i‖); 0 when none is kept."""
  x = np.asarray(x, np.float64)
  rows = []
  for i in np.flatnonzero(kept):
    norm = np.linalg.norm(x[i])
    rows.append(x[i] * (min(1.0, bound / norm) if norm > 0 else 1.0))
  return np.mean(rows, axis=0) if rows else np.zeros(x.shape[1])


def np_cosine_distances(x):
  """1 − cos, a zero row at distance 1 from the others, 0 on the diagonal, clipped to [0, 2]."""
  x = np.asarray(x, np.float64)
  norms = np.linalg.norm(x, axis=1)
  u = x / np.where(norms > 0, norms, 1.0)[:, None]
  dist = np.clip(1.0 - u @ u.T, 0.0, 2.0)
  dist[norms == 0, :] = 1.0
  dist[:, norms == 0] = 1.0
  np.fill_diagonal(dist, 0.0)
  return dist


TIE = clustering.TWO_MEANS_TIE   # the documented relative tolerance of a 2-means tie
BAND = 2.0 ** -21                # a relative margin this close to TIE may round either way


def np_two_means_majority(counts, scale, valid):
  """The docstring's 2-means in exact rational arithmetic (fractions.Fraction) on the features
  counts_ij / scale_j: maximin seeds (ties: lowest index), Lloyd's iterations until no change
  (cap 100), a row to c₂ only when ‖f − c₂‖² < (1 − TIE)·‖f − c₁‖²; the larger cluster, ties to
  the cluster of the first valid row. Also says whether a decision came within BAND of the
  tolerance's edge (never the case for exact ties), where float32 may round either way; and
  whether any decision met an exact tie."""
  rows = [[Fraction(int(a), int(s) if s > 0 else 1) for a, s in zip(r, scale)]
          for r, ok in zip(counts, valid) if ok]
  flags = {"ambiguous": False, "tie": False}

  def dist(r, c):
    return sum((a - b) ** 2 for a, b in zip(r, c))

  def mean(members):
    return [sum(col) / len(members) for col in zip(*members)]

  def note(ratio):   # ratio = smaller / larger of two compared distances, in [0, 1]
    flags["tie"] |= ratio == 1
    flags["ambiguous"] |= abs(ratio - (1 - Fraction(TIE))) < Fraction(BAND)

  def farthest(c):
    d = [dist(r, c) for r in rows]
    top = max(d)
    for v in d:
      if top > 0:
        note(v / top)
    return rows[next(i for i, v in enumerate(d) if v >= (1 - Fraction(TIE)) * top)]

  def assign(c1, c2):
    out = []
    for r in rows:
      d1, d2 = dist(r, c1), dist(r, c2)
      if max(d1, d2) > 0:
        note(min(d1, d2) / max(d1, d2))
      out.append(d2 < (1 - Fraction(TIE)) * d1)
    return np.array(out, bool)

  c1 = farthest(mean(rows))
  c2 = farthest(c1)
  second = assign(c1, c2)
  for _ in range(clustering.KMEANS_MAX_ITERATIONS):
    if (~second).any():
      c1 = mean([r for r, s in zip(rows, second) if not s])
    if second.any():
      c2 = mean([r for r, s in zip(rows, second) if s])
    new = assign(c1, c2)
    if np.array_equal(new, second):
      break
    second = new
  pick = second.sum() > (~second).sum() or (second.sum() == (~second).sum() and second[0])
  out = np.zeros(len(counts), bool)
  out[np.flatnonzero(valid)[second == pick]] = True
  return out, flags["ambiguous"], flags["tie"]


def np_signguard(x, key, lower=0.1, upper=3.0, fraction=0.1):
  n, d = x.shape
  norms, finite = np_norms(x)
  median = np.median(norms)
  norm_ok = finite & (norms >= lower * median) & (norms <= upper * median)
  k = min(d, max(1, int(np.floor(fraction * d + 1e-9))))
  cols = np.arange(d) if k == d else np.asarray(jax.random.choice(key, d, (k,), replace=False))
  s = np.sign(np.where(finite[:, None], x, 0.0)[:, cols])
  counts = np.stack([(s > 0).sum(1), (s == 0).sum(1), (s < 0).sum(1)], axis=1)
  majority, ambiguous, _ = np_two_means_majority(counts, counts[finite].max(0), finite)
  kept = norm_ok & majority
  if not kept.any():
    kept = norm_ok
  return np_clipped_mean(x, kept, median), kept, ambiguous


def np_clipped_clustering(x, history, capacity):
  """Blades' Clippedclustering on the finite rows: norms appended to `history` (finite rows only;
  the last `capacity` kept), clip to their median, AgglomerativeClustering(2, average) on the
  cosine distances, Blades' choice `flag = 1 if sum(labels) > n//2 else 0`."""
  norms, finite = np_norms(x)
  history.extend(norms[finite].tolist())
  del history[:-capacity]
  idx = np.flatnonzero(finite)
  kept = np.zeros(len(x), bool)
  if len(idx) == 0:
    return np.zeros(x.shape[1]), kept
  threshold = np.median(history)
  if len(idx) == 1:
    kept[idx] = True
  else:
    labels = AgglomerativeClustering(n_clusters=2, metric="precomputed", linkage="average").fit(
        np_cosine_distances(x[idx])).labels_
    flag = 1 if labels.sum() > len(idx) // 2 else 0
    kept[idx[labels == flag]] = True
  return np_clipped_mean(x, kept, threshold), kept


def sk_hdbscan_members(dist, min_cluster_size):
  labels = HDBSCAN(min_cluster_size=min_cluster_size, min_samples=1, metric="precomputed",
                   allow_single_cluster=True, copy=True).fit(np.asarray(dist, np.float64)).labels_
  return labels >= 0


def np_flame(x, key, noise_lambda=0.001):
  n, d = x.shape
  norms, finite = np_norms(x)
  bound = np.median(norms)
  idx = np.flatnonzero(finite)
  kept = np.zeros(n, bool)
  kept[idx[sk_hdbscan_members(np_cosine_distances(x[idx]), n // 2 + 1)]] = True
  noise = np.asarray(jax.random.normal(key, (d,), jnp.float32), np.float64)
  return np_clipped_mean(x, kept, bound) + noise * noise_lambda * bound, kept


def np_fltrust(x, g0):
  x, g0 = np.asarray(x, np.float64), np.asarray(g0, np.float64)
  num, den = np.zeros(x.shape[1]), 0.0
  for row in x:
    if not np.all(np.isfinite(row)) or np.linalg.norm(row) == 0:
      continue
    trust = max(0.0, row @ g0 / (np.linalg.norm(row) * np.linalg.norm(g0)))
    num += trust * row * np.linalg.norm(g0) / np.linalg.norm(row)
    den += trust
  return num / den if den > 0 else num


def attacked(seed, n=N, d=D, byzantine=3, kind="flip"):
  """Honest rows around a common direction; `byzantine` rows that a rule should exclude."""
  rng = np.random.default_rng(seed)
  centre = rng.normal(size=d) + 0.5
  x = centre + 0.8 * rng.normal(size=(n, d))
  bad = rng.choice(n, byzantine, replace=False)
  if kind == "flip":                 # a tight group pointing the other way
    x[bad] = -2.0 * centre + 0.05 * rng.normal(size=(byzantine, d))
  elif kind == "scale":              # huge norms, honest direction
    x[bad] *= 50.0
  return x.astype(np.float32), bad


def close(got, want):
  np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=2e-5, atol=2e-5)


# ----------------------------------------------------------------------------------------------
# SignGuard


@pytest.mark.parametrize("fraction", [0.25, 1.0])
def test_signguard_matches_numpy_and_drops_the_attackers(fraction):
  compared = 0
  for seed in range(12):
    x, bad = attacked(seed, kind="scale" if seed % 3 == 2 else "flip")
    if seed % 4 == 3:
      x[(seed + 1) % N] *= 1e36        # huge (‖x‖² overflows float32): fails the norm filter
    key = jax.random.key(seed)
    want, kept, ambiguous = np_signguard(x, key, fraction=fraction)
    if ambiguous:
      continue
    compared += 1
    out = signguard(jnp.asarray(x), key=key, coordinate_fraction=fraction)
    close(out.value, want)
    assert out.kept_share == pytest.approx(kept.mean())
    assert not kept[bad].any()                      # the attackers are filtered out
    assert seed % 4 != 3 or not kept[(seed + 1) % N]
  assert compared >= 6


def test_signguard_nonfinite_rows_and_fallbacks():
  x, _ = attacked(5)
  x[2], x[9, 3], x[10, 0] = np.nan, np.inf, -np.inf
  key = jax.random.key(7)
  out = signguard(jnp.asarray(x), key=key, coordinate_fraction=0.25)
  want, kept, ambiguous = np_signguard(x, key, fraction=0.25)
  assert not ambiguous
  assert np.all(np.isfinite(out.value)) and not kept[[2, 9, 10]].any()
  close(out.value, want)
  # At least half the rows non-finite: the median norm is +inf, nothing passes: zero vector.
  x[:6] = np.nan
  out = signguard(jnp.asarray(x), key=key, coordinate_fraction=0.25)
  assert np.all(np.asarray(out.value) == 0) and out.kept_share == 0


@pytest.mark.slow
def test_two_means_honours_its_tie_rule_eager_and_jitted():
  """Issue 36: a row exactly as far from both centres goes to c₁, whether the call is eager or
  jitted. The issue's features [[1,0,1/3],[5/6,0,1/2],[1/3,0,1],[5/6,0,1/2],[2/3,0,2/3]] are
  the counts below over their column maxima (6, 0, 6); row 4 is 2/9 from both seeds (c₁ = row 2,
  c₂ = row 0), so it starts with c₁, and the rows {0, 1, 3} are the larger cluster (float32
  features gave [1 1 0 1 0] eager and [1 1 0 1 1] jitted)."""
  two_means = clustering._two_means_majority  # pylint: disable=protected-access
  jitted = jax.jit(two_means)
  counts = np.array([[6, 0, 2], [5, 0, 3], [2, 0, 6], [5, 0, 3], [4, 0, 4]])
  valid = np.ones(5, bool)
  want, _, tie = np_two_means_majority(counts, counts.max(0), valid)
  assert tie and want.tolist() == [True, True, False, True, False]
  for fn in (two_means, jitted):
    np.testing.assert_array_equal(fn(jnp.asarray(counts), jnp.asarray(counts.max(0)),
                                     jnp.asarray(valid)), want)
  # Tie-heavy inputs: sign statistics of 2-12 coordinates of float updates (no exact zeros, as
  # in the issue), 2-5 distinct patterns over 12 rows, some rows invalid. All are jitted and
  # vmapped, the first 8 also eager (each eager call compiles its loop). On float32 features
  # the earlier code put 13 of these 150 jitted (11 vmapped) in the wrong cluster.
  rng = np.random.default_rng(36)
  inputs, wants, ties = [], [], []
  while len(inputs) < 150:
    k = int(rng.integers(2, 13))
    patterns = rng.multinomial(k, [0.5, 0.0, 0.5], size=int(rng.integers(2, 6)))
    counts = patterns[rng.integers(0, len(patterns), 12)]
    valid = rng.random(12) > 0.1
    if not valid.any():
      continue
    scale = counts[valid].max(0)
    want, ambiguous, tie = np_two_means_majority(counts, scale, valid)
    assert not ambiguous
    inputs.append((counts, scale, valid))
    wants.append(want)
    ties.append(tie)
  assert sum(ties) >= 100 and sum(ties[:8]) >= 6, ties   # the inputs exercise the tie rule
  for (counts, scale, valid), want in zip(inputs, wants):
    np.testing.assert_array_equal(jitted(counts, scale, valid), want)
  stacked = [jnp.asarray(np.stack(a)) for a in zip(*inputs)]
  np.testing.assert_array_equal(jax.jit(jax.vmap(two_means))(*stacked), np.stack(wants))
  for (counts, scale, valid), want in list(zip(inputs, wants))[:8]:
    np.testing.assert_array_equal(two_means(jnp.asarray(counts), jnp.asarray(scale),
                                            jnp.asarray(valid)), want)


# ----------------------------------------------------------------------------------------------
# Clipped clustering


@pytest.mark.parametrize("history", [HISTORY, 10_000])   # a ring that wraps; one that does not
def test_clipped_clustering_matches_blades_over_rounds(history):
  state = clustering.clipped_clustering_init(D, history=history)
  blades_history = []
  for round_ in range(4):
    x, bad = attacked(10 + round_, kind="flip" if round_ % 2 else "scale", byzantine=4)
    if round_ == 3:
      x[0] = np.nan                                  # not recorded, not clustered
    out, state = clipped_clustering(jnp.asarray(x), state=state, history=history)
    want, kept = np_clipped_clustering(x, blades_history, history)
    close(out.value, want)
    assert out.kept_share == pytest.approx(kept.mean())
    if round_ % 2:
      assert not kept[bad].any()
    assert int(state.count) == (round_ + 1) * N - (round_ == 3)
    recorded = np.asarray(state.norms)
    np.testing.assert_allclose(np.sort(recorded[np.isfinite(recorded)]), np.sort(blades_history),
                               rtol=1e-6)


def test_average_linkage_matches_sklearn_including_ties():
  rng = np.random.default_rng(3)
  cluster = jax.jit(clustering.average_linkage_majority)
  for trial in range(60):
    n = int(rng.choice([2, 3, 6, 9, 12]))
    x = rng.normal(size=(n, 4))
    if trial % 3 == 0:
      x = np.round(x)                                 # repeated rows: tied distances
    if n % 2 == 0 and trial % 4 == 1:                 # two equal groups: a tie in size
      x[: n // 2] = x[0] + 0.01 * rng.normal(size=(n // 2, 4))
      x[n // 2:] = -x[0] + 0.01 * rng.normal(size=(n - n // 2, 4))
    dist = np_cosine_distances(x).astype(np.float32)
    got = np.asarray(cluster(jnp.asarray(dist), jnp.ones(n, bool)))
    labels = AgglomerativeClustering(n_clusters=2, metric="precomputed", linkage="average").fit(
        dist.astype(np.float64)).labels_
    if len(set(np.round(dist[np.triu_indices(n, 1)], 6))) < n * (n - 1) // 2:
      # Tied distances: the merge order may differ from scikit-learn's; still a valid answer.
      assert got.sum() >= (n + 1) // 2
      continue
    np.testing.assert_array_equal(got, labels == (1 if labels.sum() > n // 2 else 0))


# ----------------------------------------------------------------------------------------------
# FLAME


def test_hdbscan_majority_matches_sklearn_on_many_instances():
  rng = np.random.default_rng(0)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    for trial in range(180):
      n, k = int(rng.choice([2, 3, 4, 5, 8, 11, 15])), int(rng.integers(2, 6))
      if trial % 3 == 0:
        x = rng.normal(size=(n, k))
      else:                                           # a few clusters of various spreads
        centres = 3 * rng.normal(size=(int(rng.integers(1, 4)), k))
        spread = rng.uniform(0.05, 1)
        x = centres[rng.integers(0, len(centres), n)] + spread * rng.normal(size=(n, k))
      dist = np_cosine_distances(x).astype(np.float32)
      if trial % 5 == 0:
        dist = np.round(dist, 1)                      # ties, zero distances
      valid = np.ones(n, bool)
      if trial % 7 == 0 and n > 2:
        valid[rng.choice(n, int(rng.integers(1, n - 1)), replace=False)] = False
      got = np.asarray(hdbscan_members(jnp.asarray(dist), jnp.asarray(valid)))
      want = np.zeros(n, bool)
      idx = np.flatnonzero(valid)
      if len(idx) >= 2:
        want[idx[sk_hdbscan_members(dist[np.ix_(idx, idx)], n // 2 + 1)]] = True
      else:
        want = valid
      np.testing.assert_array_equal(got, want, err_msg=f"trial {trial}")


def test_flame_matches_numpy_with_sklearn_hdbscan():
  for seed in range(3):
    x, bad = attacked(20 + seed, byzantine=4)
    key = jax.random.key(seed)
    out = flame(jnp.asarray(x), key=key)
    want, kept = np_flame(x, key)
    close(out.value, want)
    assert out.kept_share == pytest.approx(kept.mean())
    assert not kept[bad].any()
  # Non-finite rows never members; a huge row in the honest direction is clipped exactly.
  x, _ = attacked(30)
  x[1], x[4, 2] = np.nan, np.inf
  x[7] *= 1e36
  out = flame(jnp.asarray(x), key=jax.random.key(9), noise_lambda=0.01)
  want, kept = np_flame(x, jax.random.key(9), noise_lambda=0.01)
  assert kept[7] and not kept[[1, 4]].any()
  close(out.value, want)
  x[:6] = np.nan                                      # the median norm is +inf: zero vector
  out = flame(jnp.asarray(x), key=jax.random.key(9))
  assert np.all(np.asarray(out.value) == 0) and out.kept_share == 0


# ----------------------------------------------------------------------------------------------
# FLTrust


def test_fltrust_matches_numpy_and_edge_cases():
  x, bad = attacked(40)
  g0 = x[np.setdiff1d(np.arange(N), bad)].mean(0)
  out = fltrust(jnp.asarray(x), server_update=jnp.asarray(g0))
  close(out.value, np_fltrust(x, g0))
  assert out.kept_share == pytest.approx(1 - len(bad) / N)   # flipped rows get trust 0
  x[0], x[3, 1], x[5] = np.nan, -np.inf, 0.0
  x[6] *= 1e36                                        # huge: rescaled to ‖g₀‖ exactly
  out = fltrust(jnp.asarray(x), server_update=jnp.asarray(g0))
  assert np.all(np.isfinite(out.value))
  close(out.value, np_fltrust(x, g0))
  # A non-finite or zero g₀ has no direction: every trust is 0, the output is 0.
  for g in (np.full(D, np.nan, np.float32), np.zeros(D, np.float32)):
    out = fltrust(jnp.asarray(x), server_update=jnp.asarray(g))
    assert np.all(np.asarray(out.value) == 0) and out.kept_share == 0


def test_fltrust_zero_total_trust():
  x = np.abs(attacked(41)[0])                         # every row at more than 90° from g₀
  out = fltrust(jnp.asarray(x), server_update=-jnp.ones(D))
  assert np.all(np.asarray(out.value) == 0) and out.kept_share == 0


# ----------------------------------------------------------------------------------------------
# Batches and paths


def _draws():
  xs, keys = [], []
  for s in range(3):
    x, _ = attacked(50 + s)
    if s == 1:
      x[2] = np.nan                                   # one draw on the exact path
    xs.append(x)
    keys.append(jax.random.key(s))
  return jnp.asarray(np.stack(xs)), jnp.stack(keys)


def test_vmap_over_draws_equals_unbatched():
  xs, keys = _draws()
  g0 = xs[0, 3:].mean(0)
  state = clustering.clipped_clustering_init(D, history=HISTORY)
  batched = {
      "signguard": jax.jit(jax.vmap(lambda x, k: clustering.signguard_with_share(
          x, key=k, coordinate_fraction=0.25)))(xs, keys),
      "flame": jax.jit(jax.vmap(lambda x, k: clustering.flame_with_share(x, key=k)))(xs, keys),
      "clipped_clustering": jax.jit(jax.vmap(lambda x: clustering.clipped_clustering_with_share(
          x, state=state, history=HISTORY)[0]))(xs),
      "fltrust": jax.jit(jax.vmap(lambda x: fltrust_lib.fltrust_with_share(
          x, server_update=g0)))(xs),
  }
  for s in range(3):
    single = {
        "signguard": signguard(xs[s], key=keys[s], coordinate_fraction=0.25),
        "flame": flame(xs[s], key=keys[s]),
        "clipped_clustering": clipped_clustering(xs[s], state=state, history=HISTORY)[0],
        "fltrust": fltrust(xs[s], server_update=g0),
    }
    for name, out in single.items():
      np.testing.assert_allclose(batched[name].value[s], out.value, rtol=1e-6, atol=1e-6,
                                 err_msg=name)
      assert batched[name].kept_share[s] == out.kept_share, name


def test_option_checks():
  x = jnp.ones((4, 6))
  with pytest.raises(ValueError, match="lower"):
    clustering.signguard(x, key=jax.random.key(0), lower=2.0)
  with pytest.raises(ValueError, match="coordinate_fraction"):
    clustering.signguard(x, key=jax.random.key(0), coordinate_fraction=0.0)
  with pytest.raises(ValueError, match="history >= n"):
    clustering.clipped_clustering(x, state=clustering.clipped_clustering_init(6, history=3),
                                  history=3)
  with pytest.raises(ValueError, match="noise_lambda"):
    clustering.flame(x, key=jax.random.key(0), noise_lambda=-1.0)
  with pytest.raises(ValueError, match="server_update"):
    fltrust_lib.fltrust(x, server_update=jnp.ones(5))


@pytest.mark.slow
def test_registered_defences_under_vmap_with_per_draw_keys_states_and_server_updates():
  """Through the registry, as the simulator calls them: every draw of a batch has its own key,
  state and server update (batched operands, not closures: a closed-over batched server update
  broke FLTrust under vmap), and gets its unbatched value. (Per-draw keys of SignGuard and FLAME:
  test_vmap_over_draws_equals_unbatched.)"""
  from fedjax_robust import aggregators
  rng = np.random.default_rng(11)
  x = jnp.asarray(rng.normal(size=(4, 10, 6)), jnp.float32).at[1, 3].set(jnp.nan)
  keys = jax.random.split(jax.random.key(0), 4)
  for spec in ["clipped_clustering", "fltrust"]:
    agg = aggregators.get(spec, f=2)
    extra = (lambda xi: {"server_update": xi[0] + 0.1}) if agg.needs_server_update else (
        lambda xi: {})
    one = lambda xi, k, st: agg.apply(xi, st, k, **extra(xi))[0]
    states = jax.vmap(lambda _: agg.init(6))(jnp.arange(4))
    batched = np.asarray(jax.jit(jax.vmap(one))(x, keys, states))
    for s in range(4):
      np.testing.assert_allclose(batched[s], np.asarray(one(x[s], keys[s], agg.init(6))),
                                 rtol=1e-5, atol=1e-6, err_msg=spec)
    assert np.isfinite(batched).all(), spec


def test_fltrust_needs_a_root_data_set():
  from fedjax_robust import config as config_lib
  from fedjax_robust.errors import ConfigError
  c = config_lib.base_config()
  c.aggregator = "fltrust"
  with pytest.raises(ConfigError, match="data.root_examples >= 1"):
    config_lib.validate(c)
  c.data.root_examples = 50
  config_lib.validate(c)
