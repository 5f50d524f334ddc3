"""Federated data: a source, a partition over clients, and the stacked `[n, m_max, ...]` arrays."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_robust.data.partition import PARTITIONERS
from fedjax_robust.data.sources import Dataset
from fedjax_robust.data.sources import DatasetUnavailableError
from fedjax_robust.data.sources import NUM_CLASSES
from fedjax_robust.data.sources import TFDS_NAMES
from fedjax_robust.data.sources import check_available
from fedjax_robust.data.sources import SOURCES
from fedjax_robust.data.stacking import ClientData
from fedjax_robust.data.stacking import stack_clients
from fedjax_robust.data.stacking import valid_mask
from fedjax_robust.data.synthetic import TASKS
from fedjax_robust.data.synthetic import make_synthetic

# Text data sets: inputs are windows of token ids (stored as float32), the label the next
# character's id; their sources, read offline, live in their own modules.
TEXT = ("shakespeare",)
NAMES = sorted([*SOURCES, "synthetic", *TEXT])


def is_text(name: str) -> bool:
  """Whether data set `name` is text (token-id windows, next-character labels)."""
  return name in TEXT


@dataclasses.dataclass(frozen=True)
class FederatedData:
  """Training data stacked per client, and a global test set for test accuracy.

  `holdout` is each client's held-out split (`holdout_split`), stacked like `train`: examples of
  client i's own distribution that no client trains on, for held-out per-client metrics; None
  when `holdout_fraction` is 0. `num_classes` is None for a regression task (float32
  real-valued targets, no classes)."""
  name: str
  train: ClientData
  test_x: jax.Array
  test_y: jax.Array
  num_classes: int | None
  holdout: ClientData | None = None
  # The server's root data set (x [m, ...], y [m]) for rules that compare each update with the
  # server's own (FLTrust): the first `root_examples` examples of the test split, which the test
  # metrics then leave out. None without one.
  root: tuple[jax.Array, jax.Array] | None = None
  # A profile of each client's data `[n, k]` that the data-similarity graph compares (None: the
  # clients' label distributions); shakespeare: character-trigram frequencies.
  client_features: np.ndarray | None = None
  # The data set's natural groups, one id per client `[n]` (shakespeare: the client's play),
  # the clusters law takes with `cluster_assignment='data'` (`natural_groups`); None: none.
  client_groups: np.ndarray | None = None

  @property
  def input_shape(self) -> tuple[int, ...]:
    return tuple(self.train.x.shape[2:])

  @property
  def task(self) -> str:
    """The task: "classification" (integer labels) or "regression" (real targets)."""
    return "regression" if self.num_classes is None else "classification"


def task(name: str, synthetic_task: str = "classification") -> str:
  """The task of a named data set, known before it is loaded: every source is a classification
  task; `synthetic` is the one `synthetic_task` names."""
  check_name(name)
  return synthetic_task if name == "synthetic" else "classification"


def num_classes(name: str, synthetic_num_classes: int = 10,
                synthetic_task: str = "classification") -> int | None:
  """The number of classes of a named data set, known before it is loaded (None: regression)."""
  if task(name, synthetic_task) == "regression":
    return None
  if name == "shakespeare":
    from fedjax_robust.data import shakespeare  # pylint: disable=g-import-not-at-top
    return shakespeare.NUM_CLASSES
  return synthetic_num_classes if name == "synthetic" else NUM_CLASSES[name]


def check_name(name: str) -> None:
  if name not in NAMES:
    raise ValueError(f"unknown data set {name!r}; available: {', '.join(NAMES)} "
                     "(only 'digits', 'cifar_shape', 'synthetic' and 'shakespeare' work offline "
                     "without preparation).")


def check_partition(partition: str) -> None:
  if partition not in PARTITIONERS:
    raise ValueError(f"unknown partition {partition!r}; available: {', '.join(PARTITIONERS)}.")


def holdout_size(count: int, fraction: float) -> int:
  """Examples held out of a client with `count` examples: ⌊fraction·count⌋ (the product rounded
  to 9 decimals first, so 0.29·100 gives 29, not 28), at least 1 when fraction > 0 and
  count >= 2, and never all of them (every client keeps >= 1 training example)."""
  if not 0 <= fraction < 1:
    raise ValueError(f"holdout_fraction must lie in [0, 1), got {fraction!r}.")
  if fraction == 0 or count < 2:
    return 0
  return min(max(math.floor(round(fraction * count, 9)), 1), count - 1)


def holdout_split(xs: Sequence[np.ndarray], ys: Sequence[np.ndarray], fraction: float,
                  seed: int) -> tuple[list, list, list, list]:
  """Holds out `holdout_size(m_i, fraction)` of each client's examples, chosen uniformly without
  replacement by a generator seeded from `seed` alone (a stream separate from the partition's,
  so the partition does not change with the fraction). Returns (train_xs, train_ys,
  holdout_xs, holdout_ys); both splits keep the client's original example order."""
  rng = np.random.default_rng([seed, 0x401D])  # its own stream: (seed, "hold")
  train_xs, train_ys, hold_xs, hold_ys = [], [], [], []
  for x, y in zip(xs, ys):
    held = np.zeros(len(y), bool)
    held[rng.choice(len(y), holdout_size(len(y), fraction), replace=False)] = True
    train_xs.append(x[~held])
    train_ys.append(y[~held])
    hold_xs.append(x[held])
    hold_ys.append(y[held])
  return train_xs, train_ys, hold_xs, hold_ys


def _federated(name, xs, ys, test_x, test_y, num_classes_, holdout_fraction, seed):
  """Stacks the clients' examples into a FederatedData, first holding out a split per client
  when `holdout_fraction` > 0 (with 0 the training arrays are exactly the stacked inputs)."""
  if not 0 <= holdout_fraction < 1:
    raise ValueError(f"holdout_fraction must lie in [0, 1), got {holdout_fraction!r}.")
  holdout = None
  if holdout_fraction > 0:
    xs, ys, hold_xs, hold_ys = holdout_split(xs, ys, holdout_fraction, seed)
    holdout = stack_clients(hold_xs, hold_ys)
  return FederatedData(name, stack_clients(xs, ys), jnp.asarray(test_x), jnp.asarray(test_y),
                       num_classes_, holdout)


def load(name: str, *, num_clients: int, partition: str = "dirichlet", alpha: float = 1.0,
         shards_per_client: int = 2, gamma: float = 0.5, min_size: int = 1,
         test_fraction: float = 0.2, data_dir: str | None = None, seed: int = 0,
         synthetic_examples_per_client: int = 100, synthetic_dim: int = 60,
         synthetic_num_classes: int = 10, synthetic_alpha: float = 1.0,
         synthetic_beta: float = 1.0, synthetic_task: str = "classification",
         synthetic_noise: float = 0.0, holdout_fraction: float = 0.0,
         root_examples: int = 0, group_size: int = 0,
         synthetic_group_shift: float = 0.0, group_labels=(),
         text_options=None, source_options=None) -> FederatedData:
  """Loads a data set and distributes its training split over `num_clients` clients.

  `synthetic` is generated per client (its heterogeneity comes from `synthetic_alpha/beta`, not
  from `partition`), a classification or least-squares regression task (`synthetic_task`, the
  regression targets with noise std `synthetic_noise`, a distinct group of the first
  `group_size` clients whose model is shifted by `synthetic_group_shift`); every other source is
  partitioned by `partition` with its options ("label_groups": the first `group_size` clients
  hold the labels `group_labels`, the others the rest, Dirichlet(`alpha`) on each side). With `holdout_fraction` > 0 each client's examples are then
  split into training and held-out examples (`holdout_split`, `FederatedData.holdout`). With
  `root_examples` > 0 the first that many test examples become the server's root data set
  (`FederatedData.root`) and leave the test set.

  `shakespeare` (text) has natural clients, its speaking roles (`data.shakespeare.load`, with
  `text_options`: window, min_chars, selection, max_examples_per_client, max_test_examples):
  `partition` does not apply; each role's text is split contiguously into training, test and
  held-out parts (`test_fraction`, `holdout_fraction`).

  `source_options`: keyword options of a generated source (`cifar_shape`: train_examples,
  test_examples, clutter, noise; `sources.load_cifar_shape`); None: its defaults.
  """
  fed = _load(name, num_clients=num_clients, partition=partition, alpha=alpha,
              shards_per_client=shards_per_client, gamma=gamma, min_size=min_size,
              test_fraction=test_fraction, data_dir=data_dir, seed=seed,
              synthetic_examples_per_client=synthetic_examples_per_client,
              synthetic_dim=synthetic_dim, synthetic_num_classes=synthetic_num_classes,
              synthetic_alpha=synthetic_alpha, synthetic_beta=synthetic_beta,
              synthetic_task=synthetic_task, synthetic_noise=synthetic_noise,
              holdout_fraction=holdout_fraction, group_size=group_size,
              synthetic_group_shift=synthetic_group_shift, group_labels=group_labels,
              text_options=text_options, source_options=source_options)
  if root_examples <= 0:
    return fed
  if root_examples >= fed.test_y.shape[0]:
    raise ValueError(f"data.root_examples={root_examples} must be smaller than the test split "
                     f"({fed.test_y.shape[0]} examples), which keeps the rest for test metrics.")
  return dataclasses.replace(
      fed, test_x=fed.test_x[root_examples:], test_y=fed.test_y[root_examples:],
      root=(fed.test_x[:root_examples], fed.test_y[:root_examples]))


def _load(name, *, num_clients, partition, alpha, shards_per_client, gamma, min_size,
          test_fraction, data_dir, seed, synthetic_examples_per_client, synthetic_dim,
          synthetic_num_classes, synthetic_alpha, synthetic_beta, synthetic_task,
          synthetic_noise, holdout_fraction, group_size=0,
          synthetic_group_shift=0.0, group_labels=(), text_options=None,
          source_options=None) -> FederatedData:
  check_name(name)
  check_partition(partition)
  if name == "shakespeare":
    return _load_shakespeare(num_clients, seed=seed, test_fraction=test_fraction,
                             holdout_fraction=holdout_fraction, **dict(text_options or {}))
  if name == "synthetic":
    xs, ys, test_x, test_y = make_synthetic(
        num_clients, examples_per_client=synthetic_examples_per_client, dim=synthetic_dim,
        num_classes=synthetic_num_classes, alpha=synthetic_alpha, beta=synthetic_beta,
        test_fraction=test_fraction, seed=seed, task=synthetic_task, noise=synthetic_noise,
        group_size=group_size, group_shift=synthetic_group_shift)
    return _federated(name, xs, ys, test_x, test_y,
                      num_classes(name, synthetic_num_classes, synthetic_task),
                      holdout_fraction, seed)
  source = SOURCES[name](test_fraction=test_fraction, seed=seed, data_dir=data_dir,
                         **dict(source_options or {}))
  options = {"dirichlet": {"alpha": alpha}, "shards": {"shards_per_client": shards_per_client},
             "gamma_similarity": {"gamma": gamma}, "iid": {},
             "label_groups": {"alpha": alpha, "group_size": group_size,
                              "group_labels": tuple(group_labels)}}[partition]
  parts = PARTITIONERS[partition](source.y_train, num_clients, np.random.default_rng(seed),
                                  min_size=min_size, **options)
  return _federated(name, [source.x_train[p] for p in parts], [source.y_train[p] for p in parts],
                    source.x_test, source.y_test, source.num_classes, holdout_fraction, seed)


@functools.lru_cache(maxsize=16)
def natural_groups(name: str, num_clients: int, *, seed: int, text_options: tuple = ()
                   ) -> tuple[int, ...]:
  """The natural group of every client of a text data set (shakespeare: its play's index, as
  `FederatedData.client_groups` of the loaded data), from the client selection alone
  (`shakespeare.choose_roles`: no windows built). `text_options`: the loader's options as
  sorted (key, value) pairs."""
  if name != "shakespeare":
    raise ValueError(f"data set {name!r} has no natural groups.")
  from fedjax_robust.data import shakespeare  # pylint: disable=g-import-not-at-top
  options = dict(text_options)
  chosen = shakespeare.choose_roles(num_clients, seed=seed, min_chars=options["min_chars"],
                                    selection=options["selection"])
  return tuple(int(i) for i in shakespeare.play_groups(chosen)[0])


def _load_shakespeare(num_clients: int, *, seed: int, test_fraction: float,
                      holdout_fraction: float, **options) -> FederatedData:
  """Shakespeare's speaking roles as clients (`data.shakespeare.load`): training windows
  stacked per client, the pooled test parts as the global test set, the held-out parts as
  `holdout` (None when `holdout_fraction` is 0), the plays as natural groups and the trigram
  profiles as the features a data-similarity graph compares."""
  from fedjax_robust.data import shakespeare  # pylint: disable=g-import-not-at-top
  text = shakespeare.load(num_clients, seed=seed, test_fraction=test_fraction,
                          holdout_fraction=holdout_fraction, **options)
  holdout = stack_clients(text.hold_xs, text.hold_ys) if holdout_fraction > 0 else None
  return FederatedData("shakespeare", stack_clients(text.xs, text.ys),
                       jnp.asarray(text.test_x), jnp.asarray(text.test_y), text.num_classes,
                       holdout, client_features=np.asarray(text.features, np.float64),
                       client_groups=np.asarray(text.play_ids, np.int64))
