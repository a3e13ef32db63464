"""Dynamic int8 Linear layers exported as ONNX Runtime integer kernels.

A dynamically quantized ``nn.Linear`` (``nc.quantize(model, mode="dynamic")``: int8 weight codes,
input quantized per batch as asymmetric uint8 over the whole tensor, range widened to include 0)
exports as ``DynamicQuantizeLinear(x) -> MatMulInteger(x_q, W_q, x_zp, 0) -> Cast -> Mul(x_scale *
w_scale) -> Add(bias)``: ``W_q`` is an int8 initializer holding the very codes the PyTorch model
rounds to, ``w_scale`` its per-channel (or per-tensor) scales. ONNX Runtime's ``DynamicQuantizeLinear``
uses the same activation scheme as netcompress's dynamic quantizer (uint8, ``scale = (max(hi, 0) -
min(lo, 0)) / 255``, ``zp = round(-lo / scale)``), so outputs agree up to float reassociation and
the odd rounding tie (ORT divides by the scale, PyTorch multiplies by its reciprocal). ONNX
Runtime's optimiser fuses the chain into ``MatMulIntegerToFloat`` / ``DynamicQuantizeMatMul``.

The export swaps each such layer (in a copy) for :class:`DynamicInt8Linear`, whose autograd
function carries an ONNX ``symbolic`` emitting those nodes; a Linear subclass with its own
``forward`` keeps the float QDQ export and is named with the reason.

Example:
    >>> work, info = swap_dynamic_linears(copy.deepcopy(qmodel))
    >>> info["layers"], info["kept_float"]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from netcompress.export.onnx_contrib import StandIn, replace_module


class _Codes:
    """The int8 codes and scales of one layer (a plain object: the tracer passes it to ``symbolic``)."""

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bias: Any):
        self.codes_t = codes.t().contiguous().to(torch.int8)  # (in, out): B of MatMulInteger
        self.scale = scale.detach().float().reshape(-1).clone()
        self.zero_point = zero_point.detach().reshape(-1).to(torch.int8).clone()
        self.bias = None if bias is None else bias.detach().float().clone()

    def symbolic(self, g: Any, x: Any, reference: Any) -> Any:
        """``DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul [-> Add]`` (:class:`StandIn` calls it)."""

        def const(t: torch.Tensor) -> Any:
            return g.op("Constant", value_t=t)

        x_q, x_scale, x_zp = g.op("DynamicQuantizeLinear", x, outputs=3)
        w_zp = self.zero_point if self.zero_point.numel() > 1 else self.zero_point.reshape(())
        acc = g.op("MatMulInteger", x_q, const(self.codes_t), x_zp, const(w_zp))
        acc_f = g.op("Cast", acc, to_i=1)  # 1 = FLOAT
        w_scale = self.scale if self.scale.numel() > 1 else self.scale.reshape(())
        y = g.op("Mul", acc_f, g.op("Mul", x_scale, const(w_scale)))
        if self.bias is not None:
            y = g.op("Add", y, const(self.bias))
        return y


class DynamicInt8Linear(StandIn):
    """Stands in for a dynamic :class:`QuantLinear` during export: same output, int8 ONNX nodes.

    The PyTorch layer's output gives the traced value its shape; :meth:`_Codes.symbolic` replaces its
    nodes, so its float nodes are dead in the exported graph (onnx_contrib.py).
    """

    def __init__(self, quant_layer: nn.Module, codes: _Codes) -> None:
        super().__init__(quant_layer, codes)


def dynamic_int8_problem(module: nn.Module) -> str | None:
    """Why a dynamic :class:`QuantLinear` cannot use the integer kernels (None: it can)."""
    from netcompress.quantization.kernel_calls import has_own_forward

    fq, act = module.weight_fq, module.input_fq
    if fq is None or not fq.quantizing:
        return "weight not quantized"
    if fq.bits > 8:
        return f"{fq.bits}-bit weight does not fit int8"
    if has_own_forward(module.layer):
        return f"{type(module.layer).__name__} has its own forward (exported as float QDQ)"
    if module.output_fq is not None:
        return "output quantizer present"
    spec = act.spec
    if (spec.bits, spec.signed, spec.scheme, spec.granularity) != (8, False, "asymmetric", "per_tensor"):
        return (
            f"activation {'int' if spec.signed else 'uint'}{spec.bits} {spec.scheme} {spec.granularity}: "
            "DynamicQuantizeLinear is uint8 asymmetric per tensor"
        )
    if fq.spec.scheme != "symmetric" and fq.spec.granularity == "per_channel":
        return "per-channel asymmetric weights (ONNX Runtime needs a per-tensor weight zero point)"
    return None


def layer_codes(module: nn.Module) -> _Codes:
    """The int8 weight codes, scales and zero points the PyTorch layer uses (``quantize_tensor``)."""
    from netcompress.quantization.affine import quantize_tensor

    fq = module.weight_fq
    weight = module.layer.weight.detach()
    codes = quantize_tensor(weight, fq.scale, fq.zero_point, fq.spec)
    zp = fq.zero_point
    if fq.spec.granularity == "per_tensor":
        scale, zp = fq.scale.reshape(1), zp.reshape(1)
    else:
        scale = fq.scale.reshape(-1)
    return _Codes(codes, scale, zp, module.layer.bias)


def swap_dynamic_linears(model: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
    """Replace (IN PLACE) each dynamic int8 Linear of ``model`` by :class:`DynamicInt8Linear`.

    Returns the model and ``{"layers": [...], "kept_float": {name: reason}}``.
    """
    from netcompress.quantization.modules import QuantLayer

    swapped: list[str] = []
    kept: dict[str, str] = {}
    targets = [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, QuantLayer)
        and isinstance(m.layer, nn.Linear)
        and m.input_fq is not None
        and m.input_fq.dynamic
    ]
    for name, module in targets:
        problem = dynamic_int8_problem(module)
        if problem is not None:
            kept[name] = problem
            continue
        model = replace_module(model, name, DynamicInt8Linear(module, layer_codes(module)))
        swapped.append(name)
    return model, {"layers": swapped, "kept_float": kept}


def int8_weight_codes(path: str) -> dict[str, np.ndarray]:
    """The int8 initializers of an ONNX file by name (for checking the codes that were exported)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    out = {
        t.name: numpy_helper.to_array(t) for t in graph.initializer if t.data_type == onnx.TensorProto.INT8
    }
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == onnx.TensorProto.INT8:
                    out[node.output[0]] = numpy_helper.to_array(attr.t)
    return out
