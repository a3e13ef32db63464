"""Every shipped recipe runs end to end when shrunk (1 epoch, a few hundred images): slow, not in CI's default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from netcompress.recipes import load_recipe_file, run_recipe

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


def shrink(node: Any) -> Any:
    """Every epoch count to 1, rounds to 1, CIFAR to 256 training images: same code paths, tiny cost."""
    if isinstance(node, dict):
        out = {k: shrink(v) for k, v in node.items()}
        for key in ("epochs", "rounds"):
            if isinstance(out.get(key), int):
                out[key] = 1
        if "train_subset" in out:
            out["train_subset"] = 256
        if isinstance(out.get("sweep"), dict):  # one value per swept key keeps the sweep machinery in play
            out["sweep"] = {k: v[-1:] for k, v in out["sweep"].items()}
        return out
    if isinstance(node, list):
        return [shrink(v) for v in node]
    return node


@pytest.mark.slow
@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_shipped_recipe_runs_shrunk(path, tmp_path, cifar_archive, fsdd_archive):
    raw = shrink(load_recipe_file(path))
    raw.pop("profiles", None)
    raw["evaluate"] = {"latency": False, "max_batches": 2}
    result = run_recipe(raw, out_dir=tmp_path / "run", progress=False)
    assert result.stages and all(0.0 <= s["accuracy"] <= 1.0 for s in result.stages)
    assert (tmp_path / "run" / "report.html").exists()
