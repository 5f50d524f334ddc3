"""Exact optima, curvature and objectives on convex tasks, against independent references
(NumPy least squares and eigenvalues, SciPy L-BFGS and SLSQP, brute force over subsets)."""

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from fedjax_robust.theory import convex


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def least_squares_task(rng, n=12, d=4, m_max=9, noise=None, spread=1.0):
  """Clients with m_i ∈ [d+1, m_max] examples (padded), L_i(θ) = ‖X_iθ − y_i‖²/(2m_i), y_i from
  a client's own truth (common + `spread`·N(0, I)) plus noise; returns the float64 data (a list
  per client) and a factory of `client_losses` in a dtype."""
  counts = rng.integers(d + 1, m_max + 1, size=n)
  noise = rng.uniform(0.1, 1.0, size=n) if noise is None else np.asarray(noise)
  xs = [rng.normal(size=(c, d)) + rng.normal(size=d) for c in counts]
  truths = rng.normal(size=d) + spread * rng.normal(size=(n, d))
  ys = [x @ t + s * rng.normal(size=len(x)) for x, t, s in zip(xs, truths, noise)]
  valid = np.arange(m_max) < counts[:, None]
  x_pad = np.zeros((n, m_max, d))
  y_pad = np.zeros((n, m_max))
  for i, c in enumerate(counts):
    x_pad[i, :c], y_pad[i, :c] = xs[i], ys[i]

  def make(dtype):
    x, y, v = (jnp.asarray(a, dtype) for a in (x_pad, y_pad, valid))
    m = jnp.asarray(counts, dtype)

    def client_losses(theta):
      r = (jnp.einsum("nmd,d->nm", x, theta) - y) * v
      return 0.5 * jnp.sum(r * r, axis=1) / m

    return client_losses

  return xs, ys, make


def lstsq_reference(xs, ys, mask):
  """θ_S* and L_S* of L_S = (1/|S|) Σ_{i∈S} ‖X_iθ − y_i‖²/(2m_i), by np.linalg.lstsq."""
  idx = np.flatnonzero(mask)
  a = np.concatenate([xs[i] / math.sqrt(len(xs[i])) for i in idx])
  b = np.concatenate([ys[i] / math.sqrt(len(xs[i])) for i in idx])
  theta = np.linalg.lstsq(a, b, rcond=None)[0]
  value = np.mean([0.5 * np.mean((xs[i] @ theta - ys[i]) ** 2) for i in idx])
  return theta, value


def logistic_task(rng, n=8, m=15, features=3, classes=3, l2=0.05):
  """Softmax regression with a bias and λ/2‖θ‖² on every parameter; θ = vec(W), W [D+1, K]."""
  x = rng.normal(size=(n, m, features)) + rng.normal(size=(n, 1, features))
  x_tilde = np.concatenate([x, np.ones((n, m, 1))], axis=-1)
  w_true = 2 * rng.normal(size=(n, features + 1, classes))
  logits = np.einsum("nmd,ndk->nmk", x_tilde, w_true) + rng.gumbel(size=(n, m, classes))
  labels = np.argmax(logits, axis=-1)

  @functools.cache  # one closure per dtype: the module's compiled programs are reused
  def make(dtype):
    xt, y = jnp.asarray(x_tilde, dtype), jnp.asarray(labels)

    def client_losses(theta):
      z = xt @ theta.reshape(features + 1, classes)
      nll = jax.nn.logsumexp(z, -1) - jnp.take_along_axis(z, y[..., None], -1)[..., 0]
      return jnp.mean(nll, axis=-1) + 0.5 * l2 * theta @ theta

    return client_losses

  return x_tilde, (features + 1) * classes, make


@functools.cache
def shared_logistic():
  """The softmax task (n = 8, K = 3) of several tests, built once so that they share programs."""
  return logistic_task(np.random.default_rng(7))


def random_masks(rng, count, n, p=0.6):
  masks = rng.random((count, n)) < p
  masks[~masks.any(axis=1), 0] = True
  return masks


# ----------------------------------------------------------------------------- least squares
def test_least_squares_optima_match_lstsq(rng, x64):
  xs, ys, make = least_squares_task(rng)
  n, d = len(xs), xs[0].shape[1]
  masks = random_masks(rng, 240, n)
  masks[7] = False  # no honest client
  out = convex.honest_optima(make(jnp.float64), jnp.zeros(d), masks, group_size=64)
  assert np.isnan(out["value"][7]) and np.isnan(out["theta"][7]).all()
  keep = np.arange(len(masks)) != 7
  assert out["gradient_norm"][keep].max() < 1e-12
  for s in np.flatnonzero(keep):
    theta, value = lstsq_reference(xs, ys, masks[s])
    np.testing.assert_allclose(out["theta"][s], theta, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(out["value"][s], value, rtol=1e-11)


def test_least_squares_optima_in_float32(rng):
  xs, ys, make = least_squares_task(rng)
  masks = random_masks(rng, 20, len(xs))
  out = convex.honest_optima(make(jnp.float32), jnp.zeros(xs[0].shape[1]), masks)
  assert out["value"].dtype == np.float32
  for s, mask in enumerate(masks):
    theta, value = lstsq_reference(xs, ys, mask)
    np.testing.assert_allclose(out["value"][s], value, rtol=1e-5)
    np.testing.assert_allclose(out["theta"][s], theta, rtol=1e-3, atol=1e-4)


def test_a_draws_numbers_do_not_depend_on_the_other_draws(rng):
  _, d, make = shared_logistic()
  losses = make(jnp.float32)
  masks = random_masks(rng, 20, 8)
  order = rng.permutation(20)
  whole = convex.honest_optima(losses, jnp.zeros(d), masks, group_size=8)
  shuffled = convex.honest_optima(losses, jnp.zeros(d), masks[order], group_size=8)
  alone = convex.honest_optima(losses, jnp.zeros(d), masks[3:4], group_size=8)
  for key in whole:
    np.testing.assert_array_equal(whole[key][order], shuffled[key])
    np.testing.assert_array_equal(whole[key][3:4], alone[key])


def test_least_squares_curvature_is_the_exact_hessian_spectrum(rng, x64):
  xs, _, make = least_squares_task(rng)
  n, d = len(xs), xs[0].shape[1]
  masks = random_masks(rng, 50, n)
  largest, smallest = convex.curvature(make(jnp.float64), rng.normal(size=d), masks)
  for s, mask in enumerate(masks):
    hessian = np.mean([xs[i].T @ xs[i] / len(xs[i]) for i in np.flatnonzero(mask)], axis=0)
    eig = np.linalg.eigvalsh(hessian)
    np.testing.assert_allclose([largest[s], smallest[s]], [eig[-1], eig[0]], rtol=1e-10)


# ----------------------------------------------------------------------------- ℓ2 logistic
def test_logistic_optima_match_scipy_lbfgs(rng, x64):
  _, d, make = shared_logistic()
  losses = make(jnp.float64)
  masks = random_masks(rng, 4, 8)
  out = convex.honest_optima(losses, jnp.zeros(d), masks)
  assert out["gradient_norm"].max() < 1e-12
  objective = jax.jit(jax.value_and_grad(lambda t, w: w @ losses(t)))
  for s, mask in enumerate(masks):
    w = jnp.asarray(mask / mask.sum())
    fun = lambda t: tuple(np.asarray(a, np.float64) for a in objective(jnp.asarray(t), w))
    ref = scipy.optimize.minimize(fun, np.zeros(d), jac=True, method="L-BFGS-B",
                                  options={"ftol": 1e-15, "gtol": 1e-11, "maxiter": 10_000})
    assert out["value"][s] <= ref.fun + 1e-14
    np.testing.assert_allclose(out["value"][s], ref.fun, rtol=1e-12)
    np.testing.assert_allclose(out["theta"][s], ref.x, atol=1e-5)


def test_two_class_logistic_curvature_at_zero_is_global_and_mu_is_l2(rng, x64):
  l2 = 0.05
  _, d, make = logistic_task(rng, classes=2, l2=l2)
  losses = make(jnp.float64)
  masks = random_masks(rng, 6, 8)
  at_zero, mu_zero = convex.curvature(losses, jnp.zeros(d), masks)
  np.testing.assert_allclose(mu_zero, l2, rtol=1e-10)
  for scale in (0.3, 1.0, 3.0):
    for _ in range(3):
      largest, smallest = convex.curvature(losses, scale * rng.normal(size=d), masks)
      assert np.all(largest <= at_zero * (1 + 1e-12))
      np.testing.assert_allclose(smallest, l2, rtol=1e-10)


def test_multiclass_curvature_at_zero_is_not_a_bound_but_softmax_bound_is(rng, x64):
  l2 = 0.05  # shared_logistic's
  x_tilde, d, make = shared_logistic()
  losses = make(jnp.float64)
  everyone = np.ones((1, 8), bool)
  at_zero, _ = convex.curvature(losses, jnp.zeros(d), everyone)
  # Classes 0 and 1 share the mass (equal weights), class 2 is pushed out by its bias.
  w = np.zeros((x_tilde.shape[-1], 3))
  w[-1, 2] = -30.0
  largest, smallest = convex.curvature(losses, w.ravel(), everyone)
  second_moment = np.mean([xt.T @ xt / len(xt) for xt in x_tilde], axis=0)
  bound = convex.softmax_smoothness_bound(np.linalg.eigvalsh(second_moment)[-1], l2)
  assert at_zero[0] < largest[0] <= bound
  np.testing.assert_allclose(smallest, l2, rtol=1e-8)
  for _ in range(5):
    assert convex.curvature(losses, 3 * rng.normal(size=d), everyone)[0][0] <= bound


# ----------------------------------------------------------------------------- minimize
def test_minimize_falls_back_to_a_gradient_step_where_newton_ascends(x64):
  # At (0.1, 0) the Hessian is indefinite and the Newton direction ascends: the gradient step
  # must be taken; the run then reaches a minimizer (±1, 0) of (x² − 1)² + y².
  objective = lambda t: (t[0] ** 2 - 1) ** 2 + t[1] ** 2
  theta, value, norm = jax.jit(lambda t: convex.minimize(objective, t))(jnp.array([0.1, 0.0]))
  np.testing.assert_allclose(np.abs(theta), [1.0, 0.0], atol=1e-10)
  assert value < 1e-20 and norm < 1e-10


def test_minimize_vmaps_over_objectives_and_keeps_each_lane_exact(x64):
  # Lanes needing different numbers of steps give the same answers vmapped as alone.
  centres = jnp.array([0.0, 1.0, 5.0, 40.0])
  solve = lambda c: convex.minimize(lambda t: jnp.sum(jnp.logaddexp(0.0, t - c)) + 0.5 * t @ t,
                                    jnp.zeros(3))
  batched = jax.jit(jax.vmap(solve))(centres)
  for i, c in enumerate(centres):
    alone = jax.jit(solve)(c)
    for a, b in zip(batched, alone):
      np.testing.assert_array_equal(a[i], b)


# ----------------------------------------------------------------------------- top_mean, Π_C
def test_top_mean_is_the_max_over_subsets(rng):
  losses = rng.normal(size=(3, 7))
  for k in range(1, 8):
    brute = np.array([[max(row[list(s)].mean() for s in itertools.combinations(range(7), k))]
                      for row in losses])[:, 0]
    np.testing.assert_allclose(convex.top_mean(jnp.asarray(losses), k), brute, atol=1e-6)
  with pytest.raises(ValueError):
    convex.top_mean(jnp.zeros(4), 5)


def test_project_capped_simplex_satisfies_kkt(rng, x64):
  project = jax.jit(convex.project_capped_simplex, static_argnums=1)
  for scale, n, k in [(1.0, 10, 4), (1e-3, 10, 4), (1e12, 10, 4), (1.0, 5, 1), (1.0, 6, 6)]:
    y = scale * rng.normal(size=n)
    c = np.asarray(project(jnp.asarray(y), k))
    cap = 1.0 / k
    assert abs(c.sum() - 1) < 1e-12 and c.min() >= 0 and c.max() <= cap
    free = (c > 0) & (c < cap)
    tau = np.mean((y - c)[free]) if free.any() else None
    if tau is not None:  # Π(y) = clip(y − τ, 0, cap)
      np.testing.assert_allclose(np.clip(y - tau, 0, cap), c, atol=1e-12 * max(scale, 1))
    else:  # a vertex: the k largest entries at the cap
      np.testing.assert_array_equal(np.sort(np.argsort(-y)[:k]), np.flatnonzero(c))


def test_project_capped_simplex_stays_feasible_in_float32(rng):
  project = jax.jit(convex.project_capped_simplex, static_argnums=1)
  for scale in (1.0, 1e4, 1e9):
    c = project(jnp.asarray(scale * rng.normal(size=10), jnp.float32), 6)
    assert abs(float(c.sum()) - 1) < 1e-6 and float(c.max()) <= 1 / 6 * (1 + 1e-6)


# ----------------------------------------------------------------------------- minimax
def exhaustive_minimax_slsqp(xs, ys, f, theta0):
  """min_{θ,t} t s.t. t ≥ L_S(θ) for every |S| = n − f (all C(n, f) subsets), by SLSQP."""
  n, d = len(xs), xs[0].shape[1]
  per_client = lambda th: np.array([0.5 * np.mean((x @ th - y) ** 2) for x, y in zip(xs, ys)])
  per_client_grad = lambda th: np.array([x.T @ (x @ th - y) / len(x) for x, y in zip(xs, ys)])
  subsets = np.zeros((math.comb(n, f), n))
  for row, byz in enumerate(itertools.combinations(range(n), f)):
    subsets[row] = 1.0 / (n - f)
    subsets[row, list(byz)] = 0.0
  constraint = {"type": "ineq",
                "fun": lambda z: z[d] - subsets @ per_client(z[:d]),
                "jac": lambda z: np.hstack([-subsets @ per_client_grad(z[:d]),
                                            np.ones((len(subsets), 1))])}
  z0 = np.append(theta0, (subsets @ per_client(theta0)).max())
  res = scipy.optimize.minimize(lambda z: z[d], z0, jac=lambda z: np.eye(d + 1)[d],
                                constraints=[constraint], method="SLSQP",
                                options={"ftol": 1e-12, "maxiter": 1000})
  assert res.success, res.message
  return res.fun, subsets, per_client


def test_minimax_matches_exhaustive_epigraph(rng, x64):
  xs, ys, make = least_squares_task(rng, n=7, d=3, noise=rng.uniform(0.1, 2.0, size=7))
  n, f = 7, 2
  out = convex.minimax_minimizer(make(jnp.float64), jnp.zeros(3), n, f)
  assert 0 <= out["gap"] <= 1e-7 * out["primal"]
  reference, subsets, per_client = exhaustive_minimax_slsqp(xs, ys, f, np.zeros(3))
  np.testing.assert_allclose(out["primal"], reference, rtol=1e-7)
  # No subset of size n − f is worse at θ_max than the reported primal value.
  assert (subsets @ per_client(np.asarray(out["theta"]))).max() <= out["primal"] * (1 + 1e-12)
  c = np.asarray(out["weights"])
  assert abs(c.sum() - 1) < 1e-12 and c.min() >= 0 and c.max() <= 1 / (n - f) + 1e-15


def test_minimax_certified_gap_in_float32():
  _, d, make = shared_logistic()
  out = convex.minimax_minimizer(make(jnp.float32), jnp.zeros(d, jnp.float32), 8, 3)
  c = np.asarray(out["weights"])
  assert np.any((c > 1e-3) & (c < 1 / 5 - 1e-3))  # the optimum is not a vertex: a real test
  assert out["primal"].dtype == jnp.float32
  assert abs(float(out["gap"])) < 1e-4 * float(out["primal"])


def test_minimax_rejects_f_out_of_range():
  with pytest.raises(ValueError, match="0 <= f < n"):
    convex.minimax_minimizer(lambda t: jnp.stack([t @ t, t @ t]), jnp.zeros(2), 2, 2)


# ----------------------------------------------------------------------------- expected vs minimax
def test_expected_minimizer_matches_weighted_lstsq(rng, x64):
  xs, ys, make = least_squares_task(rng, n=6, d=3)
  weights = rng.dirichlet(np.ones(6))
  out = convex.expected_objective_minimizer(make(jnp.float64), jnp.zeros(3), weights)
  a = np.concatenate([x * math.sqrt(w / len(x)) for x, w in zip(xs, weights)])
  b = np.concatenate([y * math.sqrt(w / len(x)) for x, y, w in zip(xs, ys, weights)])
  theta = np.linalg.lstsq(a, b, rcond=None)[0]
  np.testing.assert_allclose(out["theta"], theta, rtol=1e-10)
  np.testing.assert_allclose(out["value"], 0.5 * np.sum((a @ theta - b) ** 2), rtol=1e-12)
  with pytest.raises(ValueError, match="summing to 1"):
    convex.expected_objective_minimizer(make(jnp.float64), jnp.zeros(3), 2 * weights)


@pytest.mark.slow
def test_min_expected_at_most_min_max_for_laws_on_large_honest_sets(rng, x64):
  n, f = 8, 3
  _, d, make = shared_logistic()
  losses = make(jnp.float64)
  # Uniform over |S| = n − f gives w_i = 1/n; a non-uniform law on sizes n − f..n is sampled.
  masks = np.zeros((400, n), bool)
  for row in masks:
    size = rng.integers(n - f, n + 1)
    row[rng.choice(n, size, replace=False, p=np.arange(1, n + 1) / np.arange(1, n + 1).sum())] = 1
  sampled = (masks / masks.sum(1, keepdims=True)).mean(0)
  for weights, draws in [(np.full(n, 1 / n), None), (sampled, masks)]:
    out = convex.compare_objectives(losses, jnp.zeros(d), weights, n, f, masks=draws)
    assert out["min_expected"] <= out["min_max"]
    assert out["min_expected"] <= out["expected_loss_at_theta_minimax"]
    assert out["min_max"] <= out["worst_case_loss_at_theta_expected"] + out["min_max_gap"]
    assert out["min_max_gap"] <= 1e-6 * out["min_max"]
    np.testing.assert_allclose(out["expected_loss_at_theta_expected"], out["min_expected"])
  # The sampled law's mean over its draws is the weighted loss exactly; an oracle knowing S
  # does at least as well as θ_E on average.
  np.testing.assert_allclose(out["sampled_loss_at_theta_expected"], out["min_expected"],
                             rtol=1e-12)
  np.testing.assert_allclose(out["sampled_loss_at_theta_minimax"],
                             out["expected_loss_at_theta_minimax"], rtol=1e-12)
  assert out["sampled_oracle_loss"] <= out["min_expected"]


def test_min_expected_can_exceed_min_max_with_small_honest_sets(rng, x64):
  # μ_H = "S = {0}" (|S| = 1 < n − f): client 0 is very noisy, the others share its truth, so
  # its own optimum is worse than the best worst case over sets of n − f clients, where its loss
  # is averaged with the others' small ones. A property of the two objectives, not an error.
  n, f = 6, 2
  _, _, make = least_squares_task(rng, n=n, d=3, noise=[5.0] + [0.1] * (n - 1), spread=0.0)
  weights = np.eye(n)[0]
  out = convex.compare_objectives(make(jnp.float64), jnp.zeros(3), weights, n, f)
  assert out["min_expected"] > out["min_max"] + out["min_max_gap"]


@pytest.mark.slow
def test_minimax_matches_exhaustive_epigraph_on_many_tasks(rng, x64):
  for _ in range(10):
    n, f = int(rng.integers(4, 9)), None
    f = int(rng.integers(1, n - 1))
    xs, ys, make = least_squares_task(rng, n=n, d=3, noise=rng.uniform(0.1, 2.0, size=n))
    out = convex.minimax_minimizer(make(jnp.float64), jnp.zeros(3), n, f)
    reference, *_ = exhaustive_minimax_slsqp(xs, ys, f, np.zeros(3))
    assert out["gap"] <= 1e-7 * out["primal"]
    np.testing.assert_allclose(out["primal"], reference, rtol=1e-7)
