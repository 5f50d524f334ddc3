"""MinMax and MinSum (Shejwalkar & Houmansadr, NDSS 2021) against a NumPy transcription of the
authors' search, and the constraint each attack is defined by."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_robust import attacks
from fedjax_robust.attacks import model_poisoning as mp
from fedjax_robust.errors import ConfigError


def np_attack(updates, byzantine, kind, perturbation, gamma_init=10.0):
  """The authors' `our_attack_dist` / `our_attack_score` in float64 NumPy: benign rows only, the
  halving search until |γ_succ − γ| ≤ 1e-5."""
  benign = updates[~byzantine].astype(np.float64)
  mu = benign.mean(0)
  deviation = {"unit_vec": mu / np.linalg.norm(mu), "sign": np.sign(mu),
               "std": benign.std(0, ddof=1)}[perturbation]
  distances = np.array([np.linalg.norm(benign - u, axis=1) ** 2 for u in benign])
  budget = distances.max() if kind == "min_max" else distances.sum(1).min()
  lamda, lamda_fail, lamda_succ = gamma_init, gamma_init, 0.0
  while abs(lamda_succ - lamda) > 1e-5:
    mal = mu - lamda * deviation
    d = np.linalg.norm(benign - mal, axis=1) ** 2
    cost = d.max() if kind == "min_max" else d.sum()
    if cost <= budget:
      lamda_succ = lamda
      lamda = lamda + lamda_fail / 2
    else:
      lamda = lamda - lamda_fail / 2
    lamda_fail /= 2
  return mu - lamda_succ * deviation, lamda_succ, mu, deviation, budget


# Each attack and each perturbation by default; the other three combinations under -m slow.
@pytest.mark.parametrize("kind,perturbation", [
    ("min_max", "std"), ("min_sum", "unit_vec"), ("min_sum", "sign"),
    *(pytest.param(k, p, marks=pytest.mark.slow)
      for k, p in (("min_max", "unit_vec"), ("min_max", "sign"), ("min_sum", "std")))])
def test_matches_the_authors_search_and_meets_its_constraint(kind, perturbation):
  rng = np.random.default_rng(7)
  n, d = 12, 40
  updates = rng.normal(0.3, 1.0, size=(n, d)).astype(np.float32)
  byzantine = np.zeros(n, bool)
  byzantine[[1, 4, 9]] = True
  updates[byzantine] = np.nan        # what a Byzantine client computed does not matter
  fn = getattr(mp, kind)
  out = np.asarray(jax.jit(lambda u, b: fn(u, b, perturbation=perturbation))(
      jnp.asarray(updates), jnp.asarray(byzantine)))
  want, gamma, mu, dev, budget = np_attack(updates, byzantine, kind, perturbation)
  np.testing.assert_array_equal(out[~byzantine], updates[~byzantine])
  np.testing.assert_allclose(out[byzantine], np.repeat(want[None], 3, 0), rtol=1e-4, atol=1e-4)
  assert 0 < gamma < 20
  benign = updates[~byzantine].astype(np.float64)

  def cost(g):
    dist = np.linalg.norm(benign - (mu - g * dev), axis=1) ** 2
    return dist.max() if kind == "min_max" else dist.sum()
  assert cost(gamma) <= budget < cost(gamma + 1e-3)   # the largest feasible γ (tight)


def test_registered_with_declared_options_and_batch_independent():
  attack = attacks.get("min_sum", num_classes=10, options={"perturbation": "sign"})
  with pytest.raises(ConfigError, match="perturbation"):
    attacks.get("min_max", num_classes=10, options={"perturbation": "cosine"})
  with pytest.raises(ConfigError, match="iterations"):
    attacks.get("min_max", num_classes=10, options={"iterations": 0})
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(5, 8, 16)), jnp.float32)
  masks = jnp.asarray(rng.random((5, 8)) < 0.3)
  key = jax.random.key(0)
  batched, _ = jax.vmap(lambda u, m: attack.poison(key, u, m, attack.init(16), None))(x, masks)
  for s in range(5):
    single, _ = attack.poison(key, x[s], masks[s], attack.init(16), None)
    np.testing.assert_allclose(batched[s], single, rtol=1e-5, atol=1e-6)
