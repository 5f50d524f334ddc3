"""Ties and float rounding: identical Byzantine rows, values tied at a rule's cut, CAF's weight
update, the geometric median's Gram phase. Every reference here is float64 NumPy written from
the definition (see REFERENCE.md), independent of the JAX code."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_robust import aggregators as agg
from test_aggregators import np_nnm
from test_aggregators import np_trimmed_mean
from test_aggregators import np_weiszfeld
from test_selection_rules import np_bulyan
from test_selection_rules import np_caf
from test_selection_rules import np_mda
from test_selection_rules import np_monna
from test_selection_rules import np_multi_krum
from test_selection_rules import np_smea

ATTACKS = ["sign_flip", "alie", "ipm"]


def attacked(seed, n, f, d, attack, shuffle=True):
  """n rows: n − f honest N(1, I), f identical Byzantine rows (model poisoning sends one vector
  to every Byzantine client), placed at random positions; float32."""
  rng = np.random.default_rng(seed)
  honest = rng.normal(size=(n - f, d)) + 1.0
  mu, sigma = honest.mean(0), honest.std(0, ddof=1)
  byzantine = {"sign_flip": -mu, "alie": mu - 2.0 * sigma, "ipm": -0.1 * mu}[attack]
  x = np.concatenate([honest, np.tile(byzantine, (f, 1))])
  if shuffle:
    x = x[rng.permutation(n)]
  return x.astype(np.float32)


# ----------------------------------------------------------------------- MeaMed
def np_meamed_by_columns(x, f):
  """MeaMed one column at a time: the n − f values closest to the median, ties between values
  at equal distance on both sides going to the smaller values (sort, then a stable sort by
  distance)."""
  out = []
  for col in np.asarray(x, np.float64).T:
    s = np.sort(col)
    med = np.median(s)
    out.append(s[np.argsort(np.abs(s - med), kind="stable")[:len(s) - f]].mean())
  return np.array(out)


def test_meamed_issue_reproducer():
  x = jnp.array([[-3.0], [-3.0], [-1.0], [0.0], [1.0], [2.5]])
  # median −0.5; the 4 closest are −1, 0, 1 (0.5, 0.5, 1.5 away) and one −3 (2.5; 2.5 is 3 away)
  np.testing.assert_allclose(agg.meamed(x, f=2), [-0.75], rtol=0, atol=1e-7)
  np.testing.assert_allclose(np_meamed_by_columns(x, 2), [-0.75])


def test_meamed_mirror_ties_go_to_the_smaller_values():
  # −1 and 1 are both 1 away from the median 0: the documented rule keeps −1.
  x = jnp.array([[1.0, 5.0], [-1.0, 3.0], [0.0, 4.0]])
  np.testing.assert_allclose(agg.meamed(x, f=1), [-0.5, 3.5], atol=1e-7)
  np.testing.assert_allclose(np_meamed_by_columns(x, 1), [-0.5, 3.5])


# n = 10..13 (the most f values, each a compile) run under -m slow; n = 2..9 cover every
# branch of the window rule (odd and even n, f below and above n/2).
@pytest.mark.parametrize("n", [pytest.param(n, marks=pytest.mark.slow) if n >= 10 else n
                               for n in range(2, 14)])
def test_meamed_with_many_ties_matches_its_definition(n):
  """Small half-integers: most columns tie at the cut, in every way; every f < n (with f ≥ n/2 the
  n − f closest values need not contain the median), rows in any order."""
  rng = np.random.default_rng(n)
  for f in range(n):
    x = rng.integers(-4, 5, size=(n, 300)).astype(np.float32) * 0.5
    expected = np_meamed_by_columns(x, f)
    np.testing.assert_allclose(agg.meamed(x, f=f), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(jax.jit(lambda u: agg.meamed(u, f=f))(x[::-1]), expected,
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("n,f", [(5, 2), (9, 3), (12, 5)])
def test_meamed_with_ties_and_nonfinite_rows(n, f):
  rng = np.random.default_rng(7)
  x = rng.integers(-3, 4, size=(n, 200)).astype(np.float32)
  x[:f] = np.array([np.nan, np.inf, -np.inf] * f, np.float32)[:f, None]
  # NaN and +inf count as the largest values, −inf as the smallest: far finite stand-ins.
  stand_in = np.where(np.isnan(x) | (x == np.inf), 1e35, np.where(x == -np.inf, -1e35, x))
  np.testing.assert_allclose(agg.meamed(x[rng.permutation(n)], f=f),
                             np_meamed_by_columns(stand_in, f), rtol=0, atol=1e-6)


# ----------------------------------------------------------------------- Bulyan
@pytest.mark.parametrize("seed", range(4))
def test_bulyan_under_alie_matches_numpy(seed):
  """n = 13 with 3 ALIE copies (z = 2, d = 100) against Bulyan declared for f = 2 (n ≥ 4f + 3):
  Krum selects the copies, so MeaMed's last step meets values tied at its cut."""
  x = attacked(seed, 13, 3, 100, "alie", shuffle=False)
  np.testing.assert_allclose(agg.bulyan(x, f=2), np_bulyan(x, 2), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------- tie cases, every rule
WEIGHTED_TM_N, WEIGHTED_TM_F = 10, 2


def np_weighted_trimmed_mean_by_repetition(x, w, f):
  """Integer weights: the trimmed mean of the sample holding row i w_i times, trimming
  (f/n)·Σw values from each end (an integer here)."""
  trim = f * int(w.sum()) // len(x)
  assert trim * len(x) == f * int(w.sum())
  s = np.sort(np.repeat(np.asarray(x, np.float64), w.astype(int), axis=0), axis=0)
  return s[trim:len(s) - trim].mean(0)


TIE_RULES = {
    # name: (n, f, JAX rule, NumPy reference, tolerance)
    "coordinate_median": (11, 3, lambda x, f: agg.coordinate_median(x),
                          lambda x, f: np.median(x.astype(np.float64), 0), 1e-6),
    "coordinate_median_even": (12, 3, lambda x, f: agg.coordinate_median(x),
                               lambda x, f: np.median(x.astype(np.float64), 0), 1e-6),
    "trimmed_mean": (11, 3, lambda x, f: agg.trimmed_mean(x, f=f), np_trimmed_mean, 1e-5),
    "meamed": (11, 3, lambda x, f: agg.meamed(x, f=f), np_meamed_by_columns, 1e-5),
    "krum": (11, 3, lambda x, f: agg.krum(x, f=f), lambda x, f: np_multi_krum(x, f, 1), 1e-6),
    "multi_krum": (11, 3, lambda x, f: agg.multi_krum(x, f=f),
                   lambda x, f: np_multi_krum(x, f, len(x) - f), 1e-5),
    "multi_krum_m3": (11, 3, lambda x, f: agg.multi_krum(x, f=f, m=3),
                      lambda x, f: np_multi_krum(x, f, 3), 1e-5),
    "minimum_diameter_averaging": (10, 3, lambda x, f: agg.minimum_diameter_averaging(x, f=f),
                                   np_mda, 1e-5),
    "monna": (11, 3, lambda x, f: agg.monna(x, f=f, reference_index=0), np_monna, 1e-5),
    "bulyan": (15, 3, lambda x, f: agg.bulyan(x, f=f), np_bulyan, 1e-5),
    "nnm": (11, 3, lambda x, f: agg.nearest_neighbor_mixing(x, f=f), np_nnm, 1e-5),
    "caf": (11, 3, lambda x, f: agg.caf(x, f=f), np_caf, 1e-4),
    "smea": (10, 3, lambda x, f: agg.smea(x, f=f), np_smea, 1e-5),
    "geometric_median": (11, 3, lambda x, f: agg.geometric_median(x, gtol=1e-7),
                         lambda x, f: np_weiszfeld(x), None),
}


@pytest.mark.parametrize("attack", ATTACKS)
@pytest.mark.parametrize("rule", list(TIE_RULES))
def test_rules_with_identical_byzantine_rows_match_numpy(rule, attack):
  """f identical Byzantine rows: Krum-type scores, distances and coordinate values tie among
  the copies (which copy a rule takes does not change its output) and often at a rule's cut."""
  n, f, fn, reference, atol = TIE_RULES[rule]
  d = 4 if rule in ("caf", "smea") else 7
  jitted = jax.jit(lambda u: fn(u, f))  # one compile for the three seeds (same shapes)
  for seed in range(3):
    x = attacked(seed, n, f, d, attack)
    expected = reference(x, f)
    got = np.asarray(jitted(x))
    if atol is None:  # Weiszfeld: stopping-rule accuracy relative to the spread
      atol = 1e-4 * np.abs(x - expected).max()
    np.testing.assert_allclose(got, expected, rtol=0, atol=atol, err_msg=f"{rule} seed {seed}")


@pytest.mark.parametrize("attack", ATTACKS)
def test_weighted_trimmed_mean_with_identical_byzantine_rows(attack):
  n, f = WEIGHTED_TM_N, WEIGHTED_TM_F
  for seed in range(3):
    x = attacked(seed, n, f, 7, attack)
    w = np.random.default_rng(seed).integers(1, 4, size=n)
    w[-1] += (-w.sum()) % (n // f)           # (f/n)·Σw integral: an exact number of values
    expected = np_weighted_trimmed_mean_by_repetition(x, w, f)
    got = agg.trimmed_mean(x, f=f, weights=jnp.asarray(w, jnp.float32))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------- CAF rounding
# (seed, n, f, attack): cases where the float32 update c·(1 − τ/τ_max) left the removed rows a
# weight of 1e-9..4e-8 (jitted or not), which kept them in Σc > n − 2f and in the next τ_max:
# extra iterations and results off by 0.01..0.2 before the fix.
CAF_ROUNDING_CASES = [
    (2, 8, 2, "gaussian"), (5, 8, 2, "ipm"), (29, 8, 2, "sign_flip"), (1, 10, 3, "gaussian"),
    (29, 10, 3, "ipm"), (22, 10, 3, "alie"), (29, 10, 3, "sign_flip"), (18, 12, 3, "ipm"),
    (18, 12, 3, "alie"), (0, 12, 3, "sign_flip"),
]


def caf_case(seed, n, f, attack):
  if attack != "gaussian":
    return attacked(seed, n, f, 4, attack)
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(n, 4)) + np.r_[np.zeros(n - f), np.full(f, 3.0)][:, None]).astype(
      np.float32)


@pytest.mark.parametrize("seed,n,f,attack", CAF_ROUNDING_CASES)
def test_caf_matches_float64_where_rounding_used_to_matter(seed, n, f, attack):
  x = caf_case(seed, n, f, attack)
  jitted, eager = jax.jit(lambda u: agg.caf(u, f=f))(x), agg.caf(x, f=f)
  for delta in (2.0 ** -20, 0.0):  # with the documented δ rule, and the plain transcription
    expected = np_caf(x, f, delta=delta)
    np.testing.assert_allclose(jitted, expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(eager, expected, rtol=0, atol=1e-5)


def test_caf_removes_identical_outlying_rows_in_one_step():
  """f identical far rows share the largest τ: all of them reach weight 0 exactly, at once."""
  rng = np.random.default_rng(0)
  n, f = 10, 3
  honest = rng.normal(size=(n - f, 4))
  x = np.concatenate([honest, np.tile(honest.mean(0) + 40.0, (f, 1))]).astype(np.float32)
  np.testing.assert_allclose(agg.caf(x, f=f), np_caf(x, f), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------- geometric median
def median_on_a_row(seed, n, d, far, ratio):
  """Weighted rows whose geometric median is row k: α_k = ratio · ‖Σ_{j≠k} α_j u_j‖ (u_j the
  unit vector from x_k to x_j) with ratio > 1, row k scaled `far` times from the others."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d)) + 3.0
  k = int(rng.integers(n))
  x[k] = 3.0 + (x[k] - 3.0) * far
  w = rng.uniform(0.5, 2, size=n)
  u = np.delete(x - x[k], k, 0)
  u /= np.linalg.norm(u, axis=1, keepdims=True)
  w[k] = ratio * np.linalg.norm(np.delete(w, k) @ u)
  return x.astype(np.float32), w.astype(np.float32), k


# (seed, n, d, far, ratio): the Gram phase stalled ~sqrt(eps)·spread from the row (its
# cancellation), used the budget, and left no exact update: 1e-5..3e-4 relative error before.
GM_CASES = [(5, 5, 3, 100.0, 1.1), (7, 10, 3, 1.0, 1.1), (10, 25, 7, 3.0, 1.1),
            (13, 10, 7, 3.0, 1.01)]


@pytest.mark.parametrize("case", GM_CASES, ids=[str(c) for c in GM_CASES])
@pytest.mark.parametrize("maxiter", [5, 100, 300])
def test_geometric_median_on_a_data_row_matches_float64_weiszfeld(case, maxiter):
  """ftol = 0: the objective test never stops the iteration, so each run uses its budget (or
  stops by the gradient test once within ν of the row). Whatever the budget, the result is the
  float64 smoothed Weiszfeld iterate after the same number of updates."""
  x, w, _ = median_on_a_row(*case)
  res = jax.jit(lambda u, a: agg.weiszfeld(u, weights=a, maxiter=maxiter, ftol=0.0))(x, w)
  it = int(res.num_iterations)
  assert 1 <= it <= maxiter
  expected = np_weiszfeld(x, w, iters=it)
  np.testing.assert_allclose(res.median, expected, rtol=0, atol=2e-6 * np.abs(x).max())


def test_geometric_median_iteration_count_is_the_number_of_updates():
  x, w, k = median_on_a_row(6, 10, 3, 1.0, 1.1)
  for maxiter in (6, 7, 9, 20):
    res = agg.weiszfeld(x, weights=w, maxiter=maxiter, ftol=0.0)
    assert int(res.num_iterations) == maxiter   # the gradient test cannot stop it this early
    np.testing.assert_allclose(res.median, np_weiszfeld(x, w, iters=maxiter), rtol=0,
                               atol=2e-6 * np.abs(x).max())


@pytest.mark.parametrize("copies", [4, 6])
def test_geometric_median_on_identical_rows(copies):
  """Copies of one honest row (mimic): with enough of them the median sits on that point, and
  the Gram phase moves their weight onto one copy."""
  rng = np.random.default_rng(copies)
  x = rng.normal(size=(12, 20)) + 3.0
  x[12 - copies:] = x[0]
  x = x.astype(np.float32)
  for maxiter in (5, 100, 300):
    res = agg.weiszfeld(x, maxiter=maxiter, ftol=0.0)
    np.testing.assert_allclose(res.median, np_weiszfeld(x, iters=int(res.num_iterations)),
                               rtol=0, atol=2e-6 * np.abs(x).max())
