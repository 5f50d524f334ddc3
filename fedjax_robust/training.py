"""Robust federated training as pure functions: a round, a run of rounds, a batch of runs.

One round, for one draw of the honest set (mask `honest [n]`):

  1. every client starts from the global model θ and runs K local SGD steps on minibatches of its
     own data with worker momentum m_i ← β m_i + (1 − β) g_i, θ_i ← θ_i − η m_i (RESAM,
     Farhadkhani et al. ICML 2022; ByzFL's D-SGD), vmapped over the client axis; Byzantine
     clients under a data-poisoning attack train on poisoned minibatches; with example-level
     DP every step's gradient is DP-SGD's (Poisson-sampled minibatch, per-example clipping,
     Gaussian noise; `fedjax_robust.privacy`);
  2. updates u_i = θ − θ_i^K are stacked into `[n, d]` (for K = 1: u_i = η m_i);
  3. a model-poisoning attack replaces the Byzantine rows (adaptive attacks may query the
     server's aggregation of this round, its state and randomness included);
  4. the robust aggregator reduces `[n, d] -> [d]` (over the clients present, when a fault
     makes some absent; a round with at most 2f clients present is skipped);
  5. the server treats the aggregate as a (pseudo-)gradient for an optax optimizer
     (SGD with learning rate 1 applies θ ← θ − F(u)).

A population may mix behaviours (`Simulator.population`): each client the draw marks faulty is
given behaviour k with probability π_k, once per draw (`assign_behaviours`), and runs that
attack or inadvertent fault (`fedjax_robust.attacks.faults`); with one behaviour every faulty client runs
it (the default). Faults act where they happen: on the client's data (`corrupt_data`, fixed per
example and draw; `sample_weights`, a biased sample), on its update (`poison`), or on its
presence (`presence`).

`run_rounds` scans rounds; `jax.vmap` of it over `[S, n]` masks and `[S]` keys runs S complete
trainings in one compiled program. Every random draw derives from the sample key by
`fold_in(key, round)`, so a sample's numbers do not depend on the batch it runs in.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.flatten_util import ravel_pytree

from fedjax_robust import compression as compression_lib
from fedjax_robust import models as models_lib
from fedjax_robust import privacy
from fedjax_robust import sharding
from fedjax_robust.aggregators import Aggregator
from fedjax_robust.aggregators.bucketing import bucketing as group_means
from fedjax_robust.aggregators import clipping
from fedjax_robust.attacks import Attack
from fedjax_robust.data import ClientData
from fedjax_robust.data import valid_mask
from fedjax_robust.local_training import CLIENT_UPDATES  # noqa: F401  (re-exported)
from fedjax_robust.local_training import LR_SCHEDULES
from fedjax_robust.local_training import LocalTraining
from fedjax_robust.theory import bounds
from fedjax_robust.theory import heterogeneity
from fedjax_robust.theory import robustness as measured_robustness

# Aggregator aux values reduced by their maximum over rounds (the others by their mean).
MAX_AUX = ("kappa_ratio", "sampled_byzantine_max")
# Aux values kept round by round (`[num_rounds]` per draw, not reduced): the theory's h_t(S) and
# u_t(S) = ‖∇L_S(θ_t)‖² at every round t (a (G, B) certificate needs each round's pair).
ROUND_AUX = ("honest_heterogeneity", "honest_gradient_sq")
# fold_in tags of the per-draw keys (distinct from the round numbers the round keys use).
_FAULT_TAG = 2 ** 30 + 1
_BEHAVIOUR_TAG = 2 ** 30 + 2
_PRESENCE_TAG = 2 ** 30 + 3
_SAMPLING_TAG = 2 ** 30 + 4
_PRIVACY_TAG = 2 ** 30 + 5
_COMPRESSION_TAG = 2 ** 30 + 6
_COORDINATES_TAG = 2 ** 30 + 7
_DP_SGD_TAG = 2 ** 30 + 8  # folded into a local step's key
_CENTRAL_TAG = 2 ** 30 + 9
_TREE_TAG = 2 ** 30 + 10
_COUNT_TAG = 2 ** 30 + 11
_GROUPS_TAG = 2 ** 30 + 12


def assign_behaviours(key: jax.Array, honest: jax.Array, probs) -> jax.Array:
  """The behaviour of every client for one draw, `[n]` int32: 0 honest, k ≥ 1 the k-th
  behaviour of the population, drawn independently per faulty client with probabilities
  `probs` (π_1..π_K, summing to 1) from `fold_in(key, _BEHAVIOUR_TAG)`; `key` is the draw's key,
  so the composition depends on the draw only."""
  logits = jnp.log(jnp.asarray(probs, jnp.float32))
  k = jax.random.categorical(jax.random.fold_in(key, _BEHAVIOUR_TAG), logits,
                             shape=honest.shape) + 1
  return jnp.where(honest, 0, k).astype(jnp.int32)


def personal_layer_marks(params):
  """A pytree like `params` with 1 on the leaves of the model's output layer (the last `Dense`
  of the top-level modules, in flax's creation order) and 0 elsewhere."""
  layers = params["params"]
  dense = sorted((k for k in layers if k.startswith("Dense_")), key=lambda k: int(k[6:]))
  if not dense:
    raise ValueError("the model has no Dense output layer to keep personal.")
  return {"params": {k: jax.tree.map(lambda a, last=(k == dense[-1]): jnp.full(
      a.shape, 1.0 if last else 0.0, jnp.float32), v) for k, v in layers.items()}}


def fault_keys(key: jax.Array, num_clients: int) -> jax.Array:
  """Per-client keys `[n]` of the data faults, fixed for the draw (key: the draw's key)."""
  base = jax.random.fold_in(key, _FAULT_TAG)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(num_clients))


def epoch_batches(key: jax.Array, count: jax.Array, max_count: int, batch: int,
                  epochs: int) -> tuple[jax.Array, jax.Array]:
  """The minibatches of E epochs without replacement: `(idx [E·J, B], real [E·J, B])`,
  J = ⌈max_count/B⌉. Epoch e shuffles the client's `count` examples (`fold_in(key, e)`) and
  cuts the shuffle into J blocks of B positions; positions ≥ count are padding (`real` False)."""
  per_epoch = -(-max_count // batch)
  positions = jnp.arange(per_epoch * batch)
  real = positions < count

  def one(e):
    u = jax.random.uniform(jax.random.fold_in(key, e), (max_count,))
    order = jnp.argsort(jnp.where(jnp.arange(max_count) < count, u, 2.0))
    idx = jnp.take(order, jnp.minimum(positions, max_count - 1))
    return idx.reshape(per_epoch, batch), real.reshape(per_epoch, batch)

  idx, mask = jax.vmap(one)(jnp.arange(epochs))
  return idx.reshape(-1, batch), mask.reshape(-1, batch)


def map_clients(fn, in_axes, args, block: int = 0):
  """`jax.vmap(fn, in_axes)(*args)` over the clients axis (axis 0 of every argument whose
  in_axes entry is 0), or, with `block` in [1, n), streamed: a `lax.map` over ⌈n/block⌉
  blocks of `block` vmapped clients (the last block padded with copies of client 0, their
  outputs dropped), so the working set of local training and of the per-client evaluation
  (activations, per-client gradients) is a block's, not all n clients'. The arithmetic is the
  same; what may differ is where LLVM contracts a·b + c into one FMA, which depends on how XLA
  fuses the program: bit for bit equal to the unstreamed program without FMA contraction
  (XLA_FLAGS=--xla_cpu_max_isa=SSE4_2), within a few ulp per round with it (both tested)."""
  n = next(a.shape[0] for a, ax in zip(args, in_axes) if ax == 0 and a is not None)
  vmapped = jax.vmap(fn, in_axes=in_axes)
  if not block or block >= n:
    return vmapped(*args)
  num = -(-n // block)
  pad = num * block - n
  mapped = [ax == 0 and a is not None for a, ax in zip(args, in_axes)]

  def split(a):
    if pad:
      a = jnp.concatenate([a, jnp.repeat(a[:1], pad, axis=0)])
    return a.reshape((num, block) + a.shape[1:])

  def body(blocks):
    it = iter(blocks)
    return vmapped(*[next(it) if m else a for a, m in zip(args, mapped)])

  out = lax.map(body, [split(a) for a, m in zip(args, mapped) if m])
  return jax.tree.map(lambda o: o.reshape((num * block,) + o.shape[2:])[:n], out)


def sample_clients(key: jax.Array, num_clients: int, per_round: int) -> jax.Array:
  """The clients of one round, `[m]` int32 sorted: m of n uniformly without replacement."""
  return jnp.sort(jax.random.permutation(key, num_clients)[:per_round]).astype(jnp.int32)


class WithTrigger(NamedTuple):
  """What `Simulator.evaluate` takes for a backdoor whose trigger is learned (A3FL): the global
  parameters and the attack's state holding the trigger."""
  params: jax.Array
  trigger_state: Any


class RunState(NamedTuple):
  params: jax.Array            # [d] flattened global model
  server_opt_state: Any
  momentum: jax.Array          # [n, d] worker momentum
  aggregator_state: Any
  attack_state: Any            # one state per behaviour of the population
  round: jax.Array             # int32 rounds done
  server_momentum: Any = ()    # [d] momentum of the server's own update (FLTrust's root data)
  # [n, d_p] each client's personal parameters (personalization; client-side, never sent:
  # `params` then holds the shared parameters only).
  personal: Any = ()
  # [n, d_s] each client's error-feedback residual (compression with error feedback).
  residual: Any = ()
  # The clip norm C_t of adaptive clipping (a scalar; `[n]`, one per client, for DP-SGD's).
  clip: Any = ()


@dataclasses.dataclass(frozen=True)
class Simulator:
  """One robust-FL algorithm: model, local training, attack, aggregator and server optimizer."""
  model: models_lib.Model
  aggregator: Aggregator
  attack: Attack
  local: LocalTraining
  server_optimizer: optax.GradientTransformation
  num_clients: int
  weighted_aggregation: bool = False  # client sample counts as aggregation weights
  # Reference runs (not attacks): aggregate the honest clients only, with fixed client weights.
  honest_only: bool = False
  client_weights: tuple[float, ...] | None = None
  # λ of the ℓ2 term λ/2‖θ‖² in every client's loss L_i (0: none).
  l2: float = 0.0
  # Record the theory's quantities: the (f, κ) ratio of every round (aux `kappa_ratio`, max
  # over the rounds of a chunk), and at every round t, at the model θ_t the round starts from,
  # the heterogeneity h_t(S) and u_t(S) = ‖∇L_S(θ_t)‖² of the draw's honest set (ROUND_AUX; one
  # full-batch gradient per client per round).
  measure_theory: bool = False
  # A mixed population: ((behaviour, π), ...) over the faulty clients; () = every faulty client
  # runs `attack`.
  population: tuple[tuple[Attack, float], ...] = ()
  # The server's root data set (x [m, ...], y [m]) for rules that compare with a server update
  # (FLTrust); the server trains on it with the clients' local procedure.
  root: tuple[Any, Any] | None = None
  # Client sampling: m clients per round, uniformly without replacement (0: all n). Local
  # training, the attack and the rule see the m sampled clients only (the rule's f applies to
  # them); the others keep their momentum. aux: the realized Byzantine count among the sampled
  # b_t (`sampled_byzantine`, its maximum `sampled_byzantine_max`), and the shares of rounds
  # with b_t <= f (`sampled_within_f`) and with b_t < m/2 (`sampled_minority`: RFA's event
  # |S_t ∩ C| <= θm for some θ < 1/2, Pillutla et al. 2022, Theorem 4).
  clients_per_round: int = 0
  # "poisson": each client takes part in a round independently with probability q = m/n
  # (m = clients_per_round), as central DP's amplification by sampling assumes. Every client
  # trains (the arrays keep their n rows); the rule sees the round's sample as its present rows
  # (`present`), the others keep their momentum and state, and the round is skipped when at most
  # 2f clients, or fewer than the rule is defined for (Krum: 2f + 3), took part (not with
  # central DP's fixed-denominator mean, defined for any count). "fixed": m of n uniformly
  # without replacement (rows gathered).
  client_sampling: str = "fixed"
  # Central DP under Poisson sampling with the mean: the aggregate Σ_{sampled} clip(x_i)/(q·n),
  # the mean with the fixed denominator E[m] = q·n (McMahan et al. 2018), whose add/remove
  # sensitivity is C/(q·n). 0: the rule's own aggregate.
  central_fixed_denominator: float = 0.0
  # Personalization (FedPer, Arivazhagan et al. 2019): the model's output layer is personal,
  # one per client, trained locally and never sent; the rule aggregates the other (shared)
  # parameters. The evaluation then measures each client with its own head.
  personal_head: bool = False
  # Local fine-tuning at evaluation: every client takes this many full-batch gradient steps
  # (client lr, no momentum) from its model on its own training data, measured on its held-out
  # split (honest_finetuned_holdout_*). 0: none.
  fine_tune_steps: int = 0
  # Client-level DP (`privacy.clip_and_noise`): every sent update clipped to L2 norm
  # `privacy_clip` plus N(0, (privacy_noise·privacy_clip)²) noise, before the attack sees it.
  # 0: off.
  privacy_clip: float = 0.0
  privacy_noise: float = 0.0
  # Compressed updates (`compression_lib.Compression`): what every client sends, after its
  # privacy mechanism (before it for the coordinates of a data-independent sparsifier), and the
  # space the rule aggregates in.
  compression: compression_lib.Compression = compression_lib.Compression()
  # Example-level DP (DP-SGD, `privacy` kind "example"): every client's local step takes a
  # Poisson-sampled minibatch (rate min(1, B/m_i), B = local.batch_size), clips each example's
  # gradient to L2 norm `dp_sgd_clip`, sums them, adds N(0, (dp_sgd_noise·dp_sgd_clip)²) per
  # coordinate and divides by B (`privacy.noisy_clipped_sum`). 0: off.
  dp_sgd_clip: float = 0.0
  dp_sgd_noise: float = 0.0
  # Central (user-level) DP with a trusted server (`privacy` kind "central"): the server clips
  # every row it receives to L2 norm C = `central_clip` (C_t with adaptive clipping; a non-finite
  # row is sent to 0), runs the rule, and adds N(0, (central_noise·Δ)²) per coordinate to the
  # aggregate once, Δ = central_sensitivity·C the rule's L2 sensitivity to one client (config's
  # `central_sensitivity`); with `honest_only` (the reference run, the mean of the |H| honest
  # clients) Δ = 2C/|H| per draw. 0: off.
  central_clip: float = 0.0
  central_noise: float = 0.0
  central_sensitivity: float = 0.0
  # DP-FTRL (Kairouz et al. 2021): the central noise of round t is the online binary tree's
  # increment (`privacy.tree_round_noise`), so the running sum of the noisy aggregates carries
  # the tree's noise of its prefix (variance popcount(t + 1)·(σΔ)²); one tree per
  # `tree_rounds` rounds (restarts). 0: independent noise every round.
  tree_rounds: int = 0
  # Adaptive clipping (Andrew et al. 2021) of the central, the client-level or DP-SGD's clip:
  # C_{t+1} = C_t·exp(−adaptive_lr·(ĉ/m − adaptive_quantile)), ĉ the count of the round's m
  # rows with ‖x_i‖ ≤ C_t plus N(0, count_noise²) (central: the server's count of the rows it
  # receives; client-level: each honest client's bit noised by itself, a Byzantine client
  # reports "above"; DP-SGD: every client's own per-example clip, one step per local step on
  # its minibatch's noisy count over B, kept across rounds). The starting C is the clip. 0: a
  # fixed clip.
  adaptive_quantile: float = 0.0
  adaptive_lr: float = 0.2
  count_noise: float = 0.0
  # Secure aggregation over groups (`secure_aggregation.group_size`): the server sees only the
  # means of random groups of this many of the round's rows (one secure sum per group, a fresh
  # partition every round) and the rule runs over the group means. 0: every row in the clear.
  secure_group_size: int = 0
  # Language models (text data): each cross-entropy loss also as its perplexity exp(loss)
  # (`<name>_perplexity` beside `<name>_loss`; nats per character, so the geometric mean over
  # characters of 1/p(next character)).
  perplexity: bool = False
  # Clients streamed in blocks of this many (`map_clients`): local training and the per-client
  # evaluation run as a `lax.map` over client blocks, each block vmapped, so their working set
  # is a block's (0: all n clients vmapped at once). Set by the memory plan (`memory`) when one
  # draw's all-clients working set does not fit; the same arithmetic either way (`map_clients`:
  # bit for bit without FMA contraction, within a few ulp per round with it).
  client_block: int = 0
  # Durability (backdoors): the faulty clients follow their behaviour in rounds [0, attack_rounds)
  # only and behave as honest clients from then on (clean data, their own update, present);
  # the draw's honest set, which the metrics average over, stays the same. 0: every round.
  attack_rounds: int = 0

  def __post_init__(self):
    shapes = jax.eval_shape(self.model.init, jax.random.key(0))
    flat, unravel = ravel_pytree(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes))
    object.__setattr__(self, "_unravel", unravel)
    object.__setattr__(self, "num_params", flat.size)
    shared = np.arange(flat.size)
    if self.personal_head:
      marks, _ = ravel_pytree(personal_layer_marks(shapes))
      marks = np.asarray(marks) > 0
      if marks.all():
        raise ValueError(f"model {self.model.name!r} has no layer before its output layer: "
                         "with a personal output layer nothing would be shared.")
      shared = np.flatnonzero(~marks)
      object.__setattr__(self, "_personal_idx", np.flatnonzero(marks))
    object.__setattr__(self, "_shared_idx", shared)
    object.__setattr__(self, "num_shared", shared.size)
    if self.population:
      probs = [p for _, p in self.population]
      if any(p <= 0 for p in probs) or abs(sum(probs) - 1) > 1e-6:
        raise ValueError(f"population probabilities must be > 0 and sum to 1, got {probs}.")
    c = self.compression
    if c.k > self.num_shared and c.sparsifies:
      raise ValueError(f"compression.k={c.k} exceeds the {self.num_shared} parameters sent.")
    if c.aggregate_in == "k" and jax.tree.leaves(self.aggregator.init(c.size(self.num_shared),
                                                                      jnp.float32)):
      raise ValueError(f"compression.aggregate_in='k': aggregator {self.aggregator.name!r} "
                       "keeps a state across rounds in d, which a rule working on the round's "
                       "shared coordinates cannot; use aggregate_in='d'.")
    if self.dp_sgd_clip:
      if self.local.batch_size < 1 or self.local.local_epochs:
        raise ValueError(f"DP-SGD samples each local step's minibatch by Poisson sampling at "
                         f"rate B/m_i: it needs local_steps with batch_size B >= 1, got "
                         f"batch_size={self.local.batch_size}, local_epochs="
                         f"{self.local.local_epochs}.")
      biased = [a.name for a in self.behaviours if a.sample_weights is not None]
      if biased:
        raise ValueError(f"DP-SGD samples every example with the same probability; "
                         f"{', '.join(biased)} samples its minibatches with other weights.")
    if self.central_clip and (self.privacy_clip or self.dp_sgd_clip or self.secure_group_size):
      raise ValueError("central DP (a trusted server that sees every row) is not combined with "
                       "client-level DP, DP-SGD or secure aggregation here.")
    if self.adaptive_quantile and not (self.central_clip or self.privacy_clip
                                       or self.dp_sgd_clip):
      raise ValueError("adaptive clipping adapts the central, the client-level or DP-SGD's "
                       "clip; none is on.")
    if self.central_clip and not self.honest_only and self.central_sensitivity <= 0:
      raise ValueError("central DP needs the rule's sensitivity central_sensitivity > 0 (Δ/C).")
    if self.central_fixed_denominator and not (
        self.poisson and self.central_clip and self.aggregator.name == "mean"):
      raise ValueError("central_fixed_denominator is DP-FedAvg's mean under Poisson client "
                       "sampling: it needs central DP, client_sampling='poisson' and the mean.")
    if self.tree_rounds and (not self.central_clip or self.adaptive_quantile):
      raise ValueError("tree aggregation (DP-FTRL) noises the central aggregate with a fixed "
                       "clip: it needs central DP without adaptive clipping.")
    if self.poisson:  # the fewest rows the rule traces for (its own n-condition), for skipping
      shaped = lambda k: jax.ShapeDtypeStruct((k, 2), jnp.float32)
      state = self.aggregator.init(2, jnp.float32)
      for k in range(1, self.num_clients + 1):
        try:
          jax.eval_shape(lambda u: self.aggregator.apply(
              u, state, jax.random.key(0), **self._shaped_inputs(u)), shaped(k))
        except ValueError:  # the rule's ConfigError at trace time: too few rows for it
          continue
        object.__setattr__(self, "_min_rows", k)
        break
      else:
        raise ValueError(f"aggregator {self.aggregator.name!r} is defined for no number of the "
                         f"{self.num_clients} clients.")
    needs = getattr(self.aggregator, "needs", frozenset())
    if getattr(self.aggregator, "per_client_state", False) and (self.sampling
                                                                or self.secure_group_size):
      raise ValueError(f"aggregator {self.aggregator.name!r} keeps a state per client (row i is "
                       "client i every round); with client sampling without replacement or "
                       "secure aggregation's groups the rows are not the same clients.")
    if needs & {"representations", "global_params"}:
      if self.personal_head or self.compression.aggregate_in == "k":
        raise ValueError(f"aggregator {self.aggregator.name!r} reads the clients' models "
                         "θ − x_i: not with a personal head (the rows are the shared part) or "
                         "compression.aggregate_in='k' (the rows are k coordinates).")
    if "representations" in needs:
      if self.model.represent is None:
        raise ValueError(f"aggregator {self.aggregator.name!r} compares the clients' models' "
                         f"penultimate-layer representations; model {self.model.name!r} has "
                         f"no representation layer (models with one: "
                         f"{', '.join(models_lib.REPRESENTATION_MODELS)}).")
      if self.root is None:
        raise ValueError(f"aggregator {self.aggregator.name!r} evaluates the clients' models on "
                         "the server's root inputs; the simulator has no root data set.")
    if getattr(self.aggregator, "needs_server_update", False) and self.root is None:
      raise ValueError(f"aggregator {self.aggregator.name!r} compares with a server update on "
                       "root data; the simulator has no root data set.")

  def _aggregator_init(self, d: int):
    """The rule's first state; a per-client state (FoolsGold, FLDetector) sized by n."""
    if getattr(self.aggregator, "per_client_state", False):
      return self.aggregator.init(d, num_clients=self.num_clients)
    return self.aggregator.init(d)

  @property
  def _server_trains(self) -> bool:
    """Whether the server computes its own update on its root data each round (FLTrust)."""
    return self.root is not None and getattr(self.aggregator, "needs_server_update", False)

  def _shaped_inputs(self, u):
    """Stand-ins for the server inputs the rule takes (for tracing it on a shape)."""
    needs = getattr(self.aggregator, "needs", frozenset())
    stand_in = {"server_update": lambda: u[0], "global_params": lambda: u[0],
                "representations": lambda: jnp.zeros((u.shape[0], 2, 1), u.dtype)}
    return {k: stand_in[k]() for k in needs}

  @property
  def sampling(self) -> bool:
    """Whether m < n clients take part in a round, drawn without replacement (fixed size)."""
    return 0 < self.clients_per_round < self.num_clients and self.client_sampling == "fixed"

  @property
  def poisson(self) -> bool:
    """Whether each client takes part with probability m/n (Poisson sampling)."""
    return 0 < self.clients_per_round < self.num_clients and self.client_sampling == "poisson"

  @property
  def behaviours(self) -> tuple[Attack, ...]:
    """The behaviours of the faulty clients (one: `attack`)."""
    return tuple(a for a, _ in self.population) or (self.attack,)

  @property
  def absences(self) -> bool:
    """Whether some clients may be absent from a round (a behaviour's drop-outs, or Poisson
    client sampling): the rules then see a presence mask."""
    return self.poisson or any(a.presence is not None for a in self.behaviours)

  def roles(self, honest: jax.Array, key: jax.Array) -> jax.Array:
    """`[n, K]` bool: client i runs behaviour k (K behaviours; none for an honest client)."""
    if not self.population:
      return (~honest)[:, None]
    behaviour = assign_behaviours(key, honest, [p for _, p in self.population])
    return behaviour[:, None] == jnp.arange(1, len(self.population) + 1)[None, :]

  def logits(self, params: jax.Array, x: jax.Array) -> jax.Array:
    """The model's outputs: logits `[m, C]` of a classifier, predictions `[m]` of a regressor."""
    return self.model.apply(self._unravel(params), x)

  def init(self, key: jax.Array) -> RunState:
    """The initial state; with a personal head every client's head starts from the same
    initial output layer."""
    full, _ = ravel_pytree(self.model.init(key))
    params, personal = full, ()
    if self.personal_head:
      params = full[self._shared_idx]
      personal = jnp.broadcast_to(full[self._personal_idx],
                                  (self.num_clients, self._personal_idx.size))
    return RunState(params, self.server_optimizer.init(params),
                    jnp.zeros((self.num_clients, full.size), full.dtype),
                    self._aggregator_init(params.size),
                    tuple(a.init(params.size, self.num_clients) for a in self.behaviours),
                    jnp.array(0, jnp.int32),
                    jnp.zeros_like(params) if self._server_trains else (), personal,
                    jnp.zeros((self.num_clients, params.size), params.dtype)
                    if self.compression.error_feedback else (),
                    jnp.full((self.num_clients,) if self.dp_sgd_clip else (),
                             self.central_clip or self.privacy_clip or self.dp_sgd_clip,
                             jnp.float32) if self.adaptive_quantile else ())

  def full_params(self, shared: jax.Array, personal: jax.Array) -> jax.Array:
    """Client models `[..., d]` from the shared parameters `[d_s]` and personal ones
    `[..., d_p]` (a personal head); `shared` itself without one."""
    if not self.personal_head:
      return shared
    lead = personal.shape[:-1]
    full = jnp.zeros(lead + (self.num_params,), shared.dtype)
    full = full.at[..., self._shared_idx].set(jnp.broadcast_to(shared, lead + shared.shape))
    return full.at[..., self._personal_idx].set(personal)

  def eval_params(self, state: RunState):
    """What `evaluate` takes: the global parameters, or (shared, personal) with a personal
    head, or `WithTrigger(params, attack state)` for a backdoor whose trigger is learned (A3FL:
    measured with the trigger the attackers hold) (batched states give batched values)."""
    if self.personal_head:
      return (state.params, state.personal)
    learned = self._learned_trigger()
    if learned is not None:
      return WithTrigger(state.params, state.attack_state[learned])
    return state.params

  def _learned_trigger(self) -> int | None:
    """The index of the measured backdoor (the first behaviour with a trigger, as `evaluate`
    takes it) when its trigger reads its state, else None."""
    k = next((k for k, a in enumerate(self.behaviours) if a.trigger is not None), None)
    return k if k is not None and self.behaviours[k].stateful_data else None

  def _loss(self, params, x, y, weights):
    return self._data_loss(self.logits(params, x), y, weights) + self._penalty(params)

  def _data_loss(self, outputs, y, weights):
    """The model's masked mean loss: cross-entropy, or ½(ŷ − y)² for least squares."""
    return models_lib.masked_loss(self.model.loss, outputs, y, weights)

  def _accuracy(self, outputs, y, weights):
    """Masked accuracy of a classifier; NaN (undefined) for a regressor's real targets."""
    if self.model.loss == "squared":
      return jnp.asarray(jnp.nan, jnp.float32)
    return models_lib.masked_accuracy(outputs, y, weights)

  def _penalty(self, params):
    return 0.5 * self.l2 * jnp.sum(params ** 2) if self.l2 else 0.0

  def _example_loss(self, params, x, y):
    """The data loss of one example (`x` without its batch axis), without the ℓ2 term."""
    return self._data_loss(self.logits(params, x[None]), y[None], jnp.ones((1,), bool))

  @staticmethod
  def _without_padding(x, y, valid):
    """Padding zeroed before the model sees it: masking only the loss would still let NaN or
    huge padding into gradients (0 · NaN = NaN)."""
    keep = valid.reshape(valid.shape + (1,) * (x.ndim - valid.ndim))
    return jnp.where(keep, x, 0.0), jnp.where(valid, y, 0)

  def local_update(self, params, momentum, x, y, count, key, byzantine, fault_key=None,
                   lr=None, example_dp=True, coordinates=None, clip=None, client=None,
                   attack_states=None):
    """One client's local work (`LocalTraining`: K steps or E epochs, at learning rate `lr`,
    default the constant η); returns (update θ − θ̄ `[d]`, new momentum `[d]`).

    `byzantine`: whether the client runs the attack (a bool), or `[K]` bools, which behaviour
    of the population it runs. `fault_key`: the client's key of data faults for the draw
    (`fault_keys`; needed when a behaviour corrupts data). `example_dp`: whether the
    simulator's DP-SGD (`dp_sgd_clip` > 0) applies (False: the server's own update on its root
    data, which no client owns). `coordinates` (bool `[d]`, or None): with DP-SGD, the
    coordinates the client sends this round (a data-independent sparsifier's): each step's
    per-example gradients are restricted to them before clipping and noised on them only.
    `clip`: with DP-SGD and adaptive clipping, the client's per-example clip C at the start
    (a scalar); every step then moves it (`privacy.adaptive_clip_update` on the step's noisy
    count of included examples with ‖g_j‖ ≤ C over B) and the call returns (update, momentum,
    the client's C after its steps). `client`: the client's index among the n (int32), for a
    data poisoning that depends on it (`Attack.indexed`: DBA's share of the trigger).
    `attack_states`: the behaviours' states this round, for a data poisoning that reads its
    attack's state (`Attack.stateful_data`: A3FL's learned trigger)."""
    cfg = self.local
    lr = cfg.lr if lr is None else lr
    roles = jnp.atleast_1d(byzantine)
    behaviours = self.behaviours

    def poisoned(k, xb, yb, idx):
      for b, (role, attack) in enumerate(zip(roles, behaviours)):
        if attack.corrupt_data is not None and fault_key is not None:
          cx, cy = attack.corrupt_data(fault_key, xb, yb, idx)
          xb, yb = jnp.where(role, cx, xb), jnp.where(role, cy, yb)
        if attack.poison_data is not None:
          extra = {"state": attack_states[b]} if attack.stateful_data else {}
          args = (client,) if attack.indexed else ()
          px, py = attack.poison_data(k, xb, yb, *args, **extra)
          xb, yb = jnp.where(role, px, xb), jnp.where(role, py, yb)
      return xb, yb

    def bias(valid):
      """Sampling weights `[m]` of the client (uniform over its data unless it is biased)."""
      w = valid.astype(jnp.float32)
      for role, attack in zip(roles, behaviours):
        if attack.sample_weights is not None:
          w = jnp.where(role, attack.sample_weights(y, valid), w)
      return w

    # A biased client's sampling weights over its examples, the same at every local step.
    valid = jnp.arange(x.shape[0]) < count
    biased = any(a.sample_weights is not None for a in behaviours)
    if biased:
      sample_weights = bias(valid)
      is_biased = jnp.any(jnp.stack([r for r, a in zip(roles, behaviours)
                                     if a.sample_weights is not None]))

    def gradient(p, k):
      k_batch, k_poison = jax.random.split(k)
      if cfg.batch_size <= 0:
        xb, yb = poisoned(k_poison, *self._without_padding(x, y, valid), jnp.arange(x.shape[0]))
        return jax.grad(self._loss)(p, xb, yb, sample_weights if biased else valid)
      idx = jax.random.randint(k_batch, (cfg.batch_size,), 0, count)
      if biased:  # a biased client samples ∝ its weights (its own examples only)
        skewed = jax.random.categorical(k_batch, jnp.log(sample_weights),
                                        shape=(cfg.batch_size,))
        idx = jnp.where(is_biased, skewed, idx)
      xb, yb = poisoned(k_poison, x[idx], y[idx], idx)
      return jax.grad(self._loss)(p, xb, yb, jnp.ones((cfg.batch_size,), bool))

    def private_gradient(p, k, c):
      """DP-SGD's gradient (Abadi et al. 2016): the step's Poisson-sampled minibatch
      (`privacy.poisson_sample`, key fold_in(k, _DP_SGD_TAG)), each example's gradient over all
      m_max positions (vmapped; padding never sampled), clipped to C = `c`, summed, plus
      N(0, σ²C²·I), divided by B. Data poisoning applies to the examples as in `gradient`. The
      ℓ2 term is data-independent: its gradient λθ is added after the noise, unclipped
      (post-processing, no privacy cost). Returns (g̃, the next C): with adaptive clipping
      C·exp(−η(ĉ/B − γ)), ĉ the included examples with ‖g_j‖ ≤ C (on the sent coordinates)
      plus N(0, σ_b²) (Andrew et al. 2021), else C."""
      _, k_poison = jax.random.split(k)
      k_sample, k_noise = jax.random.split(jax.random.fold_in(k, _DP_SGD_TAG))
      xb, yb = poisoned(k_poison, *self._without_padding(x, y, valid), jnp.arange(x.shape[0]))
      per_example = jax.vmap(jax.grad(self._example_loss), in_axes=(None, 0, 0))(p, xb, yb)
      included = privacy.poisson_sample(k_sample, count, x.shape[0], cfg.batch_size)
      g = privacy.noisy_clipped_sum(k_noise, per_example, included,
                                    clip=c if adaptive else self.dp_sgd_clip,
                                    noise_multiplier=self.dp_sgd_noise,
                                    coordinates=coordinates) / cfg.batch_size
      if adaptive:
        sent = per_example if coordinates is None else jnp.where(coordinates, per_example, 0.0)
        below = privacy.noisy_below_count(
            jax.random.fold_in(k_noise, 1), jnp.sqrt(jnp.sum(sent * sent, axis=1)), c,
            self.count_noise, weights=included)
        c = privacy.adaptive_clip_update(c, below, jnp.float32(cfg.batch_size),
                                         self.adaptive_quantile, self.adaptive_lr)
      return (g + jax.grad(self._penalty)(p) if self.l2 else g), c

    private = self.dp_sgd_clip and example_dp
    adaptive = bool(private and self.adaptive_quantile and clip is not None)
    if private:
      step_gradient = private_gradient
    else:
      step_gradient = lambda p, k, c: (gradient(p, k), c)
    clip_in = clip if adaptive else ()

    def epoch_gradient(p, k, idx, real):
      """The gradient on one minibatch of an epoch (positions past the data masked; a biased
      client weights its examples by its sampling weights)."""
      xb, yb = poisoned(k, *self._without_padding(x[idx], y[idx], real), idx)
      w = real.astype(jnp.float32)
      if biased:
        w = jnp.where(is_biased, w * sample_weights[idx], w)
      return jax.grad(self._loss)(p, xb, yb, w)

    max_count = x.shape[0]
    total = cfg.steps(max_count)
    if cfg.local_epochs:
      batch = cfg.epoch_batch(max_count)
      k_order, k_steps = jax.random.split(key)
      idx, real = epoch_batches(k_order, count, max_count, batch, cfg.local_epochs)
      inputs = (jax.random.split(k_steps, total), idx, real)
      real_steps = cfg.local_epochs * -(-count // batch)  # R_i, the client's own steps
    else:
      inputs = (jax.random.split(key, total), None, None)
      real_steps = total
    tail = jnp.minimum(cfg.tail_average, real_steps)
    if not cfg.persistent_momentum:  # FedAvg: the local optimizer starts afresh each round
      momentum_in = jnp.zeros_like(momentum)
    else:
      momentum_in = momentum

    def step(carry, inp):
      p, m, done, tail_sum, c = carry
      k, idx_, real_ = inp
      if idx_ is None:
        g, c = step_gradient(p, k, c)
        m_new = cfg.momentum * m + (1 - cfg.momentum) * g
        p_new, active = p - lr * m_new, jnp.array(True)
      else:
        active = jnp.any(real_)
        g = epoch_gradient(p, k, idx_, real_)
        m_new = jnp.where(active, cfg.momentum * m + (1 - cfg.momentum) * g, m)
        p_new = jnp.where(active, p - lr * m_new, p)
      done = done + active.astype(jnp.int32)
      if cfg.tail_average > 1:  # the iterates of the last `tail` real steps
        tail_sum = tail_sum + jnp.where(active & (done > real_steps - tail), p_new, 0.0)
      return (p_new, m_new, done, tail_sum, c), None

    init = (params, momentum_in, jnp.array(0, jnp.int32),
            jnp.zeros_like(params) if cfg.tail_average > 1 else (), clip_in)
    (local_params, momentum, _, tail_sum, clip_out), _ = lax.scan(step, init, inputs)
    if cfg.tail_average > 1:
      local_params = tail_sum / tail.astype(params.dtype)
    if not cfg.persistent_momentum:
      momentum = momentum_in
    if clip is not None:
      return params - local_params, momentum, clip_out
    return params - local_params, momentum

  def round(self, state: RunState, honest: jax.Array, key: jax.Array, train: ClientData
            ) -> tuple[RunState, Mapping[str, jax.Array]]:
    """One federated round for one honest mask `[n]` (`key`: the draw's key); returns the new
    state and aggregator aux."""
    roles = self.roles(honest, key)
    if self.attack_rounds:  # durability: from round R on the faulty clients act as honest ones
      roles = roles & (state.round < self.attack_rounds)
    round_key = jax.random.fold_in(key, state.round)
    theory = {}
    if self.measure_theory:  # at θ_t, over every client (before any client sampling)
      stats = heterogeneity.gram_statistics(self.client_gradients(state.params, train))
      theory["honest_heterogeneity"], theory["honest_gradient_sq"] = (
          heterogeneity.set_statistics(stats, honest))
    k_clients, k_attack, k_aggregator = jax.random.split(round_key, 3)
    behaviours = self.behaviours
    needs_fault_keys = any(a.corrupt_data is not None for a in behaviours)
    faults_ = fault_keys(key, self.num_clients) if needs_fault_keys else None
    client_keys = jax.random.split(k_clients, self.num_clients)
    weights = self._aggregation_weights(train, honest, state.params.dtype)
    momentum_in, personal_in = state.momentum, state.personal
    extra = {}
    if self.sampling:  # the round's m clients; every per-client array taken at their indices
      sampled = sample_clients(jax.random.fold_in(round_key, _SAMPLING_TAG), self.num_clients,
                               self.clients_per_round)
      take = lambda a: None if a is None else a[sampled]
      honest, roles, faults_, client_keys, weights, momentum_in = map(
          take, (honest, roles, faults_, client_keys, weights, momentum_in))
      personal_in = take(personal_in) if self.personal_head else ()
      train = jax.tree.map(take, train)
      b_t = jnp.sum(~honest)
      extra.update(sampled_byzantine=b_t.astype(jnp.float32),
                   sampled_byzantine_max=b_t.astype(jnp.float32),
                   sampled_within_f=(b_t <= (self.aggregator.f or 0)).astype(jnp.float32),
                   sampled_minority=(2 * b_t < self.clients_per_round).astype(jnp.float32))
    # The clients that act faulty this round (every Byzantine one, but none from round
    # `attack_rounds` on).
    byzantine = ~honest if self.population else roles[:, 0]
    client_roles = roles if self.population else byzantine
    lr = None if self.local.lr_schedule == "constant" else self.local.lr_at(state.round)
    start = self.full_params(state.params, personal_in)  # [d], or [n, d] with personal heads
    # The coordinates of a data-independent sparsifier (`[n, d_s]` or `[d_s]`), known to the
    # clients before they train: DP-SGD then privatizes those coordinates only.
    coords = compression_lib.coordinates(jax.random.fold_in(round_key, _COORDINATES_TAG),
                                         self.compression, byzantine.shape[0], self.num_shared)
    subspace = None
    if self.dp_sgd_clip and coords[0] is not None:
      subspace = coords[0]
      if self.personal_head:  # the personal head is trained (and privatized) whole
        subspace = jnp.ones(subspace.shape[:-1] + (self.num_params,), bool).at[
            ..., self._shared_idx].set(subspace)
    # DP-SGD with adaptive clipping: each client's own per-example clip `[n]`, moved by its steps.
    example_clips = self.dp_sgd_clip and self.adaptive_quantile
    clips_in = ((take(state.clip) if self.sampling else state.clip) if example_clips else None)
    # An attack that adapts to the global model before the clients train (A3FL's trigger): its
    # state moves on the pooled data of the clients running it this round.
    attack_states = list(state.attack_state)
    for k, attack in enumerate(behaviours):
      if attack.adapt is not None:
        acting = roles[:, k] if self.population else byzantine
        pooled = lambda a: a.reshape((-1,) + a.shape[2:])
        weights_k = (acting[:, None] & valid_mask(train.counts, train.x.shape[1]))
        attack_states[k] = attack.adapt(
            jax.random.fold_in(k_attack, len(behaviours) + k), self.logits, state.params,
            attack_states[k], pooled(train.x), pooled(train.y), pooled(weights_k))
    # Each client's index among the n, for a data poisoning that depends on it (DBA).
    indexed = any(a.indexed for a in behaviours)
    clients = jnp.arange(self.num_clients, dtype=jnp.int32) if indexed else None
    if indexed and self.sampling:
      clients = sampled
    out = map_clients(
        self.local_update,
        (0 if self.personal_head else None, 0, 0, 0, 0, 0, 0, 0 if needs_fault_keys else None,
         None, None, None if subspace is None or subspace.ndim == 1 else 0,
         0 if example_clips else None, 0 if indexed else None, None),
        (start, momentum_in, train.x, train.y, train.counts, client_keys, client_roles,
         faults_, lr, True, subspace, clips_in, clients, tuple(attack_states)),
        self.client_block)
    updates, momentum = out[:2]
    taking = None  # Poisson sampling: the round's sample `[n]`; the others keep their state
    keep = lambda new, old: new
    if self.poisson:
      taking = (jax.random.uniform(jax.random.fold_in(round_key, _SAMPLING_TAG), honest.shape)
                < self.clients_per_round / self.num_clients)
      keep = lambda new, old: jnp.where(taking.reshape(taking.shape + (1,) * (new.ndim - 1)),
                                        new, old)
      momentum = keep(momentum, state.momentum)
      b_t = jnp.sum(~honest & taking)
      extra.update(sampled_byzantine=b_t.astype(jnp.float32),
                   sampled_byzantine_max=b_t.astype(jnp.float32),
                   sampled_within_f=(b_t <= (self.aggregator.f or 0)).astype(jnp.float32),
                   sampled_minority=(2 * b_t < jnp.sum(taking)).astype(jnp.float32))
    client_clips = state.clip
    if example_clips:
      client_clips = (state.clip.at[sampled].set(out[2]) if self.sampling
                      else keep(out[2], state.clip))
    personal = state.personal
    if self.personal_head:  # the head stays with the client; only the shared part is sent
      new_personal = personal_in - updates[:, self._personal_idx]
      updates = updates[:, self._shared_idx]
      personal = (state.personal.at[sampled].set(new_personal) if self.sampling
                  else keep(new_personal, state.personal))
    if self.sampling:  # the others keep their momentum
      momentum = state.momentum.at[sampled].set(momentum)
    residual_in = (take(state.residual) if self.sampling and self.compression.error_feedback
                   else state.residual)
    clip_t = state.clip if self.adaptive_quantile and not self.dp_sgd_clip else None
    below = None  # the round's noisy count of rows within the clip (adaptive clipping)
    if self.adaptive_quantile and self.privacy_clip:
      # Each honest client's bit 1[‖x_i‖ ≤ C_t] on what it privatizes, noised by itself; the sum
      # of its m_H independent N(0, σ_b²) is one N(0, m_H·σ_b²). A Byzantine client reports 0.
      sent = updates + residual_in if self.compression.error_feedback else updates
      if coords[0] is not None:  # the coordinates it sends: what `clip_and_noise` clips
        sent = jnp.where(coords[0], sent, jnp.zeros((), sent.dtype))
      norms = jnp.sqrt(jnp.sum(sent * sent, axis=1))
      reporting = honest if taking is None else honest & taking
      below = privacy.noisy_below_count(
          jax.random.fold_in(round_key, _COUNT_TAG), norms, clip_t,
          self.count_noise * jnp.sqrt(jnp.sum(reporting).astype(jnp.float32)),
          weights=reporting)
    updates, residual = self._privatize_and_compress(round_key, updates, coords, residual_in,
                                                     clip=clip_t)
    if self.compression.error_feedback:
      residual = (state.residual.at[sampled].set(residual) if self.sampling
                  else keep(residual, state.residual))
      residual = sharding.constrain(residual, sharding.P(sharding.CLIENTS, None))
    # A mesh with a clients axis: each device trains its own clients (rows), then the updates
    # move to coordinate columns in one all-to-all for the attack and the rule (no-ops otherwise).
    momentum = sharding.constrain(momentum, sharding.P(sharding.CLIENTS, None))
    updates = sharding.constrain(sharding.constrain(updates, sharding.P(sharding.CLIENTS, None)),
                                 sharding.P(None, sharding.CLIENTS))
    if self.honest_only:  # absent clients: their rows are zeros of weight 0 (0·NaN would poison)
      updates = jnp.where(honest[:, None], updates, jnp.zeros_like(updates))
    present = None
    if self.absences:
      present = jnp.ones_like(honest) if taking is None else taking
      k_presence = jax.random.fold_in(round_key, _PRESENCE_TAG)
      for k, attack in enumerate(behaviours):
        if attack.presence is not None:
          present &= attack.presence(jax.random.fold_in(k_presence, k), roles[:, k],
                                     state.round)
      extra["present_share"] = jnp.mean(present.astype(jnp.float32))
    server_update, server_momentum = None, state.server_momentum
    if self._server_trains:
      root_x, root_y = self.root
      server_update, server_momentum = self.local_update(
          state.params, state.server_momentum, jnp.asarray(root_x), jnp.asarray(root_y),
          root_y.shape[0], jax.random.fold_in(round_key, self.num_clients), False, lr=lr,
          example_dp=False, client=jnp.int32(0), attack_states=tuple(attack_states))
          # (no behaviour acts on the server's data: the client index and the attacks' states
          # only give an indexed or stateful data poisoning its arguments, its output unused)
    agg_kwargs = {}
    if present is not None:
      agg_kwargs["present"] = present
    if server_update is not None:
      agg_kwargs["server_update"] = server_update
    if getattr(self.aggregator, "needs", frozenset()) & {"representations", "global_params"}:
      agg_kwargs["global_params"] = state.params  # the model the round started from
    central_clip = (clip_t if self.adaptive_quantile else self.central_clip)

    def server_clip(u):
      """The trusted server's clip of every received row (central DP), and the rows' norms."""
      return clipping.clip_rows(u, central_clip) if self.central_clip else (u, None)

    server_rule = lambda u: self._aggregate(server_clip(u)[0], state.aggregator_state,
                                            k_aggregator, weights, coords, agg_kwargs)[0]
    # Under Poisson sampling the attack sees the round's sample only: the unsampled honest rows
    # count as not honest for its statistics (rows it then writes there are absent: no rule
    # reads them), so an unsampled client leaves the round unchanged.
    unsampled_as_byzantine = ((lambda mask: mask) if taking is None
                              else (lambda mask: mask | ~taking))
    if len(behaviours) == 1:
      if self.attack.poison is not None:
        updates, attack_states[0] = self.attack.poison(
            k_attack, updates, unsampled_as_byzantine(byzantine), attack_states[0], server_rule)
    else:  # every behaviour sees the others' rows as computed (clean), and replaces its own
      clean = updates
      for k, attack in enumerate(behaviours):
        if attack.poison is not None:
          poisoned, attack_states[k] = attack.poison(
              jax.random.fold_in(k_attack, k), clean, unsampled_as_byzantine(roles[:, k]),
              attack_states[k], server_rule)
          updates = jnp.where(roles[:, k, None], poisoned, updates)
    if self.compression.on:  # what the server decodes from every row (Byzantine ones cut too)
      updates = compression_lib.project(updates, self.compression, coords[0])
    updates, norms = server_clip(updates)
    if self.adaptive_quantile and self.central_clip:  # the server counts the rows it received
      below = privacy.noisy_below_count(jax.random.fold_in(round_key, _COUNT_TAG), norms,
                                        central_clip, self.count_noise,
                                        weights=honest if self.honest_only else present)
    aggregate, aggregator_state, aux = self._aggregate(
        updates, state.aggregator_state, k_aggregator, weights, coords, agg_kwargs)
    if self.central_fixed_denominator:  # DP-FedAvg's estimator under Poisson sampling
      aggregate = jnp.sum(jnp.where(present[:, None], updates, 0.0), axis=0) / (
          self.central_fixed_denominator)
    if self.central_clip:
      aggregate = aggregate + self._central_noise(key, round_key, state.round, honest,
                                                  central_clip, aggregate)
    if present is not None and not self.central_fixed_denominator:
      # Too few clients present for the declared f: the round is skipped.
      enough = jnp.sum(present) > 2 * (self.aggregator.f or 0)
      if self.poisson:  # and at least the rows the rule is defined for (Krum: 2f + 3)
        enough &= jnp.sum(present) >= self._min_rows
      aggregate = jnp.where(enough, aggregate, jnp.zeros_like(aggregate))
      aggregator_state = jax.tree.map(lambda new, old: jnp.where(enough, new, old),
                                      aggregator_state, state.aggregator_state)
      extra["skipped_round"] = (~enough).astype(jnp.float32)
    clip_next = client_clips
    if self.adaptive_quantile and not self.dp_sgd_clip:
      # The share of the round's rows (of the honest ones in the honest-only reference; of the
      # expected sample q·n under Poisson sampling, Andrew et al.'s denominator).
      rows = (jnp.sum(honest) if self.honest_only else
              jnp.asarray(self.clients_per_round if self.poisson else honest.shape[0]))
      clip_next = privacy.adaptive_clip_update(clip_t, below, rows.astype(jnp.float32),
                                               self.adaptive_quantile, self.adaptive_lr)
      extra["clip_norm"] = clip_t
    elif self.adaptive_quantile:  # DP-SGD: the clients' mean per-example clip
      extra["clip_norm"] = jnp.mean(client_clips)
    aux = {**aux, **extra}
    if self.measure_theory:
      aux = {**aux, **theory,
             "kappa_ratio": measured_robustness.robustness_ratio(updates, aggregate, honest)}
    steps, opt_state = self.server_optimizer.update(aggregate, state.server_opt_state, state.params)
    params = optax.apply_updates(state.params, steps)
    return RunState(params, opt_state, momentum, aggregator_state, tuple(attack_states),
                    state.round + 1, server_momentum, personal, residual, clip_next), aux

  def _central_noise(self, key, round_key, round_, honest, clip, aggregate):
    """Central DP's noise on the round's aggregate: N(0, (σΔ)²) per coordinate, Δ the rule's
    L2 sensitivity at clip C (`central_sensitivity`·C; the honest-only mean's 2C/|H|), fresh
    every round from fold_in(round key, _CENTRAL_TAG), or with `tree_rounds` the tree's
    increment of round t within its tree (tree t // R from fold_in(draw key, _TREE_TAG))."""
    if self.honest_only:
      delta = 2.0 * clip / jnp.maximum(jnp.sum(honest), 1).astype(aggregate.dtype)
    else:
      delta = self.central_sensitivity * clip
    std = self.central_noise * delta
    if not self.tree_rounds:
      return std * jax.random.normal(jax.random.fold_in(round_key, _CENTRAL_TAG),
                                     aggregate.shape, aggregate.dtype)
    r = self.tree_rounds
    tree_key = jax.random.fold_in(jax.random.fold_in(key, _TREE_TAG), round_ // r)
    return privacy.tree_round_noise(tree_key, round_ % r, aggregate.shape, std,
                                    privacy.tree_levels(r)).astype(aggregate.dtype)

  def _privatize_and_compress(self, round_key, updates, coords, residual, clip=None):
    """(sent `[n, d]`, new residual): each client's privacy mechanism and compressor on its
    update plus its error-feedback residual (`compression_lib` module doc: a data-independent
    sparsifier selects its coordinates `coords` = (mask, shared index) first and privatizes
    the k coordinates it sends; the other compressors compress the privatized vector)."""
    spec = self.compression
    if spec.error_feedback:
      updates = updates + residual
    mask = coords[0]
    if self.privacy_clip:  # each client privatizes what it sends (absent rows are zeroed below)
      # `clip`: adaptive clipping's C_t (a traced scalar), else the fixed clip.
      updates = privacy.clip_and_noise(jax.random.fold_in(round_key, _PRIVACY_TAG), updates,
                                       clip=self.privacy_clip if clip is None else clip,
                                       noise_multiplier=self.privacy_noise, coordinates=mask)
    sent = compression_lib.compress(jax.random.fold_in(round_key, _COMPRESSION_TAG), updates,
                                    spec, mask)
    return sent, (updates - sent if spec.error_feedback else residual)

  def _aggregate(self, updates, aggregator_state, key, weights, coords, agg_kwargs):
    """The aggregator on the decoded rows `[n, d]`, or, with `aggregate_in="k"`, on their
    shared coordinates `[n, k]` (O(n·k) work), its aggregate scattered back into `[d]`."""
    # A rule reading the clients' models in latent space gets every row's model on the root
    # inputs, as it sees the rows (group means under secure aggregation).
    latent = "representations" in getattr(self.aggregator, "needs", frozenset())
    with_latent = lambda rows: (dict(agg_kwargs, representations=self.representations(
        agg_kwargs["global_params"], rows)) if latent else agg_kwargs)
    if self.secure_group_size:  # the server sees the group means only (one secure sum each)
      groups = group_means(updates, key=jax.random.fold_in(key, _GROUPS_TAG),
                                   bucket_size=self.secure_group_size)
      return self.aggregator.apply(groups, aggregator_state, key, None, **with_latent(groups))
    agg_kwargs = with_latent(updates)
    if self.compression.aggregate_in != "k":
      return self.aggregator.apply(updates, aggregator_state, key, weights, **agg_kwargs)
    idx = coords[1]
    server_update = agg_kwargs.get("server_update")
    kwargs = dict(agg_kwargs, **({} if server_update is None
                                 else {"server_update": server_update[idx]}))
    small, state, aux = self.aggregator.apply(updates[:, idx], aggregator_state, key, weights,
                                              **kwargs)
    return jnp.zeros((updates.shape[1],), small.dtype).at[idx].set(small), state, aux

  def representations(self, params: jax.Array, rows: jax.Array) -> jax.Array:
    """`[n, m, h]`: the penultimate-layer features (`Model.represent`) of every row's model
    θ − x_i on the server's m root inputs, what a rule comparing the clients' models in latent
    space (FLARE) reads. A non-finite or huge row gives a non-finite model and features: the
    rule excludes them."""
    root_x = jnp.asarray(self.root[0])
    return jax.vmap(lambda u: self.model.represent(self._unravel(params - u), root_x))(rows)

  def behaviour_codes(self, masks: jax.Array, keys: jax.Array) -> jax.Array:
    """`[S, n]` int32 behaviour of every client in each draw (0 honest, k the k-th behaviour of
    the population; 1 for every faulty client without a population): what `evaluate` takes in
    place of the honest mask to report each behaviour's metrics."""
    if not self.population:
      return jnp.where(masks, 0, 1).astype(jnp.int32)
    probs = [p for _, p in self.population]
    return jax.vmap(lambda k, h: assign_behaviours(k, h, probs))(keys, masks)

  def _aggregation_weights(self, train, honest, dtype):
    """Client weights for the aggregator: sample counts, fixed weights and/or the honest mask
    multiplied together; None (uniform) when none applies."""
    weights = None
    if self.weighted_aggregation:
      weights = train.counts.astype(dtype)
    if self.client_weights is not None:
      fixed = jnp.asarray(self.client_weights, dtype)
      weights = fixed if weights is None else weights * fixed
    if self.honest_only:
      weights = honest.astype(dtype) if weights is None else weights * honest
    return weights

  def client_gradients(self, params: jax.Array, train: ClientData) -> jax.Array:
    """Full-batch gradient of each client's mean loss at `params`, `[n, d]`."""
    def one(x, y, count):
      valid = jnp.arange(x.shape[0]) < count
      return jax.grad(self._loss)(params, *self._without_padding(x, y, valid), valid)
    return map_clients(one, (0, 0, 0), (train.x, train.y, train.counts), self.client_block)

  def run_rounds(self, state: RunState, honest: jax.Array, key: jax.Array, train: ClientData,
                 num_rounds: int) -> tuple[RunState, Mapping[str, jax.Array]]:
    """`num_rounds` rounds by `lax.scan`; aux values are averaged over the rounds, those of
    MAX_AUX maximized (NaN rounds ignored), those of ROUND_AUX kept per round `[num_rounds]`."""
    state, aux = lax.scan(lambda s, _: self.round(s, honest, key, train), state, None,
                          length=num_rounds)

    def reduce(k, a):
      if k in ROUND_AUX:
        return a
      a = a.astype(jnp.float32)
      return jnp.nanmax(a, axis=0) if k in MAX_AUX else jnp.mean(a, axis=0)
    return state, {k: reduce(k, a) for k, a in aux.items()}

  def client_metrics(self, params: jax.Array, train: ClientData) -> tuple[jax.Array, jax.Array]:
    """Loss L_i (with the ℓ2 term when `l2` > 0) and accuracy `[n]` of the model on each
    client's own data (padding excluded); accuracy is NaN for a regression model. `params`:
    one model `[d]`, or one per client `[n, d]` (personalized models)."""
    weights = valid_mask(train.counts, train.x.shape[1])

    def one(p, x, y, w):
      x, y = self._without_padding(x, y, w)
      logits = self.logits(p, x)
      return (self._data_loss(logits, y, w) + self._penalty(p),
              self._accuracy(logits, y, w))

    per_client = 0 if params.ndim == 2 else None
    return map_clients(one, (per_client, 0, 0, 0), (params, train.x, train.y, weights),
                       self.client_block)

  def fine_tune(self, params: jax.Array, train: ClientData) -> jax.Array:
    """Each client's model after `fine_tune_steps` full-batch gradient steps (client lr η, no
    momentum) on its own training data, `[n, d]`; `params` `[d]` or `[n, d]`."""
    def one(p, x, y, count):
      valid = jnp.arange(x.shape[0]) < count
      xb, yb = self._without_padding(x, y, valid)
      step = lambda q, _: (q - self.local.lr * jax.grad(self._loss)(q, xb, yb, valid), None)
      return lax.scan(step, p, None, length=self.fine_tune_steps)[0]
    per_client = 0 if params.ndim == 2 else None
    return map_clients(one, (per_client, 0, 0, 0), (params, train.x, train.y, train.counts),
                       self.client_block)

  def honest_objective(self, params: jax.Array, honest: jax.Array, train: ClientData
                       ) -> jax.Array:
    """L_S(θ) = (1/|S|) Σ_{i∈S} L_i(θ) (0 for an empty S), differentiable in θ."""
    loss, _ = self.client_metrics(params, train)
    h = honest.astype(loss.dtype)
    return h @ loss / jnp.maximum(jnp.sum(h), 1.0)

  def honest_smoothness(self, params: jax.Array, honest: jax.Array, train: ClientData
                        ) -> jax.Array:
    """An estimate of the smoothness L of L_S near θ: |λ|_max of its Hessian at θ by power
    iteration (theory.bounds.top_hessian_eigenvalue); used where L is not known exactly."""
    return bounds.top_hessian_eigenvalue(lambda p: self.honest_objective(p, honest, train),
                                         params)

  def evaluate(self, params: jax.Array, honest: jax.Array, train: ClientData,
               test_x: jax.Array, test_y: jax.Array, holdout: ClientData | None = None
               ) -> dict[str, jax.Array]:
    """Scalars for one sample: the honest loss L_S(θ) = (1/|S|) Σ_{i∈S} L_i(θ), honest accuracy
    (same average), loss/accuracy on the global test set (NaN-free for a classifier; a
    regressor's accuracies are NaN, undefined), and for a backdoor attack
    the backdoor success rate: the share of triggered test inputs whose true label is not the
    target that the model classifies as the target (an edge-case backdoor, `Attack.source_label`:
    of its source class's test inputs, transformed). Honest metrics are NaN when S is empty;
    `diverged` is 1 when a parameter is non-finite (the summaries then count the draw as
    diverged instead of averaging its accuracy in).

    `honest_loss`/`honest_accuracy` are in-sample: each client's own training data. With
    `holdout` (each client's held-out examples, `FederatedData.holdout`) also the held-out
    `honest_holdout_loss`/`honest_holdout_accuracy`: the mean over i ∈ S of client i's loss
    (with the same ℓ2 term as `honest_loss`, so the two differ by the generalization gap only)
    and accuracy on its own held-out examples; honest clients without held-out examples (a
    client with one example keeps it for training) are left out of the mean, which is NaN when
    no honest client has any.

    Personalized (`personal_head`; `params` is then (shared, personal `[n, d_p]`)): every
    client is measured with its own model; the test metrics and the backdoor success rate are
    the mean over i ∈ S of client i's model on the global test set. With `fine_tune_steps`,
    `honest_finetuned_holdout_loss/accuracy` measure each client's model after its local
    fine-tuning (`fine_tune`) on its held-out split, averaged like the held-out metrics."""
    trigger_state = None
    if isinstance(params, WithTrigger):  # a learned trigger: the attack's state at this point
      params, trigger_state = params
    if honest.dtype != jnp.bool_:  # behaviour codes (`behaviour_codes`): 0 = honest
      codes, honest = honest, honest == 0
    else:
      codes = None
    if self.personal_head:  # (shared, personal): every client's own model [n, d]
      params = self.full_params(*params)
    loss, acc = self.client_metrics(params, train)
    h = honest.astype(jnp.float32)
    num_honest = jnp.sum(h)
    honest_mean = lambda v: jnp.where(num_honest > 0, h @ v / num_honest, jnp.nan)
    ones = jnp.ones(test_y.shape, bool)
    extra = {}

    def on_test(p):
      outputs = self.logits(p, test_x)
      return self._data_loss(outputs, test_y, ones), self._accuracy(outputs, test_y, ones)

    if self.personal_head:  # the global test set: the mean over S of each client's own model
      test_loss, test_accuracy = map(honest_mean, jax.vmap(on_test)(params))
    else:
      test_loss, test_accuracy = on_test(params)
    if self.population and codes is not None:  # each behaviour's clients, on their own data
      for k, attack in enumerate(self.behaviours):
        members = (codes == k + 1).astype(jnp.float32)
        count = jnp.sum(members)
        extra[f"behaviour_{attack.name}_loss"] = jnp.where(count > 0, members @ loss / count,
                                                           jnp.nan)
        extra[f"behaviour_{attack.name}_accuracy"] = jnp.where(count > 0, members @ acc / count,
                                                               jnp.nan)
    backdoor = next((a for a in self.behaviours if a.trigger is not None), None)
    if backdoor is not None:
      target = backdoor.target_label
      source = getattr(backdoor, "source_label", None)
      # The inputs the backdoor is measured on: every test input whose true label is not the
      # target, or (an edge-case backdoor) those of its source class.
      measured = test_y != target if source is None else test_y == source
      triggered = (backdoor.trigger(test_x) if trigger_state is None
                   else backdoor.trigger(test_x, trigger_state))
      success = lambda p: models_lib.masked_accuracy(
          self.logits(p, triggered), jnp.full(test_y.shape, target), measured)
      if self.personal_head:  # mean over S of each honest client's own model
        extra["backdoor_accuracy"] = honest_mean(jax.vmap(success)(params))
      else:
        extra["backdoor_accuracy"] = success(params)
    if holdout is not None:
      counted = (honest.astype(bool) & (holdout.counts > 0)).astype(jnp.float32)
      num_counted = jnp.sum(counted)
      held = {"holdout": params}
      if self.fine_tune_steps:
        held["finetuned_holdout"] = self.fine_tune(params, train)
      for name, p in held.items():
        held_loss, held_acc = self.client_metrics(p, holdout)
        extra[f"honest_{name}_loss"] = jnp.where(num_counted > 0,
                                                 counted @ held_loss / num_counted, jnp.nan)
        extra[f"honest_{name}_accuracy"] = jnp.where(num_counted > 0,
                                                     counted @ held_acc / num_counted, jnp.nan)
    if self.perplexity:
      losses = {**extra, "honest_loss": honest_mean(loss), "test_loss": test_loss}
      extra |= {k.replace("_loss", "_perplexity"): jnp.exp(v) for k, v in losses.items()
                if k.endswith("_loss") and not k.startswith("behaviour_")}
    return extra | {
        # 1.0 where training diverged: a parameter is NaN or ±inf (the model is undefined; with
        # personal heads: a shared parameter or an honest client's head).
        "diverged": (~jnp.all(jnp.isfinite(params) if params.ndim == 1 else
                              jnp.isfinite(params) | ~honest[:, None])).astype(jnp.float32),
        "honest_loss": honest_mean(loss),
        "honest_accuracy": honest_mean(acc),
        "test_loss": test_loss,
        "test_accuracy": test_accuracy,
    }


def sample_keys(key: jax.Array, num_samples: int, draw_ids=None) -> jax.Array:
  """Key of sample s = fold_in(key, s), or fold_in(key, draw_ids[s]) when given (common random
  numbers: several masks trained with the same keys): a sample's randomness does not depend on
  S or on the batch it runs in."""
  ids = jnp.arange(num_samples) if draw_ids is None else jnp.asarray(draw_ids, jnp.int32)
  return jax.vmap(lambda s: jax.random.fold_in(key, s))(ids)


def blocked(run, block: int):
  """`run(states, masks, keys, train)` over S draws as `lax.map` over S/B blocks of B vmapped
  draws (one compiled program; the working set is a block's)."""
  def fn(states, masks, keys, train):
    num = masks.shape[0]
    split = lambda a: a.reshape((num // block, block) + a.shape[1:])
    out = jax.lax.map(lambda args: run(*args, train),
                      (jax.tree.map(split, states), split(masks), split(keys)))
    return jax.tree.map(lambda a: a.reshape((num,) + a.shape[2:]), out)
  return fn


def replicate(state: RunState, num_samples: int) -> RunState:
  """The same initial state for every sample (common initial model across draws of μ_H)."""
  return jax.tree.map(lambda a: jnp.broadcast_to(a, (num_samples, *a.shape)), state)
