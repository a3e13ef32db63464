"""Importing every module that registers recipe steps, so the step registry is complete."""

from __future__ import annotations

import importlib

# Each area registers its steps in these modules; a module that is absent is skipped so a
# partial install still runs the steps it has.
STEP_MODULES = (
    "netcompress.training.steps",
    "netcompress.pruning.steps_unstructured",
    "netcompress.pruning.steps_structured",
    "netcompress.pruning.iterative_channel",
    "netcompress.quantization.steps",
    "netcompress.distillation.steps",
    "netcompress.low_rank.steps",
    "netcompress.architecture.steps",
    "netcompress.clustering.steps",
    "netcompress.dynamic.steps",
)


def import_step_modules() -> None:
    for name in STEP_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
