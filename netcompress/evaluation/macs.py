"""Multiply-accumulate counts, total and per layer, from PyTorch's own FLOP counter.

``torch.utils.flop_counter.FlopCounterMode`` counts the FLOPs of every matmul and
convolution the model actually runs (so functional convolutions, such as SincNet's
``F.conv1d(x, self.filters())``, are counted too); one MAC is two FLOPs. Per-layer counts
come from forward hooks that read the running total before and after each module call:
a module's count is what ran inside it minus what ran inside its child modules, so the
per-layer numbers sum exactly to the total and a layer called twice is counted twice.
Element-wise ops (ReLU, BN in eval mode, additions) are not MACs and count zero.
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

    def pre(self, module: nn.Module, args: Any) -> None:
        self.stack.append([self.names[module], self.counter.get_total_flops(), 0])

    def post(self, module: nn.Module, args: Any, output: Any) -> None:
        name, start, inside_children = self.stack.pop()
        inclusive = self.counter.get_total_flops() - start
        self.exclusive_flops[name] = self.exclusive_flops.get(name, 0) + inclusive - inside_children
        if self.stack:
            self.stack[-1][2] += inclusive


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
    for module in names:
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
    total_flops = counter.get_total_flops()
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
