"""Clustering defences from the other robust-FL benchmarks: SignGuard, clipped clustering, FLAME.

Each one splits the clients into a majority group and the rest (by sign statistics, by cosine
distances), averages the majority's rows after clipping them to a median norm, and (FLAME) adds
noise. Every rule also comes as `*_with_share`, returning `Filtered(value, kept_share)`: the
aggregate and the share of the n rows it averaged (an aux diagnostic, like
`clipping.Clipped.clipped_share`).

Shared conventions (each docstring says where a rule departs from them):
- Norms: ‖x_i‖ is computed without overflow (rows with huge entries are scaled by an exact power
  of two, `base.power_of_two_scale`); a norm beyond the float range is +inf. A row with a NaN or
  ±inf entry ("non-finite") has norm +inf wherever a median of norms is taken, as a huge row
  would, so it gives an attacker nothing a huge finite row would not. A median of norms is
  NumPy's (the mean of the two middle values for even n).
- Clipping to C: clip_C(x) = x · min(1, C/‖x‖), computed on the scaled row (so huge rows clip
  exactly); a zero row stays zero.
- Cosine distance: 1 − x_i·x_j/(‖x_i‖‖x_j‖), clipped to [0, 2]; a zero row is at distance 1 from
  every row (cosine similarity 0, as torch's `cosine_similarity` with its eps gives, which
  Blades uses), and every row at distance 0 from itself.
- A non-finite row is never averaged in: it takes no part in any clustering, is never a member
  of a kept group, and when no finite row is kept the aggregate is the zero vector (no update)
  with `kept_share` 0, never NaN. Every row is averaged with the matrix product w @ x.

Costs: one Gram product `[n, d] × [d, n]` (clipped clustering, FLAME) or a gather of a coordinate
subset (SignGuard), a few passes over `[n, d]`, then O(n²)–O(n³) work on `[n, n]`.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from fedjax_robust.aggregators import base

Array = jax.Array

KMEANS_MAX_ITERATIONS = 100   # Lloyd's iterations cap for SignGuard's 2-means


class Filtered(NamedTuple):
  """A filtering rule's output and how much of its input it kept."""
  value: jax.Array       # [d]
  kept_share: jax.Array  # float32 scalar in [0, 1]: share of the n rows averaged


class NormHistory(NamedTuple):
  """Clipped clustering's state: the norms of the (finite) rows seen in earlier rounds."""
  norms: jax.Array  # [history]; NaN marks an empty slot
  count: jax.Array  # int32 scalar: how many norms were ever recorded (ring position)


class _Rows(NamedTuple):
  """Rows prepared for overflow-free norms: y_i = s_i·x_i with s_i an exact power of two (1 for
  ordinary rows), non-finite rows zeroed in x and y."""
  x: Array       # [n, d] rows, non-finite rows zeroed (signs, zero entries)
  y: Array       # [n, d] scaled rows (norms, Gram, averages)
  scale: Array   # [n] s_i
  ynorm: Array   # [n] ‖y_i‖
  finite: Array  # [n] bool

  def norms(self) -> Array:
    """‖x_i‖ `[n]`: +inf for a non-finite row (and where the norm exceeds the float range)."""
    return jnp.where(self.finite, self.ynorm / self.scale, jnp.inf)

  def clipped_weights(self, threshold: Array) -> Array:
    """w_i with w_i·y_i = clip_threshold(x_i): min(1/s_i, C/‖y_i‖) (1/s_i for a zero row)."""
    ratio = jnp.where(self.ynorm > 0, threshold / jnp.where(self.ynorm > 0, self.ynorm, 1.0),
                      jnp.inf)
    return jnp.minimum(1.0 / self.scale, ratio)

  def cosine_distances(self) -> Array:
    """1 − cos(x_i, x_j) `[n, n]` in [0, 2], 0 on the diagonal, 1 off it for a zero row."""
    n = self.y.shape[0]
    gram = self.y @ self.y.T
    denominator = self.ynorm[:, None] * self.ynorm[None, :]
    cosine = jnp.where(denominator > 0, gram / jnp.where(denominator > 0, denominator, 1.0), 0.0)
    return jnp.where(jnp.eye(n, dtype=bool), 0.0, jnp.clip(1.0 - cosine, 0.0, 2.0))

  def average(self, kept: Array, threshold: Array) -> Filtered:
    """Mean of clip_threshold(x_i) over the kept rows (0 and share 0 if none is kept)."""
    kept = kept & self.finite
    count = jnp.sum(kept)
    weights = jnp.where(kept, self.clipped_weights(threshold), 0.0).astype(self.y.dtype)
    value = (weights @ self.y) / jnp.maximum(count, 1).astype(self.y.dtype)
    return Filtered(jnp.where(count > 0, value, jnp.zeros_like(value)),
                    jnp.mean(kept.astype(jnp.float32)))


def _with_rows(updates: Array, body: Callable[..., object], *operands) -> object:
  """`body(rows: _Rows, *operands)`, on the plain rows when every ‖x_i‖² is ordinary (no copy,
  norms from one dot pass), else on zeroed and power-of-two-scaled rows
  (`base.ordinary_or_exact`; the two agree on ordinary input, where every s_i = 1)."""
  n = updates.shape[0]

  def fast(x, sq, *ops):
    return body(_Rows(x, x, jnp.ones((n,), x.dtype), jnp.sqrt(sq), jnp.ones((n,), bool)), *ops)

  def exact(x, *ops):
    finite = base.finite_rows(x)
    x = base.zero_nonfinite_rows(x, finite)
    scale = base.power_of_two_scale(jnp.max(jnp.abs(x), axis=1), x.dtype)
    y = x * scale[:, None]
    return body(_Rows(x, y, scale, jnp.sqrt(base.row_squared_norms(y)), finite), *ops)

  return base.ordinary_or_exact(updates, fast, exact, *operands)


def _median(values: Array) -> Array:
  """NumPy's median of a `[n]` vector without NaN (+inf allowed): the middle value, or the mean
  of the two middle values for even n (as halves, so two huge values do not overflow)."""
  n = values.shape[0]
  ordered = jnp.sort(values)
  if n % 2:
    return ordered[n // 2]
  return 0.5 * ordered[n // 2 - 1] + 0.5 * ordered[n // 2]


# ---------------------------------------------------------------------------------------------
# SignGuard


# Relative tolerance of SignGuard's 2-means: two squared distances closer than this count as
# equal. With its 3 statistics each is computed from exact integers with at most 8 float32
# roundings, all of non-negative terms (relative error ≤ 8u, u = 2^-24), so two exactly equal
# ones differ by at most 16u of the larger; 2^-18 = 64u leaves a factor of 4.
TWO_MEANS_TIE = 2.0 ** -18


def _two_means_majority(counts: Array, scale: Array, valid: Array) -> Array:
  """The larger cluster of a deterministic 2-means of the valid rows of the features
  f_ij = counts_ij / scale_j (`counts [n, k]` and `scale [k]` non-negative integers; a column of
  scale 0 is all 0), `[n]` bool.

  Seeds: c₁ = the valid row farthest from the valid rows' mean, c₂ = the valid row farthest from
  c₁ (ties: lowest index). Lloyd's iterations: each valid row goes to the nearer centre (ties:
  c₁), each centre becomes the mean of its rows (kept where it has none), until no assignment
  changes (at most `KMEANS_MAX_ITERATIONS`). Larger cluster: more valid rows; ties: the cluster
  of the lowest-index valid row.

  Exact ties are frequent (the features lie on a lattice of small rationals), so every decision
  is made on integers as far as they go: a centre is kept as its members' integer count sums
  S_j and their number m, and the squared distance of row i to it, times m², as
  Σ_j (m·counts_ij − S_j)² / scale_j² from the exact integers m·counts_ij − S_j. Two distances
  are compared as such products (‖f_i − c₁‖²·m₁²m₂² against ‖f_i − c₂‖²·m₁²m₂²); they are equal
  when they differ by at most `TWO_MEANS_TIE` (2^-18) of the larger, which covers their float32
  rounding (≤ 16 ulps between two exactly equal values), so a tie resolves as documented
  whatever the evaluation order (eager, jit, vmap). A genuine relative difference below 2^-18
  also counts as a tie. Integer sums stay exact while n·max counts < 2^31.
  """
  counts = counts.astype(jnp.int32)
  denominator = jnp.where(scale > 0, scale, 1).astype(jnp.float32)
  denominator = denominator * denominator

  def spread(total, m):  # m²·‖f_i − total/m‖² `[n]`
    e = (m * counts - total[None, :]).astype(jnp.float32)
    return jnp.sum(e * e / denominator, axis=1)

  def farthest_from(total, m):  # the row's counts: a centre of one member
    far = jnp.where(valid, spread(total, m), -1.0)
    top = jnp.max(far)
    return counts[jnp.argmax(valid & (far >= top - TWO_MEANS_TIE * top))]

  def assign(c1, c2):   # True: the row goes to c₂ (strictly nearer beyond the tolerance)
    (s1, m1), (s2, m2) = c1, c2
    v1 = spread(s1, m1) * (m2 * m2).astype(jnp.float32)
    v2 = spread(s2, m2) * (m1 * m1).astype(jnp.float32)
    return valid & (v2 < v1 - TWO_MEANS_TIE * v1)

  def centre(members, old):
    m = jnp.sum(members, dtype=jnp.int32)
    new = (members.astype(jnp.int32) @ counts, m)
    return jax.tree.map(lambda a, b: jnp.where(m > 0, a, b), new, old)

  def step(carry):
    second, _, c1, c2, it = carry
    c1, c2 = centre(valid & ~second, c1), centre(second, c2)
    new = assign(c1, c2)
    return new, jnp.any(new != second), c1, c2, it + 1

  one = jnp.ones((), jnp.int32)
  c1 = (farthest_from(valid.astype(jnp.int32) @ counts, jnp.sum(valid, dtype=jnp.int32)), one)
  c2 = (farthest_from(c1[0], one), one)
  init = (assign(c1, c2), jnp.array(True), c1, c2, jnp.array(0, jnp.int32))
  second, *_ = lax.while_loop(lambda c: c[1] & (c[4] < KMEANS_MAX_ITERATIONS), step, init)
  n_second = jnp.sum(second)
  n_first = jnp.sum(valid & ~second)
  pick_second = (n_second > n_first) | ((n_second == n_first) & second[jnp.argmax(valid)])
  return valid & (second == pick_second)


def _coordinate_count(fraction: float, d: int) -> int:
  """k = ⌊fraction·d⌋ (at least 1, at most d), without float noise (0.29·100 = 28.999…)."""
  return min(d, max(1, math.floor(fraction * d + 1e-9)))


def signguard_with_share(updates: Array, *, key: Array, lower: float = 0.1, upper: float = 3.0,
                         coordinate_fraction: float = 0.1) -> Filtered:
  """`signguard` and the share of rows it averaged (`Filtered`). Secure aggregation: no (see
  `signguard`)."""
  n, d = base.check_updates(updates, "signguard")
  if not (0.0 <= lower <= 1.0 <= upper < math.inf):
    raise ValueError(f"signguard needs 0 <= lower <= 1 <= upper < inf, got lower={lower}, "
                     f"upper={upper}.")
  if not 0.0 < coordinate_fraction <= 1.0:
    raise ValueError(f"signguard needs 0 < coordinate_fraction <= 1, got {coordinate_fraction}.")
  k = _coordinate_count(coordinate_fraction, d)
  coordinates = (jnp.arange(d) if k == d else
                 jax.random.choice(key, d, (k,), replace=False))

  def body(rows: _Rows, coordinates):
    norms = rows.norms()
    median = _median(norms)
    norm_ok = rows.finite & (norms >= lower * median) & (norms <= upper * median)
    signs = rows.x if k == d else rows.x[:, coordinates]
    counts = jnp.stack([jnp.sum(signs > 0, axis=1), jnp.sum(signs == 0, axis=1),
                        jnp.sum(signs < 0, axis=1)], axis=1).astype(jnp.int32)
    largest = jnp.max(jnp.where(rows.finite[:, None], counts, 0), axis=0)
    kept = norm_ok & _two_means_majority(counts, largest, rows.finite)
    kept = jnp.where(jnp.any(kept), kept, norm_ok)
    return rows.average(kept, median)

  return _with_rows(updates, body, coordinates)


def signguard(updates: Array, *, key: Array, lower: float = 0.1, upper: float = 3.0,
              coordinate_fraction: float = 0.1) -> Array:
  """SignGuard (Xu, Huang, Song, Lan, "SignGuard: Byzantine-robust federated learning through
  collaborative malicious gradient filtering", ICDCS 2022).

  With M = median_i ‖x_i‖ (non-finite rows count as +inf):
    S₁ = {i : lower·M ≤ ‖x_i‖ ≤ upper·M}                                   (norm filter)
    S₂ = the larger cluster of the sign statistics s_i = (share of x_ij > 0, = 0, < 0 over k
         coordinates j), each statistic divided by its maximum over the rows
    output = (1/|S|) Σ_{i∈S} x_i · min(1, M/‖x_i‖),   S = S₁ ∩ S₂.
  The k = ⌊coordinate_fraction·d⌋ (at least 1) coordinates are drawn without replacement from
  `key` (all of them when k = d); every row uses the same ones.

  Choices where the published codes differ:
  - Clustering: the paper and the authors' code (github.com/JianXu95/SignGuard,
    `signguard_multiclass`) run scikit-learn's MeanShift (bandwidth from `estimate_bandwidth`,
    quantile 0.5, bin seeding, outliers left unlabelled) and keep its most populous cluster;
    Blades runs KMeans with 2 clusters. Here: a deterministic 2-means (Lloyd's iterations from
    maximin seeds, `_two_means_majority`), jittable and free of random restarts. Like Blades'
    KMeans, it always splits the rows in two unless their statistics coincide, so some honest
    rows are dropped even without an attack, where MeanShift may keep one cluster.
  - Coordinates: a random subset, as the paper describes (the authors' code takes a random
    contiguous block of ⌊0.1·d⌋ coordinates; Blades takes all of them).
  - Feature scaling by each statistic's maximum over the rows, as in the authors' code (without
    its +1e-8; a statistic whose maximum is 0 stays 0). Blades does not rescale.
  - Norm filter bounds inclusive, as written in the paper's table ([0.1, 3.0]); the authors'
    code uses strict inequalities. Blades clips to M before its filter, which makes its upper
    bound inactive; here the filter sees the raw norms, as in the paper and the authors' code.
  - One median (NumPy's) for both the filter and the clipping; the authors' code clips to
    torch's lower median for even n.
  - Empty S (the larger sign cluster lies wholly outside the norm filter): S = S₁. Empty S₁: the
    zero vector. S₁ is empty when M = +inf (at least half the rows non-finite, or with norms
    beyond the float range); with M finite it never is for upper ≥ 2 (the row at or just above
    the median passes), and may be for even n with upper < 2.
  Non-finite rows: norm +inf (never in S₁), left out of the clustering and of the feature
  scaling, never averaged. Huge finite rows fail the norm filter unless most rows are huge.
  Cost: one pass for the norms, a gather of `[n, k]`, then O(n) per Lloyd iteration.
  Secure aggregation: no — it needs every update in the clear (each row's norm and their
  median, and each row's sign statistics, clustered by 2-means).
  """
  return signguard_with_share(updates, key=key, lower=lower, upper=upper,
                              coordinate_fraction=coordinate_fraction).value


# ---------------------------------------------------------------------------------------------
# Clipped clustering


def clipped_clustering_init(d: int, dtype=jnp.float32, *, history: int = 10_000) -> NormHistory:
  """An empty norm history of `history` slots (all NaN) for `clipped_clustering`; `d` is the
  update dimension (unused: the state does not depend on it)."""
  del d
  if history < 1:
    raise ValueError(f"clipped_clustering needs history >= 1, got {history}.")
  return NormHistory(jnp.full((history,), jnp.nan, dtype), jnp.zeros((), jnp.int32))


def average_linkage_majority(distances: Array, valid: Array) -> Array:
  """The larger of the two clusters of average-linkage agglomerative clustering `[n]` (bool).

  Among the valid rows only: start from singletons, repeatedly merge the two clusters A, B at the
  smallest distance (ties: the first pair (a, b), a < b, in row-major order of their
  representatives), with d(A ∪ B, C) = (|A| d(A, C) + |B| d(B, C)) / (|A| + |B|) (Lance–Williams:
  the mean of the pairwise distances, i.e. "average" linkage), until two clusters remain. The
  larger one is returned; ties: the cluster formed by the later merge (a singleton counts as
  formed before every merge, later for a larger row index). This is the cluster Blades'
  `Clippedclustering` keeps after scikit-learn's `AgglomerativeClustering(n_clusters=2,
  linkage="average")` (label 0 goes to the later node, and Blades keeps label 1 only when it has
  more than n/2 rows). With one valid row, that row; with none, none. O(n³): n − 2 merges on
  `[n, n]`.
  """
  n = distances.shape[0]
  if n == 1:
    return valid
  upper = jnp.triu(jnp.ones((n, n), bool), 1)
  dtype = distances.dtype

  def merge(t, carry):
    dist, active, sizes, node, labels = carry
    go = jnp.sum(active) > 2
    candidates = jnp.where(active[:, None] & active[None, :] & upper, dist, jnp.inf)
    a, b = jnp.divmod(jnp.argmin(candidates), n)
    row = (sizes[a] * dist[a] + sizes[b] * dist[b]) / jnp.maximum(sizes[a] + sizes[b], 1.0)
    merged = dist.at[a, :].set(row).at[:, a].set(row)
    return (jnp.where(go, merged, dist), active.at[b].set(active[b] & ~go),
            sizes.at[a].add(jnp.where(go, sizes[b], 0.0)),
            node.at[a].set(jnp.where(go, n + t, node[a])),
            jnp.where(go & (labels == b), a, labels))

  init = (distances, valid, valid.astype(dtype), jnp.arange(n), jnp.arange(n))
  _, active, sizes, node, labels = lax.fori_loop(0, n - 2, merge, init)
  # Larger cluster, ties to the larger node id: node < 2n, so size·2n + node orders both.
  score = jnp.where(active, sizes.astype(jnp.float32) * (2 * n) + node.astype(jnp.float32), -1.0)
  return valid & (labels == jnp.argmax(score))


def clipped_clustering_with_share(updates: Array, *, state: NormHistory,
                                  history: int = 10_000) -> tuple[Filtered, NormHistory]:
  """`clipped_clustering` and the share of rows it averaged: `(Filtered, new_state)`.
  Secure aggregation: no (see `clipped_clustering`)."""
  n, _ = base.check_updates(updates, "clipped_clustering")
  if history < n:
    raise ValueError(f"clipped_clustering needs history >= n = {n} (one round's norms), got "
                     f"{history}.")
  if state.norms.shape != (history,):
    raise ValueError(f"clipped_clustering: the state holds {state.norms.shape[0]} norms but "
                     f"history={history}; build it with clipped_clustering_init(history=...).")

  def body(rows: _Rows, state: NormHistory):
    rank = jnp.cumsum(rows.finite) - 1
    slots = jnp.where(rows.finite, (state.count + rank) % history, history)  # history: dropped
    norms = state.norms.at[slots].set(rows.norms().astype(state.norms.dtype), mode="drop")
    count = state.count + jnp.sum(rows.finite, dtype=jnp.int32)
    seen = jnp.minimum(count, history)
    ordered = jnp.sort(norms)   # NaN (empty slots) last
    threshold = 0.5 * ordered[(seen - 1) // 2] + 0.5 * ordered[seen // 2]
    threshold = jnp.where(seen > 0, threshold, jnp.inf).astype(rows.y.dtype)
    kept = average_linkage_majority(rows.cosine_distances(), rows.finite)
    return rows.average(kept, threshold), NormHistory(norms, count)

  return _with_rows(updates, body, state)


def clipped_clustering(updates: Array, *, state: NormHistory,
                       history: int = 10_000) -> tuple[Array, NormHistory]:
  """Clipped clustering (Li, Sun, Zheng, "An experimental study of Byzantine-robust aggregation
  schemes in federated learning", IEEE Trans. Big Data 2023; Blades' `Clippedclustering`).

    C_t = median of every norm ‖x_i‖ recorded so far, this round's included
    x̃_i = x_i · min(1, C_t/‖x_i‖)
    2 clusters by average-linkage agglomerative clustering on the cosine distances
    output = the mean of the x̃_i of the larger cluster (`average_linkage_majority`; ties: the
             later-formed cluster, which is the one Blades keeps).
  Returns `(aggregate, new_state)`; the state (`clipped_clustering_init`) holds the norms in a
  buffer of `history` slots: this round's finite rows' norms are added (in row order) before the
  median is taken, as in Blades (`l2norm_his.extend` then `np.median`). Once the buffer is full
  it is a ring (the oldest norms are overwritten), so C_t is exactly Blades' median while
  rounds·n ≤ history (Blades keeps every norm) and the median of the last `history` norms after.
  Cosine distances are unchanged by clipping (a positive scaling), so they are taken on x_i.

  Choices: Blades also caps C_t at max_tau = 1e5 (not applied here: no cap). Non-finite rows:
  their norm is not added to the history (Blades adds NaN, which turns its median into NaN for
  all later rounds); they take no part in the clustering (Blades puts them at cosine distance 2
  from every row), so the two clusters and the "larger" are over the finite rows; they are never
  averaged. No finite row: the zero vector. Huge rows clip exactly.
  Cost: one Gram product, a sort of the history, and O(n³) for the clustering.
  Secure aggregation: no — it needs every update in the clear (the pairwise cosine distances,
  clustered by average linkage, and each row's norm, added to the history).
  """
  out, new_state = clipped_clustering_with_share(updates, state=state, history=history)
  return out.value, new_state


# ---------------------------------------------------------------------------------------------
# FLAME


def hdbscan_majority_members(distances: Array, valid: Array) -> Array:
  """Members `[n]` (bool) of HDBSCAN's clusters with min_cluster_size = n//2 + 1, min_samples =
  1, allow_single_cluster=True, cluster_selection_method="eom", on a precomputed distance matrix
  restricted to the valid rows (invalid rows: never members).

  Exact, by what HDBSCAN does in this configuration (scikit-learn's `_tree.pyx`, the same in the
  hdbscan library's `_hdbscan_tree.pyx`): with min_samples = 1 the mutual-reachability distance
  is the distance itself (the core distance is the 0 to the point itself in scikit-learn; in the
  hdbscan library it is the nearest-neighbour distance, which leaves every threshold graph, so
  the single-linkage hierarchy, unchanged). With m = n//2 + 1 > n/2 no split of the condensed
  tree has two children of size ≥ m, so the root is the only cluster; every point falls out of it
  at λ_p = 1/(height of the dendrogram node where it leaves a component of size ≥ m); EOM with
  allow_single_cluster selects the root (its stability Σ λ_p ≥ 0 beats its empty subtree's 0);
  `do_labelling` then labels a point 0 exactly when λ_p equals the largest λ, else noise. Those
  points are the connected component of size ≥ m of the graph {(i, j) : D_ij ≤ d*}, where d* is
  the smallest threshold at which such a component exists (with ties at d*, every point joined
  at d* is in it, whatever the merge order). Computed from the minimum spanning tree (Prim, n − 1
  steps) whose edges, in increasing order, are merged (Kruskal) until a component reaches m
  rows, then while their weight is d*. Tests check it against scikit-learn's HDBSCAN.

  With fewer than m valid rows no component reaches m (HDBSCAN would label every row noise) and
  every valid row is returned (the reference FLAME code keeps all clients when every label is
  noise). n = 1: the row, if valid. O(n²).
  """
  n = distances.shape[0]
  m = n // 2 + 1
  if n == 1:
    return valid
  both = valid[:, None] & valid[None, :]
  dist = jnp.where(both, distances, jnp.inf)

  def prim(t, carry):
    in_tree, best, parent, edges = carry
    j = jnp.argmin(jnp.where(in_tree | ~valid, jnp.inf, best))
    weight = jnp.where(in_tree[j] | ~valid[j], jnp.inf, best[j])
    edges = (edges[0].at[t].set(parent[j]), edges[1].at[t].set(j), edges[2].at[t].set(weight))
    closer = dist[j] < best
    return (in_tree.at[j].set(True), jnp.where(closer, dist[j], best),
            jnp.where(closer, j, parent), edges)

  start = jnp.argmax(valid)
  init = (jnp.zeros((n,), bool).at[start].set(True), dist[start], jnp.full((n,), start),
          (jnp.zeros((n - 1,), jnp.int32), jnp.zeros((n - 1,), jnp.int32),
           jnp.full((n - 1,), jnp.inf, dist.dtype)))
  *_, (heads, tails, weights) = lax.fori_loop(0, n - 1, prim, init)
  order = jnp.argsort(weights, stable=True)
  heads, tails, weights = heads[order], tails[order], weights[order]

  def kruskal(e, carry):
    labels, found, threshold, anchor = carry
    w, a, b = weights[e], heads[e], tails[e]
    join = jnp.isfinite(w) & (~found | (w <= threshold))
    labels = jnp.where(join & (labels == labels[b]), labels[a], labels)
    reached = join & ~found & (jnp.sum(labels == labels[a]) >= m)
    return (labels, found | reached, jnp.where(reached, w, threshold),
            jnp.where(reached, a, anchor))

  init = (jnp.arange(n), jnp.array(False), jnp.array(jnp.inf, dist.dtype), jnp.array(0))
  labels, found, _, anchor = lax.fori_loop(0, n - 1, kruskal, init)
  return jnp.where(found, valid & (labels == labels[anchor]), valid)


def flame_with_share(updates: Array, *, key: Array, noise_lambda: float = 0.001) -> Filtered:
  """`flame` and the share of rows it averaged (`Filtered`). Secure aggregation: no (see
  `flame`)."""
  _, d = base.check_updates(updates, "flame")
  if not 0.0 <= noise_lambda < math.inf:
    raise ValueError(f"flame needs a finite noise_lambda >= 0, got {noise_lambda}.")

  def body(rows: _Rows, key):
    bound = _median(rows.norms())
    members = hdbscan_majority_members(rows.cosine_distances(), rows.finite)
    out = rows.average(members, bound)
    noise = jax.random.normal(key, (d,), rows.y.dtype) * (noise_lambda * bound)
    ok = jnp.isfinite(bound) & (out.kept_share > 0)
    return Filtered(jnp.where(ok, out.value + noise, jnp.zeros_like(out.value)),
                    jnp.where(ok, out.kept_share, 0.0))

  return _with_rows(updates, body, key)


def flame(updates: Array, *, key: Array, noise_lambda: float = 0.001) -> Array:
  """FLAME (Nguyen, Rieger, Chen, Yalame, Möllering, Fereidooni, Marchal, Miettinen, Mirhoseini,
  Zeitouni, Koushanfar, Sadeghi, Schneider, "FLAME: taming backdoors in federated learning",
  USENIX Security 2022).

    D_ij = 1 − cos(x_i, x_j)
    K = the rows HDBSCAN(min_cluster_size = n//2 + 1, min_samples = 1,
        allow_single_cluster = True) labels as cluster members on D (`hdbscan_majority_members`)
    S_t = median_i ‖x_i‖ over ALL n rows
    output = (1/|K|) Σ_{i∈K} x_i · min(1, S_t/‖x_i‖) + N(0, (λ S_t)² I),   λ = `noise_lambda`
  with the noise drawn from `key`. The HDBSCAN labelling is exact (not an approximation) for
  this configuration; see `hdbscan_majority_members`.

  Choices where the published codes differ (the authors released no code). The FLAME code
  copied across backdoor-FL benchmarks builds the n × n matrix of cosine distances, fits
  `hdbscan.HDBSCAN(min_cluster_size=n//2 + 1, min_samples=1, allow_single_cluster=True)` to its
  ROWS as feature vectors (Euclidean distances between rows of distances), keeps the most
  populous label (every client when all are noise), clips the admitted updates to the median
  norm of the ADMITTED clients (its list of norms is filled in the loop over them; some later
  copies take the median over all n) and adds N(0, (λ·median)²) to the model. Here:
  - Distances between the clients' updates x_i (the rule's input), as several of those codes do
    (model − global model); the paper and others compare the local models W_i = G + x_i, whose
    angles the shared G dominates.
  - HDBSCAN on the precomputed cosine distances, as the paper describes and some codes do
    (metric "precomputed" or "cosine"); clustering the rows of the distance matrix, as the
    copied code does, is a different clustering.
  - S_t is the median norm of all n updates, as the paper's algorithm takes it, not of the
    admitted ones; the two differ when the rows left out are not balanced around the median
    (large rows left out make the copied code's bound smaller).
  - The noise is added to the aggregate update, which is adding it to the aggregated model (as
    that code does): N(0, (λ S_t)²) per coordinate, λ = 0.001 as in the paper for image tasks.
  Non-finite rows: norm +inf in S_t (like a huge row), left out of HDBSCAN (never members, as if
  infinitely far), never averaged. If S_t = +inf (at least half the rows non-finite, or with
  norms beyond the float range) the bound and the noise are undefined and the output is the
  zero vector. Huge finite rows clip exactly. Cost: one Gram product, O(n²) for the clustering.
  Secure aggregation: no — it needs every update in the clear (the pairwise cosine distances,
  clustered by HDBSCAN, and the median of the row norms).
  """
  return flame_with_share(updates, key=key, noise_lambda=noise_lambda).value
