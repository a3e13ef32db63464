"""``netcompress list``: models, data sets, methods (recipe steps) and shipped recipes."""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

KINDS = ("models", "data", "methods", "recipes")


def shipped_recipes() -> dict[str, Path]:
    """Recipes in the package, then ``recipes/*.yaml`` of the current folder (the repository's)."""
    found: dict[str, Path] = {}
    builtin = Path(str(resources.files("netcompress.recipes") / "builtin"))
    for folder in (builtin, Path("recipes")):
        if folder.is_dir():
            for path in sorted(folder.glob("*.yaml")):
                found.setdefault(path.stem, path)
    return found


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list models, data sets, methods or shipped recipes")
    p.add_argument("kind", nargs="?", choices=KINDS, default=None, help="what to list (default: everything)")
    p.set_defaults(func=run)


def _first_comment(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    kinds = [args.kind] if args.kind else list(KINDS)
    for kind in kinds:
        table = Table(title=kind, title_justify="left")
        if kind == "models":
            from netcompress import models

            table.add_column("model")
            for name in models.list():
                table.add_row(name)
        elif kind == "data":
            from netcompress import data

            table.add_column("data set")
            for name in data.list():
                table.add_row(name)
        elif kind == "methods":
            from netcompress.core.methods import METHODS, describe_method, find_method

            find_method("train", "supervised", where="list")  # imports every method package
            table.add_column("op")
            table.add_column("method")
            table.add_column("what it does")
            table.add_column("fields (type = default)")
            for key in METHODS.names():
                spec = METHODS.get(key)
                fields = "\n".join(
                    f"{f['name']}: {f['type']} = {f['default']!r}" for f in describe_method(spec)
                )
                table.add_row(spec.op, spec.name, spec.doc, fields)
        else:
            table.add_column("recipe")
            table.add_column("run it with")
            for name, path in shipped_recipes().items():
                table.add_row(name, _first_comment(path) or f"netcompress run {path}")
        console.print(table)
    return 0
