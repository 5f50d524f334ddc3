"""FoolsGold, the robust learning rate and weak DP against float64 NumPy transcriptions
(numpy_reference.py): FoolsGold over several rounds of state (a sybil pair gets weight 0, a
diverse honest set keeps its weight), overflow of a history, NaN/±inf/huge rows, the
registry's per-client state in a scan, vmap over draws, and the option domains."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_robust import aggregators
from fedjax_robust import numpy_reference as ref
from fedjax_robust.aggregators import backdoor_defences as bd
from fedjax_robust.errors import ConfigError

N, D = 10, 40
SYBILS = (7, 8)

foolsgold = jax.jit(bd.foolsgold_with_share, static_argnames=("kappa", "clients"))
robust_lr = jax.jit(bd.robust_lr_with_share, static_argnames=("f", "threshold"))
weak_dp = jax.jit(bd.weak_dp_with_share, static_argnames=("threshold", "sigma"))


def close(got, want, rtol=2e-5, atol=2e-5):
  np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol, atol=atol)


def sybil_round(rng, directions):
  """Honest clients each around their own direction (diverse); the sybils send one identical
  update with a large component on coordinate 0, where the honest updates are small."""
  x = directions + 0.5 * rng.normal(size=(N, D))
  x[:, 0] *= 0.01
  shared = 0.3 * rng.normal(size=D)
  shared[0] = 50.0
  x[list(SYBILS)] = shared
  return x.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# FoolsGold


@pytest.mark.parametrize("kappa", [1.0, 0.5])
def test_foolsgold_matches_numpy_over_rounds_and_zeroes_the_sybils(kappa):
  rng = np.random.default_rng(0)
  directions = rng.normal(size=(N, D))
  state = bd.foolsgold_init(D, clients=N)
  history = None
  for round_ in range(4):
    x = sybil_round(rng, directions)
    out, state = foolsgold(jnp.asarray(x), state=state, kappa=kappa)
    want, history, alpha = ref.foolsgold(x, history, kappa)
    close(out.value, want)
    close(state.history, history, rtol=1e-5, atol=1e-4)
    assert out.kept_share == pytest.approx(np.mean(alpha > 0))
    assert np.all(alpha[list(SYBILS)] == 0)
    honest = np.setdiff1d(np.arange(N), SYBILS)
    assert np.all(alpha[honest] > 0.5), alpha      # a diverse honest set keeps its weight
    # Weight 0 for the sybils: their 50 on coordinate 0 does not reach the output.
    assert abs(float(out.value[0])) < 0.1


def test_foolsgold_pardoning_and_logit_on_a_hand_case():
  # Three clients: 0 and 1 at 60° (cos 1/2), 2 orthogonal to both. v = (1/2, 1/2, 0): no
  # pardoning between 0 and 1; α = (1/2, 1/2, 1) → rescaled (1/2, 1/2, 1 → 0.99) → logit:
  # ln(1) + 0.5 = 0.5 for 0 and 1, clip(ln 99 + 0.5) = 1 for 2.
  x = np.array([[1.0, 0.0, 0.0], [0.5, math.sqrt(3) / 2, 0.0], [0.0, 0.0, 2.0]], np.float32)
  out, _ = foolsgold(jnp.asarray(x), state=bd.foolsgold_init(3))
  close(out.value, (0.5 * x[0] + 0.5 * x[1] + x[2]) / 3, rtol=1e-5, atol=1e-6)
  # κ = 2: 2·(0 + 0.5) = 1 for every client: the mean.
  out, _ = foolsgold(jnp.asarray(x), state=bd.foolsgold_init(3), kappa=2.0)
  close(out.value, x.mean(0), rtol=1e-5, atol=1e-6)
  # Pardoning: 0 and 1 identical (v = 1), 2 at cos 0.6 with them (v = 0.6): cs_20 is scaled
  # by 0.6/1, so α_2 = 1 − 0.36 = 0.64 → rescaled 1 → weight 1; α_0 = α_1 = 0 → weight 0.
  x = np.array([[1.0, 0.0], [1.0, 0.0], [0.6, 0.8]], np.float32)
  out, _ = foolsgold(jnp.asarray(x), state=bd.foolsgold_init(2))
  close(out.value, x[2] / 3, rtol=1e-5, atol=1e-6)
  close(out.value, ref.foolsgold(x)[0])


def test_foolsgold_edge_cases():
  x = np.tile(np.arange(1.0, 5.0, dtype=np.float32), (4, 1))
  out, _ = foolsgold(jnp.asarray(x), state=bd.foolsgold_init(4))
  assert np.all(np.asarray(out.value) == 0) and out.kept_share == 0    # every α is 0
  out, _ = foolsgold(jnp.asarray(x[:1]), state=bd.foolsgold_init(4))   # one client: α = 1
  close(out.value, x[0])
  # A zero row (zero history): cosine 0 with every row, α = 1, contributes 0.
  rng = np.random.default_rng(1)
  x = rng.normal(size=(6, 5)).astype(np.float32)
  x[2] = 0.0
  out, _ = foolsgold(jnp.asarray(x), state=bd.foolsgold_init(5))
  want, _, alpha = ref.foolsgold(x)
  assert alpha[2] == 1.0
  close(out.value, want)


def test_foolsgold_nonfinite_and_huge_rows():
  rng = np.random.default_rng(2)
  directions = rng.normal(size=(N, D))
  state, history = bd.foolsgold_init(D, clients=N), None
  for round_ in range(4):
    x = sybil_round(rng, directions)
    if round_ == 1:
      x[0] = np.nan                                 # not added to its history, weight 0
      x[3, 5] = -np.inf
    if round_ >= 2:
      x[4] *= 1e30                                  # huge: scaled cosines, exact weighted sum
    if round_ == 3:
      x[1] *= 1e36
    out, state = foolsgold(jnp.asarray(x), state=state)
    want, history, alpha = ref.foolsgold(x, history)
    assert np.all(np.isfinite(np.asarray(out.value)))
    close(out.value, want, rtol=5e-5)
    assert out.kept_share == pytest.approx(np.mean(alpha > 0))
    if round_ == 1:
      assert alpha[0] == 0 and alpha[3] == 0
      close(state.history[0], history[0], rtol=1e-5, atol=1e-4)


def test_foolsgold_overflowed_history_gets_weight_zero():
  rng = np.random.default_rng(3)
  directions = rng.normal(size=(N, D))
  x1 = sybil_round(rng, directions)
  x1[5, 1] = 3e38
  out, state = foolsgold(jnp.asarray(x1), state=bd.foolsgold_init(D, clients=N))
  _, h1, alpha = ref.foolsgold(x1)
  close(out.value, ref.foolsgold(x1)[0], rtol=5e-5)
  x2 = sybil_round(rng, directions)
  x2[5, 1] = 3e38                                   # float32 history: 6e38 → inf
  out, state = foolsgold(jnp.asarray(x2), state=state)
  assert not np.isfinite(np.asarray(state.history[5])).all()
  h1[5, 1] = np.inf                                 # the reference given the overflowed history
  want, _, alpha = ref.foolsgold(x2, h1)
  assert alpha[5] == 0 and np.all(alpha[list(SYBILS)] == 0)
  close(out.value, want, rtol=5e-5)
  assert out.kept_share == pytest.approx(np.mean(alpha > 0))


def test_foolsgold_through_the_registry_in_a_scan():
  rng = np.random.default_rng(4)
  directions = rng.normal(size=(N, D))
  rounds = np.stack([sybil_round(rng, directions) for _ in range(3)])
  agg = aggregators.get("foolsgold", f=2, options={"foolsgold": {"clients": N}})
  assert agg.per_client_state
  state = agg.init(D)
  assert state[0].history.shape == (N, D)

  def step(state, x):
    out, state, aux = agg.apply(x, state, jax.random.key(0))
    return state, (out, aux["kept_share"])

  _, (outs, shares) = jax.jit(lambda s, xs: jax.lax.scan(step, s, xs))(state, jnp.asarray(rounds))
  history = None
  for t in range(3):
    want, history, alpha = ref.foolsgold(rounds[t], history)
    close(outs[t], want)
    assert shares[t] == pytest.approx(np.mean(alpha > 0))
  # Without `clients` the state is sized by the first call (one call; a scan needs it sized).
  one = aggregators.get("foolsgold", f=2)
  close(jax.jit(one)(jnp.asarray(rounds[0])), ref.foolsgold(rounds[0])[0])
  with pytest.raises(ValueError, match="clients=7 but the updates have n=10"):
    aggregators.get("foolsgold", f=2, options={"foolsgold": {"clients": 7}})(
        jnp.asarray(rounds[0]))
  with pytest.raises(ValueError, match="foolsgold_init"):
    bd.foolsgold(jnp.asarray(rounds[0]), state=bd.foolsgold_init(D, clients=4))


# ----------------------------------------------------------------------------------------------
# Robust learning rate


def test_robust_lr_matches_numpy():
  rng = np.random.default_rng(5)
  for seed, threshold in enumerate([None, 1, N, 4]):
    x = rng.normal(size=(N, D)).astype(np.float32)
    x[:, ::4] = np.round(x[:, ::4])                  # exact zeros: sign 0
    x[:3, 1::4] = np.abs(x[:3, 1::4]) + 1.0          # 3 attackers agree where honest signs mix
    weights = rng.uniform(0.5, 2.0, N).astype(np.float32) if seed == 3 else None
    out = robust_lr(jnp.asarray(x), f=3, threshold=threshold,
                    weights=None if weights is None else jnp.asarray(weights))
    want = ref.robust_lr(x, 3, threshold, weights)
    close(out.value, want)
    votes = np.abs(np.sign(x.astype(np.float64)).sum(0))
    theta = 4 if threshold is None else threshold
    assert out.flipped_share == pytest.approx(np.mean(votes < theta))


def test_robust_lr_flips_a_backdoor_coordinate_and_keeps_agreed_ones():
  # 7 honest clients: coordinate 0 agreed (+), coordinate 1 split 4/3 (a backdoor's coordinate);
  # 2 attackers push +5 on coordinate 1. Vote: |7 + 2| = 9 ≥ 3 on 0, |4 − 3 + 2| = 3 on 1.
  honest = np.array([[1, 1], [1, 1], [1, 1], [1, 1], [1, -1], [1, -1], [1, -1]], np.float32)
  x = np.vstack([honest, [[1, 5], [1, 5]]]).astype(np.float32)
  mean = x.mean(0)
  out = robust_lr(jnp.asarray(x), f=2)               # θ = f + 1 = 3: no flip
  close(out.value, mean)
  out = robust_lr(jnp.asarray(x), f=2, threshold=4)   # θ = 4: coordinate 1 flipped
  close(out.value, [mean[0], -mean[1]])
  assert out.flipped_share == 0.5


def test_robust_lr_nonfinite_and_huge_rows():
  rng = np.random.default_rng(6)
  x = rng.normal(size=(N, D)).astype(np.float32)
  x[1] = np.nan
  x[2, 3] = np.inf
  x[4] *= 1e30
  out = robust_lr(jnp.asarray(x), f=2)
  want = ref.robust_lr(x, 2)
  assert np.all(np.isfinite(np.asarray(out.value)))
  close(out.value, want, rtol=5e-5)
  # Rows near the float maximum: their mean is within range and computed without overflow.
  x = rng.normal(size=(5, 4)).astype(np.float32)
  x[:3, 0] = 3e38
  out = robust_lr(jnp.asarray(x), f=1)
  close(out.value, ref.robust_lr(x, 1), rtol=5e-5)
  x[:] = np.nan                                       # no finite row: the zero vector
  out = robust_lr(jnp.asarray(x), f=1)
  assert np.all(np.asarray(out.value) == 0)


# ----------------------------------------------------------------------------------------------
# Weak DP


def test_weak_dp_matches_numpy_and_static_clipping_mean():
  rng = np.random.default_rng(7)
  x = (rng.normal(size=(N, D)) * rng.uniform(0.1, 1.0, (N, 1))).astype(np.float32)
  x[0] = np.nan                                       # clipped to 0, still counted
  x[3, 2] = -np.inf
  x[5] *= 1e36                                        # clipped exactly to norm M
  key = jax.random.key(3)
  noise = 0.025 * np.asarray(jax.random.normal(key, (D,), jnp.float32), np.float64)
  for weights in (None, rng.uniform(0.5, 2.0, N).astype(np.float32)):
    w = None if weights is None else jnp.asarray(weights)
    out = weak_dp(jnp.asarray(x), key=key, threshold=1.5, weights=w)
    close(out.value, ref.weak_dp(x, 1.5, noise, weights))
    finite = ref.finite_rows(x)
    rows = np.where(finite[:, None], x, 0.0).astype(np.float64)
    norms = np.where(finite, np.linalg.norm(rows, axis=1), np.inf)
    assert out.clipped_share == pytest.approx(np.mean(norms > 1.5))
  # σ = 0 is "static_clipping+mean", bit for bit.
  got = aggregators.get("weak_dp", f=2, options={"weak_dp": {"sigma": 0.0, "threshold": 1.5}})(
      jnp.asarray(x))
  want = aggregators.get("static_clipping+mean", f=2,
                         options={"static_clipping": {"threshold": 1.5}})(jnp.asarray(x))
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_weak_dp_noise_scale_and_key():
  d, sigma = 20_000, 0.025
  zeros = jnp.zeros((3, d))
  noise = np.asarray(weak_dp(zeros, key=jax.random.key(0), sigma=sigma).value, np.float64)
  # Mean 0 and variance σ²: within 4.5 standard errors (σ/√d and σ²√(2/d)).
  assert abs(noise.mean()) < 4.5 * sigma / math.sqrt(d)
  assert abs(noise.var() - sigma ** 2) < 4.5 * sigma ** 2 * math.sqrt(2 / d)
  again = np.asarray(weak_dp(zeros, key=jax.random.key(0), sigma=sigma).value)
  other = np.asarray(weak_dp(zeros, key=jax.random.key(1), sigma=sigma).value)
  np.testing.assert_array_equal(again, noise.astype(np.float32))
  assert not np.allclose(other, again)


# ----------------------------------------------------------------------------------------------
# Batches and options


def test_vmap_over_draws_equals_unbatched():
  rng = np.random.default_rng(8)
  xs = rng.normal(size=(3, N, D)).astype(np.float32)
  xs[1, 2] = np.nan                                   # one draw on the exact path
  xs = jnp.asarray(xs)
  keys = jax.random.split(jax.random.key(0), 3)
  states = bd.FoolsGoldState(jnp.asarray(rng.normal(size=(3, N, D)), jnp.float32))
  fg = jax.jit(jax.vmap(lambda x, s: bd.foolsgold_with_share(x, state=s)))(xs, states)
  rl = jax.jit(jax.vmap(lambda x: bd.robust_lr_with_share(x, f=2)))(xs)
  dp = jax.jit(jax.vmap(lambda x, k: bd.weak_dp_with_share(x, key=k, threshold=1.5)))(xs, keys)
  for s in range(3):
    one, new_state = foolsgold(xs[s], state=bd.FoolsGoldState(states.history[s]), kappa=1.0)
    close(fg[0].value[s], one.value, rtol=1e-6, atol=1e-6)
    close(fg[1].history[s], new_state.history, rtol=0, atol=0)
    assert fg[0].kept_share[s] == one.kept_share
    close(rl.value[s], robust_lr(xs[s], f=2).value, rtol=1e-6, atol=1e-6)
    close(dp.value[s], weak_dp(xs[s], key=keys[s], threshold=1.5).value, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name, key, bad", [
    ("foolsgold", "kappa", 0.0), ("foolsgold", "kappa", math.nan), ("foolsgold", "clients", 0),
    ("robust_lr", "threshold", 0), ("robust_lr", "threshold", 1.5),
    ("weak_dp", "sigma", -0.1), ("weak_dp", "threshold", 0.0), ("weak_dp", "sigma", math.inf)])
def test_out_of_domain_options_are_refused_with_the_key_named(name, key, bad):
  with pytest.raises(ConfigError, match=rf"{name}\.{key}=.* is outside its domain"):
    aggregators.get(name, f=1, options={name: {key: bad}})


def test_direct_calls_refuse_bad_arguments():
  x = jnp.ones((4, 3))
  with pytest.raises(ValueError, match="threshold=5 exceeds the n=4 votes"):
    bd.robust_lr(x, f=1, threshold=5)
  with pytest.raises(ValueError, match="threshold must be an int"):
    bd.robust_lr(x, f=1, threshold=0)
  with pytest.raises(ValueError, match="kappa"):
    bd.foolsgold(x, state=bd.foolsgold_init(3), kappa=-1.0)
  with pytest.raises(ValueError, match="clients must be an int"):
    bd.foolsgold_init(3, clients=0)
  with pytest.raises(ValueError, match="sigma"):
    bd.weak_dp(x, key=jax.random.key(0), sigma=-1.0)
  with pytest.raises(ValueError, match="weak_dp: threshold"):
    bd.weak_dp(x, key=jax.random.key(0), threshold=0.0)
