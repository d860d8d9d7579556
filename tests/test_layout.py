"""The package's layering rules, checked on its source (``ast``, nothing is imported).

Layers, bottom to top (docs/architecture.md):
- core: ``config routing surgery losses model variants models stats probe prompts errors plotting``
  (and the package ``__init__``, the public face every submodule import runs first);
- ``data/`` (training records), then ``eval/`` and ``train/``, then ``studies/`` and ``cli/``.

Rules: core imports nothing from the layers above it; ``data/`` imports only core; ``eval/``
and ``train/`` never import ``studies/`` or ``cli/``; no import cycles among the package's
modules (function-level imports count: a lazy import is still a dependency); no module over
500 lines; no core function over 80 lines. Every check reads the files present, so a new
module is covered without editing this test.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "modetune"

CORE = {f"{PACKAGE}.{name}" for name in
        "config routing surgery losses model variants models stats probe prompts errors plotting version".split()
        } | {PACKAGE}
UPPER = ["data", "eval", "train", "studies", "cli",  # the layers above core, and the old homes of their code:
         "evaluation", "analysis", "training", "experiments", "lm_eval_adapter"]
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
# Function-level imports allowed to close a cycle, each with its reason.
ALLOWED_LAZY_EDGES: dict[tuple[str, str], str] = {}  # (importer, imported): why a lazy cycle is harmless


def module_files(src: Path = SRC) -> dict[str, Path]:
    """``{"modetune.eval.runner": path, "modetune": .../__init__.py, ...}`` for every ``.py`` file of the package."""
    files = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = path
    return files


def _imports(tree: ast.Module, module: str, is_package: bool, modules: set[str]):
    """Yield ``(imported package module, lazy)`` for each import in ``tree``; ``lazy``: inside a function."""
    lazy_nodes = {id(node) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                  for node in ast.walk(fn)}

    def resolve(name: str) -> str | None:  # the longest package module that ``name`` lies in
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    for node in ast.walk(tree):
        lazy = id(node) in lazy_nodes
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    yield resolve(alias.name), lazy
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:  # `from . import x` imports the submodule x when there is one
                target = f"{name}.{alias.name}" if f"{name}.{alias.name}" in modules else resolve(name)
                yield target, lazy


def import_graph(src: Path = SRC) -> dict[str, dict[str, bool]]:
    """``graph[a][b]``: ``a`` imports ``b`` (package modules only); the value is True when every such import is lazy."""
    files = module_files(src)
    modules = set(files)
    graph: dict[str, dict[str, bool]] = {name: {} for name in files}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        for target, lazy in _imports(tree, name, path.name == "__init__.py", modules):
            if target is not None and target != name:
                graph[name][target] = graph[name].get(target, True) and lazy
    return graph


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in UPPER else None


def _reachable(graph, start: str) -> dict[str, list[str]]:
    """Every module ``start`` imports, directly or not, with one import path to it."""
    paths, todo = {start: [start]}, [start]
    while todo:
        current = todo.pop()
        for target in graph[current]:
            if target not in paths:
                paths[target] = paths[current] + [target]
                todo.append(target)
    return paths


def _violations(graph, sources, forbidden_layers) -> list[str]:
    found = []
    for source in sorted(sources):
        for target, path in sorted(_reachable(graph, source).items()):
            if _layer(target) in forbidden_layers:
                found.append(" -> ".join(path))
    return found


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), allowed lazy edges removed."""
    edges = {a: [b for b, lazy in targets.items() if not (lazy and (a, b) in ALLOWED_LAZY_EDGES)]
             for a, targets in graph.items()}
    index, low, stack, on_stack, components, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return components


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_the_import_parser_sees_relative_lazy_and_submodule_imports(tmp_path):
    """A self-check, so the rules below cannot pass because no import was found."""
    pkg = tmp_path / PACKAGE
    (pkg / "eval").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .config import X\n")
    (pkg / "config.py").write_text("import json\n")
    (pkg / "losses.py").write_text("from . import config\n\ndef f():\n    from .eval import runner\n")
    (pkg / "eval" / "__init__.py").write_text("")
    (pkg / "eval" / "runner.py").write_text("from ..losses import f\nimport modetune.config\nfrom . import nothing\n")
    got = import_graph(tmp_path)
    assert got == {
        PACKAGE: {f"{PACKAGE}.config": False},
        f"{PACKAGE}.config": {},
        f"{PACKAGE}.losses": {f"{PACKAGE}.config": False, f"{PACKAGE}.eval.runner": True},
        f"{PACKAGE}.eval": {},
        f"{PACKAGE}.eval.runner": {f"{PACKAGE}.losses": False, f"{PACKAGE}.config": False, f"{PACKAGE}.eval": False},
    }
    assert _violations(got, CORE & set(got), set(UPPER)) == [
        f"{PACKAGE}.losses -> {PACKAGE}.eval.runner -> {PACKAGE}.eval", f"{PACKAGE}.losses -> {PACKAGE}.eval.runner"]
    assert _cycles(got) == [[f"{PACKAGE}.eval.runner", f"{PACKAGE}.losses"]]


def test_the_real_package_has_its_known_edges(graph):
    assert set(graph) >= CORE
    assert f"{PACKAGE}.losses" in graph[f"{PACKAGE}.model"] and f"{PACKAGE}.model" in graph[f"{PACKAGE}.variants"]
    assert graph[f"{PACKAGE}.model"].get(f"{PACKAGE}.version") is False  # a leaf: no lazy import of the package
    assert PACKAGE not in graph[f"{PACKAGE}.model"]


def test_core_imports_nothing_from_the_layers_above(graph):
    """Core reaches no module of data/, eval/, train/, studies/, cli/ (nor their old homes), even indirectly."""
    assert _violations(graph, CORE & set(graph), set(UPPER)) == []


def test_data_imports_only_core(graph):
    data = {name for name in graph if _layer(name) == "data"}
    assert _violations(graph, data, set(UPPER) - {"data"}) == []


def test_eval_and_train_never_import_studies_or_cli(graph):
    lower = {name for name in graph if _layer(name) in {"eval", "train"}}
    assert _violations(graph, lower, {"studies", "cli", "experiments"}) == []


def test_no_import_cycles(graph):
    assert _cycles(graph) == []


def test_allowed_lazy_edges_are_lazy(graph):
    for source, target in ALLOWED_LAZY_EDGES:
        assert graph.get(source, {}).get(target, True) is True, f"{source} -> {target} must stay a function-level import"


def test_no_module_over_500_lines():
    lengths = {name: len(path.read_text().splitlines()) for name, path in module_files().items()}
    assert {name: n for name, n in lengths.items() if n > MAX_MODULE_LINES} == {}


def test_no_core_function_over_80_lines():
    """Past ~80 lines a function should be split, unless splitting would hide maths (then say why in a comment)."""
    long = []
    for name, path in module_files().items():
        if name not in CORE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {length} lines")
    assert long == []
