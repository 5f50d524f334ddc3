"""The registry entry holds every fact about a stage (issue 30): its published κ or why none, its
secure averages, its ByzFL equivalent. Every registered stage declares each fact or is listed
below with why it has none, and the modules that use a fact (robustness, benchmark, byzfl_loop)
read it from the entry and keep no table of their own, so adding a rule touches one place.
(numpy_reference.py is the tests' independent float64 oracle and stays separate on purpose.)"""

from __future__ import annotations

import ast
import pathlib
import sys
import types

import jax.numpy as jnp
import pytest

from fedjax_robust import benchmark
from fedjax_robust import byzfl_loop
from fedjax_robust.aggregators import registry
from fedjax_robust.aggregators import robustness

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "fedjax_robust"

# The stages with a published κ (robustness.py's docstring: Allouah et al. 2023 Table 1 and the
# NNM lemma, Allouah et al. 2024 Theorem 3.2); every other stage's entry says why it has none.
THEORY_BOUNDED = {"trimmed_mean", "coordinate_median", "geometric_median", "krum",
                  "nearest_neighbor_mixing", "adaptive_robust_clipping"}

# Rules that run under secure aggregation used alone (the registry's docstring and RFA's
# accounting): their output is a function of weighted sums of the rows.
SECURE = {"mean", "geometric_median", "rfa_one_step"}

# Stages without a ByzFL equivalent, and why (ByzFL's classes at LPD-EPFL/byzfl 69bd1ac: Average,
# Median, TrMean, GeometricMedian, Krum, MultiKrum, CenteredClipping, MDA, MoNNA, Meamed, CAF,
# SMEA; pre-aggregators NNM, Bucketing, Clipping, ARC).
_NOT_IN_BYZFL = "ByzFL has no class for it"
NO_BYZFL = {
    "majority_vote": _NOT_IN_BYZFL, "rfa_one_step": _NOT_IN_BYZFL, "bulyan": _NOT_IN_BYZFL,
    "dnc": _NOT_IN_BYZFL, "signguard": _NOT_IN_BYZFL, "clipped_clustering": _NOT_IN_BYZFL,
    "flame": _NOT_IN_BYZFL, "fltrust": _NOT_IN_BYZFL, "phocas": _NOT_IN_BYZFL,
    "foolsgold": _NOT_IN_BYZFL, "robust_lr": _NOT_IN_BYZFL, "weak_dp": _NOT_IN_BYZFL,
    "flare": _NOT_IN_BYZFL, "crfl": _NOT_IN_BYZFL,
    "fldetector": _NOT_IN_BYZFL,
    "posterior_filter": "this project's prior-aware rule (issue 15)",
    "cluster_aggregate": "this project's prior-aware rule (issue 15)",
    "adaptive_trim": "this project's prior-aware rule (issue 15)",
    "posterior_trim": "this project's prior-aware rule (issue 29)",
}


def test_every_stage_declares_kappa_or_why_not():
  for name in registry.names():
    fact = registry.entry(name).kappa
    assert fact is not None, f"{name}: declare kappa=Kappa(bound, source) or why none"
    assert fact.source.strip(), name
  bounded = {n for n in registry.names() if registry.entry(n).kappa.bound is not None}
  assert bounded == THEORY_BOUNDED


def test_robustness_reports_kappa_exactly_for_the_entries_with_one():
  n, f = 11, 3
  r = f / (n - 2 * f)
  for name in registry.names("rule"):
    fact = registry.entry(name).kappa
    got = robustness.kappa_bounds(name, n, f)
    if fact.bound is None:
      assert got["upper"] is None and got["source"].endswith(f"upper: {name}: {fact.source}")
    else:
      assert got["upper"] == pytest.approx(fact.bound(r))
  for pre in registry.names("pre"):
    spec = f"{pre}+trimmed_mean"
    upper = robustness.kappa_upper_bound(spec, n, f)
    assert (upper is None) == (registry.entry(pre).kappa.bound is None), pre
  # The published closed forms (Allouah et al. 2023, Table 1; NNM lemma; ARC Theorem 3.2).
  assert robustness.kappa_upper_bound("cwtm", n, f) == pytest.approx(6 * r * (1 + r))
  assert robustness.kappa_upper_bound("median", n, f) == pytest.approx(4 * (1 + r) ** 2)
  assert robustness.kappa_upper_bound("krum", n, f) == pytest.approx(6 * (1 + r))
  assert robustness.kappa_upper_bound("arc+nnm+gm", n, f) == pytest.approx(
      3 * 8 * f / (n - f) * (4 * (1 + r) ** 2 + 1))
  # A bound stands only where its kind does: a pre-aggregator's map is no rule's κ(r).
  assert robustness.kappa_upper_bound("nnm", n, f) is None
  assert robustness.kappa_upper_bound("krum+trimmed_mean", n, f) is None


def test_secure_averages_are_declared_by_the_secure_rules_only():
  declared = {n for n in registry.names() if registry.entry(n).secure_averages is not None}
  assert declared == SECURE == set(registry.SECURE_AVERAGES)
  # m = 9 clients, d = 100: one secure average sends m·(d + ⌈log₂ m⌉) = 9·104 numbers; the
  # geometric median costs 1 + its Weiszfeld iterations.
  aux = {"gm_iterations": jnp.int32(7)}
  got = registry.communication("geometric_median", aux, jnp.int32(9), 100)
  assert float(got["secure_averages"]) == 8 and float(got["numbers_sent"]) == 8 * 9 * 104
  got = registry.communication("mean", {}, jnp.int32(9), 100)
  assert float(got["secure_averages"]) == 1 and float(got["numbers_sent"]) == 9 * 104
  for spec in ("krum", "nearest_neighbor_mixing+mean", "bucketing+mean"):
    got = registry.communication(spec, aux, jnp.int32(9), 100)
    assert float(got["secure_averages"]) == 0 and float(got["numbers_sent"]) == 900


def test_every_stage_declares_its_byzfl_equivalent_or_is_listed_without_one():
  for name in registry.names():
    has = registry.entry(name).byzfl is not None
    assert has != (name in NO_BYZFL), (
        f"{name}: declare byzfl=ByzFL(class, args) in its entry, or list it in NO_BYZFL with why")
  assert set(NO_BYZFL) <= set(registry.names())


@pytest.fixture
def fake_byzfl(monkeypatch):
  """A stand-in `byzfl` module whose every class records its keyword arguments."""
  module = types.ModuleType("byzfl")

  class _Stage:
    def __init__(self, **kwargs):
      self.kwargs = kwargs

  module.__getattr__ = lambda name: type(name, (_Stage,), {})
  monkeypatch.setitem(sys.modules, "byzfl", module)
  return module


def _built(spec, f, options):
  pipeline = benchmark._byzfl_pipeline(spec, f, options)
  return None if pipeline is None else [(type(s).__name__, s.kwargs) for s in pipeline]


def test_benchmark_builds_byzfl_stages_from_the_entries(fake_byzfl):
  del fake_byzfl
  for name in registry.names():
    built = _built(name if registry.entry(name).kind == "rule" else f"{name}+krum", 2, {})
    fact = registry.entry(name).byzfl
    if fact is None:
      assert built is None, name
    else:
      assert built[0] == (fact.name, fact.args(2, {})), name
  # The table benchmark.py held before issue 30, byte for byte: classes and arguments, with the
  # defaults where an option is not given.
  assert _built("mean", 2, {}) == [("Average", {})]
  assert _built("median", 2, {}) == [("Median", {})]
  assert _built("nnm+cwtm", 2, {}) == [("NNM", {"f": 2}), ("TrMean", {"f": 2})]
  assert _built("gm", 2, {}) == [("GeometricMedian", {"T": 100})]
  assert _built("geometric_median", 2, {"geometric_median": {"maxiter": 7}}) == [
      ("GeometricMedian", {"T": 7})]
  assert _built("cc", 2, {}) == [("CenteredClipping", {"L": 3, "tau": 10.0})]
  assert _built("bucketing+clipping+arc+centered_clipping", 2, {
      "bucketing": {"bucket_size": 3}, "static_clipping": {"threshold": 0.5},
      "centered_clipping": {"iterations": 5, "tau": 1.5}}) == [
          ("Bucketing", {"s": 3}), ("Clipping", {"c": 0.5}), ("ARC", {"f": 2}),
          ("CenteredClipping", {"L": 5, "tau": 1.5})]
  for name, cls in [("meamed", "Meamed"), ("krum", "Krum"), ("multi_krum", "MultiKrum"),
                    ("mda", "MDA"), ("monna", "MoNNA"), ("caf", "CAF"), ("smea", "SMEA")]:
    assert _built(name, 2, {}) == [(cls, {"f": 2})]
  assert _built("nnm+bulyan", 2, {}) is None


def test_byzfl_loop_names_come_from_the_entries():
  # The table byzfl_loop.py held before issue 30.
  assert byzfl_loop.RULES == {
      "mean": ("Average", []), "median": ("Median", []), "trimmed_mean": ("TrMean", []),
      "geometric_median": ("GeometricMedian", []), "krum": ("Krum", []),
      "nnm+trimmed_mean": ("TrMean", ["NNM"])}
  for spec, (rule, pre) in byzfl_loop.RULES.items():
    *pre_stages, rule_stage = registry.split_spec(spec)
    assert rule == registry.entry(rule_stage).byzfl.name
    assert pre == [registry.entry(s).byzfl.name for s in pre_stages]


def _name_keyed_tables(path: pathlib.Path, names: set[str]) -> list[str]:
  """Dict literals (and `x in {...}`-style sets) keyed by two or more registered stage names."""
  found = []
  for node in ast.walk(ast.parse(path.read_text())):
    keys = node.keys if isinstance(node, ast.Dict) else (
        node.elts if isinstance(node, ast.Set) else [])
    hits = {k.value for k in keys if isinstance(k, ast.Constant) and k.value in names}
    if len(hits) >= 2:
      found.append(f"{path.name}:{node.lineno} keyed by {sorted(hits)}")
  return found


@pytest.mark.parametrize("module", ["aggregators/robustness.py", "benchmark.py",
                                    "byzfl_loop.py"])
def test_no_side_table_of_per_rule_facts(module):
  """A table keyed by rule names outside the registry (a κ, a ByzFL class, a secure-average
  count per rule) would let a new rule be added there and not in its entry."""
  names = set(registry.names()) | set(registry._ALIASES)  # pylint: disable=protected-access
  assert _name_keyed_tables(PACKAGE / module, names) == []
