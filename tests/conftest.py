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
