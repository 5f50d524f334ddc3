"""A3FL's trigger optimization against a float64 NumPy transcription on logistic regression
(closed-form gradients), and its properties."""

import jax
import jax.numpy as jnp
import numpy as np

from conftest import tiny_config
from fedjax_robust.attacks import a3fl

H, W, CH, C = 4, 4, 1, 3
D_IN = H * W * CH


def logits(theta, x):
  w = theta[:D_IN * C].reshape(D_IN, C)
  return x.reshape(x.shape[0], -1) @ w + theta[D_IN * C:]


def np_softmax(z):
  e = np.exp(z - z.max(1, keepdims=True))
  return e / e.sum(1, keepdims=True)


def np_adapt(delta, theta, x, y, weights, *, target, patch, outer, adv_steps, adv_lr, lr,
             balance, low, high):
  """The module docstring's iteration in float64 with the gradients of softmax cross-entropy
  written out: ∂CE/∂z = p − e_y, z = x·W + b."""
  mask = np.zeros((H, W, CH))
  mask[H - patch:, W - patch:, :] = 1
  w_sum = weights.sum()
  onehot = lambda labels: np.eye(C)[labels]

  def unpack(t):
    return t[:D_IN * C].reshape(D_IN, C), t[D_IN * C:]

  def stamp(d):
    return np.where(mask > 0, d, x)

  def ce_grads(t, xs, labels):
    wm, b = unpack(t)
    flat = xs.reshape(len(xs), -1)
    g = (np_softmax(flat @ wm + b) - onehot(labels)) * weights[:, None] / w_sum
    return np.concatenate([(flat.T @ g).ravel(), g.sum(0)]), (g @ wm.T).reshape(xs.shape)

  for _ in range(outer):
    stamped = stamp(delta)
    adv = theta.copy()
    for _ in range(adv_steps):
      adv = adv - adv_lr * ce_grads(adv, stamped, y)[0]
    lam = balance * adv @ theta / (np.linalg.norm(adv) * np.linalg.norm(theta))
    target_labels = np.full(len(y), target)
    gx = ce_grads(theta, stamped, target_labels)[1] + lam * ce_grads(adv, stamped,
                                                                       target_labels)[1]
    grad = (gx * mask).sum(0)
    delta = np.clip(delta - lr * np.sign(grad) * mask, low, high)
  return delta


def test_one_round_matches_the_numpy_transcription():
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(12, H, W, CH))
  y = rng.integers(0, C, 12)
  weights = (rng.uniform(size=12) < 0.6).astype(np.float64)
  theta = rng.normal(size=D_IN * C + C)
  delta = rng.uniform(size=(H, W, CH))
  kw = dict(outer=3, adv_steps=2, adv_lr=0.5, lr=0.05, balance=0.7, low=0.0, high=1.0)
  want = np_adapt(delta, theta, x, y, weights, target=1, patch=2, **kw)
  got = a3fl.adapt(jnp.asarray(delta, jnp.float32), logits, jnp.asarray(theta, jnp.float32),
                   jnp.asarray(x, jnp.float32), jnp.asarray(y), jnp.asarray(weights),
                   target_label=1, patch_size=2, outer=3, adversarial_steps=2,
                   adversarial_lr=0.5, trigger_lr=0.05, balance=0.7, low=0.0, high=1.0)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)
  # Only the patch moves, within [low, high].
  outside = np.ones((H, W, CH), bool)
  outside[H - 2:, W - 2:, :] = False
  np.testing.assert_array_equal(np.asarray(got)[outside], delta[outside].astype(np.float32))
  assert not np.allclose(np.asarray(got)[~outside], delta[~outside], atol=1e-3)


def test_the_trigger_lowers_the_target_loss_and_waits_without_attackers():
  """Sign steps on the target loss: after a round the global model's CE on triggered inputs
  toward the target is lower; with no attacker example (all weights 0) δ stays as it was, and a
  NaN in an example of weight 0 does not reach it."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.uniform(size=(20, H, W, CH)), jnp.float32)
  y = jnp.asarray(rng.integers(0, C, 20))
  theta = jnp.asarray(rng.normal(size=D_IN * C + C), jnp.float32)
  delta = a3fl.init_trigger((H, W, CH), value=0.5)
  kw = dict(target_label=2, patch_size=2, outer=5, adversarial_steps=1, adversarial_lr=0.1,
            trigger_lr=0.1, balance=1.0, low=0.0, high=1.0)
  ones = jnp.ones(20)
  new = a3fl.adapt(delta, logits, theta, x, y, ones, **kw)
  mask = a3fl.patch_mask((H, W, CH), 2)
  ce = lambda d: float(a3fl._weighted_ce(logits(theta, a3fl.stamp_learned(x, d, mask)),
                                         jnp.full((20,), 2), ones))
  assert ce(new) < ce(delta) - 1e-3
  nan_x = x.at[0].set(jnp.nan)
  none = a3fl.adapt(delta, logits, theta, nan_x, y, jnp.zeros(20), **kw)
  np.testing.assert_array_equal(np.asarray(none), np.asarray(delta))
  some = a3fl.adapt(delta, logits, theta, nan_x, y, ones.at[0].set(0.0), **kw)
  assert np.all(np.isfinite(np.asarray(some)))


def test_in_training_the_trigger_moves_each_round_and_is_measured_as_held():
  """Through the simulator (tiny digits job, every client but one Byzantine): the state's
  trigger changes only on the patch, and the evaluation's backdoor success is the share of
  non-target test inputs stamped with the state's trigger that the model sends to the target
  (recomputed here with NumPy's argmax), not the initial trigger's."""
  from fedjax_robust import build, config as config_lib, data as data_lib, training
  c = tiny_config()
  c.attack = "a3fl"
  c.aggregator = "mean"
  c.attack_options.a3fl.outer = 2
  c.attack_options.a3fl.adversarial_steps = 1
  job = config_lib.validate(c)
  fed = config_lib.make_data(job)
  sim = build.make_simulator(job, "mean", fed)
  honest = jnp.asarray([True, False, False, False, False, False])
  state0 = sim.init(jax.random.key(0))
  state, _ = jax.jit(lambda s: sim.run_rounds(s, honest, jax.random.key(3), fed.train, 3))(state0)
  delta0, delta = np.asarray(state0.attack_state[0]), np.asarray(state.attack_state[0])
  mask = np.asarray(a3fl.patch_mask(delta.shape, c.attack_options.a3fl.patch_size)) > 0
  np.testing.assert_array_equal(delta[~mask], delta0[~mask])
  assert not np.array_equal(delta[mask], delta0[mask])
  assert delta.min() >= 0.0 and delta.max() <= 1.0
  metrics = sim.evaluate(sim.eval_params(state), honest, fed.train, fed.test_x, fed.test_y)
  target = c.attack_options.a3fl.target_label
  stamped = np.where(mask, delta, np.asarray(fed.test_x))
  predicted = np.argmax(np.asarray(sim.logits(state.params, jnp.asarray(stamped))), axis=1)
  keep = np.asarray(fed.test_y) != target
  np.testing.assert_allclose(float(metrics["backdoor_accuracy"]),
                             np.mean(predicted[keep] == target), atol=1e-6)
