"""Worst case beside expected case, chunked Monte Carlo, and the reference estimators."""

import collections
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_robust import build
from fedjax_robust import experiment
from fedjax_robust import results
from fedjax_robust import worst_case
from tiny_config import get_config


def test_exhaustive_search_is_brute_force(rng):
  g = rng.normal(size=(8, 4)) * rng.uniform(0.2, 3, size=(8, 1))
  score = worst_case.heterogeneity_score(g)
  mask, value, info = worst_case.search(score, 8, 3)
  brute = max(itertools.combinations(range(8), 5), key=lambda s: np.var(g[list(s)], 0).sum())
  assert info["method"] == "exhaustive" and info["scored"] == 56
  np.testing.assert_array_equal(np.flatnonzero(mask), brute)
  np.testing.assert_allclose(value, np.var(g[list(brute)], 0).sum(), rtol=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_greedy_and_swaps_reach_the_optimum_on_small_problems(seed):
  g = np.random.default_rng(seed).normal(size=(12, 6)) * np.random.default_rng(seed + 9).uniform(
      0.2, 3, size=(12, 1))
  score = worst_case.heterogeneity_score(g)
  best, best_value, _ = worst_case.search(score, 12, 3)
  found, value, info = worst_case.search(score, 12, 3, exhaustive_limit=1)
  assert info["method"] == "greedy+swaps" and info["scored"] < 220
  assert value >= 0.98 * best_value


@pytest.mark.slow  # test_worst_case.py runs the heterogeneity proxy end to end by default
def test_worst_case_experiment_by_heterogeneity():
  c = get_config()
  c.honest_set = "worst_case"
  c.honest_set_options.worst_case.criterion = "heterogeneity"
  c.num_samples = 3
  exp = experiment.run(c, log=lambda _: None)
  for spec, masks in exp.masks.items():
    assert np.all((~masks).sum(1) == c.f) and np.all(masks == masks[0])
  summary = results.summarize(exp)
  assert "worst_case" not in summary
  assert summary["max_heterogeneity_proxy"]["mean"]["method"] == "exhaustive"
  # A proxy, named as one: never "worst case" (tests/test_worst_case.py checks the wording).
  assert "mean: max-heterogeneity honest set (proxy" in results.format_table(summary)


@pytest.mark.slow  # tests/test_worst_case.py covers the final-loss search by default
def test_worst_case_by_final_loss_picks_the_most_damaging_byzantine_client():
  c = get_config()
  c.aggregator = "mean"
  c.attack = "sign_flip"
  c.honest_set = "worst_case"
  c.honest_set_options.worst_case.criterion = "final_loss"
  c.num_samples = 2
  exp = experiment.run(c, log=lambda _: None)
  chosen = exp.worst_case["mean"]["byzantine"]
  # Score every single Byzantine client by the same trainings (the search's R common seeds),
  # independently of the search.
  sim = build.make_simulator(c, "mean", exp.data)
  _, init_key, run_key = experiment._keys(c)
  R = c.honest_set_options.worst_case.seeds
  masks = np.repeat(~np.eye(6, dtype=bool), R, axis=0)
  seeds = worst_case.SEARCH_DRAW_OFFSET + np.arange(R)
  out = experiment.run_monte_carlo(sim, exp.data, jnp.asarray(masks), init_key=init_key,
                                   run_key=run_key, num_rounds=10, eval_every=10,
                                   draw_ids=np.tile(seeds, 6))
  scores = out.metrics["honest_loss"][-1].reshape(6, R).mean(1)
  assert chosen == [int(np.argmax(scores))]


def test_chunked_runs_give_the_same_numbers():
  c = get_config()
  c.num_samples = 5
  c.aggregator = "bucketing+trimmed_mean"
  whole = experiment.run(c, log=lambda _: None).runs["bucketing+trimmed_mean"]
  c.num_samples_per_chunk = 2
  chunked = experiment.run(c, log=lambda _: None).runs["bucketing+trimmed_mean"]
  for metric in whole.metrics:
    np.testing.assert_allclose(chunked.metrics[metric], whole.metrics[metric], atol=1e-5)
  assert chunked.metrics["honest_loss"].shape == (3, 5)


@pytest.mark.slow
def test_chunks_and_points_of_the_same_shape_compile_once(monkeypatch):
  """Every chunk of a run, and a second run that differs only in what the program does not
  depend on (μ_H's parameters, S, the chunk count, the report's interval, the draw condition),
  reuse the compiled programs: no new compile."""
  compiles = []
  real = experiment._program  # pylint: disable=protected-access

  def counting(kind, sim, build, *args):
    def counted():
      compiles.append(kind)
      return build()
    return real(kind, sim, counted, *args)

  monkeypatch.setattr(experiment, "_program", counting)
  # Fresh caches: another test in this process may have compiled the same programs.
  monkeypatch.setattr(experiment, "simulator_cache", collections.OrderedDict())
  monkeypatch.setattr(experiment, "_programs", {})
  c = get_config()
  c.aggregator = "trimmed_mean"
  c.honest_set = "bernoulli"
  c.honest_set_options.bernoulli.p = 0.2
  c.num_samples, c.num_samples_per_chunk = 24, 8       # three chunks
  experiment.run(c, log=lambda _: None)
  first = list(compiles)
  assert sorted(k.split("/")[0] for k in first) == ["advance5", "evaluate"], first
  c.honest_set_options.bernoulli.p = 0.4
  c.num_samples = 40                                    # five chunks
  c.report.interval = "normal"
  c.draw_condition = "honest_majority"
  experiment.run(c, log=lambda _: None)
  assert compiles == first  # nothing compiled again


@pytest.mark.slow
def test_honest_optimum_and_oracle_estimators():
  c = get_config()
  c.honest_set = "bernoulli"
  c.honest_set_options.bernoulli.p = 0.3
  c.aggregator = "trimmed_mean"
  c.attack = "sign_flip"
  c.estimators.honest_optimum = True
  c.estimators.oracle = True
  exp = experiment.run(c, log=lambda _: None)
  summary = results.summarize(exp)
  s = summary["aggregators"]["trimmed_mean"]
  loss = exp.runs["trimmed_mean"].metrics["honest_loss"][-1]
  optimum = exp.references["trimmed_mean"].metrics["honest_loss"][-1]
  np.testing.assert_allclose(s["honest_excess_loss"]["mean"], np.nanmean(loss - optimum), rtol=1e-6)
  oracle = summary["oracle"]
  assert np.isfinite(oracle["expected_objective"]) and 0 < oracle["test_accuracy"] <= 1
  assert "oracle on the expected objective" in results.format_table(summary)
