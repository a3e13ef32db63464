"""The fake-quant model computing what an int8 runtime computes: int32 biases, integer requantization.

**Biases.** An int8 convolution adds its bias to the int32 accumulator in units of ``s_x * s_w[c]``
(input scale times the channel's weight scale): ONNX Runtime rounds a float bias to that grid when
it fuses ``DQ -> Conv/Gemm -> Q`` into ``QLinearConv``/``QGemm`` (``Round(b / (s_x * s_w))``, cast
to int32). A fake-quant model that keeps the float bias is up to half a unit away from the file,
which flips the output code of every value close to a rounding boundary (110 of the 32,768 stem
outputs of EfficientNet-Lite0 on one image). A depthwise convolution with large folded-BN weights
(up to 16 output steps per input step) turns a flipped code into 16: the ORT file was 13 % (of the
largest value) away from the fake-quant model three blocks later. :func:`snap_biases_` puts every
bias on its grid. Where ``|b| / (s_x * s_w)`` does not fit in int32 (a near-dead channel: tiny
weight scale, large folded bias; ONNX Runtime's cast would overflow) the channel's weight scale is
raised until it fits, as ONNX Runtime's own quantizer does.

**Requantization.** With biases on the grid, float32 rounding still flips a few codes (3 of
~700,000 on that image, each amplified downstream). :func:`match_int8_kernels_` also makes each
convolution (and 2-D linear) between two static per-tensor quantizers compute as ``QLinearConv`` /
``QGemm`` do in eval mode: the exact integer accumulator (integer codes summed in float64), times
the float32 multiplier ``s_x * s_w / s_y``, rounded half to even, plus the output zero point,
clamped; the output quantizer then sees values on its grid. Adds and global average pooling
between quantizers get the same treatment (int_graph_ops.py). Tracing for export, training, and
quantizers that observe or are off use the plain fake-quant forward.

``export_onnx(int8=True)`` applies it to the copy it exports and checks (the ORT file of
EfficientNet-Lite0 is then bit-identical to it); apply it to a quantized model to evaluate in
PyTorch exactly what the file computes. It is the last step: a quantized layer's output is then
its output quantizer's value, which calibration, range search, AdaRound or sensitivity analysis
do not expect, so it is not part of ``ptq_static``.

Example:
    >>> match_int8_kernels_(qmodel)    # EfficientNet-Lite0 after ptq_static
    {'snapped': 50, 'max_shift': 0.5, 'rescaled': {}, 'integer_requant': 50, 'integer_adds': 9, 'integer_pools': 1}
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.overrides import TorchFunctionMode

from netcompress.quantization.fake_quant import FakeQuantize
from netcompress.quantization.int_graph_ops import (
    integer_adds_,
    integer_pools_,
    source_quantizer,
    static_per_tensor,
    tracing,
)
from netcompress.quantization.kernel_calls import has_own_forward
from netcompress.quantization.modules import QuantLayer
from netcompress.quantization.tracing import is_relu, module_of

# largest bias code kept: int32's maximum with a margin for float32 rounding of b / (s_x * s_w)
INT32_BIAS_LIMIT = 2**31 - 2**16


def _layer_quantizers(
    model: nn.Module, attr: str, from_graph: Callable[[fx.GraphModule, fx.Node], FakeQuantize | None]
) -> dict[str, FakeQuantize]:
    """``{layer name: quantizer}``: each QuantLayer's own ``attr`` quantizer if it is static per-tensor,
    else (traced models) what ``from_graph(model, node)`` finds around the layer's call."""
    found: dict[str, FakeQuantize] = {}
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantLayer)}
    for name, m in layers.items():
        q = getattr(m, attr)
        if q is not None and static_per_tensor(q):
            found[name] = q
    if isinstance(model, fx.GraphModule):
        for node in model.graph.nodes:
            if node.op != "call_module" or node.target not in layers or node.target in found:
                continue
            q = from_graph(model, node)
            if q is not None:
                found[node.target] = q
    return found


def input_quantizers(model: nn.Module) -> dict[str, FakeQuantize]:
    """``{layer name: the quantizer whose output is its input}`` for each QuantLayer that has one.

    An eager layer's ``input_fq``; in a traced model, the activation quantizer reached from the
    layer's input through ops that keep the grid (reshapes, flatten, max pooling, zero padding).
    Only static per-tensor quantizers of at most 8 bits count (what an int8 kernel's input is).
    """
    return _layer_quantizers(
        model, "input_fq", lambda gm, node: source_quantizer(gm, node.args[0]) if node.args else None
    )


def _weight_scale(m: QuantLayer, channels: int) -> torch.Tensor | None:
    fq = m.weight_fq
    if fq is None or fq.dynamic or not fq.quantizing or fq.bits > 8:
        return None
    scale = fq.scale.detach().abs().float().reshape(-1)
    if scale.numel() == 1:
        return scale.expand(channels)
    return scale if scale.numel() == channels else None


def snap_biases_(model: nn.Module) -> dict[str, Any]:
    """Put the bias of every int8-ready layer on its int32 accumulator grid, IN PLACE.

    Call it once scales and weights are final (after calibration, range search, AdaRound, bias
    correction, ReLU6 absorption); it is idempotent. Returns ``{"snapped": layers, "max_shift":
    largest |bias change| in accumulator units (<= 0.5), "rescaled": {layer: channels whose weight
    scale was raised to keep the bias within int32}}``.

    Example:
        >>> snap_biases_(qmodel)
        {'snapped': 3, 'max_shift': 0.5, 'rescaled': {}}
    """
    snapped, max_shift, rescaled = 0, 0.0, {}
    layers = dict(model.named_modules())
    for name, q_in in input_quantizers(model).items():
        m = layers[name]
        bias = m.layer.bias
        if bias is None:
            continue
        b = bias.detach().float()
        s_w = _weight_scale(m, b.numel())
        if s_w is None:
            continue
        s_x = q_in.scale.detach().abs().float().reshape(())
        # the float32 product ONNX Runtime computes (Mul of the two scales)
        unit = s_x * s_w
        over = b.abs() / unit > INT32_BIAS_LIMIT
        if bool(over.any()):
            # the smallest weight scale whose bias code fits; float32 rounding is covered by the margin
            needed = b.abs() / (s_x * INT32_BIAS_LIMIT)
            fq = m.weight_fq
            new_scale = torch.where(over, torch.maximum(s_w, needed), s_w)
            if fq.scale.numel() == 1:  # per-tensor weights: one scale for every channel
                new_scale = new_scale.max().reshape(1)
            fq.set_qparams(new_scale, fq.zero_point)
            rescaled[name] = int(over.sum())
            s_w = _weight_scale(m, b.numel())
            unit = s_x * s_w
        codes = torch.round(b / unit)
        max_shift = max(max_shift, float((b / unit - codes).abs().max()) if b.numel() else 0.0)
        with torch.no_grad():
            bias.copy_((codes * unit).to(bias.dtype))
        snapped += 1
    return {"snapped": snapped, "max_shift": max_shift, "rescaled": rescaled}


def output_quantizers(model: nn.Module) -> dict[str, FakeQuantize]:
    """``{layer name: the quantizer its output goes to}`` (through a ReLU at most), static per-tensor only."""

    def from_graph(gm: fx.GraphModule, node: fx.Node) -> FakeQuantize | None:
        cur = node
        if len(cur.users) == 1 and is_relu(gm, next(iter(cur.users))):
            cur = next(iter(cur.users))
        if len(cur.users) != 1:
            return None
        q = module_of(gm, next(iter(cur.users)))
        return q if static_per_tensor(q) else None

    return _layer_quantizers(model, "output_fq", from_graph)


class _IntegerKernel(TorchFunctionMode):
    """The conv call inside a layer's own forward run on integer codes in float64 (exact)."""

    def __init__(self, codes: Any) -> None:
        super().__init__()
        self.codes = codes  # (input, weight, bias) -> their codes as float64

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = dict(kwargs or {})
        if (
            func in (F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d)
            and len(args) >= 2
        ):
            x, weight, *rest = args
            bias = rest[0] if rest else kwargs.pop("bias", None)
            x, weight, bias = self.codes(x, weight, bias)
            args = (x, weight, bias, *rest[1:])
        return func(*args, **kwargs)


class IntegerRequant:
    """``QLinearConv``'s arithmetic for one layer: exact accumulator, float32 multiplier, round, clamp.

    Held by a :class:`QuantLayer` (``layer.integer_requant``) with its input and output quantizers,
    whose current scales it reads on every call. ``applies`` says whether the layer uses it now
    (eval mode, quantizers frozen and on, not tracing).
    """

    def __init__(self, input_q: FakeQuantize, output_q: FakeQuantize) -> None:
        self.input_q, self.output_q = input_q, output_q

    def applies(self, m: QuantLayer, x: torch.Tensor) -> bool:
        if isinstance(m.layer, nn.Linear) and (x.dim() != 2 or has_own_forward(m.layer)):
            return False  # MatMul + Add in ONNX (not QGemm), or a forward of its own
        qs = (self.input_q, self.output_q, m.weight_fq)
        return (
            not m.training
            and not m.collect_bias_error
            and all(q is not None and q.quantizing and not q.observing and not q.dynamic for q in qs)
            and not tracing()
        )

    def __call__(self, m: QuantLayer, x: torch.Tensor) -> torch.Tensor:
        layer, weight_fq = m.layer, m.weight_fq
        with torch.no_grad():
            s_x = self.input_q.scale.detach().abs().float().reshape(())
            s_y = self.output_q.scale.detach().abs().float().reshape(())
            z_y = self.output_q.zero_point.reshape(()).double()
            linear = isinstance(layer, nn.Linear)
            s_w = _weight_scale(m, layer.out_features if linear else layer.out_channels)
            unit = (s_x * s_w).double()  # float32 product, as ONNX Runtime computes the bias scale
            w_shape = [-1] + [1] * (layer.weight.dim() - 1)

            def codes(x, weight, bias):  # noqa: ANN001, ANN202 - values on their grids -> integers
                xc = torch.round(x.double() / s_x.double())  # (code - zero point); zero padding stays 0
                wc = torch.round(weight_fq(weight).double() / s_w.double().reshape(w_shape))
                bc = None if bias is None else torch.round(bias.double() / unit)
                return xc, wc, bc

            if linear:  # (batch, features) only: a Gemm in ONNX, QGemm in ONNX Runtime
                acc = F.linear(*codes(x, layer.weight, layer.bias))
            elif has_own_forward(layer):
                with _IntegerKernel(codes):
                    acc = layer(x)
            else:
                acc = layer._conv_forward(*codes(x, layer.weight, layer.bias))
            # integer products summed in float64: exact below 2^53; ONNX Runtime's int32 accumulator
            acc = acc.float()
            shape = [1, -1] + [1] * (acc.dim() - 2)  # channels on dim 1 (a Linear's output is 2-D)
            multiplier = ((s_x * s_w) / s_y).reshape(shape)  # float32, as ONNX Runtime computes it
            qmin, qmax = self.output_q.spec.quant_range
            out = torch.clamp(torch.round(acc * multiplier).double() + z_y, qmin, qmax)
            return ((out - z_y) * s_y.double()).float()


def match_int8_kernels_(model: nn.Module) -> dict[str, Any]:
    """Biases on the int32 grid (:func:`snap_biases_`) and ``QLinearConv`` requantization in eval, IN PLACE.

    Each convolution between two static per-tensor quantizers gets an :class:`IntegerRequant`; call
    this once scales and weights are final (it is idempotent). Each residual add of two static per-tensor quantizers' outputs whose sum goes to one such
    quantizer becomes an :class:`Int8Add` (``QLinearAdd``'s arithmetic). Returns :func:`snap_biases_`'s
    summary, ``integer_requant`` (layers that compute as ``QLinearConv``/``QGemm``), ``integer_adds`` and
    ``integer_pools`` (global average poolings as ``QLinearGlobalAveragePool``, see int_graph_ops.py).

    Example:
        >>> match_int8_kernels_(qmodel)["integer_requant"]
        50
    """
    info = snap_biases_(model)
    inputs, outputs = input_quantizers(model), output_quantizers(model)
    count = 0
    for name, m in model.named_modules():
        if not isinstance(m, QuantLayer):
            continue
        m.__dict__.pop("integer_requant", None)
        if (
            name in inputs
            and name in outputs
            and isinstance(m.layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))
        ):
            # a plain attribute, not a submodule: the quantizers stay where the model holds them
            m.__dict__["integer_requant"] = IntegerRequant(inputs[name], outputs[name])
            count += 1
    info["integer_requant"] = count
    if isinstance(model, fx.GraphModule):
        info["integer_adds"] = integer_adds_(model)
        info["integer_pools"] = integer_pools_(model)
    return info
