"""Backdoor defences of the backdoor-FL benchmarks (FLPoison, BackFed, FedMLSecurity): FoolsGold,
the robust learning rate (RobustLR) and weak differential privacy (norm clipping plus noise).

Each comes as `*_with_share`, the form the registry runs, returning the aggregate with one
diagnostic (`Filtered.kept_share`, `Flipped.flipped_share`, `clipping.Clipped.clipped_share`),
and as a plain function returning the aggregate alone.

Shared conventions (clustering.py's; each docstring says where a rule departs from them):
- A row with a NaN or ±inf entry ("non-finite") has no direction and no sign: it is never
  averaged in, and it never enters a similarity or a vote (each rule says what it counts as).
- Rows with huge finite entries (1e30, 1e36) are handled without overflow: norms, cosines and
  weighted sums are computed on rows scaled by an exact power of two (`clustering._with_rows`,
  one dot pass and no copy when every ‖x_i‖² is ordinary).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fedjax_robust.aggregators import base
from fedjax_robust.aggregators import clipping
# The overflow-free row preparation the clustering defences share (one module's private helper,
# reused here rather than copied).
from fedjax_robust.aggregators.clustering import _Rows  # pylint: disable=protected-access
from fedjax_robust.aggregators.clustering import _with_rows  # pylint: disable=protected-access
from fedjax_robust.aggregators.clustering import Filtered

Array = jax.Array

# FoolsGold's value for a rescaled weight of exactly 1 before the logit (the authors' code:
# `wv[(wv == 1)] = .99`), which keeps the logit finite.
FOOLSGOLD_TOP = 0.99


# ---------------------------------------------------------------------------------------------
# FoolsGold


class FoolsGoldState(NamedTuple):
  """FoolsGold's state: every client's history H_i = Σ_t x_i^t (row i is client i every round).
  Built with 0 rows (`foolsgold_init` without `clients`), it is sized by the first call."""
  history: jax.Array  # [n, d] (or [0, d] before the first call)


def foolsgold_init(d: int, dtype=jnp.float32, *, clients: int | None = None,
                   num_clients: int | None = None) -> FoolsGoldState:
  """Zero histories for `clients` clients (else the pipeline's `num_clients`, which the simulator
  gives), `[clients, d]`; with neither an unsized state `[0, d]` that the first call replaces by
  `[n, d]` (enough for one call, or a Python loop; a `lax.scan` over rounds needs the sized
  state, since its carry keeps one shape)."""
  clients = num_clients if clients is None else clients
  if clients is not None and (not isinstance(clients, int) or isinstance(clients, bool)
                              or clients < 1):
    raise ValueError(f"foolsgold: clients must be an int >= 1 (the number of client rows), got "
                     f"{clients!r}.")
  return FoolsGoldState(jnp.zeros((clients or 0, d), dtype))


def _foolsgold_weights(rows: _Rows, kappa: float) -> Array:
  """FoolsGold's α `[n]` in [0, 1] from the histories (prepared by `_with_rows`)."""
  n = rows.y.shape[0]
  nonzero = rows.ynorm > 0
  unit = rows.y / jnp.where(nonzero, rows.ynorm, 1.0)[:, None]   # û_i = H_i/‖H_i‖ (0 for 0)
  gram = unit @ unit.T
  diagonal = jnp.diagonal(gram)
  # cos = 1 − ‖û_i − û_j‖²/2: exactly 1 for bitwise-equal directions (see `foolsgold`).
  cosine = 1.0 - 0.5 * (diagonal[:, None] + diagonal[None, :] - 2.0 * gram)
  valid = rows.finite & nonzero                                # a zero history: cosine 0
  pair = valid[:, None] & valid[None, :] & ~jnp.eye(n, dtype=bool)
  cs = jnp.where(pair, jnp.clip(cosine, -1.0, 1.0), 0.0)      # diagonal 0, as cs − I
  v = jnp.max(cs, axis=1)                                      # ≥ 0 (the diagonal's 0)
  pardon = v[:, None] < v[None, :]                             # then v_j > v_i ≥ 0
  cs = jnp.where(pardon, cs * v[:, None] / jnp.where(pardon, v[None, :], 1.0), cs)
  alpha = jnp.where(rows.finite, jnp.clip(1.0 - jnp.max(cs, axis=1), 0.0, 1.0), 0.0)
  top = jnp.max(alpha)
  alpha = jnp.where(top > 0, alpha / jnp.where(top > 0, top, 1.0), 0.0)
  alpha = jnp.where(alpha == 1.0, FOOLSGOLD_TOP, alpha)
  logit = kappa * (jnp.log(alpha / (1.0 - alpha)) + 0.5)       # α = 0: −inf
  return jnp.clip(logit, 0.0, 1.0)


def foolsgold_with_share(updates: Array, *, state: FoolsGoldState, kappa: float = 1.0,
                         clients: int | None = None) -> tuple[Filtered, FoolsGoldState]:
  """`foolsgold` and the share of rows with a positive weight: `(Filtered, new_state)`.
  Secure aggregation: no (see `foolsgold`)."""
  n, d = base.check_updates(updates, "foolsgold")
  if not (isinstance(kappa, (int, float)) and 0 < kappa < math.inf):
    raise ValueError(f"foolsgold: kappa must be a finite float > 0, got {kappa!r}.")
  if clients is not None and clients != n:
    raise ValueError(f"foolsgold: clients={clients} but the updates have n={n} rows; clients "
                     "must be the number of rows (one per client, every round).")
  history = state.history
  if history.shape[0] == 0:
    history = jnp.zeros((n, d), updates.dtype)
  elif history.shape != (n, d):
    raise ValueError(f"foolsgold: the state holds histories of shape {tuple(history.shape)} but "
                     f"the updates are [{n}, {d}]; build it with foolsgold_init(d, "
                     f"clients={n}).")
  finite = base.finite_rows(updates)
  history = history + jnp.where(finite[:, None], updates, jnp.zeros((), updates.dtype)).astype(
      history.dtype)
  alpha = _with_rows(history, lambda rows: _foolsgold_weights(rows, kappa))
  weights = jnp.where(finite, alpha, 0.0).astype(updates.dtype)

  def average(rows: _Rows, weights):
    # Σ α_i x_i / n = Σ (α_i / (n s_i)) y_i: each term and the sum stay within max |x_ij|.
    return (weights / (n * rows.scale)) @ rows.y

  value = _with_rows(updates, average, weights)
  return (Filtered(value, jnp.mean((weights > 0).astype(jnp.float32))),
          FoolsGoldState(history))


def foolsgold(updates: Array, *, state: FoolsGoldState, kappa: float = 1.0,
              clients: int | None = None) -> tuple[Array, FoolsGoldState]:
  """FoolsGold (Fung, Yoon, Beschastnikh, "The limitations of federated learning in sybil
  settings", RAID 2020; the authors' code github.com/DistributedML/FoolsGold).

  With H_i = Σ_{t' ≤ t} x_i^{t'} each client's history (this round's update included):
    cs_ij = cos(H_i, H_j) for j ≠ i,  cs_ii = 0
    v_i = max_j cs_ij
    pardoning: cs_ij ← cs_ij · v_i / v_j where v_i < v_j (j ≠ i)
    α_i = clip(1 − max_j cs_ij, 0, 1)
    α_i ← α_i / max_k α_k,  then α_i ← 0.99 where α_i = 1
    α_i ← clip(κ (ln(α_i / (1 − α_i)) + 0.5), 0, 1)          (α_i = 0 gives 0)
    output = (1/n) Σ_i α_i x_i^t
  with κ = `kappa` (the paper's confidence; 1 in the paper and the code). Returns
  `(aggregate, new_state)`; the state (`foolsgold_init`) holds the n histories, row i for
  client i every round (`per_client_state` in the registry: refused where the rows are not the
  same clients every round). `clients` is the number of rows n, which sizes the state for a
  training loop; None lets the first call size it.

  Cosines are computed as 1 − ‖û_i − û_j‖²/2 from the Gram matrix of the unit histories
  û_i = H_i/‖H_i‖ (equal to cos(H_i, H_j) in exact arithmetic, within ~1e-6 of it in float32):
  histories with the same direction bit for bit (sybils sending identical updates) then have
  cosine exactly 1 and α exactly 0. The plain ratio H_i·H_j/(‖H_i‖‖H_j‖) rounds to 1 − 6e-8
  there, and where every history is alike the rescaling by max_k α_k would turn that rounding
  into weights near 1 (the authors' float64 code has the same hazard, and divides 0 by 0 when
  the α are exactly 0).

  The diagonal 0 is the authors' `cs − I` on a cosine matrix with ones on its diagonal: it makes
  v_i ≥ 0 and α_i ≤ 1 (a client whose history is at more than 90° from every other's gets
  α_i = 1). A zero history has cosine 0 with every row (sklearn's `cosine_similarity` and
  torch's with its eps give the same), so α_i = 1 for it too. Sybils sending the same updates
  have cosine 1, hence α = 0 and weight 0; a diverse honest set keeps weights near 1.

  Choices where the published codes differ:
  - Normalisation: (1/n) Σ α_i x_i, as the authors' deep-learning code (`deep-fg/fg/trainer.py`,
    the weighted sum of the layers' gradients divided by the number of clients), so all α_i = 1
    gives the mean. The authors' earlier code (`ML/code/logistic_aggregator.py`) and the
    paper's Algorithm 1 return Σ α_i x_i (n times larger); FLPoison returns Σ α_i x_i too,
    after scaling every update to norm ≤ 1 (in the history and in the sum); BackFed divides by
    Σ α_i (+1e-10) and scales by its server rate η = 0.1, and adds unit-normalised updates to
    the history.
  - The logit as the paper writes it: ln(α/(1 − α)); the authors' later code takes
    ln(α/(1 − α) + 1e-5) (FLPoison: + 1e-6), which moves no weight by more than ~1e-5/α.
  - Similarities on the whole update (all d coordinates), as in the paper's base algorithm and
    BackFed. Left out: the paper's optional importance weighting of the output layer's
    features (and FLPoison's top-k mask of the output layer, the deep-learning code's history
    of the output layer alone): the rule sees a flat update without its layers.
  Non-finite rows: not added to the history (it stays what it was), weight 0 this round; the
  client's history still takes part in the similarities (a sybil sending NaN one round stays
  similar to its partners). A history that overflows (only rows near the float maximum can do
  that) has no direction: that client gets weight 0 and is left out of the other clients'
  similarities from then on. Every α_i = 0 (every history identical up to scale, or none
  finite): the zero vector. Huge rows: cosines and the weighted sum are computed on scaled rows
  (no overflow), and a huge row with α_i > 0 moves the output as its weight says (FoolsGold
  bounds no magnitude).
  Cost: the history update (one pass over `[n, d]`), one Gram product of the histories, O(n²)
  on `[n, n]`, one weighted sum; the state is `[n, d]`.
  Secure aggregation: no — it needs every client's history in the clear (the pairwise cosines).
  """
  out, new_state = foolsgold_with_share(updates, state=state, kappa=kappa, clients=clients)
  return out.value, new_state


# ---------------------------------------------------------------------------------------------
# Robust learning rate


class Flipped(NamedTuple):
  """RobustLR's output and how much of it the vote flipped."""
  value: jax.Array          # [d]
  flipped_share: jax.Array  # float32 scalar in [0, 1]: share of coordinates with rate −1


def _robust_lr_threshold(threshold, f: int, n: int) -> int:
  theta = f + 1 if threshold is None else threshold
  if not isinstance(theta, int) or isinstance(theta, bool) or theta < 1:
    raise ValueError(f"robust_lr: threshold must be an int >= 1 (or None for f + 1), got "
                     f"{threshold!r}.")
  if theta > n:
    raise ValueError(f"robust_lr: threshold={theta} exceeds the n={n} votes: every coordinate "
                     f"would be flipped; allowed: 1 <= threshold <= n (None: f + 1 = {f + 1}).")
  return theta


def robust_lr_with_share(updates: Array, *, f: int, threshold: int | None = None,
                         weights: Array | None = None) -> Flipped:
  """`robust_lr` and the share of coordinates it flipped (`Flipped`). Secure aggregation: no
  (see `robust_lr`)."""
  n, _ = base.check_updates(updates, "robust_lr", f=f)
  theta = _robust_lr_threshold(threshold, f, n)
  w = jnp.ones((n,), updates.dtype) if weights is None else weights.astype(updates.dtype)

  def body(rows: _Rows, w):
    # Non-finite rows are zeroed in rows.x: sign 0, no vote. Votes are exact small integers.
    votes = jnp.abs(jnp.ones((n,), rows.x.dtype) @ jnp.sign(rows.x))
    w = jnp.where(rows.finite, w, 0.0)
    total = jnp.sum(w)
    mean = ((w / jnp.where(total > 0, total, 1.0)) / rows.scale) @ rows.y
    mean = jnp.where(total > 0, mean, jnp.zeros_like(mean))
    flip = votes < theta
    return Flipped(jnp.where(flip, -mean, mean), jnp.mean(flip.astype(jnp.float32)))

  return _with_rows(updates, body, w)


def robust_lr(updates: Array, *, f: int, threshold: int | None = None,
              weights: Array | None = None) -> Array:
  """Robust learning rate (Ozdayi, Kantarcioglu, Gel, "Defending against backdoors in federated
  learning with robust learning rate", AAAI 2021; the authors' code
  github.com/TinfoilHat0/Defending-Against-Backdoors-with-Robust-Learning-Rate).

    s_j = |Σ_i sign(x_ij)|                                       (the sign vote, coordinate j)
    x̄ = Σ_i w_i x_i / Σ_i w_i                                    (the mean; w_i = 1 unweighted)
    output_j = x̄_j if s_j ≥ θ, else −x̄_j                         (the server rate flipped)
  with θ = `threshold` and sign(0) = 0 (torch.sign). Multiplying by the server's learning rate
  η afterwards (the simulator's server optimizer) gives the paper's per-coordinate rate ±η.

  θ: the paper sets it above the number of corrupt agents and at most the number of honest ones
  (its experiments: θ = 4 with 10 agents, one corrupt; BackFed's default is 4). Default here:
  θ = f + 1 for the declared f, the smallest threshold that f Byzantine clients agreeing on a
  coordinate cannot reach alone (on coordinates where the honest signs cancel, as on a
  backdoor's), and at most n − f whenever n > 2f. A larger θ flips more coordinates, honest
  ones included; θ > n is refused (every coordinate would flip).

  Choices: the vote is unweighted (one sign per client, as the paper); the mean takes the client
  weights if given (the authors' code weights it by the agents' data sizes; BackFed's is
  unweighted). Non-finite rows: left out of the vote (sign undefined for NaN; they abstain, as a
  sign 0 would) and of the mean (the mean of the m finite rows; BackFed's torch code would turn
  every coordinate NaN); no finite row (or zero total weight): the zero vector. Huge rows: the
  mean is not robust, and a huge row moves it (the rule only flips its signs); it is computed
  on scaled rows, so it does not overflow while its value is within the float range.
  Aux "flipped_share": the share of coordinates with rate −η.
  Cost: one pass for the signs (a matrix-vector product), one for the mean.
  Secure aggregation: no, as counted here (`registry.SECURE_AVERAGES`): the server sees each
  row (to leave out the non-finite ones). The paper notes that the rule needs only two sums,
  Σ_i sign(x_i) and Σ_i x_i, so clients could send both through secure aggregation (the sign
  sum reveals the vote margins); that variant is not counted.
  """
  return robust_lr_with_share(updates, f=f, threshold=threshold, weights=weights).value


# ---------------------------------------------------------------------------------------------
# Weak differential privacy


def weak_dp_with_share(updates: Array, *, key: Array, threshold: float = 2.0,
                       sigma: float = 0.025, weights: Array | None = None) -> clipping.Clipped:
  """`weak_dp` and the share of rows its clipping changed (`clipping.Clipped`, as static
  clipping reports it). Secure aggregation: no (see `weak_dp`)."""
  _, d = base.check_updates(updates, "weak_dp")
  if not 0 < threshold < math.inf:
    raise ValueError(f"weak_dp: threshold must be a finite float > 0, got {threshold!r}.")
  if not 0 <= sigma < math.inf:
    raise ValueError(f"weak_dp: sigma must be a finite float >= 0, got {sigma!r}.")
  clipped = clipping.static_clipping_mean_with_share(updates, threshold=threshold,
                                                     weights=weights)
  noise = jax.random.normal(key, (d,), updates.dtype) * jnp.asarray(sigma, updates.dtype)
  return clipping.Clipped(clipped.value + noise, clipped.clipped_share)


def weak_dp(updates: Array, *, key: Array, threshold: float = 2.0, sigma: float = 0.025,
            weights: Array | None = None) -> Array:
  """Weak differential privacy (Sun, Kairouz, Suresh, McMahan, "Can you really backdoor
  federated learning?", 2019): norm-difference clipping, the mean, then Gaussian noise,

    output = (1/n) Σ_i x_i · min(1, M/‖x_i‖) + N(0, σ² I),   M = `threshold`, σ = `sigma`,
  (weighted: Σ_i w_i clip_M(x_i) / Σ_i w_i) with the noise drawn from `key`. Norm-difference
  clipping alone is the existing spec "static_clipping+mean"; with σ = 0 this rule is exactly it
  (the same function computes the clipped mean, `clipping.static_clipping_mean_with_share`).

  Choices: σ = 0.025 by default, the paper's weak-DP level; M = 2.0, static clipping's default
  here (the paper studies several norm bounds; BackFed's default is 5.0). The noise is added to
  the aggregate update, as BackFed does (it then scales by its server rate η = 0.1); the paper
  adds it to the aggregated model, which is the same with the project's default server optimizer
  (SGD at rate 1), and σ times the server's rate otherwise. The noise is not calibrated to any
  (ε, δ): "weak" DP, as the paper calls it (client-level DP with an accountant is `privacy.py`).
  Non-finite rows: clipped to the zero vector and counted in n (as static clipping does); huge
  rows are clipped exactly to norm M. Aux "clipped_share": as static clipping reports it.
  Cost: two passes over `[n, d]` and d normal draws.
  Secure aggregation: no, as counted here: the server clips each row (clients could clip their
  own and send one secure average, with the server adding the noise; that variant is not
  counted, as for static clipping).
  """
  return weak_dp_with_share(updates, key=key, threshold=threshold, sigma=sigma,
                            weights=weights).value
