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


# ----------------------------------------------------------------------- the law objects
RING6 = graphs.ring(6)
SPECS6 = [
    {"name": "fixed_count", "num_byzantine": 2},
    {"name": "fixed_count", "num_byzantine": 1, "weights": (1.0, 2.0, 3.0, 4.0, 5.0, 6.0)},
    {"name": "bernoulli", "p": (0.0, 0.1, 0.2, 0.3, 0.5, 0.9)},
    {"name": "beta_bernoulli", "a": 0.5, "b": 2.0},
    {"name": "clusters", "num_clusters": 2, "pi": (0.1, 0.6), "q1": 0.7, "q0": 0.05},
    {"name": "graph_copula", "p": 0.2, "tau": 0.4, "adjacency": RING6},
    {"name": "ising", "h": -1.0, "J": 1.2, "sweeps": 30, "adjacency": RING6},
    {"name": "cascade", "p0": 0.1, "q": 0.5, "adjacency": RING6},
]


def _closed_form_byzantine_marginals(spec, n):
  """P(i Byzantine) from the laws' definitions (None where there is no closed form here)."""
  name = spec["name"]
  if name == "fixed_count" and "weights" not in spec:
    return np.full(n, spec["num_byzantine"] / n)
  if name in ("bernoulli", "graph_copula"):
    return np.broadcast_to(np.asarray(spec["p"], float), (n,))
  if name == "beta_bernoulli":
    return np.full(n, spec["a"] / (spec["a"] + spec["b"]))
  if name == "clusters":
    pi = np.repeat(spec["pi"], n // spec["num_clusters"])
    return pi * spec["q1"] + (1 - pi) * spec["q0"]
  if name == "ising":
    states, p = exact_ising(spec["adjacency"], spec["h"], spec["J"])
    return p @ states
  return None


@pytest.mark.parametrize("spec", SPECS6, ids=lambda s: s["name"])
def test_law_round_trips_its_spec_and_its_marginals_match_its_draws(spec):
  law = honest_sets.law(spec, 6)
  assert law.spec == spec and list(law.spec) == list(spec) and law.name == spec["name"]
  assert law.spec is not law.spec                     # a new dict each time: safe to change
  honest, exact = law.marginals()
  byzantine, exact_b = law.byzantine_marginals()
  assert exact == exact_b == (spec["name"] in ("bernoulli", "graph_copula"))
  np.testing.assert_allclose(honest + byzantine, 1.0, atol=1e-12)
  # Against the empirical frequency of independent draws (another key): the binomial s.e. of
  # those, plus that of the law's own Monte Carlo draws where it is not exact.
  draws = ~np.asarray(law.sample(jax.random.key(11), S))
  var = byzantine * (1 - byzantine) * (1 / S + (0 if exact else 1 / honest_sets.MONTE_CARLO))
  np.testing.assert_array_less(np.abs(draws.mean(0) - byzantine), 4 * np.sqrt(var) + 1e-12)
  reference = _closed_form_byzantine_marginals(spec, 6)
  if reference is not None:
    tol = 0 if exact else 4 * np.sqrt(reference * (1 - reference) / honest_sets.MONTE_CARLO)
    np.testing.assert_array_less(np.abs(byzantine - reference), tol + 1e-12)


@pytest.mark.parametrize("spec", SPECS6, ids=lambda s: s["name"])
def test_law_count_pmf_is_exact_where_it_says_so(spec):
  law = honest_sets.law(spec, 6)
  pmf, exact = law.count_pmf()
  assert exact == (spec["name"] in ("fixed_count", "bernoulli", "beta_bernoulli", "clusters"))
  assert pmf.shape == (7,) and abs(pmf.sum() - 1) < 1e-12
  counts = np.bincount((~np.asarray(law.sample(jax.random.key(12), S))).sum(1), minlength=7) / S
  tol = 4 * np.sqrt(pmf * (1 - pmf) * (1 / S + (0 if exact else 1 / honest_sets.MONTE_CARLO)))
  np.testing.assert_array_less(np.abs(counts - pmf), tol + 1e-12)
  if not exact:   # Monte Carlo: the law's own draws, counted
    own = np.bincount((~law.monte_carlo_draws()).sum(1), minlength=7) / honest_sets.MONTE_CARLO
    np.testing.assert_array_equal(pmf, own)
    with pytest.raises(NotImplementedError, match=spec["name"]):
      law.cluster_failure_probabilities(np.ones(2, int))


def test_bernoulli_count_pmf_against_convolution_and_scipy():
  p = np.array([0.05, 0.3, 0.5, 0.7, 0.99, 0.0, 0.2, 0.45])
  pmf, exact = honest_sets.law({"name": "bernoulli", "p": tuple(p)}, 8).count_pmf()
  convolved = np.array([1.0])
  for pi in p:
    convolved = np.convolve(convolved, [1 - pi, pi])
  assert exact
  np.testing.assert_allclose(pmf, convolved, atol=1e-14)
  np.testing.assert_allclose(pmf, stats.poisson_binom.pmf(np.arange(9), p), atol=1e-12)
  equal, _ = honest_sets.law({"name": "bernoulli", "p": 0.3}, 30).count_pmf()
  np.testing.assert_allclose(equal, stats.binom.pmf(np.arange(31), 30, 0.3), atol=1e-13)


@pytest.mark.parametrize("spec,key,expected", [
    ({"name": "bernoulli", "p": (0.1, 0.4, 0.7)}, "p", (0.17, 0.68, 1.0)),
    ({"name": "bernoulli", "p": 0.3}, "p", 0.51),
    ({"name": "clusters", "num_clusters": 3}, "pi", 0.34),          # the default π = 0.2
    ({"name": "graph_copula", "tau": 2.0, "p": 0.7}, "p", 1.0),     # clipped to 1
    ({"name": "cascade", "q": 0.2}, "p0", 0.085),                   # the default p0 = 0.05
])
def test_scaled_multiplies_the_corruption_probability_and_clips_it(spec, key, expected):
  scaled = honest_sets.law(spec, 3).scaled(1.7)
  np.testing.assert_allclose(scaled.spec[key], expected, rtol=1e-12)
  assert {k: v for k, v in scaled.spec.items() if k != key} == {k: v for k, v in spec.items()
                                                                   if k != key}
  assert list(scaled.spec)[:len(spec)] == list(spec)               # entries keep their order
  if key == "p":                                                  # exact marginals: the p_i
    p, exact = scaled.byzantine_marginals()
    assert exact
    np.testing.assert_allclose(p, np.broadcast_to(expected, (3,)), rtol=1e-12)


@pytest.mark.parametrize("spec", [{"name": "fixed_count", "num_byzantine": 1},
                                  {"name": "beta_bernoulli", "a": 1.0, "b": 2.0},
                                  {"name": "ising"}])
def test_scaled_is_refused_for_a_law_without_a_corruption_probability(spec):
  with pytest.raises(NotImplementedError, match=rf"'{spec['name']}' has no corruption probability"
                                                r".*'bernoulli', 'clusters', 'graph_copula', "
                                                r"'cascade'"):
    honest_sets.law(spec, 3).scaled(2.0)


def test_permuted_relabels_marginals_clusters_and_graph():
  perm = np.array([3, 0, 4, 1, 5, 2])
  p = (0.0, 0.1, 0.2, 0.3, 0.5, 0.9)
  moved = honest_sets.law({"name": "bernoulli", "p": p}, 6).permuted(perm)
  np.testing.assert_array_equal(moved.byzantine_marginals()[0], np.asarray(p)[perm])
  clustered = honest_sets.law({"name": "clusters", "num_clusters": 2}, 6)
  np.testing.assert_array_equal(clustered.permuted(perm).cluster_ids(), [1, 0, 1, 0, 1, 0])
  path = graphs.from_edges(6, [(0, 1), (1, 2)])
  cop = honest_sets.law({"name": "graph_copula", "adjacency": path}, 6).permuted(perm)
  a = cop.spec["adjacency"]
  assert a[1, 3] and a[3, 5] and a.sum() == 4      # client 1 is old 0, 3 is old 1, 5 is old 2
  with pytest.raises(ValueError, match="permutation of range"):
    clustered.permuted([0, 0, 1, 2, 3, 4])


def test_conditioned_sample_keeps_the_accepted_draws():
  law = honest_sets.law({"name": "bernoulli", "p": 0.3}, 10)
  key = jax.random.key(5)
  plain = np.asarray(law.sample(key, 500))
  kept = np.asarray(law.sample(key, 500, condition="b_le_f", f=2))
  b = (~kept).sum(1)
  assert b.max() <= 2
  accepted = (~plain).sum(1) <= 2
  np.testing.assert_array_equal(kept[accepted], plain[accepted])
  with pytest.raises(ValueError, match="unknown draw condition 'b_lt_f'"):
    law.sample(key, 5, condition="b_lt_f", f=2)


def test_cluster_failure_probabilities_against_the_closed_form():
  law = honest_sets.law({"name": "clusters", "num_clusters": 3, "pi": (0.1, 0.5, 0.3),
                         "q1": 0.6, "q0": 0.02}, 8)
  sizes = np.bincount(law.cluster_ids())
  pi = np.array([0.1, 0.5, 0.3])
  np.testing.assert_allclose(law.cluster_failure_probabilities(np.ones(3, int)),
                             pi * (1 - 0.4 ** sizes) + (1 - pi) * (1 - 0.98 ** sizes), atol=1e-14)
  # Every member Byzantine: π q1^m + (1 − π) q0^m.
  np.testing.assert_allclose(law.cluster_failure_probabilities(sizes),
                             pi * 0.6 ** sizes + (1 - pi) * 0.02 ** sizes, rtol=1e-12)


def test_law_objects_built_directly_and_their_checks():
  law = honest_sets.Bernoulli(num_clients=4, p=0.3)
  assert law.spec == {"name": "bernoulli", "p": 0.3}
  np.testing.assert_allclose(law.marginals()[0], 0.7)
  assert honest_sets.law(law.spec, 4).spec == law.spec
  assert honest_sets.options("clusters") == honest_sets.Clusters.parameters() == {
      "num_clusters": 5, "pi": 0.2, "q1": 0.8, "q0": 0.0, "assignment": None}
  with pytest.raises(ValueError, match=r"one entry per client \(4\), got shape \(3,\)"):
    honest_sets.law({"name": "bernoulli", "p": (0.1, 0.2, 0.3)}, 4)
  with pytest.raises(ValueError, match=r"num_byzantine must be an int in \[0, n=4\]"):
    honest_sets.law({"name": "fixed_count", "num_byzantine": 5}, 4)
  with pytest.raises(ValueError, match="needs the client graph"):
    honest_sets.law({"name": "cascade"}, 4).sample(jax.random.key(0), 2)
  with pytest.raises(ValueError, match=r"adjacency must be \[n, n\] = \[4, 4\]"):
    honest_sets.law({"name": "ising", "adjacency": graphs.ring(5)}, 4)
