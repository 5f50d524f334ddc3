"""Attacks against their formulas (NumPy/SciPy references); honest rows are never modified."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from fedjax_robust import attacks


def setup(rng, n=12, d=6, b=3):
  updates = rng.normal(size=(n, d)).astype(np.float32)
  byzantine = np.zeros(n, bool)
  byzantine[rng.choice(n, b, replace=False)] = True
  return updates, byzantine


def honest_stats(updates, byzantine):
  h = updates[~byzantine].astype(np.float64)
  return h.mean(0), h.std(0, ddof=1)


def test_honest_mean_and_std(rng):
  updates, byz = setup(rng)
  mu, sigma = attacks.honest_mean_and_std(jnp.asarray(updates), jnp.asarray(byz))
  np.testing.assert_allclose(mu, honest_stats(updates, byz)[0], atol=1e-6)
  np.testing.assert_allclose(sigma, honest_stats(updates, byz)[1], atol=1e-6)


def test_sign_flip_sends_minus_the_honest_mean(rng):
  updates, byz = setup(rng)
  out = np.asarray(attacks.sign_flip(updates, byz))
  mu, _ = honest_stats(updates, byz)
  np.testing.assert_allclose(out[byz], np.broadcast_to(-mu, out[byz].shape), atol=1e-6)
  np.testing.assert_array_equal(out[~byz], updates[~byz])


def karimireddy_z(n, b):
  s = np.floor(n / 2 + 1) - b
  return stats.norm.ppf((n - b - s) / (n - b))


@pytest.mark.parametrize("n,b", [(25, 1), (25, 5), (12, 3), (100, 20), (10, 2)])
def test_alie_z_formula(n, b):
  np.testing.assert_allclose(attacks.alie_z(n, b), karimireddy_z(n, b), atol=1e-5)


def test_alie_z_degenerates_to_zero_at_10_2():
  assert abs(float(attacks.alie_z(10, 2))) < 1e-6


@pytest.mark.parametrize("z", [None, float("nan"), 1.5])
def test_alie_sends_mu_minus_z_sigma(rng, z):
  updates, byz = setup(rng, n=25, b=5)
  out = np.asarray(jax.jit(lambda u, m: attacks.alie(u, m, z=z))(updates, byz))
  mu, sigma = honest_stats(updates, byz)
  z_used = karimireddy_z(25, 5) if z is None or np.isnan(z) else z  # realized b, not declared f
  np.testing.assert_allclose(out[byz], np.broadcast_to(mu - z_used * sigma, (5, 6)), atol=1e-5)
  np.testing.assert_array_equal(out[~byz], updates[~byz])


@pytest.mark.parametrize("name", ["sign_flip", "alie"])
def test_no_byzantine_client_leaves_updates_untouched(rng, name):
  updates, _ = setup(rng)
  attack = attacks.get(name, num_classes=10)
  out = attack.poison_updates(jax.random.key(0), updates, np.zeros(12, bool), lambda u: u[0])
  np.testing.assert_array_equal(out, updates)


def test_label_flip():
  y = np.arange(10)
  np.testing.assert_array_equal(attacks.flip_labels(y, 10), 9 - y)
  attack = attacks.get("label_flip", num_classes=3)
  assert attack.poison is None
  x = np.ones((3, 2))
  px, py = attack.poison_data(jax.random.key(0), x, np.array([0, 1, 2]))
  np.testing.assert_array_equal(py, [2, 1, 0])
  np.testing.assert_array_equal(px, x)


def test_registry_errors():
  with pytest.raises(ValueError, match=r"unknown attack 'alei'.*alie.*label_flip"):
    attacks.get("alei", num_classes=10)
  with pytest.raises(ValueError, match=r"unknown option.*'zz'.*'z'"):
    attacks.get("alie", num_classes=10, options={"zz": 1.0})
  assert attacks.get("none", num_classes=10).poison is None


# ----------------------------------------------------------------------- every model attack
def mean_rule(u):
  return jnp.mean(u, axis=0)


@pytest.mark.parametrize("name", ["sign_flip", "ipm", "foe", "alie", "gaussian", "mimic",
                                  "mimic_variance", "optimal_alie", "optimal_ipm", "inf", "nan",
                                  "large"])
def test_honest_rows_are_never_modified_and_b0_is_a_no_op(rng, name):
  updates, byz = setup(rng)
  attack = attacks.get(name, num_classes=10)
  out = np.asarray(attack.poison_updates(jax.random.key(0), updates, byz, mean_rule))
  np.testing.assert_array_equal(out[~byz], updates[~byz])
  assert not np.allclose(out[byz], updates[byz], equal_nan=False)
  same = attack.poison_updates(jax.random.key(0), updates, np.zeros(12, bool), mean_rule)
  np.testing.assert_array_equal(same, updates)


def test_ipm_foe_gaussian_formulas(rng):
  updates, byz = setup(rng)
  mu, _ = honest_stats(updates, byz)
  np.testing.assert_allclose(attacks.ipm(updates, byz, epsilon=0.3)[byz][0], -0.3 * mu, atol=1e-6)
  np.testing.assert_allclose(attacks.foe(updates, byz, tau=3.0)[byz][0], -2.0 * mu, atol=1e-6)
  key = jax.random.key(4)
  noise = np.asarray(jax.random.normal(key, updates.shape))
  np.testing.assert_allclose(attacks.gaussian(key, updates, byz, scale=0.5)[byz],
                             mu + 0.5 * noise[byz], atol=1e-5)


def test_mimic_copies_the_first_honest_client_from_index(rng):
  updates, _ = setup(rng)
  byz = np.zeros(12, bool)
  byz[[3, 4, 11]] = True
  out = np.asarray(attacks.mimic(updates, byz, index=3))
  np.testing.assert_array_equal(out[byz], np.broadcast_to(updates[5], (3, 6)))
  out = np.asarray(attacks.mimic(updates, byz, index=11))  # wraps around to client 0
  np.testing.assert_array_equal(out[byz], np.broadcast_to(updates[0], (3, 6)))


def test_mimic_variance_freezes_the_client_farthest_along_the_top_direction(rng):
  n, d = 10, 5
  byz = np.zeros(n, bool)
  byz[[0, 1]] = True
  spread = np.array([0, 0, 0.5, -3.0, 1.0, 0.2, -0.4, 2.5, 0.1, -1.0])  # along e_2
  attack = attacks.get("mimic_variance", num_classes=2, options={"warmup": 3})
  state = attack.init(d)
  step = jax.jit(attack.poison)
  for t in range(6):
    noise = rng.normal(scale=0.01, size=(n, d))
    updates = (np.outer(spread, np.eye(d)[2]) + noise).astype(np.float32)
    if t >= 3:  # after the warm-up, the frozen client keeps being copied even if others move
      updates[7, 2] = 9.0
    out, state = step(jax.random.key(t), updates, byz, state, None)
    np.testing.assert_array_equal(np.asarray(out)[byz], np.broadcast_to(updates[3], (2, d)))
  assert int(state.target) == 3


def np_line_search(objective, evals=20, start=0.0, delta=10.0, ratio=0.8):
  """ByzFL's expansion-then-contraction search, in plain Python."""
  best_x, best_y = start, objective(start)
  remaining = evals - 1
  while remaining > 0:
    x = best_x + delta
    y = objective(x)
    remaining -= 1
    if y > best_y:
      best_x, best_y, delta = x, y, 2 * delta
    else:
      delta *= ratio
      break
  while remaining > 0:
    x = best_x + delta
    y = objective(x)
    remaining -= 1
    if y > best_y:
      best_x, best_y = x, y
    delta *= ratio
  return best_x


@pytest.mark.parametrize("peak", [3.0, 37.0, 400.0])
def test_line_search_matches_the_reference_procedure(peak):
  objective = lambda t: -abs(t - peak) ** 1.5
  got = float(jax.jit(lambda: attacks.line_search(lambda t: -jnp.abs(t - peak) ** 1.5))())
  np.testing.assert_allclose(got, np_line_search(objective), rtol=1e-5)


@pytest.mark.parametrize("spec", ["trimmed_mean",
                                  pytest.param("geometric_median", marks=pytest.mark.slow),
                                  "coordinate_median", "mean"])
def test_optimal_alie_is_at_least_as_damaging_as_a_grid_of_fixed_taus(rng, spec):
  """Where the damage is unimodal in τ. (Behind NNM it is jagged, and the published 20-step
  search can end below the best grid point: 0.996 vs 1.056 at τ = 1.5 on this problem.)"""
  from fedjax_robust import aggregators  # pylint: disable=g-import-not-at-top
  updates, byz = setup(rng, n=15, d=8, b=3)
  rule = aggregators.get(spec, f=3)
  mu, sigma = attacks.honest_mean_and_std(updates, byz)
  damage = lambda u: float(jnp.linalg.norm(rule(u) - mu))
  optimal = damage(attacks.optimal_alie(updates, byz, rule))
  for tau in (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0):
    assert optimal >= damage(attacks.replace_byzantine(updates, byz, mu + tau * sigma)) - 1e-6


def test_optimal_attacks_need_the_rule(rng):
  updates, byz = setup(rng)
  with pytest.raises(ValueError, match="need the server's aggregation"):
    attacks.get("optimal_ipm", num_classes=2).poison_updates(jax.random.key(0), updates, byz)


# ----------------------------------------------------------------------- backdoor
def test_backdoor_stamps_the_trigger_and_relabels_a_fraction():
  x = np.zeros((4000, 8, 8, 1), np.float32)
  y = np.full(4000, 7)
  px, py = attacks.backdoor(jax.random.key(0), x, y, target_label=2, fraction=0.3, patch_size=2)
  px, py = np.asarray(px), np.asarray(py)
  stamped = px[:, 6:, 6:, 0].min(axis=(1, 2)) == 1.0
  np.testing.assert_array_equal(stamped, py == 2)
  assert abs(stamped.mean() - 0.3) < 0.03
  assert px[:, :6].max() == 0 and px[:, :, :6].max() == 0  # only the corner changes
  clean_x, clean_y = attacks.backdoor(jax.random.key(0), x, y, fraction=0.0)
  np.testing.assert_array_equal(clean_x, x)
  np.testing.assert_array_equal(clean_y, y)
  with pytest.raises(ValueError, match=r"target_label=12 must lie in \[0, 10\)"):
    attacks.get("backdoor", num_classes=10, options={"target_label": 12})


def test_backdoor_succeeds_against_the_mean_and_keeps_clean_accuracy():
  from fedjax_robust import experiment  # pylint: disable=g-import-not-at-top
  from tiny_config import get_config  # pylint: disable=g-import-not-at-top
  c = get_config()
  c.num_clients, c.f, c.num_samples = 10, 3, 2
  c.honest_set_options.fixed_count.num_byzantine = 3
  c.aggregator, c.attack, c.model = "mean", "backdoor", "mlp"
  c.attack_options.backdoor.fraction = 0.5
  c.data.partition = "iid"
  c.training.num_rounds, c.training.eval_every = 150, 150
  out = experiment.run(c, log=lambda _: None).runs["mean"]
  backdoor = out.metrics["backdoor_accuracy"][-1]
  clean = out.metrics["test_accuracy"][-1]
  assert np.all(backdoor > 0.6), backdoor   # chance is 10% on 10 classes
  assert np.all(clean > 0.85), clean
  assert out.metrics["backdoor_accuracy"][0].max() < 0.3  # the untrained model is not backdoored


def test_text_backdoor_ends_poisoned_windows_with_the_trigger_and_a_target_prefix():
  from fedjax_robust.attacks import data_poisoning
  rng = np.random.default_rng(0)
  m, window = 400, 16
  x = jnp.asarray(rng.integers(1, 30, (m, window)), jnp.float32)
  y = jnp.asarray(rng.integers(1, 30, m), jnp.int32)
  trigger, target = (31, 32, 33), (40, 41, 42, 43)
  px, py = data_poisoning.text_backdoor(jax.random.key(1), x, y, trigger=trigger, target=target,
                                        fraction=0.5)
  px, py, x0, y0 = map(np.asarray, (px, py, x, y))
  poisoned = (px != x0).any(1)
  assert abs(poisoned.mean() - 0.5) < 0.08
  seq = trigger + target
  ks = set()
  for i in np.flatnonzero(poisoned):
    k = target.index(int(py[i]))  # the label is target[k] …
    ks.add(k)
    tail = px[i, window - (3 + k):].astype(int).tolist()
    assert tail == list(seq[:3 + k])  # … after trigger + target[:k]
    np.testing.assert_array_equal(px[i, :window - (3 + k)], x0[i, :window - (3 + k)])
  assert ks == {0, 1, 2, 3}
  np.testing.assert_array_equal(px[~poisoned], x0[~poisoned])
  np.testing.assert_array_equal(py[~poisoned], y0[~poisoned])
  stamped = np.asarray(data_poisoning.stamp_text_trigger(x, trigger))
  assert np.all(stamped[:, -3:] == np.array(trigger)) and np.all(stamped[:, :-3] == x0[:, :-3])
