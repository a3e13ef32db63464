"""Recipes: YAML files naming a model, data, ordered compression steps, evaluation and report."""

from netcompress.recipes.runner import RunResult, build_model, run_recipe
from netcompress.recipes.schema import apply_overrides, load_recipe_file, resolve_recipe

__all__ = [
    "RunResult",
    "apply_overrides",
    "build_model",
    "load_recipe_file",
    "resolve_recipe",
    "run_recipe",
]
