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
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from netcompress.core.errors import CheckpointError, ConfigError, ExportMismatchError, UnsupportedModelError
from netcompress.core.io import _file_mode
from netcompress.export.onnx_dynamic import swap_dynamic_linears
from netcompress.export.onnx_nbits import swap_nbits_linears

# check=True fails above this max |ONNX Runtime - PyTorch| / max |PyTorch output|: fp32 differs by
# float reassociation only; int8 by a few output quantization steps where ORT requantizes in
# integer arithmetic (QLinearConv, QLinearAveragePool, ...), each step 1/255 of a tensor's range
TOLERANCE = {False: 1e-4, True: 0.05}

INT8_OPS = (
    "QLinearConv",
    "QLinearMatMul",
    "MatMulInteger",
    "ConvInteger",
    "QGemm",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
    "MatMulNBits",
)


def _tmp_path(folder: Path, name: str) -> Path:
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp.onnx")
    os.close(fd)
    return Path(tmp)


def _check_quantizers(model: nn.Module) -> dict[str, int]:
    """Refuse quantizers the exporter cannot express (above 8 bits); count the rest."""
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
    return dict(counts)


def op_counts(path: str | os.PathLike) -> dict[str, int]:
    """``{op_type: count}`` of an ONNX file's main graph.

    Example:
        >>> op_counts("model_int8.onnx").get("QLinearConv", 0)
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return dict(sorted(Counter(node.op_type for node in graph.node).items()))


def _session(path: str | os.PathLike, *, threads: int = 1, optimized_path: str | None = None) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    if optimized_path is not None:
        # extended level: QDQ fusion and constant folding of weight QDQ into int8 initializers,
        # but no hardware-specific layout transforms, so the saved file stays portable
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = optimized_path
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


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
    example_inputs: torch.Tensor,
    *,
    int8: bool = False,
    check: bool = True,
    opset: int = 17,
    dynamic_batch: bool = True,
    check_batch_size: int = 8,
    tolerance: float | None = None,
) -> dict[str, Any]:
    """Export ``model`` to ONNX at ``path`` (written atomically); returns a JSON-able summary.

    ``int8=True`` expects a fake-quantized model (see :func:`netcompress.quantize`) and saves
    ONNX Runtime's optimised graph (int8 initializers, fused ``QLinearConv``/``QLinearMatMul``).
    ``check=True`` runs the file in ONNX Runtime on ``example_inputs`` and on a random batch of
    ``check_batch_size`` and reports max abs difference and top-1 agreement with PyTorch; it
    raises :class:`ExportMismatchError` (naming the worst output and the difference) when the
    max difference exceeds ``tolerance`` (relative to the largest PyTorch output; default
    :data:`TOLERANCE`: 1e-4 fp32, 0.05 int8). The file is kept for inspection.
    The model is exported from a copy in eval mode; it is never modified.

    Example:
        >>> export_onnx(model, "m.onnx", torch.randn(1, 3, 32, 32), int8=False, check=True)["check"]
        {'max_abs_diff': 2.4e-07, 'top1_agreement': 1.0, ...}
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"export path is a folder: {path}")
    if not isinstance(example_inputs, torch.Tensor):
        raise ConfigError(f"example_inputs must be a tensor, got {type(example_inputs).__name__}")
    path.parent.mkdir(parents=True, exist_ok=True)
    work = copy.deepcopy(model).eval()
    quantizer_counts = _check_quantizers(work)
    if int8 and not quantizer_counts:
        raise ConfigError(
            "int8=True needs a fake-quantized model (nc.quantize(...)); this one has no quantizers"
        )
    dynamic_axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None
    exported, dynamic_info = work, None
    if int8 and quantizer_counts.get("dynamic"):
        # dynamic int8 Linears export as DynamicQuantizeLinear + MatMulInteger with their int8 codes
        exported, dynamic_info = swap_dynamic_linears(copy.deepcopy(work))
    nbits_info = None
    if int8 and not quantizer_counts.get("activation") and not quantizer_counts.get("dynamic"):
        # weight-only Linears export as MatMulNBits with their packed 2-8 bit codes (onnx_nbits.py)
        exported, nbits_info = swap_nbits_linears(copy.deepcopy(work))
    raw = _tmp_path(path.parent, path.name)
    final = _tmp_path(path.parent, path.name)
    try:
        with torch.no_grad():
            torch.onnx.export(
                exported,
                (example_inputs,),
                str(raw),
                dynamo=False,
                opset_version=opset,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes=dynamic_axes,
            )
        raw_size = raw.stat().st_size
        if int8:
            _session(raw, optimized_path=str(final))
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
        "size_bytes": path.stat().st_size,
        "unoptimized_size_bytes": raw_size,
        "op_counts": counts,
        "int8_op_counts": {k: counts[k] for k in INT8_OPS if k in counts},
        "quantizers": quantizer_counts,
    }
    if dynamic_info is not None:
        summary["dynamic_int8"] = dynamic_info
    if nbits_info is not None:
        summary["matmul_nbits"] = nbits_info
    if check:
        summary["check"] = check_onnx(
            work,
            path,
            example_inputs,
            batch_size=check_batch_size if dynamic_batch else 0,
            tolerance=TOLERANCE[bool(int8)] if tolerance is None else tolerance,
        )
    return summary


def check_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    example_inputs: torch.Tensor,
    *,
    batch_size: int = 8,
    tolerance: float | None = None,
) -> dict[str, Any]:
    """Run ``path`` in ONNX Runtime and compare with ``model`` on the example and a random batch.

    ``max_rel_diff`` is the max abs difference over the largest abs PyTorch output; above
    ``tolerance`` (when given) :class:`ExportMismatchError` names the worst output.

    Example:
        >>> check_onnx(model, "m.onnx", x)["max_abs_diff"] < 1e-4
        True
    """
    ort_model = OrtModel(path)
    inputs = [example_inputs]
    if batch_size > 0:
        gen = torch.Generator().manual_seed(0)
        inputs.append(torch.randn((batch_size, *example_inputs.shape[1:]), generator=gen))
    ref = []
    got = []
    with torch.no_grad():
        for x in inputs:
            ref.append(model.eval()(x).reshape(x.shape[0], -1))
            got.append(ort_model(x).reshape(x.shape[0], -1))
    reference, candidate = torch.cat(ref), torch.cat(got)
    result = compare_outputs(reference, candidate)
    result["num_samples"] = int(sum(x.shape[0] for x in inputs))
    if reference.shape != candidate.shape:
        raise ExportMismatchError(
            f"{path}: ONNX Runtime output shape {tuple(candidate.shape)} != PyTorch {tuple(reference.shape)}"
        )
    peak = float(reference.abs().max()) if reference.numel() else 0.0
    result["max_rel_diff"] = result["max_abs_diff"] / max(peak, 1e-12)
    result["tolerance"] = tolerance
    if tolerance is not None and result["max_rel_diff"] > tolerance:
        flat = (reference - candidate).abs().flatten().argmax().item()
        sample, index = divmod(flat, reference.shape[1])
        raise ExportMismatchError(
            f"{path}: ONNX Runtime disagrees with the PyTorch model: max |diff| "
            f"{result['max_abs_diff']:.4g} = {result['max_rel_diff']:.1%} of the largest output "
            f"{peak:.4g} (tolerance {tolerance:.1%}); worst at sample {sample}, output {index}: "
            f"PyTorch {float(reference[sample, index]):.5g}, ONNX Runtime {float(candidate[sample, index]):.5g} "
            f"(file kept for inspection; op types {op_counts(path)})"
        )
    return result


class OrtModel(nn.Module):
    """An ONNX file run by ONNX Runtime, callable like a model: ``tensor -> tensor``.

    Being an ``nn.Module`` (without parameters) it plugs into ``netcompress.evaluation`` for
    accuracy and latency. The session is rebuilt after unpickling or deepcopy.

    Example:
        >>> ort_model = OrtModel("model_int8.onnx"); logits = ort_model(torch.randn(4, 3, 32, 32))
    """

    def __init__(self, path: str | os.PathLike, *, threads: int = 1) -> None:
        super().__init__()
        self.path = str(path)
        self.threads = threads
        if not Path(self.path).is_file():
            raise CheckpointError(f"ONNX file not found: {self.path}")
        self._session = None

    @property
    def session(self) -> Any:
        if self._session is None:
            try:
                self._session = _session(self.path, threads=self.threads)
            except Exception as exc:  # onnxruntime raises its own exception types
                raise CheckpointError(f"ONNX Runtime cannot load {self.path}: {exc}") from exc
        return self._session

    @property
    def size_bytes(self) -> int:
        return Path(self.path).stat().st_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        session = self.session
        name = session.get_inputs()[0].name
        out = session.run(None, {name: np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)})[0]
        return torch.from_numpy(out)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_session"] = None
        return state

    def __deepcopy__(self, memo: dict[int, Any]) -> OrtModel:
        return OrtModel(self.path, threads=self.threads)

    def extra_repr(self) -> str:
        return f"path={self.path!r}, threads={self.threads}"
