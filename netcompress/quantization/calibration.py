"""Calibration: forward a few batches to observe activation ranges, then freeze every quantizer;
and empirical bias correction of the rounding shift. Both change the model IN PLACE.

Example:
    >>> calibrate_(qmodel, calib_loader, num_batches=8)["num_batches"]
    8
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from netcompress.core.errors import ConfigError
from netcompress.core.inputs import batch_inputs, call_model
from netcompress.core.model_check import call_or_explain
from netcompress.quantization.fake_quant import FakeQuantize
from netcompress.quantization.modules import QuantLayer, quantizers


def first_inputs(loader: Iterable | None) -> Any:
    """The model inputs of ``loader``'s first batch: a tensor, tuple or dict (None without batches)."""
    if loader is None:
        return None
    for batch in loader:
        return batch_inputs(batch)
    return None


def run_batches(model: nn.Module, loader: Iterable, *, num_batches: int) -> int:
    """Forward up to ``num_batches`` batches without gradients; returns how many ran."""
    count = 0
    with torch.no_grad():
        for batch in loader:
            if count >= num_batches:
                break
            if (
                count == 0
            ):  # a first batch the model cannot take: one error naming the inputs, not a traceback
                call_or_explain(
                    model, batch_inputs(batch), where="calibration: a calib_loader batch's inputs"
                )
            else:
                call_model(model, batch_inputs(batch))
            count += 1
    return count


def activation_quantizers(model: nn.Module) -> dict[str, FakeQuantize]:
    return {n: q for n, q in quantizers(model).items() if q.role == "activation" and not q.dynamic}


def calibrate_(model: nn.Module, loader: Iterable, *, num_batches: int = 32) -> dict[str, Any]:
    """Observe activation ranges on ``num_batches`` batches, then freeze every quantizer (IN PLACE).

    Activations run in float while observed; quantizers never reached (a dead branch) stay
    disabled and are listed as ``uncalibrated``.

    Example:
        >>> calibrate_(qmodel, calib_loader, num_batches=8)["num_batches"]
        8
    """
    acts = activation_quantizers(model)
    model.eval()
    for q in acts.values():
        q.observer.reset()
        q.observing, q.quantizing = True, False
    ran = run_batches(model, loader, num_batches=num_batches)
    if ran == 0 and acts:
        raise ConfigError("calibration loader yielded no batches")
    uncalibrated = []
    for name, q in acts.items():
        q.freeze()
        q.quantizing = q.calibrated
        if not q.calibrated:
            uncalibrated.append(name)
    for q in quantizers(model).values():
        if q.role == "weight":
            q.freeze()
    return {"num_batches": ran, "uncalibrated": uncalibrated}


def correct_bias_(model: nn.Module, loader: Iterable, *, num_batches: int = 8) -> dict[str, Any]:
    """Empirical bias correction (IN PLACE): add ``E[W x] - E[Q(W) x]`` per channel to each bias.

    Weight rounding shifts each output channel's mean; measured on calibration data with the
    quantized model's own inputs, that shift is removed through the bias.

    Example:
        >>> correct_bias_(qmodel, calib_loader, num_batches=4)["layers"]
    """
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantLayer) and m.weight_fq is not None}
    for m in layers.values():
        m.collect_bias_error, m.bias_error_sum, m.bias_error_count = True, None, 0
    model.eval()
    try:
        run_batches(model, loader, num_batches=num_batches)
    finally:
        for m in layers.values():
            m.collect_bias_error = False
    corrected = {}
    with torch.no_grad():
        for name, m in layers.items():
            if m.bias_error_sum is None:
                continue
            shift = m.bias_error_sum / m.bias_error_count
            if m.layer.bias is None:
                m.layer.bias = nn.Parameter(shift.clone())
            else:
                m.layer.bias.add_(shift)
            corrected[name] = float(shift.abs().max())
            m.bias_error_sum = None
    return {"layers": len(corrected), "max_abs_shift": max(corrected.values(), default=0.0)}
