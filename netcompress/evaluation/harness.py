"""The measurement harness: how every measurement calls a model without changing it.

Measurements put the model in eval mode and run it under ``torch.inference_mode``; the
training flag of every submodule is restored afterwards, so measuring a model in the middle
of a training loop leaves it exactly as it was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from netcompress.core.errors import ConfigError
from netcompress.core.inputs import check_inputs, input_tensors, map_inputs


def as_input_tuple(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    """Normalise ``example_inputs`` (a tensor, or a tuple/list of tensors) to positional args.

    For inputs that may also be a dict (keyword arguments) use :func:`model_inputs` and
    :func:`netcompress.core.inputs.call_model`.

    Example:
        >>> as_input_tuple(torch.zeros(1, 3, 32, 32))[0].shape
        torch.Size([1, 3, 32, 32])
    """
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in example_inputs):
        if not example_inputs:
            raise ConfigError(
                "example_inputs is an empty sequence; pass a tensor such as torch.randn(1, 3, 32, 32)"
            )
        return tuple(example_inputs)
    raise ConfigError(
        f"example_inputs must be a tensor or a tuple of tensors, got {type(example_inputs).__name__}"
    )


def model_inputs(example_inputs: Any) -> Any:
    """``example_inputs`` checked: a tensor, a tuple/list (positional) or a dict (keyword) of tensors.

    Example:
        >>> model_inputs({"input_ids": torch.zeros(1, 4, dtype=torch.long)})["input_ids"].dtype
        torch.int64
    """
    return check_inputs(example_inputs, "example_inputs")


def expand_batch(inputs: Any, batch_size: int) -> Any:
    """Make a batch of ``batch_size`` by repeating the first sample of every input tensor.

    ``inputs`` keeps its form (a tuple stays a tuple, a dict a dict). The copy is contiguous, so
    timing measures real memory traffic, not a broadcast view.

    Example:
        >>> expand_batch((torch.zeros(1, 3, 8, 8),), 64)[0].shape
        torch.Size([64, 3, 8, 8])
    """
    inputs = model_inputs(inputs)
    if any(t.dim() == 0 for t in input_tensors(inputs)):
        raise ConfigError("example_inputs must have a batch dimension; got a 0-d tensor")
    return map_inputs(inputs, lambda t: t[:1].expand(batch_size, *t.shape[1:]).contiguous())


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block; restore each submodule's own training flag after.

    Example:
        >>> with eval_mode(model):
        ...     logits = model(x)
    """
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in flags:
            module.training = training


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model holding neither)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")
