"""A client's local training as static settings: K steps or E epochs of SGD with worker
momentum, what it sends, and its learning-rate schedule over rounds (`LocalTraining`).

Library: the job layer builds and checks it from the configuration (`config.make_local_training`),
the simulator (`training.Simulator`) runs it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax


# The clients' learning-rate schedules over rounds (η_t for round t; optax schedules), with
# their options' defaults.
LR_SCHEDULES = {"constant": {}, "cosine": {"alpha": 0.0},
                "exponential": {"decay_rate": 0.99, "transition_rounds": 1},
                "step": {"boundaries": (100,), "factor": 0.1}}
# How a client's local optimizer state lives across rounds.
CLIENT_UPDATES = ("momentum_gradient", "model_delta")


@dataclasses.dataclass(frozen=True)
class LocalTraining:
  """Client-side hyperparameters (static).

  A round's local work is either K steps (`local_steps`) on minibatches drawn with replacement,
  or E epochs (`local_epochs` ≥ 1): each epoch a fresh shuffle of the client's own examples cut
  into ⌈m_max/B⌉ minibatches of B positions without replacement, the positions past the
  client's count masked (a step whose minibatch holds no example of the client changes
  nothing), so every example is visited exactly E times.

  `update`: "momentum_gradient" (D-SGD with worker momentum kept across rounds, RESAM; K = 1
  sends u_i = η m_i) or "model_delta" (FedAvg: the local momentum starts at zero each round).
  Both send u_i = θ − θ̄_i, where θ̄_i is the average of the client's last `tail_average`
  local iterates (1: the last iterate θ_i^K; a client with fewer real steps R_i averages all
  R_i of them).

  `lr_schedule`: η_t of round t, one of LR_SCHEDULES (optax schedules over rounds, `num_rounds`
  the horizon of "cosine"), its options as ((name, value), ...).
  """
  local_steps: int = 1        # K local SGD steps per round (local_epochs = 0)
  batch_size: int = 32        # examples per step; <= 0: all local data
  lr: float = 0.1             # η (η_0 of a schedule)
  momentum: float = 0.9       # β of worker momentum (0: plain SGD)
  local_epochs: int = 0       # E ≥ 1: E epochs without replacement instead of K steps
  update: str = "momentum_gradient"
  tail_average: int = 1
  lr_schedule: str = "constant"
  lr_schedule_options: tuple = ()
  num_rounds: int = 0         # the schedules' horizon (cosine)

  def __post_init__(self):
    if self.local_steps < 1:
      raise ValueError(f"local_steps must be >= 1, got {self.local_steps}.")
    if not 0 <= self.momentum < 1:
      raise ValueError(f"client momentum must lie in [0, 1), got {self.momentum}.")
    if self.local_epochs < 0:
      raise ValueError(f"local_epochs must be >= 0 (0: local_steps), got {self.local_epochs}.")
    if self.update not in CLIENT_UPDATES:
      raise ValueError(f"client update {self.update!r} is not one of {', '.join(CLIENT_UPDATES)}.")
    if self.tail_average < 1:
      raise ValueError(f"tail_average must be >= 1 (1: the last iterate), got "
                       f"{self.tail_average}.")
    if self.lr_schedule not in LR_SCHEDULES:
      raise ValueError(f"client lr schedule {self.lr_schedule!r} is not one of "
                       f"{', '.join(LR_SCHEDULES)}.")
    if self.lr_schedule == "cosine" and self.num_rounds < 1:
      raise ValueError("the cosine schedule needs num_rounds >= 1 (its horizon).")

  @property
  def persistent_momentum(self) -> bool:
    return self.update == "momentum_gradient"

  def lr_at(self, round_: jax.Array) -> jax.Array:
    """η_t, the clients' learning rate of round t."""
    o = dict(LR_SCHEDULES[self.lr_schedule], **dict(self.lr_schedule_options))
    if self.lr_schedule == "constant":
      return jnp.asarray(self.lr, jnp.float32)
    if self.lr_schedule == "cosine":
      schedule = optax.cosine_decay_schedule(self.lr, self.num_rounds, alpha=o["alpha"])
    elif self.lr_schedule == "exponential":
      schedule = optax.exponential_decay(self.lr, o["transition_rounds"], o["decay_rate"],
                                         staircase=True)
    else:
      schedule = optax.piecewise_constant_schedule(
          self.lr, {int(b): float(o["factor"]) for b in o["boundaries"]})
    return jnp.asarray(schedule(round_), jnp.float32)

  def steps(self, max_count: int) -> int:
    """Local steps per round of a client whose data is padded to `max_count` examples."""
    if not self.local_epochs:
      return self.local_steps
    return self.local_epochs * -(-max_count // self.epoch_batch(max_count))

  def epoch_batch(self, max_count: int) -> int:
    """B of the epochs: batch_size, or every position when batch_size <= 0 or > max_count."""
    return max_count if self.batch_size <= 0 else min(self.batch_size, max_count)
