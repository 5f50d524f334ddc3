"""Least squares on the synthetic regression source: the data's heterogeneity, D-GD against NumPy,
the exact constants (L_S, μ_S, L_S*) against NumPy, the bounds of a run, and what is refused."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import synthetic_dgd_config
from jax.flatten_util import ravel_pytree

from fedjax_robust import attacks
from fedjax_robust import build
from fedjax_robust import config as config_lib
from fedjax_robust import data
from fedjax_robust import experiment
from fedjax_robust import models
from fedjax_robust import results
from fedjax_robust.errors import ConfigError
from fedjax_robust.theory import report


def _config(dim=6, examples=40, alpha=1.0, beta=0.0, l2=0.0):
  # D-GD on least squares; step 0.5 ≤ 1/L_S here (L_S ≈ 1.2 at dim 6, β = 0).
  return synthetic_dgd_config(model="linear_regression", dim=dim, examples=examples, alpha=alpha,
                              beta=beta, l2=l2, client_lr=0.5)


def _design(fed):
  """Per client X̃ = (x, 1) `[n, m, p]` and y `[n, m]` in float64 (every client has m examples)."""
  x = np.asarray(fed.train.x, np.float64).reshape(fed.train.x.shape[0], fed.train.x.shape[1], -1)
  assert np.all(np.asarray(fed.train.counts) == x.shape[1])
  return np.concatenate([x, np.ones(x.shape[:2] + (1,))], axis=2), np.asarray(fed.train.y,
                                                                               np.float64)


def _client_optima(fed):
  xt, y = _design(fed)
  return np.stack([np.linalg.lstsq(a, b, rcond=None)[0] for a, b in zip(xt, y)])


def test_synthetic_regression_alpha_sets_the_spread_of_the_client_optima():
  def load(alpha):
    return data.load("synthetic", num_clients=6, synthetic_task="regression", synthetic_dim=5,
                     synthetic_examples_per_client=30, synthetic_alpha=alpha,
                     synthetic_beta=0.5, synthetic_noise=0.0, seed=3)
  fed = load(0.0)
  assert fed.task == "regression" and fed.num_classes is None
  assert fed.train.y.dtype == jnp.float32 and fed.test_y.dtype == jnp.float32
  assert fed.train.y.shape == (6, 30) and fed.test_y.shape == (6 * 6,)
  same = _client_optima(fed)
  np.testing.assert_allclose(same, np.broadcast_to(same[0], same.shape), atol=1e-4)
  spreads = [np.std(_client_optima(load(alpha)), axis=0).mean() for alpha in (0.5, 2.0)]
  assert 0.1 < spreads[0] < spreads[1]  # std of the optima ≈ α per coordinate
  noisy = data.load("synthetic", num_clients=6, synthetic_task="regression", synthetic_dim=5,
                    synthetic_examples_per_client=30, synthetic_alpha=0.0, synthetic_beta=0.5,
                    synthetic_noise=0.3, seed=3)
  residual = np.asarray(noisy.train.y) - np.asarray(fed.train.y)
  assert residual.std() == pytest.approx(0.3, rel=0.2)  # the same inputs, noise of std σ


def test_dgd_on_least_squares_matches_a_numpy_loop():
  c = _config(dim=4, examples=12, alpha=1.0, beta=0.5, l2=0.05)
  c.num_clients, c.f = 5, 0
  c.aggregator, c.attack = "mean", "none"
  c.training.client_lr = 0.1
  fed = config_lib.make_data(c)
  sim = build.make_simulator(c, "mean", fed)
  state = sim.init(jax.random.key(0))
  _, unravel = ravel_pytree(sim.model.init(jax.random.key(0)))

  def w_b(theta):
    dense = unravel(jnp.asarray(theta))["params"]["Dense_0"]
    return np.concatenate([np.asarray(dense["kernel"][:, 0]), np.asarray(dense["bias"])])

  xt, y = _design(fed)
  l2, lr = 0.05, 0.1
  theta = w_b(state.params).astype(np.float64)

  def gradients(th):
    return np.stack([a.T @ (a @ th - b) / len(b) for a, b in zip(xt, y)]) + l2 * th

  honest = jnp.ones((c.num_clients,), bool)
  np.testing.assert_allclose(np.stack([w_b(g) for g in sim.client_gradients(state.params,
                                                                              fed.train)]),
                             gradients(theta), rtol=1e-5, atol=1e-5)
  rounds = 5
  state, _ = jax.jit(lambda s: sim.run_rounds(s, honest, jax.random.key(1), fed.train,
                                              rounds))(state)
  for _ in range(rounds):
    theta = theta - lr * gradients(theta).mean(0)
  np.testing.assert_allclose(w_b(state.params), theta, rtol=1e-5, atol=1e-5)
  losses = [0.5 * np.mean((a @ theta - b) ** 2) + 0.5 * l2 * theta @ theta
            for a, b in zip(xt, y)]
  metrics = sim.evaluate(state.params, honest, fed.train, fed.test_x, fed.test_y)
  assert float(metrics["honest_loss"]) == pytest.approx(np.mean(losses), rel=1e-5)
  assert np.isnan(metrics["honest_accuracy"]) and np.isnan(metrics["test_accuracy"])
  assert np.isfinite(metrics["test_loss"])


@pytest.mark.parametrize("l2", [0.0, 0.05])
def test_convex_constants_of_least_squares_equal_numpy(l2):
  c = _config(dim=5, examples=20, alpha=1.0, beta=0.5, l2=l2)
  c.num_clients = 5
  fed = config_lib.make_data(c)
  sim = build.make_simulator(c, "trimmed_mean", fed)
  masks = np.array([[1, 1, 1, 1, 1], [1, 0, 1, 0, 1], [0, 1, 1, 1, 0], [0, 0, 0, 1, 0],
                    [0, 0, 0, 0, 0]], bool)
  exact = report.convex_constants(c, fed, sim, masks)
  xt, y = _design(fed)
  m = xt.shape[1]
  p = xt.shape[2]
  for s, mask in enumerate(masks[:-1]):
    members = np.flatnonzero(mask)
    hessian = sum(xt[i].T @ xt[i] / m for i in members) / len(members) + l2 * np.eye(p)
    eigenvalues = np.linalg.eigvalsh(hessian)
    rhs = sum(xt[i].T @ y[i] / m for i in members) / len(members)
    theta = np.linalg.solve(hessian, rhs)   # normal equations of L_S
    optimum = (np.mean([0.5 * np.mean((xt[i] @ theta - y[i]) ** 2) for i in members])
               + 0.5 * l2 * theta @ theta)
    assert exact["smoothness"][s] == pytest.approx(eigenvalues[-1], rel=1e-4)
    assert exact["pl"][s] == pytest.approx(eigenvalues[0], rel=1e-3)
    assert exact["optimum"][s] == pytest.approx(optimum, rel=1e-4, abs=1e-6)
    if not l2:
      a = np.concatenate([xt[i] for i in members]) / np.sqrt(m * len(members))
      b = np.concatenate([y[i] for i in members]) / np.sqrt(m * len(members))
      np.testing.assert_allclose(theta, np.linalg.lstsq(a, b, rcond=None)[0], rtol=1e-8)
  assert exact["smoothness_exact"]
  assert np.isnan(exact["smoothness"][-1]) and np.isnan(exact["pl"][-1])


def test_a_rank_deficient_honest_set_has_no_pl_bound_and_is_invalid():
  """5 examples per client, 17 parameters: three honest clients (15 examples) cannot pin θ down
  (μ_S = 0, no ℓ2), all four can. Such a draw is invalid (`pl_constant_zero`), its bound NaN,
  never a division by zero."""
  c = _config(dim=16, examples=5, beta=1.0)
  c.num_clients, c.f = 4, 1
  fed = config_lib.make_data(c)
  sim = build.make_simulator(c, "trimmed_mean", fed)
  masks = np.array([[1, 1, 0, 1], [1, 1, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1]], bool)
  exact = report.convex_constants(c, fed, sim, masks)
  np.testing.assert_array_equal(exact["pl"] == 0, [True, False, True, False])
  assert exact["optimum"][0] == pytest.approx(0.0, abs=1e-5)  # interpolation: L_S* = 0
  every = c.training.eval_every
  num_evals = c.training.num_rounds // every + 1
  S = len(masks)
  run = types.SimpleNamespace(  # h_t, u_t per round: [evaluation steps, S, rounds per step]
      spec="trimmed_mean", final={},
      aux={"honest_heterogeneity": np.full((num_evals - 1, S, every), 0.1),
           "honest_gradient_sq": np.full((num_evals - 1, S, every), 1.0)},
      metrics={"honest_loss": np.linspace(50.0, 10.0, num_evals)[:, None] + np.zeros((1, S))})
  c.training.client_lr = 0.5 / float(np.max(exact["smoothness"]))
  with np.errstate(all="raise"):  # no division by zero
    theory = report.per_draw(c, run, (~masks).sum(1), exact=exact)
  reasons = theory["invalid_reasons"]
  np.testing.assert_array_equal(reasons["pl_constant_zero"], [True, False, True, False])
  np.testing.assert_array_equal(theory["valid"], [False, True, False, True])
  assert np.all(np.isnan(theory["bound"][[0, 2]])) and np.all(np.isfinite(theory["bound"][[1, 3]]))
  assert np.all(np.isnan(theory["lower_bound_order"][[0, 2]]))


def test_experiment_on_least_squares_every_valid_bound_is_above_the_measured_error():
  exp = experiment.run(_config(), log=lambda _: None)
  t = exp.theory["trimmed_mean"]
  assert t["convex"] and t["error_kind"] == "excess_loss" and t["premises"]["dgd"]
  valid = t["valid"]
  assert valid.any()
  assert not t["invalid_reasons"]["step_gt_1_over_L"].any()
  assert not t["invalid_reasons"]["pl_constant_zero"].any()
  # A violation would be a finding about the theorem or the code; none here.
  assert np.all(t["bound"][valid] >= t["error"][valid])
  assert np.all(t["error"][np.isfinite(t["error"])] > -1e-5)  # L_S* is a minimum
  summary = results.summarize(exp)
  s = summary["aggregators"]["trimmed_mean"]
  assert s["theory"]["violations"] == 0
  # Accuracies are undefined for real targets: NaN, counted as undefined, printed as n/a.
  assert s["honest_accuracy"]["count"] == 0 and s["honest_accuracy"]["undefined"] == 16
  assert "n/a" in results.format_table(summary)
  assert summary["objectives"]["min_max_gap"] < 1e-3


@pytest.mark.parametrize("dotted, value, match", [
    ("attack", "label_flip", r"attack='label_flip' changes class labels.*allowed: none, .*alie"),
    ("attack", "backdoor", r"attack='backdoor' changes class labels"),
    ("model", "logistic", r"model='logistic' \(cross_entropy loss\) does not fit the regression"),
    ("model", "mlp", r"models for it: linear_regression"),
    ("data.name", "digits", r"synthetic_task='regression' needs data.name='synthetic'"),
])
def test_what_does_not_fit_a_regression_task_is_refused(dotted, value, match):
  c = _config()
  config_lib.validate(c)
  *path, leaf = dotted.split(".")
  node = c
  for part in path:
    node = node[part]
  node[leaf] = value
  with pytest.raises(ConfigError, match=match):
    config_lib.validate(c)


def test_regression_model_with_classification_data_and_label_graphs_are_refused():
  c = _config()
  c.data.synthetic_task = "classification"
  with pytest.raises(ConfigError, match=r"model='linear_regression' \(squared loss\) does not "
                                        r"fit the classification task.*cnn, logistic, mlp"):
    config_lib.validate(c)
  c.data.name = "digits"
  with pytest.raises(ConfigError, match=r"data.name='digits'"):
    config_lib.validate(c)
  c = _config()
  c.honest_set = "graph_copula"
  c.graph.kind = "data_similarity"
  with pytest.raises(ConfigError, match=r"graph.kind='data_similarity' compares the clients' "
                                        r"label distributions"):
    config_lib.validate(c)
  with pytest.raises(ConfigError, match=r"does not fit a classification task"):
    models.get("linear_regression", input_shape=(4, 1, 1), num_classes=3)
  with pytest.raises(ConfigError, match=r"does not fit a regression task"):
    models.get("logistic", input_shape=(4, 1, 1), num_classes=None)
  with pytest.raises(ConfigError, match=r"regression task has none"):
    attacks.get("label_flip", num_classes=None)
  assert attacks.get("alie", num_classes=None).poison is not None
