"""``torch.onnx.export`` as ``export_onnx`` runs it: the opset an operator needs, and what the exporter refuses
turned into an :class:`UnsupportedModelError` naming the operation (never a raw exporter traceback)."""

from __future__ import annotations

import builtins
import contextlib
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netcompress.core.errors import UnsupportedModelError
from netcompress.export.onnx_rewrites import positive_transpose_perms


@contextlib.contextmanager
def no_mha_fastpath() -> Any:
    """Keep ``nn.TransformerEncoderLayer``/``MultiheadAttention`` off their fused inference kernel, which
    ONNX cannot express (``aten::_transformer_encoder_layer_fwd``), while tracing."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


_BUILTIN_LEN = builtins.len


def _traced_len(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor) and obj.dim() > 0 and torch.jit.is_tracing():
        return obj.size(0)  # recorded as a Shape read, so a dynamic batch stays dynamic
    return _BUILTIN_LEN(obj)


@contextlib.contextmanager
def len_as_size() -> Any:
    """``len(x)`` of a tensor as ``x.size(0)`` while tracing: ``Tensor.__len__`` gives the tracer a constant,
    which froze the example's batch into the graph (rtdl's attention: ``batch_size = len(q)``)."""
    builtins.len = _traced_len
    try:
        yield
    finally:
        builtins.len = _BUILTIN_LEN


_SDPA = torch.nn.functional.scaled_dot_product_attention


def _sdpa_heads_expanded(
    query: Any, key: Any, value: Any, *args: Any, enable_gqa: bool = False, **kw: Any
) -> Any:
    if enable_gqa and key.shape[-3] != query.shape[-3]:  # query head i reads key/value head i // group
        key, value = _repeat_heads(key, query.shape[-3]), _repeat_heads(value, query.shape[-3])
    return _SDPA(query, key, value, *args, **kw)


def _repeat_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(..., kv_heads, L, D) -> (..., heads, L, D), each head repeated in place (transformers' ``repeat_kv``)."""
    *lead, kv_heads, length, dim = t.shape
    grown = t.unsqueeze(-3).expand(*lead, kv_heads, heads // kv_heads, length, dim)
    return grown.reshape(*lead, heads, length, dim)


@contextlib.contextmanager
def sdpa_without_gqa() -> Any:
    """``F.scaled_dot_product_attention(..., enable_gqa=True)`` with its key/value heads repeated while
    tracing: the exporter asserts on ``enable_gqa`` (transformers' Cohere / Jamba / Llama-family models with
    fewer key/value heads, called without an attention mask)."""
    torch.nn.functional.scaled_dot_product_attention = _sdpa_heads_expanded
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = _SDPA


# an op the exporter has only from a later opset (``aten::col2im`` = ``F.fold`` in MobileViTV2: 18) is
# exported at that opset, up to this one (ONNX Runtime 1.32 runs opsets up to 21)
MAX_OPSET = 21
_TRANSLATING = re.compile(r"Occurred when translating (\w+)")
_EXPORTER_NOISE = re.compile(r"Please feel free|\[Caused by")
_NEEDS_OPSET = re.compile(r"Exporting the operator '([^']+)'.*added in version (\d+)", re.S)


def _torch_export(
    call: nn.Module, spec: Any, raw: Path, opset: int, out_names: list[str], axes: Any, model_name: str
) -> tuple[int, str | None]:
    """Run ``torch.onnx.export`` at ``opset``, or at the later opset an operator needs (returned with its
    name); an operator no opset has is an UnsupportedModelError naming it."""
    raised_for = None
    while True:
        try:
            with torch.no_grad(), no_mha_fastpath(), len_as_size(), sdpa_without_gqa():
                torch.onnx.export(
                    call, tuple(spec.tensors), str(raw), dynamo=False, opset_version=opset,
                    input_names=spec.names, output_names=out_names, dynamic_axes=axes or None,
                )  # fmt: skip
            positive_transpose_perms(raw)  # torch writes permute(0, -2, -1, 1) as is; ONNX Runtime refuses it
            return opset, raised_for
        except torch.onnx.errors.UnsupportedOperatorError as exc:
            found = _NEEDS_OPSET.search(str(exc))
            if found is None or not opset < int(found.group(2)) <= MAX_OPSET:
                raise UnsupportedModelError(
                    f"export_onnx cannot export {model_name}: {str(exc).splitlines()[0]}"
                ) from exc
            raised_for, opset = found.group(1), int(found.group(2))
        except (
            Exception
        ) as exc:  # a symbolic that cannot convert this call (e.g. col2im with sizes computed in forward)
            found = _TRANSLATING.search(str(exc))
            if found is not None:
                raise UnsupportedModelError(
                    f"export_onnx cannot export {model_name}: the exporter fails on aten::{found.group(1)} at opset "
                    f"{opset} ({type(exc).__name__}: {str(exc).splitlines()[0]}); keep that op out of the model to "
                    "export it"
                ) from exc
            if not isinstance(exc, torch.onnx.errors.OnnxExporterError):
                functions = custom_functions_called(call, spec.tensors) if isinstance(exc, RuntimeError) else []
                if not functions:
                    raise
                raise UnsupportedModelError(
                    f"export_onnx cannot export {model_name}: torch's ONNX exporter fails while tracing its forward "
                    f"({type(exc).__name__}: {str(exc).splitlines()[0]}); the forward calls custom "
                    f"torch.autograd.Function(s) {', '.join(functions)}, which the exporter's trace cannot follow "
                    "here: export a forward that computes the same without them"
                ) from exc
            # e.g. an LSTM with proj_size, multinomial / randint with sizes computed in forward,
            # adaptive pooling to a size that does not divide the input
            why = _EXPORTER_NOISE.split(str(exc).splitlines()[0])[0].strip().rstrip(".")
            raise UnsupportedModelError(
                f"export_onnx cannot export {model_name} at opset {opset}: torch's ONNX exporter refuses an "
                f"operation of its forward ({why}); keep that op out of the exported forward to export it"
            ) from exc


def custom_functions_called(call: nn.Module, args: Any) -> list[str]:
    """``module.Class`` of every custom ``torch.autograd.Function`` applied in one no-grad call of ``call``
    (Reformer's ``_ReversibleFunction``): named when the exporter's trace fails without saying where."""
    seen: dict[str, None] = {}
    original = vars(torch.autograd.Function)["apply"]

    def apply(cls: type, *a: Any, **k: Any) -> Any:
        if not cls.__module__.startswith("netcompress."):  # netcompress' own stand-ins for int8 / int4 kernels
            seen[f"{cls.__module__}.{cls.__qualname__}"] = None
        return original.__func__(cls, *a, **k)

    torch.autograd.Function.apply = classmethod(apply)  # type: ignore[method-assign, assignment]
    try:
        with torch.no_grad():
            call(*args)
    except Exception:  # noqa: BLE001 - only the functions seen so far are asked for
        pass
    finally:
        torch.autograd.Function.apply = original  # type: ignore[method-assign]
    return list(seen)
