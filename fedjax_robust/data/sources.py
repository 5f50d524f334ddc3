"""Centralized data sources: the bundled UCI digits (offline default) and tensorflow-datasets.

A source gives a `Dataset` of float32 inputs in [0, 1] with shape `[N, H, W, C]` and int32 labels.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np


class DatasetUnavailableError(RuntimeError):
  """A data set that is neither on disk nor downloadable here."""


@dataclasses.dataclass(frozen=True)
class Dataset:
  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int


def _split_train_test(x, y, test_fraction: float, rng: np.random.Generator):
  """A stratified split: the same fraction of every class goes to the test set."""
  if not 0 < test_fraction < 1:
    raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}.")
  test = np.concatenate([
      idx[:int(round(test_fraction * len(idx)))]
      for idx in (rng.permutation(np.flatnonzero(y == c)) for c in np.unique(y))])
  is_test = np.zeros(len(y), bool)
  is_test[test] = True
  return x[~is_test], y[~is_test], x[is_test], y[is_test]


def load_digits(*, test_fraction: float = 0.2, seed: int = 0, **_) -> Dataset:
  """The UCI optical handwritten digits shipped inside scikit-learn: 1,797 images 8×8, 10
  classes, pixel values 0..16 scaled to [0, 1]. Works offline."""
  from sklearn.datasets import load_digits as sklearn_digits  # pylint: disable=g-import-not-at-top
  bunch = sklearn_digits()
  x = (bunch.images / 16.0).astype(np.float32)[..., None]
  y = bunch.target.astype(np.int32)
  splits = _split_train_test(x, y, test_fraction, np.random.default_rng(seed))
  return Dataset("digits", *splits, num_classes=10)


# Names accepted for tensorflow-datasets, mapped to tfds names.
TFDS_NAMES = {"mnist": "mnist", "fashion_mnist": "fashion_mnist", "cifar10": "cifar10",
              "emnist": "emnist/balanced"}
# Classes of each named source, known before loading (config validation checks labels against
# them); `load` checks the loaded data agrees.
NUM_CLASSES = {"digits": 10, "mnist": 10, "fashion_mnist": 10, "cifar10": 10, "emnist": 47}


def _open_split(name: str, split: str, data_dir: str | None):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except Exception as e:  # tfds raises several types for "not prepared here"
    where = data_dir or "~/tensorflow_datasets (the tfds default)"
    raise DatasetUnavailableError(
        f"tensorflow-datasets data set {name!r} (split {split!r}) is not available under "
        f"{where}, and this machine cannot download it. Prepare it where there is internet "
        f"access (with tensorflow installed): python -c \"import tensorflow_datasets as tfds; "
        f"tfds.builder('{name}', file_format='array_record').download_and_prepare()\", then copy "
        f"the tensorflow_datasets folder here and pass --config.data.data_dir=<that folder>; "
        f"or use the offline data set 'digits'. (tfds said: {type(e).__name__}: "
        f"{str(e).splitlines()[0] if str(e) else ''})") from e


def check_available(name: str, data_dir: str | None = None) -> None:
  """Raises DatasetUnavailableError unless the tfds data set `name` is prepared on disk."""
  for split in ("train", "test"):
    _open_split(TFDS_NAMES[name], split, data_dir)


def _read_split(name: str, split: str, data_dir: str | None):
  source = _open_split(name, split, data_dir)
  examples = [source[i] for i in range(len(source))]
  x = np.stack([np.asarray(ex["image"]) for ex in examples]).astype(np.float32) / 255.0
  y = np.asarray([ex["label"] for ex in examples], np.int32)
  num_classes = source.dataset_info.features["label"].num_classes
  if x.ndim == 3:
    x = x[..., None]
  return x, y, num_classes


def load_tfds(name: str, *, data_dir: str | None = None, **_) -> Dataset:
  """mnist, fashion_mnist, cifar10 or emnist (= 'emnist/balanced', 47 classes) through
  `tfds.data_source` (random-access ArrayRecord files; TensorFlow is not needed). Nothing is
  downloaded: a data set that is not prepared on disk raises `DatasetUnavailableError`."""
  tfds_name = TFDS_NAMES[name]
  x_train, y_train, num_classes = _read_split(tfds_name, "train", data_dir)
  x_test, y_test, _ = _read_split(tfds_name, "test", data_dir)
  return Dataset(name, x_train, y_train, x_test, y_test, num_classes)


SOURCES: dict[str, Callable[..., Dataset]] = {
    "digits": load_digits,
    **{name: (lambda n: lambda **kw: load_tfds(n, **kw))(name) for name in TFDS_NAMES},
}
