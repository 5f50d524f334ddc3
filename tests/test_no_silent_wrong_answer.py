"""A printed number is what the config says: declared option domains, divergence reported, draws
independent of their batch, caches crash-safe, errors a person can read."""

import concurrent.futures
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import ROOT
from conftest import set_key as _set
from conftest import tiny_config
from fedjax_robust import aggregators
from fedjax_robust import attacks
from fedjax_robust import build
from fedjax_robust import config as config_lib
from fedjax_robust import domains
from fedjax_robust import errors
from fedjax_robust import experiment
from fedjax_robust import honest_sets
from fedjax_robust import models
from fedjax_robust import results
from fedjax_robust import sharding
from fedjax_robust.errors import ConfigError


def _leaves(d, prefix=""):
  for k, v in d.items():
    if isinstance(v, dict) and v:
      yield from _leaves(v, f"{prefix}{k}.")
    elif not isinstance(v, dict):
      yield prefix + k


# ------------------------------------------------------------------ declared domains


def test_every_config_key_and_option_has_a_declared_domain():
  declared = config_lib.all_domains()
  keys = set(_leaves(config_lib.base_config().to_dict()))
  assert keys - set(declared) == set(), "keys without a domain"
  assert set(declared) - keys == set(), "domains of keys that do not exist"
  for name in aggregators.names():
    assert set(aggregators.option_domains(name)) == set(aggregators.options(name)), name
  for name in attacks.names():
    assert set(attacks.option_domains(name)) == set(attacks.options(name)), name
  for name in honest_sets.names():
    assert set(honest_sets.option_domains(name)) == set(honest_sets.options(name)), name


def _option_cases():
  for name in aggregators.names():
    for key, domain in aggregators.option_domains(name).items():
      for bad in domain.examples()[1]:
        yield "aggregator", name, key, bad
  for name in attacks.names():
    for key, domain in attacks.option_domains(name).items():
      for bad in domain.examples()[1]:
        yield "attack", name, key, bad
  for name in honest_sets.names():
    for key, domain in honest_sets.option_domains(name).items():
      for bad in domain.examples()[1]:
        yield "honest_set", name, key, bad
  for name in models.names():
    for key, domain in models.OPTION_DOMAINS[name].items():
      for bad in domain.examples()[1]:
        yield "model", name, key, bad


def test_every_registered_option_refuses_an_out_of_domain_value():
  cases = list(_option_cases())
  assert len(cases) > 100
  for kind, name, key, bad in cases:
    with pytest.raises(ConfigError, match=rf"{name}\.{key}=.* is outside its domain"):
      if kind == "aggregator":
        aggregators.get(name if name not in ("bucketing", "static_clipping",
                                             "nearest_neighbor_mixing",
                                             "adaptive_robust_clipping") else f"{name}+mean",
                        f=1, options={name: {key: bad}})
      elif kind == "attack":
        attacks.get(name, num_classes=10, options={key: bad})
      elif kind == "honest_set":
        spec = {"name": name, **{k: v for k, v in honest_sets.options(name).items()
                                 if v is not honest_sets.inspect.Parameter.empty}}
        spec.update({"p": 0.2} if name == "bernoulli" else {})
        spec.update({"a": 1.0, "b": 2.0} if name == "beta_bernoulli" else {})
        spec.update({"num_byzantine": 1} if name == "fixed_count" else {})
        spec[key] = bad
        honest_sets.validate(spec, num_clients=6)
      else:
        models.get(name, input_shape=(8, 8, 1), num_classes=10, **{key: bad})


def test_the_issue_reproducers_are_refused_with_the_key_named():
  for dotted, value, match in [
      ("aggregator_options.geometric_median.maxiter", 0, r"maxiter=0 .*int >= 1"),
      ("aggregator_options.geometric_median.maxiter", -3, r"maxiter=-3"),
      ("aggregator_options.centered_clipping.iterations", 0, r"iterations=0"),
      ("aggregator_options.geometric_median.nu", math.nan, r"nu=nan .*finite float > 0"),
      ("aggregator_options.geometric_median.nu", -1.0, r"nu=-1.0"),
      ("aggregator_options.geometric_median.maxiter", "abc", r"maxiter='abc'"),
      ("training.client_lr", math.nan, r"training.client_lr=nan"),
      ("training.client_lr", math.inf, r"training.client_lr=inf"),
      ("training.server_lr", -1.0, r"training.server_lr=-1.0"),
      ("training.client_lr", -0.1, r"training.client_lr=-0.1"),
      ("seed", -1, r"seed=-1 .*int >= 0"),
      ("memory_budget_gb", math.nan, r"memory_budget_gb=nan"),
  ]:
    c = tiny_config()
    _set(c, dotted, value)
    with pytest.raises(ConfigError, match=match):
      config_lib.validate(c)


def test_backdoor_can_target_any_label_of_the_real_data_set():
  c = tiny_config()
  c.attack = "backdoor"
  c.attack_options.backdoor.target_label = 7
  config_lib.validate(c)  # digits has 10 classes
  c.attack_options.backdoor.target_label = 10
  with pytest.raises(ConfigError, match=r"target_label=10 must lie in \[0, 10\)"):
    config_lib.validate(c)
  c.data.name = "synthetic"
  c.data.synthetic_num_classes = 3
  c.attack_options.backdoor.target_label = 3
  with pytest.raises(ConfigError, match=r"\[0, 3\)"):
    config_lib.validate(c)


def test_domain_examples_are_inside_and_outside():
  for dotted, domain in config_lib.all_domains().items():
    valid, invalid = domain.examples()
    assert valid and invalid, dotted
    assert all(domain.contains(v) for v in valid), dotted
    assert not any(domain.contains(v) for v in invalid), dotted
  assert not domains.Int(1).contains(True) and not domains.Float(0).contains(math.inf)
  assert domains.Float(optional=True, nan_means="formula").contains(math.nan)


# ------------------------------------------------------------------ Python API input


@pytest.mark.parametrize("spec", ["mean", "geometric_median", "coordinate_median",
                                  "centered_clipping", "bucketing+geometric_median",
                                  "trimmed_mean", "krum"])
def test_api_refuses_bad_input_consistently(spec):
  rule = aggregators.get(spec, f=2)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 3)), jnp.float32)
  with pytest.raises(ConfigError, match=r"declared f=2 needs an honest majority, n > 2f = 4; "
                                        r"got n=4"):
    rule(x[:4])
  with pytest.raises(ConfigError, match=r"floating point, got int32"):
    rule(jnp.ones((8, 3), jnp.int32))
  with pytest.raises(ConfigError, match=r"floating point, got bool"):
    rule(jnp.ones((8, 3), bool))
  with pytest.raises(ConfigError, match=r"n=0 rows"):
    aggregators.get(spec, f=0)(jnp.zeros((0, 3)))
  if spec in ("mean", "geometric_median", "trimmed_mean"):
    with pytest.raises(ConfigError, match=r"weights must have shape \(8,\)"):
      rule(x, weights=jnp.ones(5))
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # float64 without x64: computed in float32, no warnings
    out = rule(np.asarray(x, np.float64))
  np.testing.assert_array_equal(np.asarray(out), np.asarray(rule(x)))


def test_a_lone_plus_names_the_missing_rule():
  with pytest.raises(ConfigError, match=r"empty aggregator name: a '\+' must join"):
    aggregators.get("nnm+", f=1)


# ------------------------------------------------------------------ divergence


def test_diverged_draws_are_counted_not_averaged_in(tmp_path):
  c = tiny_config()
  c.aggregator = "mean"
  c.attack = "inf"     # +inf rows: the mean's model becomes non-finite in every draw with b > 0
  c.honest_set = "bernoulli"
  c.honest_set_options.bernoulli.p = 0.3
  c.num_samples = 8
  exp = experiment.run(c, log=lambda _: None)
  summary = results.summarize(exp)
  s = summary["aggregators"]["mean"]
  counts = (~exp.masks["mean"]).sum(1)
  params_finite = exp.runs["mean"].metrics["diverged"][-1] == 0
  assert s["diverged"]["count"] == int(np.sum(counts > 0)) > 0
  np.testing.assert_array_equal(params_finite, counts == 0)
  assert s["diverged"]["draws"] == np.flatnonzero(counts > 0).tolist()
  # The accuracy estimate is over the finite draws only, and says how many those are.
  acc = exp.runs["mean"].metrics["honest_accuracy"][-1]
  assert s["honest_accuracy"]["count"] == int(np.sum(counts == 0))
  np.testing.assert_allclose(s["honest_accuracy"]["mean"], acc[counts == 0].mean(), rtol=1e-6)
  assert s["honest_loss"]["mean"] == math.inf
  table = results.format_table(summary)
  assert f"WARNING: mean: {s['diverged']['count']} of 8 draws diverged" in table
  # metrics.csv (and the plot, through the same `defined_metrics`) leave them out too.
  results.write_metrics_csv(exp, str(tmp_path / "metrics.csv"))
  rows = [r.split(",") for r in (tmp_path / "metrics.csv").read_text().splitlines()]
  final = [r for r in rows if r[1] == "10" and r[2] == "honest_accuracy"][0]
  assert int(final[-1]) == s["diverged"]["count"]  # column "undefined"


# ------------------------------------------------------------------ batch independence


def _run_chunked(sim, fed, masks, chunk, rounds):
  _, init_key, run_key = experiment._keys(tiny_config())
  return experiment.run_monte_carlo(sim, fed, jnp.asarray(masks), init_key=init_key,
                                    run_key=run_key, num_rounds=rounds, eval_every=rounds // 4,
                                    chunk=chunk)


@pytest.mark.parametrize("spec", ["bucketing+geometric_median",
                                  pytest.param("geometric_median", marks=pytest.mark.slow)])
def test_a_draw_is_bit_identical_whatever_its_chunk_and_neighbours(spec):
  c = tiny_config()
  c.attack = "nan"                 # a NaN row in the draws that have a Byzantine client
  c.aggregator = spec
  c.f = 2
  c.training.num_rounds = 200      # the default number of rounds
  fed = config_lib.make_data(c)
  sim = build.make_simulator(c, spec, fed)
  rng = np.random.default_rng(0)
  masks = np.ones((20, 6), bool)
  for s in range(0, 20, 3):        # every third draw has one Byzantine (NaN) client
    masks[s, rng.integers(6)] = False
  ref = _run_chunked(sim, fed, masks, 20, 200)
  for chunk in (1, 5, 16):
    out = _run_chunked(sim, fed, masks, chunk, 200)
    assert out.draws_per_chunk == experiment.align_draws(chunk)
    for metric in ref.metrics:
      np.testing.assert_array_equal(out.metrics[metric], ref.metrics[metric], err_msg=metric)
  # A clean draw (index 0: same key) alone in its batch, and next to NaN draws: the same bits.
  alone = _run_chunked(sim, fed, masks[1:2], 1, 200)
  mixed = _run_chunked(sim, fed, np.concatenate([masks[1:2], masks[0::3]]), 8, 200)
  assert np.all(mixed.metrics["honest_loss"][0, 1:] >= 0)  # NaN draws present in the batch
  for metric in alone.metrics:
    np.testing.assert_array_equal(alone.metrics[metric][:, 0], mixed.metrics[metric][:, 0])
  assert np.all(ref.metrics["diverged"][-1] == 0)  # the rule excluded every NaN row


def test_chunk_sizes_round_up_to_the_alignment():
  assert [experiment.align_draws(k) for k in (1, 5, 8, 9, 16, 17)] == [8, 8, 8, 16, 16, 24]
  c = tiny_config()
  c.num_samples_per_chunk = 5
  assert experiment.chunk_size(c, 100, 256) == 8
  c.num_samples_per_chunk = 0
  assert experiment.chunk_size(c, 100, 3) == 8


# ------------------------------------------------------------------ fail before the work


def test_unwritable_workdir_fails_before_any_compile(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  logs = []
  start = time.perf_counter()
  with pytest.raises(ConfigError, match=r"--workdir .* is not writable"):
    experiment.run(tiny_config(), workdir=str(blocker / "sub"), log=logs.append)
  assert not any("compiling" in line for line in logs)
  assert time.perf_counter() - start < 10


def test_the_job_is_announced_with_chunks_memory_and_eta(tmp_path):
  c = tiny_config()
  c.num_samples = 20
  c.num_samples_per_chunk = 8
  c.training.batch_size = 5000   # more than any client has
  logs = []
  progress = []
  experiment.run(c, log=logs.append, progress=progress.append)
  job = next(line for line in logs if line.startswith("job:"))
  assert "20 draws × 10 rounds × 2 aggregator(s)" in job
  assert "3 chunk(s) of 8 draws per aggregator (4 padding draws)" in job
  # a tiny job fits under the traced program's upper bound: no compile to measure it
  assert "; memory ≤ " in job and "(bound: the traced program, no buffer reused)" in job
  assert " of data; budget 4 GB)" in job and "time ≈" in job
  assert any("WARNING: training.batch_size=5000 exceeds every client's data" in line
             for line in logs)
  fractions = [p["fraction"] for p in progress]
  assert len(progress) == 2 * 3 * 2 and fractions == sorted(fractions) and fractions[-1] == 1
  assert progress[0]["eta"] is None  # only a step that compiled has been timed
  assert all(p["eta"] >= 0 for p in progress[1:]) and progress[-1]["eta"] == 0
  assert experiment.human_seconds(7325) == "2 h 02 min"
  assert experiment.human_seconds(200) == "3 min 20 s"


# ------------------------------------------------------------------ nothing lost, nothing stale


def test_a_damaged_cached_run_is_named_and_recomputed(tmp_path):
  c = tiny_config()
  c.aggregator = "mean"
  first = experiment.run(c, workdir=str(tmp_path), log=lambda _: None)
  path = tmp_path / "runs" / "mean.npz"
  path.write_bytes(path.read_bytes()[:100])  # truncated
  logs = []
  second = experiment.run(c, workdir=str(tmp_path), log=logs.append)
  assert any("WARNING: cached run" in line and "mean.npz" in line for line in logs)
  np.testing.assert_array_equal(second.runs["mean"].metrics["honest_loss"],
                                first.runs["mean"].metrics["honest_loss"])
  third_logs = []
  experiment.run(c, workdir=str(tmp_path), log=third_logs.append)
  assert any("loaded from" in line for line in third_logs)  # rewritten whole


def test_summary_json_is_byte_identical_on_a_rerun(tmp_path):
  c = tiny_config()
  results.write_all(experiment.run(c, workdir=str(tmp_path / "a"), log=lambda _: None),
                    str(tmp_path / "a"))
  results.write_all(experiment.run(c, workdir=str(tmp_path / "b"), log=lambda _: None),
                    str(tmp_path / "b"))
  a = (tmp_path / "a" / "summary.json").read_bytes()
  assert a == (tmp_path / "b" / "summary.json").read_bytes()
  assert b"seconds" not in a
  assert "run_seconds" in json.loads((tmp_path / "a" / "timings.json").read_text())["mean"]


# ------------------------------------------------------------------ errors a person can read


def _launch(tmp_path, *flags, script="train.py"):
  config = os.path.join(ROOT, "tests", "tiny_config.py")
  return subprocess.run([sys.executable, os.path.join(ROOT, "launch", script),
                         f"--config={config}", f"--workdir={tmp_path}", *flags],
                        capture_output=True, text=True, timeout=300, cwd=ROOT)


@pytest.mark.parametrize("flag,expected", [
    ("--config.aggregatr=mean", "config key 'aggregatr' does not exist: 'aggregatr' is not a key "
                                "here. Did you mean 'aggregator'"),
    ("--config.attack_options.alie.beta=1", "config key 'attack_options.alie.beta' does not exist"
                                            ": 'beta' is not a key here. Allowed here: z."),
    ("--config.seed=-1", "seed=-1 is outside its domain: an int >= 0."),
    ("--config.aggregator=nnm+", "empty aggregator name: a '+' must join"),
    ("--config.training.client_lr=nan", "training.client_lr=nan is outside its domain"),
])
def test_launcher_errors_are_one_paragraph(tmp_path, flag, expected):
  out = _launch(tmp_path, flag)
  assert out.returncode == 2
  err = "\n".join(line for line in out.stderr.splitlines()
                  if "Platform" not in line and "absl" not in line and line.strip())
  assert expected in err
  assert "Traceback" not in out.stderr and len(err.splitlines()) <= 2, err


@pytest.mark.parametrize("argv,expected", [
    (["launch/train.py", "--config.traning.client_lr=1"],
     "config key 'traning.client_lr' does not exist: 'traning' is not a key here. Did you mean "
     "'training'"),
    (["launch/sweep.py", "--config.grid.aggregatrs=mean"],
     "config key 'grid.aggregatrs' does not exist"),
    (["launch/bench.py", "--config.moed=x"], "Did you mean 'mode'?"),
])
def test_unknown_keys_with_the_default_config_files(tmp_path, argv, expected):
  # With the default config file, ml_collections applies overrides at import time.
  out = subprocess.run([sys.executable, os.path.join(ROOT, argv[0]), *argv[1:],
                        f"--workdir={tmp_path}"], capture_output=True, text=True, timeout=300,
                       cwd=ROOT)
  assert out.returncode == 2 and expected in out.stderr and "Traceback" not in out.stderr


# Bad launcher input, one row per way in (issue 36, item 14): (launcher, flags, what the one
# paragraph must name). {tiny} is tests/tiny_config.py, {raising} a config file whose
# get_config() raises. Each case exits 2 with `error: ...` and nothing else on stderr (absl's
# and XLA's log lines aside), no traceback, and nothing compiled.
_REFUSALS = [
    # absl's own flag parser (it exits 1 with "FATAL Flags parsing error")
    ("train.py", ["--bogus=1"], ["Unknown command line flag 'bogus'"]),
    ("train.py", ["--cpu_devices=abc"], ["--cpu_devices=abc"]),
    ("sweep.py", ["--recompute=maybe"], ["--recompute=maybe"]),
    ("bench.py", ["--config.repeats=x"], ["--config.repeats=x"]),
    ("train.py", ["--config={tiny}", "extra"], ["unexpected argument(s) 'extra'"]),
    # the config file
    ("train.py", ["--config=configs/nope.py"], ["--config=configs/nope.py: no such file"]),
    ("train.py", ["--config={raising}"], ["RuntimeError: boom", "line 2"]),
    ("sweep.py", ["--config={tiny}"], ["is not a sweep config"]),
    # the devices, set up before the config is validated
    ("train.py", ["--config={tiny}", "--config.mesh=bogus"], ["mesh='bogus'"]),
    ("sweep.py", ["--config.base.mesh=draws=0"], ["mesh='draws=0'"]),
    # checks that came after the data were loaded, or after the whole sweep had run
    ("train.py", ["--config={tiny}", "--config.compression.kind=top_k", "--config.compression.k=100000"],
     ["compression.k=100000", "d = 650"]),
    ("train.py", ["--config={tiny}", "--config.compression.kind=shared_random_k",
                  "--config.compression.aggregate_in=k", "--config.aggregator=centered_clipping"],
     ["compression.aggregate_in='k'", "'centered_clipping'"]),
    ("train.py", ["--config={tiny}", "--config.data.min_size=10000"], ["min_size=10000"]),
    ("sweep.py", ["--config.grid.mu_h=bogus"], ["grid.mu_h='bogus'"]),
    ("sweep.py", ["--config.plot.x=nope"], ["plot.x='nope'"]),
    # values that cannot work (issue 36, item 16)
    ("train.py", ["--config={tiny}", "--config.training.client_lr=1e39"], ["training.client_lr=1e+39"]),
    ("train.py", ["--config={tiny}", "--config.aggregator=bucketing+mean",
                  "--config.aggregator_options.bucketing.bucket_size=30"],
     ["bucket_size=30", "num_clients=6"]),
    # the benchmark's config (absl's usage text, exit 1, or a traceback before)
    ("bench.py", ["--config.mode=bogus"], ["mode='bogus'"]),
    ("bench.py", ["--config.monte_carlo.block_sizes=(-1,)"], ["monte_carlo.block_sizes=(-1,)"]),
    ("bench.py", ["--config.monte_carlo.sample_counts=(0,)"], ["monte_carlo.sample_counts=(0,)"]),
    ("bench.py", ["--config.mode=aggregators", "--config.repeats=0"], ["repeats=0"]),
]
# One of each way in for the default run; every row in the slow one.
_QUICK = (0, 5, 8, 10)
_LOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d")  # absl's (and XLA's) log lines


def _run_refusals(rows, tmp_path):
  tiny = os.path.join(ROOT, "tests", "tiny_config.py")
  raising = tmp_path / "raising_config.py"
  raising.write_text("def get_config():\n  raise RuntimeError('boom')\n")

  def run(i):
    script, args, _ = rows[i]
    args = [a.format(tiny=tiny, raising=raising) for a in args]
    return subprocess.run([sys.executable, os.path.join(ROOT, "launch", script), *args,
                           f"--workdir={tmp_path / str(i)}"], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)

  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    outs = list(pool.map(run, range(len(rows))))
  for (script, args, names), out in zip(rows, outs):
    lines = [l for l in out.stderr.splitlines() if l.strip() and not _LOG_LINE.match(l)]
    case = f"{script} {' '.join(args)}: {out.stderr[-1500:]}"
    assert out.returncode == 2, case
    assert len(lines) == 1 and lines[0].startswith("error: "), case
    assert all(name in lines[0] for name in names), case
    assert "Traceback" not in out.stderr and "compiling" not in out.stdout, case


def test_bad_launcher_input_exits_2_in_one_paragraph(tmp_path):
  _run_refusals([_REFUSALS[i] for i in _QUICK], tmp_path)


@pytest.mark.slow
def test_every_bad_launcher_input_exits_2_in_one_paragraph(tmp_path):
  _run_refusals(_REFUSALS, tmp_path)


def test_flag_parser_refusals_are_config_errors():
  # absl's parse errors (it would exit 1) as ConfigErrors naming the flag and the value.
  from absl import flags  # pylint: disable=g-import-not-at-top
  fv = flags.FlagValues()
  flags.DEFINE_integer("n", 0, "", flag_values=fv)
  flags.DEFINE_bool("b", False, "", flag_values=fv)
  for argv, name in [(["prog", "--n=abc"], "--n=abc"), (["prog", "--b=maybe"], "--b=maybe"),
                     (["prog", "--nn=1"], "Unknown command line flag 'nn'")]:
    fv.unparse_flags()
    with pytest.raises(ConfigError, match=re.escape(name)):
      errors.parse_flags(argv, flag_values=fv)
  fv.unparse_flags()
  assert errors.parse_flags(["prog", "--n=3", "rest"], flag_values=fv) == ["prog", "rest"]
  assert fv.n == 3


def test_config_files_that_do_not_load_are_named(tmp_path):
  cases = {"syntax.py": ("def get_config(:\n", r"SyntaxError: .*syntax.py, line 1: def "
                                                  r"get_config\(:"),
           "imports.py": ("import no_such_module_xyz\n", r"ModuleNotFoundError: .*line 1"),
           "raises.py": ("def get_config():\n  return {}['x']\n", r"get_config\(\) raised "
                                                               r"KeyError: 'x' .*line 2"),
           "none.py": ("X = 1\n", r"defines no get_config\(\)")}
  for name, (text, match) in cases.items():
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"--config={re.escape(str(path))}: .*{match}"):
      errors.load_config_file(str(path))
  with pytest.raises(ConfigError, match=r"--config=nope.py: no such file 'nope.py'"):
    errors.load_config_file("nope.py")
  (tmp_path / "arg.py").write_text("def get_config(arg):\n  return {'arg': arg}\n")
  assert errors.load_config_file(f"{tmp_path / 'arg.py'}:small") == {"arg": "small"}


def test_mesh_specs_outside_the_syntax_are_config_errors():
  # Parsed when the launcher sets up the devices, before config.validate wraps errors.
  for spec, match in [("bogus", "axis 'bogus' is not allowed"), ("draws=0", "draws='0' is not a "
                      "positive integer"), ("clients", "the clients axis needs a size"),
                      ("draws=64", "needs 64 devices")]:
    with pytest.raises(ConfigError, match=rf"mesh='{spec}'.* {match}"):
      sharding.axis_sizes(spec)


def test_sweep_grid_values_are_refused_naming_the_key():
  # A value a sweep config looks up in its own tables (a rule label, a μ_H, a block, a task):
  # refused by points() naming grid.<key> and the value, not a KeyError or a silent default.
  import importlib.util  # pylint: disable=g-import-not-at-top
  cases = {"sweep_core": ["mu_h"], "sweep_rfa": ["rules"],
           "sweep_dp_compression": ["privacy", "compression"],
           "sweep_privacy": ["mechanism", "mu_h", "threat"],
           "sweep_dp_dimension": ["tasks", "settings"],
           "sweep_deployed": ["personalization_rules", "deployed_rules"],
           "sweep_mu_aware": ["blocks", "mu_h", "rules"]}
  for name, keys in cases.items():
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs",
                                                                     f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for key in keys:
      c = module.get_config()
      c.grid[key] = ("no_such_value",)
      with pytest.raises(ConfigError, match=rf"grid.{key}='no_such_value'"):
        module.points(c)


def test_ctrl_c_says_what_was_saved_and_how_to_resume(tmp_path):
  train = os.path.join(ROOT, "launch", "train.py")
  args = [f"--config={os.path.join(ROOT, 'tests', 'tiny_config.py')}", f"--workdir={tmp_path}",
          "--config.training.num_rounds=4000", "--config.training.eval_every=10",
          "--config.checkpoint.every_rounds=10"]
  # A shell starts background jobs with SIGINT ignored and children inherit that (Python then
  # installs no KeyboardInterrupt handler), so the child puts Python's handler back before it
  # runs the launcher: the test does not depend on how pytest itself was started. (Not through
  # preexec_fn: forking the multithreaded JAX process can deadlock.)
  bootstrap = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler)"
               f"; sys.argv = {[train, *args]!r}; runpy.run_path({train!r}, run_name='__main__')")
  proc = subprocess.Popen([sys.executable, "-c", bootstrap], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, cwd=ROOT)
  for line in proc.stdout:
    if "% of the training]" in line:
      break
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 130
  assert "interrupted: 0 finished aggregator run(s) saved in" in err
  # The first step's checkpoint was saved before its progress line: the message names it.
  assert f"and checkpoints of mean in {tmp_path / 'checkpoints'}" in err
  assert "rerun the same command to resume" in err and "Traceback" not in err
