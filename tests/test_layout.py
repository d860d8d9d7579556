"""The package's layering rules, checked on its source (``ast``, nothing is imported).

Every module of the package lies in one of these folders (docs/architecture.md); each may import
only from the folders listed for it:

- ``utils/``: shared utilities (errors, config checks, file integrity, model loading, stats, ...): nothing;
- ``mod/``: the method (config, ensemble, surgery, model, losses, variants, probe maths): ``utils``;
- ``data/`` (training records): ``utils``;
- ``loading/`` (the one model and adapter loader, :class:`ModelSource`): ``utils mod``;
- ``eval/``: ``utils mod data loading``; ``train/``: ``utils mod data loading eval``; ``export/``:
  ``utils mod data loading`` (no module loads a model through ``eval/``);
- ``studies/``: ``utils mod data loading eval train``; ``cli/``: everything.

Also: ``mod/ensemble.py`` imports nothing from the package (``modetune export`` ships it as the
exported folder's ``modeling_mod.py``); no module outside ``mod/`` reads a private attribute of
another object; no import cycles (function-level imports count: a lazy import is still a
dependency); no module over 500 lines; no function of ``mod/`` or ``utils/`` over 80 lines. Every
check reads the files present, so a new module is covered without editing this test.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "modetune"

ALLOWED = {
    "utils": set(),
    "mod": {"utils"},
    "data": {"utils"},
    "loading": {"utils", "mod"},
    "eval": {"utils", "mod", "data", "loading"},
    "train": {"utils", "mod", "data", "loading", "eval"},
    "export": {"utils", "mod", "data", "loading"},
    "studies": {"utils", "mod", "data", "loading", "eval", "train"},
    "cli": {"utils", "mod", "data", "loading", "eval", "train", "export", "studies"},
}
CORE = {"utils", "mod"}  # where functions stay under MAX_FUNCTION_LINES
SELF_CONTAINED = f"{PACKAGE}.mod.ensemble"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


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
    """The folder a module lies in (``None`` for the package itself or a module outside every folder)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ALLOWED) else None


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


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan); a lazy import is an edge too."""
    edges = {a: list(targets) for a, targets in graph.items()}
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
    assert _reachable(got, f"{PACKAGE}.losses")[f"{PACKAGE}.eval"] == [
        f"{PACKAGE}.losses", f"{PACKAGE}.eval.runner", f"{PACKAGE}.eval"]
    assert _cycles(got) == [[f"{PACKAGE}.eval.runner", f"{PACKAGE}.losses"]]


def test_the_real_package_has_its_known_edges(graph):
    assert f"{PACKAGE}.mod.losses" in graph[f"{PACKAGE}.mod.model"]
    assert f"{PACKAGE}.mod.ensemble" in graph[f"{PACKAGE}.mod.model"]
    assert f"{PACKAGE}.mod.model" in graph[f"{PACKAGE}.mod.variants"]
    assert graph[f"{PACKAGE}.mod.model"].get(f"{PACKAGE}.utils.version") is False  # a leaf: no lazy import of the package
    assert PACKAGE not in graph[f"{PACKAGE}.mod.model"]


def test_every_module_lies_in_a_known_folder(graph):
    """No module at the top level besides the package's ``__init__``; every folder is classified."""
    assert sorted(name for name in graph if name != PACKAGE and _layer(name) not in ALLOWED) == []
    assert {_layer(name) for name in graph} - {None} == set(ALLOWED)


def test_each_folder_imports_only_what_it_may(graph):
    """Followed through every import, direct or not."""
    found = []
    for source in sorted(graph):
        allowed = ALLOWED.get(_layer(source), set(ALLOWED)) | {_layer(source), None}
        for target, path in sorted(_reachable(graph, source).items()):
            if _layer(target) not in allowed:
                found.append(" -> ".join(path))
    assert found == []


def test_the_ensemble_module_imports_nothing_from_the_package(graph):
    assert graph[SELF_CONTAINED] == {}
    tree = ast.parse(module_files()[SELF_CONTAINED].read_text())
    roots = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    roots |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert roots <= {"__future__", "contextlib", "copy", "json", "math", "os", "shutil", "types", "torch", "transformers",
                     "safetensors", "peft"}


def test_no_module_outside_the_method_reads_private_attributes_of_other_objects():
    """``x._name`` only on ``self`` / ``cls`` / ``super()`` outside ``mod/``: the method's objects
    offer public parts (``MoDModel.parts``, ``.router``, ``.norms``, ``.head``, ``.head_spec()``)."""
    found = []
    for name, path in module_files().items():
        if _layer(name) == "mod":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                owner = node.value
                if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                    continue
                if isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "super":
                    continue
                found.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
    assert found == []


def test_no_import_cycles(graph):
    assert _cycles(graph) == []


def test_no_module_over_500_lines():
    lengths = {name: len(path.read_text().splitlines()) for name, path in module_files().items()}
    assert {name: n for name, n in lengths.items() if n > MAX_MODULE_LINES} == {}


def test_no_core_function_over_80_lines():
    """Past ~80 lines a function should be split, unless splitting would hide maths (then say why in a comment)."""
    long = []
    for name, path in module_files().items():
        if _layer(name) not in CORE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {length} lines")
    assert long == []
