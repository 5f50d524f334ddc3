"""configs/study_groups.py (issue 29, question 1): the laws it compares put the same expected
number of Byzantine clients, E[b] = f, in different places relative to the distinct group."""

import numpy as np
import pytest

from configs import study_groups
from fedjax_robust import config as config_lib
from fedjax_robust import honest_sets
from fedjax_robust.errors import ConfigError


def _law(name, n=10):
  o = study_groups.placement_overrides(name, n)
  return np.asarray(o["honest_set_options.bernoulli.p_per_client"]), honest_sets.law(
      {"name": "bernoulli", "p": o["honest_set_options.bernoulli.p_per_client"]}, n)


@pytest.mark.parametrize("name", ["concentrated", "independent", "avoiding"])
def test_every_law_has_the_declared_f_as_its_expected_b(name):
  p, law = _law(name)
  pmf, exact = law.count_pmf()
  assert exact
  np.testing.assert_allclose(np.arange(11) @ pmf, study_groups.EXPECTED_B, rtol=1e-12)
  np.testing.assert_allclose(p.sum(), study_groups.EXPECTED_B, rtol=1e-12)


def test_the_laws_differ_in_where_the_corruption_falls():
  g = study_groups.GROUP
  concentrated, _ = _law("concentrated")
  avoiding, _ = _law("avoiding")
  assert concentrated[:g].sum() == pytest.approx(study_groups.EXPECTED_B)  # all on the group
  assert avoiding[:g].sum() == 0  # none on the group
  assert study_groups.placement_overrides("worst_case", 10) == {"honest_set": "worst_case"}
  with pytest.raises(ConfigError, match="grid.placement='nowhere'"):
    study_groups.placement_overrides("nowhere", 10)


def test_every_point_is_a_valid_job_with_the_group_and_its_shift():
  c = study_groups.get_config()
  points = study_groups.points(c)
  assert len(points) == 3 * 3 * 4
  assert len({tuple(sorted(p.tags.items())) for p in points}) == len(points)
  from fedjax_robust import sweep  # pylint: disable=g-import-not-at-top
  for point in points[:4] + points[-4:]:
    job = config_lib.resolve(sweep.apply_overrides(c.base, point.overrides))
    assert job.data.group_size == study_groups.GROUP
    assert job.data.synthetic_group_shift == point.tags["shift"]
    assert job.f == study_groups.EXPECTED_B


def test_the_digits_study_puts_the_group_on_labels_and_keeps_the_control_plain():
  from configs import study_groups_digits  # pylint: disable=g-import-not-at-top
  from fedjax_robust import data as data_lib  # pylint: disable=g-import-not-at-top
  from fedjax_robust import sweep  # pylint: disable=g-import-not-at-top
  c = study_groups_digits.get_config()
  points = study_groups_digits.points(c)
  assert len(points) == 2 * 2 * 5
  by_tags = {(p.tags["aggregator"], p.tags["grouping"], p.tags["mu_H"]): p for p in points}
  labelled = config_lib.resolve(sweep.apply_overrides(
      c.base, by_tags["trimmed_mean", "labels", "concentrated"].overrides))
  plain = config_lib.resolve(sweep.apply_overrides(
      c.base, by_tags["trimmed_mean", "none", "concentrated"].overrides))
  assert labelled.f == plain.f == study_groups.EXPECTED_B
  # The same law of the Byzantine set on both federations.
  assert (labelled.honest_set_options.bernoulli.p_per_client
          == plain.honest_set_options.bernoulli.p_per_client)
  # On the labelled federation clients 0..2 hold exactly the digits 0..2, and all of them.
  d = labelled.data
  fed = data_lib.load(d.name, num_clients=labelled.num_clients, partition=d.partition,
                      alpha=d.alpha, seed=labelled.seed, group_size=d.group_size,
                      group_labels=d.group_labels)
  ys = [np.asarray(fed.train.y[i][:int(fed.train.counts[i])]) for i in range(10)]
  group = np.concatenate(ys[:study_groups.GROUP])
  rest = np.concatenate(ys[study_groups.GROUP:])
  assert set(np.unique(group)) == set(study_groups_digits.GROUP_LABELS)
  assert not set(np.unique(rest)) & set(study_groups_digits.GROUP_LABELS)
  assert plain.data.partition == "dirichlet" and plain.data.group_size == 0
  with pytest.raises(ConfigError, match="grid.grouping='shards'"):
    study_groups_digits.grouping_overrides("shards")
  with pytest.raises(ConfigError, match="grid.placement='nowhere'"):
    study_groups_digits.placement_overrides("nowhere", 10)


def test_the_digits_study_graph_law_links_the_group_and_keeps_e_b_at_f():
  """The graph placement: on the labelled federation the data-similarity graph (2 nearest by
  label distribution) chains the group's 3 clients (≥ 2 edges among them: 3 random clients of 10
  with this graph's 12 edges share 12·3/45 = 0.8 on average), and the copula keeps every
  marginal at E[b]/n, so E[b] = f (Monte Carlo, 4,000 draws)."""
  import jax  # pylint: disable=g-import-not-at-top
  from configs import study_groups_digits  # pylint: disable=g-import-not-at-top
  from fedjax_robust import data as data_lib  # pylint: disable=g-import-not-at-top
  from fedjax_robust import graphs  # pylint: disable=g-import-not-at-top
  from fedjax_robust import sweep  # pylint: disable=g-import-not-at-top
  c = study_groups_digits.get_config()
  overrides = {**study_groups_digits.grouping_overrides("labels"),
               **study_groups_digits.placement_overrides("graph", 10)}
  job = config_lib.resolve(sweep.apply_overrides(c.base, overrides))
  d = job.data
  fed = data_lib.load(d.name, num_clients=10, partition=d.partition, alpha=d.alpha,
                      seed=job.seed, group_size=d.group_size, group_labels=d.group_labels)
  hist = np.stack([np.bincount(np.asarray(fed.train.y[i][:int(fed.train.counts[i])]),
                               minlength=10) for i in range(10)]).astype(float)
  hist /= hist.sum(1, keepdims=True)
  adjacency = graphs.build("data_similarity", 10, k=study_groups_digits.GRAPH_K, features=hist)
  g = study_groups.GROUP
  assert adjacency[:g, :g].sum() / 2 >= g - 1
  law = honest_sets.law({"name": "graph_copula",
                         "p": job.honest_set_options.graph_copula.p,
                         "tau": job.honest_set_options.graph_copula.tau,
                         "adjacency": adjacency}, 10)
  byz = ~np.asarray(law.sample(jax.random.key(0), 4000))
  assert abs(byz.sum(1).mean() - study_groups.EXPECTED_B) < 0.1
  np.testing.assert_allclose(byz.mean(0), 0.2, atol=0.03)
