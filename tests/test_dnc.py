"""DnC (Shejwalkar & Houmansadr, NDSS 2021) against a NumPy transcription with an SVD."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_robust import aggregators
from fedjax_robust.aggregators import spectral
from fedjax_robust.errors import ConfigError


def np_dnc(x, key, f, iterations, sub_dim, c=1.0):
  """The paper's loop in float64: for each iteration's coordinates (the same draws as the rule,
  from its keys), the top right singular vector by np.linalg.svd, scores, the n − ⌈c f⌉ lowest;
  the mean of the intersection."""
  n, d = x.shape
  good = set(range(n))
  for k in jax.random.split(key, iterations):
    idx = (np.arange(d) if sub_dim >= d else
           np.asarray(jax.random.choice(k, d, (sub_dim,), replace=False)))
    sub = x[:, idx].astype(np.float64)
    centred = sub - sub.mean(0)
    v = np.linalg.svd(centred, full_matrices=False)[2][0]
    score = (centred @ v) ** 2
    good &= set(np.argsort(score, kind="stable")[:n - int(np.ceil(c * f))].tolist())
  return x[sorted(good)].astype(np.float64).mean(0), good


@pytest.mark.parametrize("sub_dim", [7, 1000])   # a coordinate subset, and all coordinates
def test_matches_numpy_and_removes_the_outliers(sub_dim):
  rng = np.random.default_rng(3)
  n, d, f = 15, 60, 3
  x = rng.normal(size=(n, d)).astype(np.float32)
  x[[2, 11]] += 6.0 * rng.normal(size=d).astype(np.float32)   # two outliers along a direction
  key = jax.random.key(5)
  got = spectral.divide_and_conquer(jnp.asarray(x), key=key, f=f, iterations=4, sub_dim=sub_dim)
  want, good = np_dnc(x, key, f, 4, sub_dim)
  assert good                              # a nonempty intersection: the plain definition
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  if sub_dim >= d:
    assert not {2, 11} & good


def test_nonfinite_rows_are_never_averaged_and_the_rule_is_registered():
  rng = np.random.default_rng(4)
  x = rng.normal(size=(10, 30)).astype(np.float32)
  x[3], x[7] = np.nan, np.inf
  rule = aggregators.get("dnc", f=2, options={"dnc": {"iterations": 3}})
  out, _, _ = rule.apply(jnp.asarray(x), rule.init(30), jax.random.key(0))
  assert np.all(np.isfinite(out))
  np.testing.assert_allclose(out, np.delete(x, [3, 7], axis=0).mean(0), rtol=1e-5, atol=1e-6)
  with pytest.raises(ConfigError, match="iterations"):
    aggregators.get("dnc", f=2, options={"dnc": {"iterations": 0}})
  with pytest.raises(ConfigError, match="needs n >= 7"):   # c·f = 6 rows removed of 6
    aggregators.get("dnc", f=2, options={"dnc": {"c": 3.0}})(jnp.ones((6, 3)))
