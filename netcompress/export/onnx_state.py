"""State a model's forward stores on its modules between calls (snntorch's neurons: ``self.mem = ...``), as
``export_onnx`` handles it.

Tracing reads such a tensor as a constant of the shape the previous call left (``reset_mem()`` is
``zeros_like(self.mem)``): the graph then runs only at that batch size. :func:`carried_state` finds the tensors
a call replaces (buffers and plain tensor attributes of any module); :func:`empty_state_` replaces them by empty
tensors, the state a fresh snntorch neuron starts from, so its forward builds the state from the input (``zeros_like
(input_)``) and the exported graph follows the batch. That is done only when the outputs do not change
(:func:`state_free_outputs`): a forward whose result depends on what the previous call left (a streaming state)
is exported as before, and a graph that then fails at another batch size is refused naming the state.

Example:
    >>> states, out = carried_state(model, lambda: model(x))
    >>> [f"{m}.{a}" for m, a in states]
    ['lif1.mem', 'lif2.mem']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

State = tuple[str, str]  # (module name, attribute)


def _tensors(model: nn.Module) -> dict[State, torch.Tensor]:
    found: dict[State, torch.Tensor] = {}
    for name, module in model.named_modules():
        for attr, value in [*module._buffers.items(), *vars(module).items()]:
            if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
                found[(name, attr)] = value
    return found


def carried_state(model: nn.Module, call: Callable[[], Any]) -> tuple[list[State], Any]:
    """The module tensors ``call()`` replaces or adds (compared by identity), i.e. state carried to the next call,
    and what ``call()`` returned."""
    before = _tensors(model)
    result = call()
    return [key for key, value in _tensors(model).items() if before.get(key) is not value], result


def empty_state_(model: nn.Module, states: Sequence[State]) -> None:
    """Replace each state tensor by an empty one of its dtype (a registered buffer stays a buffer)."""
    for name, attr in states:
        module = model.get_submodule(name)
        value = getattr(module, attr)
        empty = value.new_zeros(0)
        if attr in module._buffers:
            module._buffers[attr] = empty
        else:
            setattr(module, attr, empty)


def state_free_outputs(
    model: nn.Module, states: Sequence[State], call: Callable[[], Sequence[torch.Tensor]],
    outputs: Sequence[torch.Tensor],
) -> bool:  # fmt: skip
    """Whether ``call()`` from emptied state gives exactly ``outputs`` (what it gave from the state it had); if
    not, the state is put back as it was."""
    kept = {key: getattr(model.get_submodule(key[0]), key[1]) for key in states}
    empty_state_(model, states)
    try:
        with torch.no_grad():
            again = call()
        same = len(again) == len(outputs) and all(
            a.shape == b.shape and torch.equal(a, b) for a, b in zip(again, outputs, strict=True)
        )
    except Exception:  # noqa: BLE001 - a forward that needs its state: exported as it is
        same = False
    if not same:
        for (name, attr), value in kept.items():
            module = model.get_submodule(name)
            if attr in module._buffers:
                module._buffers[attr] = value
            else:
                setattr(module, attr, value)
    return same


def describe(model: nn.Module, states: Sequence[State]) -> str:
    """``'lif1.mem' (Leaky, shape (2, 32)), ...`` for an error message."""
    parts = []
    for name, attr in states[:4]:
        module = model.get_submodule(name)
        value = getattr(module, attr, None)
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else "?"
        parts.append(f"{name + '.' if name else ''}{attr!s} ({type(module).__name__}, shape {shape})")
    more = f" and {len(states) - 4} more" if len(states) > 4 else ""
    return ", ".join(parts) + more
