"""Recipes: YAML files naming a model, data, ordered compression steps, evaluation and report."""

from netcompress.recipes.steps import STEPS, StepContext, StepResult, StepSpec, register_step

__all__ = ["STEPS", "StepContext", "StepResult", "StepSpec", "register_step"]
