"""Correlated server priors (issue 15): pairwise couplings against closed forms, the mean-field
posterior against a NumPy transcription, communities and cluster quantiles against Monte Carlo,
the misspecifications (permuted, scaled) against their definitions."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from fedjax_robust import config as config_lib
from fedjax_robust import graphs
from fedjax_robust import honest_sets
from fedjax_robust import server_prior
from fedjax_robust import sweep
from fedjax_robust.aggregators import prior_aware
from fedjax_robust.errors import ConfigError
from test_prior_aware import np_log_densities



def np_coupled_posterior_filter(x, p, coupling, iterations=3, faulty_scale=10.0, sweeps=20):
  """The documented coupled model in float64: densities written out, the mean-field updates as
  the docstring states them."""
  x, p, j = (np.asarray(v, np.float64) for v in (x, p, coupling))
  finite = np.isfinite(x).all(1)
  xf = np.where(finite[:, None], x, 0.0)
  centre = np.median(x[finite], axis=0)
  pf = 1 - p
  h = np.log(pf) - np.log1p(-pf) - j @ pf
  for _ in range(iterations):
    log_h, log_f = np_log_densities(xf, centre, finite, faulty_scale)
    evidence = np.where(finite, log_h - log_f, 0.0)
    q = np.where(finite, pf, 1.0)
    for _ in range(sweeps):
      q = 0.5 * q + 0.5 * np.where(finite, 1 / (1 + np.exp(-(h + j @ q - evidence))), 1.0)
    post = np.where(finite, 1 - q, 0.0)
    centre = post @ xf / post.sum()
  return centre, post


def _two_client_cluster_log_odds(pi, q1, q0):
  p11 = pi * q1 ** 2 + (1 - pi) * q0 ** 2
  p10 = pi * q1 * (1 - q1) + (1 - pi) * q0 * (1 - q0)
  p00 = pi * (1 - q1) ** 2 + (1 - pi) * (1 - q0) ** 2
  return math.log(p11 * p00 / p10 ** 2)


def test_coupling_is_the_log_odds_ratio_and_zero_across_independent_groups():
  assert server_prior.coupling({"name": "bernoulli", "p": 0.2}, 6) is None
  law = {"name": "clusters", "num_clusters": 2, "pi": 0.3, "q1": 0.7, "q0": 0.1}
  j = server_prior.coupling(law, 4)             # clusters {0, 1} and {2, 3}
  exact = _two_client_cluster_log_odds(0.3, 0.7, 0.1)
  assert j[0, 1] == pytest.approx(exact, abs=0.05) and j[2, 3] == pytest.approx(exact, abs=0.05)
  np.testing.assert_array_equal(j, j.T)
  assert np.all(np.diag(j) == 0)
  # Clients of different clusters are independent: no coupling survives the significance cut.
  assert j[0, 2] == j[0, 3] == j[1, 2] == j[1, 3] == 0.0


def test_mean_field_without_evidence_keeps_the_prior_marginals():
  rng = np.random.default_rng(0)
  n = 9
  j = np.triu(rng.uniform(0, 3, (n, n)) * (rng.uniform(size=(n, n)) < 0.4), 1)
  j = j + j.T
  prior = rng.uniform(0.3, 0.97, n)
  post = prior_aware._mean_field(jnp.zeros(n), jnp.ones(n, bool), jnp.asarray(prior),  # pylint: disable=protected-access
                                 jnp.asarray(j), 50)
  np.testing.assert_allclose(post, prior, rtol=1e-5)


@pytest.mark.parametrize("seed", range(3))
def test_coupled_posterior_filter_matches_numpy(seed):
  rng = np.random.default_rng(seed)
  n, d = 12, 30
  x = rng.normal(size=(n, d))
  x[:3] += rng.normal(4.0, 1.0, size=(3, d))
  j = np.zeros((n, n))
  j[np.ix_(range(4), range(4))] = rng.uniform(0.5, 3.0)
  np.fill_diagonal(j, 0.0)
  p = rng.uniform(0.6, 0.99, n)
  got = jax.jit(prior_aware.posterior_filter)(jnp.asarray(x, jnp.float32),
                                              prior_honest=jnp.asarray(p), coupling=jnp.asarray(j))
  want, post = np_coupled_posterior_filter(x, p, j)
  np.testing.assert_allclose(got.posterior, post, atol=2e-4)
  np.testing.assert_allclose(got.value, want, rtol=1e-4, atol=1e-4)


def test_zero_coupling_is_the_independent_filter():
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(10, 20)), jnp.float32).at[:2].add(6.0)
  prior = jnp.asarray(rng.uniform(0.5, 0.95, 10))
  a = jax.jit(lambda u: prior_aware.posterior_filter(u, prior_honest=prior))(x)
  b = jax.jit(lambda u: prior_aware.posterior_filter(u, prior_honest=prior,
                                                     coupling=jnp.zeros((10, 10))))(x)
  np.testing.assert_allclose(a.posterior, b.posterior, atol=1e-5)
  np.testing.assert_allclose(a.value, b.value, rtol=1e-5, atol=1e-5)


def test_a_faulty_neighbour_raises_suspicion_and_vmap_matches():
  rng = np.random.default_rng(1)
  law = {"name": "clusters", "num_clusters": 4, "pi": 0.1, "q1": 0.8, "q0": 0.0}
  n = 12                                          # clusters {0,1,2}, {3,4,5}, ...
  j = server_prior.coupling(law, n)
  p_faulty, _ = server_prior.marginals(law, n)
  prior = jnp.asarray(1 - p_faulty, jnp.float32)
  x = rng.normal(size=(n, 40))
  x[0] = np.nan                                   # certainly faulty: its cluster mates inherit it
  coupled_fn = jax.jit(lambda u: prior_aware.posterior_filter(
      u, prior_honest=prior, coupling=jnp.asarray(j, jnp.float32)))
  coupled = coupled_fn(jnp.asarray(x, jnp.float32))
  alone = jax.jit(lambda u: prior_aware.posterior_filter(u, prior_honest=prior))(
      jnp.asarray(x, jnp.float32))
  assert np.all(np.isfinite(coupled.value))
  assert coupled.posterior[0] == 0 and alone.posterior[0] == 0
  assert np.all(np.asarray(coupled.posterior[1:3]) < np.asarray(alone.posterior[1:3]) - 0.5)
  np.testing.assert_allclose(coupled.posterior[3:], alone.posterior[3:], atol=0.02)
  # Batched over draws (one with an inf row, one ordinary) = unbatched, draw by draw.
  y = rng.normal(size=(n, 40))
  y[7] = np.inf
  batch = jnp.asarray(np.stack([x, y, rng.normal(size=(n, 40))]), jnp.float32)
  out = jax.jit(jax.vmap(lambda u: coupled_fn(u).value))(batch)
  for k in range(3):
    np.testing.assert_allclose(out[k], coupled_fn(batch[k]).value, rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(out[k]))


def test_permuted_prior_relabels_the_clients():
  n = 10
  perm = server_prior.permutation(n)
  assert sorted(perm) == list(range(n)) and not np.array_equal(perm, np.arange(n))
  c = config_lib.base_config()
  c.num_clients, c.f = n, 2
  p = tuple(np.linspace(0.01, 0.4, n))
  c.honest_set_options.bernoulli.p_per_client = p
  c.server_prior.kind = "mu_h"
  c.server_prior.permuted = True
  law = config_lib.server_prior_spec(c)
  np.testing.assert_allclose(law["p"], np.asarray(p)[perm])
  exact = server_prior.quantile_f({"name": "bernoulli", "p": p}, n, 0.05)
  assert server_prior.quantile_f(law, n, 0.05) == exact     # the law of b is unchanged
  c.honest_set = "clusters"
  c.honest_set_options.clusters.num_clusters = 3
  ids = honest_sets.cluster_assignment(n, 3, None)
  np.testing.assert_array_equal(config_lib.server_prior_spec(c)["assignment"], ids[perm])
  c.honest_set = "graph_copula"
  c.graph.kind = "ring"
  a = graphs.ring(n)
  np.testing.assert_array_equal(config_lib.server_prior_spec(c)["adjacency"], a[np.ix_(perm, perm)])


def test_scaled_graph_priors_and_data_similarity_refused():
  c = config_lib.base_config()
  c.honest_set = "graph_copula"
  c.graph.kind = "ring"
  c.honest_set_options.graph_copula.p = 0.3
  c.server_prior.kind = "mu_h"
  c.server_prior.scale = 2.0
  law = config_lib.server_prior_spec(c)
  assert law["p"] == pytest.approx(0.6)
  p, exact = server_prior.marginals(law, c.num_clients)
  assert exact and np.allclose(p, 0.6)
  c.server_prior.scale = 4.0
  assert config_lib.server_prior_spec(c)["p"] == 1.0                    # clipped to a probability
  c.graph.kind = "data_similarity"
  with pytest.raises(ConfigError, match="data_similarity"):
    config_lib.server_prior_spec(c)


def test_cluster_quantile_with_a_median_inner_counts_faulty_halves():
  law = {"name": "clusters", "num_clusters": 5, "pi": (0.5, 0.1, 0.1, 0.1, 0.1), "q1": 0.6,
         "q0": 0.05}
  n = 25
  ids, f_median = server_prior.cluster_quantile_f(law, n, 0.05, inner="median")
  _, f_mean = server_prior.cluster_quantile_f(law, n, 0.05, inner="mean")
  masks = np.asarray(honest_sets.sample(jax.random.key(5), law, num_clients=n,
                                        num_samples=100_000))
  faulty_per_cluster = np.stack([(~masks[:, ids == c]).sum(1) for c in range(5)], 1)
  for f, bad in ((f_median, (faulty_per_cluster >= 3).sum(1)),
                 (f_mean, (faulty_per_cluster >= 1).sum(1))):
    cdf = np.cumsum(np.bincount(bad, minlength=6)) / len(bad)
    assert cdf[f] >= 0.95 - 0.005 and (f == 0 or cdf[f - 1] < 0.95 + 0.005)
  assert f_median < f_mean
  # The exact bad-cluster probability of the median inner: π P(Bin(5, q1) ≥ 3) + (1 − π) …
  assert scipy.stats.binom.sf(2, 5, 0.6) == pytest.approx(0.68256)


def test_communities_of_a_block_copula_and_their_quantile():
  n = 12
  adj = graphs.stochastic_block((4, 4, 4), 0.9, 0.0, seed=0)
  law = {"name": "graph_copula", "p": 0.1, "tau": 0.2, "adjacency": adj}
  ids, f_clusters = server_prior.cluster_quantile_f(law, n, 0.05, communities=3)
  np.testing.assert_array_equal(ids, np.repeat([0, 1, 2], 4))
  masks = np.asarray(honest_sets.sample(jax.random.key(9), law, num_clients=n,
                                        num_samples=100_000))
  bad = np.stack([(~masks[:, ids == c]).any(1) for c in range(3)], 1).sum(1)
  cdf = np.cumsum(np.bincount(bad, minlength=4)) / len(bad)
  assert cdf[f_clusters] >= 0.95 - 0.005 and (f_clusters == 0 or cdf[f_clusters - 1] < 0.955)
  with pytest.raises(ConfigError, match="independent"):
    server_prior.cluster_quantile_f({"name": "bernoulli", "p": 0.1}, n, 0.05)


def test_the_config_fills_couplings_and_communities_from_a_graph_prior():
  c = config_lib.base_config()
  c.num_clients, c.f = 12, 2
  c.honest_set = "graph_copula"
  c.graph.kind = "stochastic_block"
  c.graph.block_sizes = (4, 4, 4)
  c.graph.p_in, c.graph.p_out = 0.9, 0.0
  c.honest_set_options.graph_copula.p = 0.1
  c.honest_set_options.graph_copula.tau = 0.2
  c.server_prior.kind = "mu_h"
  c.aggregator = "posterior_filter,cluster_aggregate"
  c.aggregator_options.cluster_aggregate.inner = "median"
  c.server_prior.communities = 3
  config_lib.validate(c)
  options = config_lib.aggregator_options(c)
  j = np.asarray(options["posterior_filter"]["prior_coupling"])
  np.testing.assert_allclose(j, server_prior.coupling(config_lib.server_prior_spec(c), 12))
  assert np.all(j[:4, :4][~np.eye(4, dtype=bool)] > 0) and np.all(j[:4, 4:] == 0)
  assert options["cluster_aggregate"]["clusters"] == tuple(np.repeat([0, 1, 2], 4))
  c.aggregator_options.posterior_filter.coupling = "none"
  assert config_lib.aggregator_options(c)["posterior_filter"].get("prior_coupling") is None


def test_sweep_overrides_may_change_a_defaults_type_and_pairing_drops_dotted_keys(tmp_path):
  c = config_lib.base_config()
  out = sweep.apply_overrides(c, {"honest_set_options.clusters.pi": (0.1, 0.2, 0.3, 0.4, 0.5)})
  assert tuple(out.honest_set_options.clusters.pi) == (0.1, 0.2, 0.3, 0.4, 0.5)
  os.makedirs(tmp_path / "points")
  saved = {"config": {"aggregator": "mean", "f": 5, "server_prior": {"kind": "none"},
                      "data": {"alpha": 1.0, "name": "digits"}}}
  with open(sweep.config_path(str(tmp_path), "p1"), "w") as fh:
    json.dump(saved, fh)
  assert sweep._config_without(str(tmp_path), "p1", ("aggregator", "data.alpha", "server_prior")) \
      == {"f": 5, "data": {"name": "digits"}}  # pylint: disable=protected-access


@pytest.mark.slow
def test_mu_aware_sweep_refuses_undefined_points_and_says_why():
  from configs import sweep_mu_aware  # pylint: disable=g-import-not-at-top
  c = sweep_mu_aware.get_config()
  c.grid.blocks = ("prior",)
  c.grid.mu_h = ("clustered",)
  sweep_mu_aware.REFUSED.clear()
  pts = sweep_mu_aware.points(c)
  labels = {p.tags["rule"] for p in pts}
  assert "posterior_filter|×2" in labels and "trimmed_mean@quantile_f|×2" not in labels
  reasons = {k[-1]: v for k, v in sweep_mu_aware.REFUSED.items()}
  assert "no honest majority" in reasons["trimmed_mean@quantile_f|×2"]
  assert "K > 2·f_clusters" in reasons["cluster_aggregate|×2"]
  for p in pts:  # every point left in is valid
    config_lib.validate(sweep.apply_overrides(c.base, p.overrides))


def test_the_simulator_cache_is_bounded_and_the_reference_shared(monkeypatch):
  """A long sweep keeps at most MAX_CACHED_SIMULATORS simulators and drops an evicted one's
  compiled programs (unbounded, they exhausted XLA:CPU's code mappings after ~100 points); the
  honest-optimum reference does not depend on the rule, so every rule shares one."""
  from fedjax_robust import experiment  # pylint: disable=g-import-not-at-top
  from tests import tiny_config  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(experiment, "MAX_CACHED_SIMULATORS", 2)
  monkeypatch.setattr(experiment, "simulator_cache", type(experiment.simulator_cache)())
  monkeypatch.setattr(experiment, "_programs", {})
  c = tiny_config.get_config()
  fed = config_lib.make_data(c)
  first = experiment.simulator(c, "mean", fed)
  experiment._programs[("advance", id(first), ())] = object()  # pylint: disable=protected-access
  assert experiment.simulator(c, "mean", fed) is first
  experiment.simulator(c, "trimmed_mean", fed)
  experiment.simulator(c, "geometric_median", fed)            # evicts "mean" and its program
  assert len(experiment.simulator_cache) == 2
  assert not experiment._programs  # pylint: disable=protected-access
  assert experiment.simulator(c, "mean", fed) is not first
  ref = experiment.simulator(c, "mean", fed, reference="honest_optimum")
  c.server_prior.kind = "marginals"                          # a rule's prior: not the reference's
  c.server_prior.p_per_client = (0.1,) * c.num_clients
  assert experiment.simulator(c, "nnm+trimmed_mean", fed, reference="honest_optimum") is ref


def test_mu_aware_sweep_refuses_only_what_the_misspecified_prior_causes():
  """A setting wrong for every point (rounds not a multiple of eval_every) is the user's error,
  raised by points(); it was recorded as the prior's refusal of every point of the prior block,
  which then ran nothing and exited 0."""
  from configs import sweep_mu_aware  # pylint: disable=g-import-not-at-top
  c = sweep_mu_aware.get_config()
  c.grid.blocks = ("prior",)
  c.grid.mu_h = ("independent",)
  c.grid.rules = ("trimmed_mean@quantile_f",)
  c.base.training.num_rounds = 1
  sweep_mu_aware.REFUSED.clear()
  with pytest.raises(ConfigError, match="num_rounds=1 must be a positive multiple"):
    sweep_mu_aware.points(c)
  assert not sweep_mu_aware.REFUSED


def test_mu_aware_prior_block_pairs_rules_under_the_same_prior(tmp_path):
  """The generic paired table of the prior block compared every rule with the group's first
  point whatever its prior ('posterior_filter|×0.5 − posterior_filter|×2': two
  misspecifications, no baseline); the prior is now a tag, so a group holds one prior and
  every pair is two rules under the same one."""
  from configs import sweep_mu_aware  # pylint: disable=g-import-not-at-top
  c = sweep_mu_aware.get_config()
  c.grid.blocks = ("prior",)
  c.grid.mu_h = ("independent",)
  c.grid.rules = ("posterior_filter", "trimmed_mean@quantile_f")
  pts = sweep_mu_aware.points(c)
  workdir = str(tmp_path)
  os.makedirs(tmp_path / "points")
  rng = np.random.default_rng(0)
  masks = rng.random((4, 25)) > 0.2
  rows = []
  for i, p in enumerate(pts):
    pid = f"p{i}"
    sweep.save_point(sweep.point_path(workdir, pid), tags=json.dumps(p.tags),
                     num_byzantine=(~masks).sum(1), honest_masks=masks,
                     final_honest_holdout_accuracy=rng.random(4))
    with open(sweep.config_path(workdir, pid), "w") as fh:
      json.dump({"config": json.loads(sweep.apply_overrides(c.base, p.overrides).to_json())}, fh)
    rows.append({"point": pid, **p.tags, "metric": "honest_holdout_accuracy",
                 "statistic": "mean", "value": 0.5})
  compared = sweep.paired_comparisons(rows, workdir, series="rule",
                                      series_key=tuple(c.plot.series_keys), log=lambda _: None)
  pairs = {(x["a"], x["b"]) for x in compared}
  assert pairs == {("trimmed_mean@quantile_f|×2", "posterior_filter|×2"),
                   ("trimmed_mean@quantile_f|×0.5", "posterior_filter|×0.5")}
