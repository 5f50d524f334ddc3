"""FLDetector against float64 NumPy transcriptions: the L-BFGS product (the compact formula, the
BFGS recursion, the exact Hessian of a quadratic), the gap statistics, and whole runs round by
round (numpy_reference.fldetector_round): sustained attackers detected, a clean set kept,
NaN/±inf/1e30 rows, the warm-up; the registry entry, options and vmap."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_robust import aggregators
from fedjax_robust import numpy_reference as ref
from fedjax_robust.aggregators import fldetector as fld
from fedjax_robust.errors import ConfigError

N, D = 12, 20          # clients, coordinates
WINDOW, B = 5, 10      # rounds of pairs and scores; gap statistic reference sets
ATTACKERS = (0, 1, 2)

hvp = jax.jit(fld.lbfgs_hvp)
gap_split = jax.jit(jax.vmap(fld.gap_split))


@functools.lru_cache(maxsize=None)
def _step(window=WINDOW, base="mean", warmup=0):
  return jax.jit(functools.partial(fld.fldetector_with_share, window=window, references=B,
                                   base=base, warmup=warmup))


# ----------------------------------------------------------------------------------------------
# L-BFGS


def np_bfgs_hvp(steps, changes, v):
  """B v by m explicit BFGS updates of σI (σ from the newest pair), the pairs oldest first: the
  matrix the compact formula represents (Byrd, Nocedal, Schnabel 1994, Theorem 2.2)."""
  s_new, y_new = steps[-1], changes[-1]
  b = (y_new @ s_new) / (s_new @ s_new) * np.eye(len(v))
  for s, y in zip(steps, changes):
    bs = b @ s
    b = b - np.outer(bs, bs) / (s @ bs) + np.outer(y, y) / (y @ s)
  return b @ v


def ring(pairs_s, pairs_y, slots):
  """The state's ring of `slots` after storing the pairs in order: (steps, changes, count)."""
  d = len(pairs_s[0])
  steps, changes = np.zeros((slots, d), np.float32), np.zeros((slots, d), np.float32)
  for k, (s, y) in enumerate(zip(pairs_s, pairs_y)):
    steps[k % slots], changes[k % slots] = s, y
  return jnp.asarray(steps), jnp.asarray(changes), jnp.int32(len(pairs_s))


def close(got, want, rtol=2e-4, atol=1e-6):
  want = np.asarray(want, np.float64)
  np.testing.assert_allclose(np.asarray(got, np.float64), want,
                             rtol=rtol, atol=atol * max(1.0, np.abs(want).max()))


LB = 6   # L-BFGS tests: slots and coordinates (one compiled shape)


@pytest.mark.parametrize("count", [1, 4, 6, 9])
def test_lbfgs_matches_the_compact_formula_and_the_bfgs_recursion(count):
  rng = np.random.default_rng(count)
  d = slots = LB
  a = rng.normal(size=(d, d))
  a = a @ a.T / d + np.eye(d)
  steps = [rng.normal(size=d).astype(np.float32) for _ in range(count)]
  changes = [(a @ s + 0.1 * rng.normal(size=d)).astype(np.float32) for s in steps]
  v = rng.normal(size=d).astype(np.float32)
  recent_s, recent_y = steps[-slots:], changes[-slots:]   # the ring keeps the newest N, in order
  want = ref.lbfgs_hvp(recent_s, recent_y, v)
  np.testing.assert_allclose(
      want, np_bfgs_hvp([np.float64(s) for s in recent_s], [np.float64(y) for y in recent_y],
                        np.float64(v)), rtol=1e-9, atol=1e-12)
  close(hvp(*ring(steps, changes, slots), jnp.asarray(v)), want)
  # The newest pair's secant equation B s_m = y_m, whatever came before.
  close(hvp(*ring(steps, changes, slots), jnp.asarray(steps[-1])), changes[-1], rtol=1e-3)
  # Scale: B(αS, βY)(γv) = (β/α)γ·B(S, Y)v, computed without overflow for pairs beyond the
  # float32 range of a Gram matrix (‖s‖² ≈ 1e62) and tiny changes.
  alpha, beta, gamma = 2.0 ** 100, 2.0 ** -60, 2.0 ** 90
  big = hvp(*ring([s * np.float32(alpha) for s in steps],
                  [y * np.float32(beta) for y in changes], slots), jnp.asarray(v * gamma))
  close(np.asarray(big, np.float64) * (alpha / beta / gamma), want, rtol=1e-3)
  # A BFGS update is unchanged when its pair is scaled jointly: pairs of sizes 2^±50 apart.
  sizes = [2.0 ** (50 * (-1) ** k) for k in range(count)]
  mixed = hvp(*ring([s * np.float32(c) for s, c in zip(steps, sizes)],
                    [y * np.float32(c) for y, c in zip(changes, sizes)], slots), jnp.asarray(v))
  close(mixed, want, rtol=1e-3)


def test_lbfgs_recovers_the_hessian_of_a_quadratic():
  """Pairs of a quadratic, y_k = H s_k with H-conjugate steps (s_iᵀ H s_j = 0, i ≠ j): after d
  of them the BFGS matrix is H itself (quadratic termination), so B v = H v exactly; the ring
  keeps the d newest pairs, so three older pairs written before do not matter."""
  rng = np.random.default_rng(0)
  d = LB
  q, _ = np.linalg.qr(rng.normal(size=(d, d)))
  h = (q * rng.uniform(0.5, 3.0, d)) @ q.T
  conjugate = [q[:, k] * rng.uniform(0.5, 2.0) for k in rng.permutation(d)]  # eigenvectors
  junk = [rng.normal(size=d) for _ in range(3)]
  steps = junk + conjugate
  changes = [rng.normal(size=d) for _ in junk] + [h @ s for s in conjugate]
  state = ring([np.float32(s) for s in steps], [np.float32(y) for y in changes], d)
  for _ in range(3):
    v = rng.normal(size=d).astype(np.float32)
    close(hvp(*state, jnp.asarray(v)), h @ v, rtol=1e-4, atol=1e-5)
  # Fewer pairs than d: only the newest pair's secant holds, B differs from H.
  few = ring([np.float32(s) for s in conjugate[:3]], [np.float32(h @ s) for s in conjugate[:3]],
             d)
  close(hvp(*few, jnp.asarray(np.float32(conjugate[2]))), h @ conjugate[2], rtol=1e-4)
  v = rng.normal(size=d).astype(np.float32)
  assert np.abs(np.asarray(hvp(*few, jnp.asarray(v))) - h @ v).max() > 1e-2


def test_lbfgs_without_pairs_or_singular_is_zero():
  zeros = jnp.zeros((LB, LB))
  assert np.all(np.asarray(hvp(zeros, zeros, jnp.int32(0), jnp.ones(LB))) == 0)
  # y ⟂ s for the newest pair: σ = 0 and the system is singular.
  s, y = np.eye(LB, dtype=np.float32)[:1], np.eye(LB, dtype=np.float32)[1:2]
  out = hvp(*ring(list(s), list(y), LB), jnp.ones(LB))
  assert np.all(np.asarray(out) == 0)
  assert np.all(ref.lbfgs_hvp(list(s), list(y), np.ones(LB)) == 0)


# ----------------------------------------------------------------------------------------------
# Gap statistics


def np_margin(scores, uniforms):
  """Gap(2) − s₂ − Gap(1) in float64 (positive: two clusters)."""
  x = (scores - scores.min()) / np.ptp(scores)
  w1, w2, _ = ref.two_means_1d(x)
  refs = [ref.two_means_1d(u) for u in uniforms]
  r1, r2 = np.array([r[0] for r in refs]), np.array([r[1] for r in refs])
  with np.errstate(divide="ignore"):
    return (np.log(r2.mean()) - np.log(w2) - np.sqrt(1 + 1 / len(r2)) * np.std(np.log(r2))
            - np.log(r1.mean()) + np.log(w1))


def test_gap_statistics_match_numpy_on_many_score_vectors():
  rng = np.random.default_rng(1)
  cases = []
  for i in range(160):
    kind = i % 4
    if kind == 0:
      s = rng.normal(size=N)
    elif kind == 1:
      s = rng.uniform(size=N)
    elif kind == 2:   # a separated group of 1 to 5
      s = rng.normal(size=N) * 0.1
      s[rng.permutation(N)[:1 + i % 5]] += rng.uniform(0.2, 2.0)
    else:             # heavy tails
      s = rng.standard_t(2, size=N)
    cases.append((np.float32(np.abs(s) + 1.0), rng.uniform(size=(B, N)).astype(np.float32)))
  scores = np.stack([c[0] for c in cases])
  uniforms = np.stack([c[1] for c in cases])
  detected, upper = gap_split(jnp.asarray(scores), jnp.asarray(uniforms))
  compared = detections = 0
  for k, (s, u) in enumerate(cases):
    if abs(np_margin(np.float64(s), np.float64(u))) < 1e-3:   # float32 may decide either way
      continue
    want_detected, want_upper = ref.gap_split(s, u)
    assert bool(detected[k]) == want_detected, k
    np.testing.assert_array_equal(np.asarray(upper[k]), want_upper)
    compared += 1
    detections += want_detected
  assert compared >= 150 and 20 <= detections <= compared - 20


def test_gap_statistics_closed_cases():
  u = np.random.default_rng(2).uniform(size=(B, N)).astype(np.float32)
  two = np.array([1.0] * 9 + [3.0] * 3, np.float32)    # W₂ = 0: two clusters, the 3 high ones
  same = np.full((N,), 0.25, np.float32)                # all equal: one cluster
  detected, upper = gap_split(jnp.asarray(np.stack([two, same])), jnp.asarray(np.stack([u, u])))
  assert bool(detected[0]) and np.array_equal(np.asarray(upper[0]), np.arange(N) >= 9)
  assert not bool(detected[1]) and not np.any(np.asarray(upper[1]))
  detected, _ = fld.gap_split(jnp.asarray([0.1, 0.9]), u[:, :2])   # n ≤ 2: nothing to compare
  assert not bool(detected)
  values = np.array([0.0, 0.1, 0.2, 1.0, 1.1])
  w1, w2, cut = jax.jit(fld.two_means_1d)(jnp.asarray(values, jnp.float32))
  assert float(cut) == pytest.approx(0.2)
  assert float(w2) == pytest.approx(0.02 + 0.005)
  assert float(w1) == pytest.approx(np.sum((values - values.mean()) ** 2))


# ----------------------------------------------------------------------------------------------
# Whole runs, round by round against numpy_reference.fldetector_round


def quadratic(seed, n=N):
  """Client i's loss ½(θ − c_i)ᵀH(θ − c_i): its update (a gradient) is H(θ − c_i) + noise."""
  rng = np.random.default_rng(seed)
  q, _ = np.linalg.qr(rng.normal(size=(D, D)))
  return (q * rng.uniform(0.5, 2.0, D)) @ q.T, rng.normal(size=(n, D))


def run(seed, rounds, *, n=N, attackers=ATTACKERS, base="mean", warmup=0, mutate=None,
        lr=0.3, noise=0.1, reference_rounds=None):
  """`rounds` rounds of SGD on the quadratic task with the rule and with the reference, from
  the same inputs (θ_{t+1} = θ_t − lr·g_t with the rule's g_t); attackers send the honest mean
  plus N(0, 4I), fresh each round (inconsistent, FLDetector's premise). Checks every round's
  aggregate and kept share against the reference, and that the state stays finite. Returns the
  reference's kept masks `[rounds, n]`."""
  h, centres = quadratic(seed, n)
  rng = np.random.default_rng(seed + 1)
  step = _step(base=base, warmup=warmup)
  state = fld.fldetector_init(D, num_clients=n, window=WINDOW)
  ref_state = ref.fldetector_state(n)
  theta = np.zeros(D, np.float32)
  kept_masks = []
  for t in range(rounds):
    x = ((theta - centres) @ h + noise * rng.normal(size=(n, D))).astype(np.float32)
    honest = np.setdiff1d(np.arange(n), attackers)
    for a in attackers:
      x[a] = x[honest].mean(0) + 2.0 * rng.normal(size=D)
    if mutate is not None:
      mutate(t, x)
    key = jax.random.fold_in(jax.random.key(seed), t)
    out, state = step(jnp.asarray(x), key=key, state=state, global_params=jnp.asarray(theta))
    uniforms = np.asarray(fld.reference_uniforms(key, B, n))
    want, kept, ref_state = ref.fldetector_round(ref_state, x, theta, uniforms, window=WINDOW,
                                                 base=base, warmup=warmup)
    for leaf in [out.value, *jax.tree.leaves(state)]:
      assert np.all(np.isfinite(np.asarray(leaf, np.float64))), t
    if reference_rounds is None or t < reference_rounds:
      assert float(out.kept_share) == pytest.approx(kept.mean()), t
      close(out.value, want, rtol=1e-4, atol=1e-5)
    if ref_state["scores"] and (reference_rounds is None or t < reference_rounds):
      close(state.scores[(int(state.scored) - 1) % WINDOW], ref_state["scores"][-1],
            rtol=1e-3, atol=1e-6)
    kept_masks.append(kept)
    theta = (theta - lr * np.asarray(out.value)).astype(np.float32)
  return np.array(kept_masks)


def test_sustained_attackers_detected_once_the_window_fills():
  """Scored from round 2 on; the fifth scored round (6) fills the window and the three attackers
  are left out in every round after; before, every row is averaged."""
  for seed in (0, 1):
    kept = run(seed, 14)
    assert kept[:WINDOW + 1].all()
    attackers = np.isin(np.arange(N), ATTACKERS)
    np.testing.assert_array_equal(kept[WINDOW + 1:], np.broadcast_to(~attackers, (8, N)))


def test_a_clean_set_is_kept():
  """Honest clients only (n = 30): no round flags anyone. At n = 12 the gap statistic flags
  a clean set now and then (with B = 10, Gaussian scores give two clusters in about 6% of
  instances at n = 12, 1% at n = 30, none seen at n = 100 over 400), as the published
  detector does."""
  kept = run(3, 20, n=30, attackers=())
  assert kept.all()


def test_identical_clients_are_never_flagged():
  def same(t, x):
    del t
    x[:] = x[5]
  assert run(4, 10, attackers=(), mutate=same, noise=0.0).all()


def test_nonfinite_rows_are_excluded_and_never_enter_the_state():
  """Client 3 sends NaN every round; client 4 sends +inf in rounds 3 and 8, −inf (one entry) in
  round 10: excluded in those rounds, without a distance in them and the rounds after (their
  normalised distance is the round's largest), never stored; the attackers are still found."""
  def faults(t, x):
    x[3] = np.nan
    if t in (3, 8):
      x[4] = np.inf
    if t == 10:
      x[4, 7] = -np.inf
  kept = run(5, 14, mutate=faults)
  assert not kept[:, 3].any()
  assert not kept[[3, 8, 10], 4].any()
  assert not kept[WINDOW + 1:, :3].any()
  assert kept[:, 5:].all()


def test_huge_rows_follow_the_definition():
  """Client 6 sends ±1e30 rows, the signs alternating each round, from round 1 on, with the
  median base: its distance takes almost all of each round's normalised distance, so once the
  window fills it alone is detected (the normalisation masks the other attackers while it
  keeps sending, as published); the median never moves by it; no overflow in the distances or
  the L-BFGS pairs. A constant 1e30 row would be consistent, predicted to within ‖Ĥ Δθ‖, and
  not detected: FLDetector flags inconsistency, not size."""
  signs = np.where(np.arange(D) % 2 == 0, 1.0, -1.0)

  def huge(t, x):
    if t >= 1:
      x[6] = 1e30 * signs * (-1) ** t
  kept = run(6, 12, base="median", mutate=huge)
  assert not kept[WINDOW + 1:, 6].any()
  assert kept[:, 7:].all() and kept[:, 3:6].all()


def test_huge_row_with_the_mean_base():
  """With the mean base a 1e30 row sent once (round 4, before the window fills) is averaged
  (the mean's definition) and moves the model by ~1e28: the rule and the reference agree up
  to that round; after it (pairs 1e28 apart in size), nothing non-finite in the state or the
  aggregates."""
  def huge(t, x):
    if t == 4:
      x[6] = 1e30
  kept = run(7, 9, mutate=huge, reference_rounds=5)
  assert kept[4, 6]


def test_warmup_delays_scoring():
  kept = run(0, 12, warmup=4)
  # Scored from round 4: the window fills in round 8.
  assert kept[:8].all() and not kept[8:, :3].any()


# ----------------------------------------------------------------------------------------------
# Registry, options, vmap


def test_registered_with_its_inputs_state_and_options():
  agg = aggregators.get("fldetector", f=2, options={"fldetector": {"window": 3}})
  assert agg.needs == frozenset({"global_params"}) and agg.per_client_state
  assert aggregators.option_domains("fldetector").keys() == {"window", "references", "base",
                                                             "warmup"}
  x = jnp.asarray(np.random.default_rng(0).normal(size=(7, 4)), jnp.float32)
  key = jax.random.key(0)
  # A state built without the number of clients (as `init(d, dtype)` alone builds it, to ask
  # whether a rule keeps a state) is refused when the rule runs.
  state = agg.init(4, jnp.float32)
  assert jax.tree.leaves(state)
  with pytest.raises(ConfigError, match=r"fldetector keeps a state per client.*num_clients=7"):
    agg.apply(x, state, key, global_params=jnp.zeros(4))
  state = agg.init(4, jnp.float32, num_clients=7)
  with pytest.raises(ConfigError, match=r"fldetector.*needs the global model"):
    agg.apply(x, state, key)
  with pytest.raises(ConfigError, match=r"global_params must have shape \(4,\)"):
    agg.apply(x, state, key, global_params=jnp.zeros(3))
  out, new_state, aux = jax.eval_shape(
      lambda x, s: agg.apply(x, s, key, global_params=jnp.zeros(4)), x, state)
  assert out.shape == (4,) and set(aux) == {"kept_share", "secure_averages", "numbers_sent"}
  assert jax.tree.map(lambda a: a.shape, new_state) == jax.tree.map(lambda a: a.shape, state)
  # The pipeline's one-off call builds the state for its n rows.
  assert jax.eval_shape(lambda x: agg(x, global_params=jnp.zeros(4)), x).shape == (4,)
  for key_, bad, match in [("window", 0, r"window=0 .*int >= 1"),
                           ("references", 0, r"references=0"), ("warmup", -1, r"warmup=-1"),
                           ("base", "trimmed_mean", r"base='trimmed_mean'"),
                           ("window", 2.5, r"window=2.5")]:
    with pytest.raises(ConfigError, match=rf"fldetector\.{match}"):
      aggregators.get("fldetector", f=1, options={"fldetector": {key_: bad}})


def test_direct_calls_check_their_options():
  state = fld.fldetector_init(4, num_clients=3, window=2)
  x = jnp.ones((3, 4))
  for kwargs, match in [({"window": 0}, "window"), ({"references": 0}, "references"),
                        ({"base": "krum"}, "base"), ({"warmup": -2}, "warmup"),
                        ({"window": True}, "window")]:
    with pytest.raises(ValueError, match=match):
      fld.fldetector(x, key=jax.random.key(0), state=state, global_params=jnp.zeros(4),
                     **{"window": 2, **kwargs})
  with pytest.raises(ConfigError, match="window=3"):   # a state of 2 rounds for window 3
    fld.fldetector(x, key=jax.random.key(0), state=state, global_params=jnp.zeros(4), window=3)
  with pytest.raises(ValueError, match="num_clients"):
    fld.fldetector_init(4, num_clients=-1)


def test_vmap_over_draws_equals_unbatched():
  """Three draws with their own rows (one with a NaN row), keys, states (past the window, so
  detection runs) and global models: one vmapped call = three separate calls."""
  step = _step()
  rng = np.random.default_rng(8)
  records = []
  for s in range(3):
    state = fld.fldetector_init(D, num_clients=N, window=WINDOW)
    theta = np.zeros(D, np.float32)
    for t in range(WINDOW + 3):
      x = rng.normal(size=(N, D)).astype(np.float32)
      x[:2] *= 1.0 + 3.0 * rng.uniform(size=(2, 1))
      if s == 2:
        x[4] = np.nan
      key = jax.random.fold_in(jax.random.key(s), t)
      if t == WINDOW + 2:
        records.append((jnp.asarray(x), state, key, jnp.asarray(theta)))
      out, state = step(jnp.asarray(x), key=key, state=state, global_params=jnp.asarray(theta))
      theta = theta - 0.5 * np.asarray(out.value)
  stacked = [jax.tree.map(lambda *a: jnp.stack(a), *column) for column in zip(*records)]
  batched = jax.jit(jax.vmap(lambda x, s, k, g: fld.fldetector_with_share(
      x, key=k, state=s, global_params=g, window=WINDOW, references=B)))
  outs, new_states = batched(*stacked)
  for i, (x, state, key, theta) in enumerate(records):
    out, new_state = step(x, key=key, state=state, global_params=theta)
    close(outs.value[i], out.value, rtol=1e-6, atol=1e-7)
    assert float(outs.kept_share[i]) == float(out.kept_share)
    for a, b in zip(jax.tree.leaves(new_states), jax.tree.leaves(new_state)):
      np.testing.assert_allclose(np.asarray(a[i], np.float64), np.asarray(b, np.float64),
                                 rtol=1e-6, atol=1e-7)
  assert float(outs.kept_share[2]) <= 11 / 12
