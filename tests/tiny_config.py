"""A configuration that trains in seconds (6 clients, 4 draws, 10 rounds), for the tests."""

from fedjax_robust.config import base_config


def get_config():
  c = base_config()
  c.num_clients = 6
  c.f = 1
  c.num_samples = 4
  c.aggregator = "mean,nnm+trimmed_mean"
  c.honest_set = "fixed_count"
  c.honest_set_options.fixed_count.num_byzantine = 1
  c.attack_options.alie.z = 1.0
  c.model = "logistic"
  c.data.min_size = 5
  c.training.num_rounds = 10
  c.training.eval_every = 5
  c.theory.enabled = False  # the theory tests switch it on
  return c
