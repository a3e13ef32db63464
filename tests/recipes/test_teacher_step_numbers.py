"""``teacher: {step: N}`` counts steps from 1 and names an earlier step: a 0, a later step, the step itself
or a non-integer is a one-line ConfigError when the recipe resolves, before any step runs (it used to be
found only when the distillation step started, after the earlier steps' work)."""

from __future__ import annotations

import pytest

from netcompress.core.errors import ConfigError
from netcompress.recipes import resolve_recipe

TRAIN = {"op": "train", "method": "supervised", "epochs": 1}
PRUNE = {"op": "prune", "method": "l1_unstructured", "amount": 0.5}


def _recipe(step, at: int = 2) -> dict:
    kd = {"op": "distill", "method": "soft_targets", "epochs": 1, "teacher": {"step": step}}
    steps = [TRAIN, PRUNE]
    steps.insert(at, kd)
    return {"model": {"name": "digits_cnn"}, "data": {"name": "digits"}, "steps": steps}


@pytest.mark.parametrize(
    ("step", "at", "needle"),
    [
        (0, 2, "steps count from 1"),
        (-1, 2, "steps count from 1"),
        ("1", 2, "steps count from 1"),
        (True, 2, "steps count from 1"),
        (3, 2, "an earlier step of this recipe, counted from 1 (1 to 2)"),
        (4, 2, "(1 to 2)"),
        (1, 0, "the first step has no earlier step"),
    ],
)
def test_bad_teacher_step_is_refused_when_the_recipe_resolves(step, at, needle):
    with pytest.raises(ConfigError) as info:
        resolve_recipe(_recipe(step, at))
    message = str(info.value)
    assert needle in message and "\n" not in message
    assert f"step {at + 1} (distill/soft_targets)" in message or "steps count from 1" in message


@pytest.mark.parametrize("step", [1, 2])
def test_earlier_steps_are_accepted(step):
    resolved = resolve_recipe(_recipe(step))
    assert resolved["steps"][2]["teacher"] == {"step": step}
