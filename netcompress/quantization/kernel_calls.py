"""Quantizing the kernel call inside a layer's own ``forward`` (Conv/Linear subclasses).

A third-party ``nn.Conv2d`` subclass may pad the input itself (TensorFlow "same" padding) or
derive the kernel from its parameter (weight standardisation) before calling ``F.conv2d``. Its
forward is kept as written: a :class:`torch.overrides.TorchFunctionMode` intercepts the
``conv1d/2d/3d``/``linear`` call it makes and fake-quantizes the weight (and optionally the
input) *that call receives*, i.e. the effective kernel. The mode is plain Python around
``forward``, so it also works under the ONNX exporter's tracer (``torch.func.functional_call``
does not: "The stateless API can't be used with Jitted modules").

Example:
    >>> y = run_quantized_kernel(layer, x, weight_fq=fq)   # layer.forward runs, its kernel is quantized
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

STOCK_FORWARDS = {nn.Conv1d.forward, nn.Conv2d.forward, nn.Conv3d.forward, nn.Linear.forward}
KERNEL_FUNCTIONS = {F.conv1d, F.conv2d, F.conv3d, F.linear, torch.conv1d, torch.conv2d, torch.conv3d}


def has_own_forward(layer: nn.Module) -> bool:
    """True for a Conv/Linear subclass that overrides ``forward``."""
    return type(layer).forward not in STOCK_FORWARDS


class _QuantizeKernel(TorchFunctionMode):
    """Replace the weight (and input) of every conv/linear call with its fake-quantized value."""

    def __init__(self, weight_fn: Callable | None, input_fn: Callable | None) -> None:
        super().__init__()
        self.weight_fn = weight_fn
        self.input_fn = input_fn
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func in KERNEL_FUNCTIONS and len(args) >= 2:
            self.calls += 1
            x, weight, *rest = args
            if self.input_fn is not None:
                x = self.input_fn(x)
            if self.weight_fn is not None:
                weight = self.weight_fn(weight)
            args = (x, weight, *rest)
        return func(*args, **kwargs)


def run_quantized_kernel(
    layer: nn.Module, x: Any, *, weight_fn: Callable | None, input_fn: Callable | None = None
) -> torch.Tensor:
    """Run ``layer(x)`` with ``weight_fn``/``input_fn`` applied to the kernel call's weight/input."""
    with _QuantizeKernel(weight_fn, input_fn):
        return layer(x)


def kernel_weight(layer: nn.Module) -> torch.Tensor | None:
    """The weight ``layer``'s own forward passes to its conv/linear call, on a probe input.

    ``None`` when the forward fails on the probe input or makes no kernel call.
    """
    seen: list[torch.Tensor] = []

    def record(w: torch.Tensor) -> torch.Tensor:
        seen.append(w.detach().clone())
        return w

    x = probe_input(layer)
    if x is None:
        return None
    try:
        with torch.no_grad():
            run_quantized_kernel(layer, x, weight_fn=record)
    except Exception:  # a forward needing other shapes or arguments: the caller reports it
        return None
    return seen[0] if len(seen) == 1 else None


def probe_input(layer: nn.Module) -> torch.Tensor | None:
    """A small random input of the shape ``layer`` expects (None for unknown layer types)."""
    gen = torch.Generator().manual_seed(0)
    dtype = layer.weight.dtype
    if isinstance(layer, nn.Linear):
        return torch.randn(2, layer.in_features, generator=gen, dtype=dtype)
    if isinstance(layer, nn.modules.conv._ConvNd):
        dims = len(layer.kernel_size)
        size = max(k * d for k, d in zip(layer.kernel_size, layer.dilation)) + 2 * max(layer.stride) + 3
        return torch.randn(2, layer.in_channels, *([size] * dims), generator=gen, dtype=dtype)
    return None


def own_forward_problem(layer: nn.Module, *, observed_later: bool) -> str | None:
    """Why ``layer``'s own forward cannot be quantized (None when it can, or for stock layers).

    Its forward must make exactly one conv/linear call on a probe input, whose weight the
    quantizer then covers. When the probe input does not fit the forward, the layer is still
    quantized if a calibration forward will show the kernel (``observed_later``).
    """
    stock_type = isinstance(layer, (nn.modules.conv._ConvNd, nn.Linear))
    if not stock_type or not has_own_forward(layer) or callable(getattr(type(layer), "filters", None)):
        return None  # a stock layer, or a filter bank (quantized through its filters())
    inputs = _positional_inputs(layer)
    if len(inputs) > 1:  # pytorchcv's OctConv(nn.Conv2d): forward(hx, lx=None) -> (hy, ly)
        return (
            f"its own forward takes {len(inputs)} inputs ({', '.join(inputs)}); a quantized layer takes one"
        )
    counter = _QuantizeKernel(None, None)
    try:
        with torch.no_grad(), counter:
            out = layer(probe_input(layer))
    except Exception as exc:
        if observed_later:
            return None
        return f"its own forward failed on a probe input ({type(exc).__name__}: {exc}) and no calibration runs it"
    if counter.calls != 1:
        return f"its own forward makes {counter.calls} conv/linear calls (one is quantizable)"
    if not isinstance(out, torch.Tensor):
        return f"its own forward returns a {type(out).__name__}, not a tensor"
    return None


def takes_several_inputs(layer: nn.Module) -> bool:
    """A Conv/Linear subclass whose own forward takes more than one input: not a layer a quantizer can wrap."""
    return has_own_forward(layer) and len(_positional_inputs(layer)) > 1


def _positional_inputs(layer: nn.Module) -> list[str]:
    """The names of the inputs ``type(layer).forward`` can take by position."""
    try:
        params = list(inspect.signature(type(layer).forward).parameters.values())[1:]
    except (TypeError, ValueError):
        return ["x"]
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in params if p.kind in kinds]
