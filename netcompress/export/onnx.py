"""ONNX export (fp32 and int8 QDQ), checked against PyTorch and run in ONNX Runtime.

``export_onnx`` traces with ``torch.onnx.export(..., dynamo=False)``: fake quantizers become
``QuantizeLinear``/``DequantizeLinear`` pairs carrying their fixed scales. With ``int8=True``
ONNX Runtime's graph optimiser (extended level) then folds the weight QDQ pairs into int8
initializers and fuses ``QLinearConv``/``QLinearMatMul``; that optimised file is the
deliverable (about a quarter of the float file's bytes: 0.27x on a narrow VGG). The summary lists the
op types so tests can check the int8 kernels really are there, not only the outputs.

Example:
    >>> summary = export_onnx(qmodel, "model_int8.onnx", torch.randn(1, 3, 32, 32), int8=True)
    >>> summary["op_counts"]["QLinearConv"], summary["check"]["max_abs_diff"]
"""

from __future__ import annotations

import copy
import functools
import os
import tempfile
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netcompress.core.errors import ConfigError, ExportMismatchError, UnsupportedModelError
from netcompress.core.io import _file_mode
from netcompress.core.model_check import check_model_call
from netcompress.export.divergence import divergence_note, first_divergence, percent
from netcompress.export.onnx_contrib import drop_uncalled
from netcompress.export.onnx_dynamic import swap_dynamic_linears
from netcompress.export.onnx_embeddings import swap_quant_embeddings
from netcompress.export.onnx_float_layers import float_layers, no_integer_kernel_message
from netcompress.export.onnx_inputs import (
    ExportCall,
    axes_the_model_takes,
    check_input_sets,
    infer_dynamic_axes,
    input_spec,
    mask_padding,
    run_on_inputs,
)
from netcompress.export.onnx_kept_float import keep_float_layers
from netcompress.export.onnx_nbits import swap_nbits_linears
from netcompress.export.onnx_rewrites import rewrite_float_gemms, rewrite_for_qdq_fusion
from netcompress.export.onnx_state import carried_state, describe, empty_state_, state_free_outputs
from netcompress.export.onnx_trace import MAX_OPSET, _torch_export, no_mha_fastpath  # noqa: F401 - re-exported
from netcompress.export.ort_model import OrtModel, ort_session

# check=True fails above this max |ONNX Runtime - PyTorch| / max |PyTorch output|: fp32 differs by
# float reassociation only; int8 by a few output quantization steps where ORT requantizes in
# integer arithmetic (QLinearConv, QLinearAveragePool, ...), each step 1/255 of a tensor's range
TOLERANCE = {False: 1e-4, True: 0.05}

# ONNX / ONNX Runtime (com.microsoft) ops that compute on int8/uint8 codes
INT8_OPS = (
    "QLinearConv",
    "QLinearMatMul",
    "MatMulInteger",
    "ConvInteger",
    "QGemm",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
    "QAttention",
    "DynamicQuantizeLSTM",
    "QLinearAdd",
    "QLinearMul",
    "QLinearAveragePool",
    "QLinearGlobalAveragePool",
    "QLinearConcat",
    "QLinearLeakyRelu",
    "QLinearSigmoid",
    "QLinearSoftmax",
    "QLinearReduceMean",
    "QEmbedLayerNormalization",
    "QOrderedMatMul",
    "QOrderedAttention",
    "MatMulNBits",
    "GatherBlockQuantized",
)


def _tmp_path(folder: Path, name: str) -> Path:
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp.onnx")
    os.close(fd)
    return Path(tmp)


def _check_quantizers(model: nn.Module) -> dict[str, int]:
    """Refuse quantizers the exporter cannot express (above 8 bits); count the rest. Freeze (in the export
    copy) every calibrated static quantizer still observing (a QAT model not yet frozen): the file holds
    today's scales, so the copy traced and checked keeps them too (else the check's own forwards moved them)."""
    from netcompress.quantization.fake_quant import FakeQuantize

    counts: Counter[str] = Counter()
    for name, q in model.named_modules():
        if not isinstance(q, FakeQuantize):
            continue
        if q.bits > 8 and q.quantizing:
            raise UnsupportedModelError(
                f"quantizer {name!r} is {q.bits}-bit: ONNX QuantizeLinear holds at most 8 bits; "
                "export the float model or requantize at <= 8 bits"
            )
        counts["dynamic" if q.dynamic else q.role] += 1
        if q.observing and not q.dynamic and q.calibrated:
            q.freeze()
    return dict(counts)


def op_counts(path: str | os.PathLike) -> dict[str, int]:
    """``{op_type: count}`` of an ONNX file's main graph.

    Example:
        >>> op_counts("model_int8.onnx").get("QLinearConv", 0)
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return dict(sorted(Counter(node.op_type for node in graph.node).items()))


def compare_outputs(reference: torch.Tensor, candidate: torch.Tensor) -> dict[str, Any]:
    """Max abs difference and (for ``(N, classes)`` outputs) top-1 agreement of two outputs."""
    ref, cand = reference.detach().float(), candidate.detach().float()
    result: dict[str, Any] = {"max_abs_diff": float((ref - cand).abs().max()) if ref.numel() else 0.0}
    if ref.dim() == 2 and ref.shape[1] > 1:
        result["top1_agreement"] = float((ref.argmax(1) == cand.argmax(1)).float().mean())
    return result


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    example_inputs: Any,
    *,
    int8: bool = False,
    check: bool = True,
    opset: int = 17,
    dynamic_batch: bool = True,
    check_batch_size: int = 8,
    tolerance: float | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
) -> dict[str, Any]:
    """Export ``model`` to ONNX at ``path`` (written atomically); returns a JSON-able summary.

    ``example_inputs``: a tensor, a tuple of tensors (positional) or a dict (keyword arguments,
    e.g. ``{"input_ids": ids, "attention_mask": mask}``); each input keeps its dtype and is named
    by ``input_names``, the dict's keys, ``input`` or ``input_0, input_1, ...``. The model's main
    output tensor (``logits`` or the first field of a Hugging Face output) is exported as
    ``output``, or the fields/items ``output_names`` names. Dim 0 is dynamic (``dynamic_batch``),
    and so is dim 1 of 2-D integer inputs (``sequence``), unless ``dynamic_axes`` says otherwise
    (see :func:`netcompress.export.onnx_inputs.infer_dynamic_axes`).

    ``int8=True`` expects a fake-quantized model (see :func:`netcompress.quantize`) and saves
    ONNX Runtime's optimised graph (int8 initializers, fused ``QLinearConv``/``QLinearMatMul``,
    ``MatMulIntegerToFloat``...; :data:`INT8_OPS` found are in ``int8_op_counts``; quantized layers ONNX Runtime
    still runs in float are named in ``float_layers``, and a file with no integer kernel warns; float layers the
    model keeps float between quantized ones stay float in the file, named in ``kept_float``:
    :mod:`netcompress.export.onnx_kept_float`). The model is
    exported and checked as a copy that computes what the int8 kernels compute (biases on the int32
    grid, ``QLinearConv``/``QLinearAdd``/... rounding: :func:`netcompress.quantization.int_arithmetic.
    match_int8_kernels_`; counts in ``int8_arithmetic``), so the check compares like with like.
    ``check=True`` runs the file in ONNX Runtime on ``example_inputs``, on a random batch of
    ``check_batch_size`` and (with a dynamic sequence) on a shorter sequence, and reports max abs
    difference and top-1 agreement with PyTorch; it raises :class:`ExportMismatchError` (naming
    the first diverging graph node and its module, the worst output and the difference) when the max difference exceeds ``tolerance`` (relative
    to the largest PyTorch output; default :data:`TOLERANCE`: 1e-4 fp32, 0.05 int8). The file is
    kept for inspection. The model is exported from a copy in eval mode; it is never modified.

    Example:
        >>> export_onnx(model, "m.onnx", torch.randn(1, 3, 32, 32), int8=False, check=True)["check"]
        {'max_abs_diff': 2.4e-07, 'top1_agreement': 1.0, ...}
        >>> export_onnx(bert, "b.onnx", {"input_ids": ids, "attention_mask": mask})["dynamic_axes"]
    """
    check_model_call(model, example_inputs, where="export_onnx")
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"export path is a folder: {path}")
    spec = input_spec(example_inputs, input_names)
    path.parent.mkdir(parents=True, exist_ok=True)
    work = copy.deepcopy(model).eval()
    quantizer_counts = _check_quantizers(work)
    if int8 and not quantizer_counts:
        raise ConfigError(
            "int8=True needs a fake-quantized model (nc.quantize(...)); this one has no quantizers"
        )
    int8_arithmetic = None
    if int8:  # the copy computes as ORT's int8 kernels do (int32 biases, their rounding): check compares like
        from netcompress.quantization.int_arithmetic import match_int8_kernels_

        int8_arithmetic = match_int8_kernels_(work)
    with torch.no_grad():
        run = functools.partial(ExportCall(work, spec, output_names), *spec.tensors)
        states, outputs = carried_state(work, run)  # snntorch's neurons: self.mem = ...
    if states and dynamic_batch and state_free_outputs(work, states, run, outputs):
        emptied, states = states, []  # traced from empty state, the forward builds it from the input's batch
    else:
        emptied = []
    out_names = list(output_names) if output_names is not None else ["output"]
    if set(out_names) & set(spec.names):
        raise ConfigError(f"output_names {out_names} reuse input names {spec.names}")
    axes = infer_dynamic_axes(
        spec, out_names, outputs, dynamic_batch=dynamic_batch, dynamic_axes=dynamic_axes
    )
    if dynamic_axes is None:  # inferred sequence axes the model does not take are fixed instead
        axes = axes_the_model_takes(ExportCall(work, spec, output_names), spec, axes)
    exported, dynamic_info = work, None
    if int8 and quantizer_counts.get("dynamic"):
        # dynamic int8 Linears export as DynamicQuantizeLinear + MatMulInteger with their int8 codes
        exported, dynamic_info = swap_dynamic_linears(copy.deepcopy(work))
    nbits_info = None
    if int8 and not quantizer_counts.get("activation") and not quantizer_counts.get("dynamic"):
        # weight-only Linears export as MatMulNBits with their packed 2-8 bit codes (onnx_nbits.py)
        exported, nbits_info = swap_nbits_linears(copy.deepcopy(work))
    for info in (dynamic_info, nbits_info):  # a layer its parent never calls stays float (onnx_contrib.py)
        if info:
            drop_uncalled(exported, info, lambda: ExportCall(exported, spec, output_names)(*spec.tensors))
    embedding_info = None
    if int8:  # quantized tables export as integer Gather / GatherBlockQuantized (onnx_embeddings.py)
        exported, embedding_info = swap_quant_embeddings(
            exported if exported is not work else copy.deepcopy(work)
        )
    raw = _tmp_path(path.parent, path.name)
    final = _tmp_path(path.parent, path.name)
    try:
        empty_state_(exported, emptied)
        call = ExportCall(exported, spec, output_names)
        opset, raised_for = _torch_export(call, spec, raw, opset, out_names, axes, type(model).__name__)
        raw_size = raw.stat().st_size
        rewrites, kept = {}, None
        if int8:
            rewrites = rewrite_for_qdq_fusion(raw)  # e.g. Flatten -> Reshape: ORT fuses across the latter
            try:
                ort_session(raw, optimized_path=str(final))
                if not set(op_counts(final)) & set(INT8_OPS) and (gemms := rewrite_float_gemms(raw)):
                    # no integer kernel (e.g. an eager Linear's DQ -> Gemm): as MatMul it fuses (onnx_rewrites.py)
                    rewrites["float_gemm_to_integer_matmul"] = gemms
                    ort_session(raw, optimized_path=str(final))
                kept = keep_float_layers(raw, final)  # float layers ORT would quantize (onnx_kept_float.py)
            except Exception as exc:  # noqa: BLE001 - onnxruntime's Fail/InvalidGraph: the traced graph is invalid
                raise UnsupportedModelError(
                    f"export_onnx: ONNX Runtime cannot load the graph torch traced from {type(model).__name__} "
                    f"({str(exc).splitlines()[0][:300]}): torch traced no valid ONNX graph from its forward"
                ) from exc
        else:
            os.replace(raw, final)
        os.chmod(final, _file_mode())  # mkstemp makes 0600; the exported file gets the usual mode
        os.replace(final, path)
    finally:
        raw.unlink(missing_ok=True)
        final.unlink(missing_ok=True)
    counts = op_counts(path)
    summary: dict[str, Any] = {
        "path": str(path),
        "int8": int8,
        "opset": opset,
        **({"opset_raised_for": raised_for} if raised_for else {}),
        "size_bytes": path.stat().st_size,
        "unoptimized_size_bytes": raw_size,
        "op_counts": counts,
        "int8_op_counts": {k: counts[k] for k in INT8_OPS if k in counts},
        "quantizers": quantizer_counts,
        "input_names": spec.names,
        "output_names": out_names,
        "dynamic_axes": {n: {str(d): lb for d, lb in dims.items()} for n, dims in axes.items()},
    }
    if rewrites:
        summary["qdq_rewrites"] = rewrites
    if int8_arithmetic is not None:
        summary["int8_arithmetic"] = int8_arithmetic
    if dynamic_info is not None:
        summary["dynamic_int8"] = dynamic_info
    if nbits_info is not None:
        summary["matmul_nbits"] = nbits_info
    if embedding_info and embedding_info["layers"]:
        summary["quantized_embeddings"] = embedding_info
    if kept is not None:
        summary["kept_float"] = kept["kept_float"]
        if kept["warning"]:
            warnings.warn(kept["warning"], stacklevel=2)
    if int8:  # quantized layers ORT left in float are named, never silent (onnx_float_layers.py)
        summary["float_layers"] = [f for f in float_layers(path) if f["layer"] not in summary["kept_float"]]
        if not summary["int8_op_counts"]:
            warnings.warn(no_integer_kernel_message(summary["float_layers"]), stacklevel=2)
    if emptied:
        summary["state_emptied"] = [f"{m}.{a}" if m else a for m, a in emptied]
    if check:
        try:
            summary["check"] = check_onnx(
                work,
                path,
                example_inputs,
                batch_size=check_batch_size if dynamic_batch else 0,
                tolerance=TOLERANCE[bool(int8)] if tolerance is None else tolerance,
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=axes,
            )
        except (UnsupportedModelError, ExportMismatchError) as exc:
            if not states:
                raise
            raise type(exc)(
                f"{exc}; the forward stores state on its modules between calls, which the traced graph holds as "
                f"constants of the previous call: {describe(work, states)}, and its outputs depend on that state, "
                "so it cannot start empty for the export: reset it inside forward or export the step function with "
                "the state as inputs and outputs"
            ) from exc
    return summary


def _flat_outputs(outputs: Sequence[torch.Tensor], batch: int) -> torch.Tensor:
    """One row per sample; one row in all when an output is not batch-first (per-graph rows of a node batch)."""
    rows = batch if all(o.dim() and o.shape[0] == batch for o in outputs) else 1
    return torch.cat([o.detach().float().reshape(rows, -1) for o in outputs], dim=1)


def check_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    example_inputs: Any,
    *,
    batch_size: int = 8,
    tolerance: float | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
) -> dict[str, Any]:
    """Run ``path`` in ONNX Runtime and compare with ``model`` on the example and a random batch.

    Every input is fed in the dtype the file declares (int64 token ids, float images). With a
    dynamic dim other than the batch (``dynamic_axes``, as :func:`export_onnx` reports them) the
    example is also run cut to half its sequence length. With an ``attention_mask`` input, outputs
    with a (batch, sequence) axis are compared at real tokens only (``padding_positions_masked``
    counts the others). ``max_rel_diff`` is the max abs difference over the largest abs PyTorch
    output; above ``tolerance`` (when given) :class:`ExportMismatchError` names the first diverging
    node (:func:`first_divergence`) and the worst output.

    Example:
        >>> check_onnx(model, "m.onnx", x)["max_abs_diff"] < 1e-4
        True
    """
    spec = input_spec(example_inputs, input_names)
    session = OrtModel(path).session
    axes = {n: {0: "batch"} for n in spec.names} if dynamic_axes is None else dynamic_axes
    call = ExportCall(model.eval(), spec, output_names)
    by_width: dict[int, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    num_samples, sets, padding = 0, [], 0
    with torch.no_grad():
        for label, tensors in check_input_sets(spec, axes, batch_size):
            batch = int(tensors[0].shape[0]) if tensors[0].dim() else 1
            outs = [torch.from_numpy(o) for o in run_on_inputs(session, spec.names, tensors, path, label)]
            ref_outs, got_outs, masked = mask_padding(spec.names, tensors, call(*tensors), outs)
            ref, got = _flat_outputs(ref_outs, batch), _flat_outputs(got_outs, batch)
            padding += masked
            if ref.shape != got.shape:
                raise ExportMismatchError(
                    f"{path}: ONNX Runtime output shape {tuple(got.shape)} != PyTorch {tuple(ref.shape)} "
                    f"on the {label}"
                )
            refs, gots = by_width.setdefault(ref.shape[1], ([], []))
            refs.append(ref)
            gots.append(got)
            num_samples += batch
            sets.append(label)
    groups = [(torch.cat(r), torch.cat(g)) for r, g in by_width.values()]
    reference, candidate = groups[0]
    result = compare_outputs(reference, candidate)
    result["max_abs_diff"] = max(compare_outputs(r, g)["max_abs_diff"] for r, g in groups)
    result["num_samples"] = num_samples
    result["input_sets"] = sets
    result["padding_positions_masked"] = padding
    peak = max((float(r.abs().max()) for r, _ in groups if r.numel()), default=0.0)
    result["max_rel_diff"] = result["max_abs_diff"] / max(peak, 1e-12)
    result["tolerance"] = tolerance
    if tolerance is not None and result["max_rel_diff"] > tolerance:
        ref, cand = max(groups, key=lambda rg: float((rg[0] - rg[1]).abs().max()) if rg[0].numel() else 0.0)
        flat = (ref - cand).abs().flatten().argmax().item()
        sample, index = divmod(flat, ref.shape[1])
        found = first_divergence(
            model,
            path,
            example_inputs,
            tolerance=tolerance,
            input_names=input_names,
            output_names=output_names,
        )
        raise ExportMismatchError(
            f"{path}: ONNX Runtime output differs from PyTorch by {percent(result['max_rel_diff'])} of the largest "
            f"output {peak:.4g} (tolerance {percent(tolerance)}); {divergence_note(found, tolerance)}; worst output "
            f"at sample {sample}, index {index}: PyTorch {float(ref[sample, index]):.5g}, ONNX Runtime "
            f"{float(cand[sample, index]):.5g} (file kept for inspection; op types {op_counts(path)})"
        )
    return result
