"""ONNX Runtime's own quantizers as the benchmarks' peers, called with one set of settings.

:func:`ort_quantize_static` is ``onnxruntime.quantization.quantize_static`` as issue 13 and 15 compare
against it: QDQ format, per-channel int8 weights, uint8 activations, MinMax calibration on the
batches given, optionally after ``quant_pre_process`` (shape inference + ORT's graph optimisations,
as ORT's documentation recommends).

Example:
    >>> feeds = [{"input": x.numpy()} for x in calib_images]
    >>> ort_quantize_static(Path("float.onnx"), Path("ort_static.onnx"), feeds, pre_process=True)
    {'source': 'ort_static_pre.onnx'}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


def ort_quantize_static(
    float_path: Path,
    out_path: Path,
    reader_batches: Iterable[Mapping[str, Any]],
    *,
    pre_process: bool = False,
) -> dict[str, Any]:
    """Write ORT's QDQ per-channel static int8 file of ``float_path`` to ``out_path``.

    ``reader_batches``: the calibration feeds, each ``{input name: numpy array}``. With ``pre_process``
    the float file goes through ``quant_pre_process`` first (written next to ``out_path`` as
    ``<stem>_pre.onnx``). Returns ``{"source": name of the file that was quantized}``.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([dict(b) for b in reader_batches])

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    source = Path(float_path)
    if pre_process:
        source = Path(out_path).with_name(Path(out_path).stem + "_pre.onnx")
        quant_pre_process(str(float_path), str(source))
    quantize_static(
        str(source),
        str(out_path),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return {"source": source.name}
