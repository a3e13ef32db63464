"""The residual stream of layers kept in a container the model never calls (vit-pytorch, rtdl, ...).

vit-pytorch keeps ``layers = ModuleList([ModuleList([attention, feed_forward])])`` and loops
``x = attn(x) + x; x = ff(x) + x``; rtdl keeps a ``ModuleDict`` per block and ends it with ``block["output"](x)``.
No module returns a layer's output, so :class:`LoopedCalls` hooks the container's children instead and records,
per forward, each child's first argument and output in call order. The stream after layer ``i`` is then either the
output of its last-called child (rtdl) or that output plus the child's input (a residual add in the loop body,
vit-pytorch). Which one is decided on a real forward by :func:`stream_form`: the candidate must equal the input of
the next layer of the same container at every boundary; a form no boundary confirms (post-norm loops, a residual
added in the loop body around a norm) is refused naming the layer.

A layer's group is its container plus the uncalled containers after it up to the next layer (x-transformers keeps
attention and feed-forward in neighbouring ``ModuleList([ModuleList([norms]), block, Residual])`` entries; nested
containers are opened to their called leaves). Where no container holds two layers (vit-pytorch's PiT / CrossViT
stages of depth 1), the stream after a container's last layer is confirmed by what the container's owner does next:
the input of its next own child called (a final norm) or else its output; a stage handing on anything else (a
class token only) is refused naming the layer.

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
UNCALLED = (nn.ModuleList, nn.ModuleDict)


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
        stamp = self.slots.values["stamp"] = self.slots.values.get("stamp", 0) + 1  # call order in this forward
        self.slots.values.setdefault(self.key, []).append([self.child, _first(first), None, stamp])

    def post(self, module: nn.Module, args: Any, output: Any) -> None:
        calls = self.slots.values.get(self.key)
        if calls:
            calls[-1][2] = _first(output)


def _called_leaves(name: str, modules: dict[str, nn.Module]) -> list[tuple[str, nn.Module]]:
    """The children of an uncalled container, nested ModuleLists / ModuleDicts opened (x-transformers keeps a
    layer's norms in one: ``ModuleList([ModuleList([pre_norm, ...]), block, residual])``)."""
    out = []
    for key, child in modules[name].named_children():
        full = f"{name}.{key}"
        out += _called_leaves(full, modules) if isinstance(child, UNCALLED) else [(full, child)]
    return out


def _siblings_after(name: str, modules: dict[str, nn.Module]) -> list[str]:
    parent, _, key = name.rpartition(".")
    keys = list(dict(modules[parent].named_children())) if parent in modules else []
    return [f"{parent}.{k}" if parent else k for k in keys[keys.index(key) + 1 :]] if key in keys else []


class LoopedCalls:
    """Hooks on the children of each uncalled layer container; ``layers`` maps the 1-based layer index to its name."""

    def __init__(self, slots: Any, layers: dict[int, str], modules: dict[str, nn.Module]) -> None:
        self.slots, self.layers, self.modules = slots, layers, modules
        self.handles: list[Any] = []
        # a layer's group: its container and the uncalled containers after it up to the next layer (x-transformers
        # keeps attention and feed-forward in neighbouring containers)
        self.groups: dict[int, list[str]] = {}
        for index, name in layers.items():
            self.groups[index] = [name]
            for sibling in _siblings_after(name, modules):
                if sibling in layers.values() or not isinstance(modules[sibling], UNCALLED):
                    break
                self.groups[index].append(sibling)
            for member in self.groups[index]:
                for child_name, child in _called_leaves(member, modules):
                    self._record(f"calls{index}", child_name, child)
        # where no boundary shows the stream: after a container's last layer, the next call of the container's
        # owner's own children (a final norm) or else the owner's output (vit-pytorch's PiT / CrossViT Transformer)
        self.ends: dict[int, str] = {}
        for index, name in layers.items():
            container = name.rpartition(".")[0]
            owner = container.rpartition(".")[0]
            if (
                not container
                or _siblings_after(self.groups[index][-1], modules)
                or not isinstance(modules[container], UNCALLED)
                or isinstance(modules[owner], UNCALLED)
            ):
                continue
            self.ends[index] = owner
            for child_name, child in modules[owner].named_children():
                if child_name != container.rpartition(".")[2] and not isinstance(child, UNCALLED):
                    self._record(f"end{index}", child_name, child)
            record = _Record(slots, f"owner{index}", owner)
            self.handles.append(modules[owner].register_forward_pre_hook(record.pre, with_kwargs=True))
            self.handles.append(modules[owner].register_forward_hook(record.post))

    def _record(self, key: str, child_name: str, child: nn.Module) -> None:
        record = _Record(self.slots, key, child_name)
        self.handles.append(child.register_forward_pre_hook(record.pre, with_kwargs=True))
        self.handles.append(child.register_forward_hook(record.post))

    def reset(self, *_: Any, **__: Any) -> None:
        """Forget the calls of the last forward (a forward pre-hook on the model: one forward, one record)."""
        self.slots.values.pop("stamp", None)
        for index in self.layers:
            for key in ("calls", "end", "owner"):
                self.slots.values.pop(f"{key}{index}", None)

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
        _, inp, out, _ = self.calls(index)[-1]
        if form == "out" or out is None:
            return out
        if inp is None or inp.shape != out.shape:
            return None
        return out + inp

    def boundaries(self) -> list[tuple[int, int]]:
        """(i, i + 1) pairs whose containers (groups) sit next to each other in the same parent container."""
        return [
            (i, i + 1)
            for i, group in self.groups.items()
            if i + 1 in self.layers and adjacent(group[-1], self.layers[i + 1], self.modules)
        ]

    def after_end(self, index: int) -> torch.Tensor | None:
        """What follows layer ``index``, the last of its container: the input of the owner's next child called
        after it, else the owner's output."""
        last = self.calls(index)[-1][3]
        later = [c for c in self.slots.values.get(f"end{index}", []) if c[3] > last]
        if later:
            return later[0][1]
        owner = self.slots.values.get(f"owner{index}")
        return owner[-1][2] if owner else None


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
    if not pairs:  # one layer per container: what follows the container's last layer shows the stream
        ends = [i for i in calls.ends if calls.ran(i)]
        for form in FORMS if ends else ():
            if all(_same(calls.stream(i, form), calls.after_end(i)) for i in ends):
                return form
        fits = {i: any(_same(calls.stream(i, f), calls.after_end(i)) for f in FORMS) for i in ends}
        failing = next((calls.layers[i] for i in ends if not fits[i]), first)
        raise UnsupportedModelError(
            f"{who}: its layer {failing!r} is a {type(calls.modules[failing]).__name__} the model never calls (it "
            "calls the blocks inside one by one), and neither a next layer in the same container nor what its owner "
            "does after it shows where the residual stream is, so hidden-state distillation cannot read a layer's "
            "output; distill its logits instead (nc.distill_)"
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
