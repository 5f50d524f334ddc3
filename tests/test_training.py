"""The training core against a NumPy implementation, and the Monte Carlo batching guarantees."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from conftest import tiny_config
from fedjax_robust import aggregators
from fedjax_robust import attacks
from fedjax_robust import data
from fedjax_robust import experiment
from fedjax_robust import models
from fedjax_robust import training

C, FEATURES = 3, 4


def client_data(rng, counts=(5, 9, 3, 7), padding_x=0.0, padding_y=0):
  xs = [rng.normal(size=(m, FEATURES, 1, 1)).astype(np.float32) for m in counts]
  ys = [rng.integers(0, C, size=m).astype(np.int32) for m in counts]
  stacked = data.stack_clients(xs, ys)
  valid = np.asarray(data.valid_mask(stacked.counts, max(counts)))
  x = np.where(valid[:, :, None, None, None], np.asarray(stacked.x), padding_x)
  y = np.where(valid, np.asarray(stacked.y), padding_y)
  return data.ClientData(jnp.asarray(x, jnp.float32), jnp.asarray(y), stacked.counts), xs, ys


def simulator(aggregator="mean", attack="none", *, local_steps=1, batch_size=0, lr=0.3,
              momentum=0.0, n=4, f=1):
  model = models.get("logistic", input_shape=(FEATURES, 1, 1), num_classes=C)
  return training.Simulator(
      model=model, aggregator=aggregators.get(aggregator, f=f),
      attack=attacks.get(attack, num_classes=C),
      local=training.LocalTraining(local_steps=local_steps, batch_size=batch_size, lr=lr,
                                   momentum=momentum),
      server_optimizer=optax.sgd(1.0), num_clients=n)


# ----------------------------------------------------------------------- NumPy reference
def np_grad(w, b, x, y):
  x = x.reshape(len(x), -1).astype(np.float64)
  logits = x @ w + b
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  p[np.arange(len(y)), y] -= 1
  return x.T @ p / len(y), p.mean(0)


def np_local(w, b, mw, mb, x, y, *, steps, lr, beta):
  lw, lb = w.copy(), b.copy()
  for _ in range(steps):
    gw, gb = np_grad(lw, lb, x, y)
    mw, mb = beta * mw + (1 - beta) * gw, beta * mb + (1 - beta) * gb
    lw, lb = lw - lr * mw, lb - lr * mb
  return w - lw, b - lb, mw, mb


@pytest.mark.parametrize("steps,beta", [(1, 0.0), (1, 0.9), (3, 0.5)])
def test_full_batch_rounds_match_numpy(rng, steps, beta):
  """Mean aggregation, no attack: T rounds of local GD with worker momentum, by hand."""
  train, xs, ys = client_data(rng)
  sim = simulator(local_steps=steps, momentum=beta)
  init = sim.model.init(jax.random.key(0))
  _, unravel = ravel_pytree(init)
  state = sim.init(jax.random.key(0))
  state, _ = jax.jit(functools.partial(sim.run_rounds, num_rounds=4))(
      state, jnp.ones(4, bool), jax.random.key(1), train)

  w = np.asarray(init["params"]["Dense_0"]["kernel"], np.float64)
  b = np.asarray(init["params"]["Dense_0"]["bias"], np.float64)
  mom = [(np.zeros_like(w), np.zeros_like(b)) for _ in xs]
  for _ in range(4):
    outs = [np_local(w, b, *mom[i], xs[i], ys[i], steps=steps, lr=0.3, beta=beta)
            for i in range(4)]
    mom = [(o[2], o[3]) for o in outs]
    w = w - np.mean([o[0] for o in outs], axis=0)
    b = b - np.mean([o[1] for o in outs], axis=0)
  got = unravel(state.params)["params"]["Dense_0"]
  np.testing.assert_allclose(got["kernel"], w, atol=2e-5)
  np.testing.assert_allclose(got["bias"], b, atol=2e-5)


def test_model_poisoning_replaces_byzantine_rows_before_aggregation(rng):
  train, xs, ys = client_data(rng)
  sim = simulator(attack="sign_flip")
  init = sim.model.init(jax.random.key(0))
  _, unravel = ravel_pytree(init)
  honest = jnp.array([True, False, True, True])
  state, _ = jax.jit(sim.round)(sim.init(jax.random.key(0)), honest, jax.random.key(1), train)
  w = np.asarray(init["params"]["Dense_0"]["kernel"], np.float64)
  b = np.asarray(init["params"]["Dense_0"]["bias"], np.float64)
  outs = [np_local(w, b, 0 * w, 0 * b, xs[i], ys[i], steps=1, lr=0.3, beta=0.0) for i in range(4)]
  honest_mean_w = np.mean([outs[i][0] for i in (0, 2, 3)], axis=0)
  honest_mean_b = np.mean([outs[i][1] for i in (0, 2, 3)], axis=0)
  expected_w = w - (3 * honest_mean_w - honest_mean_w) / 4  # one row replaced by −μ
  expected_b = b - (3 * honest_mean_b - honest_mean_b) / 4
  got = unravel(state.params)["params"]["Dense_0"]
  np.testing.assert_allclose(got["kernel"], expected_w, atol=2e-5)
  np.testing.assert_allclose(got["bias"], expected_b, atol=2e-5)


def test_label_flipping_poisons_only_byzantine_clients(rng):
  train, xs, ys = client_data(rng)
  flip, clean = simulator(attack="label_flip"), simulator()
  params = flip.init(jax.random.key(0)).params
  zeros = jnp.zeros_like(params)
  i = 1
  args = (params, zeros, train.x[i], train.y[i], train.counts[i], jax.random.key(2))
  byz_update, _ = flip.local_update(*args, True)
  honest_update, _ = flip.local_update(*args, False)
  flipped_args = (params, zeros, train.x[i], C - 1 - train.y[i], train.counts[i], jax.random.key(2))
  np.testing.assert_allclose(byz_update, clean.local_update(*flipped_args, False)[0], atol=1e-6)
  np.testing.assert_allclose(honest_update, clean.local_update(*args, False)[0], atol=1e-6)
  assert float(jnp.abs(byz_update - honest_update).max()) > 1e-3


@pytest.mark.parametrize("batch_size", [0, 4])
def test_padding_never_leaks(rng, batch_size):
  """NaN inputs and out-of-range labels in the padding change nothing."""
  clean, _, _ = client_data(np.random.default_rng(7))
  dirty, _, _ = client_data(np.random.default_rng(7), padding_x=np.nan, padding_y=99)
  sim = simulator(batch_size=batch_size, momentum=0.9)
  run = jax.jit(functools.partial(sim.run_rounds, num_rounds=3))
  honest = jnp.ones(4, bool)
  a, _ = run(sim.init(jax.random.key(0)), honest, jax.random.key(1), clean)
  b, _ = run(sim.init(jax.random.key(0)), honest, jax.random.key(1), dirty)
  np.testing.assert_array_equal(a.params, b.params)
  assert np.all(np.isfinite(a.params))
  loss_a, acc_a = sim.client_metrics(a.params, clean)
  loss_b, acc_b = sim.client_metrics(a.params, dirty)
  np.testing.assert_array_equal(loss_a, loss_b)
  np.testing.assert_array_equal(acc_a, acc_b)


def test_client_metrics_and_honest_loss_match_numpy(rng):
  train, xs, ys = client_data(rng)
  sim = simulator()
  params = sim.init(jax.random.key(3)).params
  init = sim.model.init(jax.random.key(3))
  w = np.asarray(init["params"]["Dense_0"]["kernel"], np.float64)
  b = np.asarray(init["params"]["Dense_0"]["bias"], np.float64)

  def np_loss_acc(x, y):
    logits = x.reshape(len(x), -1) @ w + b
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return -logp[np.arange(len(y)), y].mean(), np.mean(logits.argmax(1) == y)

  expected = np.array([np_loss_acc(x, y) for x, y in zip(xs, ys)])
  honest = np.array([True, False, True, True])
  out = sim.evaluate(params, jnp.asarray(honest), train, train.x[0], train.y[0])
  np.testing.assert_allclose(out["honest_loss"], expected[honest, 0].mean(), atol=1e-5)
  np.testing.assert_allclose(out["honest_accuracy"], expected[honest, 1].mean(), atol=1e-6)
  empty = sim.evaluate(params, jnp.zeros(4, bool), train, train.x[0], train.y[0])
  assert np.isnan(empty["honest_loss"]) and np.isnan(empty["honest_accuracy"])


def test_vmapped_samples_equal_separate_runs(rng):
  """S trainings in one program give each sample's numbers as if it ran alone."""
  train, _, _ = client_data(rng, counts=(6, 6, 6, 6, 6, 6))
  sim = simulator("nnm+geometric_median", "alie", batch_size=3, momentum=0.9, n=6, f=1)
  masks = jnp.array([[True] * 6, [False] + [True] * 5, [True, True, False, True, True, False]])
  keys = training.sample_keys(jax.random.key(5), 3)
  run = functools.partial(sim.run_rounds, num_rounds=4)
  states = training.replicate(sim.init(jax.random.key(0)), 3)
  batched, _ = jax.jit(jax.vmap(run, in_axes=(0, 0, 0, None)))(states, masks, keys, train)
  single = jax.jit(run)
  for s in range(3):
    alone, _ = single(sim.init(jax.random.key(0)), masks[s], keys[s], train)
    np.testing.assert_allclose(batched.params[s], alone.params, atol=1e-5)
  assert float(jnp.abs(batched.params[0] - batched.params[2]).max()) > 1e-4


def test_same_config_and_seed_give_identical_numbers():
  config = tiny_config()
  config.aggregator = "bucketing+trimmed_mean"  # randomness in data, training and aggregation
  a = experiment.run(config, log=lambda _: None)
  b = experiment.run(config, log=lambda _: None)
  for metric in experiment.METRICS:
    np.testing.assert_array_equal(a.runs["bucketing+trimmed_mean"].metrics[metric],
                                  b.runs["bucketing+trimmed_mean"].metrics[metric])
  config.seed = 1
  other = experiment.run(config, log=lambda _: None)
  assert not np.array_equal(other.runs["bucketing+trimmed_mean"].metrics["honest_loss"],
                            a.runs["bucketing+trimmed_mean"].metrics["honest_loss"])


def test_weighted_aggregation_weights_clients_by_sample_count(rng):
  train, xs, ys = client_data(rng)
  sim = simulator()
  weighted = training.Simulator(
      model=sim.model, aggregator=aggregators.get("mean", f=1, weighted=True), attack=sim.attack,
      local=sim.local, server_optimizer=sim.server_optimizer, num_clients=4,
      weighted_aggregation=True)
  init = sim.model.init(jax.random.key(0))
  _, unravel = ravel_pytree(init)
  state, _ = jax.jit(weighted.round)(weighted.init(jax.random.key(0)), jnp.ones(4, bool),
                                     jax.random.key(1), train)
  w = np.asarray(init["params"]["Dense_0"]["kernel"], np.float64)
  b = np.asarray(init["params"]["Dense_0"]["bias"], np.float64)
  outs = [np_local(w, b, 0 * w, 0 * b, xs[i], ys[i], steps=1, lr=0.3, beta=0.0) for i in range(4)]
  counts = np.array([len(y) for y in ys], np.float64)
  got = unravel(state.params)["params"]["Dense_0"]
  np.testing.assert_allclose(got["kernel"], w - np.tensordot(counts, [o[0] for o in outs], 1)
                             / counts.sum(), atol=2e-5)


def test_centered_clipping_centre_is_carried_across_rounds(rng):
  train, _, _ = client_data(rng)
  sim = simulator("centered_clipping")
  state = sim.init(jax.random.key(0))
  np.testing.assert_array_equal(state.aggregator_state[0], 0.0)
  for _ in range(2):
    before = state.params
    state, _ = jax.jit(sim.round)(state, jnp.ones(4, bool), jax.random.key(1), train)
    # Server SGD with rate 1: θ' = θ − aggregate, and the state holds that aggregate.
    np.testing.assert_allclose(state.aggregator_state[0], before - state.params, atol=1e-6)


def test_honest_only_aggregation_ignores_byzantine_rows(rng):
  train, xs, ys = client_data(rng)
  sim = simulator()
  honest_only = training.Simulator(
      model=sim.model, aggregator=aggregators.get("mean", f=1, weighted=True),
      attack=attacks.get("sign_flip", num_classes=C), local=sim.local,
      server_optimizer=sim.server_optimizer, num_clients=4, honest_only=True)
  init = sim.model.init(jax.random.key(0))
  _, unravel = ravel_pytree(init)
  honest = jnp.array([True, False, True, True])
  state, _ = jax.jit(honest_only.round)(honest_only.init(jax.random.key(0)), honest,
                                        jax.random.key(1), train)
  w = np.asarray(init["params"]["Dense_0"]["kernel"], np.float64)
  b = np.asarray(init["params"]["Dense_0"]["bias"], np.float64)
  outs = [np_local(w, b, 0 * w, 0 * b, xs[i], ys[i], steps=1, lr=0.3, beta=0.0) for i in (0, 2, 3)]
  got = unravel(state.params)["params"]["Dense_0"]
  np.testing.assert_allclose(got["kernel"], w - np.mean([o[0] for o in outs], 0), atol=2e-5)


def test_a_language_model_reports_each_cross_entropy_as_its_perplexity():
  """Text data: every loss the evaluation reports also as exp(loss) (nats per character), the
  held-out and test ones included; other data sets get no perplexity."""
  import text_config  # pylint: disable=g-import-not-at-top
  from fedjax_robust import build  # pylint: disable=g-import-not-at-top
  from fedjax_robust import config as config_lib  # pylint: disable=g-import-not-at-top
  c = text_config.get_config(pretrained=False)
  c.data.holdout_fraction = 0.2
  job = config_lib.resolve(c)
  fed = config_lib.make_data(job)
  sim = build.make_simulator(job, "mean", fed)
  params = sim.init(jax.random.key(0)).params
  honest = jnp.array([True, True, False, True])
  out = {k: float(v) for k, v in jax.jit(sim.evaluate)(
      params, honest, fed.train, fed.test_x, fed.test_y, fed.holdout).items()}
  names = sorted(k for k in out if k.endswith("_perplexity"))
  assert names == ["honest_holdout_perplexity", "honest_perplexity", "test_perplexity"]
  for name in names:
    np.testing.assert_allclose(out[name], np.exp(out[name.replace("_perplexity", "_loss")]),
                               rtol=1e-6)
  # The same simulator without the flag (what build gives a non-text data set): no perplexity.
  plain = dataclasses.replace(sim, perplexity=False)
  keys = jax.eval_shape(plain.evaluate, params, honest, fed.train, fed.test_x, fed.test_y,
                        fed.holdout)
  assert not [k for k in keys if k.endswith("_perplexity")]
  digits = tiny_config()
  assert build.make_simulator(config_lib.resolve(digits), "mean",
                              config_lib.make_data(digits)).perplexity is False


def test_secure_aggregation_runs_the_rule_on_hand_computed_group_means():
  """secure_group_size = 2 on 8 rows: the server's rule (trimmed mean, f = 1) sees only the 4
  means of the groups that the round's permutation forms (consecutive pairs of it); equal to
  NumPy's trimmed mean over those means, computed here by hand in float64. A non-finite row
  spoils only its group, which the trimmed mean drops."""
  sim = dataclasses.replace(simulator("trimmed_mean", n=8, f=1), secure_group_size=2)
  rng = np.random.default_rng(5)
  x = rng.normal(size=(8, 6)).astype(np.float32)
  x[3] = np.nan
  key = jax.random.key(9)
  got, _, _ = sim._aggregate(jnp.asarray(x), sim.aggregator.init(6, jnp.float32), key, None,
                             (None, None), {})
  perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, training._GROUPS_TAG), 8))
  means = x.astype(np.float64)[perm].reshape(4, 2, 6).mean(axis=1)
  spoiled = ~np.isfinite(means).all(axis=1)
  assert spoiled.sum() == 1
  # Trimmed mean, f = 1: the NaN group sorts above every value, so it is trimmed from the top.
  ordered = np.sort(np.where(spoiled[:, None], np.inf, means), axis=0)
  np.testing.assert_allclose(np.asarray(got), ordered[1:3].mean(axis=0), atol=1e-6)


# ----------------------------------------------------------------------- backdoor plumbing
@pytest.mark.parametrize("attack", ["sign_flip", "label_flip"])
def test_attack_rounds_stop_the_attack_exactly_from_that_round(rng, attack):
  """Durability: with attack_rounds = 2, rounds 0–1 are the attacked run's and rounds 2–3 the
  attack-free run's from the state reached (bit for bit: the same keys), for a model poisoning
  and a data poisoning; without the limit the attack acts in round 3 too."""
  train, _, _ = client_data(rng)
  honest = jnp.array([True, False, True, True])
  key = jax.random.key(1)
  stopped = dataclasses.replace(simulator(attack=attack), attack_rounds=2)
  attacked, clean = simulator(attack=attack), simulator()
  run = lambda sim, state, r: jax.jit(functools.partial(sim.run_rounds, num_rounds=r))(
      state, honest, key, train)[0]
  got = run(stopped, stopped.init(jax.random.key(0)), 4)
  half = run(attacked, attacked.init(jax.random.key(0)), 2)
  want = run(clean, half, 2)
  np.testing.assert_array_equal(np.asarray(got.params), np.asarray(want.params))
  always = run(attacked, half, 2)
  assert not np.allclose(np.asarray(always.params), np.asarray(want.params))


def test_an_indexed_data_poisoning_gets_each_clients_own_index(rng):
  """`Attack.indexed`: poison_data(key, x, y, client) sees the client's index among the n (here
  it relabels every example client % C); the round's mean is the NumPy mean of the clients'
  local updates trained on those labels, with and without client sampling."""
  train, xs, ys = client_data(rng)
  relabel = attacks.Attack("relabel_by_index", indexed=True,
                           poison_data=lambda key, x, y, client: (x, jnp.full_like(y, client % C)))
  for per_round in (0, 3):
    sim = dataclasses.replace(simulator(), attack=relabel, clients_per_round=per_round)
    init = sim.model.init(jax.random.key(0))
    w = np.asarray(init["params"]["Dense_0"]["kernel"], np.float64)
    b = np.asarray(init["params"]["Dense_0"]["bias"], np.float64)
    state, _ = jax.jit(sim.round)(sim.init(jax.random.key(0)), jnp.zeros(4, bool),
                                  jax.random.key(1), train)
    chosen = (np.asarray(training.sample_clients(
        jax.random.fold_in(jax.random.fold_in(jax.random.key(1), 0), training._SAMPLING_TAG),
        4, per_round)) if per_round else np.arange(4))
    outs = [np_local(w, b, 0 * w, 0 * b, xs[i], np.full(len(ys[i]), i % C), steps=1, lr=0.3,
                     beta=0.0) for i in chosen]
    _, unravel = ravel_pytree(init)
    got = unravel(state.params)["params"]["Dense_0"]
    np.testing.assert_allclose(got["kernel"], w - np.mean([o[0] for o in outs], 0), atol=2e-5)
    np.testing.assert_allclose(got["bias"], b - np.mean([o[1] for o in outs], 0), atol=2e-5)


def _recording_rule(needs, per_client_state=False):
  """A mean that also reports the mean of the server inputs it asked for (aux)."""
  def apply(updates, state, key, weights=None, present=None, **inputs):
    aux = {k: jnp.mean(v) for k, v in inputs.items() if k in needs}
    return jnp.mean(updates, axis=0), state, aux
  return aggregators.Aggregator(name="recording", f=0, init=lambda d, dtype=None: (),
                                apply=apply, needs=frozenset(needs),
                                per_client_state=per_client_state)


def test_representations_are_each_rows_model_on_the_root_inputs(rng):
  """A rule asking for `representations` gets, for every row i, the hidden layer of the MLP
  θ − x_i on the root inputs (NumPy forward pass), and `global_params` θ itself."""
  train, xs, ys = client_data(rng)
  model = models.get("mlp", input_shape=(FEATURES, 1, 1), num_classes=C, hidden=(5,))
  root_x = rng.normal(size=(6, FEATURES, 1, 1)).astype(np.float32)
  sim = training.Simulator(
      model=model, aggregator=_recording_rule({"representations", "global_params"}),
      attack=attacks.get("none", num_classes=C), local=training.LocalTraining(lr=0.3),
      server_optimizer=optax.sgd(1.0), num_clients=4,
      root=(root_x, np.zeros(6, np.int32)))
  state0 = sim.init(jax.random.key(0))
  state, aux = jax.jit(sim.round)(state0, jnp.ones(4, bool), jax.random.key(1), train)
  updates = np.asarray(state0.params - state.params)   # the mean update (SGD at lr 1)
  rows = np.asarray(sim.representations(state0.params, jnp.stack([jnp.asarray(updates)] * 2)))
  _, unravel = ravel_pytree(model.init(jax.random.key(0)))
  p = unravel(jnp.asarray(np.asarray(state0.params) - updates))["params"]["Dense_0"]
  hidden = np.maximum(root_x.reshape(6, -1).astype(np.float64) @ np.asarray(p["kernel"])
                      + np.asarray(p["bias"]), 0)
  np.testing.assert_allclose(rows[0], hidden, atol=1e-5)
  np.testing.assert_allclose(float(aux["global_params"]), np.mean(np.asarray(state0.params)),
                             rtol=1e-5)
  # The round's aux: the mean over the clients' own models' features, each client's update
  # recomputed from its round key (as `round` derives it).
  k_clients = jax.random.split(jax.random.fold_in(jax.random.key(1), 0), 3)[0]
  keys = jax.random.split(k_clients, 4)
  own = [sim.local_update(state0.params, state0.momentum[i], train.x[i], train.y[i],
                          train.counts[i], keys[i], False)[0] for i in range(4)]
  np.testing.assert_allclose(np.mean(own, axis=0), updates, atol=1e-6)
  feats = [np.maximum(root_x.reshape(6, -1).astype(np.float64)
                      @ np.asarray(unravel(state0.params - u)["params"]["Dense_0"]["kernel"])
                      + np.asarray(unravel(state0.params - u)["params"]["Dense_0"]["bias"]), 0)
           for u in own]
  np.testing.assert_allclose(float(aux["representations"]), np.mean(feats), rtol=1e-4)


def test_model_reading_rules_are_refused_where_they_cannot_run():
  """Representations need a hidden layer and root data; a per-client state needs the same
  clients in the same rows every round."""
  logistic = models.get("logistic", input_shape=(FEATURES, 1, 1), num_classes=C)
  mlp = models.get("mlp", input_shape=(FEATURES, 1, 1), num_classes=C, hidden=(5,))
  root = (np.zeros((2, FEATURES, 1, 1), np.float32), np.zeros(2, np.int32))
  common = dict(attack=attacks.get("none", num_classes=C), local=training.LocalTraining(),
                server_optimizer=optax.sgd(1.0), num_clients=4)
  with pytest.raises(ValueError, match="no representation layer"):
    training.Simulator(model=logistic, aggregator=_recording_rule({"representations"}),
                       root=root, **common)
  with pytest.raises(ValueError, match="no root data"):
    training.Simulator(model=mlp, aggregator=_recording_rule({"representations"}), **common)
  with pytest.raises(ValueError, match="state per client"):
    training.Simulator(model=mlp, aggregator=_recording_rule((), per_client_state=True),
                       clients_per_round=3, **common)


_SLOW = pytest.mark.slow


@pytest.mark.parametrize("aggregator,attack", [
    # The default set: a per-client state with an indexed attack, the rows' features, the
    # global model through custom_vmap, a stateful trigger beside the server's own update.
    ("foolsgold", "dba"), ("flare", "edge_case"), ("crfl", "backdoor"), ("fltrust", "a3fl"),
    pytest.param("fldetector", "neurotoxin", marks=_SLOW),
    pytest.param("robust_lr", "model_replacement", marks=_SLOW),
    pytest.param("weak_dp", "a3fl", marks=_SLOW), pytest.param("fltrust", "dba", marks=_SLOW)])
def test_backdoor_defences_and_attacks_train_draw_by_draw_in_a_vmapped_batch(aggregator, attack):
  """Every backdoor defence (with the server inputs and per-client state it needs) against an
  attack, jitted and vmapped over draws: a draw's rounds are the same numbers alone and in its
  batch (up to float rounding), and nothing is non-finite."""
  c = tiny_config()
  c.model, c.aggregator, c.attack = "mlp", aggregator, attack
  c.model_options.mlp.hidden = (8,)
  c.data.root_examples = 8
  from fedjax_robust import build, config as config_lib  # pylint: disable=g-import-not-at-top
  job = config_lib.validate(c)
  fed = config_lib.make_data(job)
  sim = build.make_simulator(job, aggregator, fed)
  masks = jnp.asarray([[True, False, True, True, False, True],
                       [False, True, True, True, True, True]])
  keys = training.sample_keys(jax.random.key(2), 2)
  state0 = training.replicate(sim.init(jax.random.key(0)), 2)
  run = jax.jit(jax.vmap(lambda s, m, k: sim.run_rounds(s, m, k, fed.train, 4)[0]))
  batch = run(state0, masks, keys)
  alone = run(jax.tree.map(lambda a: a[1:], state0), masks[1:], keys[1:])
  np.testing.assert_allclose(np.asarray(batch.params[1]), np.asarray(alone.params[0]),
                             rtol=1e-5, atol=1e-6)
  assert np.all(np.isfinite(np.asarray(batch.params)))
