"""Graphs over clients, for correlated corruption (μ_H along edges): adjacency matrices `[n, n]`.

All constructions are NumPy (run once, deterministic given a seed) and return a symmetric 0/1
float64 matrix with a zero diagonal.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _check(n: int) -> None:
  if not isinstance(n, (int, np.integer)) or n < 1:
    raise ValueError(f"a graph needs a positive number of clients, got {n!r}.")


def _symmetric(a: np.ndarray) -> np.ndarray:
  a = np.maximum(a, a.T).astype(np.float64)
  np.fill_diagonal(a, 0.0)
  return a


def from_edges(n: int, edges: Sequence[Sequence[int]]) -> np.ndarray:
  """An undirected graph from a list of (i, j) pairs."""
  _check(n)
  a = np.zeros((n, n))
  for edge in edges:
    if len(edge) != 2 or not all(0 <= int(v) < n for v in edge):
      raise ValueError(f"edge {tuple(edge)} must be a pair of client indices in [0, {n}).")
    a[int(edge[0]), int(edge[1])] = 1.0
  return _symmetric(a)


def ring(n: int) -> np.ndarray:
  """Client i linked to i ± 1 (mod n)."""
  _check(n)
  idx = np.arange(n)
  a = np.zeros((n, n))
  if n > 1:
    a[idx, (idx + 1) % n] = 1.0
  return _symmetric(a)


def grid(n: int, width: int | None = None) -> np.ndarray:
  """A 2-D lattice with `width` columns (default ⌈√n⌉), filled row by row."""
  _check(n)
  width = width or int(np.ceil(np.sqrt(n)))
  a = np.zeros((n, n))
  for i in range(n):
    if (i + 1) % width and i + 1 < n:
      a[i, i + 1] = 1.0
    if i + width < n:
      a[i, i + width] = 1.0
  return _symmetric(a)


def erdos_renyi(n: int, p: float, seed: int = 0) -> np.ndarray:
  """Each pair linked independently with probability p."""
  _check(n)
  if not 0 <= p <= 1:
    raise ValueError(f"Erdős–Rényi edge probability must lie in [0, 1], got {p}.")
  upper = np.triu(np.random.default_rng(seed).random((n, n)) < p, k=1)
  return _symmetric(upper)


def stochastic_block(sizes: Sequence[int], p_in: float, p_out: float,
                     seed: int = 0) -> np.ndarray:
  """Blocks of the given sizes (consecutive clients); pairs linked with p_in within a block and
  p_out across blocks."""
  sizes = [int(s) for s in sizes]
  if not sizes or min(sizes) < 1:
    raise ValueError(f"block sizes must be positive ints, got {sizes}.")
  block = np.repeat(np.arange(len(sizes)), sizes)
  prob = np.where(block[:, None] == block[None, :], p_in, p_out)
  upper = np.triu(np.random.default_rng(seed).random(prob.shape) < prob, k=1)
  return _symmetric(upper)


def nearest_neighbors(features: np.ndarray, k: int) -> np.ndarray:
  """Each client linked to its k nearest clients in `features [n, m]` (Euclidean), symmetrized:
  e.g. the clients' label distributions, so that clients with similar data are neighbours."""
  features = np.asarray(features, np.float64)
  n = len(features)
  if not 1 <= k < n:
    raise ValueError(f"k must lie in [1, n={n}), got {k}.")
  dist = ((features[:, None] - features[None]) ** 2).sum(-1)
  np.fill_diagonal(dist, np.inf)
  a = np.zeros((n, n))
  nearest = np.argsort(dist, axis=1, kind="stable")[:, :k]
  a[np.repeat(np.arange(n), k), nearest.ravel()] = 1.0
  return _symmetric(a)


def greedy_coloring(adjacency: np.ndarray) -> list[np.ndarray]:
  """Colour classes (independent sets) covering the nodes, by greedy colouring in order of
  decreasing degree: nodes of one class can be Gibbs-updated at the same time."""
  n = len(adjacency)
  colors = -np.ones(n, int)
  for i in np.argsort(-adjacency.sum(1), kind="stable"):
    used = set(colors[adjacency[i] > 0].tolist())
    colors[i] = next(c for c in range(n) if c not in used)
  return [np.flatnonzero(colors == c) for c in range(colors.max() + 1)]


def build(kind: str, n: int, *, edges=None, p: float = 0.1, width: int | None = None,
          block_sizes=None, p_in: float = 0.5, p_out: float = 0.05, k: int = 2,
          features: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
  """A graph by name: 'edges', 'ring', 'grid', 'erdos_renyi', 'stochastic_block' or
  'data_similarity' (k-NN on `features`, e.g. client label distributions)."""
  if kind == "edges":
    if not edges:
      raise ValueError("graph kind 'edges' needs a non-empty edge list (graph.edges).")
    return from_edges(n, edges)
  if kind == "ring":
    return ring(n)
  if kind == "grid":
    return grid(n, width)
  if kind == "erdos_renyi":
    return erdos_renyi(n, p, seed)
  if kind == "stochastic_block":
    sizes = block_sizes or [n // 2, n - n // 2]
    if sum(sizes) != n:
      raise ValueError(f"block sizes {list(sizes)} must sum to n={n}.")
    return stochastic_block(sizes, p_in, p_out, seed)
  if kind == "data_similarity":
    if features is None:
      raise ValueError("graph kind 'data_similarity' needs client features (label "
                       "distributions), which the experiment provides from the data.")
    return nearest_neighbors(features, k)
  raise ValueError(f"unknown graph kind {kind!r}; available: {', '.join(KINDS)}.")


KINDS = ("edges", "ring", "grid", "erdos_renyi", "stochastic_block", "data_similarity")
