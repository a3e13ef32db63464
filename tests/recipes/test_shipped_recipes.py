"""Every shipped recipe resolves (every key known, every sweep point valid) and names its command."""

from __future__ import annotations

from pathlib import Path

import pytest

from netcompress.recipes import apply_overrides, load_recipe_file, resolve_recipe
from netcompress.recipes.schema import apply_profile
from netcompress.recipes.sweep import sweep_points

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "recipes").glob("*.yaml")) + sorted(
    (REPO / "netcompress/recipes/builtin").glob("*.yaml")
)


def _points(raw: dict) -> list[dict]:
    base = {k: v for k, v in raw.items() if k not in ("sweep", "profiles")}
    if raw.get("sweep") is None:
        return [base]
    return [apply_overrides(base, overrides) for _, overrides in sweep_points(raw["sweep"])]


def test_there_is_a_recipe_per_reference_experiment():
    names = {p.stem.split("_")[0] for p in RECIPES}
    assert {"e1", "e2", "e3", "e4", "e5", "demo"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_resolves_at_every_point_and_profile(path):
    raw = load_recipe_file(path)
    first = path.read_text().splitlines()[0]
    assert first.startswith("# netcompress "), f"{path.name}: first line must be the command that runs it"
    for profile in [None, *(raw.get("profiles") or {})]:
        for point in _points(apply_profile(raw, profile)):
            resolved = resolve_recipe(point)
            assert resolved["steps"], path.name
