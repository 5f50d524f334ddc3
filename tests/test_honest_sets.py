"""μ_H samplers against their laws."""

import itertools

import jax
import numpy as np
import pytest
from scipy import stats

from fedjax_robust import honest_sets

S = 20000


def test_fixed_count_has_exactly_b_byzantine_and_uniform_marginals():
  masks = np.asarray(honest_sets.fixed_count(jax.random.key(0), num_clients=10, num_byzantine=3,
                                             num_samples=S))
  assert masks.shape == (S, 10) and masks.dtype == bool
  np.testing.assert_array_equal((~masks).sum(1), 3)
  marginal = (~masks).mean(0)
  tol = 4 * np.sqrt(0.3 * 0.7 / S)
  np.testing.assert_allclose(marginal, 0.3, atol=tol)


def test_fixed_count_pairs_are_uniform():
  """Every pair of clients is Byzantine together with probability C(n-2,b-2)/C(n,b)."""
  masks = ~np.asarray(honest_sets.fixed_count(jax.random.key(1), num_clients=6, num_byzantine=2,
                                              num_samples=S))
  pair = np.mean(masks[:, 0] & masks[:, 5])
  assert abs(pair - 1 / 15) < 4 * np.sqrt((1 / 15) * (14 / 15) / S)


def test_bernoulli_marginals_and_count_law():
  p = np.linspace(0.0, 0.6, 12)
  masks = np.asarray(honest_sets.bernoulli(jax.random.key(2), num_clients=12, p=p, num_samples=S))
  byz = ~masks
  np.testing.assert_allclose(byz.mean(0), p, atol=4 * np.sqrt(0.25 / S))
  counts = byz.sum(1)
  assert abs(counts.mean() - p.sum()) < 4 * np.sqrt(np.sum(p * (1 - p)) / S)
  pmf = honest_sets.poisson_binomial_pmf(p)
  empirical = np.bincount(counts, minlength=13) / S
  assert 0.5 * np.abs(empirical - pmf).sum() < 0.02  # total variation


def test_bernoulli_scalar_p():
  masks = np.asarray(honest_sets.sample(jax.random.key(3), {"name": "bernoulli", "p": 0.2},
                                        num_clients=25, num_samples=S))
  assert abs((~masks).sum(1).mean() - 5.0) < 4 * np.sqrt(25 * 0.16 / S)


def test_poisson_binomial_pmf_matches_binomial_and_brute_force():
  np.testing.assert_allclose(honest_sets.poisson_binomial_pmf(np.full(20, 0.3)),
                             stats.binom.pmf(np.arange(21), 20, 0.3), atol=1e-12)
  p = np.array([0.1, 0.5, 0.7, 0.25, 0.9])
  brute = np.zeros(6)
  for bits in itertools.product((0, 1), repeat=5):
    brute[sum(bits)] += np.prod([pi if bit else 1 - pi for pi, bit in zip(p, bits)])
  np.testing.assert_allclose(honest_sets.poisson_binomial_pmf(p), brute, atol=1e-12)


def test_byzantine_count_pmf_of_specs():
  np.testing.assert_array_equal(
      honest_sets.byzantine_count_pmf({"name": "fixed_count", "num_byzantine": 2}, num_clients=4),
      [0, 0, 1, 0, 0])


@pytest.mark.parametrize("spec,match", [
    ({"name": "bernoulli", "p": 1.5}, r"p must lie in \[0, 1\], got 1.5"),
    ({"name": "bernoulli", "p": -0.1}, r"got -0.1"),
    ({"name": "bernoulli", "p": [0.1, 0.2]}, r"one entry per client \(n=5\)"),
    ({"name": "fixed_count", "num_byzantine": 6}, r"num_byzantine must be an int in \[0, n=5\]"),
    ({"name": "bernouli", "p": 0.1}, r"unknown honest-set distribution 'bernouli'.*bernoulli"),
    ({"name": "bernoulli", "q": 0.1}, r"takes exactly the parameters \['p'\]"),
])
def test_bad_specs_are_rejected(spec, match):
  with pytest.raises(ValueError, match=match):
    honest_sets.sample(jax.random.key(0), spec, num_clients=5, num_samples=4)


def test_nonpositive_sample_count_is_rejected():
  with pytest.raises(ValueError, match=r"num_samples \(S\) must be a positive int, got 0"):
    honest_sets.bernoulli(jax.random.key(0), num_clients=5, p=0.1, num_samples=0)
