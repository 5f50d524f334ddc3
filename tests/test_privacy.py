"""Client-level DP (issue 18, first step): clipping, the noise's scale, the accountant against
the Gaussian mechanism's closed form, calibration, and the switch through a job."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize, stats

from conftest import tiny_config
from fedjax_robust import config as config_lib
from fedjax_robust import errors
from fedjax_robust import experiment
from fedjax_robust import privacy
from fedjax_robust import results


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
  assert exp.config.privacy.noise_multiplier == info["noise_multiplier"]
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
  sim = config_lib.make_simulator(c, "mean", fed)
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
