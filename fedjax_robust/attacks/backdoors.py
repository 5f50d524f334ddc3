"""Backdoor attacks beyond the plain trigger patch: DBA, the edge-case backdoor, Neurotoxin.

Each is built by `attacks.registry.get` into an `Attack` with a data part (`poison_data`), the
`trigger` the evaluation stamps and the `target_label`; Neurotoxin adds an update part
(`poison`, with a state carried across rounds). The trigger shapes themselves ("square",
"pattern", "blended") are `data_poisoning.apply_trigger`'s.

- `dba`: distributed backdoor attack (Xie, Huang, Chen, Li, "DBA: distributed backdoor attacks
  against federated learning", ICLR 2020).
- `edge_case`: the edge-case backdoor (Wang, Sreenivasan, Rajput, Vishwakarma, Agarwal, Sohn,
  Lee, Papailiopoulos, "Attack of the tails: yes, you really can backdoor federated learning",
  NeurIPS 2020).
- `neurotoxin`: Neurotoxin (Zhang, Panda, Song, Yang, Mahoney, Gonzalez, Ramchandran, Mahoney,
  "Neurotoxin: durable backdoors in federated learning", ICML 2022).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_robust.attacks import data_poisoning

# ----------------------------------------------------------------------------------------- DBA
# The triggers a DBA global trigger may be: the corner's pixels are split into local triggers,
# which "blended" (the whole image, no corner) has no meaning for.
DBA_TRIGGERS = ("square", "pattern")


def dba_row_parts(patch_size: int, parts: int) -> np.ndarray:
  """The local trigger `[patch_size]` (0 … parts − 1) each row of the corner belongs to.

  The global trigger is the bottom-right `patch_size`² corner (`data_poisoning.stamp_trigger`'s
  or `stamp_pattern`'s); it is cut into `parts` horizontal bands of whole rows, as
  `numpy.array_split` cuts the rows 0 … patch_size − 1 (contiguous, the first
  patch_size mod parts bands one row longer). The paper's local triggers are horizontal bars
  too (four 1×4 bars on MNIST, in a 2×2 layout with gaps; an 8×8 digit leaves no room for gaps:
  at patch_size = parts = 4 each band is one 1×4 bar). The bands are disjoint and their union is
  the corner, so stamping every part is the global trigger. Needs 1 <= parts <= patch_size."""
  if not 1 <= parts <= patch_size:
    raise ValueError(f"dba parts={parts} must lie in [1, patch_size={patch_size}]: each local "
                     "trigger is a band of at least one row of the corner.")
  out = np.empty(patch_size, np.int32)
  for j, rows in enumerate(np.array_split(np.arange(patch_size), parts)):
    out[rows] = j
  return out


def dba_part_mask(h: int, w: int, patch_size: int, parts: int, part) -> jax.Array:
  """bool `[h, w]`: the pixels of local trigger `part` (an int, possibly traced) in an h×w
  image; a row of the image outside the corner belongs to no part."""
  offset = jnp.arange(h) - (h - patch_size)          # the row's index inside the corner
  bands = jnp.asarray(dba_row_parts(patch_size, parts))
  row_part = jnp.where(offset >= 0, bands[jnp.clip(offset, 0, patch_size - 1)], -1)
  cols = jnp.arange(w) >= w - patch_size
  return (row_part == part)[:, None] & cols[None, :]


def stamp_dba_part(x: jax.Array, part, *, parts: int = 4, trigger: str = "square",
                   patch_size: int = 4, value: float = 1.0) -> jax.Array:
  """Every image `[..., H, W, C]` stamped with local trigger `part` only: the global trigger's
  pixels (`data_poisoning.apply_trigger` with `trigger` ∈ DBA_TRIGGERS) on that part's rows of
  the corner, the rest of the image untouched."""
  if trigger not in DBA_TRIGGERS:
    raise ValueError(f"dba trigger={trigger!r} is not one of {', '.join(map(repr, DBA_TRIGGERS))}"
                     " (a blended trigger covers the whole image and has no parts).")
  h, w = x.shape[-3], x.shape[-2]
  full = data_poisoning.apply_trigger(x, trigger=trigger, patch_size=patch_size, value=value)
  mask = dba_part_mask(h, w, patch_size, parts, part)[:, :, None]
  return jnp.where(mask, full, x)


def dba(key: jax.Array, x: jax.Array, y: jax.Array, client, *, parts: int = 4,
        target_label: int = 0, fraction: float = 0.5, patch_size: int = 4, value: float = 1.0,
        trigger: str = "square"):
  """DBA's data part for the client of index `client` (an int32 scalar, 0 … n − 1, the client's
  row among the n; `Attack.indexed`): each example is, with probability `fraction`, stamped with
  local trigger i mod `parts` (`stamp_dba_part`) and relabelled `target_label`.

  Xie et al. (ICLR 2020) give each of their attackers one of the local triggers of the global
  one and evaluate with the global trigger (every part; the registry's `trigger`): the model
  learns the parts separately and responds to their union. Their attackers are fixed
  (attacker j holds part j); here the Byzantine set is random per draw, so the part is the
  client's index mod `parts`: two Byzantine clients may share a part and a part may have no
  client in a draw (then the global trigger is only partly trained). The paper's further
  options (scaling the update, the attack rounds, the gaps between parts) are left out: scaling
  is model replacement's, rounds the simulator's, gaps no room on an 8×8 digit."""
  if not 0 <= fraction <= 1:
    raise ValueError(f"dba fraction must lie in [0, 1], got {fraction}.")
  part = jnp.asarray(client, jnp.int32) % parts
  stamped = stamp_dba_part(x, part, parts=parts, trigger=trigger, patch_size=patch_size,
                           value=value)
  return data_poisoning.poison_fraction(key, x, y, stamped, target_label, fraction)


# ----------------------------------------------------------------------------------- edge case
EDGE_STYLES = ("mirror", "upside_down")


def edge_style(x: jax.Array, style: str = "mirror") -> jax.Array:
  """The edge-case style of every image `[..., H, W, C]`: "mirror" flips it left-right (the W
  axis), "upside_down" top-bottom (the H axis). A fixed transform that honest data lacks."""
  if style == "mirror":
    return jnp.flip(x, axis=-2)
  if style == "upside_down":
    return jnp.flip(x, axis=-3)
  raise ValueError(f"edge_case style={style!r} is not one of "
                   f"{', '.join(map(repr, EDGE_STYLES))}.")


def edge_case(key: jax.Array, x: jax.Array, y: jax.Array, *, source_label: int = 7,
              target_label: int = 1, fraction: float = 0.5, style: str = "mirror"):
  """The edge-case backdoor's data part: each example of class `source_label` is, with
  probability `fraction`, replaced by its `edge_style` and relabelled `target_label`; every
  other example (of another class, or not drawn) is left as it is.

  Wang et al. (NeurIPS 2020) poison with inputs from the tail of the source class's
  distribution (ARDIS sevens labelled "1" against MNIST; Southwest airplanes labelled "truck"
  against CIFAR-10), which honest clients rarely hold, so honest updates hardly push back. No
  tail data set ships offline; the tail here is a fixed transform of the source class that the
  honest data lacks (a mirrored 7 by default; defaults 7 → 1 as in the paper's ARDIS task).
  The success rate is measured on test inputs of the source class, transformed
  (`Attack.source_label`). The Bernoulli draw is over every example and only the source class's
  are poisoned: a Byzantine client without source-class examples (non-IID data) poisons
  nothing, and its update is an honest one — a property of the draw, not an error. The paper
  also mixes clean examples into the attacker's set and may add PGD or model replacement:
  here the clean share is 1 − fraction of the source class plus every other class."""
  if not 0 <= fraction <= 1:
    raise ValueError(f"edge_case fraction must lie in [0, 1], got {fraction}.")
  if source_label == target_label:
    raise ValueError(f"edge_case source_label={source_label} equals target_label="
                     f"{target_label}: the backdoor would relabel a class to itself.")
  return data_poisoning.poison_fraction(key, x, y, edge_style(x, style), target_label,
                                        fraction, eligible=y == source_label)


# ---------------------------------------------------------------------------------- Neurotoxin
NEUROTOXIN_ESTIMATES = ("previous", "current")


class NeurotoxinState(NamedTuple):
  previous: jax.Array  # [d] the previous round's honest mean update (zeros before round one)
  rounds: jax.Array    # int32 rounds seen


def neurotoxin_init(d: int) -> NeurotoxinState:
  return NeurotoxinState(jnp.zeros((d,), jnp.float32), jnp.array(0, jnp.int32))


def neurotoxin_kept(d: int, top_k_ratio: float) -> int:
  """How many coordinates the attacker keeps: ⌊d·(1 − top_k_ratio)⌋, the authors' code's
  `int(len(grad) * ratio)` with their `ratio` (gradmask_ratio, the share kept) = 1 − top_k_ratio
  (their CIFAR-10 runs: ratio 0.99, i.e. top_k_ratio 0.01)."""
  return int(d * (1 - top_k_ratio))


def neurotoxin_mask(benign: jax.Array, top_k_ratio: float) -> jax.Array:
  """bool `[d]`: the coordinates the attacker may write, the `neurotoxin_kept` ones of smallest
  |benign| (the complement of the top-`top_k_ratio` share, those the honest clients update most).

  Ties are broken by index: coordinates are ordered by |benign| ascending with a stable sort, so
  among equal |benign| the lower index is kept first (the authors' torch.topk leaves the order
  of ties unspecified). A non-finite benign coordinate (NaN or ±inf: an honest row that carried
  one) counts as +inf, the largest: it is never kept, and no NaN reaches the mask's ordering.
  Cost: one sort of d values."""
  d = benign.shape[0]
  kept = neurotoxin_kept(d, top_k_ratio)
  score = jnp.where(jnp.isfinite(benign), jnp.abs(benign), jnp.inf)
  order = jnp.argsort(score, stable=True)
  return jnp.zeros((d,), bool).at[order[:kept]].set(True)


def _honest_mean(updates: jax.Array, byzantine_mask: jax.Array) -> jax.Array:
  """The honest rows' mean `[d]` (zeros with no honest row), summed with `where` so that a
  Byzantine row's NaN or inf never enters it (a matrix product would give 0·NaN = NaN)."""
  honest = ~byzantine_mask
  count = jnp.sum(honest)
  total = jnp.sum(jnp.where(honest[:, None], updates, 0), axis=0)
  return jnp.where(count > 0, total / jnp.maximum(count, 1), 0).astype(updates.dtype)


def neurotoxin(updates: jax.Array, byzantine_mask: jax.Array, state: NeurotoxinState, *,
               top_k_ratio: float = 0.01, norm_bound: float = math.nan,
               estimate: str = "previous") -> tuple[jax.Array, NeurotoxinState]:
  """Neurotoxin's update part: each Byzantine row u_i (its own update, trained on backdoored
  data: the registry pairs this with `data_poisoning.backdoor`) becomes

    u_i' = Π_B(m ⊙ u_i),   m = `neurotoxin_mask`(g, top_k_ratio),

  zero on the top-`top_k_ratio` share of coordinates by |g| (those the honest clients update
  most, which they would soon overwrite), and Π_B the projection onto the L2 ball of radius
  `norm_bound` (u ↦ u·min(1, R/‖u‖); NaN: none), the authors' clip (divide by max(1, ‖u‖/R)).

  The benign update g: the paper's attacker takes the previous round's global update (the
  authors' code a gradient on clean data at the round's model). Here the attack state carries
  the previous round's honest mean; `estimate` = "previous" (default) uses it, except at the
  first round, whose state is the initial zeros (which would tie every coordinate), where it
  uses the current round's honest mean; "current" always uses the current honest mean (an
  omniscient attacker's best estimate). The state advances every round (b = 0 included).

  Where this differs from the paper: the paper masks every local gradient step (and, with PGD,
  projects the local model onto the norm ball at every step), so the attacker's local model
  moves on the kept coordinates only throughout its local training; here the mask and the
  projection act once, on the final update, whose kept coordinates were trained while the
  others moved. The support and the norm bound are the paper's; the values differ.

  Honest rows are never modified; with b = 0 nothing changes. NaN/±inf in honest rows: the
  coordinate's estimate is non-finite, counted as +inf (never kept; `neurotoxin_mask`); a
  Byzantine row's own non-finite entries outside the mask are zeroed (`where`, not a product),
  inside it they stay. Cost: O(nd) for the mean and masking plus one sort of d values.
  """
  if not 0 <= top_k_ratio < 1:
    raise ValueError(f"neurotoxin top_k_ratio must lie in [0, 1), got {top_k_ratio}.")
  if estimate not in NEUROTOXIN_ESTIMATES:
    raise ValueError(f"neurotoxin estimate={estimate!r} is not one of "
                     f"{', '.join(map(repr, NEUROTOXIN_ESTIMATES))}.")
  if not (math.isnan(norm_bound) or norm_bound > 0):
    raise ValueError(f"neurotoxin norm_bound must be > 0 or nan (none), got {norm_bound}.")
  current = _honest_mean(updates, byzantine_mask)
  if estimate == "previous":
    benign = jnp.where(state.rounds > 0, state.previous.astype(updates.dtype), current)
  else:
    benign = current
  keep = neurotoxin_mask(benign, top_k_ratio)
  rows = jnp.where(keep[None, :], updates, 0)
  if not math.isnan(norm_bound):
    norms = jnp.linalg.norm(rows, axis=1, keepdims=True)
    bound = jnp.asarray(norm_bound, updates.dtype)
    rows = rows / jnp.maximum(1, norms / bound)
  out = jnp.where(byzantine_mask[:, None], rows, updates)
  return out, NeurotoxinState(current.astype(state.previous.dtype), state.rounds + 1)
