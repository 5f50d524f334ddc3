"""The experiment configuration: every key with its default, validation, and builders.

`base_config()` is the schema: a config file may set only keys that exist here (a misspelt key is
an error, not a silent default). Options of aggregators, attacks, models and honest-set
distributions live in per-name sub-dicts, so `--config.aggregator_options.geometric_median.maxiter=3`
works from the command line.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping

import jax
import ml_collections
import numpy as np
import optax
from ml_collections import config_dict

from fedjax_robust import aggregators
from fedjax_robust import attacks
from fedjax_robust import data as data_lib
from fedjax_robust import honest_sets
from fedjax_robust import models
from fedjax_robust import training

_SERVER_OPTIMIZERS = {
    "sgd": lambda c: optax.sgd(c.server_lr, momentum=c.server_momentum or None),
    "adam": lambda c: optax.adam(c.server_lr),
}


def _options_of(names, options_fn, none_types) -> ml_collections.ConfigDict:
  """Every registered name's keyword options with their defaults, so any can be overridden from
  the command line (an option whose default is None becomes a placeholder of the given type)."""
  return ml_collections.ConfigDict({
      name: {k: (config_dict.placeholder(none_types[k]) if v is None else v)
             for k, v in options_fn(name).items()}
      for name in names})


def base_config() -> ml_collections.ConfigDict:
  """Every configurable key, with the defaults of a small digits experiment."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.num_clients = 25               # n
  c.f = 5                          # declared number of Byzantine clients (the server's assumption)
  c.num_samples = 256              # S: Monte Carlo draws of the honest set
  # One or more comma-separated specs; '+' chains pre-aggregators before a rule.
  c.aggregator = "mean,trimmed_mean,geometric_median,nnm+trimmed_mean"
  c.aggregator_options = _options_of(aggregators.names(), aggregators.options, {"m": int})
  c.attack = "alie"
  # ALIE's z: None or nan (settable from the command line) means z from n and the realized b.
  c.attack_options = _options_of(attacks.names(), attacks.options, {"z": float})
  c.honest_set = "bernoulli"
  c.honest_set_options = ml_collections.ConfigDict({
      "bernoulli": {"p": 0.15, "p_per_client": config_dict.placeholder(tuple)},
      "fixed_count": {"num_byzantine": 5},
  })
  c.model = "mlp"
  c.model_options = ml_collections.ConfigDict({
      "logistic": {}, "mlp": {"hidden": (32,)}, "cnn": {"features": (16, 32), "dense": 64},
  })
  c.data = ml_collections.ConfigDict({
      "name": "digits", "data_dir": config_dict.placeholder(str),
      "partition": "dirichlet", "alpha": 1.0, "shards_per_client": 2, "gamma": 0.5,
      "min_size": 10, "test_fraction": 0.2,
      "synthetic_examples_per_client": 100, "synthetic_dim": 60, "synthetic_num_classes": 10,
      "synthetic_alpha": 1.0, "synthetic_beta": 1.0,
  })
  c.training = ml_collections.ConfigDict({
      "num_rounds": 200, "eval_every": 10, "local_steps": 1, "batch_size": 32,
      "client_lr": 0.5, "client_momentum": 0.9,
      "server_optimizer": "sgd", "server_lr": 1.0, "server_momentum": 0.0,
      # Pass each client's sample count to the aggregator as its weight (mean, trimmed_mean
      # and geometric_median have a weighted form).
      "weighted_aggregation": False,
  })
  return c


def _unknown_keys(config: Mapping[str, Any], schema: Mapping[str, Any], prefix: str = ""):
  for key, value in config.items():
    if key not in schema:
      yield prefix + key, sorted(schema)
    elif isinstance(schema[key], Mapping) and isinstance(value, Mapping):
      yield from _unknown_keys(value, schema[key], f"{prefix}{key}.")


def aggregator_specs(config) -> list[str]:
  return [s.strip() for s in config.aggregator.split(",") if s.strip()]


def honest_set_spec(config) -> dict[str, Any]:
  opts = dict(config.honest_set_options.get(config.honest_set, {}))
  if config.honest_set == "bernoulli":
    per_client = opts.pop("p_per_client")
    opts["p"] = tuple(per_client) if per_client is not None else opts["p"]
  return {"name": config.honest_set, **opts}


def validate(config) -> None:
  """Stops at once, naming the bad value and what is allowed, before any data or compile work."""
  unknown = list(_unknown_keys(config.to_dict(), base_config().to_dict()))
  if unknown:
    key, allowed = unknown[0]
    raise ValueError(f"config key {key!r} does not exist; allowed here: {', '.join(allowed)}.")
  n, f = config.num_clients, config.f
  if not isinstance(n, int) or n < 2:
    raise ValueError(f"num_clients must be an int >= 2, got {n!r}.")
  if not isinstance(f, int) or f < 0 or 2 * f >= n:
    raise ValueError(f"declared f={f!r} must be an int with 0 <= f < n/2 = {n / 2} "
                     f"(num_clients={n}): robust aggregation needs an honest majority.")
  if not isinstance(config.num_samples, int) or config.num_samples <= 0:
    raise ValueError(f"num_samples (S) must be a positive int, got {config.num_samples!r}.")
  specs = aggregator_specs(config)
  if not specs:
    raise ValueError(f"config.aggregator names no aggregator: {config.aggregator!r}.")
  for spec in specs:
    agg = aggregators.get(spec, f=f, options=config.aggregator_options.to_dict(),
                          weighted=config.training.weighted_aggregation)
    jax.eval_shape(agg, jax.ShapeDtypeStruct((n, 4), np.float32))  # trace-time checks of n, f
  attacks.get(config.attack, num_classes=2, options=config.attack_options.get(config.attack, {}))
  z_option = config.attack_options.alie.z
  if config.attack == "alie" and (z_option is None or np.isnan(z_option)):
    z = float(attacks.alie_z(n, f))
    if z <= 0:
      warnings.warn(f"ALIE's z from (n, f) = ({n}, {f}) is {z:.3g} <= 0: the attack sends the "
                    "honest mean or less; set attack_options.alie.z to study a real attack.")
  honest_sets.validate(honest_set_spec(config), num_clients=n)
  models.get(config.model, input_shape=(1, 1, 1), num_classes=2,
             **config.model_options.get(config.model, {}))
  data_lib.check_name(config.data.name)
  data_lib.check_partition(config.data.partition)
  t = config.training
  if t.server_optimizer not in _SERVER_OPTIMIZERS:
    raise ValueError(f"unknown server_optimizer {t.server_optimizer!r}; available: "
                     f"{', '.join(_SERVER_OPTIMIZERS)}.")
  if t.num_rounds < 1 or t.eval_every < 1 or t.num_rounds % t.eval_every:
    raise ValueError(f"training.num_rounds={t.num_rounds} must be a positive multiple of "
                     f"training.eval_every={t.eval_every}.")
  make_local_training(config)


def make_local_training(config) -> training.LocalTraining:
  t = config.training
  return training.LocalTraining(local_steps=t.local_steps, batch_size=t.batch_size,
                                lr=t.client_lr, momentum=t.client_momentum)


def make_data(config) -> data_lib.FederatedData:
  d = config.data
  return data_lib.load(
      d.name, num_clients=config.num_clients, partition=d.partition, alpha=d.alpha,
      shards_per_client=d.shards_per_client, gamma=d.gamma, min_size=d.min_size,
      test_fraction=d.test_fraction, data_dir=d.data_dir, seed=config.seed,
      synthetic_examples_per_client=d.synthetic_examples_per_client, synthetic_dim=d.synthetic_dim,
      synthetic_num_classes=d.synthetic_num_classes, synthetic_alpha=d.synthetic_alpha,
      synthetic_beta=d.synthetic_beta)


def make_simulator(config, spec: str, fed: data_lib.FederatedData) -> training.Simulator:
  """The simulator of one aggregator spec for this config and data."""
  model = models.get(config.model, input_shape=fed.input_shape, num_classes=fed.num_classes,
                     **config.model_options.get(config.model, {}))
  return training.Simulator(
      model=model,
      aggregator=aggregators.get(spec, f=config.f, options=config.aggregator_options.to_dict(),
                                 weighted=config.training.weighted_aggregation),
      weighted_aggregation=config.training.weighted_aggregation,
      attack=attacks.get(config.attack, num_classes=fed.num_classes,
                         options=config.attack_options.get(config.attack, {})),
      local=make_local_training(config),
      server_optimizer=_SERVER_OPTIMIZERS[config.training.server_optimizer](config.training),
      num_clients=config.num_clients)
