"""The package's layers (``fkdiff/__init__.py``): no module imports from a layer above its own,
and no chain of imports between modules comes back to where it started."""

import ast
import os

from conftest import ROOT

import fkdiff

PACKAGE = os.path.join(ROOT, "fkdiff")


def _module_name(path: str) -> str:
  rel = os.path.relpath(path, ROOT)[:-len(".py")].replace(os.sep, ".")
  return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def _resolve(name: str, modules) -> str:
  """``name`` (``fkdiff.a.b`` or an attribute of it) as the longest module prefix."""
  while name not in modules:
    name = name.rpartition(".")[0]
  return name


def import_graph() -> dict:
  """``{module: {imported fkdiff modules}}``, function-local imports included."""
  paths = [os.path.join(d, f) for d, _, files in os.walk(PACKAGE) for f in files
           if f.endswith(".py")]
  modules = {_module_name(p): p for p in paths}
  graph = {}
  for name, path in modules.items():
    with open(path) as f:
      tree = ast.parse(f.read())
    targets = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        targets |= {a.name for a in node.names}
      elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        targets |= {f"{node.module}.{a.name}" for a in node.names}
    graph[name] = {_resolve(t, modules) for t in targets if t.split(".")[0] == "fkdiff"} - {name}
  return graph


def layer(module: str) -> int:
  parts = module.split(".")
  return fkdiff.LAYERS.index(parts[1]) if len(parts) > 1 else len(fkdiff.LAYERS)


def test_no_module_imports_from_a_layer_above_its_own():
  graph = import_graph()
  assert set(m.split(".")[1] for m in graph if "." in m) == set(fkdiff.LAYERS)
  upward = sorted((a, b) for a, targets in graph.items() for b in targets
                  if a.count(".") and layer(b) > layer(a))
  assert not upward, upward


def test_no_import_cycle():
  graph, state, path = import_graph(), {}, []

  def visit(m):   # depth-first; state 1 = on the current path, 2 = done.
    state[m] = 1
    path.append(m)
    for t in sorted(graph[m]):
      if state.get(t) == 1:
        raise AssertionError("import cycle: " + " -> ".join(path[path.index(t):] + [t]))
      if t not in state:
        visit(t)
    path.pop()
    state[m] = 2

  for m in sorted(graph):
    if m not in state:
      visit(m)
