"""What the server believes about who fails: its own μ_H model, which may differ from the law
that draws the honest sets.

`config.server_prior` sets it (`kind`):
- "none": the server knows nothing beyond the declared f (every rule as before);
- "mu_h": the server's prior is the law that draws the honest sets (`config.honest_set`);
- "marginals": independent corruption with the given per-client probabilities p_i.
`scale` misspecifies the prior: its corruption probabilities are multiplied by it (clipped to
[0, 1]; for "clusters" the cluster probability π; for "bernoulli" and "marginals" every p_i).

What the server does with it:
- `declared_f = "quantile"`: the rules' f is the (1 − δ)-quantile of the law of b under the prior,
  f = min{k : P(b ≤ k) ≥ 1 − δ} (REFERENCE.md, "Quantile f"), so a rule trims for the corruption
  the server expects rather than a guess. Guarantee: with probability ≥ 1 − δ under the prior,
  b ≤ f, so every (f, κ)-robustness guarantee of the rule holds on that event (if the prior is
  right); the law is exact where `honest_sets.byzantine_count_pmf` is (fixed count, bernoulli,
  beta-Bernoulli, clusters), Monte Carlo otherwise (said in the log).
- `weights = "reliability"`: client weights 1 − p_i (the prior's honesty marginals) passed to the
  weighted rules (mean, trimmed mean, geometric median); `"expected_objective"`: the exact weights
  w_i = E[1{i ∈ S}/|S|] of independent corruption, for which Σ_i w_i L_i = E_S[L_S] (the expected
  honest objective, `honest_sets.expected_objective_weights`): the weighted mean of the clients'
  gradients is then an unbiased estimate of ∇E_S[L_S] when every client is honest, which is what
  these weights optimize. No robustness guarantee is known for the weighted robust rules beyond
  the rule's own weighted form.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from fedjax_robust import honest_sets
from fedjax_robust.errors import ConfigError

KINDS = ("none", "mu_h", "marginals")
DECLARED_F = ("config", "quantile")
WEIGHTS = ("none", "reliability", "expected_objective")
# Monte Carlo draws for the marginals and the law of b of a prior without an exact form.
MONTE_CARLO = 200_000


def spec(config) -> dict[str, Any] | None:
  """The honest_sets spec of the server's prior (None for kind 'none'), misspecified by
  `scale`."""
  prior = config.server_prior
  n = config.num_clients
  if prior.kind == "none":
    return None
  if prior.kind == "marginals":
    if prior.p_per_client is None or len(prior.p_per_client) != n:
      raise ConfigError(f"server_prior.kind='marginals' needs server_prior.p_per_client with one "
                        f"probability per client ({n}), got {prior.p_per_client!r}.")
    out = {"name": "bernoulli", "p": tuple(float(p) for p in prior.p_per_client)}
  else:
    if config.honest_set == "worst_case":
      raise ConfigError("server_prior.kind='mu_h' needs a random μ_H; honest_set='worst_case' is "
                        "not a law. Allowed: kind='marginals' or 'none' with the worst case.")
    from fedjax_robust import config as config_lib  # pylint: disable=g-import-not-at-top
    out = dict(config_lib.honest_set_spec(config))
  if prior.scale != 1.0:
    out = _scaled(out, prior.scale)
  return out


def _scaled(law: dict[str, Any], scale: float) -> dict[str, Any]:
  name = law["name"]
  key = {"bernoulli": "p", "clusters": "pi"}.get(name)
  if key is None:
    raise ConfigError(f"server_prior.scale={scale} misspecifies the corruption probabilities of "
                      f"'bernoulli' and 'clusters' priors; the prior here is {name!r}. Allowed: "
                      "scale=1 with it.")
  value = law.get(key, 0.2 if name == "clusters" else None)
  scaled = np.clip(np.asarray(value, float) * scale, 0.0, 1.0)
  return {**law, key: float(scaled) if scaled.ndim == 0 else tuple(map(float, scaled))}


def marginals(law: dict[str, Any], num_clients: int) -> tuple[np.ndarray, bool]:
  """P(client i corrupted) `[n]` under the prior, and whether it is exact (bernoulli: exact;
  otherwise Monte Carlo over MONTE_CARLO draws, computed once per law)."""
  if law["name"] == "bernoulli":
    return np.broadcast_to(np.asarray(law["p"], float), (num_clients,)).copy(), True
  key = json.dumps({k: (np.asarray(v).tolist() if isinstance(v, np.ndarray) else v)
                    for k, v in law.items()}, sort_keys=True, default=str) + f"/{num_clients}"
  if key not in _MONTE_CARLO_MARGINALS:
    import jax  # pylint: disable=g-import-not-at-top
    masks = np.asarray(honest_sets.sample(jax.random.key(0), law, num_clients=num_clients,
                                          num_samples=MONTE_CARLO))
    _MONTE_CARLO_MARGINALS[key] = 1.0 - masks.mean(0)
  return _MONTE_CARLO_MARGINALS[key].copy(), False


_MONTE_CARLO_MARGINALS: dict[str, np.ndarray] = {}


def quantile_f(law: dict[str, Any], num_clients: int, delta: float) -> tuple[int, bool, float]:
  """f = min{k : P(b ≤ k) ≥ 1 − δ} under `law`; whether the law of b is exact; P(b ≤ f)."""
  pmf, exact = honest_sets.byzantine_count_pmf(law, num_clients=num_clients)
  cdf = np.cumsum(pmf)
  f = int(np.searchsorted(cdf, 1 - delta - 1e-12))
  return f, exact, float(cdf[min(f, len(cdf) - 1)])


def client_weights(law: dict[str, Any], num_clients: int, kind: str) -> np.ndarray:
  """The weights of `kind` ('reliability' or 'expected_objective'), normalized to sum to 1."""
  p, _ = marginals(law, num_clients)
  if kind == "reliability":
    w = 1.0 - p
  else:
    if law["name"] != "bernoulli":
      raise ConfigError("server_prior.weights='expected_objective' uses the exact weights of "
                        f"independent corruption; the prior here is {law['name']!r}. Allowed: "
                        "'reliability' with it, or an independent prior ('marginals', or 'mu_h' "
                        "with honest_set='bernoulli').")
    w = honest_sets.expected_objective_weights(p, num_clients)
  if not np.sum(w) > 0:
    raise ConfigError(f"server_prior gives every client weight 0 (every p_i = 1); weights={kind!r} "
                      "needs a client the server believes may be honest.")
  return w / np.sum(w)


def resolve(config) -> tuple[Any, dict[str, Any] | None]:
  """The config the run uses (f replaced by the prior's quantile when `declared_f='quantile'`)
  and a description of the prior for the log and the summary (None for kind 'none')."""
  prior = config.server_prior
  if prior.kind == "none":
    return config, None
  law = spec(config)
  n = config.num_clients
  info: dict[str, Any] = {"kind": prior.kind, "law": law, "scale": float(prior.scale),
                          "declared_f": prior.declared_f, "weights": prior.weights}
  if prior.declared_f == "quantile":
    f, exact, coverage = quantile_f(law, n, prior.delta)
    if 2 * f >= n:
      raise ConfigError(
          f"server_prior: the {1 - prior.delta:g}-quantile of b under the prior is f={f}, which "
          f"leaves no honest majority (n={n}); allowed: a prior or δ giving f < n/2.")
    info.update({"f": f, "f_from_config": int(config.f), "delta": float(prior.delta),
                 "law_of_b_exact": exact, "p_b_le_f": coverage})
    config = config.copy_and_resolve_references()
    config.f = f
  if prior.weights != "none":
    info["client_weights"] = client_weights(law, n, prior.weights).tolist()
  return config, info


def describe(info: dict[str, Any] | None) -> str:
  """One line on the server's prior and what it changed ('' without one)."""
  if not info:
    return ""
  law = ", ".join(f"{k}={v}" for k, v in info["law"].items() if k != "name")
  text = (f"server prior ({info['kind']}): {info['law']['name']}({law})"
          + (f", misspecified ×{info['scale']:g}" if info["scale"] != 1.0 else ""))
  if "f" in info:
    text += (f"; declared f = {info['f']}, the {1 - info['delta']:g}-quantile of b under the "
             f"prior (P(b ≤ f) = {info['p_b_le_f']:.4f}, "
             f"{'exact law' if info['law_of_b_exact'] else 'Monte Carlo law'}; the config said "
             f"f = {info['f_from_config']})")
  if info["weights"] != "none":
    w = np.asarray(info["client_weights"])
    text += (f"; client weights '{info['weights']}' (min {w.min():.4f}, max {w.max():.4f}, "
             "sum 1) in the weighted rules")
  return text


def cluster_quantile_f(law: dict[str, Any], num_clients: int, delta: float
                       ) -> tuple[np.ndarray, int]:
  """For a prior of clustered corruption: the cluster id of every client and f_clusters =
  min{k : P(K_bad ≤ k) ≥ 1 − δ}, K_bad the number of clusters holding at least one faulty
  client. Cluster c holds one with probability π_c (1 − (1 − q1)^{m_c}) + (1 − π_c)(1 − (1 −
  q0)^{m_c}) (m_c its size), independently across clusters: K_bad is Poisson binomial."""
  if law["name"] != "clusters":
    raise ConfigError(f"cluster_aggregate takes its clusters from a prior of clustered "
                      f"corruption; the prior here is {law['name']!r}. Allowed: honest_set="
                      "'clusters' with server_prior.kind='mu_h', or set aggregator_options."
                      "cluster_aggregate.clusters and .f_clusters.")
  ids = honest_sets.cluster_assignment(num_clients, law.get("num_clusters", 5),
                                       law.get("assignment"))
  num = int(ids.max()) + 1
  pis = np.broadcast_to(np.asarray(law.get("pi", 0.2), float), (num,))
  q1, q0 = law.get("q1", 0.8), law.get("q0", 0.0)
  sizes = np.bincount(ids, minlength=num)
  bad = pis * (1 - (1 - q1) ** sizes) + (1 - pis) * (1 - (1 - q0) ** sizes)
  cdf = np.cumsum(honest_sets.poisson_binomial_pmf(bad))
  return ids, int(np.searchsorted(cdf, 1 - delta - 1e-12))
