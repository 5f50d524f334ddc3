"""Models: parameter counts by closed form, logits shapes, and each model can learn."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from fedjax_robust import models


def num_params(model):
  return ravel_pytree(model.init(jax.random.key(0)))[0].size


def test_parameter_counts():
  assert num_params(models.get("logistic", input_shape=(8, 8, 1), num_classes=10)) == 64 * 10 + 10
  mlp = models.get("mlp", input_shape=(8, 8, 1), num_classes=10, hidden=(32, 16))
  assert num_params(mlp) == (64 * 32 + 32) + (32 * 16 + 16) + (16 * 10 + 10)
  cnn = models.get("cnn", input_shape=(8, 8, 1), num_classes=10, features=(4, 8), dense=16)
  # conv 3x3: 1→4, 4→8; two 2x2 pools take 8x8 to 2x2, so the dense layer sees 2·2·8 inputs.
  assert num_params(cnn) == (9 * 1 * 4 + 4) + (9 * 4 * 8 + 8) + (32 * 16 + 16) + (16 * 10 + 10)


@pytest.mark.parametrize("name", ["logistic", "mlp", "cnn"])
def test_each_model_learns(name):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(size=(64, 8, 8, 1)), jnp.float32)
  y = jnp.asarray((np.asarray(x).reshape(64, -1)[:, :32].mean(1) > 0.5).astype(np.int32))
  model = models.get(name, input_shape=(8, 8, 1), num_classes=2)
  params = model.init(jax.random.key(1))
  assert model.apply(params, x).shape == (64, 2)
  ones = jnp.ones(64)
  loss = lambda p: models.masked_cross_entropy(model.apply(p, x), y, ones)
  opt = optax.adam(1e-2)
  state = opt.init(params)
  start = float(loss(params))

  @jax.jit
  def step(p, s):
    updates, s = opt.update(jax.grad(loss)(p), s, p)
    return optax.apply_updates(p, updates), s

  for _ in range(60):
    params, state = step(params, state)
  assert float(loss(params)) < 0.7 * start


def test_masked_losses_ignore_zero_weight_examples():
  logits = jnp.array([[2.0, 0.0], [0.0, 3.0], [5.0, -5.0]])
  labels = jnp.array([0, 1, 1])
  w = jnp.array([1.0, 1.0, 0.0])
  expected = -np.mean([np.log(np.exp(2) / (np.exp(2) + 1)), np.log(np.exp(3) / (np.exp(3) + 1))])
  np.testing.assert_allclose(models.masked_cross_entropy(logits, labels, w), expected, rtol=1e-6)
  assert float(models.masked_accuracy(logits, labels, w)) == 1.0


def test_unknown_model_and_bad_options():
  with pytest.raises(ValueError, match="unknown model 'vit'"):
    models.get("vit", input_shape=(8, 8, 1), num_classes=2)
  with pytest.raises(ValueError, match=r"unknown option\(s\) \['width'\] for model 'mlp'; allowed: \['hidden'\]"):
    models.get("mlp", input_shape=(8, 8, 1), num_classes=2, width=3)
