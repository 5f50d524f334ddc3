"""Inadvertent faults and mixed populations: each fault's effect against a NumPy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from fedjax_robust import attacks
from fedjax_robust.attacks import faults
from fedjax_robust import models
from fedjax_robust import training
from fedjax_robust.data import ClientData
from fedjax_robust.errors import ConfigError

import optax

C = 10


def _binomial_ok(successes, trials, p, level=1e-4):
  """True unless a two-sided binomial test rejects rate p at `level`."""
  return stats.binomtest(int(successes), int(trials), p).pvalue > level


def _corrupt(name, x, y, key=0, **options):
  fault = attacks.get(name, num_classes=C, options=options)
  return fault.corrupt_data(jax.random.key(key), jnp.asarray(x), jnp.asarray(y),
                            jnp.arange(len(y)))


def test_symmetric_label_noise_rate_and_wrong_labels():
  y = np.random.default_rng(0).integers(0, C, 4000)
  _, noisy = _corrupt("label_noise", np.zeros((4000, 3)), y, rate=0.3)
  noisy = np.asarray(noisy)
  changed = noisy != y
  assert _binomial_ok(changed.sum(), len(y), 0.3)
  # A flipped label is uniform over the C − 1 wrong labels: (noisy − y) mod C uniform on 1..C−1.
  shifts = (noisy[changed] - y[changed]) % C
  counts = np.bincount(shifts, minlength=C)[1:]
  assert stats.chisquare(counts).pvalue > 1e-4
  assert counts.min() > 0


def test_pair_and_matrix_label_noise():
  rng = np.random.default_rng(1)
  y = rng.integers(0, C, 5000)
  _, noisy = _corrupt("label_noise", np.zeros((5000, 2)), y, rate=0.5, kind="pair")
  noisy = np.asarray(noisy)
  changed = noisy != y
  np.testing.assert_array_equal(noisy[changed], (y[changed] + 1) % C)
  assert _binomial_ok(changed.sum(), len(y), 0.5)
  # Class-dependent: label c goes to T[c] with probability r = 1.
  T = np.full((C, C), 0.0)
  T[np.arange(C), (np.arange(C) + 3) % C] = 0.7
  T[np.arange(C), np.arange(C)] = 0.3
  _, noisy = _corrupt("label_noise", np.zeros((5000, 2)), y, rate=1.0, kind="matrix",
                      matrix=tuple(map(tuple, T)))
  noisy = np.asarray(noisy)
  moved = noisy != y
  np.testing.assert_array_equal(noisy[moved], (y[moved] + 3) % C)
  assert _binomial_ok(moved.sum(), len(y), 0.7)


def test_data_corruption_is_fixed_per_example():
  """The same example is corrupted the same way whenever it is sampled (same draw key)."""
  rng = np.random.default_rng(2)
  x, y = rng.normal(size=(50, 4)).astype(np.float32), rng.integers(0, C, 50)
  fault = attacks.get("label_noise", num_classes=C, options={"rate": 0.5})
  key = jax.random.key(3)
  idx = jnp.asarray([7, 3, 7, 7, 3])
  _, a = fault.corrupt_data(key, jnp.asarray(x[idx]), jnp.asarray(y[idx]), idx)
  a = np.asarray(a)
  assert a[0] == a[2] == a[3] and a[1] == a[4]
  _, full = fault.corrupt_data(key, jnp.asarray(x), jnp.asarray(y), jnp.arange(50))
  np.testing.assert_array_equal(a, np.asarray(full)[np.asarray(idx)])


def test_feature_faults_against_numpy():
  rng = np.random.default_rng(4)
  x = rng.uniform(size=(400, 8, 8, 1)).astype(np.float32)
  y = rng.integers(0, C, 400)
  noisy, _ = _corrupt("feature_noise", x, y, std=0.7)
  noise = (np.asarray(noisy) - x).ravel().astype(np.float64)
  # Σ noise²/s² ~ χ²(N): a two-sided test of the configured scale.
  q = np.sum(noise ** 2) / 0.7 ** 2
  p = stats.chi2.cdf(q, noise.size)
  assert 1e-4 < p < 1 - 1e-4
  assert abs(noise.mean()) < 4 * 0.7 / np.sqrt(noise.size)
  missing, _ = _corrupt("missing_features", x, y, rate=0.25)
  missing = np.asarray(missing)
  zeroed = missing == 0
  assert _binomial_ok(zeroed.sum(), x.size, 0.25)
  np.testing.assert_array_equal(missing[~zeroed], x[~zeroed])
  shifted, same_y = _corrupt("feature_shift", x, y, shift=-0.3)
  np.testing.assert_allclose(np.asarray(shifted), x - 0.3, atol=1e-7)
  np.testing.assert_array_equal(np.asarray(same_y), y)


def test_biased_weights_keep_the_most_frequent_classes():
  rng = np.random.default_rng(5)
  for trial in range(20):
    m = 30
    y = rng.integers(0, 5, m)
    valid = np.arange(m) < rng.integers(5, m + 1)
    k = int(rng.integers(1, 4))
    w = np.asarray(faults.biased_weights(jnp.asarray(y), jnp.asarray(valid), num_classes=C,
                                         classes=k, other_weight=0.25))
    counts = np.bincount(y[valid], minlength=C)
    kept = sorted(range(C), key=lambda c: (-counts[c], c))[:k]   # ties: the smaller label
    expected = np.where(valid, np.where(np.isin(y, kept), 1.0, 0.25), 0.0)
    np.testing.assert_allclose(w, expected, err_msg=f"trial {trial}")


def test_stale_sends_the_update_of_round_t_minus_k():
  n, d, k, rounds = 6, 3, 3, 9
  rng = np.random.default_rng(6)
  history = rng.normal(size=(rounds, n, d)).astype(np.float32)
  faulty = jnp.asarray([False, True, False, True, False, False])
  fault = attacks.get("stale", num_classes=C, options={"delay": k})
  state = fault.init(d, n)
  for t in range(rounds):
    out, state = fault.poison(jax.random.key(0), jnp.asarray(history[t]), faulty, state, None)
    out = np.asarray(out)
    np.testing.assert_array_equal(out[~np.asarray(faulty)], history[t][~np.asarray(faulty)])
    np.testing.assert_array_equal(out[np.asarray(faulty)],
                                  history[max(t - k, 0)][np.asarray(faulty)])


def test_absence_masks():
  faulty = jnp.asarray(np.arange(200) % 3 == 0)
  drop = attacks.get("dropout", num_classes=C, options={"rate": 0.4})
  absent = []
  for t in range(20):
    present = np.asarray(drop.presence(jax.random.key(t), faulty, jnp.asarray(t)))
    assert present[~np.asarray(faulty)].all()           # honest clients never drop out
    absent.append(~present[np.asarray(faulty)])
  absent = np.concatenate(absent)
  assert _binomial_ok(absent.sum(), absent.size, 0.4)
  crash = attacks.get("crash_stop", num_classes=C, options={"start_round": 4})
  for t in range(8):
    present = np.asarray(crash.presence(jax.random.key(t), faulty, jnp.asarray(t)))
    np.testing.assert_array_equal(present, ~np.asarray(faulty) if t >= 4 else np.ones(200, bool))


def test_population_spec_and_composition():
  assert attacks.parse_population("alie") == [("alie", 1.0)]
  assert attacks.parse_population("label_noise:0.25, alie:0.75") == [("label_noise", 0.25),
                                                                     ("alie", 0.75)]
  for bad, words in [("label_noise:0.5,alie:0.4", "sum to 0.9"), ("alie:0.5,alie:0.5", "twice"),
                     ("nope:1", "unknown behaviour 'nope'"), ("alie:x", "not a number"),
                     ("alie:0,sign_flip:1", "(0, 1]")]:
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace("]", r"\]")):
      attacks.parse_population(bad)
  # Behaviours among the faulty clients follow the mixture; honest clients are always 0.
  n, S = 40, 300
  rng = np.random.default_rng(7)
  honest = jnp.asarray(rng.random((S, n)) > 0.3)
  keys = training.sample_keys(jax.random.key(0), S)
  codes = np.asarray(jax.vmap(lambda k, h: training.assign_behaviours(k, h, (0.2, 0.5, 0.3)))(
      keys, honest))
  assert (codes[np.asarray(honest)] == 0).all()
  faulty_codes = codes[~np.asarray(honest)]
  assert set(np.unique(faulty_codes)) <= {1, 2, 3}
  for k, p in zip((1, 2, 3), (0.2, 0.5, 0.3)):
    assert _binomial_ok((faulty_codes == k).sum(), faulty_codes.size, p)


def _tiny_sim(attack_spec, aggregator="mean", batch_size=0, f=1, **kw):
  model = models.get("logistic", input_shape=(3,), num_classes=3)
  from fedjax_robust import aggregators
  behaviours = [(attacks.get(name, num_classes=3, options=kw.get(name, {})), p)
                for name, p in attacks.parse_population(attack_spec)]
  presence = any(a.presence is not None for a, _ in behaviours)
  return training.Simulator(
      model=model, aggregator=aggregators.get(aggregator, f=f,
                                              **({"presence": True} if presence else {})),
      attack=behaviours[0][0] if len(behaviours) == 1 else attacks.Attack(attack_spec),
      population=tuple(behaviours) if len(behaviours) > 1 else (),
      local=training.LocalTraining(batch_size=batch_size, lr=0.3, momentum=0.0),
      server_optimizer=optax.sgd(1.0), num_clients=5)


def _tiny_data(seed=0, n=5, m=12):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, m, 3)).astype(np.float32)
  y = rng.integers(0, 3, (n, m)).astype(np.int32)
  return ClientData(jnp.asarray(x), jnp.asarray(y), jnp.full((n,), m, jnp.int32))


def test_biased_client_trains_on_its_kept_classes_only():
  """Full-batch local step of a biased client (other_weight 0) = a clean client's step on the
  examples of its kept classes only."""
  data = _tiny_data(1)
  sim = _tiny_sim("biased_data", biased_data={"classes": 1})
  clean = _tiny_sim("none")
  params = sim.init(jax.random.key(0)).params
  x, y = np.asarray(data.x[0]), np.asarray(data.y[0])
  top = sorted(range(3), key=lambda c: (-np.sum(y == c), c))[0]
  keep = y == top
  xs = np.zeros_like(x)
  ys = np.zeros_like(y)
  xs[:keep.sum()], ys[:keep.sum()] = x[keep], y[keep]
  zeros = jnp.zeros_like(params)
  biased, _ = sim.local_update(params, zeros, data.x[0], data.y[0], 12, jax.random.key(1), True)
  reference, _ = clean.local_update(params, zeros, jnp.asarray(xs), jnp.asarray(ys),
                                    int(keep.sum()), jax.random.key(1), False)
  np.testing.assert_allclose(biased, reference, rtol=1e-5, atol=1e-7)
  honest, _ = sim.local_update(params, zeros, data.x[0], data.y[0], 12, jax.random.key(1), False)
  unbiased, _ = clean.local_update(params, zeros, data.x[0], data.y[0], 12, jax.random.key(1),
                                   False)
  np.testing.assert_array_equal(honest, unbiased)


def test_dropped_clients_never_enter_the_aggregate():
  """Faulty clients that always drop out (rate 1): the round equals the honest-only reference
  (the mean of the honest clients' updates), even when they would send NaN."""
  data = _tiny_data(2)
  honest = jnp.asarray([True, False, True, True, False])
  key = jax.random.key(4)
  for spec in ["dropout", "dropout:0.5,crash_stop:0.5"]:
    sim = _tiny_sim(spec, dropout={"rate": 1.0}, crash_stop={"start_round": 0})
    reference = training.Simulator(
        model=sim.model, aggregator=sim.aggregator, attack=attacks.get("none", num_classes=3),
        local=sim.local, server_optimizer=optax.sgd(1.0), num_clients=5, honest_only=True)
    state = sim.init(jax.random.key(0))
    ref_state = reference.init(jax.random.key(0))
    for _ in range(3):
      state, aux = sim.round(state, honest, key, data)
      ref_state, _ = reference.round(ref_state, honest, key, data)
      assert float(aux["present_share"]) == pytest.approx(3 / 5)
    np.testing.assert_allclose(state.params, ref_state.params, rtol=1e-5, atol=1e-7)


def test_too_few_present_skips_the_round():
  data = _tiny_data(3)
  sim = _tiny_sim("crash_stop", aggregator="trimmed_mean", f=2,
                  crash_stop={"start_round": 1})
  honest = jnp.asarray([True, False, True, True, False])   # 3 present after the crash: 3 ≤ 2f
  state = sim.init(jax.random.key(0))
  state, aux = sim.round(state, honest, jax.random.key(1), data)
  assert float(aux["skipped_round"]) == 0.0
  before = state.params
  state, aux = sim.round(state, honest, jax.random.key(1), data)
  assert float(aux["skipped_round"]) == 1.0
  np.testing.assert_array_equal(state.params, before)


@pytest.mark.slow
def test_mixture_runs_each_behaviour_on_its_own_clients():
  """In a mixture 'stale:0.5,nan:0.5' the NaN clients send NaN rows and the stale ones their
  old update: the coordinate median (f = 2) stays finite, and the per-behaviour metrics and
  composition agree with `behaviour_codes`."""
  data = _tiny_data(4)
  sim = _tiny_sim("stale:0.5,nan:0.5", aggregator="coordinate_median", f=2)
  masks = jnp.asarray([[True, False, True, False, True]] * 8)
  keys = training.sample_keys(jax.random.key(9), 8)
  codes = np.asarray(sim.behaviour_codes(masks, keys))
  assert ((codes == 0) == np.asarray(masks)).all()
  assert set(np.unique(codes[:, [1, 3]])) <= {1, 2}
  state = sim.init(jax.random.key(0))
  run = jax.vmap(lambda h, k: sim.run_rounds(state, h, k, data, 4)[0].params)
  params = run(masks, keys)
  assert np.isfinite(np.asarray(params)).all()
  metrics = jax.vmap(sim.evaluate, in_axes=(0, 0, None, None, None))(
      params, jnp.asarray(codes), data, data.x[0], data.y[0])
  for k, name in enumerate(["stale", "nan"]):
    values = np.asarray(metrics[f"behaviour_{name}_accuracy"])
    has = (codes == k + 1).any(axis=1)
    assert np.isnan(values[~has]).all() and np.isfinite(values[has]).all()


def _token_batch(m=64, window=12, vocab=20, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.integers(1, vocab, (m, window)), jnp.float32)
  y = jnp.asarray(rng.integers(1, vocab, m), jnp.int32)
  return x, y


def test_random_text_replaces_windows_and_labels_with_vocabulary_characters():
  x, y = _token_batch()
  idx = jnp.arange(64)
  fault = attacks.get("random_text", num_classes=20, options={"rate": 1.0})
  cx, cy = fault.corrupt_data(jax.random.key(3), x, y, idx)
  cx, cy = np.asarray(cx), np.asarray(cy)
  assert cx.min() >= 1 and cx.max() <= 19 and cy.min() >= 1 and cy.max() <= 19
  assert np.all(cx == np.round(cx))
  assert (cx != np.asarray(x)).mean() > 0.9  # 1/19 of the entries agree by chance
  # Every character is (close to) uniform over the 19: a chi-square test on 64·12 draws.
  counts = np.bincount(cx.astype(int).ravel(), minlength=20)[1:]
  assert stats.chisquare(counts).pvalue > 1e-3
  # Fixed per example: the same example index gets the same text in another minibatch order.
  perm = np.random.default_rng(1).permutation(64)
  px, py = fault.corrupt_data(jax.random.key(3), x[perm], y[perm], idx[perm])
  np.testing.assert_array_equal(np.asarray(px), cx[perm])
  # rate 0 leaves the text alone; rate 0.5 corrupts about half the examples.
  none = attacks.get("random_text", num_classes=20, options={"rate": 0.0})
  nx, ny = none.corrupt_data(jax.random.key(3), x, y, idx)
  np.testing.assert_array_equal(np.asarray(nx), np.asarray(x))
  half = attacks.get("random_text", num_classes=20, options={"rate": 0.5})
  hx, _ = half.corrupt_data(jax.random.key(3), *_token_batch(m=2000), jnp.arange(2000))
  changed = (np.asarray(hx) != np.asarray(_token_batch(m=2000)[0])).any(1).mean()
  assert abs(changed - 0.5) < 0.05


def test_shuffled_text_keeps_each_examples_characters_and_loses_their_order():
  x, y = _token_batch()
  fault = attacks.get("shuffled_text", num_classes=20, options={"rate": 1.0})
  cx, cy = fault.corrupt_data(jax.random.key(0), x, y, jnp.arange(64))
  before = np.concatenate([np.asarray(x), np.asarray(y)[:, None]], 1)
  after = np.concatenate([np.asarray(cx), np.asarray(cy)[:, None]], 1)
  np.testing.assert_array_equal(np.sort(before, 1), np.sort(after, 1))
  assert (before != after).any(1).mean() > 0.9
  with pytest.raises(ConfigError, match="rate"):
    attacks.get("shuffled_text", num_classes=20, options={"rate": 1.5})


def test_foreign_text_replaces_a_roles_windows_by_windows_of_another_play():
  from fedjax_robust.data import shakespeare as sh  # pylint: disable=g-import-not-at-top
  x, y = _token_batch(m=32, window=24, vocab=69)
  fault = attacks.get("foreign_text", num_classes=69, options={"play": "hamlet", "rate": 1.0})
  cx, cy = fault.corrupt_data(jax.random.key(0), x, y, jnp.arange(32))
  text = " ".join(t for p in sh.plays() if p.slug == "hamlet" for _, t in p.speeches)
  for row, label in zip(np.asarray(cx).astype(int), np.asarray(cy)):
    # Each window and its next character are 25 consecutive characters of Hamlet.
    assert sh.decode(list(row) + [int(label)]) in text
  assert len({sh.decode(list(r)) for r in np.asarray(cx).astype(int)}) > 28  # drawn, not one
  none = attacks.get("foreign_text", num_classes=69, options={"play": "hamlet", "rate": 0.0})
  np.testing.assert_array_equal(np.asarray(none.corrupt_data(jax.random.key(0), x, y,
                                                             jnp.arange(32))[0]), np.asarray(x))
  with pytest.raises(ConfigError, match="foreign_text.play='hamlett'.*Did you mean 'hamlet'"):
    attacks.get("foreign_text", num_classes=69, options={"play": "hamlett"})
