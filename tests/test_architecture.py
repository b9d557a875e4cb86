"""The layout ARCHITECTURE.md promises: imports flow one way (no module of aigc_jax imports another that imports
it back, function-level imports included), rooms stay small, and nothing points outside the repository."""
import ast
import os
import re

ROOT = os.path.join(os.path.dirname(__file__), "..")
PACKAGE = os.path.join(ROOT, "aigc_jax")
MAX_LINES = 400


def _modules():
  """{dotted module name: source path} for every module of the package."""
  out = {}
  for dirpath, _, files in os.walk(PACKAGE):
    for f in files:
      if f.endswith(".py"):
        rel = os.path.relpath(os.path.join(dirpath, f), ROOT)[:-3].split(os.sep)
        out[".".join(rel[:-1] if rel[-1] == "__init__" else rel)] = os.path.join(dirpath, f)
  return out


def _resolve(name, modules):
  """The longest prefix of `name` that is a module of the package (None for third-party names)."""
  parts = name.split(".")
  for i in range(len(parts), 0, -1):
    if ".".join(parts[:i]) in modules:
      return ".".join(parts[:i])
  return None


def import_graph():
  """{module: {modules it imports}} from every import statement, wherever it sits in the file."""
  modules = _modules()
  graph = {}
  for name, path in modules.items():
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read(), path)
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    edges = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
        # `from pkg import sub` imports the submodule when there is one, else a name from pkg itself.
        targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
      else:
        continue
      edges |= {m for m in (_resolve(t, modules) for t in targets) if m and m != name}
    graph[name] = edges
  return graph


def _cycles(graph):
  """Strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

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
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_the_cycle_finder_finds_a_cycle():
  assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
  assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_one_that_imports_it_back():
  graph = import_graph()
  assert "aigc_jax.runtime" in graph["aigc_jax.trainer"] and "aigc_jax.evaluation.runner" in graph["aigc_jax.trainer"]
  assert _cycles(graph) == []


def test_library_files_stay_small():
  long = {path: n for path in _modules().values()
          if (n := sum(1 for _ in open(path, encoding="utf-8"))) > MAX_LINES}
  assert not long, f"split these into rooms of their own: {long}"


def test_nothing_refers_to_files_outside_the_repository():
  pattern = re.compile(r"\.\./shared|DESIGN\.md")
  hits = []
  for dirpath, dirs, files in os.walk(ROOT):
    dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("__pycache__", "build") and
               not d.endswith(".egg-info")]
    for f in files:
      if f.endswith((".py", ".md", ".toml", ".ipynb")) and f != os.path.basename(__file__):
        with open(os.path.join(dirpath, f), encoding="utf-8") as fh:
          hits += [f"{os.path.relpath(os.path.join(dirpath, f), ROOT)}:{i}" for i, line in enumerate(fh, 1)
                   if pattern.search(line)]
  assert not hits, hits
