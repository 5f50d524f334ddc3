"""Shared test helpers: small configurations and NumPy references."""

import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


@pytest.fixture
def rng():
  return np.random.default_rng(1234)


def config_module(name: str):
  """configs/<name>.py loaded as a module (the sweep configs' `points`, `get_config`)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", name + ".py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def tiny_config():
  from tiny_config import get_config  # pylint: disable=g-import-not-at-top
  return get_config()


def synthetic_dgd_config(*, model="logistic", aggregator="trimmed_mean", samples=16, dim=6,
                         examples=40, alpha=1.0, beta=0.0, l2=0.0, client_lr=1.0):
  """`tiny_config` with the theory on, on the synthetic task (binary classification, or the
  regression task for `linear_regression`), trained by robust D-GD (full batch, one local step,
  no momentum): 8 clients, f = 1, each Byzantine with p = 0.15, 40 rounds."""
  c = tiny_config()
  c.theory.enabled = True
  c.model = model
  c.num_clients, c.f = 8, 1
  c.aggregator = aggregator
  c.honest_set = "bernoulli"
  c.honest_set_options.bernoulli.p = 0.15
  c.num_samples = samples
  c.data.name = "synthetic"
  if model == "linear_regression":
    c.data.synthetic_task = "regression"
  else:
    c.data.synthetic_num_classes = 2
  c.data.synthetic_dim = dim
  c.data.synthetic_examples_per_client = examples
  c.data.synthetic_alpha = alpha
  c.data.synthetic_beta = beta
  c.training.l2 = l2
  c.training.batch_size = 0
  c.training.client_momentum = 0.0
  c.training.client_lr = client_lr
  c.training.num_rounds = 40
  c.training.eval_every = 5
  return c


def set_key(config, dotted, value):
  """Sets a dotted config key whatever its type (as a config file could with ignore_type): the
  validation layer, not ConfigDict's type lock, must catch a bad value."""
  *path, leaf = dotted.split(".")
  node = config
  for p in path:
    node = node[p]
  with node.ignore_type():
    node[leaf] = value
