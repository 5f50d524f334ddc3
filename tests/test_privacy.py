"""Differential privacy (issue 18). Client-level DP: clipping, the noise's scale, the accountant
against the Gaussian mechanism's closed form, calibration, and the switch through a job.
Example-level DP (DP-SGD): the accountant against published ε, per-example clipping against
NumPy, the noise's scale, Poisson sampling, a job's ε and calibration, and refusals. Central DP:
the accountant against dp-accounting's own events per client sampling and a published choice
(TensorFlow Federated's tutorial), calibration, refusals. DP-FTRL's tree: the nodes, the noise's
law and telescoping, the sensitivity against brute force and dp-accounting's tree event.
Adaptive clipping: the quantile tracking, the count, and Theorem 1's split."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree
from scipy import optimize, stats

from conftest import set_key
from conftest import tiny_config
from fedjax_robust import aggregators
from fedjax_robust import attacks
from fedjax_robust import build
from fedjax_robust import config as config_lib
from fedjax_robust import errors
from fedjax_robust import experiment
from fedjax_robust import models
from fedjax_robust import privacy
from fedjax_robust import results
from fedjax_robust import training


def test_rows_are_clipped_to_the_bound_and_shorter_rows_kept():
  x = np.random.default_rng(0).normal(size=(20, 50)).astype(np.float32) * np.linspace(
      0.01, 3.0, 20, dtype=np.float32)[:, None]
  out = np.asarray(privacy.clip_and_noise(jax.random.key(0), jnp.asarray(x), clip=1.0,
                                          noise_multiplier=0.0))
  norms, out_norms = np.linalg.norm(x, axis=1), np.linalg.norm(out, axis=1)
  assert np.all(out_norms <= 1.0 + 1e-6)
  short = norms <= 1.0
  np.testing.assert_array_equal(out[short], x[short])
  np.testing.assert_allclose(out_norms[~short], 1.0, rtol=1e-6)
  np.testing.assert_allclose(out[~short], x[~short] / norms[~short, None], rtol=1e-6)


def test_the_noise_has_std_sigma_times_clip():
  """Unclipped rows (norm < C): (out − x)/(σC) is N(0, 1), a χ² test of its sum of squares
  over 200,000 coordinates, both tails."""
  x = np.zeros((200, 1000), np.float32)
  sigma, clip = 0.7, 2.5
  out = np.asarray(privacy.clip_and_noise(jax.random.key(0), jnp.asarray(x), clip=clip,
                                          noise_multiplier=sigma), np.float64)
  z = (out - x) / (sigma * clip)
  q = float(np.sum(z * z))
  p = stats.chi2.cdf(q, z.size)
  assert 0.001 < p < 0.999, (q, z.size)
  assert abs(stats.kurtosis(z.ravel())) < 0.1  # Gaussian, not a scaled other law


def _exact_gaussian_epsilon(multiplier: float, delta: float) -> float:
  """ε of the Gaussian mechanism with noise std = multiplier × sensitivity at δ (Balle and Wang,
  ICML 2018, Theorem 8): δ(ε) = Φ(1/(2m) − εm) − e^ε Φ(−1/(2m) − εm), solved for ε."""
  m = multiplier
  gap = lambda e: (stats.norm.cdf(0.5 / m - e * m) - math.exp(e) * stats.norm.cdf(-0.5 / m - e * m)
                   - delta)
  return optimize.brentq(gap, 1e-9, 500.0, xtol=1e-12)


@pytest.mark.parametrize("sigma, rounds", [(17.0, 200), (60.0, 50), (4.0, 1)])
def test_the_accountant_matches_the_gaussian_mechanisms_closed_form(sigma, rounds):
  """T rounds of sensitivity 2C and std σC: one Gaussian mechanism of multiplier σ/(2√T).
  The PLD accountant is pessimistic by at most its discretization; RDP is an upper bound."""
  exact = _exact_gaussian_epsilon(sigma / (2 * math.sqrt(rounds)), 1e-5)
  pld = privacy.epsilon(sigma, rounds, 1e-5, "pld")
  rdp = privacy.epsilon(sigma, rounds, 1e-5, "rdp")
  assert exact - 1e-6 <= pld <= exact + 0.01, (exact, pld)
  assert rdp >= exact - 1e-6


def test_the_rdp_accountant_composes_rounds_as_the_single_equivalent_gaussian():
  from dp_accounting import dp_event  # pylint: disable=g-import-not-at-top
  from dp_accounting.rdp import rdp_privacy_accountant  # pylint: disable=g-import-not-at-top
  acc = rdp_privacy_accountant.RdpAccountant()
  acc.compose(dp_event.SelfComposedDpEvent(dp_event.GaussianDpEvent(10.0 / 2), 200))
  assert privacy.epsilon(10.0, 200, 1e-5, "rdp") == pytest.approx(acc.get_epsilon(1e-5),
                                                                   rel=1e-9)


def test_a_target_epsilon_gives_the_smallest_sigma_that_reaches_it():
  sigma = privacy.noise_for_epsilon(8.0, 200, 1e-5)
  assert privacy.epsilon(sigma, 200, 1e-5) <= 8.0 + 1e-6
  assert privacy.epsilon(sigma * 0.99, 200, 1e-5) > 8.0


def test_a_private_job_reports_epsilon_and_clips_what_is_sent():
  c = tiny_config()
  c.aggregator = "mean"
  c.privacy.kind = "client"
  c.privacy.target_epsilon = 8.0
  exp = experiment.run(c, log=lambda _: None)
  info = exp.privacy
  assert info["epsilon"] <= 8.0 + 1e-6 and info["noise_multiplier"] > 1
  assert exp.job.privacy.noise_multiplier == info["noise_multiplier"]
  summary = results.summarize(exp)
  assert summary["privacy"]["epsilon"] == info["epsilon"]
  assert "client-level DP" in results.format_table(summary)
  # Wiring: with a tiny clip and no noise every sent update has norm <= clip, so the model
  # moves by at most server_lr × clip in a round (the mean of clipped rows).
  c = tiny_config()
  c.aggregator, c.attack = "mean", "none"
  c.privacy.kind, c.privacy.clip, c.privacy.noise_multiplier = "client", 1e-4, 0.0
  c, _ = config_lib.resolve_privacy(c)
  fed = config_lib.make_data(c)
  sim = build.make_simulator(c, "mean", fed)
  state = sim.init(jax.random.key(0))
  new, _ = sim.round(state, jnp.ones((c.num_clients,), bool), jax.random.key(1), fed.train)
  moved = float(jnp.linalg.norm(new.params - state.params))
  assert 0 < moved <= c.training.server_lr * 1e-4 * (1 + 1e-5)


def test_privacy_options_are_checked():
  c = tiny_config()
  c.privacy.kind = "client"
  c.privacy.clip = 0.0
  with pytest.raises(errors.ConfigError, match="privacy.clip"):
    config_lib.validate(c)
  c = tiny_config()
  c.privacy.kind = "laplace"
  with pytest.raises(errors.ConfigError, match="privacy.kind"):
    config_lib.validate(c)


# ------------------------------------------------------------------ example-level DP (DP-SGD)
# The RDP orders of TensorFlow Privacy's MNIST tutorial (tutorials/mnist_dpsgd_tutorial.py,
# `compute_epsilon`), and the moments accountant's λ = α − 1 = 1..32 (Abadi et al. 2016, §3.2).
_TF_PRIVACY_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
_MOMENTS_ORDERS = list(range(2, 34))


@pytest.mark.parametrize("q, sigma, steps, orders, published", [
    (256 / 60000, 1.12, 60 * (60000 // 256), _TF_PRIVACY_ORDERS, 2.92),
    (256 / 60000, 1.2, 10 * (60000 // 256), _TF_PRIVACY_ORDERS, 1.20),
    (0.01, 4.0, 10000, _MOMENTS_ORDERS, 1.26)])
def test_the_dp_sgd_accountant_reproduces_published_epsilons(q, sigma, steps, orders, published):
  """Published ε at δ = 1e-5 of DP-SGD:
  - TensorFlow Privacy, tutorials/README.md ("Select Parameters", and the default run's
    "Expected Output"): MNIST, N = 60000, batch 256 (q = 256/60000), noise multiplier 1.12,
    60 epochs of 60000 // 256 = 234 steps: "Privacy eps 2.92"; the row with multiplier 1.2 and
    10 epochs: 1.20. Computed there by the RDP accountant on the orders above with
    ε = min_α RDP(α) + log(1/δ)/(α − 1) (privacy/analysis/rdp_accountant.py, `_compute_eps`).
  - Abadi et al., "Deep Learning with Differential Privacy", CCS 2016, §3.1: q = 0.01, σ = 4,
    T = 10000 steps: "ε ≈ 1.26 using the moments accountant" (log moments at integer λ ≤ 32:
    the same conversion at orders α = λ + 1).
  Our event (`privacy.dp_sgd_event`: T self-composed Poisson-subsampled Gaussians) on those
  orders with that conversion must give the published figure to its printed two decimals
  (|ε − published| ≤ 0.005). dp-accounting's own RDP conversion (Canonne, Kamath, Steinke 2020)
  and its orders can only be tighter, so `dp_sgd_epsilon` with "rdp" is at most the published
  figure; PLD is tighter still (2.32, 0.80, 0.96 here: 20–34% below the published figures), and
  a floor of 0.6× the published figure catches an accountant that drops steps or sampling."""
  from dp_accounting.rdp import rdp_privacy_accountant  # pylint: disable=g-import-not-at-top
  acc = rdp_privacy_accountant.RdpAccountant(orders)
  acc.compose(privacy.dp_sgd_event(q, sigma, steps))
  classic = float(np.min(acc.rdp - math.log(1e-5) / (np.asarray(orders) - 1)))
  assert abs(classic - published) <= 0.005, classic
  rdp = privacy.dp_sgd_epsilon(q, sigma, steps, 1e-5, "rdp")
  pld = privacy.dp_sgd_epsilon(q, sigma, steps, 1e-5, "pld")
  assert 0.6 * published < pld <= rdp <= published, (pld, rdp)


def test_dp_sgd_without_sampling_is_the_composed_gaussian_mechanism():
  """q = 1 (every example in every step): T Gaussian mechanisms of multiplier σ, which compose
  to one of multiplier σ/√T; PLD is pessimistic by at most its discretization."""
  sigma, steps = 6.0, 40
  exact = _exact_gaussian_epsilon(sigma / math.sqrt(steps), 1e-5)
  pld = privacy.dp_sgd_epsilon(1.0, sigma, steps, 1e-5, "pld")
  assert exact - 1e-6 <= pld <= exact + 0.01, (exact, pld)
  assert privacy.dp_sgd_epsilon(1.0, sigma, steps, 1e-5, "rdp") >= exact - 1e-6


_FEATURES, _CLASSES = 4, 3


def _logistic_simulator(*, batch_size, clip, noise, lr=0.5, l2=0.0):
  model = models.get("logistic", input_shape=(_FEATURES, 1, 1), num_classes=_CLASSES)
  return training.Simulator(
      model=model, aggregator=aggregators.get("mean", f=0),
      attack=attacks.get("none", num_classes=_CLASSES),
      local=training.LocalTraining(local_steps=1, batch_size=batch_size, lr=lr, momentum=0.0),
      server_optimizer=optax.sgd(1.0), num_clients=1, l2=l2, dp_sgd_clip=clip,
      dp_sgd_noise=noise)


def _one_client(rng, count, max_count):
  """One client's padded data `[max_count, F, 1, 1]`; the padding is huge, to be noticed."""
  x = np.full((max_count, _FEATURES, 1, 1), 1e6, np.float32)
  x[:count] = rng.normal(size=(count, _FEATURES, 1, 1))
  y = np.zeros(max_count, np.int32)
  y[:count] = rng.integers(0, _CLASSES, size=count)
  return jnp.asarray(x), jnp.asarray(y)


def test_dp_sgd_clips_each_examples_gradient_and_divides_by_b(rng):
  """No noise, q = 1 (B = 8 >= m = 5), one plain SGD step: the update is η Σ_j clip_C(g_j) / B,
  the per-example gradients of the cross-entropy computed here in NumPy (g_W = x (p − e_y)ᵀ,
  g_b = p − e_y), C between the smallest and largest of their norms (some clipped, some not)."""
  count, max_count, batch, lr = 5, 9, 8, 0.5
  x, y = _one_client(rng, count, max_count)
  init = models.get("logistic", input_shape=(_FEATURES, 1, 1),
                    num_classes=_CLASSES).init(jax.random.key(0))
  w = np.asarray(init["params"]["Dense_0"]["kernel"], np.float64)
  b = np.asarray(init["params"]["Dense_0"]["bias"], np.float64)
  grads = []
  for j in range(count):
    xj = np.asarray(x[j], np.float64).ravel()
    logits = xj @ w + b
    p = np.exp(logits - logits.max())
    p /= p.sum()
    p[int(y[j])] -= 1
    flat, _ = ravel_pytree({"params": {"Dense_0": {"bias": p, "kernel": np.outer(xj, p)}}})
    grads.append(np.asarray(flat, np.float64))
  grads = np.stack(grads)
  norms = np.linalg.norm(grads, axis=1)
  clip = float(np.median(norms))
  assert (norms > clip).any() and (norms < clip).any()
  expected = lr * np.sum(grads * np.minimum(1.0, clip / norms)[:, None], axis=0) / batch
  sim = _logistic_simulator(batch_size=batch, clip=clip, noise=0.0, lr=lr)
  params, _ = ravel_pytree(init)
  update, _ = jax.jit(sim.local_update)(params, jnp.zeros_like(params), x, y, count,
                                        jax.random.key(3), False)
  np.testing.assert_allclose(np.asarray(update), expected, rtol=1e-5, atol=1e-7)


def _chi2_standard_normal(z: np.ndarray) -> None:
  """z is N(0, 1): a two-sided χ² test of its sum of squares, and its kurtosis."""
  p = stats.chi2.cdf(float(np.sum(z * z)), z.size)
  assert 0.001 < p < 0.999, (float(np.sum(z * z)), z.size)
  assert abs(stats.kurtosis(z.ravel())) < 0.1


def test_the_dp_sgd_noise_has_std_sigma_times_clip(rng):
  """`noisy_clipped_sum` of zero gradients is N(0, σ²C²·I) (χ² over 200,000 coordinates); in a
  local step the noise reaches the update as η·N(0, σ²C²)/B: with the same key the noisy and
  noiseless updates sample the same minibatch and differ by the noise only (χ² over 2,000
  keys × 15 parameters)."""
  sigma, clip = 0.7, 2.5
  keys = jax.random.split(jax.random.key(0), 200)
  zero = jnp.zeros((6, 1000), jnp.float32)
  included = jnp.asarray([True, False, True, True, False, True])
  out = jax.vmap(lambda k: privacy.noisy_clipped_sum(k, zero, included, clip=clip,
                                                     noise_multiplier=sigma))(keys)
  _chi2_standard_normal(np.asarray(out, np.float64) / (sigma * clip))

  count, batch, lr = 7, 3, 0.5
  x, y = _one_client(rng, count, 10)
  noisy = _logistic_simulator(batch_size=batch, clip=clip, noise=sigma, lr=lr)
  clean = _logistic_simulator(batch_size=batch, clip=clip, noise=0.0, lr=lr)
  params, _ = ravel_pytree(noisy.model.init(jax.random.key(0)))
  keys = jax.random.split(jax.random.key(1), 2000)
  update = lambda sim: jax.jit(jax.vmap(lambda k: sim.local_update(
      params, jnp.zeros_like(params), x, y, count, k, False)[0]))(keys)
  noise = np.asarray(update(noisy), np.float64) - np.asarray(update(clean), np.float64)
  _chi2_standard_normal(noise / (lr * sigma * clip / batch))


def test_poisson_sampling_includes_each_example_with_probability_q_and_never_padding():
  """Over 4,000 keys each of the m = 37 real positions is in with probability q = B/m = 8/37
  (the total count inside its binomial 99.9% interval, and every position's share within 5
  binomial standard deviations); the 13 padding positions never are; with B >= m every real
  position always is."""
  count, max_count, batch, draws = 37, 50, 8, 4000
  keys = jax.random.split(jax.random.key(0), draws)
  sample = jax.jit(jax.vmap(lambda k, m: privacy.poisson_sample(k, m, max_count, batch)),
                   static_argnums=())
  inc = np.asarray(sample(keys, jnp.full((draws,), count)))
  assert not inc[:, count:].any()
  q = batch / count
  assert stats.binomtest(int(inc[:, :count].sum()), draws * count, q).pvalue > 0.001
  per_position = inc[:, :count].mean(0)
  assert np.all(np.abs(per_position - q) < 5 * math.sqrt(q * (1 - q) / draws))
  small = np.asarray(sample(keys[:100], jnp.full((100,), 6)))
  assert small[:, :6].all() and not small[:, 6:].any()


def test_local_steps_sample_minibatches_of_expected_size_b(rng):
  """The wiring of the sampling into a local step: identical examples, a clip far below their
  gradient's norm and no noise make every included example add the same vector of norm C, so
  the update's norm counts the minibatch: N = ‖u‖·B/(ηC). N is a whole number in [0, m], and its
  mean over 2,000 keys is m·q = B within 5 standard errors (padding, whose gradient differs,
  would break both)."""
  count, max_count, batch, lr, clip = 20, 32, 5, 0.5, 1e-3
  x, y = _one_client(rng, 1, max_count)
  x = x.at[:count].set(x[0])
  sim = _logistic_simulator(batch_size=batch, clip=clip, noise=0.0, lr=lr)
  params, _ = ravel_pytree(sim.model.init(jax.random.key(0)))
  keys = jax.random.split(jax.random.key(2), 2000)
  updates = jax.jit(jax.vmap(lambda k: sim.local_update(params, jnp.zeros_like(params), x, y,
                                                        count, k, False)[0]))(keys)
  sizes = np.linalg.norm(np.asarray(updates, np.float64), axis=1) * batch / (lr * clip)
  np.testing.assert_allclose(sizes, np.round(sizes), atol=1e-3)
  assert sizes.min() >= 0 and sizes.max() <= count
  q = batch / count
  assert abs(sizes.mean() - batch) < 5 * math.sqrt(count * q * (1 - q) / len(sizes))


def test_a_dp_sgd_job_reports_the_worst_clients_epsilon_and_calibrates_sigma():
  """A whole tiny job with privacy.kind='example' and a target ε: σ is the smallest reaching it
  (ε(σ) <= target < ε(0.99σ)) for the client with the fewest examples, ε is logged and filed in
  the summary as the accountant's ε at q = B/min_i m_i over T·K steps."""
  c = tiny_config()
  c.aggregator = "mean"
  c.privacy.kind = "example"
  c.privacy.target_epsilon = 2.0
  c.training.batch_size, c.training.local_steps = 4, 2
  lines = []
  exp = experiment.run(c, log=lines.append)
  info = exp.privacy
  counts = np.asarray(exp.data.train.counts)
  q = min(1.0, 4 / counts.min())
  steps = c.training.num_rounds * 2
  sigma = info["noise_multiplier"]
  assert (info["sampling_rate"], info["steps"], info["batch_size"]) == (q, steps, 4)
  assert info["epsilon"] == privacy.dp_sgd_epsilon(q, sigma, steps, 1e-5, "pld") <= 2.0 + 1e-6
  assert privacy.dp_sgd_epsilon(q, 0.99 * sigma, steps, 1e-5, "pld") > 2.0
  assert exp.job.privacy.noise_multiplier == sigma
  assert any("DP-SGD" in line and f"ε = {info['epsilon']:.4g}" in line for line in lines)
  summary = results.summarize(exp)
  assert summary["privacy"]["epsilon"] == info["epsilon"]
  assert "example-level DP" in results.format_table(summary)
  # The RDP accountant works too, and the other clients (larger m, smaller q) have less ε.
  c.privacy.accountant = "rdp"
  _, rdp = config_lib.resolve_privacy(c, counts)
  assert rdp["epsilon"] == pytest.approx(2.0, rel=1e-3)
  assert privacy.dp_sgd_epsilon(4 / counts.max(), sigma, steps, 1e-5) < info["epsilon"]


@pytest.mark.parametrize("key, value, attack", [
    ("training.batch_size", 0, "none"), ("training.local_epochs", 1, "none"),
    ("attack", "biased_data", "biased_data")])
def test_dp_sgd_refuses_what_it_cannot_sample(key, value, attack):
  c = tiny_config()
  c.privacy.kind = "example"
  c.attack = attack
  if key != "attack":
    set_key(c, key, value)
  with pytest.raises(errors.ConfigError, match=key) as e:
    config_lib.validate(c)
  assert "privacy.kind='example'" in str(e.value) and "allowed" in str(e.value)


def test_a_noise_too_small_for_the_pld_grid_is_refused_not_run_out_of_memory():
  """σ = 0.01 over 20 rounds asked dp-accounting's PLD for a 3 GiB array; now a ConfigError
  says how to proceed, and RDP still answers."""
  with pytest.raises(errors.ConfigError, match="accountant='rdp'"):
    privacy.epsilon(0.01, 20, 1e-5, "pld")
  assert privacy.epsilon(0.01, 20, 1e-5, "rdp") > 1e3
  with pytest.raises(errors.ConfigError, match="too small for the PLD"):
    privacy.dp_sgd_epsilon(0.5, 0.001, 10, 1e-5, "pld")


# ------------------------------------------------------------------ central and distributed DP
def _dp_accounting_epsilon(accountant, event, delta=1e-5):
  accountant.compose(event)
  return float(accountant.get_epsilon(delta))


def _relation(relation):
  import dp_accounting  # pylint: disable=g-import-not-at-top
  return relation or dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE


def _pld(relation):
  from dp_accounting.pld import pld_privacy_accountant  # pylint: disable=g-import-not-at-top
  return pld_privacy_accountant.PLDAccountant(_relation(relation),
                                              value_discretization_interval=1e-3)


def _rdp(relation, orders=None):
  from dp_accounting.rdp import rdp_privacy_accountant  # pylint: disable=g-import-not-at-top
  return rdp_privacy_accountant.RdpAccountant(orders, _relation(relation))


_N, _M = 1000, 20  # clients, clients per round


@pytest.mark.parametrize("sampling, accountant, sigma, rounds", [
    ("none", "rdp", 30.0, 200), ("none", "pld", 30.0, 200), ("fixed", "rdp", 1.1, 300),
    ("poisson", "pld", 1.1, 300), ("poisson", "rdp", 1.1, 300), ("fixed", "rdp", 0.3, 50),
    ("poisson", "pld", 0.3, 50)])
def test_central_epsilon_is_dp_accountings_for_the_sampling(sampling, accountant, sigma, rounds):
  """Built here independently: "none" as T self-composed Gaussians of multiplier σ (replace-one:
  RDP under REPLACE_ONE, and the PLD, whose REPLACE_ONE reads a Gaussian's multiplier against
  half the shift, under add/remove, where the shift is Δ), "fixed" as T self-composed
  sampled-without-replacement Gaussians under REPLACE_ONE (RDP only), "poisson" as T
  Poisson-subsampled Gaussians under ADD_OR_REMOVE_ONE. σ = 0.3, the calibration's floor, still
  passes the PLD's grid guard."""
  import dp_accounting  # pylint: disable=g-import-not-at-top
  from dp_accounting import dp_event  # pylint: disable=g-import-not-at-top
  relation = dp_accounting.NeighboringRelation
  gaussian = dp_event.GaussianDpEvent(sigma)
  if sampling == "none":
    event = dp_event.SelfComposedDpEvent(gaussian, rounds)
    acc = _rdp(relation.REPLACE_ONE) if accountant == "rdp" else _pld(relation.ADD_OR_REMOVE_ONE)
  elif sampling == "fixed":
    event = dp_event.SelfComposedDpEvent(
        dp_event.SampledWithoutReplacementDpEvent(_N, _M, gaussian), rounds)
    acc = _rdp(relation.REPLACE_ONE)
  else:
    event = dp_event.SelfComposedDpEvent(dp_event.PoissonSampledDpEvent(_M / _N, gaussian),
                                         rounds)
    acc = (_rdp(relation.ADD_OR_REMOVE_ONE) if accountant == "rdp"
           else _pld(relation.ADD_OR_REMOVE_ONE))
  expected = _dp_accounting_epsilon(acc, event)
  got = privacy.central_epsilon(sigma, rounds, 1e-5, sampling=sampling, num_clients=_N,
                                clients_per_round=_M, accountant=accountant)
  assert got == pytest.approx(expected, rel=1e-6)
  if sampling == "none":  # and the Gaussian mechanism's closed form, multiplier σ/√T
    exact = _exact_gaussian_epsilon(sigma / math.sqrt(rounds), 1e-5)
    assert exact - 1e-6 <= got <= exact + (0.01 if accountant == "pld" else 1.0)
  else:  # sampling m of n amplifies: less than every client every round
    assert got < privacy.central_epsilon(sigma, rounds, 1e-5, sampling="none", num_clients=_N,
                                         clients_per_round=_M, accountant=accountant)
  assert privacy.central_neighbours(sampling) == (
      "add_or_remove_one" if sampling == "poisson" else "replace_one")


def test_dp_accountings_pld_reads_a_replace_one_gaussian_as_twice_the_shift():
  """Why "none" is accounted under ADD_OR_REMOVE_ONE: dp-accounting's PLD under REPLACE_ONE takes
  a `GaussianDpEvent(m)` to be a record of norm ≤ std/m replaced (a shift of 2·std/m), so it gives
  the ε of multiplier m/2; its RDP ignores the relation for a Gaussian."""
  import dp_accounting  # pylint: disable=g-import-not-at-top
  relation = dp_accounting.NeighboringRelation
  g = lambda m: dp_accounting.GaussianDpEvent(m)
  replace = _dp_accounting_epsilon(_pld(relation.REPLACE_ONE), g(4.0))
  assert replace == pytest.approx(_dp_accounting_epsilon(_pld(relation.ADD_OR_REMOVE_ONE),
                                                         g(2.0)), rel=1e-9)
  assert privacy.central_epsilon(4.0, 1, 1e-5, sampling="none", num_clients=1,
                                 clients_per_round=1) == pytest.approx(
                                     _exact_gaussian_epsilon(4.0, 1e-5), abs=0.01)


@pytest.mark.parametrize("sampling, accountant, rounds", [
    ("none", "pld", 300), ("none", "rdp", 300), ("fixed", "rdp", 100),
    ("poisson", "pld", 300), ("poisson", "rdp", 300), ("none", "pld", 50000)])
def test_central_calibration_gives_the_smallest_sigma_reaching_the_target(sampling, accountant,
                                                                          rounds):
  """ε(σ) <= target < ε(0.99σ). T = 50,000 rounds without sampling: one Gaussian of multiplier
  σ/√T, whose σ = 0.3 floor would ask the PLD for a grid past its guard; the search starts
  above it and answers in a second."""
  kw = dict(sampling=sampling, num_clients=_N, clients_per_round=_M, accountant=accountant)
  sigma = privacy.central_noise_for_epsilon(3.0, rounds, 1e-5, **kw)
  assert privacy.central_epsilon(sigma, rounds, 1e-5, **kw) <= 3.0 + 1e-6
  assert privacy.central_epsilon(0.99 * sigma, rounds, 1e-5, **kw) > 3.0


_TFF_ORDERS = [1.25, 1.5, 1.75, 2., 2.25, 2.5, 3., 3.5, 4., 4.5] + list(range(5, 64)) + [
    128, 256, 512]


def test_the_poisson_accountant_reproduces_tensorflow_federateds_published_choice():
  """TensorFlow Federated's tutorial "Differential Privacy in TFF"
  (docs/tutorials/federated_learning_with_differential_privacy.ipynb, v0.41.0, the stored output
  of the cell after "let's aim for (2, 1e-5)-DP"): 3383 EMNIST clients, 100 rounds, Poisson
  client sampling at q = c/3383 with noise multiplier 0.5·c/50 = 0.01·c, RDP (`compute_rdp`,
  `get_privacy_spent`) on the orders above; its search for the fewest expected clients c with
  ε <= 2 at δ = 1e-5 printed "To get (2, 1e-05)-DP, use 120 clients with noise multiplier 1.2."
  So ε(120) <= 2 < ε(119): reproduced exactly on those orders (ε = 1.989 and 2.011; the classic
  conversion min_α RDP(α) + log(1/δ)/(α − 1) would give 2.42 at c = 120, so the tutorial's
  TensorFlow Privacy used the improved conversion dp-accounting uses), and `central_epsilon` with
  its own RDP orders makes the same choice; the PLD is tighter (1.71)."""
  import dp_accounting  # pylint: disable=g-import-not-at-top
  for c, below in ((120, True), (119, False)):
    sigma = 0.01 * c
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(c / 3383, dp_accounting.GaussianDpEvent(sigma)), 100)
    tutorial = _dp_accounting_epsilon(
        _rdp(dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE, _TFF_ORDERS), event)
    rdp = privacy.central_epsilon(sigma, 100, 1e-5, sampling="poisson", num_clients=3383,
                                  clients_per_round=c, accountant="rdp")
    assert (tutorial <= 2.0) == below and (rdp <= 2.0) == below, (c, tutorial, rdp)
    assert abs(rdp - tutorial) < 0.02  # dp-accounting's default orders differ a little
  assert privacy.central_epsilon(1.2, 100, 1e-5, sampling="poisson", num_clients=3383,
                                 clients_per_round=120) == pytest.approx(1.71, abs=0.01)


def test_central_dp_refuses_what_it_cannot_account():
  kw = dict(num_clients=_N, clients_per_round=_M)
  for call in (lambda: privacy.central_epsilon(1.0, 10, 1e-5, sampling="fixed", **kw),
               lambda: privacy.central_noise_for_epsilon(2.0, 10, 1e-5, sampling="fixed", **kw)):
    with pytest.raises(errors.ConfigError, match="privacy.accountant") as e:
      call()
    assert "'rdp'" in str(e.value) and "training.client_sampling='poisson'" in str(e.value)
  with pytest.raises(errors.ConfigError, match="training.client_sampling"):
    privacy.central_epsilon(1.0, 10, 1e-5, sampling="shuffle", **kw)
  with pytest.raises(errors.ConfigError, match="training.clients_per_round"):
    privacy.central_epsilon(1.0, 10, 1e-5, sampling="poisson", num_clients=5,
                            clients_per_round=6)
  with pytest.raises(errors.ConfigError, match="privacy.accountant"):
    privacy.central_epsilon(1.0, 10, 1e-5, sampling="none", accountant="moments", **kw)
  # T = 10,000 rounds at σ = 0.3: one Gaussian of multiplier 0.003, past the PLD's grid.
  with pytest.raises(errors.ConfigError, match="too small for the PLD"):
    privacy.central_epsilon(0.3, 10000, 1e-5, sampling="none", **kw)
  assert privacy.central_epsilon(0.3, 10000, 1e-5, sampling="none", accountant="rdp", **kw) > 100


# ---------------------------------------------------------------- DP-FTRL's tree aggregation
def test_tree_nodes_cover_the_prefix_with_disjoint_dyadic_intervals():
  for p in range(65):
    nodes = privacy.tree_nodes(p)
    assert len(nodes) == bin(p).count("1")
    leaves = []
    for level, j in nodes:
      assert j >= 0
      leaves.extend(range(j * 2 ** level, (j + 1) * 2 ** level))
    assert sorted(leaves) == list(range(p))  # disjoint (no repeats) and exactly [0, p)
  assert privacy.tree_nodes(13) == [(0, 12), (2, 2), (3, 0)]
  for r in range(70):
    assert privacy.tree_levels(r) == math.ceil(math.log2(r + 1))
    assert r < 2 ** privacy.tree_levels(r)


def test_the_tree_prefix_noise_has_popcount_nodes_of_variance_std_squared():
  """Over 4,000 keys × 25 coordinates (seeded), the prefix noise / (std·√popcount(p)) is
  N(0, 1) (two-sided χ² of its sum of squares) at several prefixes; prefixes sharing nodes share
  their draws: the covariance of prefixes 4 and 6 (node (2, 0) in both) is std², of 4 and 3 (no
  node in common) 0, within 5 standard errors. Prefix 0 has no noise."""
  std, levels, keys = 0.7, 6, jax.random.split(jax.random.key(0), 4000)
  noise = jax.jit(jax.vmap(lambda k, p: privacy.tree_prefix_noise(k, p, (25,), std, levels),
                           in_axes=(0, None)))
  for p in (1, 3, 7, 12, 31, 63):
    z = np.asarray(noise(keys, p), np.float64) / (std * math.sqrt(bin(p).count("1")))
    q = float(np.sum(z * z))
    assert 0.001 < stats.chi2.cdf(q, z.size) < 0.999, (p, q / z.size)
  assert not np.asarray(noise(keys[:3], 0)).any()
  n4, n6, n3 = (np.asarray(noise(keys, p), np.float64) for p in (4, 6, 3))
  se = std ** 2 * math.sqrt(2.0 / n4.size)
  assert abs(np.mean(n4 * n6) - std ** 2) < 5 * se * math.sqrt(2)
  assert abs(np.mean(n4 * n3)) < 5 * se * math.sqrt(2)


def test_round_noise_telescopes_to_the_prefix_noise():
  """Σ_{r<p} tree_round_noise(r) = tree_prefix_noise(p) for every p < 2^levels, with the round
  traced (vmap under jit)."""
  std, levels, key = 1.3, 5, jax.random.key(7)
  rounds = jnp.arange(2 ** levels - 1)
  per_round = np.asarray(jax.jit(jax.vmap(
      lambda r: privacy.tree_round_noise(key, r, (4,), std, levels)))(rounds), np.float64)
  prefixes = np.asarray(jax.jit(jax.vmap(
      lambda p: privacy.tree_prefix_noise(key, p, (4,), std, levels)))(rounds + 1), np.float64)
  np.testing.assert_allclose(np.cumsum(per_round, axis=0), prefixes, atol=2e-5)
  # The round's noise has variance popcount(r+1)·std² + popcount(r)·std² − 2·shared·std².
  assert np.abs(per_round[0] - prefixes[0]).max() < 1e-6


def _released_nodes(r):
  return [(l, j) for l in range(r.bit_length() + 1) for j in range(r + 1)
          if (j + 1) * 2 ** l <= r]


def test_tree_sensitivity_factors_are_brute_force_counts():
  """"every": a client in every round moves every released node (l, j) by its 2^l leaves' Δ;
  "once": the most released nodes any one leaf is in."""
  for r in range(1, 21):
    nodes = _released_nodes(r)
    every = sum((2 ** l) ** 2 for l, _ in nodes)
    once = max(sum(1 for l, j in nodes if j * 2 ** l <= t < (j + 1) * 2 ** l) for t in range(r))
    assert privacy.tree_sensitivity_factor(r, "every") ** 2 == pytest.approx(every, rel=1e-12)
    assert privacy.tree_sensitivity_factor(r, "once") ** 2 == pytest.approx(once, rel=1e-12)
  with pytest.raises(errors.ConfigError, match="participation"):
    privacy.tree_sensitivity_factor(4, "twice")


@pytest.mark.parametrize("rounds, restart", [(1, 0), (7, 0), (8, 0), (100, 0), (250, 100),
                                             (64, 16)])
def test_the_once_trees_epsilon_is_dp_accountings_single_epoch_tree(rounds, restart):
  """dp-accounting's `SingleEpochTreeAggregationDpEvent(σ, step_counts)` (RDP, REPLACE_SPECIAL:
  Kairouz et al. 2021, Appendix D) is a record in at most one leaf across all the listed trees:
  RDP α·depth/(2σ²), depth = ceil(log2(max steps + 1)). A client once in each of our trees is its
  event per tree, composed: one event per tree (`ComposedDpEvent`)."""
  import dp_accounting  # pylint: disable=g-import-not-at-top
  sigma, every = 2.0, restart or rounds
  sizes = [every] * (rounds // every) + ([rounds % every] if rounds % every else [])
  event = dp_accounting.ComposedDpEvent(
      [dp_accounting.SingleEpochTreeAggregationDpEvent(sigma, s) for s in sizes])
  expected = _dp_accounting_epsilon(
      _rdp(dp_accounting.NeighboringRelation.REPLACE_SPECIAL), event)
  got = _dp_accounting_epsilon(_rdp(None), privacy.tree_event(sigma, rounds, restart, "once"))
  assert got == pytest.approx(expected, rel=1e-9)


def test_the_tree_accountant_is_the_composed_gaussian_and_calibrates():
  """tree_epsilon (every round, the worst case) is the Gaussian mechanism of multiplier
  σ/sqrt(Σ_k factor(R_k)²) (closed form, PLD within its discretization), more than "once";
  restarting more often costs less per tree but the trees compose; the calibration gives the
  smallest σ reaching the target, for one tree of 2,000 rounds too (σ ≈ 1000: the search starts
  above the PLD grid's floor)."""
  sigma, rounds, restart = 300.0, 250, 100
  total = 2 * privacy.tree_sensitivity_factor(100, "every") ** 2 + privacy.tree_sensitivity_factor(
      50, "every") ** 2
  exact = _exact_gaussian_epsilon(sigma / math.sqrt(total), 1e-5)
  pld = privacy.tree_epsilon(sigma, rounds, 1e-5, restart)
  assert exact - 1e-6 <= pld <= exact + 0.01
  assert privacy.tree_epsilon(sigma, rounds, 1e-5, restart, "rdp") >= exact - 1e-6
  once = _dp_accounting_epsilon(_pld(None), privacy.tree_event(sigma, rounds, restart, "once"))
  assert once < pld
  for r, every in ((250, 100), (2000, 0)):
    s = privacy.tree_noise_for_epsilon(5.0, r, 1e-5, every)
    assert privacy.tree_epsilon(s, r, 1e-5, every) <= 5.0 + 1e-6
    assert privacy.tree_epsilon(0.99 * s, r, 1e-5, every) > 5.0


# ------------------------------------------------------------------------- adaptive clipping
def test_noisy_below_count_counts_non_finite_norms_as_above_and_weights():
  norms = jnp.asarray([0.5, jnp.nan, jnp.inf, 2.0, 1.0, -jnp.inf, 0.1], jnp.float32)
  key = jax.random.key(0)
  assert float(privacy.noisy_below_count(key, norms, 1.0, 0.0)) == 3.0
  mask = jnp.asarray([1, 1, 1, 1, 0, 1, 1], jnp.float32)
  assert float(privacy.noisy_below_count(key, norms, 1.0, 0.0, mask)) == 2.0
  counts = jax.vmap(lambda k: privacy.noisy_below_count(k, norms, 1.0, 2.5))(
      jax.random.split(key, 4000))
  z = (np.asarray(counts, np.float64) - 3.0) / 2.5
  assert abs(z.mean()) < 5 / math.sqrt(z.size) and abs(z.std() - 1) < 0.05


@pytest.mark.parametrize("quantile", [0.1, 0.5, 0.9])
def test_adaptive_clipping_tracks_the_target_quantile(quantile):
  """Andrew et al.'s geometric update with the noised count (σ_b = m/20) on a seeded stream of
  300 rounds × 500 lognormal(0, 1) norms from C = 1: the clip's geometric mean over the last 100
  rounds is within 5% of the stream's empirical γ-quantile."""
  m, rounds, lr = 500, 300, 0.2
  norms = jnp.asarray(np.random.default_rng(3).lognormal(0.0, 1.0, size=(rounds, m)),
                      jnp.float32)
  noise = privacy.default_count_noise(m)
  assert noise == 25.0

  def step(clip, inputs):
    key, row = inputs
    count = privacy.noisy_below_count(key, row, clip, noise)
    return privacy.adaptive_clip_update(clip, count, m, quantile, lr), clip

  _, clips = jax.jit(lambda: jax.lax.scan(step, jnp.float32(1.0),
                                          (jax.random.split(jax.random.key(1), rounds),
                                           norms)))()
  tracked = math.exp(float(np.mean(np.log(np.asarray(clips[-100:], np.float64)))))
  target = float(np.quantile(np.asarray(norms), quantile))
  assert tracked == pytest.approx(target, rel=0.05), (tracked, target)


def test_the_count_and_update_split_is_one_gaussian_mechanism():
  """Andrew et al. 2021, Theorem 1: 1/z² = 1/z_Δ² + (s_b/σ_b)² exactly, their form with s_b =
  1/2 (z_Δ = (z^{-2} − (2σ_b)^{-2})^{-1/2}); dp-accounting composing the update's Gaussian and
  the count's (multiplier σ_b/s_b) gives the ε of one Gaussian of multiplier z; a σ_b at or
  below s_b·z is refused with the bound."""
  import dp_accounting  # pylint: disable=g-import-not-at-top
  z, sigma_b = 1.1, 5.0
  for sb in (0.5, 1.0):
    zd = privacy.adaptive_update_multiplier(z, sigma_b, sb)
    assert 1 / z ** 2 == pytest.approx(1 / zd ** 2 + (sb / sigma_b) ** 2, rel=1e-12)
    pair = dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(zd),
                                          dp_accounting.GaussianDpEvent(sigma_b / sb)])
    assert _dp_accounting_epsilon(_rdp(None), pair) == pytest.approx(
        _dp_accounting_epsilon(_rdp(None), dp_accounting.GaussianDpEvent(z)), rel=1e-9)
  assert privacy.adaptive_update_multiplier(z, sigma_b, 0.5) == pytest.approx(
      (z ** -2 - (2 * sigma_b) ** -2) ** -0.5, rel=1e-12)
  with pytest.raises(errors.ConfigError, match="privacy.count_noise") as e:
    privacy.adaptive_update_multiplier(z, 0.55, 0.5)
  assert "0.55" in str(e.value)  # s_b·z = 0.55 is the bound, not allowed itself
  with pytest.raises(errors.ConfigError, match="privacy.count_noise"):
    privacy.adaptive_update_multiplier(z, 0.0, 1.0)


# ------------------------------------------------------ deployed mechanisms inside a round
def _logistic_round_setup(rng, **fields):
  """A 4-client logistic Simulator (one full-batch local step, lr 0.3, no momentum) with the
  given privacy fields, its data, and each client's update u_i = 0.3·∇L_i(θ_0) in float64."""
  from test_training import client_data  # pylint: disable=g-import-not-at-top
  train, _, _ = client_data(rng)
  model = models.get("logistic", input_shape=(4, 1, 1), num_classes=3)
  sim = training.Simulator(
      model=model, aggregator=aggregators.get(fields.pop("aggregator", "mean"), f=1,
                                              presence=fields.get("client_sampling") == "poisson"),
      attack=attacks.get("none", num_classes=3),
      local=training.LocalTraining(local_steps=1, batch_size=0, lr=0.3, momentum=0.0),
      server_optimizer=optax.sgd(1.0), num_clients=4, **fields)
  state = sim.init(jax.random.key(0))
  rows = 0.3 * np.asarray(sim.client_gradients(state.params, train), np.float64)
  return sim, state, train, rows


def _clip(rows, c):
  norms = np.linalg.norm(rows, axis=1, keepdims=True)
  return rows * np.minimum(1.0, c / norms)


def test_central_dp_clips_every_row_then_the_rule_then_noise_of_std_sigma_delta(rng):
  """Without noise the round is the mean of the rows clipped to C (NumPy); with σ the
  aggregate's noise over 4000 draws has std σ·Δ, Δ = 2C/m for the mean (m = 4)."""
  sim, state, train, rows = _logistic_round_setup(rng, central_clip=0.05, central_noise=0.0,
                                                  central_sensitivity=0.5)
  assert np.median(np.linalg.norm(rows, axis=1)) > 0.05  # the clip binds
  new, _ = jax.jit(sim.round)(state, jnp.ones(4, bool), jax.random.key(1), train)
  np.testing.assert_allclose(np.asarray(state.params) - np.asarray(new.params),
                             _clip(rows, 0.05).mean(0), atol=2e-6)
  noisy, _, _, _ = _logistic_round_setup(np.random.default_rng(0), central_clip=0.05,
                                         central_noise=3.0, central_sensitivity=0.5)
  keys = jax.random.split(jax.random.key(2), 4000)
  draws = jax.jit(jax.vmap(lambda k: noisy._central_noise(k, k, jnp.int32(0), jnp.ones(4, bool),
                                                         0.05, jnp.zeros(15))))(keys)
  std = float(np.std(np.asarray(draws)))
  assert std == pytest.approx(3.0 * 0.5 * 0.05, rel=0.02)


@pytest.mark.parametrize("fields", [
    {}, {"aggregator": "geometric_median", "central_sensitivity": 2.0},
    {"clients_per_round": 2, "client_sampling": "poisson", "aggregator": "geometric_median",
     "central_sensitivity": 2.0},
    {"clients_per_round": 2, "client_sampling": "poisson", "central_fixed_denominator": 2.0}])
def test_a_central_round_adds_the_noise_to_its_aggregate(rng, fields):
  """The round's model step minus the noiseless one's, over 600 draws, has std σ·Δ: the noise
  reaches the aggregate for every rule, with and without Poisson sampling."""
  fields = {"central_sensitivity": 0.5, **fields}
  clean, state, train, _ = _logistic_round_setup(rng, central_clip=0.05, central_noise=0.0,
                                                 **dict(fields))
  noisy, _, _, _ = _logistic_round_setup(np.random.default_rng(1234), central_clip=0.05,
                                         central_noise=2.0, **dict(fields))
  keys = jax.random.split(jax.random.key(11), 600)
  step = lambda sim: jax.jit(jax.vmap(lambda k: sim.round(state, jnp.ones(4, bool), k,
                                                          train)[0].params))(keys)
  diff = np.asarray(step(noisy)) - np.asarray(step(clean))
  ran = np.abs(np.asarray(step(clean)) - np.asarray(state.params)[None]).sum(axis=1) > 0
  assert ran.mean() > 0.2  # rounds not skipped
  assert float(np.std(diff[ran])) == pytest.approx(2.0 * fields["central_sensitivity"] * 0.05,
                                                   rel=0.05)


def test_the_honest_only_reference_takes_the_mean_over_its_honest_clients():
  """The reference run's Δ is 2C/|H| per draw (the mean of the honest clients it averages)."""
  sim, _, _, _ = _logistic_round_setup(np.random.default_rng(0), central_clip=1.0,
                                       central_noise=1.0, honest_only=True,
                                       aggregator="mean")
  honest = jnp.array([True, False, True, False])
  keys = jax.random.split(jax.random.key(3), 4000)
  draws = jax.jit(jax.vmap(lambda k: sim._central_noise(k, k, jnp.int32(0), honest, 1.0,
                                                       jnp.zeros(15))))(keys)
  assert float(np.std(np.asarray(draws))) == pytest.approx(2.0 / 2, rel=0.02)


def test_tree_noise_in_a_run_gives_prefix_sums_of_popcount_variance():
  """With tree_rounds = 8, the running sum of rounds 0..t−1's central noise has variance
  popcount(t)·(σΔ)² (t ≤ 8), and the ninth round starts a fresh tree (variance 1 node again
  on top of the first tree's 8-prefix: popcount(8) + popcount(1) = 2)."""
  sim, _, _, _ = _logistic_round_setup(np.random.default_rng(0), central_clip=1.0,
                                       central_noise=1.0, central_sensitivity=1.0,
                                       tree_rounds=8)
  keys = jax.random.split(jax.random.key(4), 3000)

  def run(k):
    noise = [sim._central_noise(k, jax.random.fold_in(k, t), jnp.int32(t), jnp.ones(4, bool),
                                1.0, jnp.zeros(15)) for t in range(9)]
    return jnp.cumsum(jnp.stack(noise), axis=0)

  sums = np.asarray(jax.jit(jax.vmap(run))(keys))
  variances = sums.var(axis=(0, 2))
  expected = [bin(t).count("1") for t in range(1, 9)] + [2]
  np.testing.assert_allclose(variances, expected, rtol=0.06)


def test_central_adaptive_clipping_takes_one_geometric_step_per_round(rng):
  """One round with count noise 0: C₁ = C₀·exp(−η(share of rows with ‖u_i‖ ≤ C₀ − γ)) (NumPy
  on the clients' updates), the rows clipped to C₀ and averaged."""
  sim, state, train, rows = _logistic_round_setup(rng, central_clip=0.365, central_noise=0.0,
                                                  central_sensitivity=0.5,
                                                  adaptive_quantile=0.3, adaptive_lr=0.5,
                                                  count_noise=0.0)
  norms = np.linalg.norm(rows, axis=1)
  new, aux = jax.jit(sim.round)(state, jnp.ones(4, bool), jax.random.key(1), train)
  share = np.mean(norms <= 0.365)
  assert 0 < share < 1
  assert float(new.clip) == pytest.approx(0.365 * np.exp(-0.5 * (share - 0.3)), rel=1e-5)
  assert float(aux["clip_norm"]) == pytest.approx(0.365)
  np.testing.assert_allclose(np.asarray(state.params) - np.asarray(new.params),
                             _clip(rows, 0.365).mean(0), atol=2e-6)


def test_client_level_adaptive_clipping_counts_honest_bits_and_byzantine_as_above(rng):
  """Kind 'client' adaptive: the honest clients' bits (Byzantine ones report 'above') over all
  m rows move C; the sent rows are clipped to C₀ (no noise here)."""
  sim, state, train, rows = _logistic_round_setup(rng, privacy_clip=0.365, privacy_noise=0.0,
                                                  adaptive_quantile=0.5, adaptive_lr=0.5,
                                                  count_noise=0.0)
  honest = jnp.array([True, True, True, False])
  new, _ = jax.jit(sim.round)(state, honest, jax.random.key(1), train)
  norms = np.linalg.norm(rows, axis=1)
  share = np.sum((norms <= 0.365) & np.asarray(honest)) / 4
  assert float(new.clip) == pytest.approx(0.365 * np.exp(-0.5 * (share - 0.5)), rel=1e-5)


@pytest.mark.parametrize("kind", ["central", "distributed"])
def test_a_deployed_job_calibrates_sigma_to_the_target_and_reports_it(kind):
  """A whole tiny job with a target ε: the summary's ε is at most the target and is the
  accountant's for the σ it prints (central: every client every round; distributed: the same
  accounting, no amplification) and the run trains (finite losses)."""
  c = tiny_config()
  c.aggregator = "mean,trimmed_mean"
  c.privacy.kind = kind
  c.privacy.target_epsilon = 6.0
  if kind == "distributed":
    c.secure_aggregation.group_size = 2
  exp = experiment.run(c, log=lambda _: None)
  info = exp.privacy
  assert info["epsilon"] <= 6.0 + 1e-6
  assert info["epsilon"] == pytest.approx(privacy.central_epsilon(
      info["noise_multiplier"], 10, 1e-5, sampling="none", num_clients=6, clients_per_round=6))
  for run in exp.runs.values():
    assert np.isfinite(np.asarray(run.metrics["honest_loss"])).all()


@pytest.mark.parametrize("overrides,match", [
    ({"privacy.kind": "central", "aggregator": "centered_clipping"}, "centered_clipping"),
    ({"privacy.kind": "central", "training.clients_per_round": 4}, "privacy.accountant"),
    ({"privacy.kind": "distributed"}, "secure_aggregation.group_size"),
    ({"secure_aggregation.group_size": 4}, "secure_aggregation.group_size"),
    ({"secure_aggregation.group_size": 3, "aggregator": "trimmed_mean"}, "group means"),
    ({"privacy.kind": "central", "secure_aggregation.group_size": 2}, "distributed"),
    ({"privacy.kind": "client", "privacy.tree": True}, "privacy.tree"),
    ({"privacy.kind": "distributed", "secure_aggregation.group_size": 2,
      "privacy.adaptive_clip": True}, "adaptive_clip"),
    ({"privacy.kind": "client", "privacy.adaptive_clip": True}, "count_noise"),
    ({"privacy.kind": "central", "privacy.adaptive_clip": True}, "count_noise"),
    ({"privacy.kind": "central", "training.weighted_aggregation": True}, "weighted"),
    ({"training.client_sampling": "poisson"}, "clients_per_round"),
    ({"training.client_sampling": "poisson", "training.clients_per_round": 4,
      "secure_aggregation.group_size": 2}, "client_sampling='poisson'"),
    ({"privacy.kind": "central", "training.client_sampling": "poisson",
      "training.clients_per_round": 4, "aggregator": "trimmed_mean"}, "trimmed band"),
])
def test_deployed_privacy_refuses_what_it_does_not_model(overrides, match):
  c = tiny_config()
  c.aggregator = overrides.pop("aggregator", "mean")
  for key, value in overrides.items():
    set_key(c, key, value)
  with pytest.raises(errors.ConfigError, match=match):
    config_lib.resolve(c)


def test_dp_sgd_adaptive_clipping_moves_each_clients_clip_every_local_step():
  """DP-SGD with adaptive clipping, one client with every example in every minibatch (B ≥ m,
  q = 1), no noise and a frozen model (lr 0): the per-example gradient norms are fixed, so the
  clip follows C_{k+1} = C_k·exp(−η(#{j: ‖g_j‖ ≤ C_k}/B − γ)) exactly (NumPy, per-example
  logistic gradients in float64)."""
  from test_training import client_data, np_grad  # pylint: disable=g-import-not-at-top
  train, xs, ys = client_data(np.random.default_rng(3))
  model = models.get("logistic", input_shape=(4, 1, 1), num_classes=3)
  sim = training.Simulator(
      model=model, aggregator=aggregators.get("mean", f=1),
      attack=attacks.get("none", num_classes=3),
      local=training.LocalTraining(local_steps=6, batch_size=12, lr=0.0, momentum=0.0),
      server_optimizer=optax.sgd(1.0), num_clients=4, dp_sgd_clip=0.3, dp_sgd_noise=0.0,
      adaptive_quantile=0.7, adaptive_lr=0.4, count_noise=0.0)
  params = sim.init(jax.random.key(0)).params
  init = model.init(jax.random.key(0))
  w = np.asarray(init["params"]["Dense_0"]["kernel"], np.float64)
  b = np.asarray(init["params"]["Dense_0"]["bias"], np.float64)
  i = 1  # 9 examples
  norms = []
  for j in range(len(ys[i])):
    gw, gb = np_grad(w, b, xs[i][j:j + 1], ys[i][j:j + 1])
    norms.append(np.sqrt(np.sum(gw ** 2) + np.sum(gb ** 2)))
  norms = np.array(norms)
  c = 0.3
  for _ in range(6):
    c = c * np.exp(-0.4 * (np.sum(norms <= c) / 12 - 0.7))
  _, _, clip = jax.jit(sim.local_update)(params, jnp.zeros_like(params), train.x[i],
                                         train.y[i], train.counts[i], jax.random.key(5),
                                         False, clip=jnp.float32(0.3))
  assert float(clip) == pytest.approx(c, rel=1e-5)
  assert abs(c - 0.3) > 0.01  # the clip moved


def test_a_dp_sgd_job_with_adaptive_clipping_splits_sigma_and_reports_the_clip():
  """A tiny DP-SGD job with adaptive clipping: the update's multiplier is Theorem 1's split of
  σ, the per-client clips move (aux clip_norm differs from the start) and the run trains."""
  c = tiny_config()
  c.aggregator = "mean"
  c.privacy.kind = "example"
  c.privacy.noise_multiplier = 1.0
  c.privacy.adaptive_clip = True
  c.privacy.count_noise = 4.0
  exp = experiment.run(c, log=lambda _: None)
  assert exp.privacy["update_noise_multiplier"] == pytest.approx(
      (1.0 - (1 / 4.0) ** 2) ** -0.5)
  run = exp.runs["mean"]
  assert np.isfinite(np.asarray(run.metrics["honest_loss"])).all()
  assert abs(float(np.mean(np.asarray(run.aux["clip_norm"]))) - 1.0) > 1e-3


def test_poisson_sampling_takes_each_client_with_probability_q_and_the_fixed_denominator(rng):
  """client_sampling='poisson', q = 2/4: over 400 rounds each client takes part with frequency
  ≈ q (binomial 99.9% band); the unsampled keep their (zero) momentum; central DP's mean is
  Σ_{sampled} clip(u_i)/(q·n) (NumPy on the clients' updates), never skipped."""
  sim, state, train, rows = _logistic_round_setup(
      rng, central_clip=100.0, central_noise=0.0, central_sensitivity=0.5, clients_per_round=2,
      client_sampling="poisson", central_fixed_denominator=2.0)
  assert sim.poisson and not sim.sampling
  step = jax.jit(jax.vmap(lambda k: sim.round(state, jnp.ones(4, bool), k, train)[0]))
  new = step(jax.random.split(jax.random.key(7), 400))
  took = np.abs(np.asarray(new.momentum)).sum(axis=2) > 0  # [400, 4]
  share = took.mean(axis=0)
  half_width = 3.3 * np.sqrt(0.25 / 400)
  assert np.all(np.abs(share - 0.5) < half_width), share
  moved = np.asarray(state.params)[None] - np.asarray(new.params)
  # No round is skipped: the fixed-denominator mean is defined for any count (0 included).
  assert np.any(took.sum(axis=1) <= 2)
  np.testing.assert_allclose(moved, took.astype(np.float64) @ rows / 2.0, atol=2e-6)


def test_a_poisson_central_job_is_amplified_under_add_remove():
  """A tiny central-DP job with Poisson sampling: its ε is dp-accounting's Poisson-subsampled
  Gaussian (central_epsilon 'poisson'), below the fixed-size and the unsampled ε at that σ."""
  c = tiny_config()
  c.aggregator = "mean,krum"
  c.f = 1
  c.privacy.kind = "central"
  c.privacy.noise_multiplier = 1.0
  c.training.clients_per_round = 3
  c.training.client_sampling = "poisson"
  exp = experiment.run(c, log=lambda _: None)
  info = exp.privacy
  kw = dict(num_clients=6, clients_per_round=3)
  assert info["sampling"] == "poisson" and info["neighbours"] == "add_or_remove_one"
  assert info["epsilon"] == pytest.approx(privacy.central_epsilon(1.0, 10, 1e-5,
                                                                  sampling="poisson", **kw))
  assert info["epsilon"] < privacy.central_epsilon(1.0, 10, 1e-5, sampling="none", **kw)
  assert "Poisson sampling at rate q = 3/6" in config_lib.describe_privacy(info)
  assert "fixed denominator" in info["sensitivity"]["mean"]
  for run in exp.runs.values():
    assert np.isfinite(np.asarray(run.metrics["honest_loss"])).all()


def test_an_unsampled_client_leaves_a_poisson_round_unchanged(rng):
  """Amplification by Poisson sampling needs a client outside the round's sample to have no
  effect: with ALIE (which reads the honest rows) client 0's data replaced, every round in which
  client 0 was not sampled gives the same model bit for bit (the attack sees the sample only)."""
  from test_training import client_data  # pylint: disable=g-import-not-at-top
  sim, state, train, _ = _logistic_round_setup(
      rng, central_clip=0.05, central_noise=0.0, central_sensitivity=1.0 / 3,
      clients_per_round=3, client_sampling="poisson", central_fixed_denominator=3.0)
  sim = dataclasses.replace(sim, attack=attacks.get("alie", num_classes=3,
                                                    options={"z": 1.5}))
  other, _, _ = client_data(np.random.default_rng(99))
  changed = train._replace(x=train.x.at[0].set(other.x[0]), y=train.y.at[0].set(other.y[0]))
  honest = jnp.array([True, True, True, False])
  keys = jax.random.split(jax.random.key(5), 64)
  run = lambda data: jax.jit(jax.vmap(lambda k: sim.round(state, honest, k, data)[0]))(keys)
  a, b = run(train), run(changed)
  unsampled = np.abs(np.asarray(a.momentum)[:, 0]).sum(axis=1) == 0
  assert 5 < unsampled.sum() < 60
  np.testing.assert_array_equal(np.asarray(a.params)[unsampled], np.asarray(b.params)[unsampled])
  assert not np.array_equal(np.asarray(a.params)[~unsampled], np.asarray(b.params)[~unsampled])


@pytest.mark.parametrize("overrides,match", [
    ({"aggregator": "rfa_one_step", "training.clients_per_round": 4,
      "privacy.accountant": "rdp"}, "keeps a state across rounds"),
    ({"training.client_sampling": "poisson", "training.clients_per_round": 4,
      "attack": "alie", "attack_options.alie.z": float("nan")}, "attack_options.alie.z"),
])
def test_central_dp_refuses_what_breaks_its_sampling_argument(overrides, match):
  c = tiny_config()
  c.privacy.kind = "central"
  c.aggregator = overrides.pop("aggregator", "mean")
  for key, value in overrides.items():
    set_key(c, key, value)
  with pytest.raises(errors.ConfigError, match=match):
    config_lib.resolve(c)
