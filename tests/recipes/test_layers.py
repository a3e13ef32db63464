"""The recipe runner's modules import each other without a cycle, and each stays under 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

RECIPES = Path(__file__).resolve().parents[2] / "netcompress" / "recipes"


def _imports(path: Path) -> set[str]:
    """The ``netcompress.recipes.*`` modules a file imports (at any depth: lazy imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("netcompress.recipes"):
            if node.module == "netcompress.recipes":
                found.update(f"netcompress.recipes.{alias.name}" for alias in node.names)
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("netcompress.recipes."))
    return found


def _graph() -> dict[str, set[str]]:
    modules = {f"netcompress.recipes.{p.stem}": p for p in RECIPES.glob("*.py") if p.stem != "__init__"}
    return {name: _imports(path) & set(modules) for name, path in modules.items()}


def test_recipe_modules_form_no_import_cycle():
    graph = _graph()
    assert graph["netcompress.recipes.finish"] and graph["netcompress.recipes.sweep"]  # the walk sees imports
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            pytest.fail("import cycle: " + " -> ".join((*path[path.index(name) :], name)))
        if name in done:
            return
        for other in sorted(graph[name]):
            visit(other, (*path, name))
        done.add(name)

    for name in sorted(graph):
        visit(name, ())


def test_finish_and_sweep_do_not_import_the_runner():
    graph = _graph()
    for name in ("netcompress.recipes.finish", "netcompress.recipes.sweep", "netcompress.recipes.stages"):
        assert "netcompress.recipes.runner" not in graph[name], name


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.py")), ids=lambda p: p.name)
def test_module_is_under_400_lines(path):
    assert len(path.read_text().splitlines()) < 400
