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


def tiny_config():
  from tiny_config import get_config  # pylint: disable=g-import-not-at-top
  return get_config()


def set_key(config, dotted, value):
  """Sets a dotted config key whatever its type (as a config file could with ignore_type): the
  validation layer, not ConfigDict's type lock, must catch a bad value."""
  *path, leaf = dotted.split(".")
  node = config
  for p in path:
    node = node[p]
  with node.ignore_type():
    node[leaf] = value
