"""Which output of a several-output model is scored, trained on and exported.

By default a model returning a tuple is read by its first item and a dict (or Hugging Face ``ModelOutput``)
by ``logits`` (else its first entry; :func:`netcompress.core.inputs.output_tensor`). A model whose classifier
is not first (``(aux, logits)``, ``{"features": ..., "scores": ...}``) names the one to use:
``nc.select_output(model, 1)`` / ``nc.select_output(model, "scores")``, or in a recipe
``model: {factory: "m.py:build", output: 1}``. The wrapper returns that item alone, so every verb (fit, evaluate,
pruning, quantization, export) sees one tensor; an index or key the model does not return is a ConfigError
listing what it does return.

Example:
    >>> scored = nc.select_output(two_head_model, 1)   # (aux, logits) -> logits
    >>> scored(x).shape
    torch.Size([8, 10])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from netcompress.core.errors import ConfigError


def check_output_choice(output: Any, *, where: str = "output") -> None:
    """An index (int >= 0) or a key (non-empty str); anything else is a ConfigError."""
    index = isinstance(output, int) and not isinstance(output, bool) and output >= 0
    if not (index or (isinstance(output, str) and output)):
        raise ConfigError(f"{where}={output!r}: name the output to score by index (0, 1, ...) or key ('logits')")


def pick_output(returned: Any, output: int | str, *, who: str) -> Any:
    """Item ``output`` of what ``who`` returned; a ConfigError listing what it returned otherwise."""
    if isinstance(output, str):
        keys = list(returned.keys()) if isinstance(returned, Mapping) or hasattr(returned, "keys") else None
        if keys is not None and output in keys:
            return returned[output]
        what = f"a {type(returned).__name__} with keys {keys}" if keys is not None else _described(returned)
        raise ConfigError(f"output={output!r}: {who} returns {what}; name one of what it returns")
    if isinstance(returned, (tuple, list)) or hasattr(returned, "to_tuple"):
        items = returned.to_tuple() if hasattr(returned, "to_tuple") else returned
        if output < len(items):
            return items[output]
        raise ConfigError(
            f"output={output}: {who} returns {len(items)} items (indices 0-{len(items) - 1}); name one of them"
        )
    raise ConfigError(f"output={output}: {who} returns {_described(returned)}; there is nothing to choose from")


def _described(returned: Any) -> str:
    shape = getattr(returned, "shape", None)
    return f"one {type(returned).__name__}" + (f" of shape {tuple(shape)}" if shape is not None else "")


class SelectOutput(nn.Module):
    """``model`` whose call returns only item ``output`` of what it returns (see the module docstring)."""

    def __init__(self, model: nn.Module, output: int | str) -> None:
        super().__init__()
        check_output_choice(output)
        self.model, self.output = model, output

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return pick_output(self.model(*args, **kwargs), self.output, who=type(self.model).__name__)

    def extra_repr(self) -> str:
        return f"output={self.output!r}"


def select_output(model: nn.Module, output: int | str, *, example_inputs: Any = None) -> nn.Module:
    """``model`` wrapped so that it returns only its output ``output`` (an index or a key); checked on
    ``example_inputs`` when given. The wrapper shares the model's parameters (``wrapper.model`` is the model).

    Example:
        >>> scored = nc.select_output(model, "scores", example_inputs=x)
        >>> nc.fit_(scored, loader, config=nc.TrainConfig(epochs=1))
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"select_output: model must be an nn.Module, got {type(model).__name__}")
    wrapped = SelectOutput(model, output)
    if example_inputs is not None:
        from netcompress.core.inputs import call_model
        from netcompress.evaluation.harness import eval_mode

        with eval_mode(model), torch.no_grad():
            pick_output(call_model(model, example_inputs), output, who=type(model).__name__)
    return wrapped
