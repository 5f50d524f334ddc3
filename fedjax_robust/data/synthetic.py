"""Synthetic federated tasks whose heterogeneity across clients is a parameter.

A variant of Synthetic(α, β) of Li et al. (FedProx, MLSys 2020) in which 0 means iid. Client i
draws its inputs x ~ N(v_i, Σ), Σ = diag(j^{-1.2}), around v_i = β·u_i, and labels them with
a global model perturbed by α:

- classification: a global softmax model (W, b) ~ N(0, 1); client i labels with
  y = argmax_c (x(W + α·E_i) + b + α·e_i)_c;
- regression (least squares): a global linear model (w, b) ~ N(0, 1); client i's target is
  y = x·(w + α·e_i) + b + α·e_i⁰ + σ·ε, ε ~ N(0, 1) (σ = `noise`),

with E_i, e_i, e_i⁰, u_i ~ N(0, 1). α controls concept shift (how much the clients' optimal models
differ: with α = 0 and σ = 0 every client's least-squares optimum is (w, b)), β covariate shift.

A distinct group (`group_size` g > 0): clients 0..g−1 label with the global model shifted by
`group_shift` δ along one direction they share, (W + δ·D, b + δ·d) (regression: w + δ·d,
b + δ·d⁰), D, d, d⁰ ~ N(0, 1) drawn once from their own stream, so the group's optimum lies
≈ δ·‖D‖ away from the others' while every other draw is the one without a group. The
heterogeneity of an honest set then depends on how many group members it holds: the setting
where a random honest set and the worst one differ by construction (issue 29).
"""

from __future__ import annotations

import numpy as np

TASKS = ("classification", "regression")


def make_synthetic(num_clients: int, *, examples_per_client: int, dim: int, num_classes: int,
                   alpha: float, beta: float, test_fraction: float, seed: int,
                   task: str = "classification", noise: float = 0.0, group_size: int = 0,
                   group_shift: float = 0.0):
  """Returns per-client (xs_train, ys_train) lists and a pooled test set (x_test, y_test).

  Inputs have shape `[m, dim, 1, 1]` so every model sees image-like `[H, W, C]` inputs. Labels
  are int32 classes (`task="classification"`, `num_classes` of them) or float32 real targets
  (`task="regression"`, `num_classes` unused, target noise std `noise`).
  """
  if alpha < 0 or beta < 0:
    raise ValueError(f"synthetic alpha and beta must be >= 0, got alpha={alpha}, beta={beta}.")
  if task not in TASKS:
    raise ValueError(f"unknown synthetic task {task!r}; available: {', '.join(TASKS)}.")
  if noise < 0:
    raise ValueError(f"synthetic noise must be >= 0, got {noise}.")
  if not 0 <= group_size <= num_clients or group_shift < 0:
    raise ValueError(f"synthetic group_size must lie in [0, {num_clients}] and group_shift be "
                     f">= 0, got group_size={group_size}, group_shift={group_shift}.")
  rng = np.random.default_rng(seed)
  regression = task == "regression"
  outputs = () if regression else (num_classes,)
  w, b = rng.normal(size=(dim, *outputs)), rng.normal(size=outputs)
  scale = np.arange(1, dim + 1) ** -0.6  # std of coordinate j: sqrt(j^{-1.2})
  num_test = int(round(test_fraction * examples_per_client))
  label_dtype = np.float32 if regression else np.int32
  group = np.random.default_rng([seed, 29])  # its own stream: the other draws do not move
  group_w, group_b = group.normal(size=w.shape), group.normal(size=b.shape)
  xs, ys, xt, yt = [], [], [], []
  for i in range(num_clients):
    wi = w + alpha * rng.normal(size=w.shape)
    bi = b + alpha * rng.normal(size=b.shape)
    if i < group_size:
      wi, bi = wi + group_shift * group_w, bi + group_shift * group_b
    x = beta * rng.normal(size=dim) + scale * rng.normal(size=(examples_per_client + num_test, dim))
    if regression:
      y = x @ wi + bi + noise * rng.normal(size=len(x))
    else:
      y = np.argmax(x @ wi + bi, axis=1)
    x = x.astype(np.float32)[:, :, None, None]
    xs.append(x[num_test:])
    ys.append(y[num_test:].astype(label_dtype))
    xt.append(x[:num_test])
    yt.append(y[:num_test].astype(label_dtype))
  return xs, ys, np.concatenate(xt), np.concatenate(yt).astype(label_dtype)
