"""The experiment configuration: every key with its default, validation, and builders.

`base_config()` is the schema: a config file may set only keys that exist here (a misspelt key is
an error, not a silent default). Options of aggregators, attacks, models and honest-set
distributions live in per-name sub-dicts, so `--config.aggregator_options.geometric_median.maxiter=3`
works from the command line.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Mapping

import jax
import ml_collections
import numpy as np
import optax
from ml_collections import config_dict

from fedjax_robust import aggregators
from fedjax_robust import attacks
from fedjax_robust import domains as D
from fedjax_robust import errors
from fedjax_robust import evaluation
from fedjax_robust.attacks import faults
from fedjax_robust import data as data_lib
from fedjax_robust.errors import ConfigError
from fedjax_robust import graphs
from fedjax_robust import honest_sets
from fedjax_robust import local_training
from fedjax_robust import models
from fedjax_robust import server_optimizers
from fedjax_robust import compression
from fedjax_robust import privacy
from fedjax_robust.aggregators import sensitivity
from fedjax_robust import server_prior
from fedjax_robust import sharding
from fedjax_robust import worst_case
from fedjax_robust.theory import report as theory_report

WORST_CASE_CRITERIA = worst_case.CRITERION_NAMES
PERSONALIZATIONS = ("none", "personal_head")


def _options_of(names, options_fn, domains_fn) -> ml_collections.ConfigDict:
  """Every registered name's keyword options with their defaults, so any can be overridden from
  the command line; an option whose default is None becomes a placeholder of its declared
  domain's type (`domains_fn(name)[key].python_type`), so a new option needs no entry here."""
  out = {}
  for name in names:
    domains, entry = domains_fn(name), {}
    for key, value in options_fn(name).items():
      if value is None:
        if key not in domains:
          raise TypeError(f"option {key!r} of {name!r} defaults to None but declares no domain: "
                          "declare its Domain beside the registry entry (its type is the "
                          "command-line placeholder's).")
        value = config_dict.placeholder(domains[key].python_type)
      entry[key] = value
    out[name] = entry
  return ml_collections.ConfigDict(out)


def base_config() -> ml_collections.ConfigDict:
  """Every configurable key, with the defaults of a small digits experiment."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.num_clients = 25               # n
  c.f = 5                          # declared number of Byzantine clients (the server's assumption)
  c.num_samples = 256              # S: Monte Carlo draws of the honest set
  # Draws trained at once; 0: as many as fit in memory_budget_gb (estimated). Same numbers.
  c.num_samples_per_chunk = 0
  c.memory_budget_gb = 4.0
  # Devices (fedjax_robust.sharding): "" one device; "draws" every chunk's draws split over all
  # devices (same numbers, draw by draw); "draws=4,clients=2" also each draw's clients.
  c.mesh = ""
  # One or more comma-separated specs; '+' chains pre-aggregators before a rule.
  c.aggregator = "mean,trimmed_mean,geometric_median,nnm+trimmed_mean"
  c.aggregator_options = _options_of(aggregators.names(), aggregators.options,
                                     aggregators.option_domains)
  # Centered clipping's τ as the published code gives it (Karimireddy et al. clip momentum
  # buffers m = βm + g; τ = 10 there): converted to this simulator's update units at build time
  # (τ·client_lr·(1 − β)·local_steps: 0.5 in the default job). In update units, τ = 10 clipped
  # no honest update of the default job, so "centered clipping" numbers were the mean's.
  c.aggregator_options.centered_clipping.tau_units = "published_momentum"
  # What the faulty clients of a draw do: an attack or an inadvertent fault by name (every faulty
  # client runs it), or a mixed population 'label_noise:0.6,alie:0.4' (each faulty client runs
  # behaviour k with probability π_k, drawn once per draw; see attacks.parse_population).
  c.attack = "alie"
  # ALIE's z: None or nan (settable from the command line) means z from n and the realized b.
  c.attack_options = _options_of(attacks.names(), attacks.options, attacks.option_domains)
  # μ_H: one of honest_sets.names(), or "worst_case" (the worst subset of size n − f).
  c.honest_set = "bernoulli"
  c.honest_set_options = _options_of(honest_sets.names(), honest_sets.config_options,
                                     honest_sets.option_domains)
  c.honest_set_options.bernoulli.p_per_client = config_dict.placeholder(tuple)
  c.honest_set_options.worst_case = ml_collections.ConfigDict({
      # The worst case: max over |S| = n − f of the mean of `criterion` over `seeds` trainings
      # per candidate (common seeds for all candidates; searched per aggregator): "final_loss"
      # (honest loss at θ_T), "holdout_loss", "honest_error" / "holdout_error" (1 − accuracy),
      # "excess_loss" (L_S(θ_T) − L_S*, convex tasks), "theory_error" (theory.report's error);
      # see worst_case.CRITERIA. The sets tied with the top then get more seeds, doubling up to
      # `max_seeds`, until the top's lead over each passes a one-sided paired t-test at
      # `separation_confidence`; the pick is re-measured on `fresh_seeds` other seeds (the
      # search's optimism reported).
      # "heterogeneity": a cheap proxy, not a loss maximum: the set with the largest var_S of the
      # clients' gradients at the initial model (closed form, no training).
      # Exhaustive over the C(n, f) sets when C(n, f) <= exhaustive_limit (seeds × C(n, f)
      # trainings), else greedy + swaps (at most Σ_{k<f}(n − k) + max_sweeps·f·(n − f) sets).
      "criterion": "final_loss", "exhaustive_limit": 500, "max_sweeps": 5,
      "seeds": 4, "max_seeds": 16, "separation_confidence": 0.95, "fresh_seeds": 8})
  # The client graph of graph-based μ_H (graph_copula, ising, cascade); see graphs.build.
  c.graph = ml_collections.ConfigDict({
      "kind": "ring", "edges": config_dict.placeholder(tuple), "p": 0.1,
      "width": config_dict.placeholder(int), "block_sizes": config_dict.placeholder(tuple),
      "p_in": 0.5, "p_out": 0.05, "k": 2, "seed": 0})
  # Extra reference runs: the honest optimum L_S* of every draw (for the realized-honest excess
  # L_S(θ̂_S) − L_S*), and the oracle trained on the exact expected objective Σ w_i L_i
  # (independent μ_H only).
  c.estimators = ml_collections.ConfigDict({"honest_optimum": False, "oracle": False})
  # What the server believes about who fails (fedjax_robust.server_prior): "none", "mu_h" (the
  # law drawing the honest sets) or "marginals" (independent p_per_client); `scale` multiplies
  # its corruption probabilities (misspecification). declared_f "quantile": f is the
  # (1 − delta)-quantile of b under the prior instead of config.f; weights "reliability"
  # (1 − p_i) or "expected_objective" (w_i = E[1{i∈S}/|S|]) for the weighted rules. `permuted`:
  # the prior attached to the wrong clients (a fixed relabelling; misspecification).
  # `communities`: the groups cluster_aggregate finds in a correlated, non-clustered prior.
  c.server_prior = ml_collections.ConfigDict({
      "kind": "none", "p_per_client": config_dict.placeholder(tuple), "scale": 1.0,
      "permuted": False, "declared_f": "config", "delta": 0.05, "weights": "none",
      "communities": 5})
  # Keep only draws of μ_H whose realized b satisfies a condition (rejection, per draw):
  # "b_le_f" (the declared f holds), "b_eq_f" (exactly f Byzantine clients, placed by μ_H: the
  # expected case beside the worst case at the same b), "honest_majority" (b < n/2), "none".
  c.draw_condition = "none"
  # Where the clusters law (honest_set='clusters') takes its clusters from: "options"
  # (honest_set_options.clusters.assignment, or num_clusters consecutive blocks) or "data" (the
  # data set's natural groups: shakespeare's plays, so a corrupted cluster is a play).
  c.cluster_assignment = "options"
  # What the tables and summaries show: the interval beside each mean ("bca" or "percentile"
  # bootstrap, or "normal"), the bootstrap's resamples, and the paired comparisons: "" = every
  # aggregator against the first (and against the honest-only baseline when
  # estimators.honest_optimum is on), "none", or comma-separated pairs "a:b" (a − b).
  # `tensorboard`: also write per-round scalars (mean and quantiles over draws of the loss and
  # accuracy, per rule) to workdir/tensorboard (the optional extra `tensorboard`: tensorboardX).
  c.report = ml_collections.ConfigDict({"interval": "bca", "bootstrap_resamples": 4999,
                                        "compare": "", "tensorboard": False})
  # Checkpoints inside an aggregator's run (with a workdir): every `every_rounds` rounds (a
  # multiple of training.eval_every; 0: none) the chunk's run state and the metrics so far are
  # saved (orbax, atomically, the last two kept) to workdir/checkpoints/<spec>; a rerun resumes
  # from the last one, bit-identically. They change no number (not in the run's fingerprint).
  c.checkpoint = ml_collections.ConfigDict({"every_rounds": 0})
  c.model = "mlp"
  c.model_options = ml_collections.ConfigDict({
      "linear_regression": {}, "logistic": {}, "mlp": {"hidden": (32,)},
      "cnn": {"features": (16, 32), "dense": 64},
      # Text models (data.name='shakespeare'): a decoder-only character transformer (LoRA
      # adapters of rank lora_rank > 0 on a pretrained base: pretraining.enabled) and LEAF's
      # two-layer LSTM.
      "char_transformer": {"layers": 1, "width": 32, "heads": 2, "mlp_ratio": 4,
                           "context": config_dict.placeholder(int), "lora_rank": 0,
                           "lora_alpha": config_dict.placeholder(float)},
      "char_lstm": {"embed": 8, "hidden": 256, "layers": 2},
  })
  # A base model pretrained centrally on text no client holds (shakespeare: the plays of
  # data.shakespeare.BASE_PLAYS), which every client starts from: fine-tuned whole, or through
  # LoRA adapters (model_options.char_transformer.lora_rank > 0) with the base frozen. Adam,
  # `steps` minibatches of `batch_size` windows, learning rate `lr`, over at most
  # `max_examples` windows (0: all). Cached in `cache_dir` (None: $FEDJAX_ROBUST_CACHE/
  # pretrained or ~/.cache/fedjax_robust/pretrained) by what makes it.
  c.pretraining = ml_collections.ConfigDict({
      "enabled": False, "steps": 2000, "batch_size": 64, "lr": 3e-3, "max_examples": 0,
      "cache_dir": config_dict.placeholder(str)})
  c.data = ml_collections.ConfigDict({
      "name": "digits", "data_dir": config_dict.placeholder(str),
      "partition": "dirichlet", "alpha": 1.0, "shards_per_client": 2, "gamma": 0.5,
      "min_size": 10, "test_fraction": 0.2,
      "synthetic_examples_per_client": 100, "synthetic_dim": 60, "synthetic_num_classes": 10,
      "synthetic_alpha": 1.0, "synthetic_beta": 1.0,
      # The synthetic task: "classification", or "regression" (least squares: real targets
      # y = x·w_i + b_i + noise of std synthetic_noise, for model="linear_regression").
      "synthetic_task": "classification", "synthetic_noise": 0.1,
      # A distinct group (issue 29) of the first group_size clients (0: none), so an honest
      # set's heterogeneity depends on how many of them it holds: on the synthetic source they
      # label with a model shifted by synthetic_group_shift along one shared direction; with
      # partition "label_groups" they hold the examples of group_labels, the others the rest.
      "group_size": 0, "synthetic_group_shift": 0.0, "group_labels": (),
      # Share of each client's examples held out of training (⌊fraction·m_i⌋, at least 1 of a
      # client with m_i >= 2, never all): the honest_holdout_* metrics are measured on them.
      # 0: no held-out split (honest_* metrics are then in-sample only).
      "holdout_fraction": 0.0,
      # The server's root data set for rules that compare with the server's own update
      # (FLTrust): this many examples taken from the test split (which keeps the rest); 0: none.
      "root_examples": 0,
      # data.name='shakespeare' (issue 31): clients are speaking roles (play, speaker) of the
      # plays no base model is pretrained on; an example is a window of `window` characters and
      # the next character. Roles of at least `min_chars` characters are eligible, chosen
      # "largest" first or at "random" (seed); `max_examples_per_client` caps a client's
      # training windows (0: all), `max_test_examples` the pooled global test split.
      "shakespeare": {"window": 80, "min_chars": 1000, "selection": "largest",
                      "max_examples_per_client": 0, "max_test_examples": 2000},
      # data.name='cifar_shape' (issue 37): generated 32×32×3 images in 10 classes, for CNNs at
      # CIFAR-10's shape offline (data.sources.load_cifar_shape): fixed split sizes
      # (test_fraction does not apply), the class-independent clutter field's amplitude relative
      # to the class template, and the std of the pixel noise.
      "cifar_shape": {"train_examples": 6000, "test_examples": 1000, "clutter": 2.0,
                      "noise": 0.1},
  })
  c.training = ml_collections.ConfigDict({
      "num_rounds": 200, "eval_every": 10, "local_steps": 1, "batch_size": 32,
      "client_lr": 0.5, "client_momentum": 0.9,
      # Client sampling: m clients per round, uniformly without replacement (0: all n; else
      # 2f < m <= n: the declared f applies to the m sampled, and the rules see only them).
      "clients_per_round": 0,
      # Durability of a backdoor: the faulty clients follow their behaviour in rounds
      # [0, attack_rounds) and act as honest clients after (0: every round); the evaluations
      # after round attack_rounds measure how long the backdoor survives.
      "attack_rounds": 0,
      # How the m clients of a round are drawn: "fixed" (m of n without replacement) or
      # "poisson" (each client independently with probability m/n; the rules see the round's
      # sample as the clients present; central DP is then amplified under add/remove adjacency).
      "client_sampling": "fixed",
      # Local work per round: local_steps K minibatches drawn with replacement, or (epochs >= 1)
      # E epochs of shuffled minibatches without replacement over the client's own data.
      "local_epochs": 0,
      # "momentum_gradient": worker momentum kept across rounds (D-SGD, RESAM); "model_delta":
      # FedAvg (the local momentum restarts at zero each round). Both send θ − θ̄_i, θ̄_i the
      # average of the last `tail_average` local iterates (1: the last one).
      "client_update": "momentum_gradient", "tail_average": 1,
      # The clients' learning rate over rounds: client_lr × an optax schedule.
      "client_lr_schedule": "constant",
      "client_lr_schedule_options": {k: dict(v) for k, v in local_training.LR_SCHEDULES.items()
                                     if v},
      # Personalization (needs data.holdout_fraction > 0: each client is measured on its own
      # held-out split): "personal_head" keeps the model's output layer per client, trained
      # locally and never sent (FedPer); fine_tune_steps > 0 measures every client's model after
      # that many full-batch local steps on its own data (honest_finetuned_holdout_*).
      "personalization": "none", "fine_tune_steps": 0,
      # Any optax optimizer by name (server_optimizers.names()), its options below;
      # server_momentum is sgd's momentum.
      "server_optimizer": "sgd", "server_lr": 1.0, "server_momentum": 0.0,
      "server_optimizer_options": {name: server_optimizers.options(name)
                                   for name in server_optimizers.names()},
      # Pass each client's sample count to the aggregator as its weight (mean, trimmed_mean
      # and geometric_median have a weighted form).
      "weighted_aggregation": False,
      # λ of an ℓ2 term λ/2‖θ‖² in every client's loss (makes logistic regression strongly
      # convex with μ = λ; the reported losses include it).
      "l2": 0.0,
  })
  # Differential privacy (fedjax_robust.privacy): kind "client" clips every sent update to L2
  # norm `clip` and adds N(0, (noise_multiplier·clip)²) noise per coordinate, on the client,
  # before the attack sees it; kind "example" (DP-SGD) does so to each example's gradient inside
  # every local step, on Poisson-sampled minibatches of expected size training.batch_size, the
  # noisy sum divided by it. ε at `delta` for the run by dp-accounting's `accountant` (for
  # "example": the client with the fewest examples). target_epsilon > 0 sets noise_multiplier to
  # the smallest σ reaching it.
  # Kind "central": a trusted server clips every received update to `clip`, runs the rule and
  # adds N(0, (noise_multiplier·Δ)²) once, Δ the rule's sensitivity to one client
  # (aggregators/sensitivity.py); amplified by client sampling. Kind "distributed": secure
  # aggregation over groups (secure_aggregation.group_size = s) and each client adds a share
  # N(0, (noise_multiplier·2·clip)²/s) of its group's noise; no amplification (the server knows
  # who takes part). adaptive_clip: the clip follows the target_quantile of the update norms
  # (Andrew et al. 2021: geometric steps of clip_lr, the count noised with std count_noise, 0:
  # m/20 for kind 'central', B/20 for 'example'; required for 'client'); tree: DP-FTRL's
  # tree-aggregated central noise, one tree every tree_restart rounds (0: one tree).
  c.privacy = ml_collections.ConfigDict({
      "kind": "none", "clip": 1.0, "noise_multiplier": 1.0, "target_epsilon": 0.0,
      "delta": 1e-5, "accountant": "pld", "adaptive_clip": False, "target_quantile": 0.5,
      "clip_lr": 0.2, "count_noise": 0.0, "tree": False, "tree_restart": 0})
  # Secure aggregation (Bonawitz et al. 2017) simulated: every round the server sees only the
  # means of random groups of group_size of the round's clients (one secure sum per group) and
  # the rule runs over the group means (f unchanged: a Byzantine client spoils one group). 0: off.
  c.secure_aggregation = ml_collections.ConfigDict({"group_size": 0})
  # Compressed updates (fedjax_robust.compression): what every client sends. kind "top_k",
  # "random_k" (unbiased, d/k-scaled), "shared_random_k" (the same coordinates for all clients),
  # "qsgd" (s = levels), "sign" (scaled sign; rule "majority_vote" is signSGD's vote); k
  # coordinates of the sparsifiers (0: ⌈ratio·d⌉); error feedback for top_k and sign;
  # aggregate_in "k": with shared_random_k the rule works on the k shared coordinates.
  c.compression = ml_collections.ConfigDict({
      "kind": "none", "k": 0, "ratio": 0.1, "levels": 4, "error_feedback": False,
      "aggregate_in": "d"})
  # Theory beside experiment (fedjax_robust.theory): the heterogeneity (G, B) of every draw's
  # honest set along training, the attack's (f, κ) ratio on the submitted vectors, the robust
  # D-GD bound per draw and its tightness. Costs one full-batch gradient per client at every
  # round (a (G, B) certificate needs every round's pair), and a Hessian power iteration at the
  # final model.
  # On convex tasks `objectives` also solves min_θ E_S L_S(θ) and min_θ max_{|S|=n−f} L_S(θ).
  c.theory = ml_collections.ConfigDict({"enabled": True, "objectives": True})
  return c


# The declared domain of every key of `base_config()` that is not an option of a registered
# name (those are declared in the registries: aggregators, attacks, honest_sets, models).
CONFIG_DOMAINS: dict[str, D.Domain] = {
    "seed": D.NONNEGATIVE_INT,
    "num_clients": D.Int(2),
    "f": D.NONNEGATIVE_INT,
    "num_samples": D.POSITIVE_INT,
    "num_samples_per_chunk": D.Int(0, note="0: as many as fit in memory_budget_gb"),
    "memory_budget_gb": D.POSITIVE,
    "mesh": D.Domain("str", note="'' (one device), 'draws', 'draws=D' or 'draws=D,clients=C'"),
    "aggregator": D.Domain("str", note="comma-separated specs such as 'nnm+trimmed_mean'"),
    "attack": D.Domain("str", note="an attack or fault name, or a mixture 'name:p,name:p' "
                       "(see attacks.parse_population)"),
    "honest_set": D.Choice(*honest_sets.names(), "worst_case"),
    "honest_set_options.bernoulli.p_per_client": D.Tuple(D.PROBABILITY, 1, optional=True,
                                                         note="one per client"),
    "honest_set_options.worst_case.criterion": D.Choice(*WORST_CASE_CRITERIA),
    "honest_set_options.worst_case.exhaustive_limit": D.POSITIVE_INT,
    "honest_set_options.worst_case.max_sweeps": D.NONNEGATIVE_INT,
    "honest_set_options.worst_case.seeds": D.Int(
        1, note="trainings per candidate set, common to all candidates (not the proxy)"),
    "honest_set_options.worst_case.max_seeds": D.Int(
        1, note=">= seeds; the most seeds of a set tied with the top (max_seeds = seeds: R "
        "fixed)"),
    "honest_set_options.worst_case.separation_confidence": D.Float(
        0.5, 1, low_open=True, high_open=True,
        note="level of the one-sided paired t-test the top set's lead must pass"),
    "honest_set_options.worst_case.fresh_seeds": D.Int(
        2, note="trainings re-measuring the pick on seeds the search did not use (not the "
        "proxy; at least 2 for a CI)"),
    "graph.kind": D.Choice(*graphs.KINDS),
    "graph.edges": D.Tuple(D.Tuple(D.NONNEGATIVE_INT, 2), optional=True,
                           note="pairs (i, j) of client indices"),
    "graph.p": D.PROBABILITY,
    "graph.width": D.Int(1, optional=True),
    "graph.block_sizes": D.Tuple(D.POSITIVE_INT, 1, optional=True),
    "graph.p_in": D.PROBABILITY,
    "graph.p_out": D.PROBABILITY,
    "graph.k": D.POSITIVE_INT,
    "graph.seed": D.NONNEGATIVE_INT,
    "estimators.honest_optimum": D.Bool(),
    "estimators.oracle": D.Bool(),
    "server_prior.kind": D.Choice(*server_prior.KINDS),
    "server_prior.p_per_client": D.Tuple(D.PROBABILITY, 1, optional=True,
                                         note="one per client; kind='marginals'"),
    "server_prior.scale": D.NONNEGATIVE,
    "server_prior.permuted": D.Bool(),
    "server_prior.communities": D.Int(2, note="<= n"),
    "server_prior.declared_f": D.Choice(*server_prior.DECLARED_F),
    "server_prior.delta": D.Float(0, 1, low_open=True, high_open=True),
    "server_prior.weights": D.Choice(*server_prior.WEIGHTS),
    "draw_condition": D.Choice(*honest_sets.CONDITIONS),
    "cluster_assignment": D.Choice("options", "data"),
    "privacy.kind": D.Choice(*privacy.KINDS),
    "privacy.clip": D.Float(0, low_open=True, note="L2 norm every sent update (kind 'client') "
                            "or every example's gradient (kind 'example') is clipped to"),
    "privacy.noise_multiplier": D.Float(0, note="σ: noise std σ·clip per coordinate"),
    "privacy.target_epsilon": D.Float(0, note="0: use noise_multiplier"),
    "privacy.delta": D.Float(0, 1, low_open=True, high_open=True),
    "privacy.accountant": D.Choice(*privacy.ACCOUNTANTS),
    "privacy.adaptive_clip": D.Bool(),
    "privacy.target_quantile": D.Float(0, 1, low_open=True, high_open=True,
                                       note="γ: the share of update norms below the clip"),
    "privacy.clip_lr": D.Float(0, low_open=True, note="η_C: log-clip step per round"),
    "privacy.count_noise": D.Float(0, note="σ_b; 0: m/20 (central), B/20 (example)"),
    "privacy.tree": D.Bool(),
    "privacy.tree_restart": D.Int(0, note="rounds per tree; 0: one tree"),
    "secure_aggregation.group_size": D.Int(0, note="0: off; else 2 <= s dividing m"),
    "compression.kind": D.Choice(*compression.KINDS),
    "compression.k": D.Int(0, note="coordinates sent by top_k/random_k/shared_random_k; 0: "
                           "⌈ratio·d⌉; at most d"),
    "compression.ratio": D.Float(0, 1, low_open=True, note="k/d when k is 0"),
    "compression.levels": D.POSITIVE_INT,
    "compression.error_feedback": D.Bool(),
    "compression.aggregate_in": D.Choice(*compression.SPACES, note="'k': shared_random_k only"),
    "report.interval": D.Choice(*evaluation.INTERVALS),
    "report.bootstrap_resamples": D.Int(100, note="bootstrap resamples per interval"),
    "report.compare": D.Domain("str", note="'' (each against the first), 'none', or pairs "
                               "'a:b,c:d' of aggregator specs ('honest_only' for the baseline)"),
    "report.tensorboard": D.Bool(),
    "checkpoint.every_rounds": D.Int(0, note="0: none; else a multiple of training.eval_every"),
    "model": D.Choice(*models.names()),
    "data.name": D.Choice(*data_lib.NAMES),
    "data.data_dir": D.Domain("str", optional=True),
    "data.partition": D.Choice(*data_lib.PARTITIONERS),
    "data.alpha": D.POSITIVE,
    "data.shards_per_client": D.POSITIVE_INT,
    "data.gamma": D.PROBABILITY,
    "data.min_size": D.POSITIVE_INT,
    "data.test_fraction": D.Float(0, 1, low_open=True, high_open=True),
    "data.synthetic_examples_per_client": D.Int(2),
    "data.synthetic_dim": D.POSITIVE_INT,
    "data.synthetic_num_classes": D.Int(2),
    "data.synthetic_alpha": D.NONNEGATIVE,
    "data.synthetic_beta": D.NONNEGATIVE,
    "data.synthetic_task": D.Choice(*data_lib.TASKS, note="regression: data.name='synthetic'"),
    "data.synthetic_noise": D.Float(0, note="std of the regression targets' noise"),
    "data.group_size": D.Int(0, note="clients 0..g−1; < num_clients; 0: no group"),
    "data.synthetic_group_shift": D.NONNEGATIVE,
    "data.group_labels": D.Tuple(D.NONNEGATIVE_INT, note="labels of the group's clients "
                                 "(partition 'label_groups')"),
    "data.holdout_fraction": D.Float(0, 1, high_open=True,
                                     note="share of each client's examples held out; 0: none"),
    "data.root_examples": D.NONNEGATIVE_INT,
    "pretraining.enabled": D.Bool(),
    "pretraining.steps": D.POSITIVE_INT,
    "pretraining.batch_size": D.POSITIVE_INT,
    "pretraining.lr": D.LEARNING_RATE,
    "pretraining.max_examples": D.Int(0, note="0: every window of the base text"),
    "pretraining.cache_dir": D.Domain("str", optional=True),
    "data.shakespeare.window": D.Int(2, note="characters of context per example"),
    "data.shakespeare.min_chars": D.POSITIVE_INT,
    "data.shakespeare.selection": D.Choice("largest", "random"),
    "data.shakespeare.max_examples_per_client": D.Int(0, note="0: every window"),
    "data.shakespeare.max_test_examples": D.POSITIVE_INT,
    "data.cifar_shape.train_examples": D.Int(10, note="at least one per class"),
    "data.cifar_shape.test_examples": D.Int(10, note="at least one per class"),
    "data.cifar_shape.clutter": D.Float(0, note="class-independent field / class template"),
    "data.cifar_shape.noise": D.Float(0, note="std of the pixel noise"),
    "training.num_rounds": D.POSITIVE_INT,
    "training.eval_every": D.Int(1, note="num_rounds must be a multiple"),
    "training.local_steps": D.POSITIVE_INT,
    "training.batch_size": D.Int(note="<= 0: all of a client's data per step"),
    "training.client_lr": D.LEARNING_RATE,
    "training.client_momentum": D.Float(0, 1, high_open=True),
    "training.clients_per_round": D.Int(0, note="0: all clients; else 2f < m <= num_clients"),
    "training.attack_rounds": D.Int(0, note="0: every round; else < num_rounds"),
    "training.client_sampling": D.Choice(*privacy.CLIENT_SAMPLINGS),
    "training.local_epochs": D.Int(0, note="0: training.local_steps steps instead"),
    "training.client_update": D.Choice(*local_training.CLIENT_UPDATES),
    "training.tail_average": D.Int(1, note="1: the last local iterate"),
    "training.client_lr_schedule": D.Choice(*local_training.LR_SCHEDULES),
    "training.personalization": D.Choice(*PERSONALIZATIONS),
    "training.fine_tune_steps": D.Int(0, note="0: no local fine-tuning"),
    "training.client_lr_schedule_options.cosine.alpha": D.PROBABILITY,
    "training.client_lr_schedule_options.exponential.decay_rate": D.Float(0, 1, low_open=True),
    "training.client_lr_schedule_options.exponential.transition_rounds": D.POSITIVE_INT,
    "training.client_lr_schedule_options.step.boundaries": D.Tuple(D.POSITIVE_INT, 1),
    "training.client_lr_schedule_options.step.factor": D.POSITIVE,
    "training.server_optimizer": D.Choice(*server_optimizers.names()),
    "training.server_lr": D.LEARNING_RATE,
    "training.server_momentum": D.Float(0, 1, high_open=True),
    "training.weighted_aggregation": D.Bool(),
    "training.l2": D.NONNEGATIVE,
    "theory.enabled": D.Bool(),
    "theory.objectives": D.Bool(),
}


def option_domains() -> dict[str, D.Domain]:
  """Every option key of the config (dotted) with its declared domain, from the registries."""
  out = {}
  for name in aggregators.names():
    out.update({f"aggregator_options.{name}.{k}": d
                for k, d in aggregators.option_domains(name).items()})
  for name in attacks.names():
    out.update({f"attack_options.{name}.{k}": d for k, d in attacks.option_domains(name).items()})
  for name in honest_sets.names():
    out.update({f"honest_set_options.{name}.{k}": d
                for k, d in honest_sets.option_domains(name).items()})
  for name in models.names():
    out.update({f"model_options.{name}.{k}": d for k, d in models.OPTION_DOMAINS[name].items()})
  for name in server_optimizers.names():
    out.update({f"training.server_optimizer_options.{name}.{k}": d
                for k, d in server_optimizers.option_domains(name).items()})
  return out


def all_domains() -> dict[str, D.Domain]:
  """Every key of `base_config()` (dotted) with its declared domain."""
  return {**CONFIG_DOMAINS, **option_domains()}


def _get(config, dotted: str):
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def _unknown_keys(config: Mapping[str, Any], schema: Mapping[str, Any], prefix: str = ""):
  for key, value in config.items():
    if key not in schema:
      yield prefix + key, key, sorted(schema)
    elif isinstance(schema[key], Mapping) and isinstance(value, Mapping):
      yield from _unknown_keys(value, schema[key], f"{prefix}{key}.")


def aggregator_specs(config) -> list[str]:
  return [s.strip() for s in config.aggregator.split(",") if s.strip()]


_COMPUTE = object()  # an argument left to be computed from the config

HONEST_ONLY = "honest_only"  # the baseline without Byzantine clients, in `report.compare`


def comparison_pairs(config) -> list[tuple[str, str]]:
  """The paired comparisons (a, b) the tables show, meaning a − b on the same draws, from
  `report.compare` (see base_config); raises ConfigError for a name that is not a configured
  aggregator spec (or `honest_only` without estimators.honest_optimum)."""
  specs = aggregator_specs(config)
  text = config.report.compare.strip()
  if text == "none":
    return []
  allowed = specs + ([HONEST_ONLY] if config.estimators.honest_optimum else [])
  if not text:
    pairs = [(s, specs[0]) for s in specs[1:]]
    if config.estimators.honest_optimum:
      pairs += [(s, HONEST_ONLY) for s in specs]
    return pairs
  pairs = []
  for item in text.split(","):
    parts = [x.strip() for x in item.split(":")]
    if len(parts) != 2 or not all(parts):
      raise ConfigError(f"report.compare={text!r}: {item!r} is not a pair 'a:b' of aggregator "
                        "specs; allowed: '', 'none', or comma-separated pairs 'a:b'.")
    for name in parts:
      if name not in allowed:
        raise ConfigError(
            f"report.compare={text!r}: {name!r} is not a configured aggregator; allowed: "
            f"{', '.join(allowed)}"
            + ("" if config.estimators.honest_optimum else
               f" ({HONEST_ONLY!r} needs estimators.honest_optimum=True)") + ".")
    pairs.append(tuple(parts))
  return pairs


def honest_set_spec(config) -> dict[str, Any]:
  """The sampler spec of `config.honest_set` (not for "worst_case")."""
  opts = dict(config.honest_set_options.get(config.honest_set, {}))
  if config.honest_set == "bernoulli":
    per_client = opts.pop("p_per_client")
    opts["p"] = tuple(per_client) if per_client is not None else opts["p"]
  return {"name": config.honest_set, **opts}


def sampler_spec(config) -> dict[str, Any] | None:
  """The μ_H sampler's spec (`honest_set_spec`) with its graph when the law is graph-based and
  the graph does not need the data (graph.kind 'data_similarity' is built from the data:
  `Job.honest_set_for`); None for the worst case. A Job holds it (`Job.sampler`): this is
  the one place it is derived."""
  if config.honest_set == "worst_case":
    return None
  spec = honest_set_spec(config)
  if config.cluster_assignment == "data":
    if config.honest_set != "clusters":
      raise ConfigError(f"cluster_assignment='data' gives the clusters law its clusters, and "
                        f"honest_set={config.honest_set!r}; allowed: honest_set='clusters' "
                        "with it, or cluster_assignment='options'.")
    if spec.get("assignment") is not None:
      raise ConfigError("cluster_assignment='data' and honest_set_options.clusters.assignment "
                        "are both set; allowed: one of them.")
    spec["assignment"] = natural_groups(config)
  if config.honest_set in honest_sets.GRAPH_BASED and config.graph.kind != "data_similarity":
    spec["adjacency"] = make_adjacency(config)
  return spec


def server_prior_spec(config, sampler: Any = _COMPUTE) -> dict[str, Any] | None:
  """The honest_sets spec of the server's prior (`config.server_prior`; None for kind 'none'),
  misspecified by its `scale` and `permuted` (`server_prior.prior_law`). `sampler`: μ_H's spec
  when already derived (`sampler_spec`)."""
  prior = config.server_prior
  law = None
  if prior.kind == "mu_h":
    if config.honest_set == "worst_case":
      raise ConfigError("server_prior.kind='mu_h' needs a random μ_H; honest_set='worst_case' is "
                        "not a law. Allowed: kind='marginals' or 'none' with the worst case.")
    if config.honest_set in honest_sets.GRAPH_BASED and config.graph.kind == "data_similarity":
      raise ConfigError(
          "server_prior.kind='mu_h' with a graph law needs the graph before the data is "
          "loaded; graph.kind='data_similarity' is built from the data. Allowed: another "
          "graph.kind, or server_prior.kind='marginals'.")
    law = dict(sampler_spec(config) if sampler is _COMPUTE else sampler)
  return server_prior.prior_law(prior.kind, config.num_clients,
                                p_per_client=prior.p_per_client, law=law, scale=prior.scale,
                                permuted=prior.permuted)


def resolve_server_prior(config, law: dict[str, Any] | None = None):
  """The config the run uses (f replaced by the prior's quantile when
  `server_prior.declared_f='quantile'`) and the prior's description for the log and the summary
  (`server_prior.resolve`; None for kind 'none'). `law`: the prior's spec when already computed
  (`server_prior_spec`)."""
  prior = config.server_prior
  if prior.kind == "none":
    return config, None
  law = server_prior_spec(config) if law is None else law
  info = server_prior.resolve(law, config.num_clients, config.f,
                              kind=prior.kind, scale=prior.scale, declared_f=prior.declared_f,
                              delta=prior.delta, weights=prior.weights)
  return with_prior_f(config, info), info


def with_prior_f(config, info: Mapping[str, Any] | None):
  """`config` with the f its server prior sets (`info["f"]`, from `resolve_server_prior`), a
  copy; `config` itself where the prior sets none."""
  if not info or "f" not in info:
    return config
  config = config.copy_and_resolve_references()
  config.f = info["f"]
  return config


def natural_groups(config) -> tuple[int, ...]:
  """The data set's natural group of every client (shakespeare: the index of the client's play),
  for `cluster_assignment='data'`: the clusters law follows the data's own
  structure. Read from the data set's client selection alone (no training arrays); ConfigError
  for a data set without natural groups."""
  d = config.data
  if not data_lib.is_text(d.name):
    raise ConfigError(f"cluster_assignment='data' takes the data set's "
                      f"natural groups, and data.name={d.name!r} has none; allowed: "
                      f"data.name in {list(data_lib.TEXT)}, or an assignment tuple (one cluster "
                      "id per client), or None (consecutive blocks).")
  try:
    return data_lib.natural_groups(d.name, config.num_clients, seed=config.seed,
                                   text_options=tuple(sorted(text_options(config).items())))
  except ValueError as e:
    raise ConfigError(f"data.name={d.name!r} with num_clients={config.num_clients}: {e}"
                      ) from None


def text_options(config) -> dict[str, Any]:
  """`data.shakespeare` as `data.shakespeare.load` takes it (0 examples: no cap)."""
  t = config.data.shakespeare
  return {"window": int(t.window), "min_chars": int(t.min_chars), "selection": t.selection,
          "max_examples_per_client": int(t.max_examples_per_client) or None,
          "max_test_examples": int(t.max_test_examples)}


def source_options(config) -> dict[str, Any] | None:
  """`data.cifar_shape` as `data.sources.load_cifar_shape` takes it, when data.name is
  'cifar_shape'; None for every other data set."""
  if config.data.name != "cifar_shape":
    return None
  g = config.data.cifar_shape
  return {"train_examples": int(g.train_examples), "test_examples": int(g.test_examples),
          "clutter": float(g.clutter), "noise": float(g.noise)}


def client_features(fed: data_lib.FederatedData) -> np.ndarray:
  """What a data-similarity graph compares: the data set's own client profiles when it has them
  (shakespeare: character-trigram frequencies), else the clients' label distributions."""
  if fed.client_features is not None:
    return np.asarray(fed.client_features, np.float64)
  return label_distributions(fed)


def label_distributions(fed: data_lib.FederatedData) -> np.ndarray:
  """Each client's label histogram, normalized, `[n, C]` (classification data only)."""
  y = np.asarray(fed.train.y)
  valid = np.asarray(data_lib.valid_mask(fed.train.counts, y.shape[1]))
  hist = np.stack([np.bincount(y[i][valid[i]], minlength=fed.num_classes) for i in range(len(y))])
  return hist / hist.sum(1, keepdims=True)


def make_adjacency(config, fed: data_lib.FederatedData | None = None) -> np.ndarray:
  g = config.graph
  return graphs.build(g.kind, config.num_clients, edges=g.edges, p=g.p, width=g.width,
                      block_sizes=g.block_sizes, p_in=g.p_in, p_out=g.p_out, k=g.k,
                      features=None if fed is None else client_features(fed), seed=g.seed)


def make_compression(config) -> compression.Compression:
  """The clients' compressor (`compression.Compression`); a combination it refuses (error
  feedback with an unbiased compressor, aggregate_in='k' without shared coordinates) is a
  ConfigError naming the keys."""
  c = config.compression
  try:
    return compression.Compression(kind=c.kind, k=int(c.k), ratio=float(c.ratio),
                                   levels=int(c.levels), error_feedback=bool(c.error_feedback),
                                   aggregate_in=c.aggregate_in)
  except ValueError as e:
    raise ConfigError(str(e)) from None


def compression_info(config, num_sent: int) -> dict | None:
  """What the clients send per round under config.compression (None: uncompressed): k, the
  bits of one client and of a round's m senders."""
  spec = make_compression(config)
  if not spec.on:
    return None
  m = config.training.clients_per_round or config.num_clients
  bits = spec.bits(num_sent)
  return {"kind": spec.kind, "d": num_sent, "k": spec.size(num_sent) if spec.sparsifies else None,
          "levels": spec.levels if spec.kind == "qsgd" else None,
          "error_feedback": spec.error_feedback, "aggregate_in": spec.aggregate_in,
          "bits_per_client_round": bits, "bits_per_round": bits * m,
          "uncompressed_bits_per_round": 32 * num_sent * m}


def describe_compression(info: dict) -> str:
  what = {"top_k": "top-k", "random_k": "random-k (×d/k, unbiased)",
          "shared_random_k": "shared random-k (×d/k, the same coordinates for all clients)",
          "qsgd": f"QSGD with s = {info['levels']} levels", "sign": "scaled sign"}[info["kind"]]
  return (f"compression: {what}" + (f", k = {info['k']:,} of d = {info['d']:,}" if info["k"]
                                     else f", d = {info['d']:,}")
          + (", error feedback" if info["error_feedback"] else "")
          + (", the rule aggregates the k shared coordinates" if info["aggregate_in"] == "k"
             else "")
          + f"; {info['bits_per_client_round']:,} bits per client per round, "
          f"{info['bits_per_round']:,} per round ({info['bits_per_round'] / info['uncompressed_bits_per_round']:.3g}× "
          "the uncompressed float32 updates)")


def privacy_fields(config, spec: str | None = None) -> dict:
  """The Simulator's DP settings, none when privacy is off; a target ε must have been resolved
  into noise_multiplier first (`resolve_privacy`). Client-level (`privacy_clip`) or
  example-level (`dp_sgd_clip`) clip and noise multiplier; "distributed": each client's share
  as a client-level mechanism of multiplier 2σ/√s; "central": the server's clip, σ, and the
  rule `spec`'s sensitivity Δ/C (none for the reference run, whose honest-only mean the
  Simulator takes as 2C/|H|; it runs every client every round at the main run's σ, so the ε
  reported is the main run's, not the reference's); adaptive clipping's γ, step and count noise with the update's
  multiplier split from σ (`privacy.adaptive_update_multiplier`); the tree's rounds."""
  p = config.privacy
  if p.kind == "none":
    return {}
  if p.target_epsilon:
    raise ValueError("privacy.target_epsilon is resolved by resolve_privacy before the simulator")
  sigma = float(p.noise_multiplier)
  adaptive = {}
  if p.adaptive_clip:
    count_noise = _count_noise(config)
    # Per round: central (σ, count sensitivity 1); client-level (σ/2 over Δ = 2C, bit 1);
    # DP-SGD per step (σ over the sampled sum's C, count sensitivity 1).
    z = sigma / 2 if p.kind == "client" else sigma
    z_update = privacy.adaptive_update_multiplier(z, count_noise, 1.0)
    sigma = 2 * z_update if p.kind == "client" else z_update
    adaptive = {"adaptive_quantile": float(p.target_quantile), "adaptive_lr": float(p.clip_lr),
                "count_noise": count_noise}
  if p.kind == "central":
    m = config.training.clients_per_round or config.num_clients
    poisson = _poisson(config)
    mean = spec is not None and poisson and aggregators.split_spec(spec) == ["mean"]
    return {"central_clip": float(p.clip), "central_noise": sigma,
            "central_sensitivity": (0.0 if spec is None else sensitivity.central_sensitivity(
                spec, rows=m, f=config.f, poisson=poisson)[0]),
            "central_fixed_denominator": float(m) if mean else 0.0,
            "tree_rounds": (p.tree_restart or config.training.num_rounds) if p.tree else 0,
            **adaptive}
  if p.kind == "distributed":
    sigma = 2 * sigma / config.secure_aggregation.group_size ** 0.5
  prefix = "dp_sgd" if p.kind == "example" else "privacy"
  return {f"{prefix}_clip": float(p.clip), f"{prefix}_noise": sigma, **adaptive}


def _poisson(config) -> bool:
  """Whether the clients of a round are Poisson-sampled (training.client_sampling='poisson'
  with m < n)."""
  t = config.training
  return t.client_sampling == "poisson" and 0 < t.clients_per_round < config.num_clients


def _count_noise(config) -> float:
  """Adaptive clipping's σ_b: privacy.count_noise, or Andrew et al.'s m/20 with m the clients
  of a round (kind 'central') or the expected minibatch B (kind 'example', DP-SGD)."""
  p = config.privacy
  if p.count_noise or p.kind == "client":
    return float(p.count_noise)
  return privacy.default_count_noise(
      config.training.batch_size if p.kind == "example"
      else config.training.clients_per_round or config.num_clients)


def resolve_privacy(config, counts: np.ndarray | None = None):
  """(config, info): with privacy on, the noise multiplier for privacy.target_epsilon (when
  set; the returned config carries it and target 0) and the run's ε at δ from the accountant;
  info is None when privacy is off.

  "client": `privacy.epsilon`, composed over T = training.num_rounds. "example" (DP-SGD) needs
  the clients' training example counts m_i (`counts`, known once the data are loaded): a
  client's T·K local steps at rate q_i = min(1, B/m_i) (`privacy.dp_sgd_epsilon`); ε grows with
  q_i, so ε and the calibration are those of the client with the fewest examples, the largest
  ε of any client."""
  p = config.privacy
  if p.kind == "none":
    return config, None
  rounds = config.training.num_rounds
  sampling = {}  # DP-SGD's: B, q, the fewest examples, K and T·K; central's sampling
  n = config.num_clients
  m = config.training.clients_per_round or n
  if p.kind in ("central", "distributed"):
    # Distributed: the server sees who takes part, so every round is composed (as "none").
    how = ("none" if p.kind == "distributed" or m == n
           else "poisson" if _poisson(config) else "fixed")
    if p.tree:
      restart = p.tree_restart or rounds
      epsilon_of = lambda s: privacy.tree_epsilon(s, rounds, p.delta, restart, p.accountant)
      calibrate = lambda: privacy.tree_noise_for_epsilon(p.target_epsilon, rounds, p.delta,
                                                         restart, p.accountant)
      horizon = f"over {rounds} rounds, one tree per {restart} rounds"
    else:
      kw = dict(sampling=how, num_clients=n, clients_per_round=m)
      epsilon_of = lambda s: privacy.central_epsilon(s, rounds, p.delta, accountant=p.accountant,
                                                     **kw)
      calibrate = lambda: privacy.central_noise_for_epsilon(p.target_epsilon, rounds, p.delta,
                                                            accountant=p.accountant, **kw)
      horizon = f"over {rounds} rounds" + (f", {m} of {n} clients per round" if m < n else "")
    sampling = {"sampling": how, "clients_per_round": m, "num_clients": n,
                "neighbours": privacy.central_neighbours(how)}
    if p.kind == "distributed":
      sampling["group_size"] = config.secure_aggregation.group_size
  elif p.kind == "client":
    epsilon_of = lambda s: privacy.epsilon(s, rounds, p.delta, p.accountant)
    calibrate = lambda: privacy.noise_for_epsilon(p.target_epsilon, rounds, p.delta,
                                                  p.accountant)
    horizon = f"over {rounds} rounds"
  else:
    if counts is None:
      raise ValueError("privacy.kind='example' is resolved with the clients' example counts, "
                       "after the data are loaded")
    counts = np.asarray(counts)
    batch, fewest = int(config.training.batch_size), int(counts.min())
    q = privacy.dp_sgd_rate(batch, fewest)
    local_steps = make_local_training(config).steps(int(counts.max()))
    steps = rounds * local_steps
    sampling = {"batch_size": batch, "sampling_rate": q, "fewest_examples": fewest,
                "local_steps": local_steps, "steps": steps}
    epsilon_of = lambda s: privacy.dp_sgd_epsilon(q, s, steps, p.delta, p.accountant)
    calibrate = lambda: privacy.dp_sgd_noise_for_epsilon(p.target_epsilon, q, steps, p.delta,
                                                         p.accountant)
    horizon = (f"over {rounds} rounds × {local_steps} local steps at sampling rate q = min(1, "
               f"{batch}/{fewest}) = {q:.4g} (B over the fewest examples of a client)")
  sigma = float(p.noise_multiplier)
  if p.target_epsilon:
    low, high = privacy.SIGMA_RANGE[p.kind]
    try:
      sigma = calibrate()
    except ConfigError:
      raise
    except ValueError as e:
      raise ConfigError(f"privacy.target_epsilon={p.target_epsilon!r}: no noise multiplier in "
                        f"[{low:g}, {high:g}] reaches it {horizon} at delta={p.delta:g} ({e})"
                        ) from None
    config = config.copy_and_resolve_references()
    with config.unlocked():
      config.privacy.noise_multiplier = sigma
      config.privacy.target_epsilon = 0.0
  eps = epsilon_of(sigma) if sigma > 0 else float("inf")
  if p.kind == "distributed":  # one member of a group keeps its share back (colludes)
    s = config.secure_aggregation.group_size
    sampling["epsilon_one_withheld"] = (
        privacy.central_epsilon(sigma * ((s - 1) / s) ** 0.5, rounds, p.delta,
                                sampling="none", num_clients=n, clients_per_round=m,
                                accountant=p.accountant) if sigma > 0 else float("inf"))
  if p.adaptive_clip:
    sampling.update(adaptive_clip=True, target_quantile=float(p.target_quantile),
                    clip_lr=float(p.clip_lr), count_noise=_count_noise(config),
                    update_noise_multiplier=privacy_fields(config)[
                        {"central": "central_noise", "example": "dp_sgd_noise"}.get(
                            p.kind, "privacy_noise")])
  if p.kind == "central":
    sampling["sensitivity"] = {
        spec: sensitivity.central_sensitivity(spec, rows=m, f=config.f,
                                              poisson=_poisson(config))[1]
        for spec in aggregator_specs(config)}
    if p.tree:
      sampling["tree_restart"] = p.tree_restart or rounds
  return config, {"kind": p.kind, "clip": float(p.clip), "noise_multiplier": sigma,
                  "delta": float(p.delta), "epsilon": eps, "accountant": p.accountant,
                  "rounds": rounds, "target_epsilon": float(p.target_epsilon) or None,
                  **sampling}


def describe_privacy(info: dict) -> str:
  """One line: what is clipped and noised, σ (and its target), and ε at δ over what."""
  noise = (f"plus N(0, ({info['noise_multiplier']:.4g}·{info['clip']:g})²) per coordinate"
           + (f" (σ set for target ε = {info['target_epsilon']:g})" if info["target_epsilon"]
              else ""))
  accountant = info["accountant"].upper()
  adaptive = ""
  if info.get("adaptive_clip"):
    what = ("each client's per-example clip adapts, step by step, from"
            if info["kind"] == "example" else "the clip adapts from")
    norms = "its examples' gradient norms" if info["kind"] == "example" else "the update norms"
    adaptive = (f"; {what} {info['clip']:g} toward the {info['target_quantile']:g}-quantile of "
                f"{norms} (Andrew et al. 2021: step {info['clip_lr']:g}, "
                f"count noise σ_b = {info['count_noise']:.4g}; σ split between the count and the "
                f"update, whose noise multiplier is {info['update_noise_multiplier']:.4g})")
  if info["kind"] == "central":
    amplified = {
        "fixed": (f"amplified by sampling {info['clients_per_round']} of {info['num_clients']} "
                  "clients without replacement (replace-one adjacency)"),
        "poisson": (f"amplified by Poisson sampling at rate q = {info['clients_per_round']}/"
                    f"{info['num_clients']} (add/remove-one adjacency)"),
        "none": "every client every round"}[info["sampling"]]
    noise_kind = (f"DP-FTRL tree noise (one tree per {info['tree_restart']} rounds, no "
                  "amplification claimed)" if info.get("tree_restart") else amplified)
    rules = "; ".join(info["sensitivity"].values())
    return (f"privacy: central DP, the server clips every update to L2 norm {info['clip']:g}, "
            f"runs the rule and adds N(0, ({info['noise_multiplier']:.4g}·Δ)²) once, Δ the "
            f"rule's sensitivity ({rules}); ε = {info['epsilon']:.4g} at δ = {info['delta']:g} "
            f"over {info['rounds']} rounds, {noise_kind} ({accountant} accountant){adaptive}; "
            "Δ holds the other rows fixed, Byzantine ones included (an attack that reads the "
            "honest updates is a channel this ε does not cover); the honest-only reference "
            "runs at the same σ, its own ε not claimed")
  if info["kind"] == "distributed":
    s = info["group_size"]
    return (f"privacy: distributed DP under secure aggregation over groups of {s}: every client "
            f"clips to L2 norm {info['clip']:g} and adds N(0, ({info['noise_multiplier']:.4g}·2·"
            f"{info['clip']:g})²/{s}) (continuous Gaussian standing in for the discrete one); "
            f"ε = {info['epsilon']:.4g} at δ = {info['delta']:g} over {info['rounds']} rounds, "
            f"against a server that sees the group sums and who takes part (no amplification), "
            f"when every member adds its share; {info['epsilon_one_withheld']:.4g} if one member "
            f"of a group withholds its share ({accountant} accountant)")
  if info["kind"] == "example":
    return (f"privacy: example-level DP (DP-SGD) in every client's local steps, Poisson-sampled "
            f"minibatches of expected size B = {info['batch_size']} (rate q_i = min(1, B/m_i)), "
            f"each example's gradient clipped to L2 norm {info['clip']:g}, {noise}, over B; "
            f"ε = {info['epsilon']:.4g} at δ = {info['delta']:g} for the client with the fewest "
            f"examples (m = {info['fewest_examples']}, q = {info['sampling_rate']:.4g}: the "
            f"largest ε of any client) over T·K = {info['rounds']}·{info['local_steps']} = "
            f"{info['steps']} steps ({accountant} accountant; every round composed, no "
            f"amplification by client sampling claimed){adaptive}")
  return (f"privacy: client-level DP, every sent update clipped to L2 norm {info['clip']:g} "
          f"{noise}; ε = {info['epsilon']:.4g} at δ = {info['delta']:g} over {info['rounds']} "
          f"rounds ({accountant} accountant, local model: no amplification by sampling claimed)"
          f"{adaptive}")


@dataclasses.dataclass(frozen=True)
class Job:
  """A validated configuration and everything derived from it, each computed once, at the edge
  (`resolve`): what the engine and the report take instead of the ConfigDict.

  Reading: `job.training.num_rounds`, `job.num_clients`, `job.f` … read `settings`, the run's
  effective configuration, frozen (an `ml_collections.FrozenConfigDict`: a value cannot be
  changed by a reader; a change is a new Job, `replaced`). Derived, once: `specs` (the
  aggregator specs), `options` (the rules' options as they take them, `aggregator_options`),
  `prior` (the server prior's honest_sets spec; None without one), `prior_info` (what the prior
  sets, `resolve_server_prior`; None without one), `sampler` (the μ_H sampler's spec; None
  for the worst case; a data-similarity graph's adjacency is added from the data,
  `honest_set_for`), `comparisons` (the paired comparisons the tables show), `privacy_info` (σ
  and ε: `with_privacy`, once the data are loaded; None before and without privacy). A derived
  field's name is never a configuration key's (`job.honest_set` is the law's name, as
  configured; `job.privacy` the privacy settings).

  `config` is the configuration as validated, the key of a sweep point; `effective` is it with
  what the job resolves (the prior's quantile f; privacy's σ for a target ε), the key of a
  cached run (`experiment.run_config`) and what the job layer's builders read
  (`make_simulator`, `make_data`)."""
  config: ml_collections.ConfigDict
  specs: tuple[str, ...]
  options: Mapping[str, Mapping[str, Any]]
  prior: Mapping[str, Any] | None
  prior_info: Mapping[str, Any] | None
  sampler: Mapping[str, Any] | None
  comparisons: tuple[tuple[str, str], ...]
  effective: ml_collections.ConfigDict = None
  privacy_info: Mapping[str, Any] | None = None
  settings: ml_collections.FrozenConfigDict = dataclasses.field(init=False, repr=False)

  def __post_init__(self):
    if self.effective is None:
      object.__setattr__(self, "effective",
                         with_prior_f(self.config, self.prior_info).copy_and_resolve_references())
    object.__setattr__(self, "settings", ml_collections.FrozenConfigDict(self.effective))

  def __getattr__(self, name: str):
    settings = self.__dict__.get("settings")  # absent while the dataclass is being built
    if settings is None or name.startswith("__"):
      raise AttributeError(name)
    return getattr(settings, name)

  def replaced(self, values: Mapping[str, Any]) -> "Job":
    """This job with the dotted keys of `values` set in its effective configuration (e.g.
    `{"theory.enabled": True}`: what one computation of the engine needs differently), a new
    Job; the derived fields stay."""
    c = self.effective.copy_and_resolve_references()
    with c.unlocked():
      for dotted, value in values.items():
        *path, leaf = dotted.split(".")
        node = c
        for part in path:
          node = node[part]
        node[leaf] = value
    return dataclasses.replace(self, effective=c)

  def with_privacy(self, counts: np.ndarray | None) -> "Job":
    """This job with privacy resolved (`resolve_privacy`: σ for a target ε, and ε) from the
    clients' training example counts; itself without privacy."""
    effective, info = resolve_privacy(self.effective, counts)
    if info is None:
      return self
    return dataclasses.replace(self, effective=effective, privacy_info=info)

  def law(self, fed: data_lib.FederatedData | None = None) -> honest_sets.Law:
    """μ_H as an object (`honest_sets.law`: sample, count_pmf, marginals, …) over the job's
    clients, its graph built from the data `fed` when it is made from them; not for the worst
    case."""
    return honest_sets.law(self.honest_set_for(fed), self.settings.num_clients)

  def honest_set_for(self, fed: data_lib.FederatedData | None = None) -> dict[str, Any]:
    """The μ_H sampler's spec, with the graph of a graph-based law built from the data when it
    is made from them (graph.kind 'data_similarity'); not for the worst case."""
    if self.sampler is None:
      raise ValueError("honest_set='worst_case' has no sampler spec")
    spec = dict(self.sampler)
    if self.settings.honest_set in honest_sets.GRAPH_BASED and "adjacency" not in spec:
      spec["adjacency"] = make_adjacency(self.effective, fed)
    return spec


def job_of(config) -> Job:
  """`config` as a Job: itself when it is one, else `resolve(config)`."""
  return config if isinstance(config, Job) else resolve(config)


def config_of(config) -> ml_collections.ConfigDict:
  """The ConfigDict a job-layer builder reads: a Job's `effective` configuration, or `config`
  itself."""
  return config.effective if isinstance(config, Job) else config


def resolve(config) -> Job:
  """Validates `config` (stops at once with a `ConfigError` naming the bad key, its value and
  what is allowed, before any data or compile work: every key against its declared domain
  (`all_domains()`), then the constraints between keys) and returns it as a `Job`, with what
  is derived from it computed once."""
  try:
    return _validate(config)
  except ConfigError:
    raise
  except (ValueError, TypeError) as e:  # a check below the config layer: same contract
    raise ConfigError(str(e)) from None


def validate(config) -> Job:
  """`resolve`: the checks, the Job returned for a caller that runs it."""
  return resolve(config)


def _validate(config) -> Job:
  unknown = list(_unknown_keys(config.to_dict(), base_config().to_dict()))
  if unknown:
    dotted, key, allowed = unknown[0]
    raise ConfigError(f"config key {dotted!r} does not exist.{errors.close_matches(key, allowed)}"
                      f" Allowed here: {', '.join(allowed)}.")
  for dotted, domain in all_domains().items():
    value = _get(config, dotted)
    if value is None and dotted.startswith("honest_set_options.") and not domain.optional:
      continue  # a required parameter left unset: reported below if its law is chosen
    domain.check(dotted, value)
  n, f = config.num_clients, config.f
  sharding.check(config.mesh, n)
  make_compression(config)  # its combinations (error feedback, aggregate_in)
  if 2 * f >= n:
    raise ConfigError(f"declared f={f!r} must satisfy 0 <= f < n/2 = {n / 2} "
                      f"(num_clients={n}): robust aggregation needs an honest majority.")
  specs = aggregator_specs(config)
  _validate_rounds(config, specs)
  if not specs:
    raise ConfigError(f"config.aggregator names no aggregator: {config.aggregator!r}.")
  _validate_bucketing(config, specs)
  sampler = sampler_spec(config)
  prior = server_prior_spec(config, sampler)
  options = aggregator_options(config, prior)
  _validate_personalization(config, specs, options)
  for spec in specs:
    agg = aggregators.get(spec, f=f, options=options,
                          weighted=config.training.weighted_aggregation)
    if config.compression.aggregate_in == "k" and jax.tree.leaves(agg.init(4, np.float32)):
      raise ConfigError(f"compression.aggregate_in='k': aggregator {spec!r} keeps a state across "
                        "rounds in the d coordinates, which a rule working on each round's k "
                        "shared coordinates cannot; allowed: aggregate_in='d' with it, or a rule "
                        "without a state.")
    _validate_server_inputs(config, spec, agg)
    if agg.needs_server_update:
      if config.data.root_examples < 1:
        raise ConfigError(f"aggregator {spec!r} compares every update with the server's own "
                          "update on a root data set; set data.root_examples >= 1 (examples "
                          "taken from the test split), got data.root_examples="
                          f"{config.data.root_examples}.")
      continue
    # The rule sees the clients of a round (under Poisson sampling all n rows, the unsampled
    # ones absent).
    rows = n if _poisson(config) else config.training.clients_per_round or n
    group = config.secure_aggregation.group_size
    shaped = rows // group if group else rows
    # Stand-ins for the server inputs the rule reads (the model, the root features).
    stand_ins = {"global_params": np.zeros((4,), np.float32),
                 "representations": np.zeros((shaped, 2, 1), np.float32)}
    inputs = {k: stand_ins[k] for k in agg.needs if k in stand_ins}
    try:  # trace-time checks of n, f (on the group means under secure aggregation)
      jax.eval_shape(lambda u: agg(u, **inputs), jax.ShapeDtypeStruct((shaped, 4), np.float32))
    except ConfigError as e:
      if not group:
        raise
      raise ConfigError(f"secure_aggregation.group_size={group}: aggregator {spec!r} cannot run "
                        f"over the {rows // group} group means of a round ({e})") from None
  comparisons = comparison_pairs(config)
  # With honest_set='worst_case' every draw has b = f < n/2, which satisfies every condition:
  # a sweep can put μ_H conditioned on b = f beside the worst case at the same b.
  if config.estimators.oracle and config.draw_condition != "none":
    raise ConfigError(f"estimators.oracle trains on the exact weights of independent corruption; "
                      f"with draw_condition={config.draw_condition!r} the draws follow the "
                      "conditioned law, whose weights it does not compute. Allowed: "
                      "draw_condition='none' with the oracle.")
  prior_info = _validate_server_prior(config, specs, prior, options)
  _validate_task(config)
  num_classes = data_lib.num_classes(config.data.name, config.data.synthetic_num_classes,
                                     config.data.synthetic_task)
  if config.data.name in data_lib.TFDS_NAMES:  # a data set not on disk fails now, not after
    try:
      data_lib.check_available(config.data.name, config.data.data_dir)
    except data_lib.DatasetUnavailableError as e:
      raise ConfigError(f"data.name={config.data.name!r}: {e}") from None
  behaviours = [name for name, _ in attacks.parse_population(config.attack)]
  _validate_privacy(config, [attacks.get(name, num_classes=num_classes,
                                         options=config.attack_options.get(name, {}))
                             for name in behaviours])
  _validate_deployed_privacy(config, specs, behaviours, prior, options)
  absences = [name for name in behaviours if name in faults.ABSENCE]
  if absences or _poisson(config):
    why = (f"attack={config.attack!r} makes clients absent ({', '.join(absences)})" if absences
           else "training.client_sampling='poisson' leaves the unsampled clients absent")
    for spec in specs:
      try:
        aggregators.get(spec, f=f, options=options,
                        weighted=config.training.weighted_aggregation, presence=True)
      except ConfigError as e:
        raise ConfigError(f"{why}, so the rules must aggregate the clients present: {e}"
                          ) from None
  z_option = config.attack_options.alie.z
  if "alie" in behaviours and (z_option is None or np.isnan(z_option)):
    z = float(attacks.alie_z(n, f))
    if z <= 0:
      warnings.warn(f"ALIE's z from (n, f) = ({n}, {f}) is {z:.3g} <= 0: with b = f Byzantine "
                    "clients the attack sends the honest mean or less (z is computed from each "
                    "draw's realized b; the table reports the share of draws where it is ≤ 0); "
                    "set attack_options.alie.z to study a real attack.")
  if "mimic" in behaviours and config.attack_options.mimic.index >= n:
    raise ConfigError(f"attack_options.mimic.index={config.attack_options.mimic.index} must be "
                      f"< num_clients={n}.")
  if sampler is not None:
    honest_sets.validate(sampler, num_clients=n)
  else:
    _validate_worst_case(config, num_classes)
  if config.estimators.oracle and config.honest_set != "bernoulli":
    raise ConfigError("estimators.oracle needs independent corruption (honest_set='bernoulli'): "
                      "its exact weights w_i = E[1{i∈S}/|S|] are derived for that law.")
  # Every model option checked (no base or weights needed); text models against the window.
  models.module(config.model, num_classes=num_classes,
                input_shape=((config.data.shakespeare.window,)
                             if data_lib.is_text(config.data.name) else (1, 1, 1)),
                **config.model_options.get(config.model, {}))
  t = config.training
  if t.attack_rounds and t.attack_rounds >= t.num_rounds:
    raise ConfigError(f"training.attack_rounds={t.attack_rounds} must be below training.num_rounds"
                      f"={t.num_rounds} (0: the attack acts every round).")
  if t.num_rounds % t.eval_every:
    raise ConfigError(f"training.num_rounds={t.num_rounds} must be a positive multiple of "
                      f"training.eval_every={t.eval_every}.")
  every = config.checkpoint.every_rounds
  if every and every % t.eval_every:
    raise ConfigError(f"checkpoint.every_rounds={every} must be 0 (none) or a multiple of "
                      f"training.eval_every={t.eval_every} (a run stops only between its "
                      "compiled chunks of eval_every rounds).")
  make_local_training(config)
  return Job(config=config, specs=tuple(specs), options=options, prior=prior,
             prior_info=prior_info, sampler=sampler, comparisons=tuple(comparisons))


def _has_hidden_layer(config) -> bool:
  """Whether the configured model has a layer before its output layer (an mlp with hidden
  layers, the cnn): what a personal head shares and FLARE reads (`models.REPRESENTATION_MODELS`)."""
  return bool({"mlp": len(config.model_options.mlp.hidden), "cnn": 1}.get(config.model, 0))


def _validate_server_inputs(config, spec: str, agg) -> None:
  """What a rule reading the clients' models or keeping a per-client state needs: root data and
  a representation layer (FLARE), the model the round started from (no personal head, no
  aggregation in k coordinates), and rows that are the same clients every round."""
  if agg.per_client_state:
    why = ("training.clients_per_round="
           f"{config.training.clients_per_round} (fixed-size sampling gathers other rows each "
           "round)" if config.training.clients_per_round and not _poisson(config) else
           f"secure_aggregation.group_size={config.secure_aggregation.group_size} (the rows are "
           "group means)" if config.secure_aggregation.group_size else "")
    if why:
      raise ConfigError(f"aggregator {spec!r} keeps a state per client (row i is client i every "
                        f"round), which {why} breaks; allowed: every client every round, or "
                        "training.client_sampling='poisson'.")
  if agg.needs & {"representations", "global_params"}:
    if config.training.personalization != "none" or config.compression.aggregate_in == "k":
      raise ConfigError(f"aggregator {spec!r} reads the clients' models θ − x_i; not with "
                        f"training.personalization={config.training.personalization!r} or "
                        f"compression.aggregate_in={config.compression.aggregate_in!r} (allowed: "
                        "'none' and 'd').")
  if "representations" in agg.needs:
    if not _has_hidden_layer(config):
      raise ConfigError(f"aggregator {spec!r} compares the clients' models' penultimate-layer "
                        f"representations; model={config.model!r}"
                        + (" with model_options.mlp.hidden=()" if config.model == "mlp" else "")
                        + f" has none. Allowed: {', '.join(models.REPRESENTATION_MODELS)} "
                        "(an mlp with a hidden layer).")
    if config.data.root_examples < 1:
      raise ConfigError(f"aggregator {spec!r} evaluates the clients' models on the server's "
                        "root inputs; set data.root_examples >= 1 (examples taken from the test "
                        f"split), got data.root_examples={config.data.root_examples}.")


def _validate_bucketing(config, specs) -> None:
  """Bucketing's buckets of s clients among the m of a round (num_clients, or
  training.clients_per_round when clients are sampled) need s < m: with s >= m one bucket holds
  every client, and the rule after it sees only their mean."""
  bucketed = [spec for spec in specs if "bucketing" in aggregators.split_spec(spec)]
  s = config.aggregator_options.bucketing.bucket_size
  m = config.training.clients_per_round or config.num_clients
  if bucketed and s >= m:
    rows = (f"training.clients_per_round={m}" if config.training.clients_per_round
            else f"num_clients={m}")
    raise ConfigError(f"aggregator_options.bucketing.bucket_size={s} (in {', '.join(bucketed)}) "
                      f"is not below the m clients of a round ({rows}): one bucket would hold "
                      f"every client and the rule after it see only their mean; allowed: 1 <= "
                      f"bucket_size < {m} (the paper's default is 2).")


def _validate_worst_case(config, num_classes: int | None) -> None:
  """The worst case's criterion defined on this task (worst_case.check), and its seed cap not
  below its seeds."""
  options = config.honest_set_options.worst_case
  worst_case.check(options.criterion, convex=theory_report.is_convex_task(config),
                   classifier=num_classes is not None,
                   holdout=config.data.holdout_fraction > 0,
                   global_model=config.training.personalization == "none")
  if options.max_seeds < options.seeds:
    raise ConfigError(f"honest_set_options.worst_case.max_seeds={options.max_seeds} is below "
                      f"seeds={options.seeds}: the sets tied with the top get more seeds, not "
                      f"fewer. Allowed: max_seeds >= {options.seeds} (= seeds: R fixed).")


# Options fixed per client index, which a round of sampled clients cannot use.
# The rules that take the server's P(honest) per client (an option `prior_honest`, filled in
# from the prior by `aggregator_options`): posterior_filter and the rules built on it.
_POSTERIOR_RULES = tuple(name for name in aggregators.names()
                         if "prior_honest" in aggregators.option_domains(name))
_PER_CLIENT_OPTIONS = {**{name: ("prior_honest", "prior_coupling") for name in _POSTERIOR_RULES},
                       "cluster_aggregate": ("clusters",)}


def _validate_rounds(config, specs) -> None:
  """Client sampling, local training and the server optimizer: the constraints between keys."""
  t, n, f = config.training, config.num_clients, config.f
  m = t.clients_per_round
  stages = {s.strip() for spec in specs for s in spec.split("+")}
  if m:
    if m > n or 2 * f >= m:
      raise ConfigError(f"training.clients_per_round={m} must satisfy 2f = {2 * f} < m <= "
                        f"num_clients = {n} (the declared f applies to the sampled clients), "
                        "or be 0 (every client every round).")
    behaviours = [name for name, _ in attacks.parse_population(config.attack)]
    if "stale" in behaviours and m < n:
      raise ConfigError(f"attack='stale' replays each client's own update of earlier rounds, "
                        f"which a client sampled at random has not sent; training.clients_per_"
                        f"round={m} < num_clients={n}. Allowed: clients_per_round 0 or {n} "
                        "with it.")
    if "mimic" in behaviours and config.attack_options.mimic.index >= m:
      raise ConfigError(f"attack_options.mimic.index={config.attack_options.mimic.index} must "
                        f"be < training.clients_per_round={m} (the row it copies among the "
                        "sampled clients).")
    per_client = sorted(stage for stage in stages if stage in _PER_CLIENT_OPTIONS)
    if per_client and m < n:
      raise ConfigError(f"aggregator(s) {', '.join(per_client)} hold options per client index "
                        f"({', '.join(o for s in per_client for o in _PER_CLIENT_OPTIONS[s])}), "
                        f"which a round of sampled clients cannot use; training.clients_per_"
                        f"round={m} < num_clients={n}. Allowed: clients_per_round 0 or {n}.")
  if not t.local_epochs and t.tail_average > t.local_steps:
    raise ConfigError(f"training.tail_average={t.tail_average} must be <= training.local_steps="
                      f"{t.local_steps} (the iterates it averages).")
  if t.client_lr_schedule == "step":
    late = [b for b in t.client_lr_schedule_options.step.boundaries if b >= t.num_rounds]
    if late:
      raise ConfigError(f"training.client_lr_schedule_options.step.boundaries="
                        f"{tuple(t.client_lr_schedule_options.step.boundaries)}: {late} never "
                        f"apply (training.num_rounds={t.num_rounds}); allowed: rounds < "
                        f"{t.num_rounds}.")
  if ("centered_clipping" in stages and t.local_epochs
      and config.aggregator_options.centered_clipping.tau_units == "published_momentum"):
    raise ConfigError("aggregator_options.centered_clipping.tau_units='published_momentum' "
                      "converts τ with the number of local steps, which training.local_epochs="
                      f"{t.local_epochs} makes depend on each client's data; allowed: "
                      "tau_units='update' with local epochs.")
  make_server_optimizer(config)


def _validate_privacy(config, behaviours) -> None:
  """DP-SGD's needs (privacy.kind='example'): local steps on Poisson-sampled minibatches of
  expected size training.batch_size >= 1, every example of a client with the same probability
  (no behaviour among `behaviours`, the population's attacks, that biases the sampling)."""
  if config.privacy.kind != "example":
    return
  t = config.training
  if t.batch_size < 1:
    raise ConfigError(f"privacy.kind='example' (DP-SGD) samples every local step's minibatch "
                      f"with expected size training.batch_size, got training.batch_size="
                      f"{t.batch_size} (all local data); allowed: training.batch_size >= 1.")
  if t.local_epochs:
    raise ConfigError(f"privacy.kind='example' (DP-SGD) draws a Poisson-sampled minibatch at "
                      f"every local step, which training.local_epochs={t.local_epochs} "
                      "(shuffled epochs without replacement) replaces; allowed: "
                      "training.local_epochs=0 (training.local_steps steps).")
  biased = [a.name for a in behaviours if a.sample_weights is not None]
  if biased:
    raise ConfigError(f"attack={config.attack!r}: {', '.join(biased)} samples a client's "
                      "minibatches with unequal weights, and privacy.kind='example' (DP-SGD) "
                      "samples each of its examples with the same probability; allowed: "
                      "behaviours without biased sampling, or privacy.kind 'client' or 'none'.")


def _validate_deployed_privacy(config, specs, behaviours, prior, options) -> None:
  """Central DP, distributed DP, secure aggregation, adaptive clipping and the tree: each rule's
  sensitivity derived (central), groups of equal size that divide the round's clients, and
  the combinations the simulator does not model refused with the reason."""
  p, t = config.privacy, config.training
  group = config.secure_aggregation.group_size
  m = t.clients_per_round or config.num_clients
  weighted = t.weighted_aggregation or (prior is not None
                                        and config.server_prior.weights != "none")
  absences = [name for name in behaviours if name in faults.ABSENCE]
  mechanisms = [name for name, on in (
      (f"privacy.kind={p.kind!r}", p.kind == "central"),
      (f"secure_aggregation.group_size={group}", group > 0)) if on]
  alie_z = config.attack_options.alie.z
  if (_poisson(config) and "alie" in behaviours
      and (alie_z is None or np.isnan(alie_z))):
    raise ConfigError("attack_options.alie.z=nan computes ALIE's z from (n, b) of the round's "
                      "clients, which training.client_sampling='poisson' leaves random; set "
                      "attack_options.alie.z to a number with Poisson sampling.")
  if _poisson(config) and group:
    raise ConfigError(f"secure_aggregation.group_size={group} splits a round's clients into "
                      "equal groups; training.client_sampling='poisson' draws a random number "
                      "of them. Allowed: client_sampling='fixed' with secure aggregation.")
  if t.client_sampling == "poisson" and not _poisson(config):
    raise ConfigError(f"training.client_sampling='poisson' samples each client with probability "
                      f"m/n, m = training.clients_per_round; set 0 < clients_per_round < "
                      f"num_clients={config.num_clients}, got {t.clients_per_round}.")
  for what in mechanisms:
    if weighted:
      raise ConfigError(f"{what} averages the clients with equal weights; training."
                        "weighted_aggregation and server_prior.weights give them unequal ones. "
                        "Allowed: both off with it.")
    if absences:
      raise ConfigError(f"{what} is simulated with every sampled client present; attack="
                        f"{config.attack!r} makes clients absent ({', '.join(absences)}).")
    if config.compression.kind != "none":
      raise ConfigError(f"{what} is not simulated with compressed updates "
                        f"(compression.kind={config.compression.kind!r}); allowed: 'none'.")
  if group:
    if group < 2 or m % group:
      raise ConfigError(f"secure_aggregation.group_size={group}: the {m} clients of a round are "
                        "split into equal groups, one secure sum each; allowed: 0 (off) or a "
                        f"divisor s of {m} with 2 <= s < {m}.")
    if group >= m:
      raise ConfigError(f"secure_aggregation.group_size={group} must be below the {m} clients "
                        "of a round (one group would leave the rule a single mean).")
  if p.kind == "central":
    if group:
      raise ConfigError("privacy.kind='central' trusts the server with every update, which "
                        "secure aggregation hides; use privacy.kind='distributed' with "
                        f"secure_aggregation.group_size={group}.")
    for spec in specs:
      sensitivity.central_sensitivity(spec, rows=m, f=config.f, poisson=_poisson(config))
      stateful = jax.tree.leaves(aggregators.get(spec, f=config.f, options=options,
                                                 presence=_poisson(config)).init(4, np.float32))
      if stateful and m < config.num_clients:
        raise ConfigError(
            f"privacy.kind='central' with aggregator {spec!r} and training.clients_per_round={m} "
            f"of {config.num_clients}: the rule keeps a state across rounds (its last output, "
            "before the noise), through which a client sampled earlier moves a later round it is "
            "not sampled in, so amplification by sampling does not hold; allowed: every client "
            "every round with it, or a rule without a state.")
    if m < config.num_clients and not _poisson(config) and not p.tree and p.accountant == "pld":
      raise ConfigError(f"privacy.accountant='pld' with privacy.kind='central' and "
                        f"training.clients_per_round={m} of {config.num_clients}: sampling "
                        "without replacement is amplified only by dp-accounting's RDP "
                        "accountant (replace-one adjacency); use privacy.accountant='rdp'.")
  if p.kind == "distributed" and not group:
    raise ConfigError("privacy.kind='distributed' adds each client's share of a group's noise "
                      "under secure aggregation: set secure_aggregation.group_size >= 2.")
  if p.tree and (p.kind != "central" or p.adaptive_clip):
    raise ConfigError(f"privacy.tree=True (DP-FTRL) noises the server's aggregate with a fixed "
                      f"clip: it needs privacy.kind='central' and adaptive_clip=False, got kind="
                      f"{p.kind!r}, adaptive_clip={p.adaptive_clip}.")
  if p.tree_restart and not p.tree:
    raise ConfigError(f"privacy.tree_restart={p.tree_restart} is the tree's length; set "
                      "privacy.tree=True or leave it 0.")
  if p.tree_restart > t.num_rounds:
    raise ConfigError(f"privacy.tree_restart={p.tree_restart} exceeds training.num_rounds="
                      f"{t.num_rounds}; allowed: 0 (one tree) to {t.num_rounds}.")
  if p.adaptive_clip:
    if p.kind not in ("central", "client", "example"):
      raise ConfigError(f"privacy.adaptive_clip=True adapts the central, the client-level or "
                        f"DP-SGD's clip; privacy.kind={p.kind!r} (allowed: 'central', 'client', "
                        "'example').")
    if p.kind == "client" and not p.count_noise:
      raise ConfigError("privacy.adaptive_clip=True with kind 'client': every client noises its "
                        "own bit 1[‖x‖ ≤ C]; set privacy.count_noise > 0 (its std).")
    if not p.target_epsilon:  # the split is checked again once a target ε is resolved
      z = p.noise_multiplier / 2 if p.kind == "client" else p.noise_multiplier
      privacy.adaptive_update_multiplier(z, _count_noise(config), 1.0)


def _validate_personalization(config, specs, options) -> None:
  t = config.training
  personal = t.personalization != "none"
  if not personal and not t.fine_tune_steps:
    return
  what = (f"training.personalization={t.personalization!r}" if personal
          else f"training.fine_tune_steps={t.fine_tune_steps}")
  if personal and "a3fl" in [name for name, _ in attacks.parse_population(config.attack)]:
    raise ConfigError(f"attack 'a3fl' optimizes its trigger against the global model, and {what} "
                      "leaves the server without an output layer; allowed: personalization "
                      "'none' with it.")
  if config.data.holdout_fraction <= 0:
    raise ConfigError(f"{what} is measured on each client's own held-out split; set "
                      "data.holdout_fraction > 0 (e.g. 0.2), got data.holdout_fraction="
                      f"{config.data.holdout_fraction}.")
  if not personal:
    return
  if config.theory.enabled:
    raise ConfigError(f"{what}: the theory block (theory.enabled=True) measures one global "
                      "model's heterogeneity and κ; allowed: theory.enabled=False with "
                      "personalization.")
  if not _has_hidden_layer(config):
    raise ConfigError(f"{what} keeps the output layer personal; model={config.model!r}"
                      + (" with model_options.mlp.hidden=()" if config.model == "mlp" else "")
                      + " has no other layer to share. Allowed: mlp (with hidden layers) or "
                      "cnn.")
  for spec in specs:
    if aggregators.get(spec, f=config.f, options=options).needs_server_update:
      raise ConfigError(f"aggregator {spec!r} compares with the server's own update on root "
                        f"data, and {what} leaves the server without an output layer; allowed: "
                        "rules without a server update.")


def _validate_server_prior(config, specs, law, options) -> dict[str, Any] | None:
  """A prior used for something, and what it is used for possible: quantile f with an honest
  majority, weights only for rules with a weighted form; what it sets (`resolve_server_prior`;
  None without a prior). `law`: its spec, `options`: the rules' options."""
  prior = config.server_prior
  if prior.kind == "none":
    if prior.declared_f != "config" or prior.weights != "none":
      raise ConfigError(
          f"server_prior.declared_f={prior.declared_f!r} / weights={prior.weights!r} need a "
          "prior; server_prior.kind='none'. Allowed: kind 'mu_h' or 'marginals' with them, or "
          "declared_f='config' and weights='none'.")
    return None
  _, info = resolve_server_prior(config, law)
  if prior.weights != "none":
    for spec in specs:
      try:
        aggregators.get(spec, f=info.get("f", config.f), options=options,
                        weighted=True)
      except ConfigError as e:
        raise ConfigError(f"server_prior.weights={prior.weights!r} weights the clients: {e}"
                          ) from None
  return info


def _validate_task(config) -> None:
  """A regression task (least squares on the synthetic source) with what fits it: the
  regression model, attacks and graphs that do not use class labels; a classifier otherwise."""
  d = config.data
  if d.synthetic_task == "regression" and d.name != "synthetic":
    raise ConfigError(f"data.synthetic_task='regression' needs data.name='synthetic', got "
                      f"data.name={d.name!r} (a classification data set).")
  grouped = d.name == "synthetic" or d.partition == "label_groups"
  if d.group_size and not grouped:
    raise ConfigError(f"data.group_size={d.group_size} makes a distinct group on the synthetic "
                      f"source or with data.partition='label_groups'; data.name={d.name!r} with "
                      f"partition={d.partition!r} is neither. Allowed: one of them, or "
                      "group_size=0.")
  if d.group_size >= config.num_clients:
    raise ConfigError(f"data.group_size={d.group_size} must be < num_clients="
                      f"{config.num_clients} (the others are the majority); allowed: "
                      f"0..{config.num_clients - 1}.")
  if d.synthetic_group_shift and (d.name != "synthetic" or not d.group_size):
    raise ConfigError(f"data.synthetic_group_shift={d.synthetic_group_shift} shifts no client: "
                      "it needs data.name='synthetic' and data.group_size >= 1. Allowed: those, "
                      "or shift 0.")
  labelled = d.name != "synthetic" and d.partition == "label_groups"
  if labelled and not d.group_size:
    raise ConfigError("data.partition='label_groups' needs data.group_size >= 1 (the clients "
                      "that hold data.group_labels).")
  if bool(d.group_labels) != labelled:
    raise ConfigError(f"data.group_labels={tuple(d.group_labels)} go with data.partition="
                      "'label_groups' on a classification data set (and only there); got "
                      f"partition={d.partition!r}, data.name={d.name!r}.")
  _validate_text(config)
  task = data_lib.task(d.name, d.synthetic_task)
  if config.model not in models.names_for(task):
    raise ConfigError(
        f"model={config.model!r} ({models.LOSSES[config.model]} loss) does not fit the "
        f"{task} task of data.name={d.name!r}, data.synthetic_task={d.synthetic_task!r}; "
        f"models for it: {', '.join(models.names_for(task))}.")
  if task != "regression":
    return
  labelled = [name for name, _ in attacks.parse_population(config.attack)
              if name in attacks.data_poisoning_names() or name in faults.NEEDS_LABELS]
  if labelled:
    raise ConfigError(
        f"attack={config.attack!r} changes class labels or samples by them "
        f"({', '.join(labelled)}), and data.synthetic_task='regression' has real targets; "
        "allowed: "
        f"{', '.join(['none', *attacks.model_poisoning_names(), *(n for n in faults.names() if n not in faults.NEEDS_LABELS)])}.")
  if config.honest_set in honest_sets.GRAPH_BASED and config.graph.kind == "data_similarity":
    raise ConfigError(
        "graph.kind='data_similarity' compares the clients' label distributions, and "
        "data.synthetic_task='regression' has real targets; allowed: "
        f"{', '.join(k for k in graphs.KINDS if k != 'data_similarity')}.")


def _validate_text(config) -> None:
  """Text data (windows of token ids) with a text model and the threats that have a meaning on
  text; pretraining and LoRA adapters only where there is a base text no client holds."""
  d = config.data
  text = data_lib.is_text(d.name)
  if text != (config.model in models.TEXT_MODELS):
    allowed = (models.TEXT_MODELS if text else
               [m for m in models.names() if m not in models.TEXT_MODELS])
    raise ConfigError(f"model={config.model!r} does not read the inputs of data.name={d.name!r} "
                      f"({'windows of characters' if text else 'real-valued features'}); "
                      f"allowed: {', '.join(allowed)}.")
  names = [name for name, _ in attacks.parse_population(config.attack)]
  wrong = [n for n in names if n in ((*attacks.IMAGE_ONLY, *faults.FEATURES_ONLY) if text
                                     else (*attacks.TEXT_ONLY, *faults.TEXT_ONLY))]
  if wrong:
    raise ConfigError(
        f"attack={config.attack!r}: {', '.join(wrong)} "
        + ("acts on images or real-valued features, and data.name=" if text else
           "acts on text, and data.name=") + f"{d.name!r} is "
        + ("text" if text else "not") + "; allowed there: every other attack"
        + (f" (on text: {', '.join((*attacks.TEXT_ONLY, *faults.TEXT_ONLY))}, label_flip, "
           "label_noise, missing_features and the model-poisoning attacks)." if text else "."))
  rank = config.model_options.get(config.model, {}).get("lora_rank", 0)
  if config.pretraining.enabled and not text:
    raise ConfigError(f"pretraining.enabled=True pretrains a base on text no client holds, and "
                      f"data.name={d.name!r} has none; allowed: data.name in "
                      f"{list(data_lib.TEXT)}, or pretraining.enabled=False.")
  if rank and not config.pretraining.enabled:
    raise ConfigError(f"model_options.{config.model}.lora_rank={rank} trains adapters on a "
                      "pretrained base; set pretraining.enabled=True (or lora_rank=0).")
  if rank and config.training.personalization == "personal_head":
    raise ConfigError(f"training.personalization='personal_head' keeps the output layer per "
                      f"client, and model_options.{config.model}.lora_rank={rank} trains only "
                      "adapters (the output layer is frozen); allowed: personalization 'none' "
                      "with adapters.")


def make_local_training(config) -> local_training.LocalTraining:
  t = config.training
  schedule = t.client_lr_schedule_options.get(t.client_lr_schedule, {})
  return local_training.LocalTraining(
      local_steps=t.local_steps, batch_size=t.batch_size, lr=t.client_lr,
      momentum=t.client_momentum, local_epochs=t.local_epochs, update=t.client_update,
      tail_average=t.tail_average, lr_schedule=t.client_lr_schedule,
      lr_schedule_options=tuple((k, tuple(v) if isinstance(v, (list, tuple)) else v)
                                for k, v in sorted(dict(schedule).items())),
      num_rounds=t.num_rounds)


def make_server_optimizer(config) -> optax.GradientTransformation:
  t = config.training
  return server_optimizers.build(t.server_optimizer, t.server_lr,
                                 t.server_optimizer_options.get(t.server_optimizer, {}),
                                 sgd_momentum=t.server_momentum)


def make_data(config) -> data_lib.FederatedData:
  """The federated data of config.data; a request the data cannot meet (more clients than
  examples, min_size or root_examples too large for the data set) is a ConfigError naming it.
  `config`: a Job or a ConfigDict."""
  config = config_of(config)
  d = config.data
  try:
    return data_lib.load(
        d.name, num_clients=config.num_clients, partition=d.partition, alpha=d.alpha,
        shards_per_client=d.shards_per_client, gamma=d.gamma, min_size=d.min_size,
        test_fraction=d.test_fraction, data_dir=d.data_dir, seed=config.seed,
        synthetic_examples_per_client=d.synthetic_examples_per_client,
        synthetic_dim=d.synthetic_dim, synthetic_num_classes=d.synthetic_num_classes,
        synthetic_alpha=d.synthetic_alpha, synthetic_beta=d.synthetic_beta,
        synthetic_task=d.synthetic_task, synthetic_noise=d.synthetic_noise,
        group_size=d.group_size, synthetic_group_shift=d.synthetic_group_shift,
        group_labels=tuple(d.group_labels),
        holdout_fraction=d.holdout_fraction, root_examples=d.root_examples,
        text_options=text_options(config) if data_lib.is_text(d.name) else None,
        source_options=source_options(config))
  except ValueError as e:  # data.load's refusals of its arguments
    raise ConfigError(f"data.name={d.name!r} with num_clients={config.num_clients}, "
                      f"data.partition={d.partition!r}: {e}") from None


def aggregator_options(config, law: Any = _COMPUTE) -> dict[str, dict[str, Any]]:
  """`config.aggregator_options` as the aggregators take them: centered clipping's τ given in
  the published code's units (`tau_units="published_momentum"`, Karimireddy et al.'s worker
  momentum buffers m = βm + g) becomes τ · client_lr · (1 − client_momentum) · local_steps in
  update units (derivation: `aggregators.clipping.published_tau_in_update_units`); the prior
  rules' options come from the server's prior `law` (`server_prior_spec`, computed here unless
  given, None for no prior)."""
  options = config.aggregator_options.to_dict()
  stages = [s.strip() for spec in aggregator_specs(config) for s in spec.split("+")]
  law = server_prior_spec(config) if law is _COMPUTE else law
  for rule in _POSTERIOR_RULES:
    pf = options.get(rule, {})
    if law is None or not pf or rule not in stages:
      continue
    if pf.get("prior_honest") is not None:
      raise ConfigError(f"aggregator_options.{rule}.prior_honest is set and so is "
                        f"server_prior.kind={config.server_prior.kind!r}; allowed: one of them.")
    p, _ = server_prior.marginals(law, config.num_clients)
    pf["prior_honest"] = tuple(float(1 - x) for x in p)
    if pf.get("coupling") == "prior" and pf.get("prior_coupling") is None:
      j = server_prior.coupling(law, config.num_clients)
      if j is not None and np.any(j != 0):
        pf["prior_coupling"] = tuple(tuple(float(v) for v in row) for row in j)
  ca = options.get("cluster_aggregate", {})
  if law is not None and ca and "cluster_aggregate" in stages:
    if ca.get("clusters") is not None or ca.get("f_clusters") is not None:
      raise ConfigError("aggregator_options.cluster_aggregate.clusters/f_clusters are set and so "
                        f"is server_prior.kind={config.server_prior.kind!r}; allowed: one of "
                        "them.")
    ids, f_clusters = server_prior.cluster_quantile_f(
        law, config.num_clients, config.server_prior.delta,
        config.server_prior.communities, ca.get("inner", "mean"))
    ca["clusters"], ca["f_clusters"] = tuple(int(i) for i in ids), f_clusters
  cc = options.get("centered_clipping", {})
  if cc.get("tau_units") == "published_momentum":
    t = config.training
    cc["tau"] = aggregators.clipping.published_tau_in_update_units(
        cc["tau"], lr=t.client_lr, momentum=t.client_momentum, local_steps=t.local_steps)
    cc["tau_units"] = "update"
  return options
