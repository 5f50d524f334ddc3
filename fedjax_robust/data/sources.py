"""Centralized data sources: the bundled UCI digits (offline default), generated images of
CIFAR-10's shape (`cifar_shape`, offline) and tensorflow-datasets.

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


# cifar_shape: generated images at CIFAR-10's shape (`load_cifar_shape`).
CIFAR_SHAPE = (32, 32, 3)
_COARSE = 8          # the smooth fields' coarse grid: a bump every 32 / 8 = 4 pixels
_BLUR = 3.0          # std of each bump, in pixels
_MAX_SHIFT = 4       # a template is translated by -4..4 pixels along each axis
_CONTRAST = (0.10, 0.25)   # an image's contrast, uniform on this interval


def _smooth_basis() -> np.ndarray:
  """U `[32, 8]`: Gaussian bumps U_ij = exp(−d(i, 4j)² / (2·3²)) of the periodic distance d on 32
  pixels, scaled so that the mean over i of Σ_j U_ij² is 1 (a field U Z Uᵀ with iid N(0, 1)
  entries Z then has variance ≈ 1 at every pixel: (Σ_j U_ij²)(Σ_k U_lk²) at pixel (i, l))."""
  size = CIFAR_SHAPE[0]
  d = np.abs(np.arange(size)[:, None] - (size // _COARSE) * np.arange(_COARSE)[None, :])
  u = np.exp(-0.5 * (np.minimum(d, size - d) / _BLUR) ** 2)
  return (u / np.sqrt(np.mean(np.sum(u ** 2, axis=1)))).astype(np.float32)


def _smooth_fields(rng: np.random.Generator, n: int) -> np.ndarray:
  """n smooth periodic random fields `[n, 32, 32, 3]`: per channel F = U Z Uᵀ (`_smooth_basis`),
  Z `[8, 8]` iid N(0, 1) — a Gaussian random field of correlation length ≈ 3 px, its spectrum
  nearly nothing above 4 cycles per image. Circular, so `np.roll` translates it exactly."""
  u = _smooth_basis()
  z = rng.standard_normal((n * CIFAR_SHAPE[2], _COARSE, _COARSE), dtype=np.float32)
  f = np.matmul(np.matmul(u, z), u.T).reshape(n, CIFAR_SHAPE[2], *CIFAR_SHAPE[:2])
  return np.ascontiguousarray(f.transpose(0, 2, 3, 1))


def load_cifar_shape(*, seed: int = 0, train_examples: int = 6000, test_examples: int = 1000,
                     clutter: float = 2.0, noise: float = 0.1, **_) -> Dataset:
  """Generated images of CIFAR-10's shape, for CNNs at that scale offline (`cifar10` is the real
  data set, through tfds): 32×32×3 float32 in [0, 1], 10 classes, exactly balanced in each split
  (classes ⌊N/10⌋ or ⌈N/10⌉), fixed train/test sizes (`test_fraction` does not apply, as for
  cifar10). Everything is drawn from `default_rng([seed, 0xC1FA])`.

  Each class c has a template T_c, a smooth random field (`_smooth_fields`) standardized to
  mean 0 and std 1. An example of class c is

    x = clip(0.5 + a·(roll(T_c, (δ_1, δ_2)) + clutter·G) / √(1 + clutter²) + ε, 0, 1),

  the template translated circularly by δ_1, δ_2 uniform on {−4, …, 4} pixels, G a fresh
  smooth field of the same law independent of the class (structured clutter), contrast a
  uniform on [0.10, 0.25], and pixel noise ε iid uniform with std `noise`. Learnable, not
  trivial: the default (clutter 2, noise 0.1) puts a nearest-class-mean classifier at 70–80%
  on the test split (tests/test_data.py).
  """
  if train_examples < 10 or test_examples < 10:
    raise ValueError(f"cifar_shape needs at least 10 examples per split (one per class), got "
                     f"train_examples={train_examples}, test_examples={test_examples}.")
  if not (clutter >= 0 and noise >= 0):
    raise ValueError(f"cifar_shape's clutter and noise must be >= 0, got clutter={clutter!r}, "
                     f"noise={noise!r}.")
  rng = np.random.default_rng([seed, 0xC1FA])
  templates = _smooth_fields(rng, 10)
  templates -= templates.mean(axis=(1, 2, 3), keepdims=True)
  templates /= templates.std(axis=(1, 2, 3), keepdims=True)
  shifts = [(a, b) for a in range(-_MAX_SHIFT, _MAX_SHIFT + 1)
            for b in range(-_MAX_SHIFT, _MAX_SHIFT + 1)]
  rolled = np.stack([np.roll(templates, s, axis=(1, 2)) for s in shifts], axis=1)

  def split(n):
    y = rng.permutation(np.arange(n) % 10).astype(np.int32)
    x = rolled[y, rng.integers(0, len(shifts), n)]
    x += np.float32(clutter) * _smooth_fields(rng, n)
    x *= (rng.uniform(*_CONTRAST, n) / np.sqrt(1 + clutter ** 2)).astype(np.float32)[
        :, None, None, None]
    half_width = np.float32(np.sqrt(3) * noise)   # uniform on [−h, h] has std h / √3
    x += rng.random(x.shape, dtype=np.float32) * (2 * half_width) + (np.float32(0.5) - half_width)
    return np.clip(x, 0, 1, out=x), y

  x_train, y_train = split(int(train_examples))
  x_test, y_test = split(int(test_examples))
  return Dataset("cifar_shape", x_train, y_train, x_test, y_test, num_classes=10)


# Names accepted for tensorflow-datasets, mapped to tfds names.
TFDS_NAMES = {"mnist": "mnist", "fashion_mnist": "fashion_mnist", "cifar10": "cifar10",
              "emnist": "emnist/balanced"}
# Classes of each named source, known before loading (config validation checks labels against
# them); `load` checks the loaded data agrees.
NUM_CLASSES = {"digits": 10, "cifar_shape": 10, "mnist": 10, "fashion_mnist": 10, "cifar10": 10, "emnist": 47}


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
    "cifar_shape": load_cifar_shape,
    **{name: (lambda n: lambda **kw: load_tfds(n, **kw))(name) for name in TFDS_NAMES},
}
