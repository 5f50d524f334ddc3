"""Results a referee accepts: provenance and stale caches, paired comparisons, intervals for heavy
tails, conditioning on the realized b, the honest-only baseline, warnings on the realized draw."""

import dataclasses
import json
import math

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.stats

from conftest import tiny_config
from fedjax_robust import build
from fedjax_robust import config as config_lib
from fedjax_robust import evaluation
from fedjax_robust import experiment
from fedjax_robust import honest_sets
from fedjax_robust import provenance
from fedjax_robust import results
from fedjax_robust import sweep
from fedjax_robust.errors import ConfigError


# ------------------------------------------------------------------------- paired comparisons
def test_paired_difference_matches_a_numpy_paired_t():
  rng = np.random.default_rng(0)
  a = rng.normal(0.80, 0.05, 40)
  b = a - rng.normal(0.02, 0.03, 40)           # correlated with a: pairing matters
  a[3], b[7], a[9], b[9] = np.inf, np.inf, np.nan, 0.5
  out = evaluation.paired_difference(a, b)
  keep = np.isfinite(a) & np.isfinite(b)
  d = a[keep] - b[keep]
  k = d.size
  se = d.std(ddof=1) / math.sqrt(k)
  t = d.mean() / se
  half = scipy.stats.t.ppf(0.975, k - 1) * se   # the t quantile is the only library call
  assert out["pairs"] == k == 37
  assert (out["a_only_infinite"], out["b_only_infinite"], out["undefined"]) == (1, 1, 1)
  np.testing.assert_allclose(out["mean"], d.mean(), rtol=1e-12)
  np.testing.assert_allclose([out["ci_low"], out["ci_high"]],
                             [d.mean() - half, d.mean() + half], rtol=1e-10)
  np.testing.assert_allclose(out["p_value"], 2 * scipy.stats.t.sf(abs(t), k - 1), rtol=1e-8)
  # The unpaired interval would be far wider: pairing is what makes the difference visible.
  unpaired = 1.96 * math.sqrt(a[keep].var(ddof=1) / k + b[keep].var(ddof=1) / k)
  assert half < unpaired


def test_paired_difference_degenerate_cases_are_named():
  # No variance in the differences (issue 35, item 3): exact, deterministic, no CI or test.
  same = evaluation.paired_difference(np.ones(5), np.ones(5))
  assert same["mean"] == 0 and same["deterministic"] and same["identical_draws"]
  assert np.isnan([same["p_value"], same["wilcoxon_p"], same["ci_low"], same["ci_high"]]).all()
  few = evaluation.paired_difference(np.array([1.0, np.inf]), np.array([0.0, 1.0]))
  assert few["pairs"] == 1 and np.isnan(few["mean"]) and few["a_only_infinite"] == 1
  # Every difference 0.5: no variance, so no t test and no Wilcoxon test either (its exact
  # 2/2^5 would count 5 equal differences as 5 replicates).
  shift = evaluation.paired_difference(np.arange(5) + 0.5, np.arange(5.0))
  assert shift["deterministic"] and not shift["identical_draws"] and shift["mean"] == 0.5
  assert np.isnan([shift["p_value"], shift["wilcoxon_p"], shift["ci_low"]]).all()


def test_a_rule_that_diverges_is_not_compared_only_where_it_survived():
  """A's loss is lower on the 6 draws both survive, but A diverges (+inf) on 6 more: the t test
  sees only the 6 finite pairs; Wilcoxon ranks the 6 divergences as A's largest losses."""
  a = np.r_[np.full(6, 0.9), np.full(6, np.inf)]
  b = np.r_[np.full(6, 1.0), np.linspace(1.0, 1.5, 6)]
  a[:6] += np.linspace(0, 0.01, 6)
  out = evaluation.paired_difference(a, b)
  assert out["pairs"] == 6 and out["wilcoxon_pairs"] == 12 and out["a_only_infinite"] == 6
  assert out["mean"] < 0                       # on the survivors A looks better...
  ranks = scipy.stats.rankdata(np.abs(np.r_[a[:6] - b[:6], np.full(6, np.inf)]))
  w_minus = ranks[:6].sum()                    # ...but its 6 divergences carry the top ranks
  assert w_minus == 21 and out["wilcoxon_p"] == pytest.approx(
      scipy.stats.wilcoxon(np.r_[a[:6] - b[:6], np.full(6, np.inf)]).pvalue)
  assert out["p_value"] < 1e-4                 # the t test on the survivors: "A is better"
  assert out["wilcoxon_p"] > 0.05              # all draws: no evidence that A is better


# ------------------------------------------------------------------ intervals for heavy tails
def test_bootstrap_and_order_statistic_intervals_cover_on_a_heavy_tail():
  """Lognormal(0, 1) samples of 200 (kurtosis ~110): over 200 replications the BCa interval of
  the mean and the exact interval of the median cover the true values near 95%."""
  rng = np.random.default_rng(1)
  true_mean, true_median = math.exp(0.5), 1.0
  cover_mean = cover_median = 0
  reps = 200
  for _ in range(reps):
    x = rng.lognormal(0.0, 1.0, 200)
    lo, hi, _ = evaluation.bootstrap_interval(x, "mean", method="bca", resamples=999)
    cover_mean += lo <= true_mean <= hi
    lo, hi = evaluation.quantile_interval(x, 0.5)
    cover_median += lo <= true_median <= hi
  assert 0.88 <= cover_mean / reps <= 0.99
  assert 0.92 <= cover_median / reps <= 1.0
  # Heavier and smaller (lognormal σ = 1.5, 30 draws): the normal interval undercovers more than
  # BCa (seeded: 0.79 vs 0.83 over 300 replications).
  rng = np.random.default_rng(2)
  true_mean = math.exp(1.5 ** 2 / 2)
  bca = normal = 0
  for _ in range(300):
    x = rng.lognormal(0.0, 1.5, 30)
    lo, hi, _ = evaluation.bootstrap_interval(x, "mean", method="bca", resamples=999)
    bca += lo <= true_mean <= hi
    lo, hi = evaluation.intervals(x, method="normal")["mean_ci"]
    normal += lo <= true_mean <= hi
  assert bca >= normal + 6


def test_intervals_with_diverged_draws_and_the_heavy_tail_flag():
  x = np.r_[np.linspace(1.0, 2.0, 50), np.inf]     # one diverged draw
  out = evaluation.intervals(x, worst="max", method="bca", resamples=199)
  assert out["mean_ci"] == [np.inf, np.inf] and out["heavy_tail"]
  lo, hi = out["median_ci"]
  assert 1.3 < lo <= np.median(x) <= hi < 1.7      # the median stays informative
  assert not evaluation.heavy_tail(np.linspace(0, 1, 100))
  assert evaluation.heavy_tail(np.r_[np.linspace(0, 1, 100), 10.0])
  assert evaluation.heavy_tail(np.r_[np.linspace(0.9, 1, 100), 0.0], worst="min")
  normal = evaluation.intervals(np.linspace(0, 1, 11), method="normal")
  half = 1.959963984540054 * np.linspace(0, 1, 11).std(ddof=1) / math.sqrt(11)
  np.testing.assert_allclose(normal["mean_ci"], [0.5 - half, 0.5 + half])


def test_by_count_splits_draws_by_realized_b():
  values = np.array([1.0, 2.0, 3.0, 4.0, np.nan, 6.0])
  counts = np.array([0, 1, 0, 2, 1, 1])
  out = evaluation.by_count(values, counts)
  assert sorted(out) == [0, 1, 2]
  assert out[0]["mean"] == 2.0 and out[1]["mean"] == 4.0 and out[1]["undefined"] == 1


# ------------------------------------------------------------------ conditioning on b
def test_conditioned_draws_keep_accepted_masks_and_follow_the_truncated_law():
  import jax  # pylint: disable=g-import-not-at-top
  key = jax.random.key(3)
  spec = {"name": "bernoulli", "p": 0.3}
  n, f = 10, 3
  plain = np.asarray(honest_sets.sample(key, spec, num_clients=n, num_samples=4000))
  masks, info = honest_sets.sample_conditioned(key, spec, num_clients=n, num_samples=4000,
                                               condition="b_le_f", f=f)
  b = n - masks.sum(1)
  assert b.max() <= f
  accepted = (n - plain.sum(1)) <= f
  np.testing.assert_array_equal(masks[accepted], plain[accepted])  # unconditioned where allowed
  pmf, _ = honest_sets.byzantine_count_pmf(spec, num_clients=n)
  law = honest_sets.conditioned_pmf(pmf, "b_le_f", num_clients=n, f=f)
  np.testing.assert_allclose(law[:f + 1].sum(), 1.0)
  empirical = np.bincount(b, minlength=n + 1) / b.size
  assert np.max(np.abs(empirical - law)) < 0.03
  np.testing.assert_allclose(info["acceptance_rate"], pmf[:f + 1].sum(), atol=0.03)
  # A draw's mask does not depend on how many draws were taken.
  few, _ = honest_sets.sample_conditioned(key, spec, num_clients=n, num_samples=37,
                                          condition="b_le_f", f=f)
  np.testing.assert_array_equal(few, masks[:37])


def test_a_condition_without_mass_is_a_readable_error():
  import jax  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="draw_condition='b_le_f'.*acceptance rate"):
    honest_sets.sample_conditioned(jax.random.key(0), {"name": "fixed_count", "num_byzantine": 4},
                                   num_clients=10, num_samples=4, condition="b_le_f", f=2,
                                   max_attempts=5)
  c = tiny_config()
  c.draw_condition = "b_eq_f"
  c.honest_set = "worst_case"
  config_lib.validate(c)   # b = f satisfies every condition: beside a conditioned μ_H in a sweep
  c.honest_set = "bernoulli"
  c.estimators.oracle = True
  with pytest.raises(ConfigError, match="estimators.oracle.*draw_condition='b_eq_f'"):
    config_lib.validate(c)


def test_report_compare_names_are_checked():
  c = tiny_config()
  c.report.compare = "mean:krum"
  with pytest.raises(ConfigError, match="'krum' is not a configured aggregator"):
    config_lib.validate(c)
  c.report.compare = "nnm+trimmed_mean:honest_only"
  with pytest.raises(ConfigError, match="needs estimators.honest_optimum"):
    config_lib.validate(c)
  c.estimators.honest_optimum = True
  assert config_lib.comparison_pairs(c) == [("nnm+trimmed_mean", "honest_only")]
  c.report.compare = ""
  assert config_lib.comparison_pairs(c) == [("nnm+trimmed_mean", "mean"),
                                            ("mean", "honest_only"),
                                            ("nnm+trimmed_mean", "honest_only")]


# ------------------------------------------------------------------ honest-only baseline
def test_honest_only_baseline_excludes_byzantine_data_and_updates():
  """Replacing the Byzantine clients' data by NaN features and wrong labels leaves the
  honest-only run bit-identical (before the fix, their NaN updates entered with weight 0 and
  0·NaN poisoned the mean)."""
  c = tiny_config()
  c.num_samples = 8
  c.honest_set = "bernoulli"
  c.honest_set_options.bernoulli.p = 0.3
  fed = config_lib.make_data(c)
  masks = experiment.draw_masks(c, fed)
  draw = int(np.argmax((~masks).sum(1)))
  assert (~masks[draw]).sum() >= 1
  sim = build.make_simulator(c, "mean", fed, reference="honest_optimum")
  _, init_key, run_key = experiment._keys(c)
  run = lambda data: experiment.run_monte_carlo(  # pylint: disable=g-long-lambda
      sim, data, jnp.asarray(masks[draw:draw + 1]), init_key=init_key, run_key=run_key,
      num_rounds=10, eval_every=5, draw_ids=np.array([draw]))
  clean = run(fed)
  x, y = np.asarray(fed.train.x).copy(), np.asarray(fed.train.y).copy()
  byzantine = ~masks[draw]
  x[byzantine] = np.nan
  y[byzantine] = (y[byzantine] + 1) % fed.num_classes
  poisoned = run(dataclasses.replace(fed, train=fed.train._replace(x=jnp.asarray(x),
                                                                     y=jnp.asarray(y))))
  np.testing.assert_array_equal(clean.metrics["honest_loss"], poisoned.metrics["honest_loss"])
  assert np.all(np.isfinite(clean.metrics["honest_loss"]))


# ------------------------------------------------------------ provenance and stale caches
def test_provenance_is_recorded_and_other_code_is_not_reused(tmp_path, monkeypatch):
  c = tiny_config()
  c.aggregator = "mean"
  c.estimators.honest_optimum = True
  logs = []
  first = experiment.run(c, workdir=str(tmp_path), log=logs.append)
  summary = results.write_all(first, str(tmp_path))
  record = json.loads((tmp_path / "summary.json").read_text())["provenance"]
  assert record["code"]["source_digest"] == provenance.source_digest()
  assert record["code"]["numbers_version"] == provenance.NUMBERS_VERSION
  assert record["environment"]["jax"] and record["environment"]["backend"] == "cpu"
  assert record["seed"] == c.seed and record["draws_per_chunk"] == {"mean": 8}
  assert summary["honest_only"]["honest_accuracy"]["count"] == c.num_samples
  # Same code: reused.
  logs.clear()
  experiment.run(c, workdir=str(tmp_path), log=logs.append)
  assert any("mean: loaded from" in m for m in logs)
  # `recompute`: not reused.
  logs.clear()
  experiment.run(c, workdir=str(tmp_path), log=logs.append, recompute=True)
  assert not any("loaded from" in m for m in logs)
  # Edited code that declares the same numbers (a refactor: another source digest): reused.
  monkeypatch.setattr(provenance, "source_digest", lambda: "0123456789abcdef")
  logs.clear()
  experiment.run(c, workdir=str(tmp_path), log=logs.append)
  assert any("mean: loaded from" in m for m in logs)
  # Code that moved numbers (another numbers version): named with both versions, recomputed.
  monkeypatch.setattr(provenance, "NUMBERS_VERSION", provenance.NUMBERS_VERSION + 1)
  logs.clear()
  experiment.run(c, workdir=str(tmp_path), log=logs.append)
  stale = [m for m in logs if "made by other code" in m]
  assert stale and f"numbers version {provenance.NUMBERS_VERSION}" in stale[0]
  assert f"numbers version {record['code']['numbers_version']}" in stale[0]
  assert not any("loaded from" in m for m in logs)


def test_reuse_mismatch_names_what_differs():
  now = {"code": provenance.code_version(), "environment": provenance.environment()}
  assert provenance.reuse_mismatch(now) is None
  older = json.loads(json.dumps(now))
  older["environment"]["jax"] = "0.4.0"
  assert "jax: saved 0.4.0 ≠ now" in provenance.reuse_mismatch(older)
  assert "recorded before code versions were kept" in provenance.reuse_mismatch(None)


def test_reuse_is_decided_by_the_numbers_version_not_the_source_digest():
  """A refactor (other sources, commit and dirty flag, the same declared numbers) reuses; a
  record of another numbers version, or of one made before numbers versions were kept, does not,
  and the sentence names both versions."""
  now = {"code": provenance.code_version(), "environment": provenance.environment()}
  assert now["code"]["numbers_version"] == provenance.NUMBERS_VERSION
  assert isinstance(provenance.NUMBERS_VERSION, int) and provenance.NUMBERS_VERSION >= 1
  refactored = json.loads(json.dumps(now))
  refactored["code"].update(source_digest="0123456789abcdef", commit="f" * 40, dirty=True)
  assert refactored["code"]["source_digest"] != provenance.source_digest()
  assert provenance.reuse_mismatch(refactored) is None
  moved = json.loads(json.dumps(refactored))
  moved["code"]["numbers_version"] = provenance.NUMBERS_VERSION + 1
  sentence = provenance.reuse_mismatch(moved)
  assert sentence.startswith("code: saved ") and ";" not in sentence  # only the code differs
  saved, current = sentence.removeprefix("code: saved ").split(" ≠ now ")
  assert f"numbers version {provenance.NUMBERS_VERSION + 1}" in saved
  assert f"numbers version {provenance.NUMBERS_VERSION}," in current
  older = json.loads(json.dumps(now))
  del older["code"]["numbers_version"]  # a record written before NUMBERS_VERSION existed
  sentence = provenance.reuse_mismatch(older)
  assert sentence and "numbers version not recorded (made before numbers versions were kept)" \
      in sentence.split(" ≠ now ")[0]
  assert f"numbers version {provenance.NUMBERS_VERSION}" in sentence.split(" ≠ now ")[1]
  # Another numerical stack still differs, and both differences are named.
  moved["environment"]["jaxlib"] = "0.0.1"
  assert provenance.reuse_mismatch(moved).count(";") == 1
  assert "jaxlib: saved 0.0.1 ≠ now" in provenance.reuse_mismatch(moved)


def test_sweep_points_resolve_to_their_config_and_stale_points_are_recomputed(
    tmp_path, monkeypatch):
  c = tiny_config()
  c.num_samples = 8
  c.honest_set = "bernoulli"
  c.honest_set_options.bernoulli.p = 0.3
  points = sweep.axis("aggregator", ["mean", "trimmed_mean"])
  rows = sweep.run(c, points, str(tmp_path), log=lambda _: None)
  for pid in dict.fromkeys(r["point"] for r in rows):
    saved = json.loads(open(sweep.config_path(str(tmp_path), pid)).read())
    assert saved["point"] == pid and saved["provenance"]["code"]["source_digest"]
    assert sweep.point_id(ml_collections.ConfigDict(saved["config"])) == pid
  # Paired comparisons across points: trimmed_mean against mean, same draws, against NumPy.
  compared = sweep.paired_comparisons(rows, str(tmp_path))
  acc = [x for x in compared if x["metric"] == "honest_accuracy"]
  assert len(acc) == 1 and acc[0]["same_draws"] and (acc[0]["a"], acc[0]["b"]) == (
      "trimmed_mean", "mean")
  pids = list(dict.fromkeys(r["point"] for r in rows))
  a = np.load(sweep.point_path(str(tmp_path), pids[1]))["final_honest_accuracy"]
  b = np.load(sweep.point_path(str(tmp_path), pids[0]))["final_honest_accuracy"]
  np.testing.assert_allclose(acc[0]["mean"], np.mean(a - b), rtol=1e-6)
  header = sweep.comparison_table(compared).splitlines()[0].split()
  assert header[:2] == ["a", "−"] and "wilcoxon_pairs" not in header  # no statistic as a tag
  # Points left by another sweep configuration (results.csv keeps their rows) are never paired:
  # `only` keeps the current points, and configs differing beyond the aggregator are refused.
  assert sweep.paired_comparisons(rows, str(tmp_path), only=pids[:1]) == []
  other = json.loads(open(sweep.config_path(str(tmp_path), pids[1])).read())
  other["config"]["training"]["num_rounds"] += 10
  with open(sweep.config_path(str(tmp_path), pids[1]), "w") as fh:
    json.dump(other, fh)
  logs = []
  assert sweep.paired_comparisons(rows, str(tmp_path), log=logs.append) == []
  assert any("differ in more than the aggregator" in m for m in logs)
  logs = []
  monkeypatch.setattr(provenance, "source_digest", lambda: "feedfacefeedface")  # a refactor
  sweep.run(c, points, str(tmp_path), log=logs.append)
  assert not any("computed by other code" in m for m in logs)
  assert any("2 already done, 0 to run" in m for m in logs)
  logs = []
  monkeypatch.setattr(provenance, "NUMBERS_VERSION", provenance.NUMBERS_VERSION + 1)
  sweep.run(c, points, str(tmp_path), log=logs.append)
  assert sum("computed by other code" in m for m in logs) == 2
  assert any("0 already done, 2 to run" in m for m in logs)


# ------------------------------------------------------------ warnings on the realized draw
def test_alie_degenerate_z_is_judged_on_the_realized_b():
  c = tiny_config()
  c.num_clients = 10
  c.attack_options.alie.z = None
  counts = np.array([0, 1, 2, 2, 3, 4])
  out = results.alie_degenerate(c, counts)
  # z(10, b) = Φ⁻¹((10 − b − s)/(10 − b)), s = 6 − b: b = 1 → Φ⁻¹(4/9) < 0; b = 2 → 0;
  # b = 3 → Φ⁻¹(4/7) > 0; b = 4 → Φ⁻¹(4/6) > 0.
  assert out["byzantine_counts"] == [1, 2]
  np.testing.assert_allclose(out["share"], 3 / 5)
  c.attack_options.alie.z = 1.0
  assert results.alie_degenerate(c, counts) is None
