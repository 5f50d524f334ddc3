"""A3FL: a backdoor trigger optimized every round against the current global model.

Zhang, Jia, Chen, Lin, Wu, "A3FL: Adversarially adaptive backdoor attacks to federated learning",
NeurIPS 2023. A fixed trigger (`data_poisoning.backdoor`) is learned by the local models and then
washed out by the honest updates; A3FL instead adapts the trigger's pixel values to the global
model θ_t the attackers receive, and to an "adversarial" model θ'_t that stands for what the
honest clients' training would make of the backdoor (a copy of θ_t trained to classify triggered
inputs correctly: backdoor unlearning), so that the trigger survives aggregation and later rounds.

The trigger is a patch: a fixed mask M (the bottom-right `patch_size`² pixels, all channels, as
`data_poisoning.stamp_trigger`) and learned values δ (`[H, W, C]`, only M's pixels used), stamped as

    x ⊕ δ = (1 − M)·x + M·δ.

Each round, before local training, the attackers (one shared trigger; the attack's state) run
`outer` iterations of

    θ' ← θ_t, then `adversarial_steps` steps θ' ← θ' − η_adv ∇_θ' CE(f_θ'(x ⊕ δ), y)     (unlearning)
    λ = λ₀ · cos(θ', θ_t)                                                        (paper's balance)
    δ ← clip(δ − α · sign ∇_δ [CE(f_θt(x ⊕ δ), t) + λ · CE(f_θ'(x ⊕ δ), t)], lo, hi)

on the pooled training data of the round's Byzantine clients (x, y their examples, t the target),
then train on it as `backdoor` does: each example of a Byzantine client's minibatch is, with
probability `fraction`, stamped with x ⊕ δ and relabelled t. The evaluation measures the success
rate with the trigger the attackers hold at that point (the state), on test inputs whose label
is not t.

Choices where the paper's code differs (read through the search tool: BackFed's and
FLPoison-style re-implementations of the authors' repository): the code optimizes δ by Adam-free
sign steps over mini-batches for `trigger_outer_epochs` epochs and trains several adversarial
models (`dm_adv_model_count`); here one adversarial model per outer iteration, full batches of the
pooled Byzantine data (the simulator's attackers are omniscient and coordinated: one shared
trigger, where the code lets each attacker keep its own), and a fixed number of iterations, so
the cost is fixed per round: `outer`·(`adversarial_steps` + 1) gradient passes over the
attackers' data. The values δ start at `value` (the square trigger's) and are clipped to
[lo, hi] = the data's range (options `low`, `high`; digits: [0, 1]). With no Byzantine client in a
round the trigger is left as it is.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from fedjax_robust.aggregators import base
from fedjax_robust.attacks import data_poisoning


def patch_mask(shape, patch_size: int) -> jax.Array:
  """M `[H, W, C]`: 1 on the bottom-right `patch_size`² pixels (every channel), else 0."""
  return data_poisoning.stamp_trigger(jnp.zeros(shape, jnp.float32), patch_size=patch_size,
                                      value=1.0)


def stamp_learned(x: jax.Array, delta: jax.Array, mask: jax.Array) -> jax.Array:
  """x ⊕ δ = (1 − M)·x + M·δ for images `[..., H, W, C]`."""
  return jnp.where(mask > 0, delta.astype(x.dtype), x)


def init_trigger(shape, *, value: float = 1.0) -> jax.Array:
  """The first δ `[H, W, C]`: every pixel `value` (the square trigger's)."""
  return jnp.full(shape, value, jnp.float32)


def _weighted_ce(logits, labels, weights):
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return jnp.sum(ce * weights) / jnp.maximum(jnp.sum(weights), 1e-12)


def _cosine(a: jax.Array, b: jax.Array) -> jax.Array:
  na, nb = jnp.linalg.norm(a), jnp.linalg.norm(b)
  return jnp.where((na > 0) & (nb > 0), a @ b / jnp.where((na > 0) & (nb > 0), na * nb, 1.0), 0.0)


def adapt(delta: jax.Array, logits: Callable[[jax.Array, jax.Array], jax.Array],
          params: jax.Array, x: jax.Array, y: jax.Array, weights: jax.Array, *,
          target_label: int, patch_size: int, outer: int, adversarial_steps: int,
          adversarial_lr: float, trigger_lr: float, balance: float, low: float,
          high: float) -> jax.Array:
  """One round of A3FL's trigger optimization (module docstring); returns the new δ.

  `logits(θ, x)`: the model on a flat parameter vector θ `[d]`; `params`: θ_t; `x [m, H, W, C]`,
  `y [m]`: examples, `weights [m]`: 1 for the attackers' real examples, 0 elsewhere (padding,
  honest clients' data). No weight: δ unchanged."""
  weights = weights.astype(jnp.float32)

  def optimize(delta, params, x, y, weights):
    # Everything traced is an operand (a `uniform_cond` branch cannot close over a tracer).
    mask = patch_mask(delta.shape, patch_size)
    target = jnp.full(y.shape, target_label, y.dtype)
    # Pad examples (weight 0) are zeroed so a NaN there cannot enter a gradient (0·NaN).
    x = jnp.where(weights.reshape(weights.shape + (1,) * (x.ndim - 1)) > 0, x, 0.0)

    def step(delta, _):
      stamped = stamp_learned(x, delta, mask)

      def unlearn(theta, _):   # the adversarial model: triggered inputs back to their labels
        grad = jax.grad(lambda t: _weighted_ce(logits(t, stamped), y, weights))(theta)
        return theta - adversarial_lr * grad, None

      adversarial, _ = jax.lax.scan(unlearn, params, None, length=adversarial_steps)
      lam = balance * _cosine(adversarial, params)

      def objective(d):
        stamped_d = stamp_learned(x, d, mask)
        return (_weighted_ce(logits(params, stamped_d), target, weights)
                + lam * _weighted_ce(logits(adversarial, stamped_d), target, weights))

      grad = jax.grad(objective)(delta)
      return jnp.clip(delta - trigger_lr * jnp.sign(grad) * mask, low, high), None

    return jax.lax.scan(step, delta, None, length=outer)[0]

  # No attacker example (a round after training.attack_rounds, a draw without attackers): δ
  # stays, and the optimization is not run (`uniform_cond`: under vmap only if some draw of the
  # batch has attackers, and its value taken for those draws only).
  return base.uniform_cond(jnp.sum(weights) > 0, optimize, lambda delta, *_: delta, delta,
                           params, x, y, weights)
