"""A synthetic classification task whose heterogeneity across clients is a parameter.

A variant of Synthetic(α, β) of Li et al. (FedProx, MLSys 2020) in which 0 means iid: a global
softmax model (W, b) ~ N(0, 1) labels inputs x ~ N(v_i, Σ), Σ = diag(j^{-1.2}); client i labels
with (W + α·E_i, b + α·e_i) and draws its inputs around v_i = β·u_i, with E_i, e_i, u_i ~ N(0, 1).
α controls concept shift (how much the clients' optimal models differ), β covariate shift.
"""

from __future__ import annotations

import numpy as np


def make_synthetic(num_clients: int, *, examples_per_client: int, dim: int, num_classes: int,
                   alpha: float, beta: float, test_fraction: float, seed: int):
  """Returns per-client (xs_train, ys_train) lists and a pooled test set (x_test, y_test).

  Inputs have shape `[m, dim, 1, 1]` so every model sees image-like `[H, W, C]` inputs.
  """
  if alpha < 0 or beta < 0:
    raise ValueError(f"synthetic alpha and beta must be >= 0, got alpha={alpha}, beta={beta}.")
  rng = np.random.default_rng(seed)
  w, b = rng.normal(size=(dim, num_classes)), rng.normal(size=num_classes)
  scale = np.arange(1, dim + 1) ** -0.6  # std of coordinate j: sqrt(j^{-1.2})
  num_test = int(round(test_fraction * examples_per_client))
  xs, ys, xt, yt = [], [], [], []
  for _ in range(num_clients):
    wi = w + alpha * rng.normal(size=w.shape)
    bi = b + alpha * rng.normal(size=b.shape)
    x = beta * rng.normal(size=dim) + scale * rng.normal(size=(examples_per_client + num_test, dim))
    y = np.argmax(x @ wi + bi, axis=1)
    x = x.astype(np.float32)[:, :, None, None]
    xs.append(x[num_test:])
    ys.append(y[num_test:].astype(np.int32))
    xt.append(x[:num_test])
    yt.append(y[:num_test].astype(np.int32))
  return xs, ys, np.concatenate(xt), np.concatenate(yt).astype(np.int32)
