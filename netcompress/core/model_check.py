"""Check that a recipe's model takes the recipe's data before any work starts.

A user's model (a factory, a checkpoint) and a user's data set meet for the first time in a run. Called
on one test sample before the run folder is made, the model either answers with one score per class or
the run stops with one line naming the model, the inputs it was given and what went wrong, instead of a
traceback from deep inside the first step (or, for a model with more outputs than the data has classes,
a run that trains and reports silently wrong numbers).

Example:
    >>> check_model_on_data(model, torch.randn(1, 3, 32, 32), num_classes=10, model_name="mynet.py:build")
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from netcompress.core.errors import ConfigError
from netcompress.core.inputs import call_model, output_tensor


def describe_inputs(inputs: Any) -> str:
    """``float32 (1, 3, 32, 32)``, ``(float32 (1, 3), int64 (1, 5))`` or ``{input_ids: int64 (1, 12)}``.

    Example:
        >>> describe_inputs({"input_ids": torch.zeros(1, 4, dtype=torch.long)})
        '{input_ids: int64 (1, 4)}'
    """

    def one(t: torch.Tensor) -> str:
        return f"{str(t.dtype).removeprefix('torch.')} {tuple(t.shape)}"

    if isinstance(inputs, torch.Tensor):
        return one(inputs)
    if isinstance(inputs, dict):
        return "{" + ", ".join(f"{k}: {describe_inputs(v)}" for k, v in inputs.items()) + "}"
    if isinstance(inputs, (tuple, list)):
        return "(" + ", ".join(describe_inputs(v) for v in inputs) + ")"
    return type(inputs).__name__


def model_label(spec: dict[str, Any]) -> str:
    """How a recipe's model spec is named in messages: ``model.factory mynet.py:build`` etc."""
    for key in ("factory", "name", "checkpoint"):
        if spec.get(key):
            return f"model.{key} {spec[key]}"
    return "the model"


def check_model_on_data(
    model: nn.Module, example_inputs: Any, *, num_classes: int, model_name: str, data_name: str = "the data"
) -> None:
    """Call ``model`` on ``example_inputs`` (one sample of the data) without gradients, in eval mode.

    A failing call, or an output of shape ``(1, C)`` with ``C != num_classes`` (when the data set has
    classes), is a :class:`ConfigError` naming the model, the data and the inputs' dtypes and shapes.
    The model's train/eval mode is restored.
    """
    shown = describe_inputs(example_inputs)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = call_model(model, example_inputs)
    except Exception as exc:  # noqa: BLE001 - any failure of the user's model on the user's data
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ConfigError(
            f"{model_name} fails on one sample of {data_name} (inputs {shown}): {type(exc).__name__}: {first}; "
            "check the model's expected input shape and dtype against the data"
        ) from None
    finally:
        model.train(was_training)
    try:
        scores = output_tensor(output)
    except Exception:  # noqa: BLE001 - an output netcompress cannot read at all
        scores = None
    if not isinstance(scores, torch.Tensor):
        raise ConfigError(
            f"{model_name} returned a {type(output).__name__} for inputs {shown}; expected a tensor of class "
            "scores (or an output with .logits)"
        )
    if num_classes <= 0 or scores.dim() != 2:
        return
    if num_classes == 1:
        raise ConfigError(
            f"{data_name} holds one class only (every label is 0); a classifier needs 2 or more"
        )
    count = int(scores.shape[-1])
    if count != num_classes:
        raise ConfigError(
            f"{model_name} gives {count} class scores per sample but {data_name} has {num_classes} classes "
            f"(labels 0-{num_classes - 1}); build the model with {num_classes} outputs (e.g. "
            f"model.kwargs.num_classes={num_classes})"
            + (
                f", or, if the data lacks some classes, give the data set num_classes: {count} (tensors, factory)"
                if count > num_classes
                else ""
            )
        )


def check_last_batch(model: nn.Module, example_inputs: Any, *, train_size: int, batch_size: int) -> None:
    """A training split that leaves a last batch of one sample, for a model that cannot train on one
    (BatchNorm over a single value per channel), is a ConfigError naming the counts and a batch size that
    avoids it, instead of a ValueError in the first epoch. Tried on a copy, in train mode.

    Example:
        >>> check_last_batch(nn.BatchNorm1d(4), torch.randn(1, 4), train_size=17, batch_size=16)
        Traceback (most recent call last):
        ConfigError: the training split holds 17 samples = 1 batch(es) of 16 + 1, ...
    """
    if batch_size <= 1 or train_size <= 1 or train_size % batch_size != 1:
        return
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return
    try:
        call_model(copy.deepcopy(model).train(), example_inputs)  # a batch of one, as the last one will be
    except ValueError as exc:
        if "more than 1 value per channel" not in str(exc):
            return
    else:
        return
    fits = [
        b
        for b in (batch_size - 1, batch_size + 1, batch_size - 2, batch_size + 2)
        if b > 1 and train_size % b != 1
    ]
    raise ConfigError(
        f"the training split holds {train_size} samples = {train_size // batch_size} batch(es) of {batch_size} + 1, "
        "and the model's BatchNorm cannot train on a batch of one sample; choose another data.batch_size "
        f"(e.g. {fits[0]})"
    )


__all__ = ["check_last_batch", "check_model_on_data", "describe_inputs", "model_label"]
