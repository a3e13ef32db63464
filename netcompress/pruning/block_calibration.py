"""Block-wise calibration: each transformer block (or sequential stage) runs a fixed number of times.

The SparseGPT/Wanda reference procedure. The blocks are the children of the ``nn.ModuleList`` /
``nn.Sequential`` that holds the most pruned weights in separate children (``encoder.layer`` of BERT,
``model.layers`` of Llama, ``h`` of GPT-2, ``layers`` of ``nn.TransformerEncoder``, the stages of a
Sequential). One forward of the model captures every block's call (positional and keyword arguments:
attention masks, position ids, rotary embeddings...); then block by block the weights inside it are pruned
on its cached inputs, and the pruned block's outputs become the next block's inputs, the other arguments
replayed as captured. Weights called before the first block or after the last are pruned on whole-model
passes (:func:`~netcompress.pruning.layer_inputs.prune_groups`). The result equals the whole-model path.

:func:`plan_blocks` checks on one batch that the blocks may be replayed: each called once, in order, the
hidden state passed from each block's output to the next block's input in one argument slot, no other
argument taken from an earlier block's output, and only tensors, numbers, strings and None among the
arguments (a Hugging Face cache object would be changed by a replay). If any check fails it returns the
reason, and the caller runs the whole-model path instead.

Example:
    >>> plan = plan_blocks(model, targets, batches[0])
    >>> if isinstance(plan, BlockPlan): prune_blocks(model, plan, targets, batches, prune=fn, gram=True, done={})
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from netcompress.core.inputs import call_model
from netcompress.pruning.layer_inputs import InputStats, probe, prune_groups
from netcompress.pruning.weight_targets import WeightTarget

Slot = tuple[str, Any]  # ("arg", index) or ("kwarg", name)


@dataclasses.dataclass
class BlockPlan:
    """How the model was cut: the container, its blocks, the hidden-state slot, targets by block."""

    container: str
    blocks: list[nn.Module]
    slot: Slot
    groups: list[list[str]]
    calls: dict[str, int]
    block_of: dict[str, int]  # -1: called before the first block; len(blocks): after the last

    def groups_in(self, index: int) -> list[list[str]]:
        return [g for g in self.groups if self.block_of[g[0]] == index]


class _Stop(Exception):
    """Raised after the last block that holds a target: the capture pass needs nothing further."""


def _containers(model: nn.Module, targets: dict[str, WeightTarget]) -> list[tuple[str, nn.Module]]:
    """ModuleList/Sequential modules with targets in two children or more, the most such children first."""
    modules = {id(t.module) for t in targets.values()} | {id(t.owner) for t in targets.values()}
    found = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)) or len(module) < 2:
            continue
        # a None entry (x-transformers keeps optional norms as None in a ModuleList) holds nothing
        counts = [0 if child is None else sum(id(m) in modules for m in child.modules()) for child in module]
        holding = sum(c > 0 for c in counts)
        if holding >= 2:
            found.append(((holding, sum(counts)), name, module))
    found.sort(key=lambda item: item[0], reverse=True)
    return [(name, module) for _, name, module in found]


def _hidden(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


def _slot_value(call: tuple[list[Any], dict[str, Any]], slot: Slot) -> Any:
    args, kwargs = call
    if slot[0] == "arg":
        return args[slot[1]] if slot[1] < len(args) else None
    return kwargs.get(slot[1])


def _set_slot(call: tuple[list[Any], dict[str, Any]], slot: Slot, value: Any) -> None:
    if slot[0] == "arg":
        call[0][slot[1]] = value
    else:
        call[1][slot[1]] = value


def _replayable(value: Any) -> bool:
    if value is None or isinstance(value, (torch.Tensor, bool, int, float, str, torch.dtype, torch.device)):
        return True
    if isinstance(value, (tuple, list)):
        return all(_replayable(v) for v in value)
    if isinstance(value, dict):
        return all(_replayable(v) for v in value.values())
    return False


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (tuple, list)) else ()
    return [t for v in items for t in _tensors(v)]


def _find_slot(call: tuple[list[Any], dict[str, Any]], hidden: torch.Tensor) -> Slot | None:
    slots: list[Slot] = [("arg", i) for i in range(len(call[0]))] + [("kwarg", k) for k in call[1]]
    for same in (lambda v: v is hidden, lambda v: torch.equal(v, hidden)):
        for slot in slots:
            value = _slot_value(call, slot)
            if isinstance(value, torch.Tensor) and value.shape == hidden.shape and same(value):
                return slot
    return None


def _check(name: str, calls: list[list[Any]], outputs: list[Any], order: list[int]) -> Slot | str:
    """The hidden-state slot, or why the blocks of ``name`` cannot be replayed one by one."""
    for i, made in enumerate(calls):
        if len(made) != 1:
            return f"block {name}.{i} is called {len(made)} times per forward"
    if order != list(range(len(calls))):
        return f"the blocks of {name} are not called in order"
    hidden = [_hidden(out) for out in outputs]
    if hidden[0] is None:
        return (
            f"block {name}.0 returns {type(outputs[0]).__name__}, not a tensor or a tuple starting with one"
        )
    slot = _find_slot(calls[1][0], hidden[0])
    if slot is None or _slot_value(calls[0][0], slot) is None:
        return f"block {name}.1 does not take block {name}.0's output as an argument"
    produced: set[int] = set()
    for i, [call] in enumerate(calls):
        value = _slot_value(call, slot)
        if i and (
            hidden[i - 1] is None
            or not isinstance(value, torch.Tensor)
            or not torch.equal(value, hidden[i - 1])
        ):
            return f"block {name}.{i} does not take block {name}.{i - 1}'s output in the same argument"
        others = [v for s, v in enumerate(call[0]) if ("arg", s) != slot]
        others += [v for k, v in call[1].items() if ("kwarg", k) != slot]
        for value in others:
            if not _replayable(value):
                return (
                    f"block {name}.{i} is called with a {type(value).__name__} (state a replay would change)"
                )
            if any(id(t) in produced for t in _tensors(value)):
                return f"block {name}.{i} reads an earlier block's output besides the hidden state"
        produced |= {id(t) for t in _tensors(outputs[i])}
    return slot


def _probe_blocks(
    model: nn.Module, blocks: list[nn.Module], targets: dict[str, WeightTarget], inputs: Any
) -> Any:
    """One forward recording every block's calls, outputs and order, and the targets' groups and blocks."""
    calls: list[list[Any]] = [[] for _ in blocks]
    outputs: list[Any] = [None] * len(blocks)
    order: list[int] = []
    stack: list[int] = []

    def enter(i: int) -> Callable[..., None]:
        def pre(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            calls[i].append((list(args), dict(kwargs)))
            order.append(i)
            stack.append(i)

        return pre

    def leave(i: int) -> Callable[..., None]:
        def post(module: nn.Module, args: Any, output: Any) -> None:
            outputs[i] = output
            stack.pop()

        return post

    def active() -> int:  # the block running; -1 before the first, len(blocks) after the last, -2 between
        if stack:
            return stack[-1]
        return -1 if not order else len(blocks) if len(order) >= len(blocks) else -2

    handles = [b.register_forward_pre_hook(enter(i), with_kwargs=True) for i, b in enumerate(blocks)]
    handles += [b.register_forward_hook(leave(i)) for i, b in enumerate(blocks)]
    try:
        groups, counts, where = probe(lambda x: call_model(model, x), inputs, targets, active)
    finally:
        for handle in handles:
            handle.remove()
    return calls, outputs, order, groups, counts, where


def plan_blocks(model: nn.Module, targets: dict[str, WeightTarget], inputs: Any) -> BlockPlan | str:
    """Find the blocks and check, on one forward of ``inputs``, that they may be replayed (else the reason)."""
    reasons = []
    for name, container in _containers(model, targets)[:3]:
        label = name or "(model)"
        blocks = list(container)
        calls, outputs, order, groups, counts, where = _probe_blocks(model, blocks, targets, inputs)
        slot = _check(label, calls, outputs, order)
        if isinstance(slot, str):
            reasons.append(slot)
            continue
        spread = [t for t, w in where.items() if len(w) != 1 or -2 in w]
        if spread:
            reasons.append(f"{targets[spread[0]].key} is called outside one block of {label}")
            continue
        block_of = {t: next(iter(w)) for t, w in where.items()}
        return BlockPlan(label, blocks, slot, groups, counts, block_of)
    return (
        "; ".join(reasons) or "no nn.ModuleList/nn.Sequential holds the pruned weights in two blocks or more"
    )


def _capture(model: nn.Module, plan: BlockPlan, batches: list[Any], last: int) -> list[list[Any]]:
    """Every block's call for every batch (the hidden state kept for block 0 only), up to block ``last``."""
    cached: list[list[Any]] = [[None] * len(batches) for _ in plan.blocks[: last + 1]]
    batch = [0]

    def enter(i: int) -> Callable[..., None]:
        def pre(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            call = (list(args), dict(kwargs))
            if i:
                _set_slot(call, plan.slot, None)  # filled in by the pruned block before
            cached[i][batch[0]] = call

        return pre

    def stop(module: nn.Module, args: Any, output: Any) -> None:
        raise _Stop

    handles = [
        b.register_forward_pre_hook(enter(i), with_kwargs=True) for i, b in enumerate(plan.blocks[: last + 1])
    ]
    handles.append(plan.blocks[last].register_forward_hook(stop))
    try:
        with torch.no_grad():
            for batch[0], inputs in enumerate(batches):
                with contextlib.suppress(_Stop):
                    call_model(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return cached


def prune_blocks(
    model: nn.Module,
    plan: BlockPlan,
    targets: dict[str, WeightTarget],
    batches: list[Any],
    *,
    prune: Callable[[str, InputStats], dict[str, Any]],
    gram: bool,
    done: dict[str, dict[str, Any]],
) -> None:
    """Prune every target of ``plan``: before the blocks, block by block on cached inputs, after the blocks."""
    count = len(plan.blocks)
    whole = [g for g in plan.groups if plan.block_of[g[0]] == -1]
    prune_groups(
        whole, targets, plan.calls, batches, lambda x: call_model(model, x), prune=prune, gram=gram, done=done
    )
    inside = [i for i in range(count) if plan.groups_in(i)]
    if inside:
        last = inside[-1]
        cached = _capture(model, plan, batches, last)
        for i in range(last + 1):
            block = plan.blocks[i]

            def run(call: tuple[list[Any], dict[str, Any]], block: nn.Module = block) -> Any:
                return block(*call[0], **call[1])

            prune_groups(
                plan.groups_in(i), targets, plan.calls, cached[i], run, prune=prune, gram=gram, done=done
            )
            if i < last:
                with torch.no_grad():
                    for b, call in enumerate(cached[i]):
                        _set_slot(cached[i + 1][b], plan.slot, _hidden(run(call)))
            cached[i] = []  # the block's inputs are no longer needed
    after = [g for g in plan.groups if plan.block_of[g[0]] == count]
    prune_groups(
        after, targets, plan.calls, batches, lambda x: call_model(model, x), prune=prune, gram=gram, done=done
    )
