"""RFA's one-step variant (issue 17, item 3) against its formula in NumPy, against one Weiszfeld
update of the geometric median, across rounds through the registry's state, and with NaN/±inf/
huge rows."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_robust import aggregators

# The module (the package exports a function of the same name).
geometric_median = importlib.import_module("fedjax_robust.aggregators.geometric_median")


def np_one_step(x, z, alpha=None, nu=1e-6):
  x, z = np.asarray(x, np.float64), np.asarray(z, np.float64)
  alpha = np.ones(len(x)) if alpha is None else np.asarray(alpha, np.float64)
  beta = alpha / np.maximum(np.linalg.norm(x - z, axis=1), nu)
  return beta @ x / beta.sum()


@pytest.mark.parametrize("seed", range(3))
def test_one_step_matches_its_formula_and_one_weiszfeld_update(seed):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(9, 7))
  x[:2] += 20.0
  z = rng.normal(size=7)
  alpha = rng.uniform(0.5, 2.0, 9)
  one = jax.jit(geometric_median.rfa_one_step)
  np.testing.assert_allclose(one(jnp.asarray(x, jnp.float32), center=jnp.asarray(z, jnp.float32)),
                             np_one_step(x, z), rtol=2e-5, atol=2e-6)
  np.testing.assert_allclose(
      one(jnp.asarray(x, jnp.float32), center=jnp.asarray(z, jnp.float32),
          weights=jnp.asarray(alpha, jnp.float32)), np_one_step(x, z, alpha), rtol=2e-5, atol=2e-6)
  # From the current mean it is the geometric median's first Weiszfeld update (maxiter = 1).
  xj = jnp.asarray(x, jnp.float32)
  gm = geometric_median.weiszfeld(xj, maxiter=1)
  assert int(gm.num_iterations) == 1
  np.testing.assert_allclose(one(xj, center=jnp.mean(xj, axis=0)), gm.median, rtol=1e-5,
                             atol=1e-6)


def test_one_step_carries_the_previous_aggregate_across_rounds():
  rng = np.random.default_rng(4)
  agg = aggregators.get("rfa_one_step", f=2)
  state = agg.init(6)
  z = np.zeros(6)
  for _ in range(4):
    x = rng.normal(size=(8, 6)) + 1.0
    out, state, _ = agg.apply(jnp.asarray(x, jnp.float32), state, jax.random.key(0))
    z = np_one_step(x, z)                       # the first round starts from z_prev = 0
    np.testing.assert_allclose(out, z, rtol=1e-5, atol=1e-6)


def test_nonfinite_rows_get_no_weight_huge_ones_a_bounded_pull_and_vmap_matches():
  rng = np.random.default_rng(5)
  x = rng.normal(size=(10, 5)).astype(np.float32)
  z = jnp.asarray(rng.normal(size=5), jnp.float32)
  clean = np_one_step(x[3:], z)
  one = jax.jit(geometric_median.rfa_one_step)
  for bad in (np.nan, np.inf, -np.inf):
    y = x.copy()
    y[:3] = bad
    np.testing.assert_allclose(one(jnp.asarray(y), center=z), clean, rtol=1e-5, atol=1e-6)
  # A huge finite row keeps its bounded pull, β_i x_i ≈ x_i/‖x_i − z‖ (a unit vector): the
  # float32 rule computes it without overflow, as the float64 formula does.
  y = x.copy()
  y[:3] = 1e30
  np.testing.assert_allclose(one(jnp.asarray(y), center=z), np_one_step(y, z), rtol=1e-4,
                             atol=1e-5)
  # A distance beyond the float32 range (3e38·√5) counts as infinite: no weight.
  y[:3] = 3e38
  np.testing.assert_allclose(one(jnp.asarray(y), center=z), clean, rtol=1e-5, atol=1e-6)
  y = x.copy()
  y[:] = np.nan
  assert np.all(np.isnan(one(jnp.asarray(y), center=z)))    # no finite row: undefined
  batch = np.stack([x, np.where(np.arange(10)[:, None] < 2, np.inf, x), x * 3])
  centers = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)
  out = jax.jit(jax.vmap(lambda u, c: geometric_median.rfa_one_step(u, center=c)))(
      jnp.asarray(batch, jnp.float32), centers)
  for k in range(3):
    np.testing.assert_allclose(out[k], one(jnp.asarray(batch[k]), center=centers[k]),
                               rtol=1e-6, atol=1e-7)


def test_communication_per_round_by_rule_and_in_the_summary():
  """Secure averages and numbers sent (registry.communication): 1 secure average for the mean
  and the one-step rule, 1 + the Weiszfeld iterations for the geometric median, each one
  m·(d + ⌈log₂ m⌉) numbers; rules that need the rows in the clear: m·d. The summary's total
  is the per-round count times the rounds."""
  rng = np.random.default_rng(7)
  n, d = 11, 6
  x = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
  per_call = n * (d + 4)                                    # ⌈log₂ 11⌉ = 4
  for spec, calls in (("mean", 1), ("rfa_one_step", 1), ("trimmed_mean", 0),
                      ("nnm+mean", 0), ("bucketing+geometric_median", 0)):
    agg = aggregators.get(spec, f=2)
    _, _, aux = agg.apply(x, agg.init(d), jax.random.key(0))
    assert float(aux["secure_averages"]) == calls, spec
    assert float(aux["numbers_sent"]) == (calls * per_call if calls else n * d), spec
  agg = aggregators.get("geometric_median", f=2, options={"geometric_median": {"maxiter": 4}})
  _, _, aux = agg.apply(x, agg.init(d), jax.random.key(0))
  iterations = int(geometric_median.weiszfeld(x, maxiter=4).num_iterations)
  assert float(aux["gm_iterations"]) == iterations
  assert float(aux["secure_averages"]) == 1 + iterations
  assert float(aux["numbers_sent"]) == (1 + iterations) * per_call
  # Drop-outs: m is the number of clients present.
  agg = aggregators.get("mean", f=2, presence=True)
  present = jnp.arange(n) < 7
  _, _, aux = agg.apply(x, agg.init(d), jax.random.key(0), present=present)
  assert float(aux["numbers_sent"]) == 7 * (d + 3)
  # Through a run: the summary's total is rounds × the per-round count.
  from fedjax_robust import experiment  # pylint: disable=g-import-not-at-top
  from fedjax_robust import results  # pylint: disable=g-import-not-at-top
  from tests import tiny_config  # pylint: disable=g-import-not-at-top
  c = tiny_config.get_config()
  c.aggregator = "mean"
  exp = experiment.run(c, log=lambda _: None)
  s = results.summarize(exp)["aggregators"]["mean"]
  num_params = experiment.simulator(c, "mean", exp.data).num_params
  expected = c.num_clients * (num_params + int(np.ceil(np.log2(c.num_clients))))
  assert s["numbers_sent"] == pytest.approx(expected)
  assert s["numbers_sent_total"] == pytest.approx(expected * c.training.num_rounds)
  assert s["secure_averages_total"] == pytest.approx(c.training.num_rounds)
  # metrics.csv: the communication up to each evaluation round.
  import csv  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as tmp:
    results.write_metrics_csv(exp, f"{tmp}/metrics.csv")
    with open(f"{tmp}/metrics.csv") as fh:
      rows = [r for r in csv.DictReader(fh) if r["aggregator"] == "mean"
              and r["metric"] == "aux:numbers_sent_cumulative"]
  assert [int(r["round"]) for r in rows] == [5, 10]
  assert [float(r["mean"]) for r in rows] == pytest.approx([5 * expected, 10 * expected])


def test_rfa_sweep_points_are_valid_and_vary_only_the_rule_and_threat():
  from configs import sweep_rfa  # pylint: disable=g-import-not-at-top
  from fedjax_robust import config as config_lib  # pylint: disable=g-import-not-at-top
  from fedjax_robust import sweep  # pylint: disable=g-import-not-at-top
  c = sweep_rfa.get_config()
  pts = sweep_rfa.points(c)
  assert len(pts) == len(sweep_rfa.THREATS) * (2 + len(sweep_rfa.MAXITER))
  for p in pts:
    cfg = sweep.apply_overrides(c.base, p.overrides)
    config_lib.validate(cfg)
    if p.tags["rule"].startswith("geometric_median@"):
      assert cfg.aggregator_options.geometric_median.maxiter == int(p.tags["rule"].split("@")[1])
