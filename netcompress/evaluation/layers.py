"""A per-layer table: shapes, parameters, zeros and MACs of every layer, in call order."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from netcompress.core.inputs import call_model
from netcompress.evaluation.harness import eval_mode, model_inputs
from netcompress.evaluation.macs import count_macs
from netcompress.evaluation.profiling import parameter_counts


def _shapes(value: Any) -> list[list[int]]:
    return [list(t.shape) for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)]


class _ShapeRecorder:
    """Forward hook storing the input/output shapes of each module's first call, in call order."""

    def __init__(self, names: dict[nn.Module, str]) -> None:
        self.names = names
        self.shapes: dict[str, tuple[list[list[int]], list[list[int]]]] = {}

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        name = self.names[module]
        if name not in self.shapes:
            self.shapes[name] = (_shapes(args), _shapes(output))


def layer_table(model: nn.Module, example_inputs: Any) -> list[dict[str, Any]]:
    """One row per layer: name, type, in/out shapes, params, nonzero, sparsity, macs.

    Layers are the leaf modules plus any container holding its own parameters or doing its
    own MACs; rows follow the order layers run in (layers never called come last with empty
    shapes). Shapes are recorded with forward hooks, so models ``torch.fx`` cannot trace
    work too. A layer with several inputs or outputs lists every tensor's shape.

    Example:
        >>> rows = layer_table(model, torch.randn(1, 3, 32, 32))
        >>> rows[0]
        {'name': 'features.0', 'type': 'Conv2d', 'in_shape': [[1, 3, 32, 32]], 'out_shape': [[1, 32, 32, 32]],
         'params': 896, 'nonzero': 896, 'sparsity': 0.0, 'macs': 884736}
    """
    inputs = model_inputs(example_inputs)
    names = {module: name for name, module in model.named_modules()}
    recorder = _ShapeRecorder(names)
    handles = [module.register_forward_hook(recorder) for module in names]
    try:
        with eval_mode(model), torch.no_grad():
            call_model(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    _, macs = count_macs(model, inputs)

    rows_by_name: dict[str, dict[str, Any]] = {}
    for module, name in names.items():
        counts = parameter_counts(module, recurse=False)
        is_leaf = next(iter(module.children()), None) is None
        if not (is_leaf or counts["params"] or macs.get(name)):
            continue
        in_shape, out_shape = recorder.shapes.get(name, ([], []))
        rows_by_name[name] = {
            "name": name,
            "type": type(module).__name__,
            "in_shape": in_shape,
            "out_shape": out_shape,
            "params": counts["params"],
            "nonzero": counts["nonzero_params"],
            "sparsity": 1.0 - counts["nonzero_params"] / counts["params"] if counts["params"] else 0.0,
            "macs": int(macs.get(name, 0)),
        }
    called = [n for n in recorder.shapes if n in rows_by_name]
    uncalled = [n for n in rows_by_name if n not in recorder.shapes]
    return [rows_by_name[n] for n in called + uncalled]
