"""Models: parameter counts by closed form, logits shapes, and each model can learn."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from fedjax_robust import models


def num_params(model):
  return ravel_pytree(model.init(jax.random.key(0)))[0].size


def test_parameter_counts():
  assert num_params(models.get("logistic", input_shape=(8, 8, 1), num_classes=10)) == 64 * 10 + 10
  mlp = models.get("mlp", input_shape=(8, 8, 1), num_classes=10, hidden=(32, 16))
  assert num_params(mlp) == (64 * 32 + 32) + (32 * 16 + 16) + (16 * 10 + 10)
  cnn = models.get("cnn", input_shape=(8, 8, 1), num_classes=10, features=(4, 8), dense=16)
  # conv 3x3: 1→4, 4→8; two 2x2 pools take 8x8 to 2x2, so the dense layer sees 2·2·8 inputs.
  assert num_params(cnn) == (9 * 1 * 4 + 4) + (9 * 4 * 8 + 8) + (32 * 16 + 16) + (16 * 10 + 10)


def cnn_parameter_count(input_shape, features, dense, num_classes):
  """Closed form of `_CNN`'s parameters: each 3×3 conv c_in → c_out has 9·c_in·c_out + c_out;
  each 2×2 average pool (SAME padding) takes h×w to ⌈h/2⌉×⌈w/2⌉; then dense and classifier."""
  h, w, c = input_shape
  count = 0
  for width in features:
    count += 9 * c * width + width
    h, w, c = -(-h // 2), -(-w // 2), width
  return count + (h * w * c * dense + dense) + (dense * num_classes + num_classes)


@pytest.mark.parametrize("options,expected", [
    ({}, 136_874),                                         # the default: features (16, 32), dense 64
    ({"features": (32, 64), "dense": 128}, 545_098),       # the larger preset
    ({"features": (32, 64, 128), "dense": 256}, 620_362),  # a third block: 4×4×128 into dense
])
def test_cnn_parameter_count_at_cifar_shape(options, expected):
  """d of `cnn` at CIFAR shape (32×32×3, 10 classes), as models.py's docstring states."""
  model = models.get("cnn", input_shape=(32, 32, 3), num_classes=10, **options)
  d = models.count_parameters(jax.eval_shape(model.init, jax.random.key(0)))
  full = {"features": (16, 32), "dense": 64, **options}
  assert d == cnn_parameter_count((32, 32, 3), full["features"], full["dense"], 10) == expected


def test_cnn_trains_one_round_on_cifar10_mock_data():
  """The real data's path (tfds cifar10, here tfds.testing.mock_data: random 32×32×3 images)
  into the default `cnn`: one FedAvg round by hand (each of 4 clients takes 5 gradient steps on
  its own examples from the same model, the server averages the models) lowers the loss on the
  clients' pooled training examples."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from fedjax_robust import data  # pylint: disable=g-import-not-at-top
  with tfds.testing.mock_data(num_examples=60, policy=tfds.testing.MockPolicy.USE_CODE):
    fed = data.load("cifar10", num_clients=4, partition="iid")
  assert fed.input_shape == (32, 32, 3) and fed.num_classes == 10
  model = models.get("cnn", input_shape=fed.input_shape, num_classes=fed.num_classes)
  params = jax.jit(model.init)(jax.random.key(0))  # jitted: flax's eager init is slow here
  mask = data.valid_mask(fed.train.counts, fed.train.x.shape[1]).astype(jnp.float32)
  loss = jax.jit(lambda p, x, y, w: models.masked_cross_entropy(model.apply(p, x), y, w))

  @jax.jit
  def local(p, x, y, w):
    for _ in range(5):
      p = jax.tree.map(lambda a, g: a - 0.05 * g, p, jax.grad(loss)(p, x, y, w))
    return p

  clients = [local(params, fed.train.x[i], fed.train.y[i], mask[i]) for i in range(4)]
  averaged = jax.tree.map(lambda *leaves: sum(leaves) / 4, *clients)
  pooled = lambda p: float(loss(p, fed.train.x.reshape(-1, 32, 32, 3), fed.train.y.reshape(-1),
                                mask.reshape(-1)))
  before, after = pooled(params), pooled(averaged)
  assert np.isfinite(after) and after < before - 0.05, (before, after)


@pytest.mark.slow
def test_cnn_runs_a_round_of_the_simulator_on_cifar10_mock_data():
  """The same through the launch path (experiment.run, validation's tfds check included):
  slow on CPU (8 padded draws × 4 clients of a 32×32×3 CNN)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from conftest import tiny_config  # pylint: disable=g-import-not-at-top
  from fedjax_robust import experiment  # pylint: disable=g-import-not-at-top
  c = tiny_config()
  c.num_clients, c.f, c.num_samples = 4, 0, 1
  c.honest_set_options.fixed_count.num_byzantine = 0
  c.aggregator, c.attack, c.model = "mean", "none", "cnn"
  c.data.name, c.data.partition = "cifar10", "iid"
  c.training.num_rounds, c.training.eval_every, c.training.batch_size = 1, 1, 0
  with tfds.testing.mock_data(num_examples=60, policy=tfds.testing.MockPolicy.USE_CODE):
    out = experiment.run(c, log=lambda _: None).runs["mean"]
  loss = out.metrics["honest_loss"][:, 0]
  assert np.isfinite(loss).all() and loss[-1] < loss[0], loss


@pytest.mark.parametrize("name", ["logistic", "mlp", "cnn"])
def test_each_model_learns(name):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(size=(64, 8, 8, 1)), jnp.float32)
  y = jnp.asarray((np.asarray(x).reshape(64, -1)[:, :32].mean(1) > 0.5).astype(np.int32))
  model = models.get(name, input_shape=(8, 8, 1), num_classes=2)
  params = model.init(jax.random.key(1))
  assert model.apply(params, x).shape == (64, 2)
  ones = jnp.ones(64)
  loss = lambda p: models.masked_cross_entropy(model.apply(p, x), y, ones)
  opt = optax.adam(1e-2)
  state = opt.init(params)
  start = float(loss(params))

  @jax.jit
  def step(p, s):
    updates, s = opt.update(jax.grad(loss)(p), s, p)
    return optax.apply_updates(p, updates), s

  for _ in range(60):
    params, state = step(params, state)
  assert float(loss(params)) < 0.7 * start


def test_masked_losses_ignore_zero_weight_examples():
  logits = jnp.array([[2.0, 0.0], [0.0, 3.0], [5.0, -5.0]])
  labels = jnp.array([0, 1, 1])
  w = jnp.array([1.0, 1.0, 0.0])
  expected = -np.mean([np.log(np.exp(2) / (np.exp(2) + 1)), np.log(np.exp(3) / (np.exp(3) + 1))])
  np.testing.assert_allclose(models.masked_cross_entropy(logits, labels, w), expected, rtol=1e-6)
  assert float(models.masked_accuracy(logits, labels, w)) == 1.0


def test_unknown_model_and_bad_options():
  with pytest.raises(ValueError, match="unknown model 'vit'"):
    models.get("vit", input_shape=(8, 8, 1), num_classes=2)
  with pytest.raises(ValueError, match=r"unknown option\(s\) \['width'\] for model 'mlp'; allowed: \['hidden'\]"):
    models.get("mlp", input_shape=(8, 8, 1), num_classes=2, width=3)


# ----------------------------------------------------------------------------------------------
# Character language models and LoRA adapters.

from flax import traverse_util  # noqa: E402

from fedjax_robust.errors import ConfigError  # noqa: E402

_TEXT = "the quick brown fox "   # period 20: every window of 8 determines the next character
_VOCAB = {c: i + 1 for i, c in enumerate(sorted(set(_TEXT)))}
_V = len(_VOCAB) + 1               # id 0: padding/unknown
_SMALL = dict(layers=1, width=32, heads=2, mlp_ratio=4)


def _windows(window=8, count=40):
  ids = np.array([_VOCAB[c] for c in _TEXT * 4], np.float32)
  x = np.stack([ids[i:i + window] for i in range(count)])
  y = np.array([ids[i + window] for i in range(count)], np.int32)
  return jnp.asarray(x), jnp.asarray(y)


def _train(apply, params, x, y, steps, lr):
  ones = jnp.ones(x.shape[0])
  loss = lambda p: models.masked_cross_entropy(apply(p, x), y, ones)
  opt = optax.adam(lr)

  @jax.jit
  def step(p, s):
    value, grads = jax.value_and_grad(loss)(p)
    updates, s = opt.update(grads, s, p)
    return optax.apply_updates(p, updates), s, value

  params, state, start = step(params, opt.init(params))
  for _ in range(steps - 1):
    params, state, _ = step(params, state)
  return params, float(start), float(loss(params))   # the loss before the first, after the last


def test_char_transformer_parameter_count_closed_form():
  v, w, t, layers, ratio = 23, 32, 6, 2, 3
  h = ratio * w
  per_block = (2 * w                     # LayerNorm before attention: scale, bias
               + 4 * (w * w + w)         # q, k, v, out
               + 2 * w                   # LayerNorm before the MLP
               + (w * h + h) + (h * w + w))   # MLP in, out
  expected = v * w + t * w + layers * per_block + 2 * w + (w * v + v)
  shapes = models.base_shapes("char_transformer", input_shape=(10,), num_classes=v,
                              layers=layers, width=w, heads=4, mlp_ratio=ratio, context=t)
  assert models.count_parameters(shapes) == expected
  model = models.get("char_transformer", input_shape=(10,), num_classes=v, layers=layers,
                     width=w, heads=4, mlp_ratio=ratio, context=t)
  assert models.count_parameters(jax.eval_shape(model.init, jax.random.key(0))) == expected


def test_char_lstm_parameter_count_closed_form():
  v, e, hidden = 23, 8, 16
  lstm = lambda n_in: 4 * (n_in * hidden + hidden * hidden + hidden)   # i, f, g, o gates
  expected = v * e + lstm(e) + lstm(hidden) + hidden * v + v
  shapes = models.base_shapes("char_lstm", input_shape=(10,), num_classes=v, embed=e,
                              hidden=hidden, layers=2)
  assert models.count_parameters(shapes) == expected


@pytest.fixture(scope="module")
def small():
  """The small transformer over windows of 8 and its parameters (one compile for the tests)."""
  model = models.get("char_transformer", input_shape=(8,), num_classes=_V, **_SMALL)
  return model, jax.jit(model.init)(jax.random.key(0))


@pytest.fixture(scope="module")
def lora(small):
  """(base model, base parameters, LoRA model of rank 2 on them, its initial adapters)."""
  base_model, base = small
  model = models.get("char_transformer", input_shape=(8,), num_classes=_V, **_SMALL, lora_rank=2,
                     base_params=base)
  return base_model, base, model, jax.jit(model.init)(jax.random.key(1))


def test_char_transformer_is_causal_and_reads_the_last_context_tokens(small):
  model, params = small
  opts = dict(num_classes=_V, **_SMALL)
  module = models.module("char_transformer", input_shape=(8,), **opts)
  six = models.module("char_transformer", input_shape=(8,), **opts, context=6)
  window6 = models.module("char_transformer", input_shape=(6,), **opts)
  # With context 6 the model reads tokens 2..7 of the window only: the first 6 rows of the
  # position table make it the same model as one over windows of those 6 tokens.
  params6 = jax.tree.map(lambda v: v, params)
  params6["params"]["position"] = params["params"]["position"][:6]
  x, _ = _windows(8, 3)
  positions = (0, 3, 7)
  changed = [x.at[:, t].set((x[:, t] % (_V - 1)) + 1) for t in positions]

  @jax.jit   # one compile for all
  def outputs(params, params6, x, changed):
    return (module.apply(params, jnp.concatenate([x, changed]), all_positions=True),
            model.apply(params, x),
            six.apply(params6, jnp.concatenate([x, x.at[:, :2].set(1.0)])),
            window6.apply(params6, x[:, 2:]))

  every, last, out6, ref6 = map(np.asarray, outputs(params, params6, x, jnp.concatenate(changed)))
  every = every.reshape(len(positions) + 1, 3, 8, _V)   # rows are independent
  full = every[0]
  np.testing.assert_allclose(last, full[:, -1], rtol=1e-5, atol=1e-6)
  for after, t in zip(every[1:], positions):
    np.testing.assert_array_equal(after[:, :t], full[:, :t])   # no position sees a later token
    assert np.all(np.abs(after[:, t] - full[:, t]).max(-1) > 1e-4)
  np.testing.assert_array_equal(out6[:3], out6[3:])
  np.testing.assert_allclose(out6[:3], ref6, rtol=1e-5, atol=1e-6)


def test_out_of_vocabulary_ids_read_as_unknown(small):
  model, params = small
  x, _ = _windows(8, 2)
  bad = x.at[:, 3].set(_V + 5.0).at[:, 5].set(-2.0)
  zero = x.at[:, 3].set(0.0).at[:, 5].set(0.0)
  out = np.asarray(model.apply(params, jnp.concatenate([bad, zero])))
  np.testing.assert_array_equal(out[:2], out[2:])
  assert np.isfinite(out).all()


def test_char_transformer_learns(small):
  model, params = small
  x, y = _windows(8)
  _, start, end = _train(model.apply, params, x, y, 60, 1e-2)
  assert end < 0.5 * start


def test_char_lstm_learns():
  x, y = _windows(8)
  model = models.get("char_lstm", input_shape=(8,), num_classes=_V, hidden=32, layers=1)
  _, start, end = _train(model.apply, jax.jit(model.init)(jax.random.key(0)), x, y, 80, 2e-2)
  assert end < 0.5 * start


def test_lora_starts_at_the_base_and_trains_only_the_adapters(lora):
  base_model, base, model, adapters = lora
  before = jax.tree.map(np.array, base)
  leaves = traverse_util.flatten_dict(adapters)
  assert {k[-1] for k in leaves} == {"lora_a", "lora_b"}
  assert all(not np.any(v) for k, v in leaves.items() if k[-1] == "lora_b")
  x, y = _windows(8)
  base_out = np.asarray(base_model.apply(base, x))
  np.testing.assert_array_equal(model.apply(adapters, x), base_out)
  trained, start, end = _train(model.apply, adapters, x, y, 5, 1e-2)
  assert end < start
  assert not np.array_equal(model.apply(trained, x), base_out)
  jax.tree.map(np.testing.assert_array_equal, base, before)      # the caller's base untouched
  # ... and the closed-over base neither: with B = 0 again, the model is the base bit for bit.
  reset = {k: (jnp.zeros_like(v) if k[-1] == "lora_b" else v)
           for k, v in traverse_util.flatten_dict(trained).items()}
  np.testing.assert_array_equal(model.apply(traverse_util.unflatten_dict(reset), x), base_out)


def test_lora_adapter_count_closed_form(lora):
  # Σ r·(in + out) over q, k, v, out (w → w) and the MLP's w → h, h → w, in every block.
  count = lambda r, w, h, layers: layers * r * (4 * (w + w) + (w + h) + (h + w))
  assert models.count_parameters(lora[3]) == count(2, 32, 4 * 32, 1)
  module = models.module("char_transformer", input_shape=(8,), num_classes=_V, layers=3,
                         width=24, heads=2, mlp_ratio=2, lora_rank=5)
  shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 8)))
  assert models.count_parameters(models.split_adapters(shapes)[1]) == count(5, 24, 48, 3)


def test_lora_dense_matches_its_formula():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(5, 7)).astype(np.float32)
  layer = models._LoRADense(4, rank=2, scale=1.5)  # pylint: disable=protected-access
  params = layer.init(jax.random.key(0), x)["params"]
  params = {**params, "lora_b": jnp.asarray(rng.normal(size=(2, 4)), jnp.float32)}
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  expected = x @ p["kernel"] + p["bias"] + 1.5 * (x @ p["lora_a"]) @ p["lora_b"]
  np.testing.assert_allclose(layer.apply({"params": params}, x), expected, rtol=1e-5, atol=1e-5)
  # A ~ N(0, 1/in): the sample variance of a wide A is 1/in within sampling error.
  wide = models._LoRADense(3, rank=64)  # pylint: disable=protected-access
  a = wide.init(jax.random.key(1), jnp.zeros((1, 400)))["params"]["lora_a"]
  assert abs(float(jnp.var(a)) * 400 - 1) < 0.05      # 25,600 draws: sd of the ratio ≈ 0.009


def test_lora_alpha_scales_the_adapters(lora):
  _, base, model, adapters = lora                      # α = r: scale 1
  scaled = models.get("char_transformer", input_shape=(8,), num_classes=_V, **_SMALL,
                      lora_rank=2, lora_alpha=8.0, base_params=base)   # scale α/r = 4
  flat = traverse_util.flatten_dict(adapters)
  b = {k: (jnp.full_like(v, 0.1) if k[-1] == "lora_b" else v) for k, v in flat.items()}
  b4 = {k: (v / 4 if k[-1] == "lora_b" else v) for k, v in b.items()}
  x, _ = _windows(8, 3)
  np.testing.assert_allclose(scaled.apply(traverse_util.unflatten_dict(b4), x),
                             model.apply(traverse_util.unflatten_dict(b), x), rtol=1e-4,
                             atol=1e-5)


def test_split_and_merge_adapters_round_trip(lora):
  _, base, _, adapters = lora
  params = models.merge_adapters(base, adapters)
  flat = traverse_util.flatten_dict(params)
  assert len(flat) == len(traverse_util.flatten_dict(base)) + len(
      traverse_util.flatten_dict(adapters))
  split_base, split_adapters = models.split_adapters(params)
  assert not any(k[-1] in models.LORA_NAMES for k in traverse_util.flatten_dict(split_base))
  for got, want in ((split_base, base), (split_adapters, adapters)):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    jax.tree.map(np.testing.assert_array_equal, got, want)
  again = models.merge_adapters(*models.split_adapters(params))
  assert jax.tree.structure(again) == jax.tree.structure(params)
  jax.tree.map(np.testing.assert_array_equal, again, params)
  want = models.base_shapes("char_transformer", input_shape=(8,), num_classes=_V, **_SMALL,
                            lora_rank=2)
  assert jax.tree.map(jnp.shape, split_base) == jax.tree.map(lambda s: s.shape, want)


def test_full_fine_tuning_starts_from_a_copy_of_the_base(small):
  _, base = small
  model = models.get("char_transformer", input_shape=(8,), num_classes=_V, **_SMALL,
                     base_params=base)
  jax.tree.map(np.testing.assert_array_equal, model.init(jax.random.key(5)), base)
  mlp_base = models.get("mlp", input_shape=(4,), num_classes=3).init(jax.random.key(0))
  mlp = models.get("mlp", input_shape=(4,), num_classes=3, base_params=mlp_base)
  jax.tree.map(np.testing.assert_array_equal, mlp.init(jax.random.key(9)), mlp_base)


def test_char_model_errors():
  opts = dict(input_shape=(8,), num_classes=_V)
  with pytest.raises(ConfigError, match=r"width=30 is not a multiple of "
                                        r"model_options\.char_transformer\.heads=4"):
    models.get("char_transformer", **opts, width=30, heads=4)
  with pytest.raises(ConfigError, match=r"model_options\.char_transformer\.context=9 exceeds the "
                                        r"window of 8 tokens"):
    models.get("char_transformer", **opts, context=9)
  with pytest.raises(ConfigError, match="LoRA fine-tunes a pretrained base"):
    models.get("char_transformer", **opts, lora_rank=2)
  with pytest.raises(ConfigError, match=r"lora_alpha=2\.0 .*lora_rank=0"):
    models.get("char_transformer", **opts, lora_alpha=2.0)
  base = models.base_shapes("char_transformer", **opts, **_SMALL)
  with pytest.raises(ConfigError, match=r"params/block_0/k/bias has shape \(32,\), the "
                                        r"model's is \(64,\)"):
    models.get("char_transformer", **opts, **{**_SMALL, "width": 64}, lora_rank=2,
               base_params=base)
  with pytest.raises(ConfigError, match=r"lack params/block_1/"):
    models.get("char_transformer", **opts, **{**_SMALL, "layers": 2}, base_params=base)
  with pytest.raises(ConfigError, match=r"position has shape \(8, 32\), the model's is \(6, 32\)"):
    models.get("char_transformer", **opts, **_SMALL, context=6, base_params=base)
  with_adapters = jax.eval_shape(models.module("char_transformer", **opts, **_SMALL,
                                               lora_rank=1).init,
                                 jax.random.key(0), jnp.zeros((1, 8)))
  with pytest.raises(ConfigError, match=r"have params/block_0/\w+/lora_a"):
    models.get("char_transformer", **opts, **_SMALL, lora_rank=1, base_params=with_adapters)


def test_represent_is_the_penultimate_layer_and_only_where_there_is_one():
  """`Model.represent`: the MLP's last hidden activations (NumPy forward pass) and the CNN's
  dense layer (its logits are that layer times the output kernel plus the bias); None for
  logistic regression and an MLP without hidden layers."""
  x = np.random.default_rng(0).normal(size=(5, 8, 8, 1)).astype(np.float32)
  mlp = models.get("mlp", input_shape=(8, 8, 1), num_classes=10, hidden=(7, 6))
  p = mlp.init(jax.random.key(0))["params"]
  h = x.reshape(5, -1).astype(np.float64)
  for layer in ("Dense_0", "Dense_1"):
    h = np.maximum(h @ np.asarray(p[layer]["kernel"]) + np.asarray(p[layer]["bias"]), 0)
  np.testing.assert_allclose(mlp.represent({"params": p}, x), h, atol=1e-5)
  cnn = models.get("cnn", input_shape=(8, 8, 1), num_classes=10, features=(4,), dense=9)
  q = cnn.init(jax.random.key(1))
  feats = np.asarray(cnn.represent(q, x), np.float64)
  head = q["params"]["Dense_1"]
  np.testing.assert_allclose(feats @ np.asarray(head["kernel"]) + np.asarray(head["bias"]),
                             cnn.apply(q, x), atol=1e-4)
  assert feats.shape == (5, 9) and np.all(feats >= 0)
  assert models.get("logistic", input_shape=(8, 8, 1), num_classes=10).represent is None
  assert models.get("mlp", input_shape=(8, 8, 1), num_classes=10, hidden=()).represent is None
