"""Builds the engine's objects from a Job: the simulator of one aggregator spec
(`make_simulator`).

Engine: the job layer (`config`) resolves and checks the configuration; this module turns the
resolved Job and the loaded data into the `training.Simulator` that `experiment` runs.
"""

from __future__ import annotations

import jax
import numpy as np

from fedjax_robust import aggregators
from fedjax_robust import attacks
from fedjax_robust import compression
from fedjax_robust import config as config_lib
from fedjax_robust import data as data_lib
from fedjax_robust import models
from fedjax_robust import pretraining
from fedjax_robust import server_prior
from fedjax_robust import training
from fedjax_robust.errors import ConfigError


def _check_compression_size(config, model, data_name: str) -> None:
  """A sparsifier's compression.k is at most d, the parameters a client sends (the model's, less
  its output layer when it stays personal): known once the data give the model its input shape,
  so checked here, before the simulator is built and anything compiles."""
  spec = config_lib.make_compression(config)
  if not (spec.sparsifies and spec.k):
    return
  shapes = jax.eval_shape(model.init, jax.random.key(0))
  d = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes))
  if config.training.personalization == "personal_head":
    d -= sum(int(np.sum(leaf)) for leaf in jax.tree.leaves(training.personal_layer_marks(shapes)))
  if spec.k > d:
    raise ConfigError(f"compression.k={spec.k} exceeds d = {d:,}, the parameters each client "
                      f"sends (model={config.model!r} on data.name={data_name!r}); allowed: "
                      f"1 <= k <= {d:,}, or 0 (k = ⌈compression.ratio·d⌉).")


def make_model(config, fed: data_lib.FederatedData) -> models.Model:
  """The model of `config` for the data `fed`: with `pretraining.enabled`, started from the
  pretrained base (`pretraining.base_params`, trained once and cached), whole or through LoRA
  adapters (`lora_rank` > 0)."""
  config = config_lib.config_of(config)
  base = None
  if config.pretraining.enabled:
    base, _ = pretraining.base_params(config, input_shape=fed.input_shape,
                                      num_classes=fed.num_classes)
  return models.get(config.model, input_shape=fed.input_shape, num_classes=fed.num_classes,
                    base_params=base, **config.model_options.get(config.model, {}))


def make_simulator(config, spec: str, fed: data_lib.FederatedData, *,
                   reference: str | None = None,
                   client_weights=None) -> training.Simulator:
  """The simulator of one aggregator spec for this config and data.

  `reference` builds a reference run instead: "honest_optimum" (mean of the honest clients
  only, no attack) or "oracle" (mean weighted by `client_weights`, no attack); both with every
  client taking part in every round (no client sampling) and the config's local training; the
  honest-only run with the config's personalization and fine-tuning, the oracle without (one
  global model).

  `config`: a Job (its rules' options and prior, derived once), or a ConfigDict (derived here).
  """
  job = config if isinstance(config, config_lib.Job) else None
  config = config_lib.config_of(config)
  model = make_model(config, fed)
  _check_compression_size(config, model, config.data.name)
  if reference is not None:
    return training.Simulator(
        model=model, aggregator=aggregators.get("mean", f=0, weighted=True),
        attack=attacks.get("none", num_classes=fed.num_classes),
        local=config_lib.make_local_training(config),
        server_optimizer=config_lib.make_server_optimizer(config),
        num_clients=config.num_clients, honest_only=reference == "honest_optimum",
        personal_head=(reference == "honest_optimum"
                       and config.training.personalization == "personal_head"),
        fine_tune_steps=config.training.fine_tune_steps if reference == "honest_optimum" else 0,
        l2=float(config.training.l2),
        **(config_lib.privacy_fields(config) if reference == "honest_optimum" else {}),
        compression=(config_lib.make_compression(config) if reference == "honest_optimum"
                     else compression.Compression()),
        client_weights=None if client_weights is None else tuple(map(float, client_weights)),
        perplexity=data_lib.is_text(config.data.name))
  behaviours = [(attacks.get(name, num_classes=fed.num_classes,
                             options=config.attack_options.get(name, {}),
                             input_shape=tuple(fed.input_shape)), p)
                for name, p in attacks.parse_population(config.attack)]
  mixed = len(behaviours) > 1
  prior_weights = None
  if config.server_prior.kind != "none" and config.server_prior.weights != "none":
    law = job.prior if job else config_lib.server_prior_spec(config)
    prior_weights = server_prior.client_weights(law, config.num_clients,
                                                config.server_prior.weights)
  aggregator = aggregators.get(
      spec, f=config.f, options=job.options if job else config_lib.aggregator_options(config),
      weighted=config.training.weighted_aggregation or prior_weights is not None,
      presence=(any(a.presence is not None for a, _ in behaviours)
                or config.training.client_sampling == "poisson"))
  uses_root = bool(aggregator.needs & {"server_update", "representations"})
  if uses_root and fed.root is None:
    raise ConfigError(f"aggregator {spec!r} needs the server's root data set "
                      "(data.root_examples >= 1).")
  return training.Simulator(
      model=model,
      aggregator=aggregator,
      weighted_aggregation=config.training.weighted_aggregation,
      attack=attacks.Attack(config.attack) if mixed else behaviours[0][0],
      population=tuple(behaviours) if mixed else (),
      local=config_lib.make_local_training(config),
      server_optimizer=config_lib.make_server_optimizer(config),
      num_clients=config.num_clients, l2=float(config.training.l2),
      clients_per_round=config.training.clients_per_round,
      client_sampling=config.training.client_sampling,
      personal_head=config.training.personalization == "personal_head",
      fine_tune_steps=config.training.fine_tune_steps,
      **config_lib.privacy_fields(config, spec),
      secure_group_size=config.secure_aggregation.group_size,
      compression=config_lib.make_compression(config),
      measure_theory=bool(config.theory.enabled),
      client_weights=None if prior_weights is None else tuple(map(float, prior_weights)),
      root=fed.root if uses_root else None, attack_rounds=config.training.attack_rounds,
      perplexity=data_lib.is_text(config.data.name))
