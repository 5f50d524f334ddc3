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
  pmf, exact = honest_sets.byzantine_count_pmf({"name": "fixed_count", "num_byzantine": 2},
                                               num_clients=4)
  assert exact
  np.testing.assert_array_equal(pmf, [0, 0, 1, 0, 0])


@pytest.mark.parametrize("spec,match", [
    ({"name": "bernoulli", "p": 1.5}, r"bernoulli.p=1.5 is outside its domain: a finite float in \[0, 1\]"),
    ({"name": "bernoulli", "p": -0.1}, r"p=-0.1 is outside its domain"),
    ({"name": "bernoulli", "p": [0.1, 0.2]}, r"one entry per client \(5\), got shape \(2,\)"),
    ({"name": "fixed_count", "num_byzantine": 6}, r"num_byzantine must be an int in \[0, n=5\]"),
    ({"name": "bernouli", "p": 0.1}, r"unknown honest-set distribution 'bernouli'.*bernoulli"),
    ({"name": "bernoulli", "q": 0.1}, r"takes the parameters \['p'\] .*unknown \['q'\]"),
])
def test_bad_specs_are_rejected(spec, match):
  with pytest.raises(ValueError, match=match):
    honest_sets.sample(jax.random.key(0), spec, num_clients=5, num_samples=4)


def test_nonpositive_sample_count_is_rejected():
  with pytest.raises(ValueError, match=r"num_samples \(S\) must be a positive int, got 0"):
    honest_sets.bernoulli(jax.random.key(0), num_clients=5, p=0.1, num_samples=0)


# ----------------------------------------------------------------------- correlated μ_H
from fedjax_robust import graphs  # pylint: disable=g-import-not-at-top,wrong-import-position


def byz(spec, n, s=S, seed=0):
  return ~np.asarray(honest_sets.sample(jax.random.key(seed), spec, num_clients=n,
                                        num_samples=s))


def tv(a, b):
  return 0.5 * np.abs(np.asarray(a) - np.asarray(b)).sum()


def test_weighted_fixed_count_picks_proportionally_to_weights():
  w = np.array([1.0, 2.0, 3.0, 4.0])
  b = byz({"name": "fixed_count", "num_byzantine": 1, "weights": w}, 4)
  np.testing.assert_allclose(b.mean(0), w / w.sum(), atol=4 * np.sqrt(0.25 / S))


def test_beta_bernoulli_law():
  spec = {"name": "beta_bernoulli", "a": 0.5, "b": 2.0}
  b = byz(spec, 10)
  np.testing.assert_allclose(b.mean(0), 0.2, atol=0.02)
  pmf, exact = honest_sets.byzantine_count_pmf(spec, num_clients=10)
  assert exact and tv(np.bincount(b.sum(1), minlength=11) / S, pmf) < 0.02
  np.testing.assert_allclose(pmf, stats.betabinom.pmf(np.arange(11), 10, 0.5, 2.0), atol=1e-12)


def test_clusters_law():
  spec = {"name": "clusters", "num_clusters": 3, "pi": [0.1, 0.5, 0.3], "q1": 0.9, "q0": 0.05}
  b = byz(spec, 9)
  expected = np.repeat([0.1 * 0.9 + 0.9 * 0.05, 0.5 * 0.9 + 0.5 * 0.05, 0.3 * 0.9 + 0.7 * 0.05], 3)
  np.testing.assert_allclose(b.mean(0), expected, atol=0.015)
  pmf, exact = honest_sets.byzantine_count_pmf(spec, num_clients=9)
  assert exact and tv(np.bincount(b.sum(1), minlength=10) / S, pmf) < 0.02
  # Members of one cluster are positively correlated, members of different ones are not.
  corr = np.corrcoef(b.T.astype(float))
  assert corr[0, 1] > 0.3 and abs(corr[0, 4]) < 0.03


def test_graph_copula_has_exact_marginals_and_correlation_along_edges():
  a = graphs.ring(10)
  b = byz({"name": "graph_copula", "p": 0.2, "tau": 0.3, "adjacency": a}, 10)
  np.testing.assert_allclose(b.mean(0), 0.2, atol=0.015)
  corr = np.corrcoef(b.T.astype(float))
  assert corr[0, 1] > 0.2 > corr[0, 5] - 0.1  # neighbours more correlated than far clients
  independent = byz({"name": "graph_copula", "p": 0.2, "tau": 1e6, "adjacency": a}, 10)
  assert abs(np.corrcoef(independent.T.astype(float))[0, 1]) < 0.03


def exact_ising(a, h, j):
  n = len(a)
  states = np.array(list(itertools.product((0, 1), repeat=n)), float)
  energy = states @ np.full(n, h) + j * 0.5 * np.einsum("si,ij,sj->s", states, a, states)
  p = np.exp(energy - energy.max())
  return states, p / p.sum()


def test_ising_gibbs_chains_match_the_exact_law():
  a = graphs.ring(6)
  states, p = exact_ising(a, -1.0, 1.2)
  b = byz({"name": "ising", "h": -1.0, "J": 1.2, "sweeps": 50, "adjacency": a}, 6)
  np.testing.assert_allclose(b.mean(0), p @ states, atol=0.015)
  pair = p @ (states[:, 0] * states[:, 1])
  assert abs(np.mean(b[:, 0] & b[:, 1]) - pair) < 0.015
  counts = np.bincount(b.sum(1), minlength=7) / S
  assert tv(counts, np.bincount(states.sum(1).astype(int), weights=p, minlength=7)) < 0.02


def test_cascade_matches_brute_force_enumeration():
  a = graphs.from_edges(4, [(0, 1), (1, 2), (2, 3)])   # a path
  p0, q = 0.2, 0.5
  edges = [(0, 1), (1, 2), (2, 3)]
  marginal = np.zeros(4)
  for seeds in itertools.product((0, 1), repeat=4):
    for live in itertools.product((0, 1), repeat=3):
      prob = np.prod([p0 if s else 1 - p0 for s in seeds]) * np.prod([q if e else 1 - q for e in live])
      reached = set(np.flatnonzero(seeds))
      for _ in range(4):
        for (u, v), on in zip(edges, live):
          if on and (u in reached or v in reached):
            reached |= {u, v}
      marginal[list(reached)] += prob
  b = byz({"name": "cascade", "p0": p0, "q": q, "adjacency": a}, 4)
  np.testing.assert_allclose(b.mean(0), marginal, atol=0.015)


def test_monte_carlo_count_law_for_graph_samplers():
  a = graphs.ring(6)
  pmf, exact = honest_sets.byzantine_count_pmf(
      {"name": "ising", "h": -1.0, "J": 1.2, "sweeps": 50, "adjacency": a}, num_clients=6,
      num_monte_carlo=20000)
  states, p = exact_ising(a, -1.0, 1.2)
  assert not exact
  assert tv(pmf, np.bincount(states.sum(1).astype(int), weights=p, minlength=7)) < 0.02


def test_expected_objective_weights_match_monte_carlo():
  p = np.array([0.05, 0.1, 0.3, 0.5, 0.7, 0.2, 0.0])
  w = honest_sets.expected_objective_weights(p, 7)
  h = ~byz({"name": "bernoulli", "p": p}, 7, s=200_000)
  mc = (h / np.maximum(h.sum(1, keepdims=True), 1)).mean(0)
  np.testing.assert_allclose(w, mc, atol=3e-3)
  # Σ_i w_i = P(S non-empty); with p_7 = 0 the set is never empty.
  np.testing.assert_allclose(w.sum(), 1.0, atol=1e-12)
  np.testing.assert_allclose(honest_sets.expected_objective_weights(0.5, 3).sum(), 1 - 0.5 ** 3,
                             atol=1e-12)


def test_graph_constructions():
  np.testing.assert_array_equal(graphs.ring(5).sum(1), 2)
  g = graphs.grid(6, width=3)
  assert g.sum() / 2 == 7 and g[0, 1] and g[0, 3] and not g[2, 3]
  er = graphs.erdos_renyi(200, 0.1, seed=1)
  assert abs(er.sum() / (200 * 199) - 0.1) < 0.01 and np.array_equal(er, er.T)
  sbm = graphs.stochastic_block([50, 50], 0.5, 0.02, seed=2)
  assert sbm[:50, :50].mean() > 0.4 and sbm[:50, 50:].mean() < 0.05
  knn = graphs.nearest_neighbors(np.array([[0.0], [0.1], [5.0], [5.2]]), k=1)
  np.testing.assert_array_equal(knn, graphs.from_edges(4, [(0, 1), (2, 3)]))
  for adjacency in (er, sbm, graphs.grid(12)):
    classes = graphs.greedy_coloring(adjacency)
    assert sorted(np.concatenate(classes).tolist()) == list(range(len(adjacency)))
    assert all(adjacency[np.ix_(c, c)].sum() == 0 for c in classes)
  with pytest.raises(ValueError, match="unknown graph kind 'star'"):
    graphs.build("star", 5)
