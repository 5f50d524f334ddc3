"""Bad input stops at once with a clear message; the launcher runs end to end and resumes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from conftest import tiny_config
from fedjax_robust import build
from fedjax_robust import config as config_lib
from fedjax_robust import experiment
from fedjax_robust import results
from fedjax_robust.errors import ConfigError


def mutate(_config=None, **changes):
  """tiny_config (or `_config`) with `changes` (keys dotted by '__')."""
  c = tiny_config() if _config is None else _config
  for dotted, value in changes.items():
    *path, leaf = dotted.split("__")
    node = c
    for p in path:
      node = node[p]
    node[leaf] = value
  return c


@pytest.mark.parametrize("changes,match", [
    ({"f": 3}, r"declared f=3 must satisfy 0 <= f < n/2 = 3.0 \(num_clients=6\)"),
    ({"aggregator": "mean,krumm"}, r"unknown aggregator 'krumm'; rules: .*trimmed_mean"),
    ({"attack": "alei"}, r"attack='alei' is outside its domain: one of .*'alie'.* Did you mean "
                         r"'alie'"),
    ({"data__name": "mnsit"}, r"data.name='mnsit' is outside its domain: .*Did you mean 'mnist'"),
    ({"model": "resnet"}, r"model='resnet' is outside its domain: one of 'char_lstm', 'char_transformer', 'cnn', 'linear_regression', 'logistic', 'mlp'"),
    ({"honest_set": "bernoulli", "honest_set_options__bernoulli__p": 1.5},
     r"honest_set_options.bernoulli.p=1.5 is outside its domain: a finite float in \[0, 1\]"),
    ({"num_samples": 0}, r"num_samples=0 is outside its domain: an int >= 1"),
    ({"training__num_rounds": 12}, r"num_rounds=12 must be a positive multiple of .*eval_every=5"),
    ({"training__server_optimizer": "adagradd"},
     r"training.server_optimizer='adagradd' is outside its domain: one of .*'adagrad'"),
    # Learning rates past float32's largest finite value are inf in training (issue 36, 16).
    ({"training__client_lr": 1e39}, r"training.client_lr=1e\+39 is outside its domain: a "
                                    r"finite float in \(0, 3.40282e\+38\] \(finite in float32"),
    ({"training__client_lr": 1e300}, r"training.client_lr=1e\+300 is outside its domain"),
    ({"training__server_lr": 1e39}, r"training.server_lr=1e\+39 is outside its domain"),
    # Buckets of s >= m clients: one bucket, the rule after it sees only the mean.
    ({"aggregator": "bucketing+mean", "aggregator_options__bucketing__bucket_size": 30},
     r"aggregator_options.bucketing.bucket_size=30 \(in bucketing\+mean\) is not below the m "
     r"clients of a round \(num_clients=6\).*allowed: 1 <= bucket_size < 6"),
    ({"aggregator": "mean,bucketing+trimmed_mean",
      "aggregator_options__bucketing__bucket_size": 6}, r"bucket_size=6 \(in "
                                                        r"bucketing\+trimmed_mean\)"),
    ({"aggregator": "bucketing+mean", "aggregator_options__bucketing__bucket_size": 4,
      "training__clients_per_round": 4},
     r"bucket_size=4 .*\(training.clients_per_round=4\).*allowed: 1 <= bucket_size < 4"),
    # A rule with a state in d cannot work on the k shared coordinates of a round.
    ({"aggregator": "mean,centered_clipping", "compression__kind": "shared_random_k",
      "compression__aggregate_in": "k"},
     r"compression.aggregate_in='k': aggregator 'centered_clipping' keeps a state across rounds"),
    # Durability: the attack stops before the last round, or acts every round (0).
    ({"training__attack_rounds": 10}, r"training.attack_rounds=10 must be below "
                                      r"training.num_rounds=10"),
    ({"training__attack_rounds": -1}, r"training.attack_rounds=-1 is outside its domain"),
    # Backdoor defences that need what the job lacks: FLARE a representation layer and root
    # inputs, a per-client state the same clients in the same rows.
    ({"aggregator": "flare", "data__root_examples": 8},
     r"aggregator 'flare' compares the clients' models' penultimate-layer representations; "
     r"model='logistic' has none. Allowed: mlp, cnn"),
    ({"aggregator": "flare", "model": "mlp"},
     r"aggregator 'flare' evaluates the clients' models on the server's root inputs; set "
     r"data.root_examples >= 1"),
    ({"aggregator": "mean,foolsgold", "training__clients_per_round": 4},
     r"aggregator 'foolsgold' keeps a state per client .* training.clients_per_round=4"),
    ({"aggregator": "fldetector", "secure_aggregation__group_size": 2},
     r"aggregator 'fldetector' keeps a state per client .* secure_aggregation.group_size=2"),
    ({"attack": "edge_case", "attack_options__edge_case__source_label": 0,
      "attack_options__edge_case__target_label": 0},
     r"attack_options.edge_case.source_label=0 equals attack_options.edge_case.target_label=0"),
])
def test_bad_config_values_are_rejected(changes, match):
  with pytest.raises(ValueError, match=match):
    config_lib.validate(mutate(**changes))


def test_the_largest_allowed_values_are_accepted():
  # The boundaries of the refusals above: float32's largest finite learning rate, m − 1
  # clients per bucket, and a stateless rule on the shared coordinates.
  for changes in [{"training__client_lr": float(np.finfo(np.float32).max)},
                  {"aggregator": "bucketing+mean", "aggregator_options__bucketing__bucket_size": 5},
                  {"aggregator": "bucketing+mean", "aggregator_options__bucketing__bucket_size": 3,
                   "training__clients_per_round": 4},
                  {"aggregator": "mean,trimmed_mean", "compression__kind": "shared_random_k",
                   "compression__aggregate_in": "k"}]:
    config_lib.validate(mutate(**changes))
  with pytest.raises(ValueError, match="client_lr"):
    config_lib.validate(mutate(training__client_lr=float(np.nextafter(
        np.float32(np.finfo(np.float32).max), np.float32(np.inf), dtype=np.float64))))


def test_data_and_compression_requests_are_refused_before_any_compile():
  # Known once the data are loaded, before any simulator is built: a data set too small for
  # the request, and a sparsifier's k over d (logistic on 8×8 digits: d = 64·10 + 10 = 650; an
  # mlp's personal output layer, 32·10 + 10, is not sent: d = 64·32 + 32 = 2,080).
  with pytest.raises(ConfigError, match=r"data.name='digits' with num_clients=6, "
                                       r"data.partition='dirichlet': .*min_size=10000"):
    config_lib.make_data(mutate(data__min_size=10000))
  fed = config_lib.make_data(tiny_config())
  for kind in ("top_k", "random_k", "shared_random_k"):
    c = mutate(compression__kind=kind, compression__k=651)
    with pytest.raises(ConfigError, match=r"compression.k=651 exceeds d = 650, the parameters "
                                          r"each client sends \(model='logistic'"):
      build.make_simulator(c, "mean", fed)
  assert build.make_simulator(mutate(compression__kind="top_k", compression__k=650), "mean",
                                   fed).num_shared == 650
  personal = dict(model="mlp", training__personalization="personal_head", theory__enabled=False,
                  data__holdout_fraction=0.2, compression__kind="top_k")
  fed = config_lib.make_data(mutate(**personal))
  with pytest.raises(ConfigError, match=r"compression.k=2081 exceeds d = 2,080"):
    build.make_simulator(mutate(**personal, compression__k=2081), "mean", fed)
  assert build.make_simulator(mutate(**personal, compression__k=2080), "mean",
                                   fed).num_shared == 2080


def test_unknown_key_in_a_config_file_is_rejected():
  c = tiny_config()
  c.unlock()
  c.aggregater = "mean"
  with pytest.raises(ConfigError, match=r"config key 'aggregater' does not exist. Did you mean "
                                       r"'aggregator'.* Allowed here: .*aggregator"):
    config_lib.validate(c)
  c = tiny_config()
  c.data.unlock()
  c.data.alpah = 0.3
  with pytest.raises(ConfigError, match=r"config key 'data.alpah' does not exist.*alpha"):
    config_lib.validate(c)


def test_rule_constraints_are_checked_before_any_work():
  c = mutate(num_clients=7, f=3, aggregator="nnm+trimmed_mean")
  config_lib.validate(c)  # n = 2f + 1 is allowed for the trimmed mean
  c = mutate(aggregator="geometric_median", aggregator_options__geometric_median__maxiter=3)
  config_lib.validate(c)


def test_alie_warns_when_its_z_is_zero():
  c = mutate(num_clients=10, f=2, attack="alie", attack_options__alie__z=None)
  with pytest.warns(UserWarning, match=r"ALIE's z from \(n, f\) = \(10, 2\) is"):
    config_lib.validate(c)


@pytest.mark.slow  # test_referee (summary.json, reuse, recompute) and the launcher test cover it
def test_experiment_writes_results_and_resumes(tmp_path):
  logs = []
  first = experiment.run(tiny_config(), workdir=str(tmp_path), log=logs.append)
  summary = results.write_all(first, str(tmp_path))
  for name in ("summary.json", "metrics.csv", "draws.csv", "honest_accuracy.png", "runs/mean.npz",
               "runs/nnm+trimmed_mean.npz"):
    assert os.path.exists(tmp_path / name), name
  on_disk = json.loads((tmp_path / "summary.json").read_text())
  assert set(on_disk["aggregators"]) == {"mean", "nnm+trimmed_mean"}
  assert on_disk["byzantine_count"]["p_exceeds_f"] == 0.0  # exactly one Byzantine per draw
  assert "run_seconds" not in on_disk["aggregators"]["mean"]  # timings in their own file
  assert json.loads((tmp_path / "timings.json").read_text())["mean"]["run_seconds"] > 0
  assert on_disk["aggregators"]["mean"]["draws_per_chunk"] == 8  # 4 draws padded to 8
  draws = (tmp_path / "draws.csv").read_text().strip().splitlines()
  assert draws[0].startswith("draw,num_byzantine,no_honest_majority,") and "mean:honest_loss" in draws[0]
  assert len(draws) == 1 + 4 and all(line.split(",")[1] == "1" for line in draws[1:])
  rows = (tmp_path / "metrics.csv").read_text().strip().splitlines()
  # header + aggregators × evaluations × metrics + aggregators × chunks of rounds × the
  # communication aux (secure averages and numbers sent, per chunk and cumulative)
  assert len(rows) == 1 + 2 * 3 * 5 + 2 * 2 * 4
  assert {r.split(",")[2] for r in rows[1:] if r.split(",")[2].startswith("aux:")} == {
      "aux:secure_averages", "aux:secure_averages_cumulative", "aux:numbers_sent",
      "aux:numbers_sent_cumulative"}
  table = results.format_table(summary)
  assert "nnm+trimmed_mean" in table and "P(b>f)" in table

  logs.clear()
  second = experiment.run(tiny_config(), workdir=str(tmp_path), log=logs.append)
  assert sum("loaded from" in line for line in logs) == 2  # nothing retrained
  for spec in first.runs:
    np.testing.assert_array_equal(second.runs[spec].metrics["honest_accuracy"],
                                  first.runs[spec].metrics["honest_accuracy"])
  changed = tiny_config()
  changed.training.client_lr = 0.25
  logs.clear()
  experiment.run(changed, workdir=str(tmp_path), log=logs.append)
  assert not any("loaded from" in line for line in logs)  # a different config is not reused


def run_launcher(tmp_path, *flags):
  return subprocess.run(
      [sys.executable, os.path.join(ROOT, "launch", "train.py"),
       f"--config={os.path.join(ROOT, 'tests', 'tiny_config.py')}", f"--workdir={tmp_path}",
       *flags], capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_launcher_end_to_end(tmp_path):
  out = run_launcher(tmp_path, "--config.aggregator=trimmed_mean", "--config.num_samples=3",
                     "--config.attack_options.alie.z=nan")
  assert out.returncode == 0, out.stderr[-2000:]
  assert "[100.0% of the training] trimmed_mean: chunk 1/1, round 10/10" in out.stdout
  assert "ETA after the next step (this one compiled)" in out.stdout
  assert "training done; next: writing the tables and files (not in the ETA)" in out.stdout
  assert "job: 3 draws × 10 rounds × 1 aggregator(s)" in out.stdout
  assert "E[honest loss]" in out.stdout and "P(b>f)" in out.stdout
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert list(summary["aggregators"]) == ["trimmed_mean"]
  assert summary["config"]["num_samples"] == 3


def test_launcher_rejects_a_key_that_does_not_exist(tmp_path):
  out = run_launcher(tmp_path, "--config.aggregatr=mean")
  assert out.returncode != 0
  assert "aggregatr" in out.stderr


def test_a_new_option_defaulting_to_none_needs_only_its_declared_domain(monkeypatch):
  """Issue 30: a new registry option whose default is None broke base_config() with a bare
  KeyError until its type was added by hand in config.py. Its placeholder's type now comes from
  its declared domain; an option without a domain is named in the error."""
  from fedjax_robust import aggregators  # pylint: disable=g-import-not-at-top
  from fedjax_robust import domains as D  # pylint: disable=g-import-not-at-top
  options, option_domains = aggregators.options, aggregators.option_domains
  monkeypatch.setattr(aggregators, "options", lambda name: {
      **options(name), **({"new_knob": None} if name == "trimmed_mean" else {})})
  monkeypatch.setattr(aggregators, "option_domains", lambda name: {
      **option_domains(name),
      **({"new_knob": D.Domain("float", optional=True)} if name == "trimmed_mean" else {})})
  c = config_lib.base_config()
  assert c.aggregator_options.trimmed_mean.new_knob is None
  c.aggregator_options.trimmed_mean.new_knob = 0.5  # a float placeholder takes a float
  with pytest.raises(TypeError):
    c.aggregator_options.trimmed_mean.new_knob = "x"
  monkeypatch.setattr(aggregators, "option_domains", option_domains)  # no domain declared
  with pytest.raises(TypeError, match="'new_knob' of 'trimmed_mean' defaults to None"):
    config_lib.base_config()


def test_one_validation_derives_the_prior_and_the_rules_options_once(monkeypatch):
  """Issue 30: one validate() with a server prior computed the prior's spec 5× and the rules'
  options 4× (each a Monte Carlo law for a correlated prior). resolve() computes each once and
  keeps it in the Job: the options the posterior filter takes from the prior (1 − p_i, NumPy)
  and the quantile f the prior sets."""
  from fedjax_robust import server_prior  # pylint: disable=g-import-not-at-top
  c = tiny_config()
  c.aggregator = "posterior_filter,trimmed_mean"
  c.honest_set = "bernoulli"
  c.honest_set_options.bernoulli.p = 0.05
  c.server_prior.kind = "mu_h"
  c.server_prior.declared_f = "quantile"
  counted = {"server_prior_spec": 0, "aggregator_options": 0}
  for name in counted:
    real = getattr(config_lib, name)
    monkeypatch.setattr(config_lib, name, lambda *a, _real=real, _name=name, **k: (
        counted.__setitem__(_name, counted[_name] + 1), _real(*a, **k))[1])
  job = config_lib.resolve(c)
  assert counted == {"server_prior_spec": 1, "aggregator_options": 1}
  n = c.num_clients
  np.testing.assert_allclose(job.options["posterior_filter"]["prior_honest"], np.full(n, 0.95))
  assert job.prior == {**config_lib.honest_set_spec(c), "p": 0.05}
  f, _, _ = server_prior.quantile_f(job.prior, n, c.server_prior.delta)
  assert job.prior_info["f"] == f and config_lib.with_prior_f(c, job.prior_info).f == f
  assert job.specs == ("posterior_filter", "trimmed_mean")


def test_a_run_derives_the_law_of_honest_sets_once_and_reads_the_effective_f(monkeypatch):
  """Issue 30: μ_H's sampler spec was re-derived at 7 call sites (draw_masks, the summary's law
  of b, the plot's title, the theory's exact weights, ...). A whole run now derives it once, at
  resolution (`sampler_spec` -> `honest_set_spec`), and every later reader takes the Job's; the
  run and its summary use the prior's quantile f (the effective f), the configured one stays in
  `job.config`."""
  from fedjax_robust import experiment  # pylint: disable=g-import-not-at-top
  from fedjax_robust import results  # pylint: disable=g-import-not-at-top
  c = tiny_config()
  c.num_samples = 8
  c.aggregator = "mean"
  c.training.num_rounds = c.training.eval_every = 1
  c.honest_set = "bernoulli"
  c.honest_set_options.bernoulli.p = 0.05
  c.server_prior.kind = "mu_h"
  c.server_prior.declared_f = "quantile"
  c.f = 2  # configured; the prior's quantile at p = 0.05 is smaller
  calls = []
  real = config_lib.honest_set_spec
  monkeypatch.setattr(config_lib, "honest_set_spec", lambda *a: calls.append(1) or real(*a))
  exp = experiment.run(c, log=lambda _: None)
  summary = results.summarize(exp)
  assert len(calls) == 1
  quantile_f = exp.job.prior_info["f"]
  assert quantile_f != c.f  # the case where the two differ
  assert exp.job.f == quantile_f and exp.job.config.f == c.f
  assert summary["config"]["f"] == quantile_f
  # P(b > f) of the summary is at the effective f: Binomial(n, 0.05)'s tail, from SciPy.
  from scipy import stats  # pylint: disable=g-import-not-at-top
  np.testing.assert_allclose(summary["byzantine_count"]["exact_p_exceeds_f"],
                             stats.binom.sf(quantile_f, c.num_clients, 0.05), rtol=1e-9)
  assert exp.job.sampler == {"name": "bernoulli", "p": 0.05}


def test_a_job_is_read_only_and_a_change_is_a_new_job():
  """The engine cannot change what it was given: a Job's fields and its settings are frozen;
  `replaced` returns a new Job with the value set and leaves the original as it was."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  job = config_lib.resolve(tiny_config())
  with pytest.raises(dataclasses.FrozenInstanceError):
    job.specs = ("mean",)
  with pytest.raises((AttributeError, ValueError, TypeError)):
    job.training.num_rounds = 1
  with pytest.raises((AttributeError, ValueError, TypeError)):
    job.settings.f = 0
  other = job.replaced({"theory.enabled": not job.theory.enabled, "num_samples": 3})
  assert other.theory.enabled != job.theory.enabled and other.num_samples == 3
  assert job.num_samples == tiny_config().num_samples
  assert other.options is job.options and other.sampler == job.sampler
  # Reading through the Job is reading the effective configuration, key for key.
  assert job.training.to_dict() == job.effective.training.to_dict()


@pytest.mark.parametrize("values,message", [
    ({"data.group_size": 2}, "makes a distinct group on the synthetic source or with"),
    ({"data.name": "synthetic", "data.group_size": 6}, "must be < num_clients=6"),
    ({"data.name": "synthetic", "data.synthetic_group_shift": 1.0}, "shifts no client"),
    ({"data.partition": "label_groups"}, "needs data.group_size >= 1"),
    ({"data.partition": "label_groups", "data.group_size": 2}, "data.group_labels=()"),
    ({"data.group_labels": (1,)}, r"data.group_labels=\(1,\) go with"),
])
def test_a_distinct_group_is_refused_where_it_would_mean_nothing(values, message):
  c = tiny_config()
  for dotted, value in values.items():
    section, key = dotted.split(".")
    c[section][key] = value
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(c)


def _text(**changes):
  """text_config (shakespeare, a tiny char_transformer) with `changes` (dotted by '__')."""
  from text_config import get_config  # pylint: disable=g-import-not-at-top
  return mutate(get_config(), **changes)


@pytest.mark.parametrize("make,match", [
    # Adapters need a base; a base needs text no client holds.
    (lambda: _text(pretraining__enabled=False,
                   model_options__char_transformer__lora_rank=2),
     r"model_options.char_transformer.lora_rank=2 trains adapters on a pretrained base; set "
     r"pretraining.enabled=True"),
    (lambda: mutate(pretraining__enabled=True),
     r"pretraining.enabled=True pretrains a base on text no client holds, and "
     r"data.name='digits' has none; allowed: data.name in \['shakespeare'\]"),
    # Text models read token ids, the others real-valued features.
    (lambda: mutate(model="char_transformer"),
     r"model='char_transformer' does not read the inputs of data.name='digits' \(real-valued "
     r"features\); allowed: .*logistic"),
    (lambda: _text(model="mlp"),
     r"model='mlp' does not read the inputs of data.name='shakespeare' \(windows of "
     r"characters\); allowed: char_transformer, char_lstm"),
    # Threats have their kind of input.
    (lambda: _text(attack="backdoor"),
     r"attack='backdoor': backdoor acts on images or real-valued features, and "
     r"data.name='shakespeare' is text; allowed there: .*text_backdoor"),
    (lambda: mutate(attack="text_backdoor"),
     r"attack='text_backdoor': text_backdoor acts on text, and data.name='digits' is not"),
    (lambda: mutate(attack="random_text"),
     r"attack='random_text': random_text acts on text, and data.name='digits' is not"),
    (lambda: mutate(attack="label_noise:0.5,shuffled_text:0.5"),
     r"shuffled_text acts on text, and data.name='digits' is not"),
    # The clusters law from the data's own groups: on text, and only for that law.
    (lambda: mutate(honest_set="clusters", cluster_assignment="data"),
     r"cluster_assignment='data' takes the data set's natural groups, and data.name='digits' "
     r"has none; allowed: data.name in \['shakespeare'\]"),
    (lambda: _text(honest_set="bernoulli", cluster_assignment="data"),
     r"cluster_assignment='data' gives the clusters law its clusters, and "
     r"honest_set='bernoulli'; allowed: honest_set='clusters'"),
    (lambda: _text(honest_set="clusters", cluster_assignment="data",
                   honest_set_options__clusters__assignment=(0, 0, 1, 1)),
     r"cluster_assignment='data' and honest_set_options.clusters.assignment are both set"),
    # A trigger is a phrase of the vocabulary's characters.
    (lambda: _text(attack="text_backdoor", attack_options__text_backdoor__trigger="O sweet §"),
     r"attack_options.text_backdoor.trigger='O sweet §': characters \['§'\] are not in the "
     r"vocabulary"),
    (lambda: _text(attack="text_backdoor", attack_options__text_backdoor__target=""),
     r"attack_options.text_backdoor.target='': must hold at least one character"),
])
def test_text_settings_are_refused_where_they_mean_nothing(make, match):
  with pytest.raises(ConfigError, match=match):
    config_lib.resolve(make())


def test_the_text_settings_of_a_tiny_shakespeare_job_are_accepted():
  # The refusals' boundaries: each text threat and LoRA on a base, on shakespeare.
  for changes in [{"attack": "text_backdoor"}, {"attack": "random_text"},
                  {"attack": "shuffled_text"}, {"attack": "label_flip"},
                  {"model_options__char_transformer__lora_rank": 2},
                  {"model": "char_lstm", "pretraining__enabled": False}]:
    config_lib.resolve(_text(**changes))
