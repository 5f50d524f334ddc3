"""FLARE and CRFL (aggregators/model_aware.py) against float64 NumPy transcriptions
(numpy_reference.flare, .crfl, .crfl_certified_radius) and scipy's Φ and Beta quantiles."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from fedjax_robust import aggregators
from fedjax_robust import numpy_reference as ref
from fedjax_robust.aggregators import base
from fedjax_robust.aggregators import model_aware as ma
from fedjax_robust.errors import ConfigError

N, M, H, D = 9, 6, 3, 5



@jax.jit(static_argnames=("neighbors", "gamma"))
def _flare_both(x, reps, temperature, neighbors, gamma):
  return (ma.flare_scores(x, reps, neighbors=neighbors, temperature=temperature, gamma=gamma),
          ma.flare_with_share(x, representations=reps, neighbors=neighbors,
                              temperature=temperature, gamma=gamma))


def run_flare(x, reps, *, neighbors=None, temperature=1.0, gamma=None):
  """(FlareScores, Filtered) from one compile per (shape, neighbors, gamma); τ is traced."""
  return _flare_both(jnp.asarray(x), jnp.asarray(reps), temperature, neighbors=neighbors,
                     gamma=gamma)


crfl = jax.jit(ma.crfl)   # ρ and σ traced: one compile per shape


def separated(seed, n=N):
  """Updates and representations whose clients have clearly different feature distributions
  (means spread out), so that no MMD is near 0 or near another of its row: the float32 and
  float64 neighbour choices must agree. Checked in `check_margins`."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(n, 1, H)) * 1.5
  reps = centres + 0.3 * rng.normal(size=(n, M, H))
  x = rng.normal(size=(n, D))
  return x.astype(np.float32), reps.astype(np.float32)


def check_margins(mmd, valid, gap=1e-4):
  """The test data's own premise: in every valid row the MMDs to the other valid clients are
  apart by more than float32's error (and above 0, where the clipping would tie them)."""
  idx = np.flatnonzero(valid)
  for i in idx:
    row = np.sort([mmd[i, j] for j in idx if j != i])
    assert row[0] > gap and np.all(np.diff(row) > gap), (i, row)


def close(a, b, rtol=1e-5, atol=1e-5):
  np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rtol,
                             atol=atol)


# ----------------------------------------------------------------------------------------------
# FLARE


@pytest.mark.parametrize("seed,options", [(30, {}),
                                          (32, {"neighbors": 2, "temperature": 0.5, "gamma": 0.2}),
                                          (37, {"neighbors": 8, "temperature": 3.0})])
def test_flare_matches_numpy(seed, options):
  x, reps = separated(seed)
  value, trust, counts, mmd = ref.flare(x, reps, **options)
  check_margins(mmd, np.ones(N, bool))
  got, out = run_flare(x, reps, **options)
  close(got.mmd, mmd, rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(got.counts, counts)
  close(got.trust, trust)
  close(out.value, value)
  assert out.kept_share == 1.0
  # c̄ = k: every client chooses k others (the default k = ⌊9/2⌋ − 1 = 3); with k = n − 1 every
  # client is chosen by all the others and the trust is uniform.
  k = options.get("neighbors", N // 2 - 1)
  assert counts.sum() == N * k
  if k == N - 1:
    close(got.trust, np.full(N, 1 / N))


def test_flare_mmd_is_the_unbiased_estimator_with_sklearns_default_bandwidth():
  _, reps = separated(4)
  got, _ = run_flare(np.zeros((N, D), np.float32), reps)
  # γ = 1/h, written out: the kernel matrix of the pooled sample, as the authors' MMD2u.
  pooled = np.concatenate(reps[:2].astype(np.float64))
  kernel = np.exp(-((pooled[:, None] - pooled[None]) ** 2).sum(-1) / H)
  kx, ky, kxy = kernel[:M, :M], kernel[M:, M:], kernel[:M, M:]
  want = ((kx.sum() - M) + (ky.sum() - M)) / (M * (M - 1)) - 2 * kxy.mean()
  assert want > 0.01
  close(got.mmd[0, 1], want, rtol=1e-4)
  mmd = np.asarray(got.mmd)
  assert np.all(np.diag(mmd) == 0) and np.array_equal(mmd, mmd.T)


def test_flare_ties_at_zero_go_to_the_lower_index():
  # Identical representation sets: every MMD²_u is ≤ 0, clipped to 0, all tied.
  rng = np.random.default_rng(5)
  reps = np.broadcast_to(rng.normal(size=(1, M, H)), (N, M, H)).astype(np.float32)
  x = rng.normal(size=(N, D)).astype(np.float32)
  got, _ = run_flare(x, reps)
  _, trust, counts, _ = ref.flare(x, reps)
  assert np.all(np.asarray(got.mmd) == 0)
  # k = 3, each client choosing the three others of lowest index: 0 → {1, 2, 3}, 1 → {0, 2, 3},
  # 2 → {0, 1, 3}, 3 and every later one → {0, 1, 2}.
  np.testing.assert_array_equal(counts, [8, 8, 8, 3, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(got.counts, counts)
  close(got.trust, trust)


def test_flare_trust_is_the_softmax_of_counts_over_tau_times_their_mean():
  x, reps = separated(6)
  got, out = run_flare(x, reps, temperature=2.0)
  c = np.asarray(got.counts, np.float64)
  e = np.exp(c / (2.0 * c.mean()))
  close(got.trust, e / e.sum())
  # Permuting the clients permutes the trust and leaves the aggregate (no ties here).
  perm = np.random.default_rng(0).permutation(N)
  permuted, permuted_out = run_flare(x[perm], reps[perm], temperature=2.0)
  close(permuted.trust, np.asarray(got.trust)[perm])
  close(permuted_out.value, out.value)


def test_flare_gives_an_outlying_group_the_lowest_trust():
  rng = np.random.default_rng(7)
  reps = rng.normal(size=(N, M, H)).astype(np.float32)
  reps[[2, 6]] += 4.0                      # two clients whose models map inputs elsewhere
  x = rng.normal(size=(N, D)).astype(np.float32)
  x[[2, 6]] = 50.0
  got, out = run_flare(x, reps)
  counts = np.asarray(got.counts)
  # k = 3: the two choose each other (count 1 each) and two of the others; the seven others
  # choose among themselves only.
  np.testing.assert_array_equal(counts[[2, 6]], [1, 1])
  assert np.delete(counts, [2, 6]).sum() == 7 * 3 + 2 * 2
  assert np.asarray(got.trust)[[2, 6]].sum() < 2 / N       # below their share under the mean
  value, trust, counts, _ = ref.flare(x, reps)
  close(out.value, value)
  np.testing.assert_array_equal(got.counts, counts)
  close(got.trust, trust)


@pytest.mark.parametrize("bad", ["nan_row", "inf_row", "nan_reps", "inf_reps"])
def test_flare_leaves_out_non_finite_clients_entirely(bad):
  x, reps = separated(8)
  out_rows = [1, 5]
  if bad == "nan_row":
    x[out_rows, 2] = np.nan
  elif bad == "inf_row":
    x[out_rows[0]] = np.inf
    x[out_rows[1], 0] = -np.inf
  elif bad == "nan_reps":
    reps[out_rows, 0, 0] = np.nan
  else:
    reps[out_rows] = np.inf
  got, out = run_flare(x, reps)
  value, trust, counts, mmd = ref.flare(x, reps)
  valid = np.ones(N, bool)
  valid[out_rows] = False
  check_margins(mmd, valid)
  np.testing.assert_array_equal(got.valid, valid)
  np.testing.assert_array_equal(got.counts, counts)
  close(got.trust, trust)
  assert np.all(np.asarray(got.trust)[out_rows] == 0)
  assert np.all(np.isfinite(out.value))
  close(out.value, value)
  # Exactly FLARE over the 7 valid clients (k = ⌊7/2⌋ − 1 = 2).
  _, alone = run_flare(x[valid], reps[valid])
  close(out.value, alone.value)
  assert out.kept_share == pytest.approx(7 / 9)


def test_flare_huge_tight_representations_are_compared_without_overflow():
  # Client 3's features sit at 1e19 (their squares overflow float32) in a tight set: its own
  # kernel sums are exact after centring, its cross kernels 0.
  x, reps = separated(9)
  reps[3] = 1e19
  reps[3, :, 0] += np.float32(1e19) * np.float32(2.0 ** -20) * np.arange(M)
  got, _ = run_flare(x, reps)
  _, trust, counts, mmd = ref.flare(x, reps)
  assert np.all(np.isfinite(np.asarray(got.mmd)))
  close(got.mmd, mmd, rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(got.counts, counts)
  close(got.trust, trust)


def test_flare_few_or_no_valid_clients():
  x, reps = separated(10)
  x[2:] = np.nan
  _, got = run_flare(x, reps)
  # Two valid clients: k = 0, every count 0, uniform trust over them.
  close(got.value, x[:2].astype(np.float64).mean(0))
  x[:] = np.nan
  _, got = run_flare(x, reps)
  np.testing.assert_array_equal(got.value, np.zeros(D))
  assert got.kept_share == 0


def test_flare_argument_checks():
  x, reps = jnp.ones((4, 3)), jnp.ones((4, 2, 2))
  with pytest.raises(ValueError, match=r"neighbors=4 must be an int in \[1, n − 1 = 3\]"):
    ma.flare(x, representations=reps, neighbors=4)
  with pytest.raises(ValueError, match=r"temperature=0.0 must be a finite number > 0"):
    ma.flare(x, representations=reps, temperature=0.0)
  with pytest.raises(ValueError, match=r"gamma=nan"):
    ma.flare(x, representations=reps, gamma=math.nan)
  with pytest.raises(ValueError, match=r"m >= 2 root inputs"):
    ma.flare(x, representations=jnp.ones((4, 1, 2)))
  with pytest.raises(ValueError, match=r"representations must have shape \(4, m, h\)"):
    ma.flare(x, representations=jnp.ones((3, 2, 2)))


# ----------------------------------------------------------------------------------------------
# CRFL


def _noise(key, sigma, d=D):
  return np.asarray(jax.random.normal(key, (d,), jnp.float32), np.float64) * np.float32(sigma)


@pytest.mark.parametrize("model_norm", [0.5, 100.0])   # clipping active, inactive
def test_crfl_matches_numpy(model_norm):
  rng = np.random.default_rng(11)
  x = rng.normal(size=(N, D)).astype(np.float32)
  theta = rng.normal(size=D).astype(np.float32)
  key = jax.random.key(3)
  got = crfl(jnp.asarray(x), key=key, global_params=jnp.asarray(theta), model_norm=model_norm,
             sigma=0.05)
  close(got, ref.crfl(x, theta, _noise(key, 0.05), model_norm))
  if model_norm == 0.5:   # θ − u − noise is on the sphere of radius ρ
    assert np.linalg.norm(theta - np.asarray(got, np.float64) - _noise(key, 0.05)) == (
        pytest.approx(0.5, rel=1e-5))
  else:                   # unclipped: u = mean − noise
    close(got, x.astype(np.float64).mean(0) - _noise(key, 0.05))


def test_crfl_huge_rows_are_clipped_exactly_and_bad_rows_give_nan():
  rng = np.random.default_rng(12)
  x = rng.normal(size=(N, D)).astype(np.float32)
  theta = rng.normal(size=D).astype(np.float32)
  key = jax.random.key(4)
  x[0] = 3e37                               # Σ over the rows overflows float32
  got = crfl(jnp.asarray(x), key=key, global_params=jnp.asarray(theta), model_norm=2.0,
             sigma=0.01)
  assert np.all(np.isfinite(np.asarray(got)))
  close(got, ref.crfl(x, theta, _noise(key, 0.01), 2.0))
  for bad in (np.nan, np.inf, -np.inf):
    y = x.copy()
    y[4, 1] = bad
    assert np.all(np.isnan(np.asarray(crfl(jnp.asarray(y), key=key,
                                           global_params=jnp.asarray(theta), model_norm=2.0,
                                           sigma=0.01))))
  assert np.all(np.isnan(np.asarray(crfl(jnp.asarray(np.ones_like(x)), key=key,
                                         global_params=jnp.full(D, jnp.nan), model_norm=2.0,
                                         sigma=0.01))))


def test_crfl_fast_and_exact_paths_agree():
  rng = np.random.default_rng(13)
  x = jnp.asarray(rng.normal(size=(N, D)), jnp.float32)
  theta = jnp.asarray(rng.normal(size=D), jnp.float32)
  key = jax.random.key(5)
  fast = crfl(x, key=key, global_params=theta, model_norm=0.7, sigma=0.01)
  with base.force_exact_paths():   # traced here: a function of its own, not crfl's cache
    exact = jax.jit(lambda *a, **k: ma.crfl(*a, **k))(x, key=key, global_params=theta,
                                                       model_norm=0.7, sigma=0.01)
  close(fast, exact, rtol=1e-6, atol=1e-7)


def test_crfl_noise_is_gaussian_with_sigma():
  d = 40_000
  theta = jnp.zeros(d)
  out = crfl(jnp.zeros((3, d)), key=jax.random.key(6), global_params=theta, model_norm=1.0,
             sigma=0.25)
  noise = -np.asarray(out, np.float64)      # clip(0) = 0, so u = −noise
  assert abs(noise.mean()) < 4 * 0.25 / math.sqrt(d)
  assert noise.std() == pytest.approx(0.25, rel=0.02)


def test_crfl_argument_checks():
  x = jnp.ones((4, 3))
  with pytest.raises(ValueError, match=r"global_params must have shape \(3,\)"):
    ma.crfl(x, key=jax.random.key(0), global_params=jnp.ones(4))
  with pytest.raises(ValueError, match=r"model_norm=0.0 must be a finite number > 0"):
    ma.crfl(x, key=jax.random.key(0), global_params=jnp.ones(3), model_norm=0.0)
  with pytest.raises(ValueError, match=r"sigma=inf"):
    ma.crfl(x, key=jax.random.key(0), global_params=jnp.ones(3), sigma=math.inf)


# ----------------------------------------------------------------------------------------------
# CRFL's certificate helpers

RADIUS_ARGS = dict(sigma=0.01, sigma_smoothing=0.02, model_norms=[5.0, 5.1, 5.2, 0.03],
                   attacker_weights=[0.05, 0.05], local_steps=30.0, client_lr=0.001,
                   scale_factor=100.0, poison_fraction=0.05, lipschitz=math.sqrt(2 + 6 + 9))


def test_certified_radius_matches_the_codes_formula():
  pa = np.array([0.99, 0.8, 0.6, 0.51, 0.3, 1.0])
  pb = np.array([0.01, 0.15, 0.35, 0.49, 0.4, 0.0])
  radius = jax.jit(lambda a, b, lr: ma.crfl_certified_radius(
      a, b, **{**RADIUS_ARGS, "client_lr": lr}))
  got = np.asarray(radius(pa, pb, RADIUS_ARGS["client_lr"]))
  want = [ref.crfl_certified_radius(a, b, **RADIUS_ARGS) if a < 1 else math.inf
          for a, b in zip(pa, pb)]
  close(got[:4], want[:4], rtol=2e-5, atol=0)
  assert got[4] == 0                        # p_A ≤ p_B: no certificate
  assert got[5] == np.inf                   # p_A = 1, p_B = 0
  # Closed-form dependences: RAD ∝ σ/η at fixed contraction terms.
  half_lr = np.asarray(radius(pa, pb, RADIUS_ARGS["client_lr"] / 2))
  close(half_lr[:4], 2 * got[:4], rtol=1e-6)


def test_certified_radius_argument_checks():
  with pytest.raises(ValueError, match=r"poison_fraction=1.5 must be a finite number in \(0, 1\]"):
    ma.crfl_certified_radius(0.9, 0.1, **{**RADIUS_ARGS, "poison_fraction": 1.5})
  with pytest.raises(ValueError, match=r"model_norms must be \[T − t_adv\]"):
    ma.crfl_certified_radius(0.9, 0.1, **{**RADIUS_ARGS, "model_norms": []})
  with pytest.raises(ValueError, match=r"sigma_smoothing=-1"):
    ma.crfl_certified_radius(0.9, 0.1, **{**RADIUS_ARGS, "sigma_smoothing": -1})


def test_probability_bounds():
  m, alpha = 1000, 0.001
  n_a = np.array([0, 1, 500, 990, 1000])
  n_b = np.array([1000, 999, 300, 10, 0])
  bounds = jax.jit(ma.crfl_probability_bounds, static_argnames=("num_models", "alpha", "method"))
  lo, hi = bounds(n_a, n_b, num_models=m, alpha=alpha)
  margin = math.sqrt(math.log(1 / alpha) / (2 * m))
  close(lo, np.clip(n_a / m - margin, 0, 1), atol=1e-6)
  close(hi, np.clip(n_b / m + margin, 0, 1), atol=1e-6)
  lo, hi = bounds(n_a, n_b, num_models=m, alpha=alpha, method="clopper_pearson")
  want_lo = [0.0 if k == 0 else stats.beta.ppf(alpha, k, m - k + 1) for k in n_a]
  want_hi = [1.0 if k == m else stats.beta.ppf(1 - alpha, k + 1, m - k) for k in n_b]
  close(lo, want_lo, rtol=1e-4, atol=1e-6)
  close(hi, want_hi, rtol=1e-4, atol=1e-6)
  with pytest.raises(ValueError, match=r"method='wilson' must be one of hoeffding"):
    ma.crfl_probability_bounds(n_a, n_b, m, method="wilson")
  with pytest.raises(ValueError, match=r"alpha=1.0 must be a finite number in \(0, 1\)"):
    ma.crfl_probability_bounds(n_a, n_b, m, alpha=1.0)


def test_smoothed_predict_and_params():
  rng = np.random.default_rng(14)
  preds = rng.integers(0, 4, size=(25, 30))
  preds[:, 0] = [0] * 10 + [2] * 10 + [1] * 5        # a tie for the top: the lower class
  preds[:, 1] = 3                                     # unanimous: runner-up count 0
  got = ma.crfl_smoothed_predict(jnp.asarray(preds), 4)
  for s in range(30):
    counts = np.bincount(preds[:, s], minlength=4)
    top = int(np.argmax(counts))
    rest = counts.copy()
    rest[top] = -1
    assert (got.top[s], got.top_count[s]) == (top, counts[top]), s
    assert (got.runner_up[s], got.runner_up_count[s]) == (int(np.argmax(rest)), rest.max()), s
  assert (got.top[0], got.runner_up[0]) == (0, 2)
  assert (got.top[1], got.runner_up[1], got.runner_up_count[1]) == (3, 0, 0)
  theta = jnp.arange(4.0)
  copies = ma.crfl_smoothed_params(jax.random.key(1), theta, sigma=0.1, num_models=3)
  close(copies, theta + 0.1 * np.asarray(jax.random.normal(jax.random.key(1), (3, 4))))


# ----------------------------------------------------------------------------------------------
# Through the registry, as the simulator calls them


def test_registered_rules_take_their_server_inputs_and_refuse_without():
  x, reps = separated(15)
  theta = jnp.asarray(np.random.default_rng(15).normal(size=D), jnp.float32)
  flare_agg = aggregators.get("flare", f=2, options={"flare": {"neighbors": 2}})
  crfl_agg = aggregators.get("crfl", f=2, options={"crfl": {"model_norm": 1.0}})
  assert flare_agg.needs == {"representations"} and crfl_agg.needs == {"global_params"}
  out, _, aux = jax.jit(lambda x, r: flare_agg.apply(x, flare_agg.init(D), jax.random.key(0),
                                                    representations=r))(jnp.asarray(x),
                                                                        jnp.asarray(reps))
  close(out, ref.flare(x, reps, neighbors=2)[0])
  assert aux["kept_share"] == 1.0
  key = jax.random.key(1)
  out, _, _ = crfl_agg.apply(jnp.asarray(x), crfl_agg.init(D), key, global_params=theta)
  stage_key = jax.random.split(key, 1)[0]   # the pipeline's key for its one stage
  close(out, ref.crfl(x, theta, _noise(stage_key, 0.01), 1.0))
  with pytest.raises(ConfigError, match=r"aggregator 'flare' needs each client's model's"):
    flare_agg(jnp.asarray(x))
  with pytest.raises(ConfigError, match=r"aggregator 'crfl' needs the global model"):
    crfl_agg(jnp.asarray(x))
  with pytest.raises(ConfigError, match=r"representations must have shape \(9, m, h\)"):
    flare_agg(jnp.asarray(x), representations=jnp.asarray(reps[1:]))
  with pytest.raises(ConfigError, match=r"flare\.temperature=-1.0 is outside its domain"):
    aggregators.get("flare", f=1, options={"flare": {"temperature": -1.0}})
  with pytest.raises(ConfigError, match=r"crfl\.sigma=0 is outside its domain"):
    aggregators.get("crfl", f=1, options={"crfl": {"sigma": 0}})


def test_registered_rules_under_vmap_with_per_draw_inputs():
  """Every draw of a batch has its own key, representations and global model (batched
  operands), one with a NaN row (the exact paths), and gets its unbatched value."""
  rng = np.random.default_rng(16)
  xs = rng.normal(size=(3, N, D)).astype(np.float32)
  xs[1, 4] = np.nan
  reps = np.stack([separated(20 + s)[1] for s in range(3)])
  thetas = rng.normal(size=(3, D)).astype(np.float32)
  keys = jax.random.split(jax.random.key(0), 3)
  # Unbatched: the module's functions, compiled once above (the pipeline's one stage gets
  # split(key, 1)[0]).
  singles = {
      "flare": lambda s: run_flare(xs[s], reps[s])[1].value,
      "crfl": lambda s: crfl(jnp.asarray(xs[s]), key=jax.random.split(keys[s], 1)[0],
                             global_params=jnp.asarray(thetas[s]), model_norm=15.0, sigma=0.01)}
  for spec, extra in [("flare", lambda s: {"representations": jnp.asarray(reps)[s]}),
                      ("crfl", lambda s: {"global_params": jnp.asarray(thetas)[s]})]:
    agg = aggregators.get(spec, f=2)
    one = lambda xi, k, s: agg.apply(xi, agg.init(D), k, **extra(s))[0]
    batched = np.asarray(jax.jit(jax.vmap(one))(jnp.asarray(xs), keys, jnp.arange(3)))
    for s in range(3):
      close(batched[s], singles[spec](s), rtol=1e-5, atol=1e-6)
    if spec == "flare":
      assert np.isfinite(batched).all()
    else:
      assert np.isnan(batched[1]).all() and np.isfinite(batched[[0, 2]]).all()
