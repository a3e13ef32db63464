"""The residual stream of layers kept in a container the model never calls (vit-pytorch, rtdl, ...).

vit-pytorch keeps ``layers = ModuleList([ModuleList([attention, feed_forward])])`` and loops
``x = attn(x) + x; x = ff(x) + x``; rtdl keeps a ``ModuleDict`` per block and ends it with ``block["output"](x)``.
No module returns a layer's output, so :class:`LoopedCalls` hooks the container's children instead and records,
per forward, each child's first argument and output in call order. The stream after layer ``i`` is then either the
output of its last-called child (rtdl) or that output plus the child's input (a residual add in the loop body,
vit-pytorch). Which one is decided on a real forward by :func:`stream_form`: the candidate must equal the input of
the next layer of the same container at every boundary; a form no boundary confirms (post-norm loops, a residual
module, a layer split over several containers as in x-transformers) is refused naming the layer.

Example:
    >>> calls = LoopedCalls(slots, {1: "transformer.layers.0", 2: "transformer.layers.1"}, modules)
    >>> model(x); stream_form(calls, who="student ViT")
    'sum'
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from netcompress.core.errors import UnsupportedModelError

FORMS = ("out", "sum")  # the last-called child's output / its output + its input


def _first(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return None


class _Record:
    """Hooks of one child; ``slots.values`` holds the calls (the slots object pickles empty, so a deep copy
    of the hooked model does not copy captured tensors)."""

    def __init__(self, slots: Any, key: str, child: str) -> None:
        self.slots, self.key, self.child = slots, key, child

    def pre(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        first = args[0] if args else next(iter(kwargs.values()), None)
        self.slots.values.setdefault(self.key, []).append([self.child, _first(first), None])

    def post(self, module: nn.Module, args: Any, output: Any) -> None:
        calls = self.slots.values.get(self.key)
        if calls:
            calls[-1][2] = _first(output)


class LoopedCalls:
    """Hooks on the children of each uncalled layer container; ``layers`` maps the 1-based layer index to its name."""

    def __init__(self, slots: Any, layers: dict[int, str], modules: dict[str, nn.Module]) -> None:
        self.slots, self.layers, self.modules = slots, layers, modules
        self.handles: list[Any] = []
        for index, name in layers.items():
            for child_name, child in modules[name].named_children():
                record = _Record(slots, f"calls{index}", child_name)
                self.handles.append(child.register_forward_pre_hook(record.pre, with_kwargs=True))
                self.handles.append(child.register_forward_hook(record.post))

    def reset(self, *_: Any, **__: Any) -> None:
        """Forget the calls of the last forward (a forward pre-hook on the model: one forward, one record)."""
        for index in self.layers:
            self.slots.values.pop(f"calls{index}", None)

    def ran(self, index: int) -> bool:
        return bool(self.slots.values.get(f"calls{index}"))

    def calls(self, index: int) -> list[list[Any]]:
        calls = self.slots.values.get(f"calls{index}")
        if not calls:
            raise KeyError(f"calls{index}")
        return calls

    def first_input(self, index: int) -> torch.Tensor | None:
        return self.calls(index)[0][1]

    def stream(self, index: int, form: str) -> torch.Tensor | None:
        _, inp, out = self.calls(index)[-1]
        if form == "out" or out is None:
            return out
        if inp is None or inp.shape != out.shape:
            return None
        return out + inp

    def boundaries(self) -> list[tuple[int, int]]:
        """(i, i + 1) pairs whose containers sit next to each other in the same parent container."""
        return [
            (i, i + 1)
            for i, name in self.layers.items()
            if i + 1 in self.layers and adjacent(name, self.layers[i + 1], self.modules)
        ]


def adjacent(first: str, second: str, modules: dict[str, nn.Module]) -> bool:
    """Whether module ``second`` is the entry right after ``first`` in the same parent container."""
    parent, _, key = first.rpartition(".")
    keys = list(dict(modules[parent].named_children())) if parent in modules else []
    if key not in keys or keys.index(key) + 1 >= len(keys):
        return False
    return second == (f"{parent}." if parent else "") + keys[keys.index(key) + 1]


def differs(out: Any, following: Any) -> bool:
    """True where a layer's output and the next layer's input are tensors of one shape with other values (the
    layer returns a branch the loop adds to the stream: its output is not the residual stream)."""
    if not isinstance(out, torch.Tensor) or not isinstance(following, torch.Tensor) or out.shape != following.shape:
        return False
    return not _same(out, following)


def _same(got: torch.Tensor | None, want: torch.Tensor | None) -> bool:
    if got is None or want is None or got.shape != want.shape:
        return False
    return torch.allclose(got.float(), want.float(), rtol=1e-4, atol=1e-5)


def stream_form(calls: LoopedCalls, *, who: str) -> str:
    """The form (``"out"`` or ``"sum"``) of the residual stream that every checkable layer boundary confirms."""
    first = calls.layers[min(calls.layers)]
    pairs = calls.boundaries()
    if not pairs:
        raise UnsupportedModelError(
            f"{who}: its layer {first!r} is a {type(calls.modules[first]).__name__} the model never calls (it calls "
            "the blocks inside one by one), and no next layer in the same container shows where the residual "
            "stream is, so hidden-state distillation cannot read a layer's output; distill its logits instead "
            "(nc.distill_)"
        )
    for form in FORMS:
        if all(_same(calls.stream(i, form), calls.first_input(j)) for i, j in pairs):
            return form
    raise UnsupportedModelError(
        f"{who}: its layer {first!r} is a {type(calls.modules[first]).__name__} the model never calls, and the "
        "input of the next layer is neither the last block's output nor that output plus the block's input "
        "(a post-norm loop or a residual module?), so hidden-state distillation cannot read a layer's output; "
        "distill its logits instead (nc.distill_)"
    )
