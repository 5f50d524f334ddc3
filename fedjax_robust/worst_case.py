"""The worst case of the classic objective: the honest set S, |S| = n − f, maximizing a criterion.

The search is generic over a batched score `score(masks [K, n]) -> [K]` (higher = worse for the
honest clients): exhaustive over all C(n, f) masks when that is at most `exhaustive_limit`,
otherwise greedy removal (f steps, each scoring every single-client removal as one batch) then
swap local search (each sweep scores every in/out swap as one batch, and takes the best while it
improves). Every mask is scored once (`MemoizedScore`, `SeedTable`).

What is maximized (`CRITERIA`, config key `honest_set_options.worst_case.criterion`): the
quantity a figure shows, so that the worst case drawn beside it is a maximum of that quantity —
the final honest loss (in-sample or held-out), the excess loss L_S(θ_T) − L_S* where L_S* is exact
(convex tasks), the honest error 1 − accuracy (in-sample or held-out), or the theory's error
(`theory.report.per_draw`'s `error`). A worst case by one criterion is not a maximum of another:
on configs/theory_synthetic.py at p = 0.2 (n = 10, f = 2, geometric median) the set of largest
final loss has excess loss 0.0166, 39th of the 45 sets, whose largest is 0.0256.

- the **worst case**: max over |S| = n − f of the criterion's mean over R seeds that every
  candidate shares (common random numbers: candidate S and candidate S' see the same minibatches
  and attack randomness, so their scores differ only by the Byzantine set); see
  `experiment.worst_case_mask`. The maximum of R-seed means is uncertain, so `separate` races
  the sets still tied with the top: their seeds double (up to `max_seeds`) until the top set's
  paired lead over every other passes a one-sided paired t-test (family-wise at
  `separation_confidence`); the record says how many seeds were used, whether the top separated, and the gap to the
  runner-up. The maximum of noisy
  means is also optimistic (it picks the candidate whose seeds happened to hurt most), so the
  pick is re-measured on fresh seeds (its interval) and the difference reported as the search's
  optimism.
- a **proxy** (criterion "heterogeneity"): the honest set maximizing var_S = (1/|S|) Σ_{i∈S}
  ‖g_i − ḡ_S‖² of the clients' gradients at the initial model (closed form from their Gram
  matrix; cheap: the theory's G² proxy for hardness). It is *not* a maximum of loss, and is never
  called a worst case: on digits (n = 10, f = 2, ALIE z = 3, 100 rounds; all 45 honest sets
  re-measured on 8 common fresh seeds) its pick ranked 38th of 45 by final honest loss for
  trimmed mean and 29th for the geometric median.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from fedjax_robust.aggregators.minimum_diameter import subsets_of_size
from fedjax_robust.errors import ConfigError
from fedjax_robust.theory import heterogeneity

Score = Callable[[np.ndarray], np.ndarray]
# One training per row: (masks [K, n], draw ids [K]) -> the criterion's value [K] (+inf: diverged).
Measure = Callable[[np.ndarray, np.ndarray], np.ndarray]

# Draw ids of the search's seeds: SEARCH_DRAW_OFFSET + r, r < max_seeds. They are disjoint from
# the draw ids 0, 1, … of the worst-case run itself (and of its fresh re-measurement), so the
# run's draws are not the seeds the pick was selected on.
SEARCH_DRAW_OFFSET = 1_000_000

# What the interval of a worst-case (or proxy) run covers: every draw uses the same honest set.
TRAINING_NOISE_ONLY = ("training noise only: one honest set repeated over the draws (its "
                       "selection is not in the interval)")

PROXY = "heterogeneity"
PROXY_NAME = "max-heterogeneity honest set (proxy, not a loss maximum)"

# How many of the sets compared on the pick's seeds the record lists (`separate`).
TOP_SETS = 3


@dataclasses.dataclass(frozen=True)
class Criterion:
  """A quantity the worst-case search can maximize.

  `quantity` names it in a sentence, `short` in a plot label; `metric` is the evaluation metric
  read at θ_T (`complement`: the criterion is 1 − metric, an error from an accuracy; None: the
  experiment computes it, see `experiment.criterion_measure`); `requires` the task facts it is
  defined under (`check`); `shown_as` the metrics of results.csv whose extremum it is (a maximum
  of the loss or error, a minimum of the accuracy): a figure of one of them may draw this worst
  case (`matches`)."""
  quantity: str
  short: str
  metric: str | None
  complement: bool = False
  requires: tuple[str, ...] = ()
  shown_as: tuple[str, ...] = ()


# Task facts a criterion can require, and how a refusal names the missing one.
REQUIREMENTS = {
    "convex": "a convex task with an exact L_S* (model='linear_regression', or 'logistic' with "
              "training.l2 > 0)",
    "classifier": "a classification task (accuracy is undefined for regression)",
    "holdout": "each client's held-out split (data.holdout_fraction > 0)",
    "global_model": "one global model (training.personalization='none')",
}

CRITERIA = {
    "final_loss": Criterion(
        "final honest loss L_S(θ_T) (in-sample)", "max final honest loss", "honest_loss",
        shown_as=("honest_loss",)),
    "holdout_loss": Criterion(
        "final held-out honest loss (each honest client's held-out examples)",
        "max held-out honest loss", "honest_holdout_loss", requires=("holdout",),
        shown_as=("honest_holdout_loss",)),
    "honest_error": Criterion(
        "final honest error 1 − accuracy (in-sample)", "max honest error, min accuracy",
        "honest_accuracy", complement=True, requires=("classifier",),
        shown_as=("honest_accuracy",)),
    "holdout_error": Criterion(
        "final held-out honest error 1 − accuracy (each honest client's held-out examples)",
        "max held-out honest error, min accuracy", "honest_holdout_accuracy", complement=True,
        requires=("classifier", "holdout"), shown_as=("honest_holdout_accuracy",)),
    "excess_loss": Criterion(
        "excess honest loss L_S(θ_T) − L_S* (L_S* exact)", "max excess loss L_S − L_S*",
        None, requires=("convex", "global_model"),
        shown_as=("theory_error", "theory_error_given_valid")),
    "theory_error": Criterion(
        "theory's error (theory.report.per_draw: L_S(θ_T) − L_S* on a convex task, else the "
        "mean of ‖∇L_S(θ_t)‖² after the burn-in)", "max of the theory's error", None,
        requires=("global_model",), shown_as=("theory_error", "theory_error_given_valid")),
}
CRITERION_NAMES = (*CRITERIA, PROXY)


def check(criterion: str, **facts: bool) -> None:
  """Raises a ConfigError when `criterion` is undefined on a task with these `facts` (the keys of
  REQUIREMENTS, each True when the task has it), naming what it needs and the criteria allowed."""
  if criterion == PROXY:
    return
  missing = [REQUIREMENTS[r] for r in CRITERIA[criterion].requires if not facts[r]]
  if missing:
    allowed = [name for name in CRITERION_NAMES
               if name == PROXY or all(facts[r] for r in CRITERIA[name].requires)]
    raise ConfigError(
        f"honest_set_options.worst_case.criterion={criterion!r} ({CRITERIA[criterion].quantity})"
        f" needs {' and '.join(missing)}, which this configuration does not have. Allowed here: "
        f"{', '.join(allowed)}.")


def matches(criterion: str, metric: str) -> bool:
  """Whether a worst case searched by `criterion` is the extremum of the results.csv `metric`
  (its maximum, or for an accuracy its minimum): a figure of `metric` may draw it."""
  return criterion in CRITERIA and metric in CRITERIA[criterion].shown_as


def describe(criterion: str, num_clients: int, f: int, seeds: int,
             max_seeds: int | None = None) -> str:
  """What the chosen honest set is, named plainly: the worst case (a maximum of the stated
  quantity over the stated set, with its seeds) or the proxy."""
  m = num_clients - f
  if criterion == PROXY:
    return (f"{PROXY_NAME}: the |S| = n−f = {m} set maximizing the gradient variance var_S at "
            "the initial model")
  raised = (f" (raised up to {max_seeds} for the sets tied with the top)"
            if max_seeds is not None and max_seeds > seeds else "")
  return (f"worst case: max over |S| = n−f = {m} honest sets of the mean "
          f"{CRITERIA[criterion].quantity} over R = {seeds} seeds{raised}")


def short_name(criterion: str) -> str:
  """A plot label: 'worst case (max final honest loss)', … or the proxy's name."""
  return PROXY_NAME if criterion == PROXY else f"worst case ({CRITERIA[criterion].short})"


def ordinal(k: int) -> str:
  """1st, 2nd, 3rd, 4th, …, 11th, 12th, 13th, 21st, …"""
  suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
  return f"{k}{suffix}"


def rank_text(rank: int, of: int, method: str, num_clients: int, f: int,
              added: bool = False) -> str:
  """A rank said with what it is a rank among: all C(n, f) sets after an exhaustive search, only
  the sets scored after a greedy one ('37th of the 52 sets the greedy search scored'; `added`:
  one of them, the ranked set itself, was scored after the search)."""
  if method == "exhaustive":
    return f"{ordinal(rank)} of all C({num_clients}, {f}) = {of} honest sets"
  if added:
    return (f"{ordinal(rank)} of {of} sets: the {of - 1} the greedy search scored and this one "
            f"(not all C({num_clients}, {f}) = {math.comb(num_clients, f)})")
  return (f"{ordinal(rank)} of the {of} sets the greedy search scored (not all "
          f"C({num_clients}, {f}) = {math.comb(num_clients, f)})")


def _complement_masks(n: int, f: int) -> np.ndarray:
  """All honest masks with exactly f Byzantine clients, `[C(n, f), n]`."""
  byz = subsets_of_size(n, f)
  masks = np.ones((len(byz), n), bool)
  masks[np.repeat(np.arange(len(byz)), f), byz.ravel()] = False
  return masks


def byzantine(mask: np.ndarray) -> list[int]:
  """The Byzantine clients of an honest mask `[n]`."""
  return np.flatnonzero(~np.asarray(mask, bool)).tolist()


class MemoizedScore:
  """`score` evaluated once per distinct mask: a call scores only the rows not seen before (in one
  batch) and `table` keeps every mask's score (a deterministic score, e.g. training under common
  random numbers, makes this exact)."""

  def __init__(self, score: Score):
    self.score = score
    self.table: dict[bytes, float] = {}
    self.masks: dict[bytes, np.ndarray] = {}

  def __call__(self, masks: np.ndarray) -> np.ndarray:
    masks = np.asarray(masks, bool)
    keys = [m.tobytes() for m in masks]
    new = list(dict.fromkeys(k for k in keys if k not in self.table))
    if new:
      rows = np.stack([masks[keys.index(k)] for k in new])
      for k, row, value in zip(new, rows, np.asarray(self.score(rows), np.float64)):
        self.table[k], self.masks[k] = float(value), row
    return np.array([self.table[k] for k in keys])

  def candidates(self, honest: int) -> list[bytes]:
    """The scored masks with `honest` honest clients (a greedy search also scores the larger
    sets of its removal steps, which are not candidates), in scoring order."""
    return [k for k, m in self.masks.items() if k in self.table and int(m.sum()) == honest]

  def rank(self, mask: np.ndarray) -> tuple[int, int]:
    """(1 + the number of scored masks of the same size with a strictly higher score, the number
    of scored masks of that size): 1 = the maximum among them."""
    mask = np.asarray(mask, bool)
    value = self.table[mask.tobytes()]
    peers = [self.table[k] for k in self.candidates(int(mask.sum()))]
    return 1 + sum(v > value for v in peers), len(peers)


class SeedTable(MemoizedScore):
  """Each scored mask's criterion value on each of its seeds, under common random numbers: seed r
  of every mask is the training with draw id SEARCH_DRAW_OFFSET + r. As a Score (what `search`
  maximizes) a mask's value is its mean over the first `seeds` seeds (`mean_over_seeds`), and
  `table` / `rank` are over those means; `extend` measures further seeds of some masks
  (`separate`). Every (mask, seed) pair is measured once, the new ones of a call in one batch."""

  def __init__(self, measure: Measure, seeds: int):
    super().__init__(self._means)
    self.measure, self.seeds = measure, int(seeds)
    self.values: dict[bytes, np.ndarray] = {}
    self.trainings = 0

  def extend(self, masks: np.ndarray, seeds: int) -> None:
    """Measures seeds len(values) … seeds − 1 of each mask `[K, n]` lacking them, as one batch."""
    rows, ids, owners = [], [], []
    for key, mask in {m.tobytes(): m for m in np.asarray(masks, bool)}.items():
      self.masks.setdefault(key, mask)
      for r in range(len(self.values.get(key, ())), seeds):
        rows.append(mask)
        ids.append(SEARCH_DRAW_OFFSET + r)
        owners.append(key)
    if not rows:
      return
    out = np.asarray(self.measure(np.stack(rows), np.asarray(ids)), np.float64)
    self.trainings += len(rows)
    for key in dict.fromkeys(owners):
      new = out[[i for i, owner in enumerate(owners) if owner == key]]
      self.values[key] = np.concatenate([self.values.get(key, np.zeros(0)), new])

  def _means(self, masks: np.ndarray) -> np.ndarray:
    self.extend(masks, self.seeds)
    return np.array([mean_over_seeds(self.values[m.tobytes()][:self.seeds], self.seeds)[0]
                     for m in np.asarray(masks, bool)])


def search_size(num_clients: int, f: int, *, exhaustive_limit: int = 20_000,
                max_sweeps: int = 5) -> tuple[str, int]:
  """The method `search` will use and the most masks it can score (greedy: Σ_{k<f} (n − k), then
  at most max_sweeps sweeps of f·(n − f) swaps)."""
  n = num_clients
  if math.comb(n, f) <= exhaustive_limit:
    return "exhaustive", math.comb(n, f)
  return "greedy+swaps", sum(n - k for k in range(f)) + max_sweeps * f * (n - f)


def search(score: Score, num_clients: int, f: int, *, exhaustive_limit: int = 20_000,
           max_sweeps: int = 5) -> tuple[np.ndarray, float, dict]:
  """The honest mask `[n]` with n − f True maximizing `score`, its score, and how it was found
  (method, number of distinct masks scored). Ties go to the first mask in search order."""
  n = num_clients
  if not 0 <= f < n:
    raise ValueError(f"worst case needs 0 <= f < n={n}, got f={f}.")
  memo = score if isinstance(score, MemoizedScore) else MemoizedScore(score)
  before = len(memo.table)
  if math.comb(n, f) <= exhaustive_limit:
    masks = _complement_masks(n, f)
    scores = memo(masks)
    best = int(np.argmax(scores))
    return masks[best], float(scores[best]), {"method": "exhaustive",
                                              "scored": len(memo.table) - before}
  mask = np.ones(n, bool)
  for _ in range(f):  # greedy removal
    candidates = np.repeat(mask[None], int(mask.sum()), axis=0)
    candidates[np.arange(len(candidates)), np.flatnonzero(mask)] = False
    mask = candidates[int(np.argmax(memo(candidates)))]
  best_score = float(memo(mask[None])[0])
  sweeps = 0
  for sweeps in range(1, max_sweeps + 1):  # swap local search
    inside, outside = np.flatnonzero(mask), np.flatnonzero(~mask)
    if len(outside) == 0:
      break
    pairs = [(i, j) for i in inside for j in outside]
    candidates = np.repeat(mask[None], len(pairs), axis=0)
    for row, (i, j) in enumerate(pairs):
      candidates[row, i], candidates[row, j] = False, True
    scores = memo(candidates)
    if scores.max() <= best_score:
      break
    mask, best_score = candidates[int(np.argmax(scores))], float(scores.max())
  return mask, best_score, {"method": "greedy+swaps", "scored": len(memo.table) - before,
                            "sweeps": sweeps}


def paired_lead(a: np.ndarray, b: np.ndarray) -> dict:
  """The lead of set a over set b on their common seeds: the mean and standard error sd/√R of
  d_r = a_r − b_r (paired: common random numbers make a_r and b_r differ by the Byzantine set
  only). A seed where both diverged (+inf) is a tie (d_r = 0); one where only a diverged leads by
  +inf, the reverse by −inf (a mean mixing both is NaN). The error is NaN for R < 2 or when d is
  not finite."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  with np.errstate(invalid="ignore"):  # inf − inf: replaced by the tie below
    d = np.where(np.isinf(a) & np.isinf(b), 0.0, a - b)
  finite = bool(np.all(np.isfinite(d)))
  se = float(np.std(d, ddof=1) / np.sqrt(len(d))) if finite and len(d) > 1 else float("nan")
  with np.errstate(invalid="ignore"):
    mean = float(np.mean(d)) if finite else float(np.sum(d))
  return {"mean": mean, "se": se, "seeds": int(len(d))}


def separation_margin(seeds: int, level: float) -> float:
  """The multiple of the paired standard error a lead must exceed in a one-sided paired t-test
  of size `level`: the Student-t quantile t_{1 − level, R−1} (R − 1 degrees of freedom: with few
  seeds the standard error is itself noisy); NaN for R < 2."""
  return float(scipy.stats.t.ppf(1.0 - level, seeds - 1)) if seeds > 1 else float("nan")


def _separated(lead: dict, level: float) -> bool:
  """The lead is real: mean − t_{1 − level, R−1}·se > 0 (se = 0: identical differences on every
  seed, any positive lead; an infinite lead: the other set never diverged where this one
  did)."""
  if lead["mean"] == math.inf:
    return True
  if not math.isfinite(lead["mean"]):
    return False
  if lead["se"] == 0.0:
    return lead["mean"] > 0
  if not math.isfinite(lead["se"]):
    return False
  return lead["mean"] - separation_margin(lead["seeds"], level) * lead["se"] > 0


def _decidable(lead: dict) -> bool:
  """More seeds could separate the two sets: a finite lead whose seeds disagree (se > 0), or a
  single seed (se unknown). Identical values on every seed (deterministic training) or sets both
  diverging cannot be told apart by more seeds."""
  return math.isfinite(lead["mean"]) and not lead["se"] == 0.0


def separate(table: SeedTable, *, honest: int, max_seeds: int, confidence: float,
             top: int = TOP_SETS) -> tuple[np.ndarray, dict]:
  """The set of largest mean among the candidates `table` scored (masks with `honest` honest
  clients), with its uncertainty, by racing: the
  sets still tied with the leader get twice the seeds (up to `max_seeds`; every set keeps common
  random numbers) until the leader's paired lead over each other set passes a one-sided paired
  t-test (`paired_lead`: mean − t·se > 0) — a set once separated below the leader is dropped —,
  or until the tied sets cannot be told apart by seeds (identical on every seed, or all
  diverged). Each test has size (1 − confidence)/(m·L), m + 1 the sets scored and L the seed
  levels R, 2R, … ≤ max_seeds (Bonferroni over every test the race can make), so the chance that
  a set is reported separated from a set truly above it is at most 1 − confidence (for roughly
  normal paired differences). At 95% with 45 sets and R = 4 → 16 the lead must exceed ≈ 13
  standard errors at R = 4 and ≈ 4 at R = 16: few seeds separate only large gaps. Returns the leader's mask and a record: its mean and standard error on
  its `pick_seeds` seeds, `separated` (None with a single candidate), the paired `gap` to the
  runner-up, how many sets are still `tied` with it, why the race `stopped`, and the `top` sets
  compared on the pick's seeds."""
  contenders = table.candidates(honest)
  seeds = table.seeds
  levels = 1 + max(0, math.ceil(math.log2(max_seeds / seeds)))
  level = (1.0 - confidence) / (max(len(contenders) - 1, 1) * levels)
  while True:
    table.extend(np.stack([table.masks[k] for k in contenders]), seeds)
    means = np.array([mean_over_seeds(table.values[k][:seeds], seeds)[0] for k in contenders])
    order = np.argsort(-means, kind="stable")  # ties: the first in search order
    best = contenders[order[0]]
    leads = {k: paired_lead(table.values[best][:seeds], table.values[k][:seeds])
             for k in contenders if k != best}
    tied = [k for k in contenders if k != best and not _separated(leads[k], level)]
    decidable = any(_decidable(leads[k]) for k in tied)
    if seeds >= max_seeds or not decidable:
      break
    contenders = [best] + tied
    seeds = min(2 * seeds, max_seeds)
  if len(contenders) == 1:
    stopped = "one honest set"
  elif not tied:
    stopped = "separated"
  elif decidable:
    stopped = f"seed cap: max_seeds = {max_seeds} reached with sets still tied"
  else:
    stopped = "tied on every seed: more seeds cannot separate them (identical or diverged)"

  def entry(key):
    v = table.values[key][:seeds]
    sd = np.std(v, ddof=1) if len(v) > 1 and np.all(np.isfinite(v)) else np.nan
    return {"byzantine": byzantine(table.masks[key]),
            "mean": float(mean_over_seeds(v, seeds)[0]), "se": float(sd / np.sqrt(len(v))),
            "seeds": int(seeds)}

  record = {"seeds": table.seeds, "max_seeds": int(max_seeds), "confidence": float(confidence),
            "test_level": level,
            "pick_seeds": int(seeds), "pick": entry(best),
            "separated": None if len(contenders) == 1 else not tied,
            "tied": len(tied), "stopped": stopped,
            "top": [entry(contenders[i]) for i in order[:top]]}
  if len(contenders) > 1:
    runner = contenders[order[1]]
    record["runner_up"] = byzantine(table.masks[runner])
    record["gap"] = leads[runner]
  return table.masks[best], record


def heterogeneity_score(gradients: jax.Array) -> Score:
  """Batched var_S = (1/m) Σ_{i∈S} ‖g_i − ḡ_S‖², m = |S|, of `gradients [n, d]`: h(S) of
  `theory.heterogeneity` (the centred Gram form), for any batch of masks `[K, n]`."""
  stats = heterogeneity.gram_statistics(jnp.asarray(gradients, jnp.float32))
  return lambda masks: np.asarray(heterogeneity.set_statistics(stats, masks)[0], np.float64)


def mean_over_seeds(losses: np.ndarray, num_seeds: int) -> np.ndarray:
  """`[K·R]` values (candidate-major, R seeds each) -> `[K]` means; a non-finite value (a
  diverged training) counts as +inf, so a candidate with a diverged seed scores +inf."""
  losses = np.asarray(losses, np.float64).reshape(-1, num_seeds)
  return np.where(np.isfinite(losses), losses, np.inf).mean(1)
