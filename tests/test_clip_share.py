"""Clipping rules report the share of rows they clipped (aux "clipped_share"), and centered
clipping's τ may be given in the units of Karimireddy et al.'s published code."""

import contextlib
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import tiny_config
from fedjax_robust import aggregators
from fedjax_robust import attacks
from fedjax_robust import build
from fedjax_robust import config as config_lib
from fedjax_robust import data
from fedjax_robust import models
from fedjax_robust import training
from fedjax_robust.aggregators import base
from fedjax_robust.aggregators import clipping
from fedjax_robust.errors import ConfigError

N, D = 10, 6


def _rows(rng, bad=()):
  """N rows with well separated norms (0.5 .. 5), some replaced by NaN / ±inf rows."""
  directions = rng.normal(size=(N, D))
  directions /= np.linalg.norm(directions, axis=1, keepdims=True)
  x = directions * rng.permutation(np.linspace(0.5, 5.0, N))[:, None]
  for i, value in bad:
    x[i, i % D] = value   # one non-finite entry makes the row non-finite
  return x.astype(np.float32)


def _norms(x):
  x = np.asarray(x, np.float64)
  finite = np.isfinite(x).all(1)
  return np.where(finite, np.linalg.norm(np.where(finite[:, None], x, 0), axis=1), np.inf), finite


BAD_ROWS = [(), [(3, np.nan)], [(3, np.inf), (7, -np.inf)], [(0, np.nan), (1, np.inf),
                                                               (2, np.nan)]]


def _shares(spec, xs, *, f=2, options=None, centers=None, exact=False):
  """The pipeline's aux "clipped_share" for each matrix of `xs [S, N, D]`, vmapped (a batch
  mixing finite and non-finite draws: each takes its own fast or exact path)."""
  agg = aggregators.get(spec, f=f, options=options)
  centers = np.zeros(xs.shape[::2], np.float32) if centers is None else centers

  def one(x, center):
    state = (center,) if spec == "centered_clipping" else agg.init(D)
    return agg.apply(x, state, jax.random.key(0))[2]["clipped_share"]

  with base.force_exact_paths() if exact else contextlib.nullcontext():
    return np.asarray(jax.jit(jax.vmap(one))(jnp.asarray(xs), jnp.asarray(centers)))


def test_static_clipping_share_counts_rows_above_the_threshold(rng):
  xs = np.stack([_rows(rng, bad) for bad in BAD_ROWS])
  threshold = 2.2   # no norm within 0.2 of it
  want = [np.mean((norms > threshold) | ~finite) for norms, finite in map(_norms, xs)]
  options = {"static_clipping": {"threshold": threshold}}
  np.testing.assert_allclose(_shares("static_clipping+mean", xs, options=options), want)
  np.testing.assert_allclose(_shares("static_clipping+mean", xs, options=options, exact=True),
                             want)
  np.testing.assert_allclose(_shares("static_clipping+trimmed_mean", xs, options=options), want)
  direct = clipping.static_clipping_with_share(jnp.asarray(xs[0]), threshold=threshold)
  assert float(direct.clipped_share) == pytest.approx(want[0])
  np.testing.assert_array_equal(direct.value, clipping.static_clipping(jnp.asarray(xs[0]),
                                                                        threshold=threshold))


def test_arc_share_is_the_k_largest_rows(rng):
  f = 2
  k = int(np.floor(2 * (f / N) * (N - f)))      # 3 of 10
  xs = np.stack([_rows(rng, bad) for bad in BAD_ROWS])
  want = []
  for norms, finite in map(_norms, xs):
    kth = np.sort(norms)[::-1][k]                  # the (k+1)-th largest norm (inf counts)
    want.append(np.mean((norms > kth) | ~finite))
    # Distinct norms: exactly the k largest, or every non-finite row when there are more.
    assert want[-1] == max(k, int((~finite).sum())) / N
  np.testing.assert_allclose(_shares("arc+mean", xs, f=f), want)
  np.testing.assert_allclose(_shares("arc+mean", xs, f=f, exact=True), want)
  np.testing.assert_allclose(_shares("arc+trimmed_mean", xs, f=f), want)


def test_centered_clipping_share_one_iteration(rng):
  xs = np.stack([_rows(rng, bad) for bad in BAD_ROWS])
  centers = rng.normal(size=(len(xs), D)).astype(np.float32)
  tau = float(np.median(_norms(xs[0] - centers[0])[0])) + 0.05
  want = [np.mean((dist > tau) | ~finite) for dist, finite in map(_norms, xs - centers[:, None])]
  assert all(0 < w < 1 for w in want)
  options = {"centered_clipping": {"tau": tau, "iterations": 1}}
  np.testing.assert_allclose(_shares("centered_clipping", xs, options=options, centers=centers),
                             want)
  np.testing.assert_allclose(_shares("centered_clipping", xs, options=options, centers=centers,
                                     exact=True), want)


def test_centered_clipping_share_is_the_last_iterations_and_zero_means_the_mean(rng):
  x = _rows(rng).astype(np.float64)
  tau, iterations = 1.5, 3
  v = np.zeros(D)
  for _ in range(iterations):
    dist = np.linalg.norm(x - v, axis=1)
    want = np.mean(dist > tau)
    v = v + np.mean((x - v) * np.minimum(1, tau / dist)[:, None], 0)
  rule = jax.jit(clipping.centered_clipping_with_share, static_argnames=("tau", "iterations"))
  got = rule(jnp.asarray(x, jnp.float32), center=jnp.zeros(D), tau=tau, iterations=iterations)
  np.testing.assert_allclose(got.value, v, atol=1e-5)
  assert float(got.clipped_share) == pytest.approx(want)
  # A τ larger than every distance clips nothing: the rule is the mean.
  got = rule(jnp.asarray(x, jnp.float32), center=jnp.zeros(D), tau=100.0, iterations=iterations)
  assert float(got.clipped_share) == 0.0
  np.testing.assert_allclose(got.value, x.mean(0), atol=1e-5)


def test_share_under_vmap_is_each_samples_own(rng):
  xs = np.stack([_rows(rng), _rows(rng, [(1, np.nan)])])
  shares = jax.vmap(lambda x: clipping.static_clipping_with_share(x, threshold=2.2)
                    .clipped_share)(jnp.asarray(xs))
  want = [np.mean((_norms(x)[0] > 2.2) | ~_norms(x)[1]) for x in xs]
  np.testing.assert_allclose(shares, want)


def test_two_clipping_stages_keep_both_shares(rng):
  x = _rows(rng)
  agg = aggregators.get("static_clipping+centered_clipping", f=2,
                        options={"static_clipping": {"threshold": 2.2}})
  _, _, aux = jax.jit(agg.apply)(jnp.asarray(x), agg.init(D), jax.random.key(0))
  assert set(aux) == {"clipped_share", "centered_clipping.clipped_share", "secure_averages",
                      "numbers_sent"}
  assert float(aux["clipped_share"]) == pytest.approx(np.mean(_norms(x)[0] > 2.2))


# ------------------------------------------------------------------ τ in published units


def test_published_tau_conversion_closed_form():
  for tau, lr, beta, k in [(10.0, 0.5, 0.9, 1), (100.0, 0.1, 0.0, 3), (1.0, 0.01, 0.99, 2)]:
    assert clipping.published_tau_in_update_units(
        tau, lr=lr, momentum=beta, local_steps=k) == pytest.approx(tau * lr * (1 - beta) * k)


def test_published_momentum_is_the_simulators_momentum_scaled(rng):
  """The derivation's two facts: the EMA buffer is (1 − β) times the PyTorch-style buffer, and
  centered clipping is positively homogeneous, so K = 1 is exact."""
  beta, lr = 0.9, 0.5
  m_pub, m_ema = np.zeros(D), np.zeros(D)
  for _ in range(5):
    g = rng.normal(size=D)
    m_pub = beta * m_pub + g             # epfml code: buffer = β·buffer + g (first: g)
    m_ema = beta * m_ema + (1 - beta) * g  # training.Simulator.local_update
    np.testing.assert_allclose(m_ema, (1 - beta) * m_pub)
  x = rng.normal(size=(N, D)) * 5
  v = rng.normal(size=D)
  c = lr * (1 - beta)
  published = clipping.centered_clipping(jnp.asarray(x, jnp.float32), center=jnp.asarray(v),
                                         tau=10.0)
  ours = clipping.centered_clipping(jnp.asarray(c * x, jnp.float32), center=jnp.asarray(c * v),
                                    tau=clipping.published_tau_in_update_units(
                                        10.0, lr=lr, momentum=beta, local_steps=1))
  np.testing.assert_allclose(ours, c * np.asarray(published), rtol=1e-5, atol=1e-7)


def _simulator(config):
  fed = types.SimpleNamespace(input_shape=(8, 8, 1), num_classes=10)
  return build.make_simulator(config, "centered_clipping", fed)


def test_make_simulator_converts_published_momentum_tau(rng):
  c = tiny_config()
  c.training.client_lr, c.training.client_momentum, c.training.local_steps = 0.5, 0.9, 2
  c.aggregator_options.centered_clipping.tau = 10.0
  c.aggregator_options.centered_clipping.tau_units = "published_momentum"
  sim = _simulator(c)
  tau = 10.0 * 0.5 * (1 - 0.9) * 2
  want = aggregators.get("centered_clipping", f=c.f, options={"centered_clipping": {"tau": tau}})
  x = jnp.asarray(rng.normal(size=(c.num_clients, D)), jnp.float32)
  got, _, aux = sim.aggregator.apply(x, sim.aggregator.init(D), jax.random.key(0))
  np.testing.assert_array_equal(got, want(x))
  assert 0 < float(aux["clipped_share"]) <= 1
  assert c.aggregator_options.centered_clipping.tau == 10.0   # the config is not changed


def test_update_units_keep_the_old_rule_and_the_config_defaults_to_published_units(rng):
  c = tiny_config()
  # The config's default is the published convention (τ = 10 in Karimireddy et al.'s units)...
  assert c.aggregator_options.centered_clipping.tau_units == "published_momentum"
  t = c.training
  assert config_lib.aggregator_options(c)["centered_clipping"]["tau"] == pytest.approx(
      10.0 * t.client_lr * (1 - t.client_momentum) * t.local_steps)
  # ... and tau_units="update" is the rule as it was (the library function's default).
  c.aggregator_options.centered_clipping.tau_units = "update"
  assert config_lib.aggregator_options(c) == c.aggregator_options.to_dict()
  x = jnp.asarray(rng.normal(size=(c.num_clients, D)), jnp.float32)
  sim = _simulator(c)
  before = aggregators.get("centered_clipping", f=c.f)   # no tau_units: the old call
  np.testing.assert_array_equal(sim.aggregator(x), before(x))
  from test_clipping_and_bucketing import np_centered_clipping
  np.testing.assert_allclose(before(x), np_centered_clipping(np.asarray(x), np.zeros(D), 10.0, 3),
                             atol=1e-5)


def test_rule_refuses_unconverted_published_units():
  with pytest.raises(ConfigError, match="tau_units='published_momentum'"):
    aggregators.get("centered_clipping", f=1, options={
        "centered_clipping": {"tau_units": "published_momentum"}})(jnp.ones((4, 3)))
  with pytest.raises(ConfigError, match=r"tau_units='momentum' is outside its domain"):
    aggregators.get("centered_clipping", f=1, options={"centered_clipping": {"tau_units":
                                                                             "momentum"}})


def test_share_flows_through_training_rounds(rng):
  C, F = 3, 4
  xs = [rng.normal(size=(m, F, 1, 1)).astype(np.float32) for m in (5, 9, 3, 7)]
  ys = [rng.integers(0, C, size=len(x)).astype(np.int32) for x in xs]
  train = data.stack_clients(xs, ys)
  sim = training.Simulator(
      model=models.get("logistic", input_shape=(F, 1, 1), num_classes=C),
      aggregator=aggregators.get("centered_clipping", f=1,
                                 options={"centered_clipping": {"tau": 1e-3}}),
      attack=attacks.get("none", num_classes=C),
      local=training.LocalTraining(batch_size=0, lr=0.3), server_optimizer=optax.sgd(1.0),
      num_clients=4)
  _, aux = jax.jit(sim.run_rounds, static_argnums=4)(
      sim.init(jax.random.key(0)), jnp.ones(4, bool), jax.random.key(1), train, 3)
  assert float(aux["clipped_share"]) == 1.0   # τ tiny: every row clipped in every round

