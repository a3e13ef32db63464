"""Quantized layers: a float layer wrapped with a weight fake-quantizer (and optional activation ones).

The wrapper keeps the original layer (``.layer``), so any ``nn.Conv2d`` subclass, including one
with its own ``forward``, runs its own code with the fake-quantized weight swapped in. A
filter-bank layer that computes its kernel in ``filters()`` (SincNet) is supported duck-typed:
:class:`QuantFilterBank` fake-quantizes what ``filters()`` returns.

Example:
    >>> q = wrap_module(nn.Conv2d(3, 8, 3), weight_spec=QuantSpec(bits=4, granularity="per_channel"))
    >>> y = q(torch.randn(1, 3, 8, 8))
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from netcompress.core.registry import Registry
from netcompress.quantization.fake_quant import FakeQuantize, LSQFakeQuantize
from netcompress.quantization.kernel_calls import (
    has_own_forward,
    kernel_weight,
    run_quantized_kernel,
    takes_several_inputs,
)
from netcompress.quantization.qparams import QuantSpec

# quantizer kind -> class; "ste" observes and rounds straight-through, "lsq" learns its step size
QUANTIZERS: Registry[type[FakeQuantize]] = Registry("quantizer method")
QUANTIZERS.register("ste", FakeQuantize)
QUANTIZERS.register("lsq", LSQFakeQuantize)


def make_quantizer(
    spec: QuantSpec, *, method: str = "ste", dynamic: bool = False, role: str = "activation"
) -> FakeQuantize:
    """A fake quantizer of kind ``method`` ("ste" or "lsq") for ``spec``.

    Example:
        >>> make_quantizer(QuantSpec(bits=8, signed=False, scheme="asymmetric"))
    """
    cls = QUANTIZERS.get(method)
    return cls(spec, dynamic=True, role=role) if dynamic else cls(spec, role=role)


class LayerWrapper(nn.Module):
    """A module wrapping ``self.layer``: reads of attributes it lacks (``conv.stride``, ``padding_idx``)
    and of ``weight`` go to the wrapped layer."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            layer = self.__dict__.get("_modules", {}).get("layer")
            if layer is None or name.startswith("__"):
                raise
            return getattr(layer, name)

    @property
    def weight(self) -> torch.Tensor:
        return self.layer.weight


class QuantLayer(LayerWrapper):
    """``layer`` run with ``weight_fq(layer.weight)``; ``input_fq``/``output_fq`` wrap its activations.

    While ``collect_bias_error`` is on, the mean per-channel output shift caused by weight
    quantization is accumulated (used by bias correction).
    """

    def __init__(
        self,
        layer: nn.Module,
        *,
        weight_fq: FakeQuantize | None,
        input_fq: FakeQuantize | None = None,
        output_fq: FakeQuantize | None = None,
    ) -> None:
        super().__init__()
        self.layer = layer
        self.weight_fq = weight_fq
        self.input_fq = input_fq
        self.output_fq = output_fq
        self.collect_bias_error = False
        self.bias_error_sum: torch.Tensor | None = None
        self.bias_error_count = 0

    @property
    def bias(self) -> torch.Tensor | None:
        return self.layer.bias

    def quantized_weight(self) -> torch.Tensor:
        """The fake-quantized weight the forward pass uses (detached)."""
        with torch.no_grad():
            if self.weight_fq is None:
                return self.layer.weight.detach().clone()
            return self.weight_fq(self.layer.weight.detach())

    def _run(self, x: torch.Tensor, weight_fq: FakeQuantize | None) -> torch.Tensor:
        layer = self.layer
        if has_own_forward(layer):
            # the user's forward runs as written; the kernel its conv/linear call receives is quantized
            return run_quantized_kernel(layer, x, weight_fn=weight_fq)
        weight = layer.weight if weight_fq is None else weight_fq(layer.weight)
        if isinstance(layer, nn.Linear):
            return F.linear(x, weight, layer.bias)
        return layer._conv_forward(x, weight, layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_fq is not None:
            x = self.input_fq(x)
        # int_arithmetic.match_int8_kernels_ sets it: in eval, the int8 kernel's exact arithmetic
        requant = self.__dict__.get("integer_requant")
        if requant is not None and requant.applies(self, x):
            y = requant(self, x)
            return self.output_fq(y) if self.output_fq is not None else y
        y = self._run(x, self.weight_fq)
        if self.collect_bias_error:
            self._accumulate_bias_error(x, y)
        if self.output_fq is not None:
            y = self.output_fq(y)
        return y

    def _accumulate_bias_error(self, x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.no_grad():
            diff = self._run(x, None) - y
            channel_dim = diff.dim() - 1 if isinstance(self.layer, nn.Linear) else 1
            per_channel = diff.movedim(channel_dim, 0).reshape(diff.shape[channel_dim], -1).mean(dim=1)
            self.bias_error_sum = (
                per_channel if self.bias_error_sum is None else self.bias_error_sum + per_channel
            )
            self.bias_error_count += 1


class QuantConv1d(QuantLayer):
    """Fake-quantized ``nn.Conv1d`` (or subclass)."""


class QuantConv2d(QuantLayer):
    """Fake-quantized ``nn.Conv2d`` (or subclass)."""


class QuantConv3d(QuantLayer):
    """Fake-quantized ``nn.Conv3d`` (or subclass)."""


class QuantLinear(QuantLayer):
    """Fake-quantized ``nn.Linear`` (or subclass)."""


# float base type -> wrapper class; the first isinstance match wins, so subclasses are covered
WRAPPERS: dict[type[nn.Module], type[QuantLayer]] = {
    nn.Conv1d: QuantConv1d,
    nn.Conv2d: QuantConv2d,
    nn.Conv3d: QuantConv3d,
    nn.Linear: QuantLinear,
}


class QuantFilterBank(nn.Module):
    """A layer whose kernel comes from ``filters()`` (e.g. SincNet), with that kernel fake-quantized.

    During ``forward`` an instance attribute shadows the layer's ``filters`` method with one that
    returns ``weight_fq(filters())``; it is removed afterwards, so nothing unpicklable is stored.
    """

    def __init__(self, layer: nn.Module, *, weight_fq: FakeQuantize, output_fq: FakeQuantize | None = None):
        super().__init__()
        self.layer = layer
        self.weight_fq = weight_fq
        self.output_fq = output_fq
        self.input_fq: FakeQuantize | None = None

    def quantized_weight(self) -> torch.Tensor:
        with torch.no_grad():
            return self.weight_fq(type(self.layer).filters(self.layer))

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        layer = self.layer
        original = type(layer).filters
        weight_fq = self.weight_fq

        def quantized_filters(*f_args: Any, **f_kwargs: Any) -> torch.Tensor:
            return weight_fq(original(layer, *f_args, **f_kwargs))

        layer.__dict__["filters"] = quantized_filters
        try:
            y = layer(*args, **kwargs)
        finally:
            layer.__dict__.pop("filters", None)
        return self.output_fq(y) if self.output_fq is not None else y


def is_filter_bank(module: nn.Module) -> bool:
    """Duck typing: a module with a callable ``filters`` method computes its own kernel."""
    return callable(getattr(type(module), "filters", None)) and not isinstance(module, QuantFilterBank)


def is_quantizable(module: nn.Module) -> bool:
    """True for Conv1d/2d/3d/Linear (and subclasses whose forward takes one input) and filter-bank layers."""
    if takes_several_inputs(module):  # pytorchcv's OctConv(nn.Conv2d).forward(hx, lx) -> (hy, ly)
        return False
    return is_filter_bank(module) or any(isinstance(module, t) for t in WRAPPERS)


def weight_spec_for(module: nn.Module, spec: QuantSpec) -> QuantSpec:
    """``spec`` with the weight's output-channel axis (0 for Conv and Linear weights)."""
    return spec.replace(axis=0)


def wrap_module(
    module: nn.Module,
    *,
    weight_spec: QuantSpec,
    method: str = "ste",
    input_spec: QuantSpec | None = None,
    dynamic_input: bool = False,
    observe_weight: bool = True,
) -> nn.Module:
    """Wrap a Conv/Linear/filter-bank layer with fake quantizers (the layer itself is reused).

    The weight quantizer observes the current weight immediately (weights need no data), so
    the wrapper is ready to run; ``observe_weight=False`` leaves that to the first forward.

    Example:
        >>> wrap_module(nn.Linear(8, 4), weight_spec=QuantSpec(bits=8, granularity="per_channel"))
    """
    weight_fq = make_quantizer(weight_spec_for(module, weight_spec), method=method, role="weight")
    if is_filter_bank(module):
        wrapper: nn.Module = QuantFilterBank(module, weight_fq=weight_fq)
        if observe_weight:
            weight_fq.observe(type(module).filters(module).detach())
        return wrapper
    cls = next((w for t, w in WRAPPERS.items() if isinstance(module, t)), None)
    if cls is None:
        raise TypeError(f"cannot quantize {type(module).__name__}")
    input_fq = None
    if input_spec is not None:
        input_fq = make_quantizer(
            input_spec, method="ste" if dynamic_input else method, dynamic=dynamic_input
        )
    if observe_weight:
        # a layer with its own forward may transform its parameter (weight standardisation):
        # observe the kernel its conv/linear call receives; the first forward observes it otherwise
        effective = kernel_weight(module) if has_own_forward(module) else module.weight.detach()
        if effective is not None:
            weight_fq.observe(effective)
    return cls(module, weight_fq=weight_fq, input_fq=input_fq)


def quantizers(model: nn.Module) -> dict[str, FakeQuantize]:
    """All fake quantizers in ``model`` by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, FakeQuantize)}


def quant_layers(model: nn.Module) -> dict[str, nn.Module]:
    """All quantized layers (:class:`QuantLayer` and :class:`QuantFilterBank`) by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (QuantLayer, QuantFilterBank))}
