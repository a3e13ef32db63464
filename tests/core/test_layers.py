"""The package's layering, read from its source: algorithms never import the recipe runner, and no two
files import each other (directly or round a longer loop), counting imports inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

import netcompress

PACKAGE = Path(netcompress.__file__).parent
RUNNER_SIDE = ("netcompress.recipes", "netcompress.cli")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports (``from a.b import c`` counts a.b.c when that is a module)."""
    found: set[str] = set()
    this = _module_name(path)
    tree = ast.parse(path.read_text())
    # imports under `if TYPE_CHECKING:` never run: annotations only
    for block in [
        n for n in ast.walk(tree) if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test)
    ]:
        block.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:
                pkg = (
                    this.split(".")[: -node.level]
                    if path.name != "__init__.py"
                    else this.split(".")[: 1 - node.level or None]
                )
                base = ".".join([*pkg, node.module])
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        found.update(n for n in names if n.startswith("netcompress"))
    return {n for n in found if n in modules and n != this}


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: _imports(path, set(files)) for name, path in files.items()}


def test_no_library_module_imports_the_recipe_runner():
    offenders = sorted(
        f"{name} imports {dep}"
        for name, deps in _graph().items()
        if not name.startswith(RUNNER_SIDE) and name != "netcompress"
        for dep in deps
        if dep.startswith("netcompress.recipes")
    )
    assert offenders == []


def test_no_import_cycles_between_files():
    graph = _graph()
    # a package __init__ re-exports its children; a child importing a sibling through the package
    # name is the same edge, so __init__ files are leaves here
    packages = {n for n in graph if (PACKAGE.parent / n.replace(".", "/") / "__init__.py").exists()}
    edges = {n: {d for d in deps if d not in packages} for n, deps in graph.items() if n not in packages}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
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
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert cycles == []


def test_importing_a_method_package_does_not_load_the_runner():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import netcompress.pruning, netcompress.quantization, netcompress.distillation, netcompress.low_rank\n"
        "import netcompress.clustering, netcompress.dynamic, netcompress.architecture, netcompress.training\n"
        "print(sorted(m for m in sys.modules if m.startswith('netcompress.recipes')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_no_package_module_over_400_lines():
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 400
    }
    assert long == {}
