"""The rules' L2 sensitivity under central DP (aggregators/sensitivity.py): the derived bounds hold
on adversarial replacements (float64 NumPy), are attained where the module says they are tight,
the hull rules never leave the clipping ball, and the rules without a bound are refused."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_robust import aggregators
from fedjax_robust import errors
from fedjax_robust.aggregators import sensitivity


def np_trimmed_mean(x, f):
  s = np.sort(x, axis=0)
  return s[f:len(x) - f].mean(axis=0)


def in_ball(rng, m, d, c):
  x = rng.normal(size=(m, d)) * rng.uniform(0.1, 3.0, size=(m, 1))
  norms = np.linalg.norm(x, axis=1, keepdims=True)
  return x * np.minimum(1.0, c / norms)


@pytest.mark.parametrize("m,f", [(5, 1), (8, 2), (7, 0), (9, 4)])
def test_trimmed_mean_bound_holds_and_is_attained(m, f):
  c = 1.5
  factor, how = sensitivity.central_sensitivity("trimmed_mean", rows=m, f=f)
  assert factor == pytest.approx(2.0 / (m - 2 * f)) and "derived" in how
  rng = np.random.default_rng(0)
  worst = 0.0
  for _ in range(400):
    x = in_ball(rng, m, 6, c)
    y = x.copy()
    i = rng.integers(m)
    y[i] = -x[i] if rng.uniform() < 0.5 else in_ball(rng, 1, 6, c)[0]  # antipode or anywhere
    worst = max(worst, np.linalg.norm(np_trimmed_mean(x, f) - np_trimmed_mean(y, f)))
  assert worst <= factor * c + 1e-12
  # Tight in d = 1: f values at -C, f at +C, the rest at -C but one; that one goes -C -> +C and
  # stays in the middle band, so the middle sum moves by 2C.
  x = np.array([-c] * (m - f) + [c] * f)[:, None]
  y = x.copy()
  y[m - f - 1] = c
  assert abs(np_trimmed_mean(x, f) - np_trimmed_mean(y, f))[0] == pytest.approx(factor * c)


@pytest.mark.parametrize("m", [5, 6])
def test_median_factor_matches_its_tight_example(m):
  factor, _ = sensitivity.central_sensitivity("median", rows=m, f=1)
  x = np.array([-1.0] * (m // 2 + 1) + [1.0] * (m - m // 2 - 1))
  y = x.copy()
  y[0] = 1.0  # one value crosses the middle
  assert abs(np.median(x) - np.median(y)) == pytest.approx(factor)


def test_mean_factor_is_two_over_m():
  assert sensitivity.central_sensitivity("mean", rows=8, f=2)[0] == pytest.approx(0.25)


@pytest.mark.parametrize("spec", ["krum", "multi_krum", "geometric_median", "rfa_one_step",
                                  "minimum_diameter_averaging", "monna", "nnm+krum",
                                  "bucketing+geometric_median", "nnm+multi_krum"])
def test_hull_rules_stay_in_the_clipping_ball(spec):
  """Δ = 2C rests on the output lying in B(0, C): checked on rows clipped to C (some at the
  boundary, spread out), the rule's output norm ≤ C."""
  assert sensitivity.central_sensitivity(spec, rows=9, f=2)[0] == 2.0
  agg = aggregators.get(spec, f=2)
  rng = np.random.default_rng(1)
  x = jnp.asarray(np.stack([in_ball(rng, 9, 5, 1.0) for _ in range(20)]), jnp.float32)
  state = agg.init(5, jnp.float32)
  out = jax.jit(jax.vmap(lambda u, k: agg.apply(u, state, k)[0]))(
      x, jax.random.split(jax.random.key(0), 20))
  assert float(jnp.max(jnp.linalg.norm(out, axis=1))) <= 1.0 + 1e-5


@pytest.mark.parametrize("spec,why", [("centered_clipping", "centered_clipping"),
                                      ("nnm+trimmed_mean", "mixes one client's row"),
                                      ("bulyan", "bulyan"), ("meamed", "meamed")])
def test_rules_without_a_bound_are_refused(spec, why):
  with pytest.raises(errors.ConfigError, match=why):
    sensitivity.central_sensitivity(spec, rows=11, f=2)


def test_poisson_sampling_uses_the_fixed_denominator_mean_and_refuses_the_trimmed_band():
  """Under add/remove adjacency the fixed-denominator mean Σ x_i/E[m] moves by ‖x‖/E[m] ≤ C/E[m]
  when one row is added (NumPy), the hull rules keep 2C, the trimmed mean is refused."""
  factor, how = sensitivity.central_sensitivity("mean", rows=8, f=2, poisson=True)
  assert factor == pytest.approx(1 / 8) and "fixed denominator" in how
  rng = np.random.default_rng(2)
  x = in_ball(rng, 7, 4, 1.0)
  added = np.vstack([x, in_ball(rng, 1, 4, 1.0)])
  assert np.linalg.norm(added.sum(0) / 8 - x.sum(0) / 8) <= factor + 1e-12
  assert sensitivity.central_sensitivity("krum", rows=8, f=2, poisson=True)[0] == 2.0
  with pytest.raises(errors.ConfigError, match="client_sampling='poisson'"):
    sensitivity.central_sensitivity("trimmed_mean", rows=8, f=2, poisson=True)
