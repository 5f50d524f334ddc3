"""The server's prior: quantile f against the exact law of b, misspecification, weights."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_robust import aggregators
from fedjax_robust import build
from fedjax_robust import config as config_lib
from fedjax_robust import server_prior
from fedjax_robust.errors import ConfigError


def _brute_force_count_law(p):
  """P(b = k) by enumerating every corruption pattern (independent clients)."""
  n = len(p)
  pmf = np.zeros(n + 1)
  for pattern in itertools.product((0, 1), repeat=n):
    b = np.asarray(pattern, bool)
    pmf[b.sum()] += np.prod(np.where(b, p, 1 - p))
  return pmf


@pytest.mark.parametrize("seed", range(4))
def test_quantile_f_is_the_quantile_of_the_exact_law(seed):
  rng = np.random.default_rng(seed)
  p = rng.uniform(0, 0.4, 10)
  pmf = _brute_force_count_law(p)
  for delta in (0.01, 0.05, 0.2, 0.5):
    expected = int(np.argmax(np.cumsum(pmf) >= 1 - delta))
    f, exact, coverage = server_prior.quantile_f({"name": "bernoulli", "p": tuple(p)}, 10, delta)
    assert exact and f == expected
    assert coverage == pytest.approx(np.cumsum(pmf)[f]) and coverage >= 1 - delta
    assert f == 0 or np.cumsum(pmf)[f - 1] < 1 - delta


def _config(**prior):
  c = config_lib.base_config()
  for k, v in prior.items():
    c.server_prior[k] = v
  return c


def test_resolve_replaces_f_by_the_quantile_and_says_so():
  c = _config(kind="mu_h", declared_f="quantile", delta=0.05)
  resolved, info = config_lib.resolve_server_prior(c)
  law = np.cumsum(_binomial(25, 0.15))
  assert resolved.f == int(np.argmax(law >= 0.95)) == info["f"] == 7
  assert c.f == 5 and info["f_from_config"] == 5        # the caller's config is not changed
  assert "declared f = 7, the 0.95-quantile of b" in server_prior.describe(info)
  # Misspecified ×2: the prior believes p = 0.3.
  resolved, info = config_lib.resolve_server_prior(_config(kind="mu_h", declared_f="quantile", scale=2.0))
  assert info["law"]["p"] == pytest.approx(0.3)
  assert resolved.f == int(np.argmax(np.cumsum(_binomial(25, 0.3)) >= 0.95))
  # A prior that is not used leaves the config alone.
  same, info = config_lib.resolve_server_prior(config_lib.base_config())
  assert info is None and same.f == 5


def _binomial(n, p):
  from scipy import stats  # pylint: disable=g-import-not-at-top
  return stats.binom.pmf(np.arange(n + 1), n, p)


def test_weights_from_the_prior():
  p = np.linspace(0.0, 0.5, 6)
  law = {"name": "bernoulli", "p": tuple(p)}
  np.testing.assert_allclose(server_prior.client_weights(law, 6, "reliability"),
                             (1 - p) / np.sum(1 - p))
  # Expected-objective weights: E[1{i∈S}/|S|] by enumeration, normalized.
  w = np.zeros(6)
  for pattern in itertools.product((0, 1), repeat=6):
    honest = ~np.asarray(pattern, bool)
    prob = np.prod(np.where(honest, 1 - p, p))
    if honest.any():
      w += prob * honest / honest.sum()
  np.testing.assert_allclose(server_prior.client_weights(law, 6, "expected_objective"),
                             w / w.sum(), rtol=1e-10)


@pytest.mark.parametrize("spec", ["mean", "trimmed_mean", "geometric_median"])
def test_equal_priors_reduce_the_weighted_rules_to_the_unweighted_ones(spec):
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(11, 9)), jnp.float32).at[2].set(40.0)
  w = server_prior.client_weights({"name": "bernoulli", "p": 0.2}, 11, "reliability")
  tight = {"geometric_median": {"gtol": 1e-7}}  # the rule, not its stopping rule
  weighted = aggregators.get(spec, f=2, weighted=True, options=tight)(
      x, weights=jnp.asarray(w, jnp.float32))
  plain = aggregators.get(spec, f=2, options=tight)(x)
  np.testing.assert_allclose(weighted, plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prior,match", [
    ({"declared_f": "quantile"}, r"need a prior; server_prior.kind='none'"),
    ({"kind": "marginals", "declared_f": "quantile"}, r"p_per_client with one probability per "
                                                      r"client \(25\)"),
    ({"kind": "mu_h", "weights": "reliability"}, None),
    ({"kind": "mu_h", "declared_f": "quantile", "scale": 3.5},
     r"f=17, which leaves no honest majority"),
    ({"kind": "marginals", "p_per_client": (0.1,) * 25, "weights": "expected_objective"}, None),
])
def test_prior_config_is_checked(prior, match):
  c = _config(**prior)
  c.aggregator = "mean,trimmed_mean"
  if match is None:
    config_lib.validate(c)
    c.aggregator = "krum"
    match = r"server_prior.weights='(reliability|expected_objective)' weights the clients: .*no "\
            r"weighted form"
  with pytest.raises(ConfigError, match=match):
    config_lib.validate(c)


def test_the_simulator_gets_the_priors_weights():
  c = _config(kind="marginals", p_per_client=tuple(np.linspace(0, 0.4, 25)),
              weights="reliability")
  c.data.name = "synthetic"
  c.data.synthetic_examples_per_client = 4
  c.data.synthetic_dim = 3
  fed = config_lib.make_data(c)
  sim = build.make_simulator(c, "trimmed_mean", fed)
  p = np.linspace(0, 0.4, 25)
  np.testing.assert_allclose(sim.client_weights, (1 - p) / np.sum(1 - p))
  weights = sim._aggregation_weights(fed.train, jnp.ones(25, bool), jnp.float32)  # pylint: disable=protected-access
  np.testing.assert_allclose(weights, (1 - p) / np.sum(1 - p), rtol=1e-6)


@pytest.mark.slow
def test_posterior_filter_gets_the_servers_prior_and_is_refused_without_one():
  c = config_lib.base_config()
  c.aggregator = "posterior_filter"
  with pytest.raises(ConfigError, match="posterior_filter needs the server's prior"):
    config_lib.validate(c)
  p = tuple(np.linspace(0.0, 0.5, 25))
  c.server_prior.kind = "marginals"
  c.server_prior.p_per_client = p
  config_lib.validate(c)
  np.testing.assert_allclose(config_lib.aggregator_options(c)["posterior_filter"]["prior_honest"],
                             1 - np.asarray(p))
  c.aggregator_options.posterior_filter.prior_honest = (0.5,) * 25
  with pytest.raises(ConfigError, match="one of them"):
    config_lib.validate(c)
  # Through the registry: the same numbers as the function with the prior as an array, and its
  # mean posterior as a diagnostic.
  from fedjax_robust.aggregators import prior_aware  # pylint: disable=g-import-not-at-top
  x = jnp.asarray(np.random.default_rng(0).normal(size=(25, 6)), jnp.float32).at[3].set(30.0)
  prior = tuple(1 - np.asarray(p))
  agg = aggregators.get("posterior_filter", f=5, options={"posterior_filter": {
      "prior_honest": prior}})
  import jax  # pylint: disable=g-import-not-at-top
  out, _, aux = agg.apply(x, agg.init(6), jax.random.key(0))
  direct = prior_aware.posterior_filter(x, prior_honest=jnp.asarray(prior, jnp.float32))
  np.testing.assert_allclose(out, direct.value, rtol=1e-6)
  assert float(aux["honest_mass"]) == pytest.approx(float(direct.honest_mass))


def test_adaptive_trim_is_capped_by_the_declared_f():
  from fedjax_robust.aggregators import prior_aware  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  x = rng.normal(size=(15, 8)).astype(np.float32)
  x[:4] += 50.0                                   # 4 outliers, declared f = 3: at most 3 removed
  agg = aggregators.get("adaptive_trim", f=3)
  out, _, aux = agg.apply(jnp.asarray(x), agg.init(8), jax.random.key(0))
  direct = prior_aware.adaptive_trim(jnp.asarray(x), max_f=3)
  np.testing.assert_allclose(out, direct.value, rtol=1e-6)
  assert float(aux["removed"]) == int(direct.num_removed) <= 3
  agg5 = aggregators.get("adaptive_trim", f=5)
  out5, _, aux5 = agg5.apply(jnp.asarray(x), agg5.init(8), jax.random.key(0))
  assert float(aux5["removed"]) == 4
  np.testing.assert_allclose(out5, x[4:].mean(0), rtol=1e-5, atol=1e-5)


def test_cluster_aggregate_takes_clusters_and_their_quantile_from_the_prior():
  from fedjax_robust import honest_sets  # pylint: disable=g-import-not-at-top
  from fedjax_robust.aggregators import prior_aware  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  law = {"name": "clusters", "num_clusters": 7, "pi": 0.1, "q1": 0.5, "q0": 0.005}
  ids, f_clusters = server_prior.cluster_quantile_f(law, 25, 0.05)
  # The law of the number of clusters holding a faulty client, by Monte Carlo.
  masks = np.asarray(honest_sets.sample(jax.random.key(1), law, num_clients=25,
                                        num_samples=100_000))
  bad = np.stack([(~masks[:, ids == c]).any(1) for c in range(7)], 1).sum(1)
  cdf = np.cumsum(np.bincount(bad, minlength=8)) / len(bad)
  assert cdf[f_clusters] >= 0.95 - 0.005 and (f_clusters == 0 or cdf[f_clusters - 1] < 0.95 + 0.005)
  c = config_lib.base_config()
  c.aggregator = "cluster_aggregate"
  with pytest.raises(ConfigError, match="cluster_aggregate needs clusters"):
    config_lib.validate(c)
  c.honest_set = "clusters"
  for k, v in law.items():
    if k != "name":
      c.honest_set_options.clusters[k] = v
  c.server_prior.kind = "mu_h"
  config_lib.validate(c)
  options = config_lib.aggregator_options(c)["cluster_aggregate"]
  assert options["clusters"] == tuple(ids) and options["f_clusters"] == f_clusters
  x = jnp.asarray(np.random.default_rng(2).normal(size=(25, 5)), jnp.float32)
  agg = aggregators.get("cluster_aggregate", f=5, options={"cluster_aggregate": options})
  np.testing.assert_allclose(
      agg(x), prior_aware.cluster_aggregate(x, clusters=tuple(ids), f_clusters=f_clusters),
      rtol=1e-6)
  # A prior under which many clusters hold a faulty client leaves no honest majority of clusters.
  c.honest_set_options.clusters.q0 = 0.05
  with pytest.raises(ConfigError, match=r"needs K > 2·f_clusters clusters, got K=7"):
    config_lib.validate(c)
