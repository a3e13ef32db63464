"""Export: ONNX (fp32 and int8 QDQ) checked against PyTorch and run in ONNX Runtime.

Example:
    >>> import netcompress as nc
    >>> nc.export_onnx(model, "m.onnx", torch.randn(1, 3, 32, 32), int8=False, check=True)
"""

from netcompress.export.onnx import OrtModel, check_onnx, compare_outputs, export_onnx, op_counts

__all__ = ["OrtModel", "check_onnx", "compare_outputs", "export_onnx", "op_counts"]
