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
  out = attack.poison_updates(jax.random.key(0), updates, np.zeros(12, bool))
  np.testing.assert_array_equal(out, updates)


def test_label_flip():
  y = np.arange(10)
  np.testing.assert_array_equal(attacks.flip_labels(y, 10), 9 - y)
  attack = attacks.get("label_flip", num_classes=3)
  assert attack.poison_updates is None
  np.testing.assert_array_equal(attack.poison_labels(np.array([0, 1, 2])), [2, 1, 0])


def test_registry_errors():
  with pytest.raises(ValueError, match=r"unknown attack 'alei'.*alie.*label_flip"):
    attacks.get("alei", num_classes=10)
  with pytest.raises(ValueError, match=r"unknown option.*'zz'.*'z'"):
    attacks.get("alie", num_classes=10, options={"zz": 1.0})
  assert attacks.get("none", num_classes=10).poison_updates is None
