"""The worst case at the declared f (a maximum of measured loss, searched under common random
numbers and re-measured on fresh seeds), the heterogeneity proxy named as a proxy, and the
expected loss given b ≤ f / b > f."""

import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_robust import config as config_lib
from fedjax_robust import experiment
from fedjax_robust import results
from fedjax_robust import worst_case
from fedjax_robust.errors import ConfigError
from tiny_config import get_config


def _final_loss_config():
  c = get_config()
  c.aggregator = "mean"
  c.attack = "sign_flip"
  c.f = 2  # C(6, 2) = 15 candidate honest sets
  c.num_samples_per_chunk = 8  # one compiled width for every test here
  c.honest_set = "worst_case"
  c.honest_set_options.worst_case.criterion = "final_loss"
  c.honest_set_options.worst_case.seeds = 2
  c.honest_set_options.worst_case.fresh_seeds = 3
  return c


def _setup(c):
  fed = config_lib.make_data(c)
  return fed, experiment.simulator(c, "mean", fed)


def test_common_random_numbers_make_a_masks_score_independent_of_its_batch_position():
  c = _final_loss_config()
  fed, sim = _setup(c)
  masks = worst_case._complement_masks(6, 2)
  # Mask 2 at candidate positions 0, 2 and 5: R = 2 seeds each, so draws 0–1 and 4–5 of the
  # first chunk of 8 and draws 10–11 of the second.
  candidates = masks[[2, 0, 2, 5, 1, 2]]
  seeds = worst_case.SEARCH_DRAW_OFFSET + np.arange(2)
  scores = experiment.final_loss_score(c, sim, fed, seeds)(candidates)
  assert scores[0] == scores[2] == scores[5]  # bit-identical
  assert len(set(scores[[0, 1, 3, 4]].tolist())) == 4  # the other candidates differ
  # The old search keyed candidate k by fold_in(run_key, k): the same mask at batch positions 0,
  # 2 and 5 then trained on different seeds and scored differently (what this test guards).
  _, init_key, run_key = experiment._keys(c)
  old = experiment.run_monte_carlo(sim, fed, jnp.asarray(candidates[[0, 2, 5]]),
                                   init_key=init_key, run_key=run_key, num_rounds=10,
                                   eval_every=10, draw_ids=np.array([0, 2, 5]))
  assert len(set(old.metrics["honest_loss"][-1].tolist())) == 3


def test_final_loss_search_is_exhaustive_and_returns_the_argmax_of_the_scores(monkeypatch):
  c = _final_loss_config()
  fed, sim = _setup(c)
  seen_ids = []
  real = experiment.run_monte_carlo

  def spy(*args, draw_ids=None, **kwargs):
    seen_ids.append(np.asarray(draw_ids))
    return real(*args, draw_ids=draw_ids, **kwargs)

  monkeypatch.setattr(experiment, "run_monte_carlo", spy)
  mask, info = experiment.worst_case_mask(c, fed, "mean")
  monkeypatch.setattr(experiment, "run_monte_carlo", real)
  # Independently: every honest set of size n − f scored on the search's seeds.
  all_masks = worst_case._complement_masks(6, 2)
  scores = experiment.final_loss_score(c, sim, fed, worst_case.SEARCH_DRAW_OFFSET + np.arange(2))(
      all_masks)
  assert info["method"] == "exhaustive" and info["scored"] == 15
  assert info["trainings"] == 15 * 2 + 2 * 3
  np.testing.assert_array_equal(mask, all_masks[np.argmax(scores)])
  assert info["search_score"] == info["score"] == scores.max()
  assert info["byzantine"] == np.flatnonzero(~mask).tolist()
  # The search trained on ids SEARCH_DRAW_OFFSET + r; the pick was re-measured on ids 0, 1, 2.
  search_ids, fresh_ids = set(seen_ids[0].tolist()), set(seen_ids[-1].tolist())
  assert search_ids == {worst_case.SEARCH_DRAW_OFFSET, worst_case.SEARCH_DRAW_OFFSET + 1}
  assert fresh_ids == {0, 1, 2} and not search_ids & fresh_ids
  assert info["search_draw_ids"] == [worst_case.SEARCH_DRAW_OFFSET,
                                     worst_case.SEARCH_DRAW_OFFSET + 1]
  assert info["fresh_draw_ids"] == [0, 2]
  # The fresh score, the optimism and the proxy's rank, recomputed.
  fresh = experiment.final_loss_score(c, sim, fed, np.arange(3))
  np.testing.assert_allclose(info["fresh_loss"]["mean"], fresh(mask[None])[0], rtol=1e-12)
  assert info["fresh_loss"]["count"] == 3
  np.testing.assert_allclose(info["optimism"], info["search_score"] - info["fresh_loss"]["mean"])
  proxy = info["proxy"]
  proxy_mask = np.ones(6, bool)
  proxy_mask[proxy["byzantine"]] = False
  proxy_score = scores[np.flatnonzero((all_masks == proxy_mask).all(1))[0]]
  assert proxy["search_score"] == proxy_score
  assert proxy["rank"] == 1 + int(np.sum(scores > proxy_score)) and proxy["rank_of"] == 15
  np.testing.assert_allclose(proxy["fresh_loss"]["mean"], fresh(proxy_mask[None])[0], rtol=1e-12)
  np.testing.assert_allclose(info["gap_vs_proxy"]["mean"],
                             info["fresh_loss"]["mean"] - proxy["fresh_loss"]["mean"], atol=1e-12)
  assert "training noise only" in info["interval"]


def test_greedy_search_scores_each_mask_once_and_never_beats_the_exhaustive_maximum():
  calls = []
  rng = np.random.default_rng(0)
  values = {}

  def score(masks):
    calls.append(len(masks))
    return np.array([values.setdefault(m.tobytes(), rng.normal()) for m in masks])

  memo = worst_case.MemoizedScore(score)
  _, best, _ = worst_case.search(memo, 9, 3)
  _, found, info = worst_case.search(memo, 9, 3, exhaustive_limit=1)
  assert info["method"] == "greedy+swaps" and found <= best
  assert sum(calls) == len(memo.table)  # no mask scored twice
  assert worst_case.search_size(9, 3, exhaustive_limit=1) == ("greedy+swaps", 9 + 8 + 7 + 5 * 18)
  assert worst_case.search_size(9, 3) == ("exhaustive", 84)


def test_a_diverged_seed_makes_its_candidate_score_inf():
  losses = np.array([1.0, 2.0, np.nan, 0.5, 3.0, np.inf])
  np.testing.assert_array_equal(worst_case.mean_over_seeds(losses, 2), [1.5, np.inf, np.inf])


def test_the_worst_case_run_says_its_interval_is_training_noise_and_reuses_its_search(
    tmp_path, monkeypatch):
  c = _final_loss_config()
  exp = experiment.run(c, workdir=str(tmp_path), log=lambda _: None)
  info = exp.worst_case["mean"]
  summary = results.summarize(exp)
  assert summary["worst_case"]["mean"]["interval"] == worst_case.TRAINING_NOISE_ONLY
  table = results.format_table(summary)
  assert "mean: worst case: max over |S| = n−f = 4 honest sets of the mean final honest loss " \
         "over R = 2 seeds" in table
  assert "optimism of the search" in table and "training noise only" in table
  # The run's draws use ids 0, 1, …: the first ones are the fresh re-measurement's, bit for bit.
  run_losses = exp.runs["mean"].metrics["honest_loss"][-1]
  fed, sim = _setup(c)
  fresh = experiment._final_honest_losses(c, sim, fed, np.repeat(exp.masks["mean"][:1], 3, 0),
                                          np.arange(3))
  np.testing.assert_array_equal(run_losses[:3], fresh)
  # A rerun of the same configuration loads the search instead of repeating it.
  monkeypatch.setattr(experiment, "worst_case_mask",
                      lambda *a: (_ for _ in ()).throw(AssertionError("searched again")))
  again = experiment.run(c, workdir=str(tmp_path), log=lambda _: None)
  assert again.worst_case["mean"] == info
  np.testing.assert_array_equal(again.masks["mean"], exp.masks["mean"])


def test_the_heterogeneity_proxy_is_never_called_a_worst_case(tmp_path):
  c = get_config()
  c.aggregator = "mean"
  c.num_samples = 2
  c.honest_set = "worst_case"
  c.honest_set_options.worst_case.criterion = "heterogeneity"
  logs = []
  exp = experiment.run(c, log=logs.append)
  summary = results.summarize(exp)
  assert "worst_case" not in summary
  info = summary["max_heterogeneity_proxy"]["mean"]
  assert info["interval"] == worst_case.TRAINING_NOISE_ONLY
  texts = {"table": results.format_table(summary), "log": "\n".join(logs),
           "info": str(info), "plot": results.plot(exp, str(tmp_path / "p.png"))}
  for where, text in texts.items():
    assert "worst case" not in text.lower() and "worst_case" not in text, where
  assert "proxy, not a loss maximum" in texts["table"]
  assert "training noise only" in texts["table"]


def test_sweep_core_names_the_worst_case_and_the_proxy_plainly():
  import importlib  # pylint: disable=g-import-not-at-top
  module = importlib.import_module("configs.sweep_core")
  c = module.get_config()
  assert "maximizing the mean final honest loss" in module.plot_note(c)
  c.base.honest_set_options.worst_case.criterion = "heterogeneity"
  note = module.plot_note(c)
  assert "proxy, not a loss maximum" in note and "worst case" not in note


@pytest.mark.parametrize("key", ["seeds", "fresh_seeds"])
def test_seed_counts_have_a_declared_domain(key):
  c = _final_loss_config()
  c.honest_set_options.worst_case[key] = 0
  with pytest.raises(ConfigError, match=key):
    config_lib.validate(c)


def test_honest_loss_given_b_le_f_equals_a_numpy_recomputation(rng):
  S, n, f = 40, 10, 2
  counts = rng.integers(0, 5, size=S)
  loss = rng.uniform(0.1, 2.0, size=(3, S))
  diverged = np.zeros((3, S))
  gt = np.flatnonzero(counts > f)
  diverged[-1, gt[:2]] = 1.0  # two diverged draws, both with b > f
  loss[-1, gt[0]] = np.nan
  run = experiment.AggregatorRun(
      spec="x", rounds=np.arange(3), aux={}, compile_seconds=0.0, run_seconds=0.0,
      metrics={"honest_loss": loss, "honest_accuracy": np.full((3, S), 0.5),
               "test_accuracy": np.full((3, S), 0.5), "diverged": diverged})
  s = results.summarize_run(run, counts, num_clients=n, f=f)
  final = np.where(diverged[-1] > 0, np.inf, loss[-1])
  le, gt_ = final[counts <= f], final[counts > f]
  np.testing.assert_allclose(s["honest_loss_given_b_le_f"]["mean"], le.mean(), rtol=1e-12)
  np.testing.assert_allclose(s["honest_loss_given_b_le_f"]["ci95"],
                             1.959963984540054 * le.std(ddof=1) / np.sqrt(le.size), rtol=1e-12)
  assert s["honest_loss_given_b_le_f"]["count"] == int(np.sum(counts <= f))
  assert s["honest_loss_given_b_gt_f"]["mean"] == np.inf  # diverged draws count +inf
  np.testing.assert_allclose(s["honest_loss_given_b_gt_f"]["q50"],
                             np.quantile(gt_, 0.5, method="inverted_cdf"))
  assert s["honest_loss"]["mean"] == np.inf
