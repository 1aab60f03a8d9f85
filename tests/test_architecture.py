"""The package layout: no import cycles between minillm's modules, and every folder says what it holds.

The import graph is read from the source with ast, so it holds every import: at module level,
inside functions (lazy imports), under `if TYPE_CHECKING`. An edge goes to the module an import
names (`from minillm.model import layers` names minillm.model.layers; `from minillm.model.gpt2
import GPT2` names minillm.model.gpt2).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# package name -> its folder; kernels/ ships as minillm.kernels (see pyproject's package-dir)
PACKAGE_DIRS = {"minillm": ROOT / "minillm", "minillm.kernels": ROOT / "kernels"}


def module_files() -> dict[str, Path]:
    """Every module of the package, by dotted name (a package by its __init__.py)."""
    modules = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The minillm modules that the module `name` imports anywhere in its source."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:                                   # relative: from .x import y
                anchor = name.split(".")[: len(name.split(".")) - node.level + is_package]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:                         # `from pkg import module`
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {module for module in found if module in known and module != name}


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imported_modules(name, path, set(files)) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None: a depth-first search for an edge back into the path."""
    state: dict[str, str] = {}                               # "active" on the path, then "done"
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "active"
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "active":
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_graph_sees_lazy_imports():
    graph = import_graph()
    assert "minillm.inference.generate" in graph["minillm.model.gpt2"]   # inside GPT2.generate
    assert "minillm.tokenizer.fast" in graph["minillm.tokenizer.bpe"]     # inside FastTokenizer
    assert "minillm.model.layers" in graph["minillm.kernels.backend"]


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("package", sorted(name for name, path in module_files().items()
                                           if path.name == "__init__.py"))
def test_every_package_says_what_it_holds(package):
    path = module_files()[package]
    assert ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))), f"{path} has no docstring"
