"""Multiply-accumulate counts, total and per layer, from PyTorch's own FLOP counter.

``torch.utils.flop_counter.FlopCounterMode`` counts the FLOPs of every matmul and
convolution the model actually runs (so functional convolutions, such as SincNet's
``F.conv1d(x, self.filters())``, are counted too); one MAC is two FLOPs. Per-layer counts
come from forward hooks that read the running total before and after each module call:
a module's count is what ran inside it minus what ran inside its child modules, so the
per-layer numbers sum exactly to the total and a layer called twice is counted twice.
Element-wise ops (ReLU, BN in eval mode, additions) are not MACs and count zero.

Recurrent layers (``nn.LSTM``/``nn.GRU``/``nn.RNN`` and their dynamic int8 versions) run as one fused op
that the FLOP counter does not see; their MACs are counted from their sizes instead (every gate's input
and hidden matmuls, each time step, layer and direction), so an LSTM is not reported as nearly free.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from netcompress.core.inputs import call_model
from netcompress.evaluation.harness import eval_mode, model_inputs


class _MacRecorder:
    """Forward hooks keeping a stack of open module calls and their running FLOP totals.

    A module-level class (not closures) so a model that is pickled while the hooks are
    attached still pickles; the hooks are removed when counting ends anyway.
    """

    def __init__(self, counter: FlopCounterMode, names: dict[nn.Module, str]) -> None:
        self.counter = counter
        self.names = names
        # each entry: [name, flops at entry, flops spent inside child modules]
        self.stack: list[list[Any]] = []
        self.exclusive_flops: dict[str, int] = {}

        self.recurrent_flops = 0  # what the fused recurrent ops ran, which the counter does not see

    def total(self) -> int:
        return self.counter.get_total_flops() + self.recurrent_flops

    def pre(self, module: nn.Module, args: Any) -> None:
        self.stack.append([self.names.get(module, ""), self.total(), 0])

    def post(self, module: nn.Module, args: Any, output: Any) -> None:
        name, start, inside_children = self.stack.pop()
        if self.total() == start and _is_recurrent(module):  # the counter saw nothing: the fused op
            self.recurrent_flops += 2 * recurrent_macs(module, args)
        inclusive = self.total() - start
        self.exclusive_flops[name] = self.exclusive_flops.get(name, 0) + inclusive - inside_children
        if self.stack:
            self.stack[-1][2] += inclusive


RECURRENT_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def _is_recurrent(module: nn.Module) -> bool:
    return getattr(module, "mode", None) in RECURRENT_GATES and hasattr(module, "hidden_size")


def recurrent_macs(module: nn.Module, args: Any) -> int:
    """MACs of one call of a recurrent layer on ``args[0]`` (batched, unbatched or a PackedSequence).

    Per time step and sample, each layer and direction runs ``gates * hidden * (input + state)`` MACs
    (``state`` is ``proj_size`` for a projected LSTM, which adds ``proj_size * hidden``).

    Example:
        >>> recurrent_macs(nn.LSTM(8, 32, batch_first=True), (torch.randn(2, 20, 8),))  # 2 * 20 * 4 * 32 * 40
        204800
    """
    x = args[0] if args else None
    data = getattr(x, "data", x) if type(x).__name__ == "PackedSequence" else x
    if not isinstance(data, torch.Tensor):
        return 0
    if type(x).__name__ == "PackedSequence" or data.dim() == 2:
        steps = data.shape[0]  # a packed sequence's rows are (time step, sample) pairs; unbatched: T rows
    else:
        steps = data.shape[0] * data.shape[1]
    gates = RECURRENT_GATES[module.mode]
    hidden, proj = int(module.hidden_size), int(getattr(module, "proj_size", 0) or 0)
    state = proj or hidden
    directions = 2 if getattr(module, "bidirectional", False) else 1
    macs, inputs = 0, int(module.input_size)
    for _ in range(int(module.num_layers)):
        macs += directions * (gates * hidden * (inputs + state) + proj * hidden)
        inputs = directions * state
    return steps * macs


def count_macs(
    model: nn.Module, example_inputs: Any, *, per_layer: bool = True
) -> tuple[int, dict[str, int]]:
    """Count the MACs of one forward pass on ``example_inputs`` (for that batch size).

    Returns ``(total, per_layer)``: ``per_layer`` maps qualified module names to the MACs run
    directly in that module's forward (leaf layers, plus a container whose own forward does a
    matmul), in call order; MACs outside any submodule are under ``""``. Layers without
    MACs are left out. ``per_layer=False`` skips the per-layer hooks (faster; the dict is
    empty). The model is run in eval mode, which is restored afterwards.

    Example:
        >>> conv = nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2)
        >>> count_macs(conv, torch.randn(1, 4, 9, 9))[0]  # 8 * 5 * 5 * (4 / 2) * 3 * 3
        3600
    """
    inputs = model_inputs(example_inputs)
    names = {module: name for name, module in model.named_modules()} if per_layer else {}
    counter = FlopCounterMode(display=False)
    recorder = _MacRecorder(counter, names)
    handles = []
    hooked = names or {m: "" for m in model.modules() if _is_recurrent(m)}
    for module in hooked:
        handles.append(module.register_forward_pre_hook(recorder.pre))
        handles.append(module.register_forward_hook(recorder.post))
    # FlopCounterMode's module tracker hooks the gradient of every input that requires one; a view of a
    # parameter taken under no_grad (DeBERTa slices its relative-position table) requires grad yet has no
    # gradient function, and the tracker fails on it: count with the parameters' requires_grad off
    frozen = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in frozen:
            p.requires_grad_(False)
        with eval_mode(model), torch.no_grad(), counter:
            call_model(model, inputs)
    finally:
        for p in frozen:
            p.requires_grad_(True)
        for handle in handles:
            handle.remove()
    total_flops = recorder.total()
    if not per_layer:
        return total_flops // 2, {}
    layers = {name: flops // 2 for name, flops in recorder.exclusive_flops.items() if flops > 0}
    outside = total_flops - sum(recorder.exclusive_flops.values())
    if outside > 0:
        layers[""] = layers.get("", 0) + outside // 2
    return total_flops // 2, layers


def count_total_macs(model: nn.Module, example_inputs: Any) -> int:
    """Total MACs of one forward pass: ``count_macs(model, example_inputs, per_layer=False)[0]``.

    Example:
        >>> count_total_macs(nn.Linear(4, 3), torch.randn(1, 4))
        12
    """
    return count_macs(model, example_inputs, per_layer=False)[0]
