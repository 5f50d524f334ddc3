"""Backdoor triggers (square, BadNets pattern, blended), DBA, the edge-case backdoor and
Neurotoxin, each against a float64 NumPy transcription written here."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_robust import attacks
from fedjax_robust.attacks import backdoors
from fedjax_robust.attacks import data_poisoning
from fedjax_robust.errors import ConfigError


def images(rng, m=6, shape=(8, 8, 1)):
  return rng.random((m, *shape)).astype(np.float32)


# ------------------------------------------------------------------------------- triggers
def _square_before(key, x, y, target_label=0, fraction=0.5, patch_size=2, value=1.0):
  """`backdoor` as it was before the trigger option (commit dd2eb9c), transcribed."""
  poisoned = jax.random.bernoulli(key, fraction, y.shape)
  shape = poisoned.shape + (1,) * (x.ndim - poisoned.ndim)
  h, w = x.shape[-3], x.shape[-2]
  rows = (jnp.arange(h) >= h - patch_size)[:, None, None]
  cols = (jnp.arange(w) >= w - patch_size)[None, :, None]
  stamped = jnp.where(rows & cols, jnp.asarray(value, x.dtype), x)
  return jnp.where(poisoned.reshape(shape), stamped, x), jnp.where(poisoned, target_label, y)


@pytest.mark.parametrize("shape", [(8, 8, 1), (32, 32, 3)])
def test_default_square_trigger_is_bit_identical_to_the_backdoor_before(rng, shape):
  x = images(rng, 20, shape)
  y = rng.integers(0, 10, 20)
  key = jax.random.key(3)
  want = _square_before(key, x, y, target_label=4, fraction=0.4, patch_size=3, value=0.7)
  for got in (attacks.backdoor(key, x, y, target_label=4, fraction=0.4, patch_size=3, value=0.7),
              attacks.backdoor(key, x, y, target_label=4, fraction=0.4, patch_size=3, value=0.7,
                               trigger="square")):
    for g, w in zip(got, want):
      np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
  for name in ("backdoor", "model_replacement", "neurotoxin"):
    attack = attacks.get(name, num_classes=10, options={"target_label": 4, "fraction": 0.4,
                                                        "patch_size": 3, "value": 0.7})
    for g, w in zip(attack.poison_data(key, x, y), want):
      np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
    np.testing.assert_array_equal(attack.trigger(x), attacks.stamp_trigger(x, patch_size=3,
                                                                           value=0.7))


def _pattern_np(x, patch_size, value):
  out = x.astype(np.float64).copy()
  h, w = x.shape[-3], x.shape[-2]
  for i in range(h - patch_size, h):
    for j in range(w - patch_size, w):
      r, c = i - (h - patch_size), j - (w - patch_size)
      out[..., i, j, :] = value if (r + c) % 2 == 0 else 0.0
  return out


@pytest.mark.parametrize("shape,patch_size", [((8, 8, 1), 1), ((8, 8, 1), 2), ((8, 8, 1), 3),
                                              ((32, 32, 3), 4)])
def test_pattern_trigger_is_a_checkerboard_in_the_corner(rng, shape, patch_size):
  x = images(rng, 4, shape)
  got = np.asarray(data_poisoning.apply_trigger(x, trigger="pattern", patch_size=patch_size,
                                                value=0.9))
  np.testing.assert_allclose(got, _pattern_np(x, patch_size, 0.9), rtol=0, atol=1e-7)
  # The corner reads the same whatever the image held; outside it nothing moves.
  other = np.asarray(data_poisoning.stamp_pattern(images(rng, 4, shape), patch_size=patch_size,
                                                  value=0.9))
  h, w = shape[:2]
  np.testing.assert_array_equal(got[:, h - patch_size:, w - patch_size:],
                                other[:, h - patch_size:, w - patch_size:])
  np.testing.assert_array_equal(got[:, :h - patch_size], x[:, :h - patch_size])
  if patch_size == 1:  # one bright pixel: the square's
    np.testing.assert_array_equal(got, attacks.stamp_trigger(x, patch_size=1, value=0.9))


@pytest.mark.parametrize("alpha", [0.2, 0.55, 1.0])
def test_blended_trigger_formula(rng, alpha):
  shape = (8, 8, 1)
  x = images(rng, 5, shape)
  pattern = np.random.default_rng(data_poisoning.BLEND_SEED).random(shape)   # in [0, 1)
  want = (1 - alpha) * x.astype(np.float64) + alpha * pattern
  got = np.asarray(data_poisoning.apply_trigger(x, trigger="blended", blend_alpha=alpha))
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  assert 0 <= pattern.min() and pattern.max() < 1
  # A fixed pattern: the same for any batch, under jit, and `value` scales it.
  np.testing.assert_allclose(
      np.asarray(jax.jit(lambda v: data_poisoning.blend_trigger(v, alpha=alpha))(x[:2])),
      want[:2], rtol=1e-6, atol=1e-7)
  scaled = np.asarray(data_poisoning.blend_trigger(x, alpha=alpha, value=0.5))
  np.testing.assert_allclose(scaled, (1 - alpha) * x + alpha * 0.5 * pattern, rtol=1e-6,
                             atol=1e-7)
  cifar = np.random.default_rng(data_poisoning.BLEND_SEED).random((32, 32, 3))
  np.testing.assert_allclose(
      np.asarray(data_poisoning.blend_trigger(np.zeros((1, 32, 32, 3), np.float32), alpha=1.0)),
      cifar[None], rtol=1e-6)


@pytest.mark.parametrize("trigger", ["pattern", "blended"])
def test_backdoor_with_another_trigger_poisons_the_same_examples(rng, trigger):
  x = images(rng, 30)
  y = rng.integers(0, 10, 30)
  key = jax.random.key(5)
  px, py = attacks.backdoor(key, x, y, target_label=2, fraction=0.5, trigger=trigger,
                            blend_alpha=0.3)
  _, sq_y = attacks.backdoor(key, x, y, target_label=2, fraction=0.5)
  np.testing.assert_array_equal(py, sq_y)         # one Bernoulli draw per example, as before
  poisoned = np.asarray(jax.random.bernoulli(key, 0.5, y.shape))
  stamped = data_poisoning.apply_trigger(x, trigger=trigger, blend_alpha=0.3)
  np.testing.assert_array_equal(np.asarray(px)[poisoned], np.asarray(stamped)[poisoned])
  np.testing.assert_array_equal(np.asarray(px)[~poisoned], x[~poisoned])
  attack = attacks.get("model_replacement", num_classes=10,
                       options={"trigger": trigger, "blend_alpha": 0.3})
  np.testing.assert_array_equal(attack.trigger(x), stamped)


def test_trigger_options_are_refused_outside_their_domains():
  for name in ("backdoor", "model_replacement", "neurotoxin"):
    with pytest.raises(ConfigError, match=rf"{name}\.trigger='star' is outside its domain: one "
                                          r"of 'square', 'pattern', 'blended'"):
      attacks.get(name, num_classes=10, options={"trigger": "star"})
    for bad in (0.0, 1.5, math.nan):
      with pytest.raises(ConfigError, match=rf"{name}\.blend_alpha=.* in \(0, 1\]"):
        attacks.get(name, num_classes=10, options={"blend_alpha": bad})
  with pytest.raises(ValueError, match="trigger='star'"):
    data_poisoning.apply_trigger(jnp.zeros((1, 8, 8, 1)), trigger="star")


# ------------------------------------------------------------------------------------ DBA
def _bands_np(patch_size, parts):
  """Row r of the corner → its band: contiguous bands, the first patch_size mod parts one row
  longer (numpy.array_split's rule, written out)."""
  base, extra = divmod(patch_size, parts)
  sizes = [base + (1 if j < extra else 0) for j in range(parts)]
  return np.repeat(np.arange(parts), sizes)


def test_dba_parts_partition_the_global_trigger_exactly():
  h, w = 8, 8
  for patch_size in range(1, 7):
    corner = np.zeros((h, w), bool)
    corner[h - patch_size:, w - patch_size:] = True
    for parts in range(1, patch_size + 1):
      np.testing.assert_array_equal(backdoors.dba_row_parts(patch_size, parts),
                                    _bands_np(patch_size, parts))
      masks = np.stack([np.asarray(backdoors.dba_part_mask(h, w, patch_size, parts, j))
                        for j in range(parts)])
      assert masks.sum(0).max() == 1                     # disjoint
      np.testing.assert_array_equal(masks.any(0), corner)  # their union is the corner
      assert all(m.any() for m in masks)                 # no empty part
      for j, m in enumerate(masks):                      # part j: whole rows of the corner
        rows = h - patch_size + np.flatnonzero(_bands_np(patch_size, parts) == j)
        want = np.zeros((h, w), bool)
        want[rows, w - patch_size:] = True
        np.testing.assert_array_equal(m, want)


@pytest.mark.parametrize("trigger", ["square", "pattern"])
def test_dba_client_i_stamps_part_i_mod_parts_and_the_evaluation_all(rng, trigger):
  parts, patch_size = 3, 5
  attack = attacks.get("dba", num_classes=10, options={
      "parts": parts, "patch_size": patch_size, "fraction": 1.0, "target_label": 6,
      "trigger": trigger, "value": 0.8})
  assert attack.indexed and attack.target_label == 6 and attack.source_label is None
  x = images(rng, 4)
  y = rng.integers(0, 10, 4)
  glob = (_pattern_np(x, patch_size, 0.8) if trigger == "pattern" else
          np.asarray(attacks.stamp_trigger(x, patch_size=patch_size, value=0.8), np.float64))
  np.testing.assert_allclose(np.asarray(attack.trigger(x)), glob, atol=1e-7)
  bands = _bands_np(patch_size, parts)
  clients = jnp.arange(10, dtype=jnp.int32)
  px, py = jax.jit(jax.vmap(lambda c: attack.poison_data(jax.random.key(0), x, y, c)))(clients)
  np.testing.assert_array_equal(py, np.full((10, 4), 6))
  for i in range(10):
    want = x.astype(np.float64).copy()
    rows = 8 - patch_size + np.flatnonzero(bands == i % parts)
    want[:, rows, 8 - patch_size:] = glob[:, rows, 8 - patch_size:]
    np.testing.assert_allclose(np.asarray(px[i]), want, atol=1e-7)
  # Stamping every part in turn is the global trigger.
  stamped = x
  for j in range(parts):
    stamped = backdoors.stamp_dba_part(stamped, j, parts=parts, trigger=trigger,
                                       patch_size=patch_size, value=0.8)
  np.testing.assert_allclose(np.asarray(stamped), glob, atol=1e-7)


def test_dba_poisons_a_fraction_and_refuses_bad_parts(rng):
  x, y = images(rng, 40), rng.integers(1, 10, 40)
  key = jax.random.key(2)
  px, py = backdoors.dba(key, x, y, jnp.int32(1), fraction=0.3)
  poisoned = np.asarray(jax.random.bernoulli(key, 0.3, y.shape))
  np.testing.assert_array_equal(py, np.where(poisoned, 0, y))
  np.testing.assert_array_equal(np.asarray(px)[~poisoned], x[~poisoned])
  with pytest.raises(ConfigError, match=r"dba\.parts=5 must be <= attack_options\.dba\."
                                        r"patch_size=4"):
    attacks.get("dba", num_classes=10, options={"parts": 5})
  with pytest.raises(ConfigError, match=r"dba\.trigger='blended' is outside its domain"):
    attacks.get("dba", num_classes=10, options={"trigger": "blended"})
  with pytest.raises(ConfigError, match=r"dba\.target_label=10 must lie in \[0, 10\)"):
    attacks.get("dba", num_classes=10, options={"target_label": 10})
  with pytest.raises(ValueError, match="parts=3 must lie in"):
    backdoors.dba_row_parts(2, 3)


# ------------------------------------------------------------------------------ edge case
@pytest.mark.parametrize("style,flip", [("mirror", lambda a: a[..., :, ::-1, :]),
                                        ("upside_down", lambda a: a[..., ::-1, :, :])])
def test_edge_case_transforms_only_the_source_class(rng, style, flip):
  x = images(rng, 40)
  y = rng.integers(0, 10, 40)
  y[:5] = 7
  key = jax.random.key(9)
  px, py = backdoors.edge_case(key, x, y, source_label=7, target_label=1, fraction=0.6,
                               style=style)
  poisoned = np.asarray(jax.random.bernoulli(key, 0.6, y.shape)) & (y == 7)
  assert poisoned.any() and (~poisoned & (y == 7)).any()
  want_x = np.where(poisoned[:, None, None, None], flip(x), x)
  np.testing.assert_array_equal(np.asarray(px), want_x)
  np.testing.assert_array_equal(np.asarray(py), np.where(poisoned, 1, y))
  # An attacker without source-class examples poisons nothing.
  other = np.where(y == 7, 3, y)
  qx, qy = backdoors.edge_case(key, x, other, fraction=1.0, style=style)
  np.testing.assert_array_equal(qx, x)
  np.testing.assert_array_equal(qy, other)
  attack = attacks.get("edge_case", num_classes=10, options={"style": style, "fraction": 0.6})
  assert (attack.source_label, attack.target_label, attack.indexed) == (7, 1, False)
  np.testing.assert_array_equal(attack.trigger(x), flip(x))
  for g, w in zip(attack.poison_data(key, x, y), (px, py)):
    np.testing.assert_array_equal(g, w)


def test_edge_case_labels_are_checked():
  with pytest.raises(ConfigError, match=r"edge_case\.source_label=3 equals attack_options\."
                                        r"edge_case\.target_label=3"):
    attacks.get("edge_case", num_classes=10, options={"source_label": 3, "target_label": 3})
  with pytest.raises(ConfigError, match=r"edge_case\.source_label=4 must lie in \[0, 4\)"):
    attacks.get("edge_case", num_classes=4, options={"source_label": 4, "target_label": 0})
  with pytest.raises(ConfigError, match=r"edge_case\.style='rotate' is outside its domain: "
                                        r"one of 'mirror', 'upside_down'"):
    attacks.get("edge_case", num_classes=10, options={"style": "rotate"})
  with pytest.raises(ConfigError, match="changes class labels"):
    attacks.get("edge_case", num_classes=None)


# ----------------------------------------------------------------------------- Neurotoxin
def _mask_np(benign, top_k_ratio):
  """Keep the ⌊d(1 − k)⌋ coordinates of smallest |benign|, ties to the lower index, a
  non-finite coordinate the largest: a plain-Python ordering by (score, index)."""
  d = len(benign)
  score = [abs(float(b)) if math.isfinite(float(b)) else math.inf for b in benign]
  order = sorted(range(d), key=lambda i: (score[i], i))
  keep = np.zeros(d, bool)
  keep[order[:int(d * (1 - top_k_ratio))]] = True
  return keep


def _neurotoxin_np(updates, byzantine, benign, top_k_ratio, norm_bound):
  u = updates.astype(np.float64)
  keep = _mask_np(benign, top_k_ratio)
  out = u.copy()
  for i in np.flatnonzero(byzantine):
    row = np.where(keep, u[i], 0.0)
    if not math.isnan(norm_bound):
      row = row / max(1.0, np.linalg.norm(row) / norm_bound)
    out[i] = row
  return out


def _honest_mean_np(updates, byzantine):
  return updates[~byzantine].astype(np.float64).mean(0)


@pytest.mark.parametrize("ratio", [0.0, 0.01, 0.1, 0.37, 0.5, 0.9])
def test_neurotoxin_mask_is_numpys_top_k_with_ties_to_the_lower_index(rng, ratio):
  d = 50
  benign = rng.normal(size=d).astype(np.float32)
  np.testing.assert_array_equal(backdoors.neurotoxin_mask(jnp.asarray(benign), ratio),
                                _mask_np(benign, ratio))
  assert backdoors.neurotoxin_mask(jnp.asarray(benign), ratio).sum() == int(d * (1 - ratio))
  ties = np.array([0.5, -0.5, 0.1, 0.5, -0.1, 2.0, 0.5, 0.0], np.float32)
  np.testing.assert_array_equal(backdoors.neurotoxin_mask(jnp.asarray(ties), 0.5),
                                [True, False, True, False, True, False, False, True])
  np.testing.assert_array_equal(backdoors.neurotoxin_mask(jnp.asarray(ties), 0.5),
                                _mask_np(ties, 0.5))


@pytest.mark.parametrize("norm_bound", [math.nan, 0.5])
@pytest.mark.parametrize("estimate", ["previous", "current"])
def test_neurotoxin_rows_over_rounds_match_the_reference(rng, norm_bound, estimate):
  n, d, ratio = 7, 40, 0.25
  attack = attacks.get("neurotoxin", num_classes=10, options={
      "top_k_ratio": ratio, "norm_bound": norm_bound, "estimate": estimate})
  poison = jax.jit(attack.poison)
  state = attack.init(d, n)
  byz = np.array([True, False, False, True, False, False, False])
  previous = None
  for _ in range(3):
    u = rng.normal(size=(n, d)).astype(np.float32)
    out, state = poison(jax.random.key(0), jnp.asarray(u), jnp.asarray(byz), state, None)
    current = _honest_mean_np(u, byz)
    benign = current if (estimate == "current" or previous is None) else previous
    want = _neurotoxin_np(u, byz, benign, ratio, norm_bound)
    np.testing.assert_array_equal(np.asarray(out)[~byz], u[~byz])   # honest rows untouched
    np.testing.assert_allclose(np.asarray(out), want, rtol=1e-5, atol=1e-6)
    zeros = ~_mask_np(benign, ratio)
    assert np.all(np.asarray(out)[byz][:, zeros] == 0)
    if not math.isnan(norm_bound):
      assert np.all(np.linalg.norm(np.asarray(out, np.float64)[byz], axis=1)
                    <= norm_bound * (1 + 1e-6))
    np.testing.assert_allclose(np.asarray(state.previous), current, rtol=1e-5, atol=1e-6)
    previous = current
  assert int(state.rounds) == 3


def test_neurotoxin_previous_estimate_is_the_previous_rounds_honest_mean():
  n, d = 4, 6
  byz = jnp.asarray([False, False, False, True])
  first = np.zeros((n, d), np.float32)
  first[:3, 0] = 9.0                      # round 1: the honest clients move coordinate 0 most
  second = np.zeros((n, d), np.float32)
  second[:3, 5] = 9.0                     # round 2: coordinate 5
  first[3] = second[3] = np.arange(1, d + 1)   # the attacker's own update
  # top_k_ratio 0.1 of d = 6: ⌊6 · 0.9⌋ = 5 coordinates kept, one dropped.
  attack = attacks.get("neurotoxin", num_classes=10, options={"top_k_ratio": 0.1})
  state = attack.init(d, n)
  out, state = attack.poison(None, jnp.asarray(first), byz, state, None)
  np.testing.assert_array_equal(out[3], [0, 2, 3, 4, 5, 6])   # round 1: the current mean
  out, state = attack.poison(None, jnp.asarray(second), byz, state, None)
  np.testing.assert_array_equal(out[3], [0, 2, 3, 4, 5, 6])   # round 2: round 1's mean
  current = attacks.get("neurotoxin", num_classes=10,
                        options={"top_k_ratio": 0.1, "estimate": "current"})
  out, _ = current.poison(None, jnp.asarray(second), byz, state, None)
  np.testing.assert_array_equal(out[3], [1, 2, 3, 4, 5, 0])


def test_neurotoxin_with_non_finite_rows_and_no_byzantine_client(rng):
  n, d = 6, 12
  u = rng.normal(size=(n, d)).astype(np.float32)
  byz = np.array([False, True, False, False, True, False])
  u[0, 2], u[2, 5], u[3, 7] = np.nan, np.inf, 1e30   # honest rows carrying faults
  u[1, 9] = np.nan                                   # a Byzantine row's own NaN
  attack = attacks.get("neurotoxin", num_classes=10, options={"top_k_ratio": 0.25,
                                                              "norm_bound": 2.0})
  out, state = jax.jit(attack.poison)(None, jnp.asarray(u), jnp.asarray(byz),
                                      attack.init(d, n), None)
  out = np.asarray(out)
  np.testing.assert_array_equal(out[~byz], u[~byz])            # NaN stays where it was
  benign = u[~byz].astype(np.float64).mean(0)                  # NaN, inf, 1e30/4 there
  keep = _mask_np(benign, 0.25)
  assert not keep[[2, 5, 7]].any()                             # the faulty coordinates: dropped
  assert keep[9]  # the Byzantine row's NaN does not enter the honest mean (a `where` sum)
  np.testing.assert_allclose(out[4], _neurotoxin_np(u, byz, benign, 0.25, 2.0)[4], rtol=1e-5)
  assert np.isfinite(out[4]).all()
  assert np.isfinite(np.asarray(state.previous)[[0, 1, 3, 4, 6, 8, 9, 10, 11]]).all()
  none = np.zeros(n, bool)
  same, _ = attack.poison(None, jnp.asarray(u), jnp.asarray(none), attack.init(d, n), None)
  np.testing.assert_array_equal(same, u)                       # b = 0: nothing changes
  # Vmapped over draws of the Byzantine set, as the simulator runs it.
  masks = jnp.asarray(rng.random((5, n)) < 0.4)
  outs, _ = jax.vmap(lambda m: attack.poison(None, jnp.asarray(u), m, attack.init(d, n),
                                             None))(masks)
  for m, o in zip(np.asarray(masks), np.asarray(outs)):
    np.testing.assert_array_equal(o[~m], u[~m])


def test_neurotoxin_is_the_backdoor_plus_the_mask_and_refuses_bad_options(rng):
  x, y = images(rng, 10), rng.integers(0, 10, 10)
  key = jax.random.key(4)
  attack = attacks.get("neurotoxin", num_classes=10, options={"trigger": "pattern",
                                                              "target_label": 3})
  for g, w in zip(attack.poison_data(key, x, y),
                  attacks.backdoor(key, x, y, target_label=3, trigger="pattern")):
    np.testing.assert_array_equal(g, w)
  assert attack.target_label == 3
  for key_, bad, allowed in [("top_k_ratio", 1.0, r"in \[0, 1\)"),
                             ("top_k_ratio", -0.1, r"in \[0, 1\)"),
                             ("norm_bound", 0.0, r"> 0, or nan \(no projection\)"),
                             ("estimate", "next", r"one of 'previous', 'current'")]:
    with pytest.raises(ConfigError, match=rf"neurotoxin\.{key_}=.* is outside its domain: .*"
                                          + allowed):
      attacks.get("neurotoxin", num_classes=10, options={key_: bad})
  with pytest.raises(ConfigError, match=r"neurotoxin\.target_label=10 must lie"):
    attacks.get("neurotoxin", num_classes=10, options={"target_label": 10})


def test_the_new_attacks_are_registered_as_image_data_poisoning():
  new = {"dba", "edge_case", "neurotoxin"}
  assert new <= set(attacks.data_poisoning_names())
  assert new <= set(attacks.IMAGE_ONLY)
  assert not new & set(attacks.model_poisoning_names())
  for name in new:
    assert set(attacks.option_domains(name)) == set(attacks.options(name)), name
