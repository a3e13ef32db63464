"""The steps of weight-only 2-8 bit quantization around the shared PTQ wrapping (ptq.py ``weight_only``).

Before wrapping, :func:`prepare_weight_only` optionally applies AWQ's activation-aware scales to a copy
of the float model (awq.py). After wrapping, :func:`finish_weight_only_` gives Linear layers block-wise
scales (blockwise.py), optionally replaces round-to-nearest by GPTQ's error-compensating rounding on
calibration data (gptq.py) and records the ``MatMulNBits`` ``accuracy_level`` the layers export with.

Example:
    >>> qmodel = nc.quantize(model, calib_loader, mode="weight_only", bits=4, block_size=32, rounding="gptq")
    >>> nc.export_onnx(qmodel, "m_int4.onnx", x, int8=True)["op_counts"]["MatMulNBits"]
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from netcompress.core.config import check_choice, check_range
from netcompress.core.errors import ConfigError
from netcompress.quantization.blockwise import check_block_size, use_blocks_
from netcompress.quantization.modules import QuantLayer

ROUNDINGS = ("nearest", "gptq")


def check_weight_only(config: Any) -> None:
    """Validate the weight-only fields of ``WeightOnlyConfig`` (errors name the key)."""
    check_block_size(config.block_size)
    check_choice("rounding", config.rounding, ROUNDINGS)
    check_range("gptq_damp", config.gptq_damp, 0.0, 1.0)
    check_range("gptq_block_size", config.gptq_block_size, 1)
    check_range("awq_grid", config.awq_grid, 1, 1000)
    check_range("num_calib_batches", config.num_calib_batches, 1)
    check_choice("accuracy_level", config.accuracy_level, (0, 1, 2, 3, 4))


def _needs_calibration(config: Any, calib: Iterable | None) -> None:
    if calib is None:
        if config.rounding == "gptq":
            raise ConfigError("rounding='gptq' needs calib_loader (batches to build each layer's Hessian)")
        if config.awq:
            raise ConfigError("awq=True needs calib_loader (batches to measure input-channel magnitudes)")


def prepare_weight_only(
    model: nn.Module, config: Any, calib: Iterable | None
) -> tuple[nn.Module, dict[str, Any]]:
    """AWQ-scaled copy of ``model`` when ``config.awq`` (else ``model`` itself) and the summary so far."""
    _needs_calibration(config, calib)
    info: dict[str, Any] = {"block_size": config.block_size, "rounding": config.rounding}
    if config.awq:
        from netcompress.quantization.awq import awq_scale

        model, info["awq"] = awq_scale(
            model,
            calib,
            bits=config.bits,
            block_size=config.block_size,
            scheme=config.scheme,
            grid=config.awq_grid,
            num_batches=config.num_calib_batches,
        )
    return model, info


def finish_weight_only_(qmodel: nn.Module, config: Any, calib: Iterable | None) -> dict[str, Any]:
    """Block-wise scales, GPTQ rounding and the export accuracy level on ``qmodel`` (IN PLACE)."""
    info: dict[str, Any] = {}
    if config.block_size:
        info["blockwise_layers"] = use_blocks_(qmodel, block_size=config.block_size)
    if config.rounding == "gptq":
        from netcompress.quantization.gptq import gptq_quantize_

        info["gptq"] = gptq_quantize_(
            qmodel,
            calib,
            damp=config.gptq_damp,
            block_size=config.gptq_block_size,
            act_order=config.act_order,
            num_batches=config.num_calib_batches,
        )
    for m in qmodel.modules():
        if isinstance(m, QuantLayer) and m.weight_fq is not None:
            m.weight_fq.accuracy_level = config.accuracy_level
    return info
