"""The package layering holds: ltr <- indexing <- search <- monitoring <- scripts.

A package imports only those to its left (every import, also the ones inside functions),
and the modules' top-level imports form no cycle. Read from the source with ``ast``, so a
wrong arrow fails here before anyone has to draw the structure.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("ltr", "indexing", "search", "monitoring", "scripts")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in LAYERS:
        for path in sorted((ROOT / pkg).glob("*.py")):
            name = pkg if path.stem == "__init__" else f"{pkg}.{path.stem}"
            out[name] = path
    return out


def _imports(path: Path, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] in LAYERS}


def test_no_package_imports_one_to_its_right() -> None:
    upward = []
    for name, path in _modules().items():
        mine = LAYERS.index(name.split(".")[0])
        for imported in _imports(path, top_level_only=False):
            if LAYERS.index(imported.split(".")[0]) > mine:
                upward.append(f"{name} imports {imported}")
    assert upward == []


def test_top_level_imports_have_no_cycle() -> None:
    modules = _modules()
    graph = {
        name: {i for i in _imports(path, top_level_only=True) if i in modules and i != name}
        for name, path in modules.items()
    }
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []
    assert len(modules) > 40  # the walk saw the packages, not an empty tree
