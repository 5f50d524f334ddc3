"""Partitioners: split a centralized labelled set over n clients (lists of index arrays).

All partitioners are NumPy preprocessing (run once, off the hot path) and deterministic given
`rng`. `min_size` is the smallest number of examples any client may get: Dirichlet partitions are
redrawn until it holds (Hsu et al.'s practice); deterministic partitions that violate it fail.
"""

from __future__ import annotations

import numpy as np

_MAX_DIRICHLET_TRIES = 1000


def _check(labels: np.ndarray, num_clients: int, min_size: int) -> None:
  if not isinstance(num_clients, (int, np.integer)) or num_clients < 1:
    raise ValueError(f"num_clients must be a positive int, got {num_clients!r}.")
  if min_size < 1:
    raise ValueError(f"min_size must be >= 1 (every client needs data), got {min_size}.")
  if num_clients * min_size > len(labels):
    raise ValueError(f"cannot give {num_clients} clients at least min_size={min_size} examples "
                     f"each from {len(labels)} examples.")


def _check_sizes(parts: list[np.ndarray], min_size: int, how: str) -> list[np.ndarray]:
  smallest = min(len(p) for p in parts)
  if smallest < min_size:
    raise ValueError(f"{how} gives a client only {smallest} examples < min_size={min_size}; "
                     "use fewer clients or a smaller min_size.")
  return parts


def iid(labels: np.ndarray, num_clients: int, rng: np.random.Generator, *,
        min_size: int = 1) -> list[np.ndarray]:
  """A uniformly random split into parts of equal size (±1)."""
  _check(labels, num_clients, min_size)
  return [np.sort(p) for p in np.array_split(rng.permutation(len(labels)), num_clients)]


def dirichlet(labels: np.ndarray, num_clients: int, rng: np.random.Generator, *, alpha: float,
              min_size: int = 1) -> list[np.ndarray]:
  """For each class c, proportions over clients p_c ~ Dir(α·1_n); client i gets a fraction p_{c,i}
  of class c. Small α: each client sees few classes; α → ∞: iid. (Hsu, Qi, Brown 2019.)"""
  _check(labels, num_clients, min_size)
  if not alpha > 0:
    raise ValueError(f"Dirichlet alpha must be > 0, got {alpha!r}.")
  by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
  for _ in range(_MAX_DIRICHLET_TRIES):
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for idx in by_class:
      idx = rng.permutation(idx)
      cuts = (np.cumsum(rng.dirichlet(np.full(num_clients, alpha)))[:-1] * len(idx)).astype(int)
      for client, chunk in enumerate(np.split(idx, cuts)):
        parts[client].append(chunk)
    out = [np.sort(np.concatenate(p)) for p in parts]
    if min(len(p) for p in out) >= min_size:
      return out
  raise ValueError(f"no Dirichlet(alpha={alpha}) partition over {num_clients} clients gave every "
                   f"client >= min_size={min_size} examples in {_MAX_DIRICHLET_TRIES} draws; "
                   "raise alpha or lower min_size.")


def shards(labels: np.ndarray, num_clients: int, rng: np.random.Generator, *,
           shards_per_client: int = 2, min_size: int = 1) -> list[np.ndarray]:
  """Sort by label, cut into n·k contiguous shards, give each client k random shards
  (McMahan et al. 2017's pathological non-iid split)."""
  _check(labels, num_clients, min_size)
  order = np.argsort(labels, kind="stable")
  pieces = np.array_split(order, num_clients * shards_per_client)
  assignment = rng.permutation(len(pieces)).reshape(num_clients, shards_per_client)
  parts = [np.sort(np.concatenate([pieces[s] for s in row])) for row in assignment]
  return _check_sizes(parts, min_size, f"shards(k={shards_per_client})")


def gamma_similarity(labels: np.ndarray, num_clients: int, rng: np.random.Generator, *,
                     gamma: float, min_size: int = 1) -> list[np.ndarray]:
  """A fraction γ of the examples is split iid; the rest is sorted by label and cut into
  contiguous blocks, one per client. γ = 1: iid; γ = 0: fully sorted (Karimireddy et al. 2020)."""
  _check(labels, num_clients, min_size)
  if not 0 <= gamma <= 1:
    raise ValueError(f"gamma must lie in [0, 1], got {gamma!r}.")
  perm = rng.permutation(len(labels))
  num_iid = int(round(gamma * len(labels)))
  iid_part, rest = perm[:num_iid], perm[num_iid:]
  rest = rest[np.argsort(labels[rest], kind="stable")]
  parts = [np.sort(np.concatenate([a, b])) for a, b in
           zip(np.array_split(iid_part, num_clients), np.array_split(rest, num_clients))]
  return _check_sizes(parts, min_size, f"gamma_similarity(gamma={gamma})")


def label_groups(labels: np.ndarray, num_clients: int, rng: np.random.Generator, *,
                 group_size: int, group_labels, alpha: float,
                 min_size: int = 1) -> list[np.ndarray]:
  """A distinct group by labels (issue 29): clients 0..g−1 hold every example whose label is in
  `group_labels`, the other n − g clients every other example; on each side the examples are
  split over its clients by `dirichlet` with α. An honest set that keeps no group member never
  sees the group's labels, so the heterogeneity of an honest set depends on how many group
  members it keeps."""
  _check(labels, num_clients, min_size)
  group = np.isin(labels, np.asarray(tuple(group_labels)))
  classes = set(np.unique(labels).tolist())
  if not 1 <= group_size < num_clients:
    raise ValueError(f"label_groups needs 1 <= group_size < num_clients={num_clients}, got "
                     f"group_size={group_size}.")
  if not group.any() or group.all() or not set(group_labels) <= classes:
    raise ValueError(f"label_groups needs group_labels among the labels {sorted(classes)}, some "
                     f"but not all of them; got {tuple(group_labels)}.")
  inside, outside = np.flatnonzero(group), np.flatnonzero(~group)
  parts = ([inside[p] for p in dirichlet(labels[inside], group_size, rng, alpha=alpha,
                                         min_size=min_size)]
           + [outside[p] for p in dirichlet(labels[outside], num_clients - group_size, rng,
                                            alpha=alpha, min_size=min_size)])
  return [np.sort(p) for p in parts]


PARTITIONERS = {"iid": iid, "dirichlet": dirichlet, "shards": shards,
                "gamma_similarity": gamma_similarity, "label_groups": label_groups}
