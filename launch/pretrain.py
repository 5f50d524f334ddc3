"""Pretrains (or loads) the base language model that federated fine-tuning starts from.

  python launch/pretrain.py --config=configs/shakespeare.py

A base is trained centrally on text no client holds (shakespeare: the plays of
`data.shakespeare.BASE_PLAYS`), with the model, window, seed and `pretraining.*` settings of the
configuration, and cached in `pretraining.cache_dir` (default `$FEDJAX_ROBUST_CACHE/pretrained`
or `~/.cache/fedjax_robust/pretrained`) under the fingerprint of what makes it; a run or sweep
with `pretraining.enabled` loads it from there (and trains it itself when it is missing), so this
command only moves the pretraining out of the first run. Prints the base's held-out loss,
perplexity and next-character accuracy on the base text, and where it is (`wrote <path>` when
it trained it). A sweep
configuration (a `base` ConfigDict) pretrains its base's.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fedjax_robust import config as config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from fedjax_robust import data as data_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from fedjax_robust import errors  # pylint: disable=g-import-not-at-top,wrong-import-position
from fedjax_robust import pretraining  # pylint: disable=g-import-not-at-top,wrong-import-position
from fedjax_robust.errors import ConfigError  # pylint: disable=g-import-not-at-top,wrong-import-position

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "shakespeare.py")
_CONFIG = errors.define_config_flag(
    _DEFAULT_CONFIG, "A configuration (or a sweep configuration with a `base`) whose model is "
    "pretrained.", lock_config=True)


def main(_):
  c = _CONFIG.value
  c = c.base if "base" in c else c
  job = config_lib.resolve(c)
  if not job.pretraining.enabled:
    raise ConfigError("pretraining.enabled=False: this configuration starts from no pretrained "
                      "base; set --config.pretraining.enabled=True (a text data set).")
  window = int(job.data.shakespeare.window)
  num_classes = data_lib.num_classes(job.data.name)
  _, info = pretraining.base_params(job, input_shape=(window,), num_classes=num_classes)
  print(pretraining.describe(info))
  if not info["cached"]:
    print(f"wrote {info['path']}")


if __name__ == "__main__":
  errors.run_main(main, _DEFAULT_CONFIG)
