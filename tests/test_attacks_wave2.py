"""Wave 2 attacks of the peer benchmarks: Fang et al.'s attack on Krum against a NumPy
transcription of the paper's search (in the paper's model form), model replacement's scaling and
its algebra under the mean, and the generalized adaptive attack's optimality properties."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_robust import attacks
from fedjax_robust.aggregators.krum import krum
from fedjax_robust.attacks import model_poisoning as mp
from fedjax_robust.errors import ConfigError


def mean_rule(u):
  return jnp.mean(u, axis=0)


def trimmed_mean_rule(u, f):
  return jnp.mean(jnp.sort(u, axis=0)[f:u.shape[0] - f], axis=0)


def median_rule(u):
  return jnp.median(u, axis=0)


def clustered(rng, n, d, byzantine_rows, spread=0.1, centre=0.5):
  updates = (centre + spread * rng.normal(size=(n, d))).astype(np.float32)
  byzantine = np.zeros(n, bool)
  byzantine[list(byzantine_rows)] = True
  return updates, byzantine


# ------------------------------------------------------------------ Fang et al. against Krum
def np_krum_index(models, f):
  """Krum (Blanchard et al. 2017) in float64: the lowest sum of the n − f − 2 smallest squared
  distances to the other rows; ties to the lowest index."""
  sq = ((models[:, None, :] - models[None, :, :]) ** 2).sum(-1)
  np.fill_diagonal(sq, np.inf)
  return int(np.argmin(np.sort(sq, axis=1)[:, :len(models) - f - 2].sum(1)))


def np_fang_krum(theta, local_models, byzantine, f, threshold=1e-5):
  """The paper's attack on Krum in its own terms (Fang et al. 2020, Sec. 4.2), float64: local
  models w_i, the global model w_Re = θ, the no-attack change direction s (the global model
  after averaging the honest models), crafted model w' = w_Re − λs; λ from the upper bound,
  halved until Krum (declared f) picks a crafted model or λ would drop below the threshold.
  Returns (λ, w', whether Krum picked it)."""
  w = local_models.astype(np.float64)
  m, d = w.shape
  c = int(byzantine.sum())
  benign = w[~byzantine]
  s = np.sign(benign.mean(0) - theta)
  dist = np.linalg.norm(benign[:, None] - benign[None], axis=-1)
  np.fill_diagonal(dist, np.inf)
  gamma_sums = np.sort(dist, axis=1)[:, :m - c - 2].sum(1)         # Γ: m − c − 2 nearest
  lam = (gamma_sums.min() / ((m - 2 * c - 1) * np.sqrt(d))
         + np.linalg.norm(benign - theta, axis=1).max() / np.sqrt(d))
  while True:
    crafted = theta - lam * s
    models = w.copy()
    models[byzantine] = crafted
    chosen = byzantine[np_krum_index(models, f)]
    if chosen or lam / 2 < threshold:
      return lam, crafted, chosen
    lam /= 2


KRUM_3 = functools.partial(krum, f=3)
_fang_krum = jax.jit(mp.fang_krum, static_argnums=2, static_argnames=("threshold", "iterations"))


def run_fang_krum(updates, byzantine, rule, **options):
  return np.asarray(_fang_krum(jnp.asarray(updates), jnp.asarray(byzantine), rule, **options))


@pytest.mark.parametrize("centre,spread,byzantine_rows,f,succeeds", [
    (0.1, 0.1, (0, 4, 7), 3, True),    # picked after 4 halvings of the bound
    (0.1, 0.1, (2, 9), 3, True),       # the server declares f = 3 > b = 2: 7 halvings
    (0.2, 0.5, (1, 5, 6), 3, True),    # spread out: picked after 2 halvings
    (0.2, 0.1, (0, 4, 7), 3, False),   # honest rows far from 0: never picked; the smallest λ
])
def test_fang_krum_matches_the_papers_algorithm(centre, spread, byzantine_rows, f, succeeds):
  rng = np.random.default_rng(3)
  n, d = 12, 30
  updates, byzantine = clustered(rng, n, d, byzantine_rows, spread=spread, centre=centre)
  theta = rng.normal(size=d)                     # the global model; local w_i = θ − u_i
  lam, crafted, chosen = np_fang_krum(theta, theta - updates, byzantine, f)
  assert chosen == succeeds
  updates[byzantine] = np.nan                    # what a Byzantine client computed does not matter
  out = run_fang_krum(updates, byzantine, KRUM_3 if f == 3 else functools.partial(krum, f=f))
  np.testing.assert_array_equal(out[~byzantine], updates[~byzantine])
  want = theta - crafted                         # u' = θ − w' = λs = −λ·sign(μ)
  np.testing.assert_allclose(out[byzantine], np.repeat(want[None], byzantine.sum(), 0),
                             rtol=1e-4, atol=1e-9)
  mu = updates[~byzantine].mean(0)
  np.testing.assert_allclose(out[byzantine][0], -lam * np.sign(mu), rtol=1e-4)
  picked = np.asarray(krum(jnp.asarray(out), f=f))
  if succeeds:   # Krum picks the crafted row, which moves the model against the honest direction
    np.testing.assert_array_equal(picked, out[byzantine][0])
    assert np.all(picked * np.sign(mu) < 0)
  else:
    assert 1e-5 <= lam < 2e-5


def test_fang_krum_halves_from_the_bound_and_sends_the_smallest_tried_on_failure():
  rng = np.random.default_rng(4)
  n, d = 12, 30
  updates, byzantine = clustered(rng, n, d, (0, 1, 2))
  mu = updates[~byzantine].mean(0)
  never = lambda u: jnp.asarray(mu)              # a rule the crafted rows never win
  theta = np.zeros(d)
  lam0 = np_fang_krum(theta, -updates, byzantine, f=3, threshold=np.inf)[0]   # λ_max
  want = lam0 * 0.5 ** math.floor(math.log2(lam0 / 1e-3))                  # last ≥ threshold
  out = run_fang_krum(updates, byzantine, never, threshold=1e-3)
  np.testing.assert_allclose(out[0], -want * np.sign(mu), rtol=1e-5)
  assert 1e-3 <= want < 2e-3
  # The halvings are capped by `iterations`, and λ_max is tried even below the threshold.
  out = run_fang_krum(updates, byzantine, never, threshold=1e-3, iterations=3)
  np.testing.assert_allclose(out[0], -lam0 / 4 * np.sign(mu), rtol=1e-5)
  out = run_fang_krum(updates, byzantine, never, threshold=10 * lam0)
  np.testing.assert_allclose(out[0], -lam0 * np.sign(mu), rtol=1e-5)


def test_fang_krum_is_batched_and_leaves_b_zero_alone():
  rng = np.random.default_rng(5)
  n, d = 12, 16
  x = jnp.asarray(0.5 + 0.1 * rng.normal(size=(4, n, d)), jnp.float32)
  masks = np.zeros((4, n), bool)
  masks[1, :2] = masks[2, [3, 5, 8]] = masks[3, 4] = True   # b = 0, 2, 3, 1
  attack = attacks.get("fang_krum", num_classes=None, options={"iterations": 40})
  key = jax.random.key(0)
  one = lambda u, m: attack.poison_updates(key, u, m, KRUM_3)
  batched = jax.jit(jax.vmap(one))(x, jnp.asarray(masks))
  np.testing.assert_array_equal(batched[0], x[0])
  one = jax.jit(one)
  for s in range(4):
    single = one(x[s], jnp.asarray(masks[s]))
    np.testing.assert_allclose(batched[s], single, rtol=1e-6)
  with pytest.raises(ValueError, match="needs the server's aggregation"):
    attack.poison_updates(key, x[1], jnp.asarray(masks[1]))
  for bad in ({"threshold": 0.0}, {"iterations": 0}):
    with pytest.raises(ConfigError, match="outside its domain"):
      attacks.get("fang_krum", num_classes=10, options=bad)


# ------------------------------------------------------------------------ model replacement
def test_model_replacement_scales_the_byzantine_rows_only():
  rng = np.random.default_rng(6)
  n, d = 10, 7
  updates = rng.normal(size=(n, d)).astype(np.float32)
  byzantine = np.zeros(n, bool)
  byzantine[[2, 7]] = True
  u, m = jnp.asarray(updates), jnp.asarray(byzantine)
  out = np.asarray(mp.model_replacement(u, m, boost=2.5))
  np.testing.assert_array_equal(out[~byzantine], updates[~byzantine])
  np.testing.assert_allclose(out[byzantine], 2.5 * updates[byzantine], rtol=1e-7)
  for default in (math.nan, None):                # γ = n/b = 5 from the realized b
    out = np.asarray(jax.jit(lambda u, m: mp.model_replacement(u, m, boost=default))(u, m))
    np.testing.assert_allclose(out[byzantine], 5.0 * updates[byzantine], rtol=1e-6)
    np.testing.assert_array_equal(out[~byzantine], updates[~byzantine])
  none = np.asarray(mp.model_replacement(u, jnp.zeros(n, bool)))
  np.testing.assert_array_equal(none, updates)   # b = 0: nothing changes
  # Under the mean over n rows, γ = n/b makes the aggregate the Byzantine (backdoored) clients'
  # mean update plus the honest sum's share: (γ Σ_B u + Σ_H u)/n = mean_B u + Σ_H u / n.
  out = np.asarray(mp.model_replacement(u, m)).astype(np.float64)
  u64 = updates.astype(np.float64)
  np.testing.assert_allclose(out.mean(0), u64[byzantine].mean(0) + u64[~byzantine].sum(0) / n,
                             rtol=1e-5, atol=1e-6)
  # With honest updates that cancel (Σ_H u = 0) the backdoored mean replaces the update.
  u64[~byzantine] -= u64[~byzantine].mean(0)
  out = np.asarray(mp.model_replacement(jnp.asarray(u64, jnp.float32), m)).astype(np.float64)
  np.testing.assert_allclose(out.mean(0), u64[byzantine].mean(0), rtol=1e-5, atol=1e-6)


def test_model_replacement_is_the_backdoor_plus_the_scaling():
  attack = attacks.get("model_replacement", num_classes=10,
                       options={"target_label": 3, "fraction": 0.4, "boost": 4.0})
  assert attack.target_label == 3 and attack.trigger is not None
  x = np.zeros((50, 8, 8, 1), np.float32)
  y = np.full(50, 7)
  key = jax.random.key(1)
  for got, want in zip(attack.poison_data(key, x, y),
                       attacks.backdoor(key, x, y, target_label=3, fraction=0.4)):
    np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(attack.trigger(x), attacks.stamp_trigger(x))
  u = jnp.ones((6, 3))
  m = jnp.asarray([True, False, False, False, False, True])
  np.testing.assert_array_equal(attack.poison_updates(key, u, m)[:, 0], [4, 1, 1, 1, 1, 4])
  default = attacks.get("model_replacement", num_classes=10)
  np.testing.assert_array_equal(default.poison_updates(key, u, m)[:, 0], [3, 1, 1, 1, 1, 3])
  backdoor_options = attacks.options("backdoor")
  assert attacks.options("model_replacement") == pytest.approx(
      {**backdoor_options, "boost": math.nan}, nan_ok=True)
  with pytest.raises(ConfigError, match=r"model_replacement.target_label=12 must lie"):
    attacks.get("model_replacement", num_classes=10, options={"target_label": 12})
  with pytest.raises(ConfigError, match="changes class labels"):
    attacks.get("model_replacement", num_classes=None)
  with pytest.raises(ConfigError, match="boost"):
    attacks.get("model_replacement", num_classes=10, options={"boost": 0.0})
  assert "model_replacement" in attacks.data_poisoning_names()


@pytest.mark.slow
def test_one_replacing_client_backdoors_the_mean_faster_than_a_plain_backdoor():
  from fedjax_robust import experiment  # pylint: disable=g-import-not-at-top
  from tiny_config import get_config  # pylint: disable=g-import-not-at-top
  success = {}
  for attack in ("model_replacement", "backdoor"):
    c = get_config()
    c.num_clients, c.f, c.num_samples = 10, 1, 2
    c.honest_set_options.fixed_count.num_byzantine = 1
    c.aggregator, c.attack, c.model = "mean", attack, "mlp"
    getattr(c.attack_options, attack).fraction = 0.5
    c.data.partition = "iid"
    c.training.num_rounds, c.training.eval_every = 30, 30
    out = experiment.run(c, log=lambda _: None).runs["mean"]
    success[attack] = out.metrics["backdoor_accuracy"][-1]
    assert np.all(out.metrics["test_accuracy"][-1] > 0.7)
  # Measured: 1.00 / 0.99 with γ = n/b = 10 against 0.50 / 0.58 unscaled, after 30 rounds.
  assert np.all(success["model_replacement"] > 0.9), success
  assert np.all(success["model_replacement"] > success["backdoor"] + 0.2), success


# ------------------------------------------------------------------------ adaptive attack
def np_damage(rule, updates, byzantine, poisoned):
  mu = updates[~byzantine].astype(np.float64).mean(0)
  return float(np.linalg.norm(np.asarray(rule(jnp.asarray(poisoned)), np.float64) - mu))


def run_adaptive(updates, byzantine, rule, **options):
  return np.asarray(jax.jit(lambda u, m: mp.adaptive(u, m, rule, **options))(
      jnp.asarray(updates), jnp.asarray(byzantine)))


@pytest.mark.parametrize("rule_name", ["trimmed_mean",
                                       pytest.param("median", marks=pytest.mark.slow)])
def test_adaptive_is_never_worse_than_any_single_direction(rule_name):
  rng = np.random.default_rng(8)
  n, d = 11, 12
  updates = (rng.normal(size=(n, d)) * rng.uniform(0.2, 2.0, size=d) + 0.3).astype(np.float32)
  byzantine = np.zeros(n, bool)
  byzantine[[0, 3, 8]] = True
  rule = {"trimmed_mean": functools.partial(trimmed_mean_rule, f=3),
          "median": median_rule}[rule_name]
  names = mp.ADAPTIVE_DIRECTIONS

  @jax.jit   # one compile: the search over all directions, each alone, and the optimal attacks
  def everything(u, m):
    return (mp.adaptive(u, m, rule, evals=12),
            [mp.adaptive(u, m, rule, evals=12, directions=(name,)) for name in names],
            mp.optimal_alie(u, m, rule, evals=12), mp.optimal_ipm(u, m, rule, evals=12))

  out, singles, alie, ipm = jax.tree.map(np.asarray, everything(jnp.asarray(updates),
                                                                 jnp.asarray(byzantine)))
  np.testing.assert_array_equal(out[~byzantine], updates[~byzantine])
  assert np.all(out[byzantine] == out[byzantine][0])
  best = np_damage(rule, updates, byzantine, out)
  damages = {name: np_damage(rule, updates, byzantine, x) for name, x in zip(names, singles)}
  assert best >= max(damages.values()) * (1 - 1e-5), (best, damages)
  assert best > damages["plus_std"] * (1 + 1e-3)   # here it beats `optimal_alie`'s family
  assert best > np_damage(rule, updates, byzantine, updates)   # it does damage
  # `plus_std` and `ipm` alone are `optimal_alie` and `optimal_ipm`.
  np.testing.assert_allclose(singles[names.index("plus_std")], alie, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(singles[names.index("ipm")], ipm, rtol=1e-5, atol=1e-6)


def test_adaptive_finds_the_best_direction_when_it_is_known():
  # Under the mean, the damage of a + τp is ‖(b/n)(a + τp − μ)‖: linear in τ, so every
  # direction's search expands alike to τ* = δ(2^(evals−1) − 1) and the largest ‖p‖ wins.
  rng = np.random.default_rng(9)
  n, d, evals = 10, 16, 8
  byzantine = np.zeros(n, bool)
  byzantine[[1, 6]] = True
  tau = 10.0 * (2 ** (evals - 1) - 1)
  # Small spread, small mean: ‖sign(μ)‖ = 4 beats ‖σ‖ ≈ 0.2, ‖μ/‖μ‖‖ = 1 and −τμ's ‖μ‖(1 + 1/τ).
  updates = (rng.choice([-0.1, 0.1], size=d) + 0.05 * rng.normal(size=(n, d))).astype(np.float32)
  mu = updates[~byzantine].mean(0)
  out = run_adaptive(updates, byzantine, mean_rule, evals=evals)
  np.testing.assert_allclose(out[byzantine][0], mu - tau * np.sign(mu), rtol=1e-5)
  np.testing.assert_array_equal(out[~byzantine], updates[~byzantine])
  # Large spread: −σ (ALIE's direction, ‖σ‖ ≈ 20) beats sign (4), unit (1) and ipm (‖μ‖ ≈ 2).
  updates = (rng.choice([-0.5, 0.5], size=d) + 5.0 * rng.normal(size=(n, d))).astype(np.float32)
  mu = updates[~byzantine].astype(np.float64).mean(0)
  sigma = updates[~byzantine].astype(np.float64).std(0, ddof=1)
  out = run_adaptive(updates, byzantine, mean_rule, evals=evals,
                     directions=("unit_vec", "sign", "ipm", "std"))
  np.testing.assert_allclose(out[byzantine][0], mu - tau * sigma, rtol=1e-4)


def test_adaptive_is_registered_batched_and_checks_its_options():
  assert {"fang_krum", "model_replacement", "adaptive"} <= set(attacks.names())
  assert {"fang_krum", "adaptive"} <= set(attacks.model_poisoning_names())
  attack = attacks.get("adaptive", num_classes=None,
                       options={"directions": ("sign", "std"), "evals": 6})
  rng = np.random.default_rng(10)
  x = jnp.asarray(rng.normal(size=(3, 9, 8)), jnp.float32)
  masks = jnp.asarray(rng.random((3, 9)) < 0.3)
  rule = functools.partial(trimmed_mean_rule, f=2)
  key = jax.random.key(0)
  batched = jax.jit(jax.vmap(lambda u, m: attack.poison_updates(key, u, m, rule)))(x, masks)
  one = jax.jit(lambda u, m: attack.poison_updates(key, u, m, rule))
  for s in range(3):
    single = one(x[s], masks[s])
    np.testing.assert_allclose(batched[s], single, rtol=1e-5, atol=1e-6)
  for bad in ({"directions": ()}, {"directions": ("sign", "cosine")}, {"evals": 0}):
    with pytest.raises(ConfigError, match="outside its domain"):
      attacks.get("adaptive", num_classes=10, options=bad)
  with pytest.raises(ValueError, match="need the server's aggregation"):
    attack.poison_updates(key, x[0], masks[0])
