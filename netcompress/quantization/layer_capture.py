"""Capturing what one quantized layer sees and produces on calibration data, float or quantized.

The layer-wise PTQ refinements (learned rounding in :mod:`~netcompress.quantization.adaround`, the
activation range search in :mod:`~netcompress.quantization.range_search`) need, for one layer at a
time, its inputs with everything upstream quantized and its outputs in the float model. Both come
from the quantized model itself: :func:`float_mode` switches every quantizer off (the model then
computes in float), and a forward hook records the layer's input/output then stops the forward
(the rest of the network is not needed).

Example:
    >>> batches = calibration_inputs(loader, num_batches=4, max_samples=256)
    >>> with float_mode(qmodel):
    ...     targets = capture(qmodel, batches, [qmodel.fc])[0]["output"]
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from netcompress.core.inputs import batch_inputs, batch_size_of, call_model, slice_batch
from netcompress.quantization.modules import quantizers


class _Captured(Exception):
    """Raised by a hook once every watched module has been seen: the rest of the forward is skipped."""


def calibration_inputs(loader: Iterable, *, num_batches: int, max_samples: int) -> list[Any]:
    """The model inputs of up to ``num_batches`` batches of ``loader``, ``max_samples`` samples in all."""
    out: list[Any] = []
    total = 0
    for batch in loader:
        if len(out) >= num_batches or total >= max_samples:
            break
        inputs = batch_inputs(batch)
        n = batch_size_of(inputs)
        if total + n > max_samples:
            inputs = slice_batch(inputs, 0, max_samples - total)
            n = max_samples - total
        out.append(inputs)
        total += n
    return out


@contextlib.contextmanager
def float_mode(model: nn.Module) -> Iterator[None]:
    """Every (static) quantizer of ``model`` passes values through unchanged inside the block."""
    saved = {name: q.quantizing for name, q in quantizers(model).items()}
    qs = quantizers(model)
    try:
        for q in qs.values():
            if not q.dynamic:
                q.quantizing = False
        yield
    finally:
        for name, q in qs.items():
            q.quantizing = saved[name]


def capture(
    model: nn.Module,
    batches: Sequence[Any],
    modules: Sequence[nn.Module],
    *,
    want: tuple[str, ...] = ("input", "output"),
) -> list[dict[str, torch.Tensor]]:
    """Input (first positional argument) and output of each of ``modules`` over ``batches``.

    Returns one dict per module with ``want``'s keys, each the batches concatenated along dim 0.
    The forward stops once all modules have run (later layers are skipped).
    """
    seen: list[dict[str, list[torch.Tensor]]] = [{k: [] for k in want} for _ in modules]
    pending: set[int] = set()

    def hook(index: int):
        def record(module: nn.Module, args: tuple, output: Any) -> None:
            if "input" in want:
                seen[index]["input"].append(args[0].detach())
            if "output" in want:
                seen[index]["output"].append(output.detach())
            pending.discard(index)
            if not pending:
                raise _Captured

        return record

    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(modules)]
    try:
        with torch.no_grad():
            for inputs in batches:
                pending.update(range(len(modules)))
                with contextlib.suppress(_Captured):
                    call_model(model, inputs)
    finally:
        for h in handles:
            h.remove()
    return [{k: torch.cat(v, dim=0) for k, v in d.items() if v} for d in seen]


def forward_order(model: nn.Module, inputs: Any, modules: dict[str, nn.Module]) -> list[str]:
    """Names of ``modules`` in the order one forward pass on ``inputs`` first runs them (unreached ones dropped)."""
    names = {id(m): n for n, m in modules.items()}
    order: list[str] = []

    def record(module: nn.Module, args: tuple) -> None:
        if names[id(module)] not in order:
            order.append(names[id(module)])

    handles = [m.register_forward_pre_hook(record) for m in modules.values()]
    try:
        with torch.no_grad():
            call_model(model, inputs)
    finally:
        for h in handles:
            h.remove()
    return order
