"""Compressed updates (issue 18): the compressors against their definitions (exact k largest,
unbiasedness by Monte Carlo CIs), bits by formula, error feedback's bookkeeping, the wire-format
projection, the majority vote, aggregation in the shared k-space against d-space, and the switch
off leaving today's numbers unchanged."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from fedjax_robust import aggregators
from fedjax_robust import build
from fedjax_robust import compression as C
from fedjax_robust import config as config_lib
from fedjax_robust import errors
from fedjax_robust import experiment
from fedjax_robust import privacy
from fedjax_robust import results
from fedjax_robust import sweep


def test_top_k_keeps_exactly_the_k_largest_magnitudes():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(7, 50)).astype(np.float32)
  for k in (1, 5, 50):
    out = np.asarray(C.top_k(jnp.asarray(x), k))
    for row, got in zip(x, out):
      keep = np.argsort(-np.abs(row), kind="stable")[:k]
      want = np.zeros_like(row)
      want[keep] = row[keep]
      np.testing.assert_array_equal(got, want)
      assert np.count_nonzero(got) == k


def _unbiased_within_ci(samples, x, variance):
  """Every coordinate's Monte Carlo mean within 4.5 standard errors of x (Bonferroni over the
  coordinates at ≈ 1e-4 overall), and the standard errors are not vacuous."""
  n = samples.shape[0]
  se = np.sqrt(variance / n)
  z = np.abs(samples.mean(0) - x) / np.where(se > 0, se, 1.0)
  assert np.all(z[se > 0] < 4.5), z.max()
  np.testing.assert_array_equal(samples.mean(0)[se == 0], x[se == 0])


@pytest.mark.parametrize("kind", ["random_k", "shared_random_k"])
def test_random_k_is_unbiased_with_the_d_over_k_variance(kind):
  d, k, draws = 24, 6, 20000
  x = np.linspace(-2, 3, d).astype(np.float32)
  spec = C.Compression(kind=kind, k=k)

  def one(key):
    mask, _ = C.coordinates(key, spec, 1, d)
    return C.compress(key, jnp.asarray(x)[None], spec, mask)[0]

  samples = np.asarray(jax.vmap(one)(jax.random.split(jax.random.key(0), draws)), np.float64)
  assert np.all(np.count_nonzero(samples, axis=1) <= k)
  # C(x)_j = (d/k)·x_j with probability k/d: variance x_j²(d/k − 1).
  _unbiased_within_ci(samples, x, x.astype(np.float64) ** 2 * (d / k - 1))
  # and the empirical variance matches it (a wrong scaling would be unbiased nowhere, but check)
  np.testing.assert_allclose(samples.var(0), x ** 2 * (d / k - 1), rtol=0.1, atol=1e-6)


def test_shared_random_k_gives_every_client_the_same_coordinates():
  spec = C.Compression(kind="shared_random_k", k=5)
  mask, idx = C.coordinates(jax.random.key(3), spec, 4, 30)
  x = np.random.default_rng(1).normal(size=(4, 30)).astype(np.float32) + 10.0
  sent = np.asarray(C.compress(jax.random.key(0), jnp.asarray(x), spec, mask))
  support = sent != 0
  assert np.all(support == support[0]) and support[0].sum() == 5
  np.testing.assert_array_equal(np.flatnonzero(support[0]), np.asarray(idx))
  np.testing.assert_allclose(sent[:, idx], x[:, idx] * 30 / 5, rtol=1e-6)
  masks, _ = C.coordinates(jax.random.key(3), C.Compression(kind="random_k", k=5), 4, 30)
  assert not np.all(np.asarray(masks) == np.asarray(masks)[0])  # independent per client


def test_qsgd_is_unbiased_and_takes_its_levels():
  d, s, draws = 16, 3, 20000
  x = np.random.default_rng(2).normal(size=d).astype(np.float32)
  samples = np.asarray(jax.vmap(lambda k: C.qsgd(k, jnp.asarray(x)[None], s)[0])(
      jax.random.split(jax.random.key(1), draws)), np.float64)
  norm = np.linalg.norm(x.astype(np.float64))
  levels = samples * s / norm * np.sign(x)
  np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)  # integer levels 0..s
  assert levels.min() > -1e-4 and levels.max() < s + 1e-4
  p = s * np.abs(x) / norm - np.floor(s * np.abs(x) / norm)
  _unbiased_within_ci(samples, x, (norm / s) ** 2 * p * (1 - p))


def test_scaled_sign_and_the_majority_vote_against_numpy():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(9, 40)).astype(np.float32)
  sent = np.asarray(C.scaled_sign(jnp.asarray(x)))
  np.testing.assert_allclose(sent, np.sign(x) * np.abs(x).mean(1, keepdims=True), rtol=1e-6)
  vote = aggregators.get("majority_vote", f=2)
  want = np.sign(np.sign(sent).sum(0)) * np.median(np.abs(sent).mean(1))
  np.testing.assert_allclose(np.asarray(vote(sent)), want, rtol=1e-6)
  # Byzantine rows: NaN and ±inf rows take no part; two huge rows cannot set the step length
  # nor flip a coordinate the 7 others agree on by 5 or more.
  bad = sent.copy()
  bad[0] = np.nan
  bad[1] = -np.inf
  clean = sent[2:]
  out = np.asarray(vote(bad))
  np.testing.assert_allclose(out, np.sign(np.sign(clean).sum(0)) * np.median(
      np.abs(clean).mean(1)), rtol=1e-6)
  huge = sent.copy()
  huge[:2] = -1e30 * np.sign(sent[2:].sum(0))
  out = np.asarray(vote(huge))
  assert np.all(np.isfinite(out)) and np.abs(out).max() <= np.abs(sent).max()
  agree = np.abs(np.sign(sent[2:]).sum(0)) >= 5
  np.testing.assert_array_equal(np.sign(out)[agree], np.sign(np.sign(sent[2:]).sum(0))[agree])


def _sign_message(row):
  """An independent sign encoder: the bits signSGD puts on the wire for one row, d sign bits
  (1 for x_j >= 0, so an exact 0 is a 1) and the float32 scale ‖x‖₁/d, as a list of 0/1."""
  scale = np.float32(np.abs(row.astype(np.float64)).mean())
  return [int(v >= 0) for v in row] + [int(b) for b in np.unpackbits(
      np.frombuffer(scale.tobytes(), np.uint8))]


def _sign_decode(bits, d):
  scale = np.frombuffer(np.packbits(np.array(bits[d:], np.uint8)).tobytes(), np.float32)[0]
  return np.where(np.array(bits[:d]) == 1, scale, -scale).astype(np.float32)


def test_sign_compression_sends_what_its_bit_count_says():
  """Issue 36: zeros (weights of pixels blank in every image) are coordinates too. The decoded
  row must be what d sign bits and one 32-bit scale carry, and their count the bit count."""
  rng = np.random.default_rng(11)
  d = 60
  x = rng.normal(size=(5, d)).astype(np.float32)
  x[:, :23] = 0.0                      # 38% exact zeros, as in a digits round
  x[1, 30] = -0.0
  x[4] = 0.0                           # a client that did not move
  sent = np.asarray(C.scaled_sign(jnp.asarray(x)))
  for row, got in zip(x, sent):
    bits = _sign_message(row)
    assert len(bits) == C.bits_per_client("sign", d) == C.Compression(kind="sign").bits(d)
    np.testing.assert_allclose(got, _sign_decode(bits, d), rtol=1e-6, atol=0)  # scale: float64
    assert len(np.unique(np.abs(got))) == 1  # ±one scale: one bit per coordinate suffices
  # The server's decoding of any row keeps what the wire holds: an honest row is unchanged.
  np.testing.assert_array_equal(
      np.asarray(C.project(jnp.asarray(sent), C.Compression(kind="sign"), None)), sent)


def test_majority_vote_reads_a_zero_as_plus_and_breaks_a_tie_to_plus():
  x = np.array([[0.0, 1.0, -2.0, 0.0],
                [0.0, 1.0, -2.0, 3.0],
                [-1.0, -1.0, 2.0, -3.0],
                [-1.0, -1.0, -2.0, -3.0],
                [np.nan, -1.0, -1.0, -1.0]], np.float32)  # non-finite: takes no part
  out = np.asarray(aggregators.get("majority_vote", f=1)(jnp.asarray(x)))
  finite = x[:4]
  bits = np.where(finite >= 0, 1.0, -1.0)          # what each client sends
  votes = bits.sum(0)                               # [0, 0, -2, 0]
  scale = np.median(np.abs(finite).mean(1))
  np.testing.assert_allclose(out, np.where(votes >= 0, 1.0, -1.0) * scale, rtol=1e-6)
  np.testing.assert_allclose(out, [scale, scale, -scale, scale], rtol=1e-6)


def test_bits_per_client_by_formula():
  d = 2410
  assert C.bits_per_client("none", d) == 32 * 2410
  assert C.bits_per_client("top_k", d, k=241) == 241 * (32 + 12)  # ⌈log₂ 2410⌉ = 12
  assert C.bits_per_client("random_k", d, k=241) == 32 * 241 + 32
  assert C.bits_per_client("shared_random_k", d, k=241) == 32 * 241
  assert C.bits_per_client("qsgd", d, levels=4) == 32 + 2410 * (1 + 3)  # ⌈log₂ 5⌉ = 3
  assert C.bits_per_client("sign", d) == 2410 + 32
  assert C.Compression(kind="top_k", ratio=0.1).size(2410) == 241
  assert C.Compression(kind="top_k", ratio=0.1).size(2411) == 242


def test_error_feedback_sends_everything_eventually():
  """Σ_t sent_t + e_T = Σ_t x_t (the residual telescopes), and e_t = x_t + e_{t−1} − C(·)."""
  from fedjax_robust import training  # pylint: disable=g-import-not-at-top
  c = tiny_config()
  c.compression.kind, c.compression.k, c.compression.error_feedback = "top_k", 3, True
  fed = config_lib.make_data(c)
  sim = build.make_simulator(c, "mean", fed)
  assert isinstance(sim, training.Simulator)
  rng = np.random.default_rng(4)
  n, d = c.num_clients, sim.num_shared
  residual = jnp.zeros((n, d))
  total_in, total_sent = np.zeros((n, d)), np.zeros((n, d))
  for t in range(5):
    x = rng.normal(size=(n, d)).astype(np.float32)
    sent, new = sim._privatize_and_compress(jax.random.key(t), jnp.asarray(x), (None, None),
                                            residual)
    np.testing.assert_allclose(np.asarray(new), x + np.asarray(residual) - np.asarray(sent),
                               atol=1e-6)
    assert np.all(np.count_nonzero(np.asarray(sent), axis=1) == 3)
    total_in += x
    total_sent += np.asarray(sent)
    residual = new
  np.testing.assert_allclose(total_sent + np.asarray(residual), total_in, atol=1e-5)


def test_privacy_with_shared_coordinates_clips_and_noises_only_them():
  x = np.zeros((50, 400), np.float32)
  x[:, :10] = 3.0  # norm of the full row √90; of the selected part below
  mask = np.zeros(400, bool)
  mask[5:205] = True
  out = np.asarray(privacy.clip_and_noise(jax.random.key(0), jnp.asarray(x), clip=1.0,
                                          noise_multiplier=0.0, coordinates=jnp.asarray(mask)))
  assert np.all(out[:, ~mask] == 0)
  np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(out[:, 5:10], 3.0 / math.sqrt(45), rtol=1e-6)
  noisy = np.asarray(privacy.clip_and_noise(jax.random.key(0), jnp.zeros((50, 400)), clip=2.0,
                                            noise_multiplier=0.5, coordinates=jnp.asarray(mask)))
  assert np.all(noisy[:, ~mask] == 0)
  assert abs(noisy[:, mask].std() - 1.0) < 0.02  # σC = 1 on the 10,000 selected coordinates


@pytest.mark.parametrize("spec", ["trimmed_mean", "geometric_median", "krum",
                                  "nnm+trimmed_mean", "coordinate_median"])
def test_k_space_aggregation_equals_d_space_on_the_shared_coordinates(spec):
  """Rows that are zero off the shared coordinates: the rule in k dimensions, scattered back,
  equals the rule in d dimensions (zero off them, equal on them up to float rounding)."""
  rng = np.random.default_rng(5)
  n, d, k = 11, 300, 30
  _, idx = C.coordinates(jax.random.key(7), C.Compression(kind="shared_random_k", k=k), n, d)
  idx = np.asarray(idx)
  x = np.zeros((n, d), np.float32)
  x[:, idx] = rng.normal(size=(n, k))
  x[:2, idx] += 20.0  # two outliers
  agg = aggregators.get(spec, f=2)
  full = np.asarray(agg(jnp.asarray(x)))
  small = np.asarray(agg(jnp.asarray(x[:, idx])))
  off = np.setdiff1d(np.arange(d), idx)
  np.testing.assert_array_equal(full[off], 0.0)
  np.testing.assert_allclose(full[idx], small, rtol=2e-5, atol=1e-6)


def test_a_job_in_k_space_gives_the_d_space_numbers():
  """A whole job with shared random-k, client-level DP and ALIE: NNM+TM on the [n, k]
  shared coordinates and on the decoded [n, d] rows agree draw by draw (the noise on the k
  coordinates only, the Byzantine rows cut to them in both; NNM's distances see the same
  coordinates in both spaces). The rules alone, the geometric median among them, are checked in
  k space against d space by the test above."""
  out = {}
  for space in ("d", "k"):
    c = tiny_config()
    c.num_samples = 8
    c.aggregator = "nnm+trimmed_mean"
    c.privacy.kind, c.privacy.noise_multiplier = "client", 0.5
    c.compression.kind, c.compression.ratio, c.compression.aggregate_in = (
        "shared_random_k", 0.25, space)
    exp = experiment.run(c, log=lambda *a: None)
    out[space] = {s: np.asarray(r.metrics["honest_loss"]) for s, r in exp.runs.items()}
    summary = results.summarize(exp)
    d = summary["compression"]["d"]
    k = math.ceil(0.25 * d)
    assert summary["compression"]["k"] == k
    assert summary["compression"]["bits_per_round"] == 32 * k * c.num_clients
  for s in out["d"]:
    np.testing.assert_allclose(out["k"][s], out["d"][s], rtol=1e-4)


# A tiny job's final honest losses (8 draws) at f2f464c, before compression existed: with
# privacy and compression off the numbers are unchanged.
_BEFORE = {
    "trimmed_mean": [1.8982369899749756, 1.8773624897003174, 1.8709951639175415,
                     1.8550653457641602, 1.8736575841903687, 1.8752940893173218,
                     1.8714768886566162, 1.8490184545516968],
    "nnm+trimmed_mean": [1.8812377452850342, 1.8743407726287842, 1.8917068243026733,
                         1.8275978565216064, 1.8444563150405884, 1.8503620624542236,
                         1.8502721786499023, 1.8420997858047485],
}


def test_with_privacy_and_compression_off_the_numbers_are_unchanged():
  c = tiny_config()
  c.aggregator = "trimmed_mean,nnm+trimmed_mean"
  c.num_samples = 8
  assert c.privacy.kind == "none" and c.compression.kind == "none"
  exp = experiment.run(c, log=lambda *a: None)
  for spec, want in _BEFORE.items():
    np.testing.assert_allclose(np.asarray(exp.runs[spec].metrics["honest_loss"])[-1], want,
                               rtol=1e-6)
  assert "compression" not in results.summarize(exp)


@pytest.mark.parametrize("key, value, extra, message", [
    ("compression.error_feedback", True, {"compression.kind": "random_k"}, "contractive"),
    ("compression.aggregate_in", "k", {"compression.kind": "top_k"}, "shared_random_k"),
    ("compression.kind", "topk", {}, "compression.kind"),
    ("compression.ratio", 0.0, {"compression.kind": "top_k"}, "compression.ratio"),
])
def test_bad_compression_settings_are_refused_before_any_work(key, value, extra, message):
  c = tiny_config()
  for k, v in {**extra, key: value}.items():
    section, leaf = k.split(".")
    c[section][leaf] = v
  with pytest.raises(errors.ConfigError, match=message):
    config_lib.validate(c)


def test_k_space_refuses_a_rule_with_state_and_k_beyond_d():
  c = tiny_config()
  c.compression.kind, c.compression.aggregate_in = "shared_random_k", "k"
  fed = config_lib.make_data(c)
  with pytest.raises(ValueError, match="keeps a state"):
    build.make_simulator(c, "centered_clipping", fed)
  c.compression.aggregate_in, c.compression.k = "d", 10 ** 7
  with pytest.raises(ValueError, match="exceeds"):
    build.make_simulator(c, "trimmed_mean", fed)


def test_byzantine_rows_are_cut_to_the_wire_format():
  rng = np.random.default_rng(6)
  x = rng.normal(size=(5, 40)).astype(np.float32)
  x[0, :] = np.nan
  shared = C.Compression(kind="shared_random_k", k=8)
  mask, idx = C.coordinates(jax.random.key(1), shared, 5, 40)
  cut = np.asarray(C.project(jnp.asarray(x), shared, mask))
  assert np.all(cut[:, ~np.asarray(mask)] == 0)  # a NaN off the shared coordinates is not read
  np.testing.assert_array_equal(cut[1:, np.asarray(idx)], x[1:, np.asarray(idx)])
  signs = np.asarray(C.project(jnp.asarray(x[1:]), C.Compression(kind="sign"), None))
  np.testing.assert_allclose(signs, np.sign(x[1:]) * np.abs(x[1:]).max(1, keepdims=True))
  honest = np.asarray(C.scaled_sign(jnp.asarray(x[1:])))
  np.testing.assert_array_equal(
      np.asarray(C.project(jnp.asarray(honest), C.Compression(kind="sign"), None)), honest)


def test_dp_sgd_on_the_sent_coordinates_clips_and_noises_only_them():
  g = np.zeros((6, 100), np.float32)
  g[:, :4] = 2.0  # restricted to coordinates 2..51: norm √(2·4) = 2√2, clipped to 1
  coords = np.zeros(100, bool)
  coords[2:52] = True
  included = np.array([True, True, False, True, True, True])
  out = np.asarray(privacy.noisy_clipped_sum(jax.random.key(0), jnp.asarray(g),
                                             jnp.asarray(included), clip=1.0,
                                             noise_multiplier=0.0,
                                             coordinates=jnp.asarray(coords)))
  want = np.zeros(100)
  want[2:4] = 5 * 2.0 / math.sqrt(8)
  np.testing.assert_allclose(out, want, rtol=1e-6)
  noisy = np.asarray(jax.vmap(lambda k: privacy.noisy_clipped_sum(
      k, jnp.zeros((3, 100)), jnp.ones(3, bool), clip=2.0, noise_multiplier=0.5,
      coordinates=jnp.asarray(coords)))(jax.random.split(jax.random.key(1), 400)))
  assert np.all(noisy[:, ~coords] == 0)
  assert abs(noisy[:, coords].std() - 1.0) < 0.02  # σC = 1 on 20,000 values


def test_the_d_sweep_names_the_real_d():
  """configs/sweep_dp_dimension.py: every line at every size is a valid config; `d` is the model's
  parameter count (what a client sends); the fixed-k line sends K_FIXED <= d coordinates (its
  report: tests/test_report_sweeps.py)."""
  from configs import sweep_dp_dimension as dim  # pylint: disable=g-import-not-at-top
  from fedjax_robust import models  # pylint: disable=g-import-not-at-top
  from fedjax_robust import sweep  # pylint: disable=g-import-not-at-top
  c = dim.get_config()
  points = dim.points(c)
  assert len(points) == (len(dim.SYNTHETIC_D) + len(dim.DIGITS_WIDTHS)) * 4 * len(dim.RULES)
  sizes = {}  # (model, width or input dimension) -> parameters
  for p in points:
    pc = sweep.apply_overrides(c.base, p.overrides)
    if p.tags["rule"] == dim.RULES[0]:  # a group's points differ only in the rule (the
      # default job's four rules)
      config_lib.validate(pc)
    if pc.data.name == "digits":
      key = ("mlp", tuple(pc.model_options.mlp.hidden))
      make = lambda: models.get("mlp", input_shape=(8, 8, 1), num_classes=10, hidden=key[1])
    else:
      key = ("linear_regression", pc.data.synthetic_dim)
      make = lambda: models.get("linear_regression", input_shape=(key[1],), num_classes=None)
    if key not in sizes:
      shapes = jax.eval_shape(make().init, jax.random.key(0))
      sizes[key] = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes))
    assert sizes[key] == p.tags["d"], (key, p.tags)
    if p.tags["setting"] == "dp+shared_random_k_fixed":
      assert pc.compression.k == dim.K_FIXED <= p.tags["d"]
