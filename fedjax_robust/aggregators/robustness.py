"""(f, κ)-robustness: the empirical coefficient κ̂ of a rule and the published bounds on κ.

A rule F is (f, κ)-robust if for every honest set S of n − f inputs
    ‖F(x_1..x_n) − x̄_S‖² ≤ κ · (1/|S|) Σ_{i∈S} ‖x_i − x̄_S‖²
(Allouah, Farhadkhani, Guerraoui, Gupta, Pinot, Stephan, "Fixing by Mixing: A Recipe for Optimal
Byzantine ML under Heterogeneity", AISTATS 2023, arXiv:2302.01772, Definition 2). κ ≥ f/(n − 2f)
for any rule; `kappa_upper_bound` gives the bound proven for a rule (where one is recorded here),
`kappa_bounds` both bounds with their source for reports, and `empirical_kappa` a lower estimate
of a rule's κ on given honest vectors: the worst ratio over a set of attacks.

Sources of the constants, and how far each could be checked (the primary PDFs were not readable
from where this was written, so no constant is checked against the paper's own text):

- Lower bound f/(n − 2f): Allouah et al. 2023 (AISTATS), Proposition 1. Corroborated by secondary
  sources that restate it (Yang & Li, ByzSGDnm, appendix C: "the lower bound for κ is
  δ/(1 − 2δ)", δ = f/n); and re-derived here: with n − f inputs at 0 and f at v, a rule of finite κ
  must output 0 (the honest set of the n − f zeros has variance 0), which gives the honest set
  {n − 2f zeros, f copies of v} exactly the ratio f/(n − 2f) (tests/test_robustness.py checks
  that every rule here reaches it on that configuration).
- CWTM 6r(1 + r), CWMed and GM 4(1 + r)², Krum 6(1 + r), r = f/(n − 2f): Allouah et al. 2023
  (AISTATS), Table 1 / Proposition 2. The forms r(1 + r), (1 + r)², (1 + r) are corroborated by
  Yang & Li (appendix C, which restates them without the constant factors 6, 4, 6); the factors
  themselves are NOT verified. Their Krum is the n − f − 2-neighbour Krum of Blanchard et al. as
  implemented here (not re-checked).
- F∘NNM ≤ (8f/(n − f))(κ_F + 1) for any (f, κ_F)-robust F: Allouah et al. 2023 (AISTATS), the
  NNM lemma (Lemma 1 in the arXiv version). NOT verified; secondary sources only restate that NNM
  brings any rule to κ = O(f/n).
- F∘ARC ≤ 3κ_F for any (f, κ_F)-robust F: Allouah, Guerraoui, Gupta, Jellouli, Rizk, Stephan,
  "The Vital Role of Gradient Clipping in Byzantine-Resilient Distributed Learning", NeurIPS 2024
  (arXiv:2405.14432), Theorem 3.2, as restated by two of its public reviews ("F∘ARC is
  (f, 3κ)-robust when F is (f, κ)-robust (Theorem 3.2)"); not checked against the paper.
- Multi-Krum: no bound recorded. The code used to give it Krum's 6(1 + r) citing Allouah et al.
  Table 1, but Bareilles, Bouaziz, Fageot, El Mhamdi, "Byzantine Machine Learning: MultiKrum and
  an optimal notion of robustness" (arXiv:2602.03899, 2026) state in their abstract that they give
  "the first proof that MultiKrum is a robust aggregation rule" ("no theoretical guarantees were
  available until now"); their constants could not be retrieved, so None.
- No (f, κ) bound is recorded for the other rules and pre-aggregators.

Each bound, or why none is recorded, lives with its source text in the stage's registry entry
(`registry.entry(name).kappa`, aggregators/registry.py); this module only composes them.
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_robust.aggregators import base
from fedjax_robust.aggregators import registry

def _kappa_fact(stage: str, kind: str) -> registry.Kappa:
  """The stage's recorded κ where it stands as a `kind` ("rule": κ(r); "pre": κ_F -> κ(P∘F)):
  its registry entry's bound or why none (a bound of the other kind, or none declared, reads as
  not recorded)."""
  entry = registry.entry(stage)
  fact = entry.kappa or registry.UNRECORDED_KAPPA
  return registry.UNRECORDED_KAPPA if fact.bound is not None and entry.kind != kind else fact


def _check_n_f(n: int, f: int) -> None:
  if not isinstance(n, (int, np.integer)) or not isinstance(f, (int, np.integer)) or f < 0:
    raise ValueError(f"n and f must be integers with f >= 0, got n={n!r}, f={f!r}.")
  if n <= 2 * f:
    raise ValueError(f"(f, κ)-robustness needs an honest majority n > 2f; got n={n}, f={f} "
                     f"(n − 2f = {n - 2 * f}), where no rule has a finite κ.")


def kappa_lower_bound(n: int, f: int) -> float:
  """No rule is (f, κ)-robust with κ < f/(n − 2f) (Allouah et al., AISTATS 2023, Proposition 1);
  0 for f = 0. Raises ValueError for n ≤ 2f."""
  _check_n_f(n, f)
  return f / (n - 2 * f)


def _upper_with_source(spec: str, n: int, f: int) -> tuple[float | None, str]:
  _check_n_f(n, f)
  *pre, rule = registry.split_spec(spec)
  r = f / (n - 2 * f)
  fact = _kappa_fact(rule, "rule")
  if fact.bound is None:
    return None, f"{rule}: {fact.source}"
  kappa, sources = fact.bound(r), [fact.source]
  for stage in reversed(pre):  # the stage applied first wraps everything after it
    fact = _kappa_fact(stage, "pre")
    if fact.bound is None:
      return None, f"{stage}: {fact.source} (so none for {spec!r})"
    kappa = fact.bound(kappa, n, f)
    sources.append(fact.source)
  return float(kappa), "; ".join(sources)


def kappa_upper_bound(spec: str, n: int, f: int) -> float | None:
  """The published κ of the pipeline `spec`, with r = f/(n − 2f); None where none is recorded.

  Rules: trimmed mean 6r(1 + r), coordinate median and geometric median 4(1 + r)², Krum 6(1 + r)
  (Allouah et al., AISTATS 2023, Table 1 / Proposition 2). Pre-aggregators, each valid for any
  (f, κ_F)-robust F after it and so composable: NNM (8f/(n − f))(κ_F + 1) (Allouah et al. 2023,
  NNM lemma), ARC 3κ_F (Allouah et al., NeurIPS 2024, Theorem 3.2). See the module docstring
  for which constants could be verified (none against the papers' own text) and `kappa_bounds`
  for the source of each value. f = 0 gives the bounds at r = 0. Raises ValueError for n ≤ 2f.
  """
  return _upper_with_source(spec, n, f)[0]


def fewer_faults_factor(n: int, f: int, b: int) -> float:
  """c ≤ 1 such that an (f, κ)-robust rule is (b, κc)-robust against its honest set H of size
  n − b when only b ≤ f inputs are Byzantine: the κ(b) of a draw with b ≤ f (issue 29).

  Lemma (derived here; no published statement found). Let F be (f, κ)-robust, H the honest set,
  N = |H| = n − b ≥ m = n − f, σ²_H = (1/N) Σ_{i∈H} ‖x_i − x̄_H‖². Every S ⊂ H with |S| = m is an
  honest set of size n − f for the definition (the rest of H counts as Byzantine there), so
  ‖F(x) − x̄_S‖² ≤ κσ²_S. Averaging over the m-subsets S of H uniformly, E_S[x̄_S] = x̄_H, and by
  Jensen ‖F(x) − x̄_H‖² ≤ E_S‖F(x) − x̄_S‖² ≤ κ E_S[σ²_S], while sampling m of N without
  replacement gives E_S[σ²_S] = ((m − 1)/m)(N/(N − 1)) σ²_H. Hence

      ‖F(x) − x̄_H‖² ≤ κ · c · σ²_H,   c = (m − 1)N / (m(N − 1))   (c = 1 at b = f; c ≤ 1).

  So the robust D-GD theorems, stated for b = f, hold for a draw with b < f with the same κ
  (theory.bounds: a draw is valid iff b ≤ f), and κc is the tighter coefficient of that draw:
  at n = 10, f = 2 the factor is 0.972 at b = 0 and 0.984 at b = 1. The published κ(f) is
  therefore not what makes a draw with fewer faults better in the bound: its (G², B²), which
  are those of a larger honest set, are. A rule-specific κ(b) (e.g. the trimmed mean's with
  b < f outliers) could be smaller still; none is derived here. Raises ValueError unless
  0 ≤ b ≤ f and n > 2f."""
  _check_n_f(n, f)
  if not isinstance(b, (int, np.integer)) or not 0 <= b <= f:
    raise ValueError(f"b={b!r} must be an integer with 0 <= b <= f={f}.")
  big, m = n - b, n - f
  return 1.0 if big == m else (m - 1) * big / (m * (big - 1))


def kappa_bounds(spec: str, n: int, f: int) -> dict[str, Any]:
  """{"lower": f/(n − 2f), "upper": float | None, "source": str} for reports: the lower bound
  every rule obeys, the published upper bound of `spec` (None where none is recorded), and the
  source text naming the paper and result of each, or why no upper bound is recorded.
  f = 0 gives lower 0 and the upper bounds at r = 0; n ≤ 2f raises ValueError."""
  upper, source = _upper_with_source(spec, n, f)
  lower_source = f"lower f/(n − 2f): {registry.FIXING_BY_MIXING}, Proposition 1"
  return {"lower": kappa_lower_bound(n, f), "upper": upper,
          "source": f"{lower_source}; upper: {source}"}


# ---------------------------------------------------------------------------------------------
# Empirical κ̂.

# Compiled functions by (kind, aggregator, attack names) or (kind, shape): an LRU of bounded size,
# so sweeping many configurations in one process keeps at most this many jitted functions alive
# (an evicted entry drops its jitted function and, with it, jit's executables for it). The old
# eager version compiled anew on every call (a fresh scan per line search) until the process ran
# out of memory maps ("LLVM compilation error: Cannot allocate memory").
_CACHE_SIZE = 64
_CACHE: collections.OrderedDict[tuple[Any, ...], Any] = collections.OrderedDict()
_CACHE_LOCK = threading.Lock()
# Whether each attack (by name) queries the server's rule.
_ADAPTIVE: dict[str, bool] = {}


def clear_compiled_cache(jax_caches: bool = False) -> None:
  """Drops every compiled κ̂ function (e.g. between sweeps, to free their executables).

  The cache is already bounded (`_CACHE_SIZE` entries, least recently used dropped first):
  measured on 40 fresh pipelines of the same shapes in one process, RSS and the process's memory
  maps stayed flat. Each new input shape (n, d, K) also leaves a few entries in JAX's own
  process-wide caches (measured: ~9 memory maps, a few MiB per shape); `jax_caches=True` also
  calls `jax.clear_caches()` to drop those (every jitted function in the process then recompiles
  on its next call)."""
  with _CACHE_LOCK:
    _CACHE.clear()
  if jax_caches:
    jax.clear_caches()


def _squared_norm_parts(v: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(s, q) with ‖v‖² = s²·q, s = max|v_j|, computed without overflow in v's dtype (the product
  is formed in float64 on the host). s is NaN or inf when v is not finite; q = 0 when s = 0."""
  s = jnp.max(jnp.abs(v))
  safe = jnp.where(jnp.isfinite(s) & (s > 0), s, 1.0)
  q = jnp.where(s > 0, jnp.sum(jnp.square(v / safe)), 0.0)
  return s, q


def _cached(cache_key: tuple[Any, ...], build: Callable[[], Callable[..., Any]]):
  with _CACHE_LOCK:
    fn = _CACHE.get(cache_key)
    if fn is not None:
      _CACHE.move_to_end(cache_key)
      return fn
  fn = build()
  with _CACHE_LOCK:
    _CACHE[cache_key] = fn
    while len(_CACHE) > _CACHE_SIZE:
      _CACHE.popitem(last=False)
  return fn


def _model_poisoning(name: str):
  from fedjax_robust import attacks  # pylint: disable=g-import-not-at-top
  attack = attacks.get(name, num_classes=2)
  if attack.poison is None:
    raise ValueError(f"empirical_kappa needs model-poisoning attacks; {name!r} is not one.")
  return attack


def _pad(honest: jax.Array, f: int) -> tuple[jax.Array, jax.Array]:
  m, d = honest.shape
  return (jnp.concatenate([honest, jnp.zeros((f, d), honest.dtype)]), jnp.arange(m + f) >= m)


def _is_adaptive(attack, m: int, d: int, f: int, dtype) -> bool:
  """Whether the attack queries the server's rule: traced abstractly (nothing runs) with an
  `aggregate` that records being called."""
  called = []

  def aggregate(u):
    called.append(True)
    return jnp.zeros(u.shape[1:], u.dtype)

  def run(honest, key):
    padded, byzantine = _pad(honest, f)
    return attack.poison_updates(key, padded, byzantine, aggregate)

  jax.eval_shape(run, jax.ShapeDtypeStruct((m, d), dtype), jax.random.key(0))
  return bool(called)


def _adaptive_fn(aggregator: base.Aggregator, name: str) -> Callable[..., Any]:
  """`jit(vmap)` over the K sets of one adaptive attack (it calls F inside its line search) and
  of F on its output: (s, q) per set with ‖F − x̄_S‖² = s²q."""
  attack = _model_poisoning(name)

  def one_set(honest, key, f):
    padded, byzantine = _pad(honest, f)
    # Omniscient attacker: sees the honest rows and queries the server's rule with the round's
    # key (the adaptive attacks line-search through it), as in the simulator.
    poisoned = attack.poison_updates(key, padded, byzantine, lambda u: aggregator(u, key))
    return _squared_norm_parts(aggregator(poisoned, key) - jnp.mean(honest, axis=0))

  def batched(honest, key, f):
    return jax.vmap(lambda h: one_set(h, key, f))(honest)

  return jax.jit(batched, static_argnums=2)


def _oblivious_fn(aggregator: base.Aggregator, names: tuple[str, ...]) -> Callable[..., Any]:
  """`jit` of the attacks that do not query F: each builds its poisoned `[K, n, d]` (vmapped
  over the sets), and F runs once, vmapped over all A·K poisoned matrices, so the rule is traced
  and compiled once for all of them. (s, q) of shape `[A, K]`."""
  poisons = [_model_poisoning(name) for name in names]

  def batched(honest, key, f):
    def poison_all(h):
      padded, byzantine = _pad(h, f)
      return jnp.stack([a.poison_updates(key, padded, byzantine, None) for a in poisons])

    poisoned = jax.vmap(poison_all)(honest)                      # [K, A, n, d]
    k, a = poisoned.shape[:2]
    out = jax.vmap(lambda u: aggregator(u, key))(poisoned.reshape((k * a,) + poisoned.shape[2:]))
    diff = out.reshape(k, a, -1) - jnp.mean(honest, axis=1)[:, None, :]
    s, q = jax.vmap(jax.vmap(_squared_norm_parts))(diff)
    return s.T, q.T

  return jax.jit(batched, static_argnums=2)


def _variance_parts(honest: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per set (s, q) with var_S = s²·q, `honest [K, m, d]`."""
  centred = honest - jnp.mean(honest, axis=1, keepdims=True)
  s, q = jax.vmap(_squared_norm_parts)(centred)
  return s, q / honest.shape[1]


def _combine(s: jax.Array, q: jax.Array) -> np.ndarray:
  s = np.asarray(s, np.float64)
  q = np.asarray(q, np.float64)
  with np.errstate(over="ignore", invalid="ignore"):
    return np.where(np.isfinite(s), s * s * q, np.inf)


def empirical_kappa(aggregator: base.Aggregator, honest: Any, f: int,
                    attack_names: Sequence[str] | None = None, *,
                    key: jax.Array | None = None) -> dict[str, Any]:
  """κ̂ = max over attacks of ‖F(honest ∪ f Byzantine rows) − x̄_S‖² / var_S.

  Args:
    aggregator: the pipeline F (e.g. `aggregators.get("nnm+trimmed_mean", f=f)`).
    honest: one honest set `[m, d]` (m = n − f) or a batch of K sets `[K, m, d]`.
    f: the number of Byzantine rows appended to each set (n = m + f).
    attack_names: attacks by name from `fedjax_robust.attacks` (all model-poisoning attacks by
      default, the line-searched `optimal_alie` and `optimal_ipm` included). Each fills the f
      Byzantine rows knowing the honest ones and, for the adaptive ones, querying F with `key`.
    key: the round's key, given to the attack and to F (key 0 if None); the same for every set.

  Returns:
    The ratio per attack and their maximum under "kappa": Python floats for one `[m, d]` set,
    float64 arrays `[K]` for a batch. A ratio is +inf where the attack makes the output
    non-finite (or the error > 0 with var_S = 0) and NaN where var_S = 0 and the error is 0;
    "kappa" ignores NaN ratios unless every attack gives NaN.

  Batched and jitted: each adaptive attack (one that queries F: `optimal_alie`, `optimal_ipm`)
  runs as one `jax.jit(jax.vmap(...))` over the K sets, and the other attacks together as one
  jitted function that builds their poisoned matrices and applies F once, vmapped over all of
  them (F is traced and compiled once for the group instead of once per attack; the values are
  the same). Compiled once per (aggregator object, attack group, shapes, f) and kept in a bounded
  LRU cache (`clear_compiled_cache` empties it): reuse the same aggregator object across calls to
  reuse the compilations. Measured (n = 25, f = 5, d = 2000, K = 16, all 12 model-poisoning
  attacks, 2 CPU cores shared with other work): geometric median 9.4 s on the first call (nearly
  all compilation), 0.27 s once compiled, where the old eager loop took 329 s; NNM + trimmed mean
  7.7 s and 0.36 s, old 69 s; identical κ̂ (the old loop ran out of memory maps when both rules
  shared a process). Norms are formed
  without overflow (a finite but huge output gives a huge finite ratio, combined in float64 on
  the host); the aggregation itself runs in the input's dtype.
  """
  from fedjax_robust import attacks  # pylint: disable=g-import-not-at-top
  honest = jnp.asarray(honest)
  if honest.ndim not in (2, 3):
    raise ValueError(f"honest must be [m, d] or [K, m, d], got shape {honest.shape}.")
  if not isinstance(f, (int, np.integer)) or f < 0:
    raise ValueError(f"f must be a non-negative int, got {f!r}.")
  single = honest.ndim == 2
  batch = honest[None] if single else honest
  names = list(attack_names or attacks.model_poisoning_names())
  if not names:
    raise ValueError("empirical_kappa needs at least one attack.")
  key = jax.random.key(0) if key is None else key
  variance = _combine(*_cached(("variance", batch.shape, batch.dtype),
                               lambda: jax.jit(_variance_parts))(batch))
  ratios = {}
  _, m, d = batch.shape
  f = int(f)
  adaptive = {}
  for name in dict.fromkeys(names):
    if name not in _ADAPTIVE:
      _ADAPTIVE[name] = _is_adaptive(_model_poisoning(name), m, d, f, batch.dtype)
    adaptive[name] = _ADAPTIVE[name]
  errors = {}
  oblivious = tuple(name for name in adaptive if not adaptive[name])
  if oblivious:
    fn = _cached(("oblivious", aggregator, oblivious),
                 lambda: _oblivious_fn(aggregator, oblivious))
    for name, error in zip(oblivious, _combine(*fn(batch, key, f))):
      errors[name] = error
  for name in adaptive:
    if adaptive[name]:
      fn = _cached(("adaptive", aggregator, name), lambda: _adaptive_fn(aggregator, name))
      errors[name] = _combine(*fn(batch, key, f))
  with np.errstate(divide="ignore", invalid="ignore"):
    for name in names:
      ratios[name] = np.where(np.isinf(errors[name]), np.inf, errors[name] / variance)
  kappa = np.fmax.reduce(np.stack(list(ratios.values())), axis=0)  # NaN only if all are NaN
  out = {"kappa": kappa, **ratios}
  if single:
    return {k: float(v[0]) for k, v in out.items()}
  return out
