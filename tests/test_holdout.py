"""Each client's held-out split (`data.holdout_fraction`) and the held-out honest metrics."""

import fractions
import hashlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
import pytest

from conftest import set_key
from conftest import tiny_config
from fedjax_robust import aggregators
from fedjax_robust import attacks
from fedjax_robust import config as config_lib
from fedjax_robust import data
from fedjax_robust import experiment
from fedjax_robust import models
from fedjax_robust import results
from fedjax_robust import training
from fedjax_robust.errors import ConfigError

DIGITS = dict(num_clients=6, partition="dirichlet", alpha=0.5, min_size=5, seed=3)


def row_hashes(x, y, counts):
  """Per client, the set of hashes of its real (x, y) examples."""
  x, y = np.asarray(x), np.asarray(y)
  return [{hashlib.sha1(x[i, j].tobytes() + y[i, j].tobytes()).hexdigest()
           for j in range(int(c))} for i, c in enumerate(np.asarray(counts))]


def exact_size(m, fraction):
  """⌊fraction·m⌋ in exact arithmetic, at least 1 when m >= 2."""
  return 0 if m < 2 else max(math.floor(fractions.Fraction(str(fraction)) * m), 1)


@pytest.mark.parametrize("name", ["digits", "synthetic"])
def test_holdout_is_disjoint_from_training_and_has_the_stated_size(name):
  fraction = 0.3
  whole = data.load(name, **DIGITS)
  split = data.load(name, **DIGITS, holdout_fraction=fraction)
  m = np.asarray(whole.train.counts)
  np.testing.assert_array_equal(np.asarray(split.holdout.counts),
                                [exact_size(int(mi), fraction) for mi in m])
  np.testing.assert_array_equal(np.asarray(split.train.counts) + np.asarray(split.holdout.counts),
                                m)
  assert split.holdout.x.shape[2:] == split.train.x.shape[2:]
  assert split.holdout.y.dtype == split.train.y.dtype
  before = row_hashes(*whole.train)
  train = row_hashes(*split.train)
  held = row_hashes(*split.holdout)
  all_train = set().union(*train)
  for i in range(len(m)):
    assert len(held[i]) == int(split.holdout.counts[i])  # no duplicates
    assert not held[i] & train[i]
    assert held[i] | train[i] == before[i]  # a split of the client's own examples
  assert not set().union(*held) & all_train  # no client trains on a held-out example
  # Deterministic from the seed; a different seed holds out other examples.
  again = data.load(name, **DIGITS, holdout_fraction=fraction)
  np.testing.assert_array_equal(np.asarray(again.holdout.x), np.asarray(split.holdout.x))
  other = data.load(name, **{**DIGITS, "seed": 4}, holdout_fraction=fraction)
  assert not np.array_equal(np.asarray(other.holdout.x), np.asarray(split.holdout.x))


def test_holdout_sizes_edge_cases():
  assert data.holdout_size(1, 0.5) == 0  # the only example stays for training
  assert data.holdout_size(2, 0.01) == 1  # at least one held out of m >= 2
  assert data.holdout_size(100, 0.29) == 29  # not 28 from 0.29 * 100 = 28.999…
  assert data.holdout_size(3, 0.99) == 2  # never all
  assert data.holdout_size(50, 0.0) == 0
  xs = [np.arange(n, dtype=np.float32).reshape(n, 1) for n in (1, 1)]
  ys = [np.zeros(n, np.int32) for n in (1, 1)]
  fed = data._federated("t", xs, ys, xs[0], ys[0], 2, 0.5, 0)  # pylint: disable=protected-access
  np.testing.assert_array_equal(np.asarray(fed.holdout.counts), [0, 0])
  np.testing.assert_array_equal(np.asarray(fed.train.counts), [1, 1])
  with pytest.raises(ValueError, match="holdout_fraction"):
    data.load("digits", **DIGITS, holdout_fraction=1.0)


def test_fraction_zero_changes_nothing():
  default = data.load("digits", **DIGITS)
  zero = data.load("digits", **DIGITS, holdout_fraction=0.0)
  assert default.holdout is None and zero.holdout is None
  # What `load` stacked before held-out splits existed: the partition, stacked as is.
  source = data.SOURCES["digits"](test_fraction=0.2, seed=DIGITS["seed"])
  parts = data.PARTITIONERS["dirichlet"](source.y_train, DIGITS["num_clients"],
                                         np.random.default_rng(DIGITS["seed"]),
                                         min_size=DIGITS["min_size"], alpha=DIGITS["alpha"])
  before = data.stack_clients([source.x_train[p] for p in parts],
                              [source.y_train[p] for p in parts])
  for a, b, c in zip(default.train, zero.train, before):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
  config = tiny_config()
  assert config.data.holdout_fraction == 0.0
  assert config_lib.make_data(config).holdout is None
  for bad in (1.0, -0.1, float("nan")):
    c = tiny_config()
    set_key(c, "data.holdout_fraction", bad)
    with pytest.raises(ConfigError, match="holdout_fraction"):
      config_lib.validate(c)


def test_honest_holdout_metrics_match_numpy(rng):
  num_classes, features, l2 = 3, 4, 0.05
  counts = (4, 0, 2, 5, 1)  # client 1 has no held-out example
  xs = [rng.normal(size=(m, features, 1, 1)).astype(np.float32) for m in counts]
  ys = [rng.integers(0, num_classes, size=m).astype(np.int32) for m in counts]
  holdout = data.stack_clients(xs, ys)
  train = data.stack_clients([x[:2] for x in xs[:1]] * 5, [y[:2] for y in ys[:1]] * 5)
  model = models.get("logistic", input_shape=(features, 1, 1), num_classes=num_classes)
  sim = training.Simulator(
      model=model, aggregator=aggregators.get("mean", f=0),
      attack=attacks.get("none", num_classes=num_classes), local=training.LocalTraining(),
      server_optimizer=optax.sgd(1.0), num_clients=len(counts), l2=l2)
  params = sim.init(jax.random.key(1)).params + 0.3 * jnp.asarray(
      rng.normal(size=sim.num_params), jnp.float32)
  unravel = ravel_pytree(model.init(jax.random.key(1)))[1]
  p = unravel(params)["params"]["Dense_0"]
  w, b = np.asarray(p["kernel"], np.float64), np.asarray(p["bias"], np.float64)
  penalty = 0.5 * l2 * np.sum(np.asarray(params, np.float64) ** 2)

  def np_loss_acc(x, y):
    logits = x.reshape(len(x), -1) @ w + b
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return -logp[np.arange(len(y)), y].mean() + penalty, np.mean(logits.argmax(1) == y)

  per_client = {i: np_loss_acc(x, y) for i, (x, y) in enumerate(zip(xs, ys)) if len(y)}
  evaluate = jax.jit(sim.evaluate)
  masks = [rng.random(len(counts)) < 0.6 for _ in range(4)] + [
      np.ones(len(counts), bool), np.zeros(len(counts), bool),
      np.array([False, True, False, False, False])]  # honest, but no held-out example
  for honest in masks:
    out = evaluate(params, jnp.asarray(honest), train, train.x[0], train.y[0], holdout)
    counted = [i for i in np.flatnonzero(honest) if counts[i] > 0]
    if not counted:
      assert np.isnan(out["honest_holdout_loss"]) and np.isnan(out["honest_holdout_accuracy"])
      continue
    np.testing.assert_allclose(out["honest_holdout_loss"],
                               np.mean([per_client[i][0] for i in counted]), rtol=1e-5)
    np.testing.assert_allclose(out["honest_holdout_accuracy"],
                               np.mean([per_client[i][1] for i in counted]), atol=1e-6)
  assert "honest_holdout_loss" not in evaluate(params, jnp.asarray(masks[4]), train, train.x[0],
                                               train.y[0])


def test_experiment_reports_holdout_metrics():
  config = tiny_config()
  config.aggregator = "mean"
  config.num_samples = 2
  config.training.num_rounds = 4
  config.training.eval_every = 2
  config.data.holdout_fraction = 0.25
  exp = experiment.run(config, log=lambda _: None)
  run = exp.runs["mean"]
  for name in ("honest_holdout_loss", "honest_holdout_accuracy"):
    values = run.metrics[name]
    assert values.shape == run.metrics["honest_loss"].shape == (3, 2)
    assert np.all(np.isfinite(values))
  assert "honest_holdout_accuracy" in results.defined_metrics(run)
  assert np.all((run.metrics["honest_holdout_accuracy"] >= 0)
                & (run.metrics["honest_holdout_accuracy"] <= 1))
