"""The package's import layers (BUILD.md, "Layers"): every internal import of a module under
fedjax_robust/ points to its own layer or a lower one, and no modules import each other in a
cycle. The graph is read with `ast` from the source (imports inside functions count: a lazy import
is still a dependency), so nothing is imported to check it.

`KNOWN_VIOLATIONS` lists today's upward imports, each with why it exists; the typed `Job`
refactor of issue 30 removed them (the last, report.sweeps.* -> sweep, went when the sweep's
files moved to `store` and its tables and figures to `report.tables`). The test fails on an
upward import that is not listed, and on a listed one that no longer exists, so the list only
shrinks; no cycle is allowed (the last one, config <-> server_prior, is gone).

`python tests/test_layers.py` prints the graph, module by module with its layer."""

from __future__ import annotations

import ast
import pathlib

PACKAGE = "fedjax_robust"
ROOT = pathlib.Path(__file__).resolve().parent.parent / PACKAGE

# Layers, low to high. A module may import its own layer and the layers before it.
LAYERS = ("library", "job", "engine", "store", "report", "sweep")

# Module or package (dotted, without `fedjax_robust.`) -> layer. A package entry covers its
# submodules; the longest matching entry wins. "" is the package's own `__init__`.
LAYER_OF = {
    # library: pure functions and their registries (rules, attacks and faults, laws of μ_H,
    # models, data, DP, compression, the theory's formulas); imports only the library.
    "": "library",
    "errors": "library",
    "domains": "library",
    "aggregators": "library",
    "attacks": "library",
    "models": "library",
    "data": "library",
    "compression": "library",
    "privacy": "library",
    "honest_sets": "library",
    "graphs": "library",
    "server_optimizers": "library",
    "evaluation": "library",
    "numpy_reference": "library",
    "theory": "library",
    "sharding": "library",
    "worst_case": "library",
    # the theory of every draw (theory.report: per_draw, convex_constants, objectives): numbers
    # from a run's records and the task's premises, imports only the library; text is the
    # report's (results).
    # local_training: a client's local SGD as static settings, built by the job, run by the
    # simulator.
    "local_training": "library",
    # provenance: what made a number (code version, numbers version, numerical stack), stamped
    # on every record by the engine and checked by the caches; imports nothing internal.
    "provenance": "library",
    # job: the only layer that reads a ConfigDict (schema, validation, resolution).
    "config": "job",
    "server_prior": "job",
    # engine: takes the job and the data, trains, returns records.
    "training": "engine",
    "build": "engine",
    "experiment": "engine",
    # experiment's parts: the runs' cache (run_cache: AggregatorRun, fingerprints, the saved
    # worst-case search), the chunking and memory plan (memory), a worst case's record and line
    # (worst_case_summary); they import the library, the job and each other, never experiment.
    "run_cache": "engine",
    # the pretrained base of federated fine-tuning, cached like a run (issue 31)
    "pretraining": "engine",
    "memory": "engine",
    "worst_case_summary": "engine",
    "byzfl_loop": "engine",
    "benchmark": "engine",
    # the scaling benchmark (issue 37): plans, measures and trains points of the default job
    "scaling": "engine",
    # checkpoints inside an aggregator's run (issue 34): orbax stores the run loop saves to and
    # resumes from
    "checkpoints": "engine",
    # store: a sweep's files, one format each: its points (points/<id>.json records,
    # points/<id>.npz per-draw values) and results.csv / timings.csv with their rows' vocabulary
    # (the runs' cache is the engine's: run_cache).
    "store": "store",
    # report: records and the job -> text, CSV, figures; never trains (report.tables: a sweep's
    # tables, paired comparisons and figures, read from the store).
    "results": "report",
    "report": "report",
    # sweep: grids of jobs, run point by point (the runner: a point's summary -> its rows).
    "sweep": "sweep",
}

# (importer, imported) pairs that point upward today, each removed by the typed-Job refactor: none
# left since the sweeps' analyses (report.sweeps.*) read points through store and write through
# report.tables instead of sweep.
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()


def _name(path: pathlib.Path, root: pathlib.Path) -> str:
  """`aggregators/krum.py` -> "aggregators.krum"; a package's `__init__.py` -> the package."""
  parts = path.relative_to(root).with_suffix("").parts
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def import_graph(root: pathlib.Path = ROOT) -> dict[str, dict[str, int]]:
  """module -> {internal module it imports: the line of the first such import}, over every `.py`
  under `root` (the package `root.name`). `from p import x` names the submodule `p.x` when there
  is one, else the module `p`; `import p.q.r` names the longest prefix that is a module; relative
  imports are resolved against the importer's package."""
  package = root.name
  modules = {_name(p, root): p for p in sorted(root.rglob("*.py"))}

  def internal(dotted: str) -> str | None:
    parts = dotted.split(".")
    if parts[0] != package:
      return None
    name = ".".join(parts[1:])
    while name not in modules:
      name = name.rpartition(".")[0]
    return name

  graph = {}
  for name, path in modules.items():
    here = name if path.name == "__init__.py" else name.rpartition(".")[0]
    deps = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      targets = []
      if isinstance(node, ast.Import):
        targets = [internal(a.name) for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        if node.level:
          up = here.split(".") if here else []
          up = up[:len(up) - node.level + 1]
          base = ".".join([package, *up, *([node.module] if node.module else [])])
        else:
          base = node.module
        if internal(base) is None:
          continue
        module = internal(base)
        for a in node.names:
          sub = f"{module}.{a.name}" if module else a.name
          targets.append(sub if sub in modules else module)
      for target in targets:
        if target is not None and target != name:
          deps.setdefault(target, node.lineno)
    graph[name] = deps
  return graph


def layer(module: str) -> str | None:
  """The layer of the longest `LAYER_OF` entry that is `module` or a package above it."""
  parts = module.split(".") if module else []
  for k in range(len(parts), -1, -1):
    key = ".".join(parts[:k])
    if key in LAYER_OF:
      return LAYER_OF[key]
  return None


def cycles(graph: dict[str, dict[str, int]]) -> set[frozenset[str]]:
  """The strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on_stack, found = {}, {}, [], set(), set()

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = set()
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.add(w)
        if w == v:
          break
      if len(component) > 1:
        found.add(frozenset(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return found


def upward(graph: dict[str, dict[str, int]]) -> dict[tuple[str, str], int]:
  """(importer, imported) -> line, for every import into a higher layer."""
  rank = {name: i for i, name in enumerate(LAYERS)}
  return {(m, t): line for m, deps in graph.items() for t, line in deps.items()
          if rank[layer(t)] > rank[layer(m)]}


def _where(m: str, line: int) -> str:
  path = ROOT.joinpath(*m.split(".")) if m else ROOT
  path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
  return f"{path.relative_to(ROOT.parent)}:{line}"


def test_every_module_has_a_layer_and_every_entry_a_module():
  graph = import_graph()
  assert set(LAYER_OF.values()) <= set(LAYERS)
  missing = sorted(m for m in graph if layer(m) is None)
  assert not missing, (f"modules without a layer: {missing}; add each (or its package) to "
                       f"LAYER_OF in tests/test_layers.py and to BUILD.md's Layers section")
  stale = sorted(k for k in LAYER_OF if k not in graph)
  assert not stale, f"LAYER_OF names modules that no longer exist: {stale}"


def test_imports_point_to_the_same_or_a_lower_layer():
  found = upward(import_graph())
  new = sorted(set(found) - KNOWN_VIOLATIONS)
  assert not new, "upward imports (importer's layer < imported's layer):\n" + "\n".join(
      f"  {_where(m, found[m, t])}: {m} ({layer(m)}) imports {t} ({layer(t)})" for m, t in new)
  gone = sorted(KNOWN_VIOLATIONS - set(found))
  assert not gone, f"KNOWN_VIOLATIONS lists imports that are gone, remove them: {gone}"


def test_no_import_cycle():
  """The last cycle, config <-> server_prior, went with 5b4c8aa (server_prior reads no config)."""
  graph = import_graph()
  found = sorted(sorted(c) for c in cycles(graph))
  assert not found, "import cycles:\n" + "\n".join(
      "  " + ", ".join(f"{m} -> {t} ({_where(m, graph[m][t])})"
                       for m in c for t in sorted(graph[m]) if t in c) for c in found)


def test_import_graph_reads_every_kind_of_import(tmp_path):
  """The scanner on a package written here, against its edges listed by hand."""
  pkg = tmp_path / "pkg"
  (pkg / "sub").mkdir(parents=True)
  files = {
      "__init__.py": "",
      "a.py": "import os\nfrom pkg import b\nfrom pkg.sub import c\n",
      "b.py": "def f():\n  from pkg.sub.c import g  # a lazy import counts\n",
      "sub/__init__.py": "from pkg.sub.c import g\nVALUE = 1\n",
      "sub/c.py": "from . import d\nfrom .. import a\nimport pkg.sub.d as dd\n",
      "sub/d.py": "from pkg.sub import VALUE\nfrom pkg import sub\nimport pkg\n",
  }
  for rel, text in files.items():
    (pkg / rel).write_text(text)
  graph = {m: set(deps) for m, deps in import_graph(pkg).items()}
  assert graph == {
      "": set(),
      "a": {"b", "sub.c"},
      "b": {"sub.c"},
      "sub": {"sub.c"},
      "sub.c": {"sub.d", "a"},
      "sub.d": {"sub", ""},
  }
  assert cycles(import_graph(pkg)) == {frozenset({"a", "b", "sub", "sub.c", "sub.d"})}


if __name__ == "__main__":
  g = import_graph()
  for m in sorted(g, key=lambda m: (LAYERS.index(layer(m)), m)):
    print(f"{layer(m):8} {m or PACKAGE} -> {', '.join(sorted(g[m]))}")
