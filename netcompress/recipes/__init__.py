"""Recipes: YAML files naming a model, data, ordered compression steps, evaluation and report."""

from netcompress.recipes.runner import RunResult, build_model, run_recipe
from netcompress.recipes.schema import apply_overrides, load_recipe_file, resolve_recipe
from netcompress.recipes.steps import STEPS, StepContext, StepResult, StepSpec, register_step

__all__ = [
    "STEPS",
    "RunResult",
    "StepContext",
    "StepResult",
    "StepSpec",
    "apply_overrides",
    "build_model",
    "load_recipe_file",
    "register_step",
    "resolve_recipe",
    "run_recipe",
]
