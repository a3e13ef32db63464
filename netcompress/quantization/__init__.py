"""Quantization: fake quantization at 2-16 bits, PTQ (static, dynamic, weight-only), QAT (STE, LSQ),
mixed precision under a byte budget and a bit-packed file format.

Methods (``netcompress.core.methods.apply`` with the config, or a recipe step ``op: quantize``):
``ptq_static`` / ``ptq_dynamic`` / ``weight_only`` (ptq.py), ``qat`` (qat.py), ``mixed_precision``
(mixed_precision.py). ``quantize`` and ``prepare_qat`` return a new model; ``calibrate_``,
``correct_bias_`` and ``freeze_quantizers_`` change the model they are given.

Example:
    >>> import netcompress as nc
    >>> qmodel = nc.quantize(model, calib_loader, bits=8, granularity="per_channel", scheme="symmetric")
    >>> nc.export_onnx(qmodel, "model_int8.onnx", example_inputs, int8=True)
"""

from netcompress.quantization.accuracy_aware import AccuracyAwareConfig, quantize_accuracy_aware
from netcompress.quantization.adaround import adaround_
from netcompress.quantization.awq import awq_scale
from netcompress.quantization.blockwise import BlockwiseFakeQuantize
from netcompress.quantization.bn_folding import fold_bn
from netcompress.quantization.calibration import calibrate_, correct_bias_
from netcompress.quantization.equalization import equalize_cross_layer_
from netcompress.quantization.fake_quant import FakeQuantize, LSQFakeQuantize
from netcompress.quantization.ffn_split import split_ffn_outliers
from netcompress.quantization.gptq import gptq_quantize_
from netcompress.quantization.mixed_precision import (
    MixedPrecisionConfig,
    allocate_bits,
    layer_sensitivity,
    mixed_precision_quantize,
)
from netcompress.quantization.modules import (
    QuantConv1d,
    QuantConv2d,
    QuantFilterBank,
    QuantLayer,
    QuantLinear,
    wrap_module,
)
from netcompress.quantization.observers import OBSERVERS
from netcompress.quantization.outlier_split import OutlierSplitLinear, split_outliers
from netcompress.quantization.ptq import (
    PTQDynamicConfig,
    PTQStaticConfig,
    WeightOnlyConfig,
    freeze_quantizers_,
    quantization_summary,
    quantize,
)
from netcompress.quantization.qat import QATConfig, QATPrepareConfig, prepare_qat, qat_summary
from netcompress.quantization.qparams import QuantSpec, compute_qparams, dequantize_tensor, quantize_tensor
from netcompress.quantization.range_search import search_activation_ranges_
from netcompress.quantization.smoothing import smooth_activations
from netcompress.quantization.storage import load_quantized, pack_bits, save_quantized, unpack_bits

__all__ = [
    "AccuracyAwareConfig",
    "OBSERVERS",
    "FakeQuantize",
    "LSQFakeQuantize",
    "MixedPrecisionConfig",
    "PTQDynamicConfig",
    "PTQStaticConfig",
    "QATConfig",
    "QATPrepareConfig",
    "QuantConv1d",
    "QuantConv2d",
    "QuantFilterBank",
    "QuantLayer",
    "QuantLinear",
    "QuantSpec",
    "WeightOnlyConfig",
    "allocate_bits",
    "calibrate_",
    "compute_qparams",
    "correct_bias_",
    "dequantize_tensor",
    "equalize_cross_layer_",
    "fold_bn",
    "freeze_quantizers_",
    "layer_sensitivity",
    "load_quantized",
    "mixed_precision_quantize",
    "pack_bits",
    "prepare_qat",
    "qat_summary",
    "quantization_summary",
    "quantize",
    "quantize_accuracy_aware",
    "quantize_tensor",
    "save_quantized",
    "unpack_bits",
    "wrap_module",
    "BlockwiseFakeQuantize",
    "gptq_quantize_",
    "awq_scale",
    "smooth_activations",
    "adaround_",
    "search_activation_ranges_",
    "OutlierSplitLinear",
    "split_ffn_outliers",
    "split_outliers",
]
