"""The pretrained base of federated fine-tuning (issue 31): trained once and cached by what makes
it, reused bit for bit, refused (and retrained, saying why) when another numbers version made it
or the file is corrupt; LoRA adapters through the simulator over a base that never moves."""

import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from fedjax_robust import build
from fedjax_robust import config as config_lib
from fedjax_robust import models
from fedjax_robust import pretraining
from fedjax_robust import run_cache
from text_config import get_config

WINDOW, VOCAB = 16, 69  # data.shakespeare.window of text_config; the shakespeare vocabulary + 1


def _flat(params) -> np.ndarray:
  return np.asarray(ravel_pytree(params)[0])


def _fingerprint(c) -> str:
  return run_cache.fingerprint(pretraining.base_config(c))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("pretrained"))


@pytest.fixture(scope="module")
def trained(cache_dir):
  """The tiny config's base, trained afresh into an empty folder: (config, params, info)."""
  pretraining._cached.cache_clear()
  c = get_config(cache_dir)
  params, info = pretraining.base_params(c, input_shape=(WINDOW,), num_classes=VOCAB)
  return c, params, info


@pytest.fixture(scope="module")
def fed(trained):
  return config_lib.make_data(config_lib.resolve(trained[0]))


def test_a_base_is_trained_once_then_loaded_bit_identical(trained, cache_dir):
  c, params, info = trained
  assert info["cached"] is False
  files = glob.glob(os.path.join(cache_dir, "base-*.npz"))
  assert files == [os.path.join(cache_dir, f"base-{_fingerprint(c)}.npz")] == [info["path"]]
  # Its parameter count in closed form (layers=1, width w=8, mlp_ratio 4, window 16, V=69):
  # embed V·w + position 16·w + two LayerNorms 2·2w + q,k,v,out 4·(w² + w) + mlp_in w·4w + 4w
  # + mlp_out 4w·w + w + final LayerNorm 2w + head w·V + V.
  w = 8
  count = (VOCAB * w + WINDOW * w + 4 * w + 4 * (w * w + w) + (4 * w * w + 4 * w)
           + (4 * w * w + w) + 2 * w + (w * VOCAB + VOCAB))
  assert info["parameters"] == models.count_parameters(params) == count == 2189
  pretraining._cached.cache_clear()  # a new process: loaded from the file
  again, info2 = pretraining.base_params(c, input_shape=(WINDOW,), num_classes=VOCAB)
  assert info2["cached"] is True and info2["path"] == info["path"]
  assert info2["loss"] == info["loss"]
  np.testing.assert_array_equal(_flat(again), _flat(params))
  assert jax.tree.structure(again) == jax.tree.structure(params)


def test_pretraining_lowers_the_held_out_loss_below_the_initial_models(trained):
  c, params, info = trained
  model = models.get("char_transformer", input_shape=(WINDOW,), num_classes=VOCAB,
                     **{**dict(c.model_options.char_transformer), "lora_rank": 0})
  _, _, hx, hy = pretraining.base_data(c)
  assert info["held_out_examples"] == len(hy) == max(1, int(pretraining.EVAL_FRACTION * 2000))
  initial = pretraining.evaluate(model, model.init(jax.random.key(0)), hx, hy)
  trained_ = pretraining.evaluate(model, params, hx, hy)
  assert trained_["loss"] == pytest.approx(info["loss"], rel=1e-6)
  # Better than the initial model, and than a uniform guess (ln V nats per character).
  assert trained_["loss"] < initial["loss"] - 0.3, (initial, trained_)
  assert trained_["loss"] < np.log(VOCAB) - 0.3, trained_
  assert trained_["perplexity"] == pytest.approx(np.exp(trained_["loss"]), rel=1e-6)


def test_what_makes_the_base_decides_its_file_and_adapters_do_not():
  c = get_config("/somewhere")
  key = _fingerprint(c)
  for dotted, value in [("pretraining.steps", 31), ("model_options.char_transformer.width", 16),
                        ("seed", 1), ("data.shakespeare.window", 20),
                        ("pretraining.max_examples", 1000), ("pretraining.lr", 1e-3)]:
    other = get_config("/somewhere")
    *path, leaf = dotted.split(".")
    node = other
    for p in path:
      node = node[p]
    node[leaf] = value
    assert _fingerprint(other) != key, dotted
    assert pretraining._path(other) != pretraining._path(c), dotted
  # A base serves every rank and every scale of adapters, wherever it is kept.
  for other in (get_config("/somewhere", lora_rank=4), get_config("/elsewhere", lora_rank=2),
                get_config(None)):
    assert _fingerprint(other) == key
    assert os.path.basename(pretraining._path(other)) == os.path.basename(pretraining._path(c))
  c2 = get_config("/somewhere", lora_rank=2)
  c2.model_options.char_transformer.lora_alpha = 8.0
  assert _fingerprint(c2) == key
  # The honest set, the attack and the federated training do not make the base either.
  c3 = get_config("/somewhere")
  c3.attack, c3.training.num_rounds, c3.num_clients = "random_text", 4, 6
  assert _fingerprint(c3) == key


def _rewrite(path: str, dst: str, **changes) -> None:
  """`path`'s npz written to `dst` with some of its entries replaced."""
  with np.load(path) as z:
    entries = {k: z[k] for k in z.files}
  entries.update(changes)
  np.savez(dst, **entries)


@pytest.mark.parametrize("slow", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_a_base_of_another_numbers_version_is_refused_and_retrained(trained, capsys, slow):
  """Refused (the fast case); and retrained, bit-identical (the slow one: a pretraining)."""
  c, params, info = trained
  path = info["path"]
  saved = open(path, "rb").read()
  try:
    with np.load(path) as z:
      record = json.loads(str(z["provenance"]))
    record["code"]["numbers_version"] = record["code"]["numbers_version"] + 1
    _rewrite(path, path, provenance=json.dumps(record))
    config = pretraining.base_config(c)
    assert pretraining._load(path, config) is None
    assert "not reused (code: saved" in capsys.readouterr().out
    if not slow:
      return
    pretraining._cached.cache_clear()
    again, info2 = pretraining.base_params(c, input_shape=(WINDOW,), num_classes=VOCAB)
    out = capsys.readouterr().out
    assert info2["cached"] is False
    assert f"pretrained base {path}: not reused (code: saved" in out and "pretraining again" in out
    # Pretraining is deterministic: the same base again, and a file now reused.
    np.testing.assert_array_equal(_flat(again), _flat(params))
    pretraining._cached.cache_clear()
    assert pretraining.base_params(c, input_shape=(WINDOW,), num_classes=VOCAB)[1]["cached"]
  finally:
    open(path, "wb").write(saved)
    pretraining._cached.cache_clear()


def test_a_corrupt_or_foreign_base_file_is_refused_with_a_reason(trained, tmp_path, capsys):
  c, _, info = trained
  config = pretraining.base_config(c)
  path = str(tmp_path / "base.npz")
  with open(info["path"], "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[: len(data) // 2])  # a truncated zip
  assert pretraining._load(path, config) is None
  assert f"pretrained base {path}: unreadable (" in capsys.readouterr().out
  with open(path, "wb") as f:
    f.write(b"not a zip at all")
  assert pretraining._load(path, config) is None
  assert "unreadable" in capsys.readouterr().out
  # A file under the name whose content another configuration made.
  other = get_config(None)
  other.pretraining.steps = 31
  _rewrite(info["path"], path, fingerprint=_fingerprint(other))
  assert pretraining._load(path, config) is None
  assert "made by another configuration" in capsys.readouterr().out
  assert pretraining._load(str(tmp_path / "absent.npz"), config) is None
  assert capsys.readouterr().out == ""  # nothing there: nothing to say


@pytest.mark.slow
def test_a_corrupt_base_is_retrained_and_another_step_count_gets_its_own_file(trained,
                                                                              capsys):
  c, params, info = trained
  path = info["path"]
  saved = open(path, "rb").read()
  try:
    open(path, "wb").write(saved[:100])
    pretraining._cached.cache_clear()
    again, info2 = pretraining.base_params(c, input_shape=(WINDOW,), num_classes=VOCAB)
    assert info2["cached"] is False
    assert f"pretrained base {path}: unreadable" in capsys.readouterr().out
    np.testing.assert_array_equal(_flat(again), _flat(params))
  finally:
    open(path, "wb").write(saved)
    pretraining._cached.cache_clear()
  other = get_config(c.pretraining.cache_dir)
  other.pretraining.steps = 21
  _, info3 = pretraining.base_params(other, input_shape=(WINDOW,), num_classes=VOCAB)
  assert info3["cached"] is False and info3["path"] != path
  assert sorted(glob.glob(os.path.join(c.pretraining.cache_dir, "base-*.npz"))) == sorted(
      [path, info3["path"]])


# LoRA through the simulator.


def _lora_count(layers: int, width: int, mlp_ratio: int, rank: int) -> int:
  """Σ r·(in + out) over the adapted Dense layers: per block q, k, v, out (w → w) and the MLP's
  w → mlp_ratio·w and back."""
  w, h = width, mlp_ratio * width
  return layers * rank * (4 * (w + w) + (w + h) + (h + w))


def test_lora_trains_only_adapters_over_a_base_that_never_moves(trained, fed):
  c, params, info = trained
  c2 = get_config(c.pretraining.cache_dir, lora_rank=2)
  job = config_lib.resolve(c2)
  saved = open(info["path"], "rb").read()
  sim = build.make_simulator(job, "mean", fed)
  assert sim.num_params == _lora_count(1, 8, 4, 2) == 288
  assert sim.num_params < info["parameters"]
  base, base_info = pretraining.base_params(job, input_shape=fed.input_shape,
                                            num_classes=fed.num_classes)
  assert base_info["path"] == info["path"]  # rank 2 reads the rank-0 base
  state = sim.init(jax.random.key(0))
  honest = jnp.array([True, True, True, False])
  step = jax.jit(sim.round)
  for t in range(2):
    state, _ = step(state, honest, jax.random.key(7), fed.train)
  adapters = sim._unravel(state.params)
  # The adapters moved: B started at 0 (the adapted model equals the base at init) and is not 0.
  b = [v for k, v in jax.tree_util.tree_flatten_with_path(adapters)[0]
       if "lora_b" in jax.tree_util.keystr(k)]
  assert len(b) == 6 and any(float(jnp.abs(v).max()) > 0 for v in b)
  # The base is what pretraining gave, bit for bit, and its file is untouched.
  np.testing.assert_array_equal(_flat(base), _flat(params))
  assert open(info["path"], "rb").read() == saved
  # The model the simulator evaluates is the base merged with the adapters.
  mod = models.module("char_transformer", input_shape=(WINDOW,), num_classes=VOCAB,
                      **dict(c2.model_options.char_transformer))
  x = fed.test_x[:32]
  np.testing.assert_allclose(
      np.asarray(sim.logits(state.params, x)),
      np.asarray(mod.apply(models.merge_adapters(params, adapters), x)), rtol=1e-5, atol=1e-6)
  # … and not the base alone.
  base_mod = models.module("char_transformer", input_shape=(WINDOW,), num_classes=VOCAB,
                           **{**dict(c2.model_options.char_transformer), "lora_rank": 0})
  assert np.abs(np.asarray(sim.logits(state.params, x))
                - np.asarray(base_mod.apply(params, x))).max() > 1e-6


def test_full_fine_tuning_starts_from_the_base_exactly(trained, fed):
  c, params, _ = trained
  sim = build.make_simulator(config_lib.resolve(c), "mean", fed)
  assert sim.num_params == 2189
  np.testing.assert_array_equal(np.asarray(sim.init(jax.random.key(3)).params), _flat(params))
  np.testing.assert_array_equal(np.asarray(sim.init(jax.random.key(4)).params), _flat(params))


# The text threats on a tiny case: what a Byzantine client trains on changes, an honest one's
# does not.


@pytest.mark.slow  # ~20 s: two simulators' local updates compiled
def test_text_threats_change_a_byzantine_clients_update_only(trained, fed):
  # One simulator with the three text threats as a population: `byzantine` [3] picks the
  # behaviour a client runs (all False: honest), one compiled local update for the four.
  c, _, _ = trained
  c2 = get_config(c.pretraining.cache_dir)
  threats = ("random_text", "shuffled_text", "text_backdoor")
  c2.attack = "random_text:0.3,shuffled_text:0.3,text_backdoor:0.4"
  c2.attack_options.text_backdoor.fraction = 1.0
  sim = build.make_simulator(config_lib.resolve(c2), "mean", fed)
  assert [a.name for a in sim.behaviours] == list(threats)
  clean = build.make_simulator(config_lib.resolve(get_config(c.pretraining.cache_dir)), "mean",
                               fed)  # sign_flip: acts on the sent update, not in local training
  params = sim.init(jax.random.key(0)).params
  zeros = jnp.zeros_like(params)
  x, y, count = fed.train.x[0], fed.train.y[0], fed.train.counts[0]
  key, fault_key = jax.random.key(5), jax.random.key(9)
  update = jax.jit(lambda p, roles: sim.local_update(p, zeros, x, y, count, key, roles,
                                                     fault_key=fault_key)[0])
  honest = np.asarray(update(params, jnp.zeros(3, bool)))
  reference = np.asarray(clean.local_update(params, zeros, x, y, count, key, False,
                                            fault_key=fault_key)[0])
  np.testing.assert_allclose(honest, reference, rtol=1e-5, atol=1e-7)
  updates = [np.asarray(update(params, jnp.arange(3) == k)) for k in range(3)]
  for name, u in zip(threats, updates):
    assert np.linalg.norm(u - honest) > 0.05 * np.linalg.norm(honest), name
  # Each threat trains on other data than the others.
  assert min(np.linalg.norm(updates[i] - updates[j]) for i in range(3) for j in range(i)) > 0


@pytest.mark.slow  # ~30 s: an experiment's compile
def test_a_text_backdoor_is_learned_through_the_mean(trained):
  # Most clients Byzantine (Bernoulli, each with probability 0.9), every poisoned window ending
  # with the trigger and a prefix of the target: through the mean, after 4 rounds the model
  # continues the trigger with the target's first character, which the base does not.
  from fedjax_robust import experiment  # pylint: disable=g-import-not-at-top
  c = get_config(trained[0].pretraining.cache_dir)
  c.attack = "text_backdoor"
  c.attack_options.text_backdoor.fraction = 1.0
  c.honest_set, c.honest_set_options.bernoulli.p, c.num_samples = "bernoulli", 0.9, 4
  c.training.num_rounds, c.training.eval_every = 4, 2
  c.training.local_steps, c.training.client_lr = 5, 1.0
  out = experiment.run(config_lib.resolve(c))
  backdoor = np.asarray(out.runs["mean"].metrics["backdoor_accuracy"])  # [evaluations, draws]
  honest = np.asarray(out.masks["mean"])
  assert backdoor[0].max() < 0.1, backdoor  # the base does not follow the trigger with 'p'
  assert backdoor[-1].mean() > backdoor[0].mean() + 0.3, backdoor
  everyone = ~honest.any(axis=1)  # draws where every client is Byzantine
  assert everyone.any() and np.all(backdoor[-1][everyone] > 0.8), (honest, backdoor)
