"""Differential privacy of the clients' data with robust aggregation (issue 18): client-level
(kind "client") and example-level, DP-SGD inside the local steps (kind "example").

Client-level DP: every client clips its update to L2 norm C and adds Gaussian noise
N(0, σ²C²·I) before sending it (`clip_and_noise`), so the attack sees the honest vectors already
privatized, as a real adversary would. This is the Gaussian mechanism in the local model: the
server (and any other party) sees each noised update, so the guarantee is the client's own and
does not rely on secure aggregation or a trusted server.

Its accounting (`epsilon`, `noise_for_epsilon`) is dp-accounting's (Google's maintained library):
replacing all of one client's data changes its clipped update by at most Δ = 2C in L2, so one
round is a Gaussian mechanism with noise multiplier σC/Δ = σ/2, composed over the rounds the
client takes part in. With client sampling the client's participation is visible to the server
in the local model, so no amplification by subsampling is claimed: the bound composes all T
rounds (an upper bound; a client sampled in fewer rounds has less privacy loss). The PLD
accountant (privacy loss distributions, tight for the Gaussian mechanism) is the default; RDP is
offered for comparison.

Example-level DP (kind "example", DP-SGD: Abadi et al., "Deep Learning with Differential
Privacy", CCS 2016) acts inside every local step of a client i with m_i examples: each example
joins the step's minibatch independently with probability q_i = min(1, B/m_i) (Poisson sampling,
`poisson_sample`), every example's gradient g_j is clipped to L2 norm C, and the step's gradient
is

    g̃ = (Σ_{j ∈ batch} g_j·min(1, C/‖g_j‖) + N(0, σ²C²·I)) / B                (`noisy_clipped_sum`)

B the expected batch size (for m_i ≤ B every example is in, q_i = 1, and the division is still
by the fixed B, so one example moves g̃ by at most C/B for every client). Under add/remove-one-
example adjacency a step is the Poisson-subsampled Gaussian mechanism with sensitivity C and
noise multiplier σ, and a client's T rounds of K local steps compose T·K of them
(`dp_sgd_epsilon`; q_i is public, fixed by m_i, as in every accounting with q = B/N). The model
and momentum between steps are post-processing. ε is per client and grows with q_i, so a run
reports the client with the fewest examples (the largest q, the largest ε); as for "client", a
client's participation in a round is visible, so client sampling claims no amplification and all
T rounds are composed. The guarantee is each honest client's about its own examples, against
everyone who sees what it sends (or its whole local trajectory).

Central DP (kind "central", user-level DP with a trusted server: McMahan, Ramage, Talwar, Zhang,
"Learning differentially private recurrent language models", ICLR 2018): the server clips every
update it receives to L2 norm C, runs the aggregation rule on the clipped updates and adds
Gaussian noise N(0, σ²Δ²·I) once to its output, Δ the rule's L2 sensitivity to one client under
the adjacency below, so σ is always the noise multiplier relative to Δ. A round is one Gaussian
mechanism of multiplier σ on the sampled clients (`central_event`). Who takes part decides the
accounting: every client in every round (sampling "none", replace-one adjacency) composes T
Gaussian mechanisms; m of the n clients uniformly without replacement ("fixed", replace-one: n is
public) is the subsampled Gaussian of Wang, Balle, Kasiviswanathan (AISTATS 2019), which only the
RDP accountant has; each client independently with probability q = m/n ("poisson",
add-or-remove-one adjacency) is the Poisson-subsampled Gaussian (Mironov, Talwar, Zhang 2019 for
RDP; Zhu, Dong, Wang, AISTATS 2022 for the PLD), valid for any query of L2 sensitivity Δ under
add/remove, robust aggregation rules included, not only sums. The amplification is claimed only
because the server keeps the sample secret: the guarantee is against everyone who sees the
released models, not against the server, which is trusted.

Distributed DP (kind "distributed"): clients are grouped for secure aggregation and each adds a
share of the noise, so that each group's sum carries the same Gaussian noise as the central
mechanism; the server sees only the noised sums. Its accounting is central's with sampling
"none": the server sees who takes part, so no amplification by sampling is claimed.

DP-FTRL (Kairouz, McMahan, Song, Thakkar, Thakurta, Xu, "Practical and private (deep) learning
without sampling or shuffling", ICML 2021): instead of fresh noise per round, the noise of the
prefix sums of the rounds' aggregates comes from an online binary tree (`tree_prefix_noise`,
`tree_round_noise`): node (l, j) covers rounds [j·2^l, (j+1)·2^l) and has its own N(0, std²·I),
and the prefix sum of rounds [0, p) carries the noise of the popcount(p) nodes of `tree_nodes(p)`
(no Honaker estimator). The tree restarts every R rounds. Everything released is a function of the
noised node sums, so a tree is one Gaussian mechanism whose sensitivity is that of all its nodes
together (`tree_sensitivity_factor`); trees compose (`tree_event`). No amplification by sampling
is claimed: a client's participation is taken as every round, the worst case.

Adaptive clipping (Andrew, Thakkar, McMahan, Ramaswamy, "Differentially private learning with
adaptive clipping", NeurIPS 2021, Algorithm 1): the clip follows a target quantile γ of the
update norms by the geometric step C ← C·exp(−η(b̃ − γ)), b̃ the noised fraction of clients whose
norm is at most C (`noisy_below_count`, `adaptive_clip_update`). The count is released too, so
its noise σ_b is paid for out of the budget: by their Theorem 1 the update's multiplier is raised
to z_Δ with 1/z² = 1/z_Δ² + (s_b/σ_b)², and the pair is one Gaussian mechanism of multiplier z
(`adaptive_update_multiplier`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from fedjax_robust.errors import ConfigError

KINDS = ("none", "client", "example", "central", "distributed")
ACCOUNTANTS = ("pld", "rdp")
# The noise multipliers the calibration searches, per kind (a target needing less noise is
# refused). DP-SGD's floor 0.3: TensorFlow Privacy's tutorials (tutorials/README.md) note that σ
# "generally has to be at least 0.3 to obtain rigorous privacy guarantees".
# Central and distributed DP: the same floor as DP-SGD's, for a Gaussian mechanism of multiplier σ
# per round (the PLD's grid at σ = 0.3 has about 5,600 points; `_calibrate` raises the floor where
# the composed mechanism's multiplier would be too small for the grid).
# DP-FTRL's tree ("tree"): the node noise of a tree whose client is in every round grows about
# linearly with the rounds per tree (`tree_sensitivity_factor`), so its range reaches higher.
SIGMA_RANGE = {"client": (1.0, 1e4), "example": (0.3, 1e4), "central": (0.3, 1e4),
               "distributed": (0.3, 1e4), "tree": (0.3, 1e8)}
# Who takes part in a round of central DP (training.client_sampling); "none" (everyone) is also
# accepted by the central functions.
CLIENT_SAMPLINGS = ("fixed", "poisson")
TREE_PARTICIPATIONS = ("every", "once")


def clip_and_noise(key: jax.Array, updates: jax.Array, *, clip: float,
                   noise_multiplier: float, coordinates: jax.Array | None = None) -> jax.Array:
  """Each row of `updates` `[n, d]` scaled to L2 norm at most `clip`, plus independent
  N(0, (noise_multiplier·clip)²) noise per coordinate. A non-finite row stays non-finite (it is
  not a client's honest update; the attack replaces Byzantine rows after this).

  `coordinates` (bool `[n, d]` or `[d]`): the coordinates a client sends (a data-independent
  sparsifier's, `compression`); the row is restricted to them before clipping, and only they
  get noise (the others stay 0). Restricting does not raise a row's norm, so the sensitivity
  and the guarantee are those of the full vector."""
  if coordinates is not None:
    updates = jnp.where(coordinates, updates, jnp.zeros((), updates.dtype))
  norms = jnp.sqrt(jnp.sum(updates * updates, axis=1, keepdims=True))
  scale = jnp.minimum(1.0, clip / jnp.maximum(norms, jnp.finfo(updates.dtype).tiny))
  noise = jax.random.normal(key, updates.shape, updates.dtype)
  if coordinates is not None:
    noise = jnp.where(coordinates, noise, jnp.zeros((), noise.dtype))
  return updates * scale + (noise_multiplier * clip) * noise


def poisson_sample(key: jax.Array, count: jax.Array, max_count: int, batch_size: int
                   ) -> jax.Array:
  """One DP-SGD minibatch of a client with `count` examples padded to `max_count`, `[max_count]`
  bool: position j < count is in independently with probability q = min(1, B/count), B =
  `batch_size`; padding (j ≥ count) never is."""
  q = jnp.minimum(1.0, batch_size / jnp.maximum(count, 1).astype(jnp.float32))
  real = jnp.arange(max_count) < count
  return real & (jax.random.uniform(key, (max_count,)) < q)


def noisy_clipped_sum(key: jax.Array, per_example_grads: jax.Array, included: jax.Array, *,
                      clip: float, noise_multiplier: float,
                      coordinates: jax.Array | None = None) -> jax.Array:
  """Σ_{j: included_j} g_j·min(1, C/‖g_j‖) + N(0, σ²C²·I): the rows g_j of `per_example_grads`
  `[m, d]` that `included` `[m]` selects, each clipped to L2 norm C = `clip`, summed, plus
  Gaussian noise of std σC per coordinate (σ = `noise_multiplier`), `[d]`. Excluded rows never
  enter, not even as 0·NaN. `coordinates` (bool `[d]`): the gradients restricted to these
  coordinates before clipping, and noise on them only (the others stay 0), as in
  `clip_and_noise`."""
  kept = jnp.where(included[:, None], per_example_grads, 0.0)
  if coordinates is not None:
    kept = jnp.where(coordinates, kept, 0.0)
  norms = jnp.sqrt(jnp.sum(kept * kept, axis=1))
  scale = jnp.minimum(1.0, clip / jnp.maximum(norms, jnp.finfo(kept.dtype).tiny))
  noise = jax.random.normal(key, kept.shape[1:], kept.dtype)
  if coordinates is not None:
    noise = jnp.where(coordinates, noise, 0.0)
  return scale @ kept + (noise_multiplier * clip) * noise


def dp_sgd_rate(batch_size: int, count: int) -> float:
  """q = min(1, B/m): DP-SGD's Poisson sampling rate for a client with m examples."""
  return min(1.0, batch_size / max(count, 1))


def _event(noise_multiplier: float, rounds: int):
  """`rounds` Gaussian mechanisms of sensitivity 2C and noise std σC (multiplier σ/2), as the one
  Gaussian mechanism they compose to exactly, multiplier σ/(2√T) (Dong, Roth, Su 2019:
  μ-GDP composes to √T·μ-GDP, and a Gaussian mechanism is exactly (Δ/std)-GDP): the same ε for
  both accountants as the T-fold composition, without the PLD's T-fold convolution."""
  from dp_accounting import dp_event  # pylint: disable=g-import-not-at-top
  return dp_event.GaussianDpEvent(noise_multiplier / (2.0 * rounds ** 0.5))


def dp_sgd_event(sampling_rate: float, noise_multiplier: float, steps: int):
  """`steps` DP-SGD steps of one client: the Poisson-subsampled Gaussian mechanism (rate q,
  sensitivity C, noise std σC: multiplier σ) composed `steps` = T·K times."""
  from dp_accounting import dp_event  # pylint: disable=g-import-not-at-top
  return dp_event.SelfComposedDpEvent(
      dp_event.PoissonSampledDpEvent(sampling_rate, dp_event.GaussianDpEvent(noise_multiplier)),
      steps)


def _accountant(kind: str, neighbours=None):
  """A fresh accountant of `kind`; `neighbours` a `dp_accounting.NeighboringRelation`, None for
  the library's default (add-or-remove-one, as every caller before central DP)."""
  extra = {} if neighbours is None else {"neighboring_relation": neighbours}
  if kind == "pld":
    from dp_accounting.pld import pld_privacy_accountant  # pylint: disable=g-import-not-at-top
    return pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-3, **extra)
  if kind == "rdp":
    from dp_accounting.rdp import rdp_privacy_accountant  # pylint: disable=g-import-not-at-top
    return rdp_privacy_accountant.RdpAccountant(**extra)
  raise ConfigError(f"privacy.accountant={kind!r} is not allowed: one of {ACCOUNTANTS}")


# The PLD accountant discretizes a Gaussian's privacy loss on a grid of step 1e-3 spanning about
# 1/(2m²) for noise multiplier m: past this many points (m < 0.005) it would need gigabytes
# (σ = 0.01 over 20 rounds asked for 3 GiB in one array), so such a σ is refused with the way out.
PLD_MAX_POINTS = 2e7
# The smallest Gaussian multiplier within that grid: 0.5/m²/1e-3 = PLD_MAX_POINTS.
_PLD_MIN_MULTIPLIER = math.sqrt(0.5 / 1e-3 / PLD_MAX_POINTS)


def _gaussian_multiplier(event) -> float:
  """The noise multiplier of the Gaussian inside `event` (composed or sampled)."""
  while not hasattr(event, "noise_multiplier"):
    event = event.event
  return float(event.noise_multiplier)


def _epsilon_of(event, delta: float, accountant: str, neighbours=None) -> float:
  m = _gaussian_multiplier(event)
  if accountant == "pld" and (m <= 0 or 0.5 / m ** 2 / 1e-3 > PLD_MAX_POINTS):
    raise ConfigError(
        f"privacy.noise_multiplier: the Gaussian's multiplier {m:.3g} (per round for kind "
        f"'client': σ/(2√T)) is too small for the PLD accountant (a grid of ≈ "
        f"{0.5 / max(m, 1e-30) ** 2 / 1e-3:.3g} points, at most {PLD_MAX_POINTS:.0e}); use "
        "privacy.accountant='rdp' (an upper bound) or more noise.")
  acc = _accountant(accountant, neighbours)
  acc.compose(event)
  return float(acc.get_epsilon(delta))


def _calibrate(event_of_sigma, kind: str, target_epsilon: float, delta: float,
               accountant: str, neighbours=None, pld_floor: bool = False) -> float:
  """The smallest σ in SIGMA_RANGE[kind] whose ε at `delta` is at most `target_epsilon`
  (dp-accounting's `calibrate_dp_mechanism`, bisection to a relative tolerance of 1e-4).

  `pld_floor`: with the PLD accountant, the search starts no lower than the σ whose event's
  Gaussian multiplier (linear in σ) is the grid's smallest, `_PLD_MIN_MULTIPLIER` (brentq
  evaluates the bracket's ends, and T rounds as one Gaussian of multiplier σ/√T would otherwise
  ask for gigabytes at the floor). For such a single `GaussianDpEvent` the PLD search is first
  bracketed around the RDP accountant's σ (instant for a Gaussian), [σ_rdp/2, 2σ_rdp], whose
  small-σ end is cheap for the grid; the whole range is searched if that does not bracket the
  target. A target outside the range raises dp-accounting's ValueError (the callers name the
  range)."""
  import dp_accounting  # pylint: disable=g-import-not-at-top
  from dp_accounting import dp_event  # pylint: disable=g-import-not-at-top
  low, high = SIGMA_RANGE[kind]
  calibrate = lambda lo, hi: float(dp_accounting.calibrate_dp_mechanism(
      lambda: _accountant(accountant, neighbours), event_of_sigma, target_epsilon, delta,
      dp_accounting.ExplicitBracketInterval(lo, hi), tol=1e-4 * max(1.0, target_epsilon)))
  if pld_floor and accountant == "pld":
    low = max(low, 1.01 * _PLD_MIN_MULTIPLIER / _gaussian_multiplier(event_of_sigma(1.0)))
    if isinstance(event_of_sigma(1.0), dp_event.GaussianDpEvent):
      try:
        guide = _calibrate(event_of_sigma, kind, target_epsilon, delta, "rdp", neighbours)
        return calibrate(max(low, guide / 2), min(high, 2 * guide))
      except ValueError:
        pass
  return calibrate(low, high)


def epsilon(noise_multiplier: float, rounds: int, delta: float, accountant: str = "pld"
            ) -> float:
  """ε at `delta` of one client's data after `rounds` rounds of `clip_and_noise` (module doc)."""
  return _epsilon_of(_event(noise_multiplier, rounds), delta, accountant)


def noise_for_epsilon(target_epsilon: float, rounds: int, delta: float,
                      accountant: str = "pld") -> float:
  """The smallest noise multiplier σ whose `epsilon` is at most `target_epsilon`."""
  return _calibrate(lambda s: _event(s, rounds), "client", target_epsilon, delta, accountant)


def dp_sgd_epsilon(sampling_rate: float, noise_multiplier: float, steps: int, delta: float,
                   accountant: str = "pld") -> float:
  """ε at `delta` of one example of a client sampled at rate q after `steps` DP-SGD steps
  (`dp_sgd_event`; add/remove-one-example adjacency)."""
  return _epsilon_of(dp_sgd_event(sampling_rate, noise_multiplier, steps), delta, accountant)


def dp_sgd_noise_for_epsilon(target_epsilon: float, sampling_rate: float, steps: int,
                             delta: float, accountant: str = "pld") -> float:
  """The smallest noise multiplier σ whose `dp_sgd_epsilon` is at most `target_epsilon`."""
  return _calibrate(lambda s: dp_sgd_event(sampling_rate, s, steps), "example", target_epsilon,
                    delta, accountant)


# ------------------------------------------------------------------------------- central DP
_CENTRAL_SAMPLINGS = ("none",) + CLIENT_SAMPLINGS


def _check_central(sampling: str, rounds: int, num_clients: int, clients_per_round: int
                   ) -> None:
  if sampling not in _CENTRAL_SAMPLINGS:
    raise ConfigError(f"training.client_sampling={sampling!r} is not allowed for central DP: one "
                      f"of {_CENTRAL_SAMPLINGS}")
  if int(rounds) < 1:
    raise ConfigError(f"training.num_rounds={rounds!r}: central DP needs at least 1 round")
  if sampling != "none" and not 1 <= int(clients_per_round) <= int(num_clients):
    raise ConfigError(
        f"training.clients_per_round={clients_per_round!r}: client sampling {sampling!r} needs "
        f"1 <= clients_per_round <= num_clients = {num_clients!r}")


def central_neighbours(sampling: str) -> str:
  """The adjacency of central DP's guarantee for a client `sampling`: "replace_one" (one
  client's data replaced; n public) for "none" and "fixed", "add_or_remove_one" for "poisson"
  (the amplification by Poisson sampling is stated under add/remove). Δ, the rule's sensitivity
  that σ multiplies, is measured under this adjacency."""
  _check_central(sampling, 1, 1, 1)
  return "add_or_remove_one" if sampling == "poisson" else "replace_one"


def _central_relation(sampling: str):
  """The `dp_accounting.NeighboringRelation` to build the accountant with. "fixed": REPLACE_ONE
  (the RDP accountant has the sampled-without-replacement Gaussian only there); "poisson":
  ADD_OR_REMOVE_ONE. "none" is replace-one adjacency too, but its event is a plain
  `GaussianDpEvent` whose multiplier is already relative to the replace-one sensitivity Δ, and
  dp-accounting's PLD reads a Gaussian under REPLACE_ONE as a record of norm ≤ Δ replaced, a shift
  of 2Δ (its RDP ignores the relation for a Gaussian): ADD_OR_REMOVE_ONE is the relation under
  which both read `GaussianDpEvent(m)` as a shift of exactly Δ = std/m."""
  import dp_accounting  # pylint: disable=g-import-not-at-top
  relation = dp_accounting.NeighboringRelation
  return relation.REPLACE_ONE if sampling == "fixed" else relation.ADD_OR_REMOVE_ONE


def central_event(noise_multiplier: float, rounds: int, *, sampling: str, num_clients: int,
                  clients_per_round: int):
  """T = `rounds` rounds of central DP: each the Gaussian mechanism of multiplier σ (std σΔ,
  sensitivity Δ) on the round's clients.

  - "none" (every client every round, replace-one): T Gaussians of multiplier σ are exactly one
    of multiplier σ/√T (Dong, Roth, Su 2019: μ-GDP composes to √T·μ-GDP, and a Gaussian
    mechanism of multiplier m is exactly 1/m-GDP), as in `_event`: one `GaussianDpEvent(σ/√T)`.
  - "fixed" (m = `clients_per_round` of n = `num_clients` uniformly without replacement,
    replace-one): `SelfComposedDpEvent(SampledWithoutReplacementDpEvent(n, m, Gaussian(σ)), T)`
    (Wang, Balle, Kasiviswanathan, AISTATS 2019, Theorem 27; RDP accountant only).
  - "poisson" (each client independently with probability q = m/n, add-or-remove-one):
    `SelfComposedDpEvent(PoissonSampledDpEvent(q, Gaussian(σ)), T)`: the sampled Gaussian
    mechanism (Mironov, Talwar, Zhang, "Rényi differential privacy of the sampled Gaussian
    mechanism", 2019; Zhu, Dong, Wang, "Optimal accounting of differential privacy via
    characteristic function", AISTATS 2022, for its PLD), whose analysis holds for any query of
    L2 sensitivity Δ under add/remove (the mixture bound uses only ‖f(D ∪ {x}) − f(D)‖ ≤ Δ), a
    robust aggregation rule included, not only a sum."""
  from dp_accounting import dp_event  # pylint: disable=g-import-not-at-top
  _check_central(sampling, rounds, num_clients, clients_per_round)
  if sampling == "none":
    return dp_event.GaussianDpEvent(noise_multiplier / rounds ** 0.5)
  gaussian = dp_event.GaussianDpEvent(noise_multiplier)
  if sampling == "fixed":
    sampled = dp_event.SampledWithoutReplacementDpEvent(int(num_clients), int(clients_per_round),
                                                        gaussian)
  else:
    sampled = dp_event.PoissonSampledDpEvent(clients_per_round / num_clients, gaussian)
  return dp_event.SelfComposedDpEvent(sampled, int(rounds))


def _check_central_accountant(sampling: str, accountant: str) -> None:
  if accountant not in ACCOUNTANTS:
    raise ConfigError(f"privacy.accountant={accountant!r} is not allowed: one of {ACCOUNTANTS}")
  if sampling == "fixed" and accountant == "pld":
    raise ConfigError(
        "privacy.accountant='pld' cannot account training.client_sampling='fixed' (sampling "
        "without replacement: dp-accounting's PLD has no such event); use "
        "privacy.accountant='rdp' or training.client_sampling='poisson'")


def central_epsilon(noise_multiplier: float, rounds: int, delta: float, *, sampling: str,
                    num_clients: int, clients_per_round: int, accountant: str = "pld") -> float:
  """ε at `delta` of one client's data after `rounds` rounds of central DP (`central_event`,
  the accountant built with `_central_relation(sampling)`). Kind "distributed" is this with
  sampling "none"."""
  _check_central_accountant(sampling, accountant)
  event = central_event(noise_multiplier, rounds, sampling=sampling, num_clients=num_clients,
                        clients_per_round=clients_per_round)
  return _epsilon_of(event, delta, accountant, _central_relation(sampling))


def central_noise_for_epsilon(target_epsilon: float, rounds: int, delta: float, *,
                              sampling: str, num_clients: int, clients_per_round: int,
                              accountant: str = "pld") -> float:
  """The smallest noise multiplier σ in SIGMA_RANGE["central"] whose `central_epsilon` is at
  most `target_epsilon`."""
  _check_central_accountant(sampling, accountant)
  _check_central(sampling, rounds, num_clients, clients_per_round)
  event_of = lambda s: central_event(s, rounds, sampling=sampling, num_clients=num_clients,
                                     clients_per_round=clients_per_round)
  return _calibrate(event_of, "central", target_epsilon, delta, accountant,
                    _central_relation(sampling), pld_floor=True)


# ------------------------------------------------------------- DP-FTRL's tree aggregation
def tree_nodes(prefix: int) -> list[tuple[int, int]]:
  """The nodes (level l, index j) of the binary tree whose sums add up to the prefix sum of
  leaves [0, `prefix`): one per set bit l of the prefix, node (l, (prefix >> l) − 1), which covers
  leaves [j·2^l, (j+1)·2^l) (Kairouz et al. 2021, §3; Dwork, Naor, Pitassi, Rothblum 2010). In
  increasing level, so the intervals run from the prefix's end towards 0."""
  prefix = int(prefix)
  if prefix < 0:
    raise ValueError(f"prefix={prefix}: at least 0")
  return [(l, (prefix >> l) - 1) for l in range(prefix.bit_length()) if (prefix >> l) & 1]


def tree_levels(rounds_per_tree: int) -> int:
  """ceil(log2(R + 1)) = the bit length of R: the levels a tree needs for prefixes up to R."""
  return int(rounds_per_tree).bit_length()


def tree_prefix_noise(key: jax.Array, prefix: jax.Array, shape, std: float, levels: int
                      ) -> jax.Array:
  """The tree's noise on the prefix sum of leaves [0, `prefix`): Σ over levels l < `levels`
  with bit l of `prefix` set of std·z_{l,j}, j = (prefix >> l) − 1, z_{l,j} ~ N(0, I) drawn
  from fold_in(fold_in(key, l), j) (so every prefix sees the same node noise); 0 for prefix 0.
  Variance popcount(prefix)·std² per coordinate. `prefix` may be traced (int32); `levels` is
  static and must cover it (prefix < 2^levels)."""
  prefix = jnp.asarray(prefix, jnp.int32)
  total = jnp.zeros(shape, jnp.result_type(float))
  for level in range(int(levels)):
    high = jnp.right_shift(prefix, level)
    node = jax.random.fold_in(jax.random.fold_in(key, level), jnp.maximum(high - 1, 0))
    draw = jax.random.normal(node, shape, total.dtype)
    total = total + jnp.where((high & 1) == 1, draw, jnp.zeros((), total.dtype))
  return std * total


def tree_round_noise(key: jax.Array, round_in_tree: jax.Array, shape, std: float, levels: int
                     ) -> jax.Array:
  """The noise for round r's aggregate: tree_prefix_noise(r + 1) − tree_prefix_noise(r), so that
  the noised aggregates of rounds 0..r sum to the true prefix sum plus exactly the tree's noise
  of prefix r + 1 (variance popcount(r + 1)·std² per coordinate): DP-FTRL's model after round r
  is a function of the tree's released node sums only."""
  r = jnp.asarray(round_in_tree, jnp.int32)
  return (tree_prefix_noise(key, r + 1, shape, std, levels)
          - tree_prefix_noise(key, r, shape, std, levels))


def tree_sensitivity_factor(rounds_per_tree: int, participation: str) -> float:
  """The L2 sensitivity of all the node sums a tree over R = `rounds_per_tree` leaves releases,
  in units of the per-round sensitivity Δ. Released are the nodes (l, j) with (j+1)·2^l ≤ R
  (those some prefix ≤ R uses); a node sums 2^l rounds.

  - "every" (the client in every round): each of the floor(R/2^l) nodes of level l moves by up
    to 2^l·Δ: factor = sqrt(Σ_l floor(R/2^l)·4^l).
  - "once" (the client in one round, the worst leaf): the moved nodes are those containing the
    leaf, each by Δ: factor = sqrt(max over leaves t < R of #{released nodes ∋ t}), which is
    leaf 0's count, one node per level l with 2^l ≤ R: sqrt(bit_length(R)) (Kairouz et al. 2021,
    Appendix D; dp-accounting's `SingleEpochTreeAggregationDpEvent` depth ceil(log2(R + 1)))."""
  r = int(rounds_per_tree)
  if r < 1:
    raise ConfigError(f"privacy.tree_restart: a tree needs at least 1 round, got {r}")
  if participation == "every":
    return math.sqrt(sum((r >> l) * 4 ** l for l in range(r.bit_length())))
  if participation == "once":
    return math.sqrt(r.bit_length())
  raise ConfigError(f"participation={participation!r} is not allowed: one of "
                    f"{TREE_PARTICIPATIONS}")


def _tree_sizes(rounds: int, restart_every: int) -> list[int]:
  rounds, every = int(rounds), int(restart_every)
  if rounds < 1:
    raise ConfigError(f"training.num_rounds={rounds!r}: DP-FTRL needs at least 1 round")
  if every < 0:
    raise ConfigError(f"privacy.tree_restart={restart_every!r}: 0 (one tree) or a positive "
                      "number of rounds")
  every = every or rounds
  return [every] * (rounds // every) + ([rounds % every] if rounds % every else [])


def tree_event(noise_multiplier: float, rounds: int, restart_every: int,
               participation: str = "every"):
  """T = `rounds` rounds of DP-FTRL with node noise std σΔ, the tree restarted every R =
  `restart_every` rounds (0: one tree of T): ⌈T/R⌉ trees (the last may be shorter), tree k one
  Gaussian mechanism of multiplier σ/factor(R_k) (`tree_sensitivity_factor`). Gaussians compose
  exactly in GDP (μ_k = factor(R_k)/σ, μ = sqrt(Σ_k μ_k²); Dong, Roth, Su 2019): one
  `GaussianDpEvent` of multiplier (Σ_k factor(R_k)²/σ²)^{-1/2}. No amplification by sampling is
  claimed; `participation` "every" (the default, the worst case) or "once" per tree."""
  from dp_accounting import dp_event  # pylint: disable=g-import-not-at-top
  total = sum(tree_sensitivity_factor(r, participation) ** 2
              for r in _tree_sizes(rounds, restart_every))
  return dp_event.GaussianDpEvent(noise_multiplier / math.sqrt(total))


def tree_epsilon(noise_multiplier: float, rounds: int, delta: float, restart_every: int,
                 accountant: str = "pld") -> float:
  """ε at `delta` of one client's data after `rounds` rounds of DP-FTRL (`tree_event`, the
  client taken to be in every round)."""
  return _epsilon_of(tree_event(noise_multiplier, rounds, restart_every), delta, accountant)


def tree_noise_for_epsilon(target_epsilon: float, rounds: int, delta: float, restart_every: int,
                           accountant: str = "pld") -> float:
  """The smallest node noise multiplier σ in SIGMA_RANGE["tree"] whose `tree_epsilon` is at most
  `target_epsilon`."""
  _tree_sizes(rounds, restart_every)
  return _calibrate(lambda s: tree_event(s, rounds, restart_every), "tree", target_epsilon,
                    delta, accountant, pld_floor=True)


# ------------------------------------------------------------------------- adaptive clipping
def noisy_below_count(key: jax.Array, norms: jax.Array, clip: jax.Array, count_noise: float,
                      weights: jax.Array | None = None) -> jax.Array:
  """Σ_i w_i·1[norm_i ≤ C] + σ_b·N(0, 1) (Andrew et al. 2021, Algorithm 1's b_i summed and
  noised): `norms` `[n]`, C = `clip`, σ_b = `count_noise`, w = `weights` (a 0/1 mask of who takes
  part; None: all). A non-finite norm counts as above the clip."""
  norms = jnp.asarray(norms)
  dtype = jnp.result_type(norms.dtype, jnp.float32)
  below = jnp.isfinite(norms) & (norms <= clip)
  w = jnp.ones(norms.shape, dtype) if weights is None else jnp.asarray(weights, dtype)
  count = jnp.sum(jnp.where(below, w, jnp.zeros((), dtype)))
  return count + count_noise * jax.random.normal(key, (), dtype)


def adaptive_clip_update(clip: jax.Array, noisy_count: jax.Array, num: jax.Array,
                         target_quantile: float, lr: float) -> jax.Array:
  """Andrew et al. 2021's geometric update, C ← C·exp(−η_C·(b̃ − γ)), b̃ = `noisy_count`/`num`
  the noised fraction of norms at most C, γ = `target_quantile`, η_C = `lr`: C shrinks while more
  than a γ share is below it and grows otherwise, a stochastic gradient step on log C of the
  pinball loss, whose fixed point is the γ-quantile."""
  return clip * jnp.exp(-lr * (noisy_count / num - target_quantile))


def adaptive_update_multiplier(noise_multiplier: float, count_noise: float,
                               count_sensitivity: float) -> float:
  """The update's noise multiplier z_Δ when the clipped count is released too (Andrew et al.
  2021, Theorem 1): z_Δ = (z^{-2} − (s_b/σ_b)²)^{-1/2}, so that the pair (update of
  sensitivity Δ with std z_Δ·Δ, count of sensitivity s_b with std σ_b) is one Gaussian mechanism
  of multiplier z = `noise_multiplier` (1/z² = 1/z_Δ² + (s_b/σ_b)², the pair's squared
  sensitivity over its variance). s_b = `count_sensitivity`: Andrew et al. count centered bits
  b − 1/2 under add/remove-one, s_b = 1/2; under replace-one the count moves by at most 1,
  s_b = 1. σ_b = `count_noise` must exceed s_b·z."""
  z, sb, count_noise = float(noise_multiplier), float(count_sensitivity), float(count_noise)
  if z <= 0:
    raise ConfigError(f"privacy.noise_multiplier={noise_multiplier!r}: adaptive clipping needs "
                      "a positive noise multiplier")
  if sb <= 0:
    raise ConfigError(f"count_sensitivity={count_sensitivity!r}: positive (1/2 or 1)")
  left = z ** -2 - (sb / count_noise) ** 2 if count_noise > 0 else -1.0
  if left <= 0:
    raise ConfigError(
        f"privacy.count_noise={count_noise!r} is too small for noise multiplier {z:g}: the "
        f"count alone would spend the budget; allowed: more than s_b·z = {sb * z:.6g}")
  return left ** -0.5


def default_count_noise(expected_clients: float) -> float:
  """σ_b = m/20 for m expected clients a round: Andrew et al. 2021's recommended count noise
  (the noised fraction b̃ then has std 1/20 whatever m)."""
  return float(expected_clients) / 20.0
