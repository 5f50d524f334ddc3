"""Random configurations from the schema: each either runs a tiny job to a finite, consistent
summary, or stops before compiling with a message naming a key it changed. No other outcome."""

import math
import re

import numpy as np
import pytest

from conftest import set_key as _set
from conftest import tiny_config
from fedjax_robust import config as config_lib
from fedjax_robust import experiment
from fedjax_robust import results
from fedjax_robust.errors import ConfigError


def _base():
  c = tiny_config()
  c.num_samples = 3
  c.training.num_rounds = 4
  c.training.eval_every = 2
  return c


def _names_a_key(message: str, changed) -> bool:
  for dotted, _ in changed:
    leaf = dotted.split(".")[-1]
    if dotted in message or re.search(rf"(?<![\w.]){re.escape(leaf)}\b", message):
      return True
    # A changed name (aggregator, attack, law, model) is named by its value's own errors.
    if dotted.rsplit(".", 2)[0] in ("aggregator_options", "attack_options",
                                    "honest_set_options", "model_options"):
      if dotted.split(".")[1] in message:
        return True
  return False


def _check_summary(summary: dict, num_samples: int) -> None:
  for name, s in summary["aggregators"].items():
    acc, loss = s["honest_accuracy"], s["honest_loss"]
    diverged = s["diverged"]["count"]
    assert 0 <= diverged <= num_samples, name
    assert acc["count"] + acc["undefined"] == num_samples, name
    assert math.isnan(acc["mean"]) or 0 <= acc["mean"] <= 1, name
    assert loss["count"] + loss["undefined"] == num_samples, name
    if diverged == 0 and loss["count"]:
      assert math.isfinite(loss["mean"]), name   # no non-finite number without a diverged draw
    # A diverged draw's accuracy is undefined, never averaged in.
    assert acc["count"] <= num_samples - diverged, name


def _trial(rng, keys, domains) -> str:
  c = _base()
  changed = []
  for i in rng.choice(len(keys), size=int(rng.integers(1, 3)), replace=False):
    key = keys[i]
    valid, invalid = domains[key].examples()
    pool = valid if rng.random() < 0.5 else invalid
    value = pool[int(rng.integers(len(pool)))]
    _set(c, key, value)
    changed.append((key, value))
  try:
    config_lib.validate(c)
  except ConfigError as e:
    assert _names_a_key(str(e), changed), (changed, str(e))
    assert "\n" not in str(e).strip() or len(str(e).splitlines()) <= 3, str(e)
    return "refused"
  exp = experiment.run(c, log=lambda _: None)
  summary = results.summarize(exp)
  _check_summary(summary, c.num_samples)
  return "ran"


def _fuzz(num_trials: int, seed: int):
  domains = config_lib.all_domains()
  keys = sorted(domains)
  rng = np.random.default_rng(seed)
  outcomes = [_trial(rng, keys, domains) for _ in range(num_trials)]
  return outcomes


def test_fuzzed_configurations_run_or_are_refused_naming_the_key():
  outcomes = _fuzz(8, seed=11)
  assert "refused" in outcomes and "ran" in outcomes


@pytest.mark.slow
def test_fuzzed_configurations_many():
  outcomes = _fuzz(150, seed=2026)
  assert outcomes.count("ran") >= 20
