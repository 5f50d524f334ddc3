"""Sources, partitioners and stacking: counts, skew, padding, tfds through mock_data, the
generated cifar_shape images."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from fedjax_robust import data
from fedjax_robust.data import partition


def labels_for(rng, num=2000, classes=10):
  return rng.integers(0, classes, size=num)


def assert_exact_cover(parts, num):
  joined = np.concatenate(parts)
  assert len(joined) == num and len(np.unique(joined)) == num  # disjoint and complete


def label_skew(labels, parts, classes=10):
  """Mean total-variation distance between each client's label law and the global one."""
  glob = np.bincount(labels, minlength=classes) / len(labels)
  return np.mean([0.5 * np.abs(np.bincount(labels[p], minlength=classes) / len(p) - glob).sum()
                  for p in parts])


@pytest.mark.parametrize("name,opts", [("iid", {}), ("dirichlet", {"alpha": 0.5}),
                                       ("shards", {"shards_per_client": 2}),
                                       ("gamma_similarity", {"gamma": 0.3}),
                                       ("label_groups", {"alpha": 1.0, "group_size": 4,
                                                         "group_labels": (7, 8, 9)})])
def test_partitions_cover_every_example_once(rng, name, opts):
  labels = labels_for(rng)
  parts = partition.PARTITIONERS[name](labels, 20, np.random.default_rng(0), min_size=5, **opts)
  assert len(parts) == 20
  assert_exact_cover(parts, len(labels))
  assert min(len(p) for p in parts) >= 5


def test_label_groups_give_the_group_its_labels_and_no_other(rng):
  labels = labels_for(rng)
  parts = partition.label_groups(labels, 10, np.random.default_rng(1), group_size=3,
                                 group_labels=(8, 9), alpha=100.0, min_size=5)
  for i, p in enumerate(parts):
    held = set(np.unique(labels[p]).tolist())
    assert held <= ({8, 9} if i < 3 else set(range(8))), (i, held)
  np.testing.assert_array_equal(np.sort(np.concatenate(parts[:3])),
                                np.flatnonzero(np.isin(labels, (8, 9))))
  with pytest.raises(ValueError, match="some but not all"):
    partition.label_groups(labels, 10, np.random.default_rng(1), group_size=3,
                           group_labels=tuple(range(10)), alpha=1.0)
  with pytest.raises(ValueError, match="1 <= group_size < num_clients=10"):
    partition.label_groups(labels, 10, np.random.default_rng(1), group_size=10,
                           group_labels=(8,), alpha=1.0)


def test_iid_sizes_are_equal(rng):
  parts = partition.iid(labels_for(rng, 1003), 10, np.random.default_rng(0))
  assert {len(p) for p in parts} == {100, 101}


def test_dirichlet_skew_decreases_with_alpha(rng):
  labels = labels_for(rng, 5000)
  skew = {a: label_skew(labels, partition.dirichlet(labels, 20, np.random.default_rng(0), alpha=a))
          for a in (0.05, 1.0, 1000.0)}
  assert skew[0.05] > 0.6 > skew[1.0] > 0.2 > 0.05 > skew[1000.0]


def test_dirichlet_min_size_is_enforced_or_explained(rng):
  labels = labels_for(rng, 1000)
  parts = partition.dirichlet(labels, 10, np.random.default_rng(0), alpha=0.3, min_size=30)
  assert min(len(p) for p in parts) >= 30
  with pytest.raises(ValueError, match=r"no Dirichlet\(alpha=0.01\) partition .* min_size=90"):
    partition.dirichlet(labels, 10, np.random.default_rng(0), alpha=0.01, min_size=90)


def test_shards_and_sorted_split_see_few_classes(rng):
  labels = np.repeat(np.arange(10), 200)
  for parts in (partition.shards(labels, 20, np.random.default_rng(0), shards_per_client=2),
                partition.gamma_similarity(labels, 20, np.random.default_rng(0), gamma=0.0)):
    assert max(len(np.unique(labels[p])) for p in parts) <= 2
  iid_like = partition.gamma_similarity(labels, 20, np.random.default_rng(0), gamma=1.0)
  assert label_skew(labels, iid_like) < 0.15


def test_partition_errors(rng):
  labels = labels_for(rng, 100)
  with pytest.raises(ValueError, match="min_size=20"):
    partition.iid(labels, 10, np.random.default_rng(0), min_size=20)
  with pytest.raises(ValueError, match="alpha must be > 0"):
    partition.dirichlet(labels, 10, np.random.default_rng(0), alpha=0.0)
  with pytest.raises(ValueError, match=r"gamma must lie in \[0, 1\]"):
    partition.gamma_similarity(labels, 10, np.random.default_rng(0), gamma=2.0)


def test_stacking_pads_with_zeros_and_counts():
  xs = [np.ones((3, 2, 2, 1)), 2 * np.ones((1, 2, 2, 1))]
  ys = [np.array([1, 2, 3]), np.array([4])]
  stacked = data.stack_clients(xs, ys)
  assert stacked.x.shape == (2, 3, 2, 2, 1)
  np.testing.assert_array_equal(stacked.counts, [3, 1])
  np.testing.assert_array_equal(stacked.y, [[1, 2, 3], [4, 0, 0]])
  assert float(jnp.abs(stacked.x[1, 1:]).sum()) == 0.0
  np.testing.assert_array_equal(data.valid_mask(stacked.counts, 3),
                                [[True, True, True], [True, False, False]])


def test_digits_is_offline_and_stratified():
  fed = data.load("digits", num_clients=10, partition="iid", test_fraction=0.2)
  assert fed.num_classes == 10 and fed.input_shape == (8, 8, 1)
  assert int(fed.train.counts.sum()) + fed.test_y.shape[0] == 1797
  assert 0.0 <= float(fed.train.x.min()) and float(fed.train.x.max()) <= 1.0
  test_share = np.bincount(np.asarray(fed.test_y), minlength=10) / fed.test_y.shape[0]
  np.testing.assert_allclose(test_share, 0.1, atol=0.01)


def test_synthetic_heterogeneity_is_a_parameter():
  def skew(alpha, beta):
    fed = data.load("synthetic", num_clients=10, synthetic_alpha=alpha, synthetic_beta=beta,
                    synthetic_examples_per_client=400)
    y = np.asarray(fed.train.y)
    parts = [np.arange(i * y.shape[1], i * y.shape[1] + int(c))
             for i, c in enumerate(np.asarray(fed.train.counts))]
    return label_skew(y.reshape(-1), parts)
  assert skew(0.0, 0.0) < 0.1 < skew(2.0, 2.0)


def test_a_synthetic_group_has_its_own_optimum_and_moves_nothing_else():
  """Least squares without noise or per-client shift (α = 0, σ = 0): every client's exact
  optimum is the global (w, b), the group's is (w + δ·d, b + δ·d⁰), so the distance between the
  two optima is δ·‖(d, d⁰)‖ and grows linearly in δ; the inputs and the other clients' targets
  are those without a group."""
  from fedjax_robust.data.synthetic import make_synthetic  # pylint: disable=g-import-not-at-top
  kw = dict(examples_per_client=40, dim=4, num_classes=2, alpha=0.0, beta=0.5, noise=0.0,
            test_fraction=0.1, seed=3, task="regression")

  def optima(shift):
    xs, ys, _, _ = make_synthetic(6, group_size=2, group_shift=shift, **kw)
    fit = lambda x, y: np.linalg.lstsq(  # pylint: disable=unnecessary-lambda-assignment
        np.c_[x.reshape(len(x), -1), np.ones(len(x))].astype(np.float64), y.astype(np.float64),
        rcond=None)[0]
    return np.stack([fit(x, y) for x, y in zip(xs, ys)]), xs, ys

  plain, xs0, ys0 = optima(0.0)
  np.testing.assert_allclose(plain, np.repeat(plain[:1], 6, axis=0), atol=1e-4)  # one optimum
  shifted, xs1, ys1 = optima(2.0)
  doubled, _, _ = optima(4.0)
  np.testing.assert_allclose(shifted[2:], plain[2:], atol=1e-4)  # the others do not move
  np.testing.assert_allclose(shifted[0], shifted[1], atol=1e-4)  # the group shares its optimum
  gap = np.linalg.norm(shifted[0] - plain[0])
  assert gap > 1.0
  np.testing.assert_allclose(np.linalg.norm(doubled[0] - plain[0]), 2 * gap, rtol=1e-4)
  for a, b in zip(xs0, xs1):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(ys0[2:], ys1[2:]):
    np.testing.assert_array_equal(a, b)
  without = make_synthetic(6, **kw)
  for a, b in zip(without[1], ys0):
    np.testing.assert_array_equal(a, b)  # group_size with shift 0 is no group
  with pytest.raises(ValueError, match="group_size must lie in"):
    make_synthetic(6, group_size=7, group_shift=1.0, **kw)


@pytest.mark.parametrize("name,shape,classes", [("mnist", (28, 28, 1), 10),
                                                ("cifar10", (32, 32, 3), 10)])
def test_tfds_loading_through_mock_data(name, shape, classes):
  with tfds.testing.mock_data(num_examples=60, policy=tfds.testing.MockPolicy.USE_CODE):
    fed = data.load(name, num_clients=4, partition="iid")
  assert fed.num_classes == classes
  assert fed.train.x.shape == (4, 15, *shape)
  assert fed.test_x.shape == (60, *shape)
  assert 0.0 <= float(fed.train.x.min()) and float(fed.train.x.max()) <= 1.0


# cifar_shape (issue 37): generated images of CIFAR-10's shape, offline.

_SMALL = {"train_examples": 2000, "test_examples": 500}


def nearest_class_mean_accuracy(ds) -> float:
  """Test accuracy of the nearest class mean (squared Euclidean distance over all 3,072 pixel
  values, the means of the training split), in plain NumPy."""
  xt = ds.x_train.reshape(len(ds.y_train), -1).astype(np.float64)
  xs = ds.x_test.reshape(len(ds.y_test), -1).astype(np.float64)
  means = np.stack([xt[ds.y_train == c].mean(0) for c in range(ds.num_classes)])
  dist = (xs ** 2).sum(1)[:, None] - 2 * xs @ means.T + (means ** 2).sum(1)[None, :]
  return float(np.mean(dist.argmin(1) == ds.y_test))


def test_cifar_shape_is_offline_deterministic_balanced_and_in_range():
  from fedjax_robust.data import sources  # pylint: disable=g-import-not-at-top
  ds = data.SOURCES["cifar_shape"](seed=0, test_fraction=0.5, data_dir="/nonexistent")
  assert ds.x_train.shape == (6000, 32, 32, 3) and ds.x_test.shape == (1000, 32, 32, 3)
  assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
  assert ds.num_classes == data.NUM_CLASSES["cifar_shape"] == data.num_classes("cifar_shape")
  for x in (ds.x_train, ds.x_test):
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert 0.1 < float(x.std()) < 0.3  # images, not a constant; clipping is rare
    assert np.mean((x == 0) | (x == 1)) < 0.05
  np.testing.assert_array_equal(np.bincount(ds.y_train), np.full(10, 600))  # exactly balanced
  np.testing.assert_array_equal(np.bincount(ds.y_test), np.full(10, 100))
  odd = sources.load_cifar_shape(seed=0, train_examples=1005, test_examples=13)
  assert set(np.bincount(odd.y_train)) == {100, 101} and set(np.bincount(odd.y_test)) == {1, 2}
  again = data.SOURCES["cifar_shape"](seed=0)
  for a, b in zip((ds.x_train, ds.y_train, ds.x_test, ds.y_test),
                  (again.x_train, again.y_train, again.x_test, again.y_test)):
    np.testing.assert_array_equal(a, b)
  other = data.SOURCES["cifar_shape"](seed=1)
  assert float(np.abs(other.x_train - ds.x_train).mean()) > 0.1
  assert np.mean(other.y_train == ds.y_train) < 0.2
  with pytest.raises(ValueError, match="at least 10 examples per split"):
    sources.load_cifar_shape(train_examples=9)
  with pytest.raises(ValueError, match="clutter and noise must be >= 0"):
    sources.load_cifar_shape(noise=-0.1)


def test_cifar_shape_is_learnable_but_not_trivial():
  """A nearest-class-mean classifier beats chance (10%) by far on the default set and stays far
  from 100%; without clutter and noise the same templates are near-perfectly separable, and more
  clutter makes the task harder."""
  from fedjax_robust.data import sources  # pylint: disable=g-import-not-at-top
  default = nearest_class_mean_accuracy(sources.load_cifar_shape(seed=0))
  assert 0.5 < default < 0.9, default
  by_clutter = [nearest_class_mean_accuracy(sources.load_cifar_shape(
      seed=0, clutter=clutter, noise=0.0 if clutter == 0 else 0.1, **_SMALL))
      for clutter in (0.0, 2.0, 4.0)]
  assert by_clutter[0] > 0.97 and by_clutter[0] > by_clutter[1] > by_clutter[2] > 0.2, by_clutter


@pytest.mark.parametrize("name,opts", [("iid", {}), ("dirichlet", {"alpha": 0.3}),
                                       ("shards", {"shards_per_client": 2})])
def test_cifar_shape_goes_through_the_partitioners(name, opts):
  fed = data.load("cifar_shape", num_clients=5, partition=name, min_size=5, seed=3,
                  source_options=_SMALL, **opts)
  assert fed.input_shape == (32, 32, 3) and fed.num_classes == 10
  assert int(fed.train.counts.sum()) == 2000 and fed.test_x.shape == (500, 32, 32, 3)
  ds = data.SOURCES["cifar_shape"](seed=3, **_SMALL)
  x = np.asarray(fed.train.x)
  valid = np.asarray(data.valid_mask(fed.train.counts, x.shape[1]))
  # every training example lands on exactly one client (the pixel sums identify them)
  np.testing.assert_allclose(np.sort(x[valid].sum((1, 2, 3))),
                             np.sort(ds.x_train.sum((1, 2, 3))), rtol=1e-6)
  if name == "shards":  # two label-sorted shards per client: few classes each
    labels = np.asarray(fed.train.y)
    assert max(len(np.unique(labels[i][valid[i]])) for i in range(5)) <= 4


def test_cifar_shape_options_are_config_keys_with_domains():
  from fedjax_robust import config as config_lib  # pylint: disable=g-import-not-at-top
  from conftest import tiny_config  # pylint: disable=g-import-not-at-top
  c = tiny_config()
  c.data.name = "cifar_shape"
  c.data.cifar_shape.train_examples, c.data.cifar_shape.test_examples = 300, 50
  c.data.cifar_shape.clutter, c.data.cifar_shape.noise = 1.0, 0.05
  assert config_lib.source_options(c) == {"train_examples": 300, "test_examples": 50,
                                          "clutter": 1.0, "noise": 0.05}
  fed = config_lib.make_data(c)
  assert int(fed.train.counts.sum()) == 300 and fed.test_y.shape == (50,)
  ds = data.SOURCES["cifar_shape"](seed=c.seed, **config_lib.source_options(c))
  np.testing.assert_array_equal(np.asarray(fed.test_x), ds.x_test)  # the options reach it
  for key, value, match in [("train_examples", 5, r"an int >= 10"),
                            ("noise", -0.1, r"a finite float >= 0"),
                            ("clutter", float("nan"), r"a finite float >= 0")]:
    bad = tiny_config()
    bad.data.name = "cifar_shape"
    bad.data.cifar_shape[key] = value
    with pytest.raises(ValueError, match=rf"data.cifar_shape.{key}=.* is outside its domain: "
                                         + match):
      config_lib.validate(bad)


def test_a_federated_run_on_cifar_shape_learns():
  """The launch path end to end on cifar_shape (logistic regression on the 3,072 pixel values,
  FedAvg-style mean of 4 clients): test accuracy goes from chance to well above it."""
  from fedjax_robust import experiment  # pylint: disable=g-import-not-at-top
  from conftest import tiny_config  # pylint: disable=g-import-not-at-top
  c = tiny_config()
  c.num_clients, c.f, c.num_samples = 4, 0, 1
  c.honest_set_options.fixed_count.num_byzantine = 0
  c.aggregator, c.attack, c.model = "mean", "none", "logistic"
  c.data.name, c.data.partition = "cifar_shape", "dirichlet"
  c.data.cifar_shape.train_examples, c.data.cifar_shape.test_examples = 2000, 500
  c.training.num_rounds, c.training.eval_every = 8, 4
  c.training.local_steps, c.training.client_lr = 5, 0.1
  accuracy = experiment.run(c, log=lambda _: None).runs["mean"].metrics["test_accuracy"][:, 0]
  assert accuracy[0] < 0.2 and accuracy[-1] > 0.5, accuracy


def test_tfds_dataset_not_on_disk_gives_a_clear_error(tmp_path):
  with pytest.raises(data.DatasetUnavailableError,
                     match=r"'mnist'.*not available under .*cannot download.*'digits'"):
    data.load("mnist", num_clients=4, data_dir=str(tmp_path))


def test_unknown_data_set_and_partition():
  with pytest.raises(ValueError, match=r"unknown data set 'mnsit'; available: .*digits.*mnist"):
    data.load("mnsit", num_clients=4)
  with pytest.raises(ValueError, match=r"unknown partition 'dirichlett'"):
    data.load("digits", num_clients=4, partition="dirichlett")


# shakespeare (issue 31): speaking roles as clients, plays as natural groups, trigram profiles.

_TEXT = {"window": 16, "min_chars": 1000, "selection": "largest", "max_examples_per_client": 50,
         "max_test_examples": 100}


@pytest.mark.parametrize("holdout_fraction", [0.0, 0.2])
def test_shakespeare_loads_the_roles_as_clients(holdout_fraction):
  from fedjax_robust.data import shakespeare  # pylint: disable=g-import-not-at-top
  fed = data.load("shakespeare", num_clients=6, test_fraction=0.1, seed=0,
                  holdout_fraction=holdout_fraction, text_options=_TEXT)
  text = shakespeare.load(6, seed=0, test_fraction=0.1, holdout_fraction=holdout_fraction,
                          **_TEXT)
  assert fed.num_classes == len(shakespeare.VOCABULARY) + 1 == 69
  assert fed.input_shape == (16,) and fed.test_x.shape == (100, 16)
  assert fed.train.x.shape == (6, 50, 16)
  np.testing.assert_array_equal(fed.train.counts, [len(y) for y in text.ys])
  assert all(len(y) == 50 for y in text.ys)  # the largest roles: more than 50 windows each
  # The windows are the loader's, token ids in [0, 69), the label the next character.
  for i in range(6):
    np.testing.assert_array_equal(np.asarray(fed.train.x[i]), text.xs[i])
    np.testing.assert_array_equal(np.asarray(fed.train.y[i]), text.ys[i])
  np.testing.assert_array_equal(np.asarray(fed.test_x), text.test_x)
  x = np.asarray(fed.train.x)
  assert x.min() >= 0 and x.max() < 69 and np.all(x == np.round(x))
  # Consecutive windows of a role overlap: a window shifted by one is the next window when the
  # two targets are adjacent (the first 16 characters of its text, then its label).
  ids = shakespeare.encode(text.roles[0].text)
  np.testing.assert_array_equal(x[0, 0], ids[:16])
  assert int(fed.train.y[0, 0]) == ids[16]
  # Held out iff asked for, capped like training's windows.
  if holdout_fraction:
    assert fed.holdout is not None and fed.holdout.x.shape[0] == 6
    np.testing.assert_array_equal(fed.holdout.counts, [len(y) for y in text.hold_ys])
    assert 0 < int(fed.holdout.counts.min()) and int(fed.holdout.counts.max()) <= 50
  else:
    assert fed.holdout is None
  # Natural groups (plays) and profiles (trigram frequencies) come from the loader.
  np.testing.assert_array_equal(fed.client_groups, text.play_ids)
  np.testing.assert_array_equal(fed.client_features, text.features)
  assert len(set(text.play_ids.tolist())) < 6  # some play gives two of the largest roles
  assert [text.play_names[p] for p in text.play_ids] == [r.play for r in text.roles]


def test_shakespeare_plays_are_the_clusters_and_trigrams_the_similarity_graph():
  from fedjax_robust import config as config_lib  # pylint: disable=g-import-not-at-top
  from fedjax_robust import graphs  # pylint: disable=g-import-not-at-top
  from fedjax_robust.data import shakespeare  # pylint: disable=g-import-not-at-top
  from text_config import get_config  # pylint: disable=g-import-not-at-top
  c = get_config()
  c.num_clients = 6
  c.honest_set, c.cluster_assignment = "clusters", "data"
  job = config_lib.resolve(c)
  text = shakespeare.load(6, seed=0, test_fraction=c.data.test_fraction,
                          holdout_fraction=c.data.holdout_fraction, **config_lib.text_options(c))
  assert job.sampler["assignment"] == tuple(int(p) for p in text.play_ids)
  fed = config_lib.make_data(job)
  np.testing.assert_array_equal(fed.client_groups, text.play_ids)
  # The data-similarity graph links clients whose trigram profiles are near.
  c.graph.kind, c.graph.k = "data_similarity", 2
  adjacency = config_lib.make_adjacency(c, fed)
  np.testing.assert_array_equal(adjacency, graphs.nearest_neighbors(text.features, 2))
  np.testing.assert_array_equal(config_lib.client_features(fed), fed.client_features)
  assert adjacency.shape == (6, 6) and np.all(adjacency == adjacency.T)
  assert np.all(np.diag(adjacency) == 0) and np.all(adjacency.sum(1) >= 2)
