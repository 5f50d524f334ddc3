"""Aggregators by name and by composition.

    get("nnm+trimmed_mean", f=3)                       # a spec: pre-aggregators '+' one rule
    chain("bucketing", "geometric_median", f=3, options={"bucketing": {"bucket_size": 2}})
    chain(my_preaggregator, functools.partial(trimmed_mean, f=3))   # plain functions too

Each stage is called with what its function asks for, by keyword: `f` (the declared number of
Byzantine clients), `key` (randomized stages: a key per call, from the round's key), `center`
(stateful stages: the state carried across rounds, here the previous aggregate), `state` (a
stage registered with a `state_init`: its own state, the function returns `(out, new_state)`),
`weights` (client weights, for stages with a weighted form), `present` (client drop-outs: a
boolean `[n]`, True for the clients whose row arrived; absent rows may hold any value and have
no influence, and the rows keep their positions through the pre-aggregators, so every stage
gets the same mask), and the server's own inputs (`SERVER_INPUTS`): `server_update` (a `[d]`
update the server computed itself, e.g. FLTrust's on its root data), `representations` (each
row's model's penultimate features on the root inputs, `[n, m, h]`: FLARE), `global_params` (the
model the round started from, `[d]`: FLDetector, CRFL). A `state_init` with a `num_clients`
keyword sizes a per-client state (`init(d, dtype, num_clients=n)`). Options are checked against
the function's other keyword arguments.

Every pipeline reports its communication per round (aux "secure_averages", "numbers_sent",
`communication`): only `mean`, `geometric_median` and `rfa_one_step` used alone can run under
secure aggregation (`SECURE_AVERAGES`); every other rule, and every chain with a pre-aggregator,
needs each update in the clear.

Stages may report scalar diagnostics (the pipeline's `aux`): "gm_iterations" (geometric
median), "clipped_share" (every clipping stage: the share of rows it clipped, see
`clipping.Clipped`). When two stages report the same name, the later one's is
"<stage name>.<name>" (e.g. "centered_clipping.clipped_share" after static clipping).

Each stage's facts live in its entry (`entry(name)`): its published (f, κ) bound or why none
(`kappa`, read by robustness.py), its secure averages per round (`secure_averages`) and its ByzFL
equivalent (`byzfl`, read by benchmark.py and byzfl_loop.py).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Mapping

import chex
import jax
import jax.numpy as jnp

from fedjax_robust import domains as D
from fedjax_robust.aggregators import base
from fedjax_robust.errors import ConfigError
from fedjax_robust.aggregators.averaging import mean
from fedjax_robust.aggregators import backdoor_defences
from fedjax_robust.aggregators.bucketing import bucketing
from fedjax_robust.aggregators.bucketing import bucketing_mean
from fedjax_robust.aggregators.bulyan import bulyan
from fedjax_robust.aggregators import clustering
from fedjax_robust.aggregators import fldetector
from fedjax_robust.aggregators.fltrust import fltrust_with_share
from fedjax_robust.aggregators import prior_aware
from fedjax_robust.aggregators import clipping
from fedjax_robust.aggregators.coordinatewise import coordinate_median
from fedjax_robust.aggregators.coordinatewise import majority_vote
from fedjax_robust.aggregators.coordinatewise import meamed
from fedjax_robust.aggregators.coordinatewise import phocas
from fedjax_robust.aggregators.coordinatewise import trimmed_mean
from fedjax_robust.aggregators.geometric_median import rfa_one_step
from fedjax_robust.aggregators.geometric_median import weiszfeld
from fedjax_robust.aggregators.krum import krum
from fedjax_robust.aggregators.krum import multi_krum
from fedjax_robust.aggregators import model_aware
from fedjax_robust.aggregators.minimum_diameter import minimum_diameter_averaging
from fedjax_robust.aggregators.nearest_neighbors import monna
from fedjax_robust.aggregators.nearest_neighbors import nearest_neighbor_mixing
from fedjax_robust.aggregators.spectral import caf
from fedjax_robust.aggregators.spectral import divide_and_conquer
from fedjax_robust.aggregators.spectral import smea

_CALL_ARGS = ("f", "key", "center", "weights", "present", "server_update", "state",
              "representations", "global_params")
# What the server computes itself and gives the stages that ask for it by keyword (each stage's
# `needs`; the simulator provides them, `training.Simulator.round`).
SERVER_INPUTS = {
    "server_update": "the server's own update on its root data ([d])",
    "representations": ("each client's model's penultimate-layer features on the server's root "
                        "inputs ([n, m, h]; a model with a representation layer and root data)"),
    "global_params": "the global model the round started from ([d])",
}


@dataclasses.dataclass(frozen=True)
class Kappa:
  """A stage's published (f, κ)-robustness bound (`robustness.kappa_upper_bound`), or why none
  is recorded.

  `bound`: for a rule, κ(r) with r = f/(n − 2f); for a pre-aggregator P, the map
  (κ_F, n, f) -> κ(P∘F), valid for any (f, κ_F)-robust rule F after it. None: no bound, and
  `source` says why; otherwise `source` names the paper and result, and how far the constant was
  checked (robustness.py's docstring gives the details)."""
  bound: Callable[..., float] | None
  source: str


def _f_only(f: int, options: Mapping[str, Any]) -> dict[str, Any]:
  del options
  return {"f": f}


def _no_args(f: int, options: Mapping[str, Any]) -> dict[str, Any]:
  del f, options
  return {}


@dataclasses.dataclass(frozen=True)
class ByzFL:
  """The stage's equivalent in ByzFL 0.0.x (`pip install byzfl`; tested with 0.0.11): the class
  `byzfl.<name>`, built with `byzfl.<name>(**args(f, options))`, options being this stage's own
  (as in `chain`'s `options[name]`; a missing one takes the default written in `args`).
  `benchmark` builds ByzFL's numpy pipeline from it; `byzfl_loop` gives ByzFL's own loop the
  class names (its loop passes each class {"f": f} alone)."""
  name: str
  args: Callable[[int, Mapping[str, Any]], dict[str, Any]] = _f_only


@dataclasses.dataclass(frozen=True)
class _Entry:
  """One registered stage and every fact about it (adding a rule touches its module, this entry,
  its NumPy reference in numpy_reference.py and its tests; BUILD.md, "Adding a rule")."""
  fn: Callable[..., Any]
  kind: str  # "rule" or "pre"
  # Turns the function's output into (out, aux); most functions return the array alone.
  split_aux: Callable[[Any], tuple[jax.Array, Mapping[str, jax.Array]]] = lambda out: (out, {})
  # The declared domain of every option (checked by `chain`/`get` before anything is traced).
  domains: Mapping[str, D.Domain] = dataclasses.field(default_factory=dict)
  # A stage with its own state across rounds: `state_init(d, dtype)` gives the first one, the
  # function is called with `state=` and returns `(out, new_state)` (before `split_aux`). A
  # state_init with a `num_clients` keyword gets the pipeline's `init(..., num_clients=n)`.
  state_init: Callable[..., Any] | None = None
  # A state indexed by client (row i of every round is client i: FoolsGold's history, FLDetector's
  # previous updates): refused where the rows are not the same clients every round (client
  # sampling without replacement gathers m rows; secure aggregation's groups).
  per_client_state: bool = False
  # Its published (f, κ)-robustness bound, or why none is recorded (every registered stage
  # declares one; `robustness.kappa_upper_bound` reads it).
  kappa: Kappa | None = None
  # A rule that runs under secure aggregation when used alone: its secure averages per round
  # from its aux (see SECURE_AVERAGES, `communication`); None: it needs each update in the clear.
  secure_averages: Callable[[Mapping[str, jax.Array]], jax.Array] | None = None
  # Its ByzFL equivalent (`benchmark`, `byzfl_loop`); None: ByzFL 0.0.11 has none here.
  byzfl: ByzFL | None = None

  @property
  def params(self):
    return inspect.signature(self.fn).parameters

  @property
  def options(self) -> dict[str, Any]:
    """Keyword options with their defaults (what a config may set)."""
    return {k: p.default for k, p in self.params.items()
            if p.kind is p.KEYWORD_ONLY and k not in _CALL_ARGS}


_SUBSETS = D.Int(1, note="the most subsets an exact search may enumerate")

# Communication (RFA's accounting, Pillutla, Kakade, Harchaoui, IEEE TSP 2022): a rule whose
# output the server can get from weighted sums of the rows runs under secure aggregation (only
# Σ_i w_i x_i and Σ_i w_i are revealed, Bonawitz et al., CCS 2017), and costs per round the
# number of secure averages below; every other rule, and every chain with a pre-aggregator,
# needs each update in the clear (m uploads of d numbers). One secure average of m clients'
# d-vectors sends m·(d + ⌈log₂ m⌉) numbers: O(m log m + m·d), O(log m + d) per client, with the
# protocol of Bell, Bonawitz, Gascón, Lepoint, Raykova, "Secure single-server aggregation with
# (poly)logarithmic overhead", CCS 2020 (the constant taken as 1); Bonawitz et al.'s 2017
# protocol costs more, quadratically in m (server communication O(m² + m·d), client
# computation O(m² + m·d), server computation O(m²·d)). Every pipeline reports both per round
# (aux "secure_averages", "numbers_sent"). Each such rule declares its count in its entry
# (`_Entry.secure_averages`); SECURE_AVERAGES, after the table, collects them.


def communication(name: str, aux: Mapping[str, jax.Array], m: jax.Array, d: int
                  ) -> dict[str, jax.Array]:
  """This round's secure averages and numbers sent for pipeline `name` (see SECURE_AVERAGES)
  with m clients sending d-vectors."""
  m = jnp.asarray(m, jnp.float32)
  entry_ = _RULES.get(name)
  if entry_ is not None and entry_.secure_averages is not None:
    calls = entry_.secure_averages(aux)
    log_m = jnp.ceil(jnp.log2(jnp.maximum(m, 1.0)))
    return {"secure_averages": calls, "numbers_sent": calls * m * (d + log_m)}
  return {"secure_averages": jnp.float32(0), "numbers_sent": m * d}


def _clipped_share(result: clipping.Clipped):
  """Clipping rules report the share of rows they clipped (see `clipping.Clipped`)."""
  return result.value, {"clipped_share": result.clipped_share}


def _kept_share(result: clustering.Filtered):
  """Filtering rules report the share of rows they kept (see `clustering.Filtered`)."""
  return result.value, {"kept_share": result.kept_share}


# (f, κ)-robustness (`robustness.py`; its docstring says how far each constant could be checked:
# none against the papers' own text). Every stage declares its published bound or why none is
# recorded (`_Entry.kappa`).
FIXING_BY_MIXING = ("Allouah, Farhadkhani, Guerraoui, Gupta, Pinot, Stephan, 'Fixing by Mixing', "
                    "AISTATS 2023 (arXiv:2302.01772)")
ARC_PAPER = ("Allouah, Guerraoui, Gupta, Jellouli, Rizk, Stephan, 'The Vital Role of Gradient "
             "Clipping in Byzantine-Resilient Distributed Learning', NeurIPS 2024 "
             "(arXiv:2405.14432)")
UNRECORDED_KAPPA = Kappa(None, "no published (f, κ) bound recorded")


def _no_kappa(why: str) -> Kappa:
  return Kappa(None, why)


# The options of the rules built on the posterior of posterior_filter.
_POSTERIOR_DOMAINS = {
    "prior_honest": D.Tuple(D.PROBABILITY, 1, optional=True,
                            note="one P(honest) per client; None: from server_prior"),
    "iterations": D.POSITIVE_INT,
    "faulty_scale": D.Float(1, low_open=True,
                            note="the faulty density's scale over the honest one"),
    "coupling": D.Choice("prior", "none"),
    "prior_coupling": D.Tuple(D.Tuple(D.FINITE, 1), 1, optional=True,
                              note="[n, n] couplings; None: from server_prior"),
    "mean_field_sweeps": D.POSITIVE_INT}

_RULES: dict[str, _Entry] = {
    "mean": _Entry(
        mean, "rule",
        kappa=_no_kappa("the mean is not (f, κ)-robust for any finite κ when f ≥ 1"),
        secure_averages=lambda aux: jnp.float32(1), byzfl=ByzFL("Average", _no_args)),
    "coordinate_median": _Entry(
        coordinate_median, "rule",
        kappa=Kappa(lambda r: 4 * (1 + r) ** 2,
                    f"CWMed κ = 4(1 + r)²: {FIXING_BY_MIXING}, Table 1 / Proposition 2 (form "
                    "corroborated; the factor 4 unverified)"),
        byzfl=ByzFL("Median", _no_args)),
    "trimmed_mean": _Entry(
        trimmed_mean, "rule",
        kappa=Kappa(lambda r: 6 * r * (1 + r),
                    f"CWTM κ = 6r(1 + r): {FIXING_BY_MIXING}, Table 1 / Proposition 2 (form "
                    "corroborated by a secondary restatement; the factor 6 unverified)"),
        byzfl=ByzFL("TrMean")),
    "meamed": _Entry(meamed, "rule",
                     kappa=_no_kappa("no published (f, κ) bound found for MeaMed"),
                     byzfl=ByzFL("Meamed")),
    "phocas": _Entry(phocas, "rule",
                     kappa=_no_kappa("no published (f, κ) bound found for Phocas")),
    "majority_vote": _Entry(majority_vote, "rule", kappa=UNRECORDED_KAPPA),
    "geometric_median": _Entry(
        weiszfeld, "rule", lambda r: (r.median, {"gm_iterations": r.num_iterations}),
        {"nu": D.POSITIVE, "maxiter": D.Int(1, note="0 would make the rule the mean"),
         "ftol": D.NONNEGATIVE, "gtol": D.NONNEGATIVE},
        kappa=Kappa(lambda r: 4 * (1 + r) ** 2,
                    f"GM κ = 4(1 + r)²: {FIXING_BY_MIXING}, Table 1 / Proposition 2 (form "
                    "corroborated; the factor 4 unverified; for the exact geometric median, "
                    "which Weiszfeld approximates)"),
        # z_0 (the weighted mean) and one secure average per Weiszfeld update.
        secure_averages=lambda aux: 1 + aux["gm_iterations"].astype(jnp.float32),
        # ByzFL's starts at 0 with ν = 0.1: its output then differs from ours.
        byzfl=ByzFL("GeometricMedian", lambda f, o: {"T": int(o.get("maxiter", 100))})),
    "krum": _Entry(
        krum, "rule",
        kappa=Kappa(lambda r: 6 * (1 + r),
                    f"Krum κ = 6(1 + r): {FIXING_BY_MIXING}, Table 1 / Proposition 2 (form "
                    "corroborated; the factor 6 unverified)"),
        byzfl=ByzFL("Krum")),  # ByzFL's counts n − f − 1 neighbours, ours n − f − 2
    "multi_krum": _Entry(multi_krum, "rule",
                         domains={"m": D.Int(1, optional=True, note="None: n − f; at most n")},
                         kappa=_no_kappa(
                             "no bound recorded: not covered by Allouah et al. 2023; Bareilles, "
                             "Bouaziz, Fageot, El Mhamdi (arXiv:2602.03899, 2026) prove one, "
                             "constants not retrieved"),
                         byzfl=ByzFL("MultiKrum")),
    "minimum_diameter_averaging": _Entry(
        minimum_diameter_averaging, "rule", domains={"max_subsets": _SUBSETS},
        kappa=_no_kappa("no published (f, κ) bound found for MDA"), byzfl=ByzFL("MDA")),
    "monna": _Entry(monna, "rule", domains={"reference_index": D.Int(0, note="< n")},
                    kappa=_no_kappa("no published (f, κ) bound found for MoNNA"),
                    byzfl=ByzFL("MoNNA")),
    "rfa_one_step": _Entry(rfa_one_step, "rule",
                           domains={"nu": D.POSITIVE}, kappa=UNRECORDED_KAPPA,
                           secure_averages=lambda aux: jnp.float32(1)),
    "centered_clipping": _Entry(
        clipping.centered_clipping_with_share, "rule", _clipped_share,
        domains={"tau": D.POSITIVE,
                 "iterations": D.Int(1, note="0 would return the initial centre every round"),
                 "tau_units": D.Choice(
                     *clipping.TAU_UNITS,
                     note="'published_momentum': τ of Karimireddy et al.'s code, for their "
                     "momentum buffers; config.aggregator_options converts it to update units, "
                     "τ·client_lr·(1 − client_momentum)·local_steps")},
        kappa=_no_kappa("no (f, κ) bound: centered clipping is analysed under the (δ, c)-ARAgg "
                        "definition of Karimireddy, He, Jaggi, with a state-dependent centre"),
        byzfl=ByzFL("CenteredClipping", lambda f, o: {"L": int(o.get("iterations", 3)),
                                                      "tau": float(o.get("tau", 10.0))})),
    "bulyan": _Entry(bulyan, "rule",
                     kappa=_no_kappa("no published (f, κ) bound found for Bulyan")),
    "caf": _Entry(caf, "rule", kappa=_no_kappa("no published (f, κ) bound found for CAF"),
                  byzfl=ByzFL("CAF")),
    "smea": _Entry(smea, "rule", domains={"max_subsets": _SUBSETS},
                   kappa=_no_kappa("no published (f, κ) bound found for SMEA"),
                   byzfl=ByzFL("SMEA")),
    "dnc": _Entry(divide_and_conquer, "rule", domains={
        "iterations": D.POSITIVE_INT, "sub_dim": D.POSITIVE_INT,
        "c": D.Float(0, note="removes ⌈c·f⌉ rows per iteration; c·f < n")},
        kappa=UNRECORDED_KAPPA),
    "signguard": _Entry(clustering.signguard_with_share, "rule", _kept_share, domains={
        "lower": D.Float(0, 1, note="keep ‖x_i‖/median ≥ lower"),
        "upper": D.Float(1, note="keep ‖x_i‖/median ≤ upper"),
        "coordinate_fraction": D.Float(0, 1, low_open=True,
                                       note="share of coordinates of the sign statistics")},
        kappa=UNRECORDED_KAPPA),
    "clipped_clustering": _Entry(
        clustering.clipped_clustering_with_share, "rule", _kept_share,
        domains={"history": D.Int(1, note="norms kept for the clipping median; >= n")},
        state_init=clustering.clipped_clustering_init, kappa=UNRECORDED_KAPPA),
    "flame": _Entry(clustering.flame_with_share, "rule", _kept_share,
                    domains={"noise_lambda": D.NONNEGATIVE}, kappa=UNRECORDED_KAPPA),
    "fltrust": _Entry(fltrust_with_share, "rule", _kept_share, kappa=UNRECORDED_KAPPA),
    "foolsgold": _Entry(
        backdoor_defences.foolsgold_with_share, "rule", _kept_share,
        domains={"kappa": D.POSITIVE,
                 "clients": D.Int(1, optional=True, note=(
                     "the number of client rows n, which sizes the per-client history; None: "
                     "the pipeline's num_clients (the simulator's n), else the first call"))},
        state_init=backdoor_defences.foolsgold_init, per_client_state=True,
        kappa=_no_kappa("no (f, κ) bound: FoolsGold weighs clients by the similarity of their "
                        "histories, and f rows that are not alike keep their full weight")),
    "robust_lr": _Entry(
        backdoor_defences.robust_lr_with_share, "rule",
        lambda r: (r.value, {"flipped_share": r.flipped_share}),
        domains={"threshold": D.Int(1, optional=True, note="the sign vote |Σ sign| below which "
                                    "a coordinate's rate is flipped; at most n; None: f + 1")},
        kappa=_no_kappa("no (f, κ) bound: the output is the mean up to per-coordinate signs, "
                        "and f rows move the mean without bound")),
    "weak_dp": _Entry(
        backdoor_defences.weak_dp_with_share, "rule", _clipped_share,
        domains={"threshold": D.POSITIVE,
                 "sigma": D.Float(0, note="the noise's standard deviation per coordinate")},
        kappa=_no_kappa(f"no bound: the mean of statically clipped rows is not (f, κ)-robust "
                        f"({ARC_PAPER}, Section 3); the noise comes on top")),
    "flare": _Entry(model_aware.flare_with_share, "rule", _kept_share, domains={
        "neighbors": D.Int(1, optional=True, note="None: ⌊n/2⌋ − 1, the authors' code; at most "
                           "n − 1"),
        "temperature": D.Float(0, low_open=True, note="τ of the trust softmax exp(c/(τ c̄))"),
        "gamma": D.Float(0, low_open=True, optional=True,
                         note="the Gaussian kernel's exp(−γ‖u − v‖²); None: 1/h")},
        kappa=UNRECORDED_KAPPA),
    "crfl": _Entry(model_aware.crfl, "rule", domains={
        "model_norm": D.Float(0, low_open=True, note="ρ: the global model's norm after clipping"),
        "sigma": D.Float(0, low_open=True, note="σ of the Gaussian noise added to the model")},
        kappa=UNRECORDED_KAPPA),
    "fldetector": _Entry(
        fldetector.fldetector_with_share, "rule", _kept_share,
        domains={"window": D.Int(1, note="rounds of L-BFGS pairs and of scores (paper: 10)"),
                 "references": D.Int(1, note="uniform reference sets of the gap statistic"),
                 "base": D.Choice(*fldetector.BASES, note="the rule over the rows kept"),
                 "warmup": D.Int(0, note="rounds before the first scored one")},
        state_init=fldetector.fldetector_init, per_client_state=True,
        kappa=_no_kappa("no (f, κ) bound: FLDetector excludes the clients its detector flags, "
                        "with no guarantee on the rows it keeps")),
    "posterior_filter": _Entry(
        prior_aware.posterior_filter_stage, "rule",
        lambda r: (r.value, {"honest_mass": r.honest_mass}),
        domains=_POSTERIOR_DOMAINS,
        kappa=UNRECORDED_KAPPA),
    "cluster_aggregate": _Entry(prior_aware.cluster_aggregate_stage, "rule", domains={
        "clusters": D.Tuple(D.NONNEGATIVE_INT, 1, optional=True,
                            note="one cluster id per client; None: from the server's prior"),
        "f_clusters": D.Int(0, optional=True, note="clusters trimmed from each end; None: the "
                            "prior's quantile"),
        "inner": D.Choice("mean", "median")}, kappa=UNRECORDED_KAPPA),
    "posterior_trim": _Entry(
        prior_aware.posterior_trim_stage, "rule",
        lambda r: (r.value, {"trimmed": r.trimmed.astype(jnp.float32)}),
        domains={**_POSTERIOR_DOMAINS,
                 "delta": D.Float(0, 1, low_open=True, high_open=True,
                                  note="the posterior P(b > t) tolerated")},
        kappa=_no_kappa("no (f, κ) bound: the trim level is chosen from the data each round "
                        "(κ_t = 6r(1 + r) at r = t/(n − 2t) holds only when b ≤ t)")),
    "adaptive_trim": _Entry(
        prior_aware.adaptive_trim_stage, "rule",
        lambda r: (r.value, {"removed": r.num_removed.astype(jnp.float32)}),
        domains={"gap_factor": D.Float(1, note="the largest distance gap must exceed it")},
        kappa=UNRECORDED_KAPPA),
    "nearest_neighbor_mixing": _Entry(
        nearest_neighbor_mixing, "pre",
        kappa=Kappa(lambda kappa, n, f: 8 * f / (n - f) * (kappa + 1),
                    f"F∘NNM ≤ (8f/(n − f))(κ_F + 1): {FIXING_BY_MIXING}, NNM lemma (Lemma 1 of "
                    "the arXiv version; unverified)"),
        byzfl=ByzFL("NNM")),
    "bucketing": _Entry(
        bucketing, "pre", domains={"bucket_size": D.POSITIVE_INT},
        kappa=_no_kappa("no deterministic (f, κ) bound: bucketing's guarantees (Karimireddy, He, "
                        "Jaggi, ICLR 2022) hold in expectation over the random buckets"),
        byzfl=ByzFL("Bucketing", lambda f, o: {"s": int(o.get("bucket_size", 2))})),
    "static_clipping": _Entry(
        clipping.static_clipping_with_share, "pre", _clipped_share,
        domains={"threshold": D.POSITIVE},
        kappa=_no_kappa(f"no bound: static clipping breaks (f, κ)-robustness ({ARC_PAPER}, "
                        "Section 3)"),
        byzfl=ByzFL("Clipping", lambda f, o: {"c": float(o.get("threshold", 2.0))})),
    "adaptive_robust_clipping": _Entry(
        clipping.adaptive_robust_clipping_with_share, "pre", _clipped_share,
        kappa=Kappa(lambda kappa, n, f: 3 * kappa,
                    f"F∘ARC ≤ 3κ_F: {ARC_PAPER}, Theorem 3.2 (as restated by its public "
                    "reviews; unverified against the paper)"),
        byzfl=ByzFL("ARC")),
}

# The rules that run under secure aggregation used alone, with their secure averages per round
# (each declared in its entry, `_Entry.secure_averages`; `communication` reads the entry).
SECURE_AVERAGES: dict[str, Callable[[Mapping[str, jax.Array]], jax.Array]] = {
    name: e.secure_averages for name, e in _RULES.items() if e.secure_averages is not None}
_ALIASES = {"nnm": "nearest_neighbor_mixing", "cwmed": "coordinate_median",
            "median": "coordinate_median", "cwtm": "trimmed_mean", "gm": "geometric_median",
            "rfa": "geometric_median", "mda": "minimum_diameter_averaging",
            "cc": "centered_clipping", "arc": "adaptive_robust_clipping",
            "clipping": "static_clipping"}


# A pre-aggregator followed by "mean" runs as one function that computes the same value without
# building the pre-aggregator's `[n, d]` output (clipping then averaging: 2 reads instead of 4
# reads and a write; bucketing then averaging: one matrix-vector product). It takes the pre-aggregator's options and the mean's `weights`.
_FUSED_WITH_MEAN: dict[str, Callable[..., Any]] = {
    "bucketing": bucketing_mean,
    "static_clipping": clipping.static_clipping_mean_with_share,
    "adaptive_robust_clipping": clipping.adaptive_robust_clipping_mean_with_share,
}


def names(kind: str | None = None) -> list[str]:
  """Registered names, optionally only rules ("rule") or pre-aggregators ("pre")."""
  return sorted(k for k, e in _RULES.items() if kind is None or e.kind == kind)


def entry(name: str) -> _Entry:
  """The registry entry of a stage (a registered name or an alias): its function, kind, options'
  domains and the facts about it (`kappa`, `secure_averages`, `byzfl`)."""
  return _RULES[canonical_name(name)]


def options(name: str) -> dict[str, Any]:
  """The keyword options of a registered stage and their defaults."""
  return _RULES[canonical_name(name)].options


def option_domains(name: str) -> dict[str, D.Domain]:
  """The declared domain of each option of a registered stage."""
  return dict(_RULES[canonical_name(name)].domains)


def canonical_name(name: str) -> str:
  """The registered name for `name` or an alias; a clear error for an unknown name."""
  if not isinstance(name, str):
    raise ConfigError(f"an aggregator name must be a string, got {name!r}.")
  if not name.strip():
    raise ConfigError("empty aggregator name: a '+' must join pre-aggregators to a rule, as in "
                      "'nnm+trimmed_mean' (nothing may stand empty before or after a '+').")
  name = _ALIASES.get(name.strip(), name.strip())
  if name not in _RULES:
    raise ConfigError(
        f"unknown aggregator {name!r}; rules: {', '.join(names('rule'))}; pre-aggregators: "
        f"{', '.join(names('pre'))}; aliases: {', '.join(f'{a}={c}' for a, c in _ALIASES.items())}."
        " Chain pre-aggregators before a rule with '+', e.g. 'nnm+trimmed_mean'.")
  return name


def split_spec(spec: str) -> list[str]:
  """'nnm+trimmed_mean' -> ['nearest_neighbor_mixing', 'trimmed_mean'] (kinds checked by
  `chain`)."""
  return [canonical_name(s) for s in spec.split("+")]


@dataclasses.dataclass(frozen=True)
class _Stage:
  name: str
  is_rule: bool
  init: Callable[..., Any]  # (d, dtype, num_clients=None) -> state
  # (updates, weights, state, key, present=None, **server_inputs)
  #   -> (out, weights, state, aux)
  apply: Callable[..., tuple[jax.Array, Any, Any, Mapping[str, jax.Array]]]
  needs: frozenset = frozenset()   # the SERVER_INPUTS the stage takes

  @property
  def needs_server_update(self) -> bool:
    return "server_update" in self.needs


def _presence_stages() -> str:
  """The registered stages that take a presence mask, for error messages."""
  return ", ".join(sorted(k for k, e in _RULES.items() if "present" in e.params))


def _no_presence(name: str) -> ConfigError:
  return ConfigError(
      f"aggregator stage {name!r} does not support client drop-outs (a `present` mask); stages "
      f"that do: {_presence_stages()}.")


def _check_present_arg(name: str, takes_present: bool, present) -> None:
  if present is not None and not takes_present:
    raise _no_presence(name)


def _named_stage(name: str, f: int | None, opts: Mapping[str, Any], weighted: bool,
                 is_last: bool, entry: _Entry | None = None, presence: bool = False) -> _Stage:
  entry = entry or _RULES[name]
  unknown = set(opts) - set(entry.options)
  if unknown:
    raise ConfigError(f"unknown option(s) {sorted(unknown)} for aggregator {name!r}; allowed: "
                      f"{entry.options or 'none'}.")
  D.check_options(f"aggregator_options.{name}", opts, entry.domains)
  params = entry.params
  if "f" in params and f is None:
    raise ConfigError(f"aggregator {name!r} needs the declared f.")
  if weighted and is_last and "weights" not in params:
    weighted_rules = [k for k, e in _RULES.items() if e.kind == "rule" and "weights" in e.params]
    raise ConfigError(f"aggregator {name!r} has no weighted form; weighted rules: "
                     f"{', '.join(sorted(weighted_rules))}.")
  takes_present = "present" in params
  if presence and not takes_present:
    raise _no_presence(name)
  needs = frozenset(k for k in SERVER_INPUTS if k in params)
  custom_state = entry.state_init is not None
  stateful = "center" in params and not custom_state

  def init(d, dtype, num_clients=None):
    if custom_state:  # the stage's options that shape its state (e.g. a history's length)
      init_params = inspect.signature(entry.state_init).parameters
      per_client = {"num_clients": num_clients} if "num_clients" in init_params else {}
      return entry.state_init(d, dtype, **{k: v for k, v in {**entry.options, **opts}.items()
                                           if k in init_params}, **per_client)
    return jnp.zeros((d,), dtype) if stateful else ()

  def apply(updates, weights, state, key, present=None, **server_inputs):
    _check_present_arg(name, takes_present, present)
    kwargs = dict(opts)
    if "f" in params:
      kwargs["f"] = f
    if "key" in params:
      kwargs["key"] = key
    if custom_state:
      kwargs["state"] = state
    elif stateful:
      kwargs["center"] = state
    if weights is not None and "weights" in params:
      kwargs["weights"] = weights
    if present is not None:
      kwargs["present"] = present
    for k in sorted(needs):
      if server_inputs.get(k) is None:
        raise ConfigError(f"aggregator {name!r} needs {SERVER_INPUTS[k]}: call apply(..., "
                          f"{k}=<{k}>).")
      kwargs[k] = server_inputs[k]
    out = entry.fn(updates, **kwargs)
    if custom_state:
      out, state = out
    if entry.kind == "pre" and weights is not None and "weights" in params:
      out, weights = out  # a pre-aggregator that regroups rows returns their new weights
    out, aux = entry.split_aux(out)
    return out, weights, (out if stateful else state), aux

  return _Stage(name, entry.kind == "rule", init, apply, needs)


def _function_stage(fn: Callable[[jax.Array], jax.Array], is_last: bool,
                    presence: bool = False) -> _Stage:
  name = getattr(fn, "__name__", None) or getattr(getattr(fn, "func", None), "__name__", "fn")
  try:
    takes_present = "present" in inspect.signature(fn).parameters
  except (TypeError, ValueError):  # no signature to read (some builtins)
    takes_present = False
  if presence and not takes_present:
    raise _no_presence(name)

  def apply(u, w, s, k, present=None, **server_inputs):
    del server_inputs  # plain functions take the updates (and the presence mask) alone
    _check_present_arg(name, takes_present, present)
    return (fn(u) if present is None else fn(u, present=present)), w, s, {}

  return _Stage(name, is_last, lambda d, dtype, num_clients=None: (), apply)


def chain(*stages: str | Callable[[jax.Array], jax.Array], f: int | None = None,
          options: Mapping[str, Mapping[str, Any]] | None = None,
          weighted: bool = False, presence: bool = False) -> base.Aggregator:
  """Composes pre-aggregators and a final rule, applied left to right.

  The pipeline's `apply(updates, state, key, weights=None, present=None, server_update=None)`
  passes `present` (boolean `[n]`, client drop-outs) to every stage, and `server_update` (`[d]`)
  to the stages that take one; a stage without a `present` argument given a mask raises
  ConfigError at trace time, as does a stage that needs `server_update` without one.

  Args:
    *stages: registered names (or aliases), or plain functions `[n, d] -> [n', d]` (all but
      the last) and `[n, d] -> [d]` (the last); a plain function with a `present` keyword gets
      the presence mask.
    f: declared number of Byzantine clients, for the named stages that use it.
    options: per stage name, keyword options, e.g. `{"geometric_median": {"maxiter": 3}}`;
      options of names not in the chain are ignored, so one mapping serves several chains.
    weighted: the pipeline will be called with client weights; the last stage must have a
      weighted form (mean, trimmed_mean, geometric_median).
    presence: the pipeline will be called with a presence mask; every stage must take one
      (mean, trimmed_mean, coordinate_median, geometric_median, krum, multi_krum,
      nearest_neighbor_mixing), else ConfigError now. A fused stage (`_FUSED_WITH_MEAN`) is used
      only where it takes the mask too.
  """
  if not stages:
    raise ConfigError("chain needs at least one stage (the rule).")
  if f is not None and (not isinstance(f, int) or isinstance(f, bool) or f < 0):
    raise ConfigError(f"f must be a non-negative int, got {f!r}.")
  opts = {canonical_name(k): dict(v) for k, v in (options or {}).items()}
  names_ = [canonical_name(s) if isinstance(s, str) else None for s in stages]
  for i, n in enumerate(names_):
    want = "rule" if i == len(stages) - 1 else "pre"
    if n is not None and _RULES[n].kind != want:
      raise ConfigError(
          f"aggregator chain {[getattr(s, '__name__', s) for s in stages]}: stage {n!r} is a "
          f"{'rule' if _RULES[n].kind == 'rule' else 'pre-aggregator'}, but a chain is pre-aggregators ({', '.join(names('pre'))}) "
          f"followed by one rule ({', '.join(names('rule'))}).")
  built = [
      _named_stage(n, f, opts.get(n, {}), weighted, i == len(stages) - 1, presence=presence)
      if n is not None else _function_stage(s, i == len(stages) - 1, presence)
      for i, (n, s) in enumerate(zip(names_, stages))]
  if len(names_) >= 2 and names_[-1] == "mean" and names_[-2] in _FUSED_WITH_MEAN:
    pre = names_[-2]
    fused_fn = _FUSED_WITH_MEAN[pre]
    # A presence pipeline never trades the mask for speed: unfused unless the fused form takes it.
    if not presence or "present" in inspect.signature(fused_fn).parameters:
      fused = _named_stage(pre, f, opts.get(pre, {}), weighted, True, presence=presence,
                           entry=_Entry(fused_fn, "rule", _RULES[pre].split_aux,
                                        domains=_RULES[pre].domains))
      built[-2:] = [dataclasses.replace(fused, name=f"{pre}+mean")]
  needs = frozenset().union(*(stage.needs for stage in built))
  pipeline_name = "+".join(s.name for s in built)

  def init(d, dtype=jnp.float32, num_clients=None):
    return tuple(stage.init(d, dtype, num_clients) for stage in built)

  def apply(updates, state, key, weights=None, present=None, **server_inputs):
    unknown = sorted(set(server_inputs) - set(SERVER_INPUTS))
    if unknown:
      raise ConfigError(f"{pipeline_name}: unknown server input(s) {unknown}; allowed: "
                        f"{', '.join(SERVER_INPUTS)}.")
    check_input(updates, weights, f, "+".join(s.name for s in built), present=present,
                **server_inputs)
    aux = {}
    new_state = []
    n_rows, d_cols = updates.shape
    keys = jax.random.split(key, len(stages))  # per stage as written: fusing keeps the keys
    dtype = updates.dtype
    for stage, stage_state, k in zip(built, state, keys):
      # Pre-aggregators that take `present` keep the rows' positions: the mask carries over.
      updates, weights, s, stage_aux = stage.apply(updates, weights, stage_state, k,
                                                   present=present, **server_inputs)
      check_stage_output(pipeline_name, stage, updates, weights, n_rows, d_cols, dtype,
                         keeps_rows=present is not None)
      new_state.append(s)
      for name, value in stage_aux.items():  # a second stage's same diagnostic: "stage.name"
        aux[f"{stage.name}.{name}" if name in aux else name] = value
    m = n_rows if present is None else jnp.sum(present)
    aux.update(communication(pipeline_name, aux, m, d_cols))
    return updates, tuple(new_state), aux

  return base.Aggregator(name=pipeline_name, f=f, init=init, apply=apply, needs=needs,
                         per_client_state=any(
                             _RULES[n].per_client_state for n in names_ if n is not None))


def check_stage_output(pipeline: str, stage: _Stage, out, weights, n: int, d: int, dtype, *,
                       keeps_rows: bool) -> None:
  """Each stage's output against the pipeline's contract, at trace time with chex (shapes and
  dtypes are static, so this costs nothing under jit and vmap; a vmapped call sees one sample's
  shapes): a pre-aggregator returns `[n', d]` rows (n' = n when a presence mask carries over,
  since the rows keep their positions) with the input's dtype, and weights `[n']` if any; the
  rule returns the aggregate `[d]` with the input's dtype. A stage that breaks it (a plain
  function returning a scalar, or dropping a column) raises chex's AssertionError naming the
  stage; without the check the pipeline returned a wrong aggregate (a scalar, a `[d - 1]`)
  without an error. The caller's own input is checked before, by `check_input` (ConfigError,
  the project's readable refusal)."""
  role = "the rule, [n, d] -> [d]" if stage.is_rule else "a pre-aggregator, [n, d] -> [n_out, d]"
  what = f"aggregator pipeline {pipeline!r}: stage {stage.name!r} ({role})"
  if stage.is_rule:
    chex.assert_shape(out, (d,), custom_message=f"{what} must return the aggregate [{d}]")
  else:
    rows = n if keeps_rows else None
    chex.assert_shape(out, (rows, d), custom_message=(
        f"{what} must return [{n if keeps_rows else 'n_out'}, {d}] rows"
        + (" (the presence mask keeps every row's position)" if keeps_rows else "")))
    if weights is not None:
      chex.assert_shape(weights, (out.shape[0],),
                        custom_message=f"{what} must return one weight per output row")
  chex.assert_type(out, dtype, custom_message=f"{what} must keep the updates' dtype {dtype}")


def check_input(updates, weights, f: int | None, name: str, *, present=None,
                server_update=None, representations=None, global_params=None) -> None:
  """The checks every pipeline makes of its input at trace time (shapes and dtypes are static):
  a floating-point `[n, d]` matrix with n >= 1, weights of shape `[n]`, a boolean presence mask
  of shape `[n]`, a server update of shape `[d]`, and an honest majority n > 2f for the declared
  f (every rule, including those whose formula ignores f: a pipeline configured for f Byzantine
  clients among fewer than 2f + 1 promises nothing; with drop-outs the rules check the present
  count themselves and return NaN where it is too small)."""
  shape = getattr(updates, "shape", None)
  if shape is None or len(shape) != 2:
    raise ConfigError(f"{name}: updates must be a matrix [n, d], got shape {shape}.")
  n = shape[0]
  if n < 1:
    raise ConfigError(f"{name}: updates have n=0 rows; there is nothing to aggregate.")
  if not jnp.issubdtype(updates.dtype, jnp.floating):
    raise ConfigError(f"{name}: updates must be floating point, got {updates.dtype} (convert "
                      "with updates.astype(jnp.float32)).")
  if weights is not None and getattr(weights, "shape", None) != (n,):
    raise ConfigError(f"{name}: weights must have shape ({n},) (one per row), got "
                      f"{getattr(weights, 'shape', None)}.")
  if present is not None and (getattr(present, "shape", None) != (n,)
                              or getattr(present, "dtype", None) != jnp.bool_):
    raise ConfigError(f"{name}: present must be a boolean mask of shape ({n},) (one per row), "
                      f"got {getattr(present, 'dtype', type(present))}"
                      f"{list(getattr(present, 'shape', ()))}.")
  if server_update is not None and getattr(server_update, "shape", None) != (shape[1],):
    raise ConfigError(f"{name}: server_update must have shape ({shape[1]},) (one update like a "
                      f"row), got {getattr(server_update, 'shape', None)}.")
  if global_params is not None and getattr(global_params, "shape", None) != (shape[1],):
    raise ConfigError(f"{name}: global_params must have shape ({shape[1]},) (the model the "
                      f"round started from), got {getattr(global_params, 'shape', None)}.")
  r_shape = getattr(representations, "shape", None)
  if representations is not None and (r_shape is None or len(r_shape) != 3 or r_shape[0] != n):
    raise ConfigError(f"{name}: representations must have shape ({n}, m, h) (each client's "
                      f"model's features on the m root inputs), got {r_shape}.")
  if f is not None and 2 * f >= n:
    raise ConfigError(f"{name}: declared f={f} needs an honest majority, n > 2f = {2 * f}; got "
                      f"n={n} rows.")


def get(spec: str, *, f: int, options: Mapping[str, Mapping[str, Any]] | None = None,
        weighted: bool = False, presence: bool = False) -> base.Aggregator:
  """The pipeline named by `spec` ('nnm+trimmed_mean') for a declared f; see `chain`."""
  if not isinstance(f, int) or isinstance(f, bool) or f < 0:
    raise ConfigError(f"f must be a non-negative int, got {f!r}.")
  if not isinstance(spec, str):
    raise ConfigError(f"an aggregator spec must be a string such as 'nnm+trimmed_mean', got "
                      f"{spec!r}.")
  return chain(*split_spec(spec), f=f, options=options, weighted=weighted, presence=presence)
