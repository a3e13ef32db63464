"""Layers another library already quantized (brevitas' ``QuantLinear`` / ``QuantConv2d`` / ``QuantReLU`` ...).

They subclass ``nn.Linear`` / ``nn.Conv2d`` but compute with their own weight and activation quantizers and may
return a ``QuantTensor`` instead of a tensor, so wrapping them in netcompress' quantizers gives a model that
crashes (``'IntQuantTensor' object has no attribute 'dtype'``) or quantizes twice. Every quantization verb
refuses such a model by name first.

Example:
    >>> refuse_quantized_layers(model, "quantize")   # raises UnsupportedModelError naming the first one
"""

from __future__ import annotations

from torch import nn

from netcompress.core.errors import UnsupportedModelError

# module prefix -> what to tell the user to do instead
_LIBRARIES = {
    "brevitas.": "export it with brevitas' own exporter (brevitas.export.export_onnx_qcdq) or quantize the "
    "float model it was built from",
}


def quantized_layers(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """``(name, module, advice)`` of every outermost module a known quantization library defined (its
    quantizers and scaling modules inside are not listed again)."""
    found: list[tuple[str, nn.Module, str]] = []
    for name, m in model.named_modules():
        owner = type(m).__module__ + "."
        advice = next((a for prefix, a in _LIBRARIES.items() if owner.startswith(prefix)), None)
        if advice is not None and name and not any(name.startswith(f"{n}.") for n, _, _ in found):
            found.append((name, m, advice))
    return found


def refuse_quantized_layers(model: nn.Module, verb: str) -> None:
    """Raise :class:`UnsupportedModelError` when ``model`` holds layers another library already quantized."""
    found = quantized_layers(model)
    if found:
        name, m, advice = found[0]
        cls = type(m)
        raise UnsupportedModelError(
            f"{verb}: {type(model).__name__} is already quantized: layer {name!r} is {cls.__name__} from "
            f"{cls.__module__} ({len(found)} such modules); netcompress does not quantize a quantized layer again: "
            f"{advice}"
        )
