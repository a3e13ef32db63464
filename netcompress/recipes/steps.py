"""The recipe step registry: each ``(op, method)`` pair maps to a config class and a handler.

A method makes itself usable from recipes by registering a step where it is defined::

    @register_step("prune", "l1_unstructured", config=UnstructuredConfig)
    def _prune_step(model, config, ctx):
        summary = prune_unstructured(model, amount=config.amount, ...)
        return StepResult(model=model, summary=summary)

The handler receives a model it may modify or replace, its validated config and a
:class:`StepContext` (data loaders, example inputs, the step's output folder). It returns
the model to hand to the next step and a JSON-able summary that the report consumes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netcompress.core.config import Config
from netcompress.core.errors import ConfigError
from netcompress.core.registry import Registry


@dataclasses.dataclass
class StepContext:
    """What a step may use besides the model: data, example inputs, where to write."""

    train_loader: Any
    val_loader: Any
    example_inputs: torch.Tensor
    step_dir: Path
    run_dir: Path
    num_classes: int
    seed: int = 0
    device: str = "cpu"
    progress: bool = True
    calib_loader: Any = None
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class StepResult:
    model: nn.Module
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)
    # per-epoch history (list of dicts) when the step trains; the report plots it
    history: list[dict[str, Any]] | None = None


StepHandler = Callable[[nn.Module, Any, StepContext], StepResult]


@dataclasses.dataclass(frozen=True)
class StepSpec:
    op: str
    method: str
    config: type[Config]
    handler: StepHandler
    doc: str = ""


STEPS: Registry[StepSpec] = Registry("recipe step (op/method)")


def register_step(op: str, method: str, *, config: type[Config]) -> Callable[[StepHandler], StepHandler]:
    """Decorator registering ``handler`` as recipe step ``op: <op>, method: <method>``."""

    reserved = {"op", "method", "label"} & set(config.field_names())
    if reserved:
        # these keys belong to the recipe step itself; a config field of that name could never be set
        raise ValueError(
            f"step {op}/{method}: config {config.__name__} may not have fields named {sorted(reserved)}"
        )

    def _add(handler: StepHandler) -> StepHandler:
        doc = (handler.__doc__ or config.__doc__ or "").strip().splitlines()
        STEPS.register(f"{op}/{method}", StepSpec(op, method, config, handler, doc[0] if doc else ""))
        return handler

    return _add


def get_step(op: str, method: str | None, *, where: str) -> StepSpec:
    key = f"{op}/{method}" if method is not None else None
    if key is None:
        methods = [n.split("/", 1)[1] for n in STEPS.names() if n.startswith(f"{op}/")]
        if len(methods) == 1:
            key = f"{op}/{methods[0]}"
        else:
            raise ConfigError(f"{where}: op {op!r} needs a 'method' (one of {methods or 'none known'})")
    if key not in STEPS:
        ops = sorted({n.split("/", 1)[0] for n in STEPS.names()})
        if op not in ops:
            raise ConfigError(f"{where}: unknown op {op!r}; known ops: {', '.join(ops)}")
        methods = [n.split("/", 1)[1] for n in STEPS.names() if n.startswith(f"{op}/")]
        raise ConfigError(f"{where}: unknown method {method!r} for op {op!r}; known: {', '.join(methods)}")
    return STEPS.get(key)
