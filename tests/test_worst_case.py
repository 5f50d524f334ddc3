"""The worst case at the declared f (a maximum of the criterion a figure shows, searched under
common random numbers, raced until the top set separates and re-measured on fresh seeds), the
heterogeneity proxy named as a proxy, and the expected loss given b ≤ f / b > f."""

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
import scipy.special
import scipy.stats

from fedjax_robust import config as config_lib
from fedjax_robust import experiment
from fedjax_robust import results
from fedjax_robust import worst_case
from fedjax_robust.errors import ConfigError
from fedjax_robust.theory import report as theory_report
from conftest import set_key
from conftest import synthetic_dgd_config
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
  c.honest_set_options.worst_case.max_seeds = 2  # R fixed (the race: tests below)
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
  scores = experiment.criterion_score(c, sim, fed, "final_loss", "mean", seeds)(candidates)
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
  scores = experiment.criterion_score(c, sim, fed, "final_loss", "mean",
                                      worst_case.SEARCH_DRAW_OFFSET + np.arange(2))(all_masks)
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
  fresh = experiment.criterion_score(c, sim, fed, "final_loss", "mean", np.arange(3))
  np.testing.assert_allclose(info["fresh"]["mean"], fresh(mask[None])[0], rtol=1e-12)
  assert info["fresh"]["count"] == 3
  np.testing.assert_allclose(info["optimism"], info["search_score"] - info["fresh"]["mean"])
  proxy = info["proxy"]
  proxy_mask = np.ones(6, bool)
  proxy_mask[proxy["byzantine"]] = False
  proxy_score = scores[np.flatnonzero((all_masks == proxy_mask).all(1))[0]]
  assert proxy["search_score"] == proxy_score
  assert proxy["rank"] == 1 + int(np.sum(scores > proxy_score)) and proxy["rank_of"] == 15
  assert proxy["rank_text"].endswith("of all C(6, 2) = 15 honest sets")
  np.testing.assert_allclose(proxy["fresh"]["mean"], fresh(proxy_mask[None])[0], rtol=1e-12)
  np.testing.assert_allclose(info["gap_vs_proxy"]["mean"],
                             info["fresh"]["mean"] - proxy["fresh"]["mean"], atol=1e-12)
  # The race's record: R fixed at 2 (max_seeds = seeds), the gap to the runner-up paired.
  order = np.argsort(-scores, kind="stable")
  assert info["pick_seeds"] == 2 and info["runner_up"] == worst_case.byzantine(
      all_masks[order[1]])
  assert info["separated"] == (info["stopped"] == "separated")
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
         "L_S(θ_T) (in-sample) over R = 2 seeds" in table
  assert "on 2 search seeds" in table and "Fresh: " in table
  assert "optimism of the search" in table and "training noise only" in table
  # The run's draws use ids 0, 1, …: the first ones are the fresh re-measurement's, bit for bit.
  run_losses = exp.runs["mean"].metrics["honest_loss"][-1]
  fed, sim = _setup(c)
  fresh = experiment.criterion_measure(c, sim, fed, "final_loss", "mean")(
      np.repeat(exp.masks["mean"][:1], 3, 0), np.arange(3))
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
  c.base.honest_set_options.worst_case.criterion = "honest_error"
  assert "maximizing the mean final honest error 1 − accuracy" in module.plot_note(c)
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


# --- A worst case of the quantity plotted (issue 35, item 2) -------------------------------------


def _convex_config():
  """ℓ2 logistic regression (λ = 0.05) by robust D-GD with the geometric median (deterministic:
  every seed trains the same), 6 clients, f = 2 (15 candidate sets), the worst case by excess
  loss."""
  c = synthetic_dgd_config(l2=0.05, aggregator="geometric_median")
  c.num_clients, c.f = 6, 2
  c.theory.enabled = False
  c.training.num_rounds = 20
  c.num_samples, c.num_samples_per_chunk = 2, 8
  c.honest_set = "worst_case"
  c.honest_set_options.worst_case.criterion = "excess_loss"
  c.honest_set_options.worst_case.seeds = 1
  c.honest_set_options.worst_case.max_seeds = 4
  c.honest_set_options.worst_case.fresh_seeds = 2
  return c


def _logistic_optimum(fed, mask, l2):
  """min_Θ L_S(Θ) in float64 by L-BFGS (SciPy), independently of theory.convex: logits x̃Θ with
  x̃ = (x, 1), Θ `[d + 1, C]`, L_S = (1/|S|) Σ_{i∈S} (1/m_i) Σ_j CE(x̃_jΘ, y_j) + ½λ‖Θ‖²."""
  x = np.asarray(fed.train.x, np.float64).reshape(fed.train.x.shape[0], fed.train.x.shape[1], -1)
  y, counts = np.asarray(fed.train.y), np.asarray(fed.train.counts)
  honest = np.flatnonzero(mask)
  xs = [np.concatenate([x[i, :counts[i]], np.ones((counts[i], 1))], axis=1) for i in honest]
  ys = [y[i, :counts[i]] for i in honest]
  p, k = x.shape[2] + 1, fed.num_classes

  def objective(flat):
    theta = flat.reshape(p, k)
    value, grad = 0.5 * l2 * flat @ flat, l2 * theta
    for xi, yi in zip(xs, ys):
      logits = xi @ theta
      lse = scipy.special.logsumexp(logits, axis=1)
      value += np.mean(lse - logits[np.arange(len(yi)), yi]) / len(xs)
      prob = np.exp(logits - lse[:, None])
      prob[np.arange(len(yi)), yi] -= 1
      grad += xi.T @ prob / len(yi) / len(xs)
    return value, grad.ravel()

  out = scipy.optimize.minimize(objective, np.zeros(p * k), jac=True, method="L-BFGS-B",
                                options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 10_000})
  return out.fun


@pytest.mark.slow
def test_the_excess_loss_worst_case_is_the_maximum_of_the_excess_loss_not_of_the_loss():
  """The issue: the sweep searched the final loss and plotted the excess loss L_S − L_S*, so a
  same-b draw exceeded the "worst case" (GM, p = 0.2: 0.0256 vs 0.0166). Here every set's excess
  loss is recomputed with its own L_S* (SciPy): the search by excess loss returns its maximum,
  which the final-loss maximum is not."""
  c = _convex_config()
  fed = config_lib.make_data(c)
  mask, info = experiment.worst_case_mask(c, fed, "geometric_median")
  all_masks = worst_case._complement_masks(6, 2)
  sim = experiment.simulator(c, "geometric_median", fed)
  _, init_key, run_key = experiment._keys(c)
  out = experiment.run_monte_carlo(sim, fed, jnp.asarray(all_masks), init_key=init_key,
                                   run_key=run_key, num_rounds=20, eval_every=20, chunk=8,
                                   draw_ids=np.full(15, worst_case.SEARCH_DRAW_OFFSET))
  loss = np.asarray(out.metrics["honest_loss"][-1], np.float64)
  excess = loss - np.array([_logistic_optimum(fed, m, 0.05) for m in all_masks])
  np.testing.assert_array_equal(mask, all_masks[np.argmax(excess)])
  np.testing.assert_allclose(info["pick"]["mean"], excess.max(), rtol=1e-4)
  # What searching the final loss would have drawn: not the maximum of the excess loss.
  assert excess[np.argmax(loss)] < 0.9 * excess.max()
  assert info["criterion"] == "excess_loss" and "L_S(θ_T) − L_S*" in info["quantity"]
  # Deterministic training: one seed could not tell, the second showed every seed equal
  # (se = 0) and the top set ahead, so no more seeds were spent.
  assert info["pick_seeds"] == 2 and info["separated"] is True
  assert info["gap"]["se"] == 0.0 and info["trainings"] == 15 * 2 + 2 * 2
  line = experiment.format_worst_case(info)
  assert "separated from every other set" in line
  # Copies of one value print as such, with no "± nan" or "± 0" interval.
  assert info["fresh"]["identical"] and "(identical on all 2 seeds) on 2 fresh seeds" in line
  assert "nan" not in line and "± 0 " not in line, line


@pytest.mark.slow
def test_error_criteria_maximize_one_minus_accuracy():
  """honest_error is 1 − the in-sample honest accuracy: its worst case is the set of lowest mean
  accuracy over the search's seeds, recomputed here from the trainings' accuracies."""
  c = _final_loss_config()
  c.honest_set_options.worst_case.criterion = "honest_error"
  fed, sim = _setup(c)
  mask, info = experiment.worst_case_mask(c, fed, "mean")
  all_masks = worst_case._complement_masks(6, 2)
  _, init_key, run_key = experiment._keys(c)
  seeds = worst_case.SEARCH_DRAW_OFFSET + np.arange(2)
  out = experiment.run_monte_carlo(sim, fed, jnp.asarray(np.repeat(all_masks, 2, axis=0)),
                                   init_key=init_key, run_key=run_key, num_rounds=10,
                                   eval_every=10, chunk=8, draw_ids=np.tile(seeds, 15))
  accuracy = np.asarray(out.metrics["honest_accuracy"][-1], np.float64).reshape(15, 2).mean(1)
  assert accuracy[np.flatnonzero((all_masks == mask).all(1))[0]] == accuracy.min()
  np.testing.assert_allclose(info["score"], 1 - accuracy.min(), rtol=1e-6)
  assert worst_case.matches("honest_error", "honest_accuracy")
  assert not worst_case.matches("honest_error", "honest_loss")


@pytest.mark.slow  # trains an MLP with the theory measured (two compiles)
def test_theory_error_is_what_the_theory_report_calls_error():
  """On a non-convex task the theory's error (theory.report.per_draw) is the mean of ‖∇L_S‖²
  after the burn-in; the search by theory_error returns the set of largest per_draw error over
  all sets, and on a convex task the theory's error is the excess loss."""
  c = synthetic_dgd_config(model="mlp", samples=2)
  c.num_clients, c.f = 6, 1
  c.model_options.mlp.hidden = (4,)
  c.training.num_rounds, c.training.client_lr = 20, 0.5
  c.num_samples_per_chunk = 8
  c.honest_set = "worst_case"
  c.honest_set_options.worst_case.criterion = "theory_error"
  c.honest_set_options.worst_case.seeds = c.honest_set_options.worst_case.max_seeds = 1
  c.honest_set_options.worst_case.fresh_seeds = 2
  config_lib.validate(c)
  fed = config_lib.make_data(c)
  mask, info = experiment.worst_case_mask(c, fed, "trimmed_mean")
  sim = experiment.simulator(c, "trimmed_mean", fed)
  _, init_key, run_key = experiment._keys(c)
  all_masks = worst_case._complement_masks(6, 1)
  out = experiment.run_monte_carlo(sim, fed, jnp.asarray(all_masks), init_key=init_key,
                                   run_key=run_key, num_rounds=20, eval_every=5,
                                   spec="trimmed_mean",
                                   draw_ids=np.full(6, worst_case.SEARCH_DRAW_OFFSET))
  error = theory_report.per_draw(c, out, np.ones(6, int), spec="trimmed_mean")["error"]
  np.testing.assert_array_equal(mask, all_masks[np.argmax(error)])
  np.testing.assert_allclose(info["pick"]["mean"], error.max(), rtol=1e-6)
  # Convex: the theory's error of every set equals its excess loss.
  c = _convex_config()
  fed = config_lib.make_data(c)
  masks = worst_case._complement_masks(6, 2)[:4]
  ids = np.full(4, worst_case.SEARCH_DRAW_OFFSET)
  values = {}
  for criterion in ("theory_error", "excess_loss"):
    cc = c.copy_and_resolve_references()
    cc.theory.enabled = criterion == "theory_error"
    sim = experiment.simulator(cc, "geometric_median", fed)
    values[criterion] = experiment.criterion_measure(cc, sim, fed, criterion,
                                                     "geometric_median")(masks, ids)
  np.testing.assert_allclose(values["theory_error"], values["excess_loss"], rtol=1e-6)


@pytest.mark.parametrize("criterion, change, needs", [
    ("excess_loss", {"model": "mlp"}, "convex task"),
    ("excess_loss", {"training.l2": 0.0}, "convex task"),
    ("theory_error", {"training.personalization": "personal_head", "model": "mlp",
                      "data.holdout_fraction": 0.2, "theory.enabled": False}, "one global model"),
    ("honest_error", {"model": "linear_regression", "data.name": "synthetic",
                      "data.synthetic_task": "regression"}, "classification task"),
    ("holdout_error", {}, "held-out split"),
    ("holdout_loss", {}, "held-out split"),
])
def test_a_criterion_undefined_on_the_task_is_refused_with_what_it_needs(criterion, change, needs):
  c = _final_loss_config()
  c.training.l2 = 0.05
  for key, value in change.items():
    set_key(c, key, value)
  c.honest_set_options.worst_case.criterion = criterion
  with pytest.raises(ConfigError, match=needs) as error:
    config_lib.validate(c)
  assert "Allowed here:" in str(error.value) and "final_loss" in str(error.value)


def test_every_criterion_has_a_readable_name_and_a_declared_domain():
  names = {c: worst_case.short_name(c) for c in worst_case.CRITERION_NAMES}
  assert len(set(names.values())) == len(names)
  for criterion, name in names.items():
    assert not any(c in name for c in worst_case.CRITERIA), name  # words, not the key
    if criterion != "heterogeneity":
      assert name.startswith("worst case (max ")
  assert names["heterogeneity"] == worst_case.PROXY_NAME
  c = _final_loss_config()
  c.honest_set_options.worst_case.criterion = "max_loss"
  with pytest.raises(ConfigError, match="criterion"):
    config_lib.validate(c)


@pytest.mark.parametrize("key, value, message", [
    ("max_seeds", 1, "max_seeds=1 is below seeds=2"), ("separation_confidence", 1.0, "separation_confidence"),
    ("separation_confidence", 0.5, "separation_confidence"),
    ("max_seeds", 0, "max_seeds")])
def test_the_seed_cap_and_the_separation_have_declared_domains(key, value, message):
  c = _final_loss_config()
  c.honest_set_options.worst_case[key] = value
  with pytest.raises(ConfigError, match=message):
    config_lib.validate(c)


def test_the_theory_sweeps_search_the_quantity_their_figures_show():
  """theory_synthetic plots the excess loss L_S − L_S* (theory_error on a convex task);
  theory_digits' headline is the honest accuracy: each searches the maximum of that."""
  import importlib  # pylint: disable=g-import-not-at-top
  from fedjax_robust import sweep  # pylint: disable=g-import-not-at-top
  modules = {name: importlib.import_module(f"configs.theory_{name}")
             for name in ("synthetic", "digits")}
  configs = {name: module.get_config() for name, module in modules.items()}
  assert configs["synthetic"].base.honest_set_options.worst_case.criterion == "excess_loss"
  assert worst_case.matches("excess_loss", "theory_error")
  # Its headline figure (expected_vs_worst.png) too: before, the honest loss, of which the set
  # maximizing the excess loss is no maximum.
  assert worst_case.matches("excess_loss", configs["synthetic"].plot.metric)
  assert configs["digits"].base.honest_set_options.worst_case.criterion == "honest_error"
  assert worst_case.matches("honest_error", configs["digits"].plot.metric)
  for name, config in configs.items():  # every worst-case point is a valid configuration
    points = [p for p in modules[name].points(config) if p.tags["mu_H"] == "worst_case"]
    assert points
    config_lib.validate(sweep.apply_overrides(config.base, points[0].overrides))


# --- The maximum carries its uncertainty -------------------------------------------------------


def _noisy_measure(means, sd, calls):
  """Criterion values of the 15 sets of (n, f) = (6, 2): the set's mean plus a common shift of
  the seed (common random numbers) and noise of sd `sd` drawn per (set, seed)."""
  masks = worst_case._complement_masks(6, 2)
  index = {m.tobytes(): k for k, m in enumerate(masks)}

  def measure(rows, draw_ids):
    calls.append(len(rows))
    out = []
    for row, seed in zip(rows, draw_ids):
      k = index[row.tobytes()]
      noise = np.random.default_rng([1, k, int(seed)]).normal()
      out.append(means[k] + 0.1 * np.sin(seed) + sd * noise)
    return np.array(out)

  return masks, measure


def test_the_sets_tied_with_the_top_get_seeds_until_the_top_separates():
  """With R = 2 seeds the search's maximum is the runner-up, 0.15 below the true worst (noise
  sd 0.2 per seed; the issue's digits GM pick was the 2nd-worst of 28 sets); the race gives the
  sets tied with the top more seeds and returns the true worst, its lead past the paired t-test
  (family-wise 95%)."""
  means = np.linspace(0.0, 0.5, 15)
  means[3], means[9] = 1.0, 0.85   # the true worst (3) and its runner-up (9)
  calls = []
  masks, measure = _noisy_measure(means, 0.2, calls)
  table = worst_case.SeedTable(measure, 2)
  searched, _, _ = worst_case.search(table, 6, 2)
  assert (searched == masks[9]).all()  # the fixed-R pick: not the maximum
  mask, record = worst_case.separate(table, honest=4, max_seeds=256, confidence=0.95)
  # Only the contenders got more seeds: far fewer trainings than 15 sets × the pick's seeds.
  assert table.trainings == sum(calls) < 15 * record["pick_seeds"]
  assert (mask == masks[3]).all()
  assert record["separated"] is True and record["stopped"] == "separated"
  assert record["runner_up"] == worst_case.byzantine(masks[9]) and record["tied"] == 0
  # The gap recomputed: paired over the pick's seeds.
  seeds = worst_case.SEARCH_DRAW_OFFSET + np.arange(record["pick_seeds"])
  d = measure(np.repeat(masks[[3]], len(seeds), 0), seeds) - measure(
      np.repeat(masks[[9]], len(seeds), 0), seeds)
  np.testing.assert_allclose(record["gap"]["mean"], d.mean(), rtol=1e-12)
  np.testing.assert_allclose(record["gap"]["se"], d.std(ddof=1) / np.sqrt(len(d)), rtol=1e-12)
  # Bonferroni over the 14 comparisons × the 8 seed levels 2, 4, …, 256.
  assert record["test_level"] == pytest.approx(0.05 / (14 * 8))
  t = scipy.stats.t.ppf(1 - 0.05 / (14 * 8), len(d) - 1)
  assert d.mean() - t * d.std(ddof=1) / np.sqrt(len(d)) > 0
  assert record["pick"]["seeds"] == record["pick_seeds"] < 256
  assert [t["byzantine"] for t in record["top"][:2]] == [worst_case.byzantine(masks[3]),
                                                         worst_case.byzantine(masks[9])]


def test_at_the_seed_cap_the_record_says_the_top_did_not_separate():
  means = np.zeros(15)
  means[3], means[9] = 1.0, 0.99
  masks, measure = _noisy_measure(means, 0.2, [])
  table = worst_case.SeedTable(measure, 2)
  worst_case.search(table, 6, 2)
  _, record = worst_case.separate(table, honest=4, max_seeds=4, confidence=0.95)
  assert record["separated"] is False and record["pick_seeds"] == 4 and record["tied"] >= 1
  assert record["stopped"].startswith("seed cap")
  info = {**record, "criterion": "final_loss", "label": "worst case", "byzantine": [0, 1],
          "method": "exhaustive", "scored": 15, "trainings": 60, "quantity": "q",
          "fresh_seeds": 2, "fresh": {"mean": 1.0, "ci95": 0.1}, "optimism": 0.0,
          "proxy": {"name": "p", "byzantine": [2, 3], "rank_text": "r",
                    "fresh": {"mean": 0.5, "ci95": 0.1}},
          "gap_vs_proxy": {"mean": 0.5, "ci95": 0.1}, "interval": "i"}
  line = experiment.format_worst_case(info)
  assert "NOT separated" in line and "cap of 4 seeds" in line and "on 4 search seeds" in line


def test_deterministic_scores_are_not_raced_and_ties_are_named():
  means = np.arange(15.0)
  masks, measure = _noisy_measure(means, 0.0, [])
  deterministic = lambda rows, ids: measure(rows, np.zeros_like(ids))
  table = worst_case.SeedTable(deterministic, 2)
  worst_case.search(table, 6, 2)
  mask, record = worst_case.separate(table, honest=4, max_seeds=64, confidence=0.95)
  assert (mask == masks[14]).all() and record["separated"] is True and record["pick_seeds"] == 2
  assert table.trainings == 30
  means[13] = 14.0  # an exact tie with the top: more seeds cannot split it
  table = worst_case.SeedTable(deterministic, 2)
  worst_case.search(table, 6, 2)
  _, record = worst_case.separate(table, honest=4, max_seeds=64, confidence=0.95)
  assert record["separated"] is False and record["pick_seeds"] == 2
  assert record["stopped"].startswith("tied on every seed") and table.trainings == 30


def test_paired_lead_handles_diverged_seeds():
  inf = np.inf
  assert worst_case.paired_lead([inf, 1.0], [1.0, 1.0])["mean"] == inf
  assert worst_case.paired_lead([inf, 2.0], [inf, 1.0]) == {"mean": 0.5, "se": 0.5, "seeds": 2}
  assert np.isnan(worst_case.paired_lead([inf, 1.0], [1.0, inf])["mean"])


# --- After a greedy search a rank says among which sets (issue 35, item 7) --------------------


def test_a_rank_says_among_which_sets():
  assert (worst_case.rank_text(37, 52, "greedy+swaps", 25, 5)
          == "37th of the 52 sets the greedy search scored (not all C(25, 5) = 53130)")
  assert worst_case.rank_text(3, 15, "exhaustive", 6, 2) == "3rd of all C(6, 2) = 15 honest sets"
  assert worst_case.rank_text(2, 53, "greedy+swaps", 25, 5, added=True).startswith(
      "2nd of 53 sets: the 52 the greedy search scored and this one")
  assert [worst_case.ordinal(k) for k in (1, 2, 3, 4, 11, 12, 13, 21, 22, 111)] == [
      "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "111th"]


def test_after_a_greedy_search_the_proxys_rank_is_among_the_sets_scored():
  c = _final_loss_config()
  c.honest_set_options.worst_case.exhaustive_limit = 1  # greedy + swaps on 15 sets
  fed, _ = _setup(c)
  _, info = experiment.worst_case_mask(c, fed, "mean")
  proxy = info["proxy"]
  # The greedy removal also scores the 6 sets with one Byzantine client (its first step): they
  # are not candidates, and the rank is among the sets of size n − f only.
  added = "and this one" in proxy["rank_text"]
  assert info["method"] == "greedy+swaps" and proxy["rank_of"] == info["scored"] - 6 + added
  assert proxy["rank_of"] < 15 and 1 <= proxy["rank"] <= proxy["rank_of"]
  assert f"of the {proxy['rank_of']} sets the greedy search scored" in proxy["rank_text"] or (
      f"the {proxy['rank_of'] - 1} the greedy search scored and this one" in proxy["rank_text"])
  assert proxy["rank_text"] in experiment.format_worst_case(info)
