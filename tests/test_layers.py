"""The layers of docs/design.md ("Layers and the direction of imports"): a module imports only from its own layer
or the ones below, and no two modules import each other, directly or through a chain. Read from the source with
ast, so an import inside a function counts as much as one at the top. An import inside a function says why it
is there (start-up time, an optional package, a process set up first), in a comment beside it."""

from __future__ import annotations

import ast
import os
from typing import Iterator, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LAYERS = (
    ("common",),
    ("envs", "networks"),
    ("agents",),
    ("replay",),
    ("plasticity",),  # the probes: pure functions of a network, its parameters and a batch
    ("training",),  # the processes: learner, actors, evaluator, probe worker, supervisor; RunConfig
    ("reports",),
    ("train", "eval", "sweep", "compare", "bench", "plasticity.__main__"),  # the entry points
)
"""Lowest first. A name stands for a module and everything under it; the longest name that matches wins, so
`plasticity.__main__` (the offline probe CLI, `python -m plasticity`) is an entry point while the rest of
`plasticity` is a library."""

SKIPPED_DIRS = {"tests", "examples", "docs", "build", "dist"}


def project_modules(root: str) -> dict[str, str]:
  """Module name -> path of every .py file of the project (tests and hidden or virtual-env folders aside)."""
  modules = {}
  for folder, subfolders, files in os.walk(root):
    subfolders[:] = sorted(d for d in subfolders if not d.startswith(".") and d not in SKIPPED_DIRS
                           and not d.endswith(".egg-info") and not os.path.exists(os.path.join(folder, d, "pyvenv.cfg")))
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        module = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
        modules[module.removesuffix(".__init__")] = path
  return modules


def imports_of(module: str, path: str, modules: dict[str, str]) -> Iterator[tuple[str, int]]:
  """(project module imported, line) for every import statement in the file, wherever it stands."""
  package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
  for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
    if isinstance(node, ast.Import):
      for alias in node.names:
        target = _longest_module(alias.name, modules)
        if target:
          yield target, node.lineno
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
        base = f"{parent}.{base}".strip(".")
      for alias in node.names:
        target = _longest_module(f"{base}.{alias.name}", modules) or _longest_module(base, modules)
        if target and target != module:
          yield target, node.lineno


def _longest_module(name: str, modules: dict[str, str]) -> Optional[str]:
  parts = name.split(".")
  for end in range(len(parts), 0, -1):
    candidate = ".".join(parts[:end])
    if candidate in modules:
      return candidate
  return None


def layer_of(module: str) -> Optional[int]:
  best = None
  for index, names in enumerate(LAYERS):
    for name in names:
      if (module == name or module.startswith(name + ".")) and (best is None or len(name) > len(best[1])):
        best = (index, name)
  return None if best is None else best[0]


def import_graph(root: str) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
  """The modules and, for each, the project modules it imports with the first line that does."""
  modules = project_modules(root)
  graph: dict[str, dict[str, int]] = {}
  for module, path in modules.items():
    graph[module] = {}
    for target, line in imports_of(module, path, modules):
      graph[module].setdefault(target, line)
  return modules, graph


def layer_violations(root: str) -> list[str]:
  """One line per module without a layer and per import that points up."""
  modules, graph = import_graph(root)
  problems = [f"{module}: in no layer of LAYERS" for module in modules if layer_of(module) is None]
  for module, targets in graph.items():
    for target, line in targets.items():
      here, there = layer_of(module), layer_of(target)
      if here is not None and there is not None and there > here:
        problems.append(f"{os.path.relpath(modules[module], root)}:{line}: {module} (layer {here}) imports "
                        f"{target} (layer {there})")
  return sorted(problems)


def import_cycles(root: str) -> list[list[str]]:
  """The groups of modules that reach each other through imports (strongly connected components above one)."""
  _, graph = import_graph(root)
  index: dict[str, int] = {}
  low: dict[str, int] = {}
  stack: list[str] = []
  cycles = []

  def visit(module: str) -> None:  # Tarjan's algorithm; the graph has ~100 modules, recursion is fine
    index[module] = low[module] = len(index)
    stack.append(module)
    for target in graph[module]:
      if target not in index:
        visit(target)
        low[module] = min(low[module], low[target])
      elif target in stack:
        low[module] = min(low[module], index[target])
    if low[module] == index[module]:
      group = []
      while True:
        member = stack.pop()
        group.append(member)
        if member == module:
          break
      if len(group) > 1:
        cycles.append(sorted(group))

  for module in sorted(graph):
    if module not in index:
      visit(module)
  return cycles


def unexplained_local_imports(root: str) -> list[str]:
  """`path:line: statement` for each import inside a function with no reason beside it: a comment on its line or
  on another line of its block (the run of import, comment and blank lines it stands in)."""
  problems = []
  for path in sorted(project_modules(root).values()):
    source = open(path, encoding="utf-8").read()
    lines = source.splitlines()
    local = {node.lineno for function in ast.walk(ast.parse(source, path))
             if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))
             for node in ast.walk(function) if isinstance(node, (ast.Import, ast.ImportFrom))}
    for line in sorted(local):
      if not any("#" in lines[i] for i in _block(lines, line - 1)):
        problems.append(f"{os.path.relpath(path, root)}:{line}: {lines[line - 1].strip()}")
  return problems


def _block(lines: list[str], index: int) -> range:
  """The indices of the run of import, comment and blank lines around line `index`."""
  def part_of_block(i: int) -> bool:
    text = lines[i].strip()
    return not text or text.startswith(("import ", "from ", "#"))

  first, last = index, index
  while first > 0 and part_of_block(first - 1):
    first -= 1
  while last + 1 < len(lines) and part_of_block(last + 1):
    last += 1
  return range(first, last + 1)


def test_every_import_points_down_the_layers():
  assert layer_violations(ROOT) == []


def test_no_modules_import_each_other():
  assert import_cycles(ROOT) == []


def test_every_import_inside_a_function_says_why():
  assert unexplained_local_imports(ROOT) == []


def _write_tree(root, files: dict[str, str]) -> None:
  for relative, text in files.items():
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_an_upward_import_an_unlayered_module_and_a_cycle_are_each_found(tmp_path):
  _write_tree(tmp_path, {
      "common/__init__.py": "", "common/util.py": "import os\n",
      "training/__init__.py": "", "training/loop.py": "from common import util\n",
      "plasticity/__init__.py": "", "plasticity/probe.py": "def f():\n  from training.loop import x\n",
      "plasticity/__main__.py": "from training import loop\n",  # an entry point: may import anything
      "envs/__init__.py": "", "envs/a.py": "from envs import b\n", "envs/b.py": "import envs.a\n",
      "newpkg/__init__.py": "",
  })
  assert layer_violations(str(tmp_path)) == [
      "newpkg: in no layer of LAYERS",
      "plasticity/probe.py:2: plasticity.probe (layer 4) imports training.loop (layer 5)",
  ]
  assert import_cycles(str(tmp_path)) == [["envs.a", "envs.b"]]


def test_a_local_import_without_a_reason_is_found(tmp_path):
  _write_tree(tmp_path, {
      "common/__init__.py": "",
      "common/a.py": ("def slow():\n  import json\n\n  return json\n"
                      "def fast():\n  import json  # a reason\n  return json\n"
                      "def grouped():\n  # one reason for the block\n  import json\n\n  import os\n  return json, os\n"),
  })
  assert unexplained_local_imports(str(tmp_path)) == ["common/a.py:2: import json"]
