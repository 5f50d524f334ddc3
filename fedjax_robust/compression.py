"""Compressed client updates, and robust aggregation in the compressed space (issue 18).

Every client compresses what it sends, `[n, d] -> [n, d]` (the decoded vectors the server
sees), after local training and before the attack sees the honest rows:

  - **top_k**: the k coordinates of largest |x_j| of each row, the others zero (biased,
    contractive: ‖C(x) − x‖² ≤ (1 − k/d)‖x‖²).
  - **random_k**: k coordinates drawn uniformly without replacement by each client, scaled by
    d/k so that E[C(x)] = x (Stich et al. 2018; Wangni et al. 2018).
  - **shared_random_k**: random-k with the same k coordinates for every client of the round
    (drawn from the round key: a seed the server shares), scaled by d/k. The robust rule may
    then work in the k-dimensional space (`aggregate_in="k"`).
  - **qsgd** with s levels (Alistarh et al., NeurIPS 2017): ‖x‖·sign(x_j)·ξ_j/s, where ξ_j
    rounds s|x_j|/‖x‖ up with probability equal to its fractional part (unbiased).
  - **sign**: s(x_j)·‖x‖₁/d, the scaled sign (Karimireddy et al., ICML 2019), with the
    majority vote (`aggregators` "majority_vote", signSGD of Bernstein et al., ICLR 2019) as
    its natural rule. One bit per coordinate, as signSGD sends: s(t) = +1 for t ≥ 0 and −1
    for t < 0 (`signs`), so a coordinate that is exactly 0 (e.g. the weight of a pixel blank in
    all of a client's images) is sent, and decoded, as +‖x‖₁/d; the majority vote reads its +1
    the same way. Every decoded row takes the two values ±‖x‖₁/d only.

Error feedback (Seide et al. 2014; Karimireddy et al. 2019): a client keeps the residual
e_i ← e_i + x_i − C(e_i + x_i) and sends C(e_i + x_i); only for the contractive compressors
(top_k, sign): with the unbiased ones the d/k scaling makes the residual grow.

What a Byzantine client can send is what the wire format carries (`project`): k values for the
sparsifiers (at coordinates of its choice for top_k and random_k, its k largest, at the shared
coordinates for shared_random_k), a sign vector and one scale for sign. QSGD's format is not
enforced (any vector is accepted): its adversary is at least as strong as the format allows.

With differential privacy, the data-independent sparsifiers (random_k, shared_random_k) select
first and the client clips and noises only the k coordinates it sends (the noise then lives in
k dimensions, not d); the others privatize in d and compress afterwards (post-processing, the
guarantee unchanged). `Simulator.round` applies this order.

Bits sent by one client in one round (`bits_per_client`, 32-bit floats, indices of ⌈log₂ d⌉
bits): none 32d; top_k k(32 + ⌈log₂ d⌉); random_k 32k + 32 (the values and the client's seed,
from which the server regenerates the coordinates); shared_random_k 32k; qsgd
32 + d(1 + ⌈log₂(s + 1)⌉) (norm, then sign and level of each coordinate, without QSGD's Elias
coding: an upper bound on its coded length); sign d + 32 (one bit s(x_j) per coordinate, zeros
included, and the 32-bit scale: exactly what `scaled_sign` decodes from).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax import lax

KINDS = ("none", "top_k", "random_k", "shared_random_k", "qsgd", "sign")
# Compressors whose coordinates do not depend on the data (select before privatizing).
DATA_INDEPENDENT = ("random_k", "shared_random_k")
# Contractive compressors, the ones error feedback is defined for here.
CONTRACTIVE = ("top_k", "sign")
SPACES = ("d", "k")


@dataclasses.dataclass(frozen=True)
class Compression:
  """A client-side compressor (static): `kind` in KINDS, `k` coordinates sent by the
  sparsifiers, `levels` s of QSGD, `error_feedback`, and `aggregate_in` "d" (the rule sees the
  decoded `[n, d]` rows) or "k" (shared_random_k only: the rule sees the `[n, k]` shared
  coordinates, its aggregate scattered back)."""
  kind: str = "none"
  k: int = 0          # 0: ⌈ratio·d⌉
  ratio: float = 0.1
  levels: int = 0
  error_feedback: bool = False
  aggregate_in: str = "d"

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"compression.kind={self.kind!r}: one of {', '.join(KINDS)}.")
    if self.k < 0 or not 0 < self.ratio <= 1:
      raise ValueError(f"compression needs k >= 0 (0: ⌈ratio·d⌉) and 0 < ratio <= 1, got "
                       f"k={self.k}, ratio={self.ratio}.")
    if self.kind == "qsgd" and self.levels < 1:
      raise ValueError(f"compression qsgd needs levels >= 1, got {self.levels}.")
    if self.error_feedback and self.kind not in CONTRACTIVE:
      raise ValueError(f"compression.error_feedback needs a contractive compressor "
                       f"({', '.join(CONTRACTIVE)}), got {self.kind!r}.")
    if self.aggregate_in not in SPACES:
      raise ValueError(f"compression.aggregate_in={self.aggregate_in!r}: one of {SPACES}.")
    if self.aggregate_in == "k" and self.kind != "shared_random_k":
      raise ValueError(f"compression.aggregate_in='k' needs kind='shared_random_k' (the only "
                       f"compressor whose clients share their coordinates), got {self.kind!r}.")

  @property
  def on(self) -> bool:
    return self.kind != "none"

  @property
  def sparsifies(self) -> bool:
    return self.kind in ("top_k", "random_k", "shared_random_k")

  def size(self, d: int) -> int:
    """k of the sparsifiers for d sent parameters: `k`, or ⌈ratio·d⌉ when k is 0."""
    return self.k or max(1, math.ceil(self.ratio * d - 1e-9))

  def bits(self, d: int) -> int:
    """Bits one client sends in one round (`bits_per_client`)."""
    return bits_per_client(self.kind, d, k=self.size(d), levels=self.levels)


def bits_per_client(kind: str, d: int, *, k: int = 0, levels: int = 0) -> int:
  """Bits one client sends in one round (module doc)."""
  index_bits = max(1, math.ceil(math.log2(d))) if d > 1 else 1
  if kind == "none":
    return 32 * d
  if kind == "top_k":
    return k * (32 + index_bits)
  if kind == "random_k":
    return 32 * k + 32
  if kind == "shared_random_k":
    return 32 * k
  if kind == "qsgd":
    return 32 + d * (1 + math.ceil(math.log2(levels + 1)))
  if kind == "sign":
    return d + 32
  raise ValueError(f"compression.kind={kind!r}: one of {', '.join(KINDS)}.")


def top_k(x: jax.Array, k: int) -> jax.Array:
  """Each row of `x [n, d]` with its k largest |x_j| kept and the rest zeroed (ties: the lower
  index first; a NaN counts as the largest)."""
  magnitude = jnp.where(jnp.isnan(x), jnp.inf, jnp.abs(x))
  _, idx = lax.top_k(magnitude, k)
  keep = jnp.zeros(x.shape, bool).at[jnp.arange(x.shape[0])[:, None], idx].set(True)
  return jnp.where(keep, x, jnp.zeros((), x.dtype))


def shared_coordinates(key: jax.Array, d: int, k: int) -> jax.Array:
  """k of d coordinates uniformly without replacement, sorted `[k]` int32."""
  _, idx = lax.top_k(jax.random.uniform(key, (d,)), k)
  return jnp.sort(idx).astype(jnp.int32)


def random_masks(key: jax.Array, n: int, d: int, k: int) -> jax.Array:
  """`[n, d]` bool: each row's k coordinates, drawn independently per client (row i from
  `fold_in(key, i)`)."""
  idx = jax.vmap(lambda i: shared_coordinates(jax.random.fold_in(key, i), d, k))(jnp.arange(n))
  return jnp.zeros((n, d), bool).at[jnp.arange(n)[:, None], idx].set(True)


def qsgd(key: jax.Array, x: jax.Array, levels: int) -> jax.Array:
  """QSGD's stochastic quantization of each row with s = `levels` levels (unbiased)."""
  norm = jnp.sqrt(jnp.sum(x * x, axis=1, keepdims=True))
  r = levels * jnp.abs(x) / jnp.where(norm > 0, norm, 1.0)
  low = jnp.floor(r)
  xi = low + (jax.random.uniform(key, x.shape, x.dtype) < r - low)
  return norm * jnp.sign(x) * xi / levels


def signs(x: jax.Array) -> jax.Array:
  """The one-bit sign s(x_j) of every entry, in x's dtype: +1 for x_j ≥ 0 (a zero, −0 too, is
  sent as +1), −1 for x_j < 0; −1 for NaN (whose row's scale is NaN, so the row decodes to NaN
  either way)."""
  return jnp.where(x >= 0, jnp.ones((), x.dtype), -jnp.ones((), x.dtype))


def scaled_sign(x: jax.Array) -> jax.Array:
  """s(x_j)·‖x‖₁/d of each row (`signs`: a zero coordinate is sent as +)."""
  return signs(x) * jnp.mean(jnp.abs(x), axis=1, keepdims=True)


def compress(key: jax.Array, x: jax.Array, spec: Compression,
             mask: jax.Array | None = None) -> jax.Array:
  """The decoded vectors `[n, d]` the clients send. `mask` (`[n, d]` or `[d]` bool): the
  coordinates of a data-independent sparsifier, drawn by `coordinates` (its values are
  selected and scaled by d/k)."""
  d = x.shape[-1]
  if spec.kind == "none":
    return x
  if spec.kind in DATA_INDEPENDENT:
    return jnp.where(mask, x * (d / spec.size(d)), jnp.zeros((), x.dtype))
  if spec.kind == "top_k":
    return top_k(x, spec.size(d))
  if spec.kind == "qsgd":
    return qsgd(key, x, spec.levels)
  return scaled_sign(x)


def coordinates(key: jax.Array, spec: Compression, n: int, d: int
                ) -> tuple[jax.Array | None, jax.Array | None]:
  """(mask, shared index): the coordinates of a data-independent sparsifier for the round,
  `[n, d]` bool per client (random_k) or `[d]` bool with its sorted `[k]` indices
  (shared_random_k); (None, None) for the others."""
  if spec.kind == "random_k":
    return random_masks(key, n, d, spec.size(d)), None
  if spec.kind == "shared_random_k":
    idx = shared_coordinates(key, d, spec.size(d))
    return jnp.zeros((d,), bool).at[idx].set(True), idx
  return None, None


def project(updates: jax.Array, spec: Compression, mask: jax.Array | None) -> jax.Array:
  """Every row cut to what the wire format carries (module doc), applied after the attack:
  an honest row is unchanged (it is already in the format)."""
  if spec.kind in ("top_k", "random_k"):
    return top_k(updates, spec.size(updates.shape[-1]))
  if spec.kind == "shared_random_k":
    return jnp.where(mask, updates, jnp.zeros((), updates.dtype))
  if spec.kind == "sign":  # the sign bits and one scale: s(x)·max|x| keeps an honest row
    return signs(updates) * jnp.max(jnp.abs(updates), axis=1, keepdims=True)
  return updates
