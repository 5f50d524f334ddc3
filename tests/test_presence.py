"""Client drop-outs: the presence mask `present [n]` in rules, pre-aggregators and pipelines.

Every supported rule applied with a mask must equal a plain NumPy transcription of the rule on
the present rows alone (same declared f), whatever the absent rows hold; an all-True mask must
give exactly the numbers of `present=None`; vmap over (updates, present) must match unbatched.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_robust import aggregators as agg
from fedjax_robust.aggregators import registry
from fedjax_robust.errors import ConfigError

N, D, F = 11, 5, 2
COUNTS = (11, 9, 7, 6, 5, 3, 0)  # present counts m: all, some, too few for Krum/CWTM, none
FILLS = (np.nan, np.inf, 1e30)   # what the absent rows hold
TIGHT = {"geometric_median": {"gtol": 1e-7}}  # the rule, not its stopping rule


# ----------------------------------------------------------------------- NumPy references
def np_mean(x, w=None):
  w = np.ones(len(x)) if w is None else w
  return w @ x / w.sum() if len(x) else np.full(D, np.nan)


def np_trimmed_mean(x, f):
  m = len(x)
  return np.sort(x, axis=0)[f:m - f].mean(0) if m > 2 * f else np.full(D, np.nan)


def np_weighted_trimmed_mean(x, w, f):
  """Per coordinate, a weight mass t = (f/m)·Σw is cut from each end of the sorted values (the
  boundary value partly) and the rest is averaged with its weights."""
  m = len(x)
  if m <= 2 * f:
    return np.full(D, np.nan)
  total, out = w.sum(), []
  t = total * f / m
  for j in range(x.shape[1]):
    order = np.argsort(x[:, j], kind="stable")
    below, acc = 0.0, 0.0
    for v, wi in zip(x[order, j], w[order]):
      kept = max(min(below + wi, total - t) - max(below, t), 0.0)
      acc += kept * v if kept > 0 else 0.0
      below += wi
    out.append(acc / (total - 2 * t))
  return np.array(out)


def np_coordinate_median(x):
  """The middle order statistic(s) of np.sort (NaN last), mean of the two for even m."""
  m = len(x)
  if m == 0:
    return np.full(D, np.nan)
  s = np.sort(x, axis=0)
  return (s[(m - 1) // 2] + s[m // 2]) / 2


def np_weiszfeld(x, w=None, nu=1e-6, iters=1000):
  if len(x) == 0:
    return np.full(D, np.nan)
  w = np.ones(len(x)) if w is None else w
  z = w @ x / w.sum()
  for _ in range(iters):
    beta = w / np.maximum(np.linalg.norm(x - z, axis=1), nu)
    z = beta @ x / beta.sum()
  return z


def np_squared_distances(x):
  return ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)


def np_nnm(x, f):
  """Each row: the mean of its m − f nearest rows, itself included (ties: lower index)."""
  dist = np_squared_distances(x)
  np.fill_diagonal(dist, -1.0)
  return np.stack([x[np.argsort(dist[i], kind="stable")[:len(x) - f]].mean(0)
                   for i in range(len(x))])


def np_multi_krum(x, f, k=None):
  """Mean of the k rows of lowest score (sum of the m − f − 2 smallest squared distances to the
  other rows); k = m − f by default; undefined (NaN) for m < 2f + 3."""
  m = len(x)
  if m < 2 * f + 3:
    return np.full(D, np.nan)
  dist = np_squared_distances(x)
  np.fill_diagonal(dist, np.inf)
  scores = np.sort(dist, axis=1)[:, :m - f - 2].sum(1)
  return x[np.argsort(scores, kind="stable")[:m - f if k is None else k]].mean(0)


REFERENCES = {
    "mean": np_mean,
    "trimmed_mean": lambda x: np_trimmed_mean(x, F),
    "coordinate_median": np_coordinate_median,
    "geometric_median": np_weiszfeld,
    "nnm+trimmed_mean": lambda x: (np_trimmed_mean(np_nnm(x, F), F) if len(x) > F
                                   else np.full(D, np.nan)),
    "krum": lambda x: np_multi_krum(x, F, 1),
    "multi_krum": lambda x: np_multi_krum(x, F),
}
ATOL = {"geometric_median": 2e-4}


# ----------------------------------------------------------------------- helpers
def mask(rng, m, n=N):
  present = np.zeros(n, bool)
  present[rng.permutation(n)[:m]] = True
  return present


def with_absent(x, present, fill):
  out = x.copy()
  out[~present] = fill
  return out


def data(rng, n=N):
  """Honest rows around 0 and one far Byzantine row (which the robust rules must drop)."""
  x = rng.normal(size=(n, D)).astype(np.float32)
  x[1] += 30.0
  return x


_JITTED = {}


def pipeline(spec, presence=True, **kw):
  """The jitted `(updates, present) -> aggregate` of a spec (compiled once per test run)."""
  key = (spec, presence, tuple(sorted(kw)))
  if key not in _JITTED:
    rule = agg.get(spec, f=F, options=TIGHT, presence=presence)
    if presence:
      _JITTED[key] = jax.jit(lambda u, p, **w: rule(u, present=p, **w))
    else:
      _JITTED[key] = jax.jit(lambda u, **w: rule(u, **w))
  return _JITTED[key]


# ----------------------------------------------------------------------- exact values
@pytest.mark.parametrize("spec", list(REFERENCES))
def test_pipeline_matches_numpy_on_the_present_rows(rng, spec):
  run = pipeline(spec)
  for m in COUNTS:
    for fill in FILLS:
      x = data(rng)
      present = mask(rng, m)
      got = np.asarray(run(with_absent(x, present, fill), present))
      expected = REFERENCES[spec](x[present].astype(np.float64))
      np.testing.assert_allclose(got, expected, atol=ATOL.get(spec, 1e-5), rtol=1e-5,
                                 err_msg=f"{spec}, m={m}, absent rows={fill}")


def test_coordinatewise_rules_drop_present_nonfinite_rows(rng):
  """A Byzantine NaN or +inf among the present rows sorts to the top, as in np.sort."""
  for m in (9, 6):
    x = data(rng)
    present = mask(rng, m)
    x[np.flatnonzero(present)[:2]] = [[np.nan], [np.inf]]
    u = with_absent(x, present, -np.inf)
    for spec in ("trimmed_mean", "coordinate_median"):
      np.testing.assert_allclose(pipeline(spec)(u, present),
                                 REFERENCES[spec](x[present].astype(np.float64)), atol=1e-5)


def test_nearest_neighbor_mixing_keeps_row_positions(rng):
  nnm = jax.jit(lambda u, p: agg.nearest_neighbor_mixing(u, f=F, present=p))
  for m in (11, 8, 5, 2):
    for fill in FILLS:
      x = data(rng)
      present = mask(rng, m)
      got = np.asarray(nnm(with_absent(x, present, fill), present))
      assert np.all(got[~present] == 0.0)
      if m > F:
        np.testing.assert_allclose(got[present], np_nnm(x[present].astype(np.float64), F),
                                   atol=1e-5)
      else:  # m ≤ f: undefined
        assert np.all(np.isnan(got[present]))


def test_weighted_rules_treat_absent_clients_as_weight_zero(rng):
  mean = jax.jit(lambda u, w, p: agg.mean(u, weights=w, present=p))
  trimmed_mean = jax.jit(lambda u, w, p: agg.trimmed_mean(u, f=F, weights=w, present=p))
  # Exactly 5 Weiszfeld updates from the weighted mean (cheap to compile), as in the reference.
  gm = jax.jit(lambda u, w, p: agg.geometric_median(u, weights=w, present=p, maxiter=5, ftol=0.0,
                                                    gtol=0.0))
  for m in (11, 8, 5, 4):
    for fill in FILLS:
      x = data(rng)
      present = mask(rng, m)
      w = rng.uniform(0.5, 2.0, size=N).astype(np.float32)
      u, xs, ws = with_absent(x, present, fill), x[present].astype(np.float64), w[present]
      np.testing.assert_allclose(mean(u, w, present), np_mean(xs, ws), atol=1e-5)
      np.testing.assert_allclose(trimmed_mean(u, w, present),
                                 np_weighted_trimmed_mean(xs, ws.astype(np.float64), F),
                                 atol=1e-5)
      np.testing.assert_allclose(gm(u, w, present), np_weiszfeld(xs, ws, iters=5), atol=1e-5)


# ----------------------------------------------------------------------- the None path
@pytest.mark.parametrize("spec", list(REFERENCES))
def test_all_present_gives_exactly_the_numbers_without_a_mask(rng, spec):
  x = data(rng)
  without = np.asarray(pipeline(spec, presence=False)(x))
  np.testing.assert_array_equal(pipeline(spec)(x, np.ones(N, bool)), without)


# ----------------------------------------------------------------------- batching
@pytest.mark.parametrize("spec", list(REFERENCES))
def test_vmap_over_updates_and_masks_matches_unbatched(rng, spec):
  counts = (11, 9, 7, 5, 3, 11)
  present = np.stack([mask(rng, m) for m in counts])
  x = np.stack([with_absent(data(rng), p, FILLS[i % 3]) for i, p in enumerate(present)])
  run = pipeline(spec)
  batched = np.asarray(jax.jit(jax.vmap(run))(x, present))
  for s in range(len(counts)):
    np.testing.assert_allclose(batched[s], run(x[s], present[s]), rtol=1e-6, atol=1e-6,
                               equal_nan=True, err_msg=f"sample {s}")


# ----------------------------------------------------------------------- configuration errors
@pytest.mark.parametrize("spec,stage", [("bucketing+mean", "bucketing"),
                                        ("centered_clipping", "centered_clipping"),
                                        ("static_clipping+mean", "static_clipping"),
                                        ("nnm+bucketing+trimmed_mean", "bucketing"),
                                        ("meamed", "meamed")])
def test_presence_pipeline_rejects_stages_without_a_mask(spec, stage):
  with pytest.raises(ConfigError, match=rf"'{stage}' does not support client drop-outs.*"
                                        r"stages that do: coordinate_median, geometric_median"):
    agg.get(spec, f=F, presence=True)


def test_a_mask_given_to_a_stage_without_one_raises_at_trace_time(rng):
  x, present = data(rng), mask(rng, 8)
  with pytest.raises(ConfigError, match="'bucketing' does not support client drop-outs"):
    agg.get("bucketing+mean", f=F)(x, present=present)  # the fused stage, built without presence
  with pytest.raises(ConfigError, match="present must be a boolean mask of shape"):
    agg.get("mean", f=F, presence=True)(x, present=present.astype(np.float32))
  with pytest.raises(ConfigError, match="present must be a boolean mask of shape"):
    agg.get("mean", f=F, presence=True)(x, present=present[:-1])


# ----------------------------------------------------------------------- plumbing
def test_server_update_reaches_the_stages_that_take_it(monkeypatch):
  def toward_server(updates, *, server_update):
    return jnp.mean(updates, axis=0) + server_update

  monkeypatch.setitem(registry._RULES, "toward_server", registry._Entry(toward_server, "rule"))
  rule = agg.get("toward_server", f=0)
  assert rule.needs_server_update and not agg.get("mean", f=0).needs_server_update
  assert "server_update" not in agg.options("toward_server")
  x = np.ones((3, 4), np.float32)
  np.testing.assert_allclose(rule(x, server_update=np.full(4, 2.0, np.float32)), np.full(4, 3.0))
  with pytest.raises(ConfigError, match="needs the server's own update"):
    rule(x)


def test_a_stage_with_its_own_state(monkeypatch):
  def running_sum(updates, *, state):
    out = jnp.mean(updates, axis=0) + state
    return out, out

  monkeypatch.setitem(registry._RULES, "running_sum",
                      registry._Entry(running_sum, "rule",
                                      state_init=lambda d, dtype: jnp.full((d,), 10.0, dtype)))
  rule = agg.get("running_sum", f=0)
  state = rule.init(4)
  x = np.ones((3, 4), np.float32)
  out, state, _ = rule.apply(x, state, jax.random.key(0))
  np.testing.assert_allclose(out, np.full(4, 11.0))
  out, state, _ = rule.apply(x, state, jax.random.key(0))
  np.testing.assert_allclose(out, np.full(4, 12.0))
  np.testing.assert_allclose(state[0], np.full(4, 12.0))
