"""Does knowing μ_H buy honest accuracy, and what does a wrong prior cost? (issue 15)

The rules that use the server's prior (`fedjax_robust.server_prior`,
`aggregators.prior_aware`) against the classic ones on the same draws, where some clients are
far less reliable than others: the 5 clients 0–4 are corrupted with marginal probability 0.5,
the other 20 with 0.05 (E[b] = 3.5, n = 25, declared f = 5), under three laws with those
marginals:
- independent: Bernoulli(p_i) per client;
- clustered:   5 clusters of 5 (clients 0–4 the first); cluster c compromised with π_c
               (0.5/0.9 for the first, 0.05/0.9 for the others), then its members Byzantine
               with q1 = 0.9 (q0 = 0);
- graph:       a Gaussian copula with marginals p_i (τ = 0.5) along a stochastic block graph
               (5 blocks of 5, the same grouping; p_in = 0.8, p_out = 0.05, seed 0).

Rules (the `rule` tag):
- classic: mean, trimmed_mean, geometric_median, nnm+trimmed_mean, bucketing+geometric_median,
  each with its f (trimmed_mean, nnm+trimmed_mean) or bucket size (bucketing) tuned, below;
  a candidate is labelled "trimmed_mean[f=6]", "bucketing+geometric_median[s=3]";
- with the server's prior: posterior_filter (the prior's P(honest), and its couplings for a
  correlated law), trimmed_mean and nnm+trimmed_mean with f = the prior's 0.95-quantile of b
  ("@quantile_f"), posterior_filter with the prior's marginals only, no couplings
  ("@marginals", correlated laws), geometric_median weighted by reliability 1 − p_i
  ("@reliability"),
  adaptive_trim capped at the quantile f, cluster_aggregate (the prior's clusters, or its
  communities for the graph law; cross-cluster f from the prior's law of the number of groups
  holding a faulty client).
A rule's label carries the prior when it is not the correct one: "|×2", "|×0.5" (the prior's
corruption probabilities scaled), "|permuted" (the prior attached to the wrong clients), "|absent"
(no prior: posterior_filter with the exchangeable P(faulty) = f/n, adaptive_trim capped at f).
The `prior` tag says which of these the setting gives the server ("correct"; "independent" in
the worst block, whose prior is the independent law's; a classic rule ignores it), so the
generic paired table compares rules under the same prior, never one misspecification with
another.
The quantile-f rules have no "|permuted" point: a relabelling leaves the law of b unchanged.
A rule the misspecified prior makes undefined (under ×2 the correlated laws' 0.95-quantile of b
is 13 of 25, no honest majority; 3 of the 5 groups hold a faulty majority, no majority of clean
groups) is refused at config time: the point is left out and the report lists it with the
reason.

Like for like (issue 35): the prior rules' f is the prior's quantile (6, 9 and 8 under the
independent, clustered and graph laws), so the classic rules get the same freedom, chosen
without looking at the draws they are judged on. Each classic rule's candidates — f over
`tuning.f` (default 3, the declared 5 and the law's quantile; at the worst case f stays the
declared one: it sets the worst honest set's size n − f), bucket size over `tuning.bucket_size`
(2, 3) — run on tuning draws (block "tune", seed `tuning.seed`, default base.seed + 1: another
data partition, other masks, other training keys; `tuning.num_samples` draws, default S); a
rule keeps its candidate with the highest mean of the plot's metric there, and the best classic
rule of a setting is the one best there. Every rule then runs on the common evaluation draws
(base.seed: the same masks for every rule of a setting), where the report compares them. Every
candidate also runs on the evaluation draws (the points are fixed before the sweep runs); the
report reads only the one kept.

Blocks of points (all with 32 draws, 100 rounds; the same draws of μ_H for every rule of a
setting):
- main:  digits (Dirichlet α = 1) × {ALIE, sign flip, label flip, label noise} × 3 laws, every
         rule, prior correct;
- prior: digits α = 1, ALIE, 3 laws, the prior rules with the prior ×2, ×0.5, permuted, absent;
- tasks: digits α = 0.3 and the synthetic task, ALIE, 3 laws, every rule, prior correct;
- worst: the classic worst case at the declared f (digits α = 1, ALIE; the honest set of size
         n − f of largest mean held-out honest error, the report's quantity, greedy + 1 swap
         sweep, 2 seeds raised up to 8 for the sets tied with the top), for the classic rules
         and the prior rules whose prior is the independent law's;
- tune:  the classic rules' candidates of every setting of the blocks above, on the tuning draws.

  python launch/sweep.py --config=configs/sweep_mu_aware.py --workdir=runs/mu_aware

A subset: --config.grid.blocks=main --config.grid.threats=alie --config.grid.mu_h=independent.
The sweep ends with `report`: the tuning (every candidate's mean on the tuning draws, in
mu_aware_tuning.csv), then each rule's paired difference from the best classic rule of its
setting over the evaluation draws, with the f or bucket size each rule ran, printed, written to
mu_aware_gains.csv and plotted in mu_aware_gains.png.
"""

import json
import os

import ml_collections
import numpy as np

from configs import default
from fedjax_robust import aggregators
from fedjax_robust import config as config_lib
from fedjax_robust import domains as D
from fedjax_robust import evaluation
from fedjax_robust import results
from fedjax_robust import server_prior
from fedjax_robust import sweep
from fedjax_robust.sweep import Point
from fedjax_robust.sweep import as_list
from fedjax_robust.errors import ConfigError

N = 25
F = 5                                           # the declared f
UNRELIABLE = 5                                  # clients 0..4
P_UNRELIABLE, P_RELIABLE = 0.5, 0.05
P = (P_UNRELIABLE,) * UNRELIABLE + (P_RELIABLE,) * (N - UNRELIABLE)
Q1 = 0.9
TAU = 0.5
BLOCKS = (5,) * 5

CLASSIC = ("mean", "trimmed_mean", "geometric_median", "nnm+trimmed_mean",
           "bucketing+geometric_median")
# label -> (aggregator, server_prior overrides); every one of them uses the prior.
AWARE = {
    "posterior_filter": ("posterior_filter", {}),
    # The same filter without the correlated law's couplings (its marginals only).
    "posterior_filter@marginals": ("posterior_filter",
                                   {"aggregator_options.posterior_filter.coupling": "none"}),
    "trimmed_mean@quantile_f": ("trimmed_mean", {"server_prior.declared_f": "quantile"}),
    "nnm+trimmed_mean@quantile_f": ("nnm+trimmed_mean", {"server_prior.declared_f": "quantile"}),
    "geometric_median@reliability": ("geometric_median", {"server_prior.weights": "reliability"}),
    "adaptive_trim@quantile_f": ("adaptive_trim", {"server_prior.declared_f": "quantile"}),
    "cluster_aggregate": ("cluster_aggregate",
                          {"aggregator_options.cluster_aggregate.inner": "median"}),
}
# Rules defined without a prior ("absent"): what the server runs knowing only f.
ABSENT = {"posterior_filter": "posterior_filter", "adaptive_trim@quantile_f": "adaptive_trim"}
PRIORS = {"×2": {"server_prior.scale": 2.0}, "×0.5": {"server_prior.scale": 0.5},
          "permuted": {"server_prior.permuted": True}}
MU_H = ("independent", "clustered", "graph")
# Points of the prior block the rule refuses under a misspecified prior: tags -> the reason.
REFUSED: dict[tuple, str] = {}
THREATS = ("alie", "sign_flip", "label_flip", "label_noise")
TASKS = {"digits_a1": {"data.name": "digits", "data.alpha": 1.0},
         "digits_a0.3": {"data.name": "digits", "data.alpha": 0.3},
         "synthetic": {"data.name": "synthetic", "data.synthetic_alpha": 1.0,
                       "data.synthetic_beta": 1.0, "data.holdout_fraction": 0.2}}


def get_config():
  base = default.get_config()
  base.num_clients = N
  base.f = F
  base.num_samples = 32
  base.training.num_rounds = 100
  base.theory.enabled = False
  c = ml_collections.ConfigDict()
  c.base = base
  c.grid = ml_collections.ConfigDict({
      "blocks": ("main", "prior", "tasks", "worst"), "mu_h": MU_H, "threats": THREATS,
      "rules": tuple(CLASSIC) + tuple(AWARE)})
  # The classic rules' tuning: each candidate also runs on draws of another seed (a fresh
  # replicate of the whole random experiment: the seed sets the data partition, the draws of μ_H
  # and the training keys), and a rule keeps the candidate with the highest mean of the plot's
  # metric there. By default the seed after the evaluation seed and as many draws.
  c.tuning = ml_collections.ConfigDict({
      "seed": base.get_ref("seed") + 1, "num_samples": base.get_ref("num_samples"),
      # f of the classic rules that take one: integers, "declared" (base.f) and "quantile" (the
      # setting's law's (1 − δ)-quantile of b, the f of the @quantile_f rules).
      "f": ("declared", "quantile", 3),
      # s of the classic rules that bucket (s = 1 is the rule without buckets).
      "bucket_size": (2, 3)})
  c.plot = ml_collections.ConfigDict({"x": "mu_H", "series": "rule", "style": "threat",
                                      "metric": "honest_holdout_accuracy",
                                      # what a rule label sets (f: a quantile f)
                                      "series_keys": ("aggregator", "server_prior", "f",
                                                      "aggregator_options")})
  return c


def mu_h_overrides(name: str) -> dict:
  if name == "independent":
    return {"honest_set": "bernoulli", "honest_set_options.bernoulli.p": P}
  if name == "clustered":
    pi = tuple(p / Q1 for p in P[::BLOCKS[0]])
    return {"honest_set": "clusters", "honest_set_options.clusters.num_clusters": len(BLOCKS),
            "honest_set_options.clusters.pi": pi, "honest_set_options.clusters.q1": Q1,
            "honest_set_options.clusters.q0": 0.0}
  if name == "graph":
    return {"honest_set": "graph_copula", "honest_set_options.graph_copula.p": P,
            "honest_set_options.graph_copula.tau": TAU, "graph.kind": "stochastic_block",
            "graph.block_sizes": BLOCKS, "graph.p_in": 0.8, "graph.p_out": 0.05,
            "graph.seed": 0}
  raise ConfigError(f"grid.mu_h={name!r} is not a μ_H of this sweep; allowed: "
                    f"{', '.join(MU_H)}.")


def rule_overrides(label: str, prior: str = "correct") -> dict:
  """The overrides of a prior-using rule under a prior ('correct', a PRIORS key, or 'absent');
  the classic rules' are their tuning candidates' (`classic_candidates`)."""
  aggregator, extra = AWARE[label]
  if prior == "absent":
    if label != "posterior_filter":
      return {"aggregator": ABSENT[label]}
    return {"aggregator": ABSENT[label], "server_prior.kind": "marginals",
            "server_prior.p_per_client": (F / N,) * N}
  return {"aggregator": aggregator, "server_prior.kind": "mu_h", **extra,
          **PRIORS.get(prior, {})}


def _label(rule: str, prior: str) -> str:
  return rule if prior == "correct" else f"{rule}|{prior}"


TUNE = "tune"  # the block of the tuning points


def classic_rule(label: str) -> str | None:
  """The classic rule of a label ('trimmed_mean[f=6]' -> 'trimmed_mean'), None for a rule
  that uses the prior."""
  rule = label.split("[")[0]
  return rule if rule in CLASSIC else None


def uses_f(spec: str) -> bool:
  """Whether a stage of the aggregator spec takes the declared f (the registry refuses to build
  it without one)."""
  try:
    aggregators.chain(*aggregators.split_spec(spec), f=None)
  except ConfigError as e:
    if "needs the declared f" in str(e):
      return True
    raise
  return False


def _f_entry(value):
  if value in ("declared", "quantile"):
    return value
  return int(value)


def quantile_f(c, mu_h: str) -> int:
  """The f of the @quantile_f rules under the setting's law: its (1 − δ)-quantile of b."""
  config = sweep.apply_overrides(c.base, {**mu_h_overrides(mu_h), "server_prior.kind": "mu_h",
                                          "server_prior.declared_f": "quantile"})
  return int(config_lib.resolve_server_prior(config)[0].f)


def classic_candidates(c, rule: str, quantile: int | None) -> list[tuple[str, dict]]:
  """(label, overrides) of each tuning candidate of a classic rule: its f over c.tuning.f when
  it takes one (`quantile`: the setting's quantile f; None at the worst case, whose honest set
  has n − f clients: there f stays the declared one, the adversary's budget), its bucket size
  over c.tuning.bucket_size when it buckets; a rule with neither is one candidate."""
  fs = [None]
  if uses_f(rule):
    if quantile is None:
      fs = [int(c.base.f)]
    else:
      named = {"declared": int(c.base.f), "quantile": quantile}
      fs = sorted({named.get(v, v) for v in as_list(c.tuning.f, _f_entry)})
  sizes = ([None] if "bucketing" not in aggregators.split_spec(rule)
           else sorted(set(as_list(c.tuning.bucket_size, int))))
  out = []
  for f in fs:
    for s in sizes:
      what = " ".join(([] if f is None else [f"f={f}"]) + ([] if s is None else [f"s={s}"]))
      overrides = {"aggregator": rule, **({} if f is None else {"f": f}),
                   **({} if s is None else {"aggregator_options.bucketing.bucket_size": s})}
      out.append((f"{rule}[{what}]" if what else rule, overrides))
  return out


def _rules(rules, mu_h):
  # No grouping and no coupling in an independent law: cluster_aggregate and the marginals-only
  # filter only under the correlated ones.
  return [r for r in rules if not (r in ("cluster_aggregate", "posterior_filter@marginals")
                                   and mu_h == "independent")]


def points(c):
  blocks = as_list(c.grid.blocks, str)
  laws = as_list(c.grid.mu_h, str)
  threats = as_list(c.grid.threats, str)
  rules = as_list(c.grid.rules, str)
  for key, values, allowed in (("blocks", blocks, ("main", "prior", "tasks", "worst")),
                               ("mu_h", laws, MU_H), ("rules", rules, (*CLASSIC, *AWARE))):
    for value in values:
      D.Choice(*allowed).check(f"grid.{key}", value)
  if int(c.tuning.seed) == int(c.base.seed):
    raise ConfigError(
        f"tuning.seed={c.tuning.seed} is the evaluation seed (base.seed={c.base.seed}): the "
        "classic rules' f and options would be chosen on the draws they are compared on. "
        "Allowed: any other seed (default base.seed + 1).")
  out, tuning, quantiles = [], [], {}

  def add_classic(block, task, threat, mu_h, rule, prior="correct", extra=None):
    # Every candidate runs on the evaluation draws (the points are fixed before the sweep runs;
    # the report reads the one tuned) and, as block TUNE, on the tuning draws.
    if mu_h != "worst_case" and uses_f(rule) and "quantile" in as_list(c.tuning.f, _f_entry):
      quantiles.setdefault(mu_h, quantile_f(c, mu_h))
    base = {**TASKS[task], "attack": threat,
            **(mu_h_overrides(mu_h) if mu_h != "worst_case" else {}), **(extra or {})}
    for label, overrides in classic_candidates(c, rule, quantiles.get(mu_h)):
      tags = {"task": task, "threat": threat, "mu_H": mu_h, "prior": prior, "rule": label}
      out.append(Point({"block": block, **tags}, {**base, **overrides}))
      tuning.append(Point({"block": TUNE, **tags},
                          {**base, **overrides, "seed": int(c.tuning.seed),
                           "num_samples": int(c.tuning.num_samples)}))

  def add(block, task, threat, mu_h, rule, prior="correct", refusable=False):
    if rule in CLASSIC:
      add_classic(block, task, threat, mu_h, rule, prior)
      return
    def overrides(prior):
      return {**TASKS[task], "attack": threat, **mu_h_overrides(mu_h),
              **rule_overrides(rule, prior)}
    tags = {"block": block, "task": task, "threat": threat, "mu_H": mu_h, "prior": prior,
            "rule": _label(rule, prior)}
    point = Point(tags, overrides(prior))
    if refusable:
      # A misspecified prior can make a rule undefined (a quantile f without an honest
      # majority, no majority of clean groups): the point is left out and said so. An error
      # the same point with the correct prior has too is not the prior's doing (a bad base
      # setting): it stops the sweep.
      try:
        config_lib.validate(sweep.apply_overrides(c.base, point.overrides))
      except ConfigError as e:
        config_lib.validate(sweep.apply_overrides(c.base, overrides("correct")))
        REFUSED[tuple(tags.values())] = str(e)
        return
    out.append(point)

  if "main" in blocks:
    for threat in threats:
      for mu_h in laws:
        for rule in _rules(rules, mu_h):
          add("main", "digits_a1", threat, mu_h, rule)
  if "prior" in blocks:
    for mu_h in laws:
      for prior in (*PRIORS, "absent"):
        for rule in _rules([r for r in rules if r in AWARE and r != "posterior_filter@marginals"],
                           mu_h):
          if prior == "absent" and rule not in ABSENT:
            continue
          if prior == "permuted" and rule.endswith("@quantile_f"):
            continue  # the law of b is the same under a relabelling: the correct prior's point
          add("prior", "digits_a1", "alie", mu_h, rule, prior, refusable=True)
  if "tasks" in blocks:
    for task in ("digits_a0.3", "synthetic"):
      for mu_h in laws:
        for rule in _rules(rules, mu_h):
          add("tasks", task, "alie", mu_h, rule)
  if "worst" in blocks:
    # The worst case of the report's quantity (held-out accuracy: the set of largest held-out
    # error), R = 2 seeds raised up to 8 for the sets tied with the top (the default 16 is 8×
    # the cost of a fixed R here).
    worst = {"honest_set": "worst_case", "honest_set_options.worst_case.seeds": 2,
             "honest_set_options.worst_case.max_seeds": 8,
             "honest_set_options.worst_case.criterion": "holdout_error",
             "honest_set_options.worst_case.max_sweeps": 1}
    for rule in rules:
      if rule in ("cluster_aggregate", "posterior_filter@marginals"):
        continue  # no grouping, no coupling: the worst case keeps the independent law's prior
      if rule in CLASSIC:
        add_classic("worst", "digits_a1", "alie", "worst_case", rule, "independent", worst)
        continue
      tags = {"block": "worst", "task": "digits_a1", "threat": "alie", "mu_H": "worst_case",
              "prior": "independent", "rule": rule}
      # The prior rules keep the independent law's prior; the honest set is the worst one.
      prior = {"server_prior.kind": "marginals", "server_prior.p_per_client": P}
      out.append(Point(tags, {**TASKS["digits_a1"], "attack": "alie", **rule_overrides(rule),
                              **worst, **prior}))
  return out + tuning


def plot_note(c) -> str:
  return (f"n = {N}; clients 0–{UNRELIABLE - 1} corrupted with marginal {P_UNRELIABLE}, the "
          f"others {P_RELIABLE}; declared f = {c.base.f}; independent / clustered (q1 = {Q1}) / "
          f"graph copula (τ = {TAU}, 5-block SBM) with those marginals.")


def _ran(workdir: str, pid: str) -> tuple[int | None, int | None]:
  """(f, bucket size) the point ran, from its record's resolved config (a quantile f is the
  prior's): None for what its rule does not take; raises sweep.RECORD_ERRORS if unreadable."""
  with open(sweep.config_path(workdir, pid), encoding="utf-8") as fh:
    config = json.load(fh)["config"]
  spec = config["aggregator"]
  f = int(config["f"]) if uses_f(spec) else None
  s = (int(config["aggregator_options"]["bucketing"]["bucket_size"])
       if "bucketing" in aggregators.split_spec(spec) else None)
  return f, s


def _ran_text(f, s) -> str:
  return " ".join(([] if f is None else [f"f={f}"]) + ([] if s is None else [f"s={s}"])) or "–"


def _tune(tuning_points: dict, value) -> tuple[dict, list[str]]:
  """Each classic rule's candidate with the highest mean on the tuning draws (ties: the first
  in the grid's order; a candidate whose mean is undefined is never kept): rule -> (label,
  tuning mean), and the rules none of whose candidates has a defined mean."""
  candidates = {}
  for label, pid in tuning_points.items():
    rule = classic_rule(label)
    if rule is not None:
      candidates.setdefault(rule, []).append((label, value(pid)))
  tuned, undefined = {}, []
  for rule, cands in candidates.items():
    defined = [(label, v) for label, v in cands if np.isfinite(v)]
    if defined:
      tuned[rule] = max(defined, key=lambda lv: lv[1])
    else:
      undefined.append(rule)
  return tuned, undefined


def report(c, rows, workdir, ids, log=print) -> list[str]:
  """Each rule minus the best classic rule of its setting, for every setting (task, threat,
  μ_H: the prior block's points are compared with the main block's classic rules, which ran
  the same draws). Each classic rule runs the candidate (f, bucket size) with the highest mean
  of the plot's metric on the tuning draws (block TUNE, seed c.tuning.seed), and the best
  classic rule is the one whose tuned candidate is best there; the differences are then paired
  over the evaluation draws (seed c.base.seed, the same masks for every rule of a setting).
  Nothing is picked on the evaluation draws. Prints the tuning and the table, writes
  mu_aware_tuning.csv (every candidate's tuning mean), mu_aware_gains.csv (columns f and
  bucket_size: what the rule ran, empty where it takes none; tuning_mean: a classic rule's
  kept candidate's mean on the tuning draws, empty for a prior rule, which is not tuned) and
  mu_aware_gains.png; returns the paths."""
  metric = c.plot.metric
  entries, cvar90 = {}, {}
  for r in rows:
    if r["point"] in ids and r["metric"] == metric and r["statistic"] == "mean":
      entries[r["point"]] = r
    if r["point"] in ids and r["metric"] == metric and r["statistic"] == "cvar90":
      cvar90[r["point"]] = float(r["value"])   # the mean of the worst 10% of draws
  settings = {}
  for pid, r in entries.items():
    key = (r["task"], r["threat"], r["mu_H"])
    side = "tune" if r["block"] == TUNE else "eval"
    settings.setdefault(key, {"tune": {}, "eval": {}})[side][r["rule"]] = pid

  def value(pid):
    return float(entries[pid]["value"])

  def ran(pid):
    try:
      return _ran(workdir, pid)
    except sweep.RECORD_ERRORS as e:
      log(f"mu_aware report: {sweep.config_path(workdir, pid)} unreadable "
          f"({type(e).__name__}); what point {pid} ran is unknown")
      return None

  pct = 100.0
  table, tuning_rows, tuning_lines = [], [], []
  for key, sides in sorted(settings.items()):
    if not sides["tune"] and not any(classic_rule(label) for label in sides["eval"]):
      continue  # the prior block alone: no classic rule ran in this setting
    tuned, undefined = _tune(sides["tune"], value)
    for rule in undefined:
      log(f"mu_aware report: {key} {rule}: its metric is undefined on the tuning draws for "
          "every candidate; left out")
    if not tuned:
      log(f"mu_aware report: {key}: no classic rule tuned (no tuning points); not compared "
          "(the best classic rule is picked on the tuning draws only)")
      continue
    best = max(tuned, key=lambda rule: tuned[rule][1])
    these = [{"task": key[0], "threat": key[1], "mu_H": key[2], "rule": classic_rule(label),
              "candidate": label, "tuning_mean": value(pid),
              "kept": tuned.get(classic_rule(label), (None,))[0] == label,
              "best_classic": tuned[best][0] == label}
             for label, pid in sides["tune"].items() if classic_rule(label) is not None]
    tuning_rows += these
    tuning_lines.append(f"{' '.join(key)}:")
    for rule in dict.fromkeys(t["rule"] for t in these):
      tuning_lines.append(f"  {rule}: " + ", ".join(
          " ".join(filter(None, [t["candidate"][len(rule):].strip("[]"),
                                 f"{pct * t['tuning_mean']:.2f}" + "*" * t["kept"]]))
          for t in these if t["rule"] == rule) + ("   <- best classic rule" if rule == best
                                                  else ""))
    best_pid = sides["eval"].get(tuned[best][0])
    if best_pid is None:
      log(f"mu_aware report: {key} the best classic rule on the tuning draws, {tuned[best][0]}, "
          "has no evaluation point; not compared")
      continue
    try:
      base_arrays = sweep.load_point(sweep.point_path(workdir, best_pid))
      base_values = sweep.draw_values(base_arrays)
    except sweep.NPZ_ERRORS:
      log(f"mu_aware report: {key} best classic point unreadable; left out")
      continue
    best_ran = ran(best_pid) or (None, None)
    kept = {label for label, _ in tuned.values()}
    for label, pid in sides["eval"].items():
      rule = classic_rule(label)
      if rule is not None and label not in kept:
        continue  # a candidate the tuning did not keep
      try:
        arrays = sweep.load_point(sweep.point_path(workdir, pid))
      except sweep.NPZ_ERRORS:
        log(f"mu_aware report: {key} {label} unreadable; left out")
        continue
      this_ran = ran(pid)
      values = sweep.draw_values(arrays)
      # A per-rule worst case repeats a different honest set: not the same draws.
      same = bool(np.array_equal(arrays["honest_masks"], base_arrays["honest_masks"]))
      d = evaluation.paired_difference(values[metric], base_values[metric])
      table.append({"block": entries[pid]["block"], "task": key[0], "threat": key[1],
                    "mu_H": key[2], "rule": rule or label,
                    "f": "?" if this_ran is None else this_ran[0],
                    "bucket_size": "?" if this_ran is None else this_ran[1],
                    "tuning_mean": tuned[rule][1] if rule is not None else None,
                    "mean": value(pid), "cvar90": cvar90.get(pid, float("nan")),
                    "best_classic": best, "best_classic_f": best_ran[0],
                    "best_classic_bucket_size": best_ran[1],
                    "best_classic_tuning_mean": tuned[best][1],
                    "best_classic_mean": value(best_pid), "same_draws": same,
                    "gain": d["mean"],
                    **{k: d[k] for k in ("ci_low", "ci_high", "p_value", "pairs", "undefined",
                                         "deterministic", "identical_draws")}})
  for tags, reason in REFUSED.items():
    log(f"mu_aware report: refused {tags}: {reason}")
  paths = []
  if tuning_rows:
    paths.append(_write_csv(os.path.join(workdir, "mu_aware_tuning.csv"), tuning_rows,
                            ["task", "threat", "mu_H", "rule", "candidate", "tuning_mean",
                             "kept", "best_classic"]))
    log(f"\nTuning: {metric} mean (%) of each classic rule's candidates on the tuning draws "
        f"(seed {c.tuning.seed}, {c.tuning.num_samples} draws each; * the candidate kept)")
    log("\n".join(tuning_lines))
  if not table:
    return paths
  paths.append(_write_csv(
      os.path.join(workdir, "mu_aware_gains.csv"), table,
      ["block", "task", "threat", "mu_H", "rule", "f", "bucket_size", "tuning_mean", "mean",
       "cvar90", "best_classic", "best_classic_f", "best_classic_bucket_size",
       "best_classic_tuning_mean", "best_classic_mean", "gain", "ci_low", "ci_high", "p_value",
       "pairs", "undefined", "deterministic", "identical_draws", "same_draws"]))
  log(f"\n{metric} (%) on the evaluation draws (seed {c.base.seed}): mean, CVaR0.9 (mean of "
      "the worst 10% of draws), and each rule minus the best classic rule of its setting, "
      "picked on the tuning draws at its tuned f or bucket size (paired over the evaluation "
      "draws; paired t 95% CI; points). f, s: what the rule ran (a classic rule's tuned, a "
      "@quantile_f rule's the prior's quantile; –: the rule takes neither)")
  lines = []
  for t in table:
    this = "?" if t["f"] == "?" else _ran_text(t["f"], t["bucket_size"])
    vs = f"{t['best_classic']} {_ran_text(t['best_classic_f'], t['best_classic_bucket_size'])}"
    diff = ("(itself)" if t["rule"] == t["best_classic"] else
            results.difference_text({**t, "mean": t["gain"]}, scale=pct, digits=2))
    lines.append(f"{t['block']:6s} {t['task']:12s} {t['threat']:12s} {t['mu_H']:12s} "
                 f"{t['rule']:36s} {this:9s} {pct * t['mean']:6.2f} {pct * t['cvar90']:6.2f}  vs "
                 f"{vs:36s} {diff}")
  lines += results.report_notes(lines, any(t["identical_draws"] for t in table))
  log("\n".join(lines))
  log("\n" + regret_summary(table))
  return paths + _plot_gains(table, workdir, metric)


def _write_csv(path: str, table: list[dict], fields: list[str]) -> str:
  """`fields` of each row, comma-separated (None as an empty cell); returns `path`."""
  with open(path, "w") as fh:
    fh.write(",".join(fields) + "\n")
    for t in table:
      fh.write(",".join("" if t[k] is None else str(t[k]) for k in fields) + "\n")
  return path


def regret_summary(table) -> str:
  """Per rule, over the settings of the main and tasks blocks (prior correct): the mean and the
  worst of its difference from the best classic rule of the setting, and in how many settings
  its paired 95% CI lies above 0 (wins), below 0 (losses) or covers 0 (a deterministic
  difference, without variance, by its exact sign). The best classic rule
  is picked on the tuning draws, so on the evaluation draws another classic rule may beat it (a
  positive difference); what a classic rule's row shows is how much it loses, tuned, where
  another classic rule is best."""
  by_rule = {}
  for t in table:
    if t["block"] in ("main", "tasks") and np.isfinite(t["gain"]):
      by_rule.setdefault(t["rule"], []).append(t)
  lines = ["rule (main + tasks blocks, prior correct)  settings  mean diff  worst diff   "
           "wins  ties  losses   (points vs the best classic rule of each setting)"]
  for rule, ts in by_rule.items():
    gains = np.array([t["gain"] for t in ts])
    # a deterministic difference (no variance) counts by its exact sign
    signs = [results.difference_sign({**t, "mean": t["gain"]}) for t in ts]
    wins, losses = signs.count(1), signs.count(-1)
    lines.append(f"{rule:42s} {len(ts):8d}  {100 * gains.mean():+9.2f}  {100 * gains.min():+10.2f}"
                 f"   {wins:4d}  {len(ts) - wins - losses:4d}  {losses:6d}")
  return "\n".join(lines)


def _plot_gains(table, workdir, metric) -> list[str]:
  """mu_aware_gains.png: a panel per block (main, tasks, prior); in each, every prior-using
  rule's paired difference from the best classic rule of its setting, with its 95% CI."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  rows = [t for t in table if t["rule"] not in CLASSIC and t["block"] != "worst"
          and np.isfinite(t["gain"])]
  blocks = [b for b in ("main", "tasks", "prior") if any(t["block"] == b for t in rows)]
  if not blocks:
    return []
  fig, axes = plt.subplots(len(blocks), 1, figsize=(15, 4.6 * len(blocks)), squeeze=False)
  for ax, block in zip(axes[:, 0], blocks):
    if block == "prior":
      _plot_priors(ax, rows)
      continue
    mine = [t for t in rows if t["block"] == block]
    settings = list(dict.fromkeys((t["task"], t["threat"], t["mu_H"]) for t in mine))
    rules = list(dict.fromkeys(t["rule"] for t in mine))
    width = 0.8 / len(rules)
    for k, rule in enumerate(rules):
      pts = [(i, t) for i, st in enumerate(settings) for t in mine
             if (t["task"], t["threat"], t["mu_H"]) == st and t["rule"] == rule]
      ax.errorbar([i + (k - (len(rules) - 1) / 2) * width for i, _ in pts],
                  [100 * t["gain"] for _, t in pts],
                  yerr=np.nan_to_num([[100 * (t["gain"] - t["ci_low"]) for _, t in pts],
                                      [100 * (t["ci_high"] - t["gain"]) for _, t in pts]]),
                  fmt="os^vD<>ph*"[k // 10 % 10], ms=3, capsize=2, lw=0.8, label=rule,
                  color=f"C{k % 10}")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(settings)))
    ax.set_xticklabels([" ".join(st) for st in settings], rotation=20, ha="right", fontsize=7)
    ax.set_ylabel("points vs best classic")
    ax.set_title({"main": "digits α = 1, every threat, prior correct",
                  "tasks": "digits α = 0.3 and the synthetic task, ALIE, prior correct"}[block],
                 fontsize=9)
    ax.legend(fontsize=6, ncol=4, loc="lower left")
    ax.grid(alpha=0.3)
  fig.suptitle(f"Knowing μ_H: {metric} of each prior-using rule minus the best classic rule of "
               "its setting (picked, with its f, on the tuning draws; differences paired over "
               "the evaluation draws, 95% CI)", fontsize=10)
  fig.tight_layout()
  path = os.path.join(workdir, "mu_aware_gains.png")
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return [path]


def _plot_priors(ax, rows) -> None:
  """The prior panel: per (μ_H, rule), the difference under each prior (correct: the main
  block's ALIE point; ×2, ×0.5, permuted, absent: the prior block's)."""
  priors = ("correct", *PRIORS, "absent")
  mine = [t for t in rows if t["block"] == "prior"]
  groups = list(dict.fromkeys((t["mu_H"], t["rule"].split("|")[0]) for t in mine))
  def find(law, rule, prior):
    label = rule if prior == "correct" else f"{rule}|{prior}"
    block = "main" if prior == "correct" else "prior"
    return next((t for t in rows if t["block"] == block and t["task"] == "digits_a1"
                 and t["threat"] == "alie" and t["mu_H"] == law and t["rule"] == label), None)
  width = 0.8 / len(priors)
  for k, prior in enumerate(priors):
    pts = [(i, t) for i, (law, rule) in enumerate(groups)
           for t in [find(law, rule, prior)] if t is not None]
    ax.errorbar([i + (k - (len(priors) - 1) / 2) * width for i, _ in pts],
                [100 * t["gain"] for _, t in pts],
                yerr=np.nan_to_num([[100 * (t["gain"] - t["ci_low"]) for _, t in pts],
                                    [100 * (t["ci_high"] - t["gain"]) for _, t in pts]]),
                fmt="o", ms=3, capsize=2, lw=0.8, label=f"prior {prior}", color=f"C{k}")
  ax.axhline(0, color="black", lw=0.8)
  ax.set_xticks(range(len(groups)))
  ax.set_xticklabels([f"{law}: {rule}" for law, rule in groups], rotation=20, ha="right",
                     fontsize=7)
  ax.set_ylabel("points vs best classic")
  ax.set_title("the prior correct, ×2, ×0.5, permuted (on the wrong clients) or absent "
               "(digits α = 1, ALIE)", fontsize=9)
  ax.legend(fontsize=7, ncol=5, loc="lower left")
  ax.grid(alpha=0.3)
