"""Post-training quantization: static (calibrated activations), dynamic and weight-only.

``quantize`` copies the model (the input is never modified), folds BatchNorm, optionally
equalises cross-layer ranges, wraps Conv/Linear layers with fake quantizers, calibrates
activation ranges on a few batches, freezes every scale and optionally corrects the output bias
that weight rounding introduces.

Example:
    >>> qmodel, summary = quantize_with_summary(model, calib_loader, bits=8, granularity="per_channel")
    >>> summary["num_quantized_layers"], summary["weight_bytes"]
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from netcompress.core.errors import ConfigError, UnsupportedModelError
from netcompress.core.registry import Registry
from netcompress.quantization.bn_folding import fold_bn_with_summary
from netcompress.quantization.equalization import equalize_cross_layer_
from netcompress.quantization.fake_quant import FakeQuantize
from netcompress.quantization.modules import QuantFilterBank, QuantLayer, is_quantizable, quantizers
from netcompress.quantization.placement import (
    LayerPlan,
    absorb_relu6_,
    build_eager_quantized,
    build_graph_quantized,
    resolve_plan,
)
from netcompress.quantization.tracing import trace_for_quantization

# mode -> (layer types it quantizes or None for all, whether activations get static quantizers)
MODES: Registry[dict[str, Any]] = Registry("quantization mode")
MODES.register("static", {"types": None, "activations": "static"})
MODES.register("dynamic", {"types": (nn.Linear,), "activations": "dynamic"})
MODES.register("weight_only", {"types": None, "activations": None})


def batch_inputs(batch: Any) -> Any:
    """The model input of a loader batch: ``x`` from ``(x, y)``/``[x, y]``, or the batch itself."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def run_batches(model: nn.Module, loader: Iterable, *, num_batches: int) -> int:
    """Forward up to ``num_batches`` batches without gradients; returns how many ran."""
    count = 0
    with torch.no_grad():
        for batch in loader:
            if count >= num_batches:
                break
            model(batch_inputs(batch))
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


def quantization_summary(model: nn.Module) -> dict[str, Any]:
    """Per-layer bits and the estimated weight bytes of a quantized model (JSON-able).

    ``weight_bytes`` = sum over quantized weights of ``params * bits / 8`` plus 4 bytes per scale
    and 4 per zero point (as stored by ``save_quantized``), plus 4 bytes per remaining float parameter (biases, float layers).

    Example:
        >>> quantization_summary(qmodel)["weight_bytes"]
    """
    layers: dict[str, dict[str, Any]] = {}
    quantized_param_ids: set[int] = set()
    packed_bytes = 0.0
    for name, m in model.named_modules():
        if not isinstance(m, (QuantLayer, QuantFilterBank)):
            continue
        fq = m.weight_fq
        entry: dict[str, Any] = {"type": type(m.layer).__name__}
        if fq is not None:
            entry.update(weight_bits=fq.bits, granularity=fq.spec.granularity, scheme=fq.spec.scheme)
            if isinstance(m, QuantLayer):
                numel = m.layer.weight.numel()
                quantized_param_ids.add(id(m.layer.weight))
                packed_bytes += numel * fq.bits / 8 + fq.scale.numel() * 8
                entry["params"] = numel
        for role in ("input_fq", "output_fq"):
            q = getattr(m, role, None)
            if q is not None:
                entry[role.replace("_fq", "_bits")] = "dynamic" if q.dynamic else q.bits
        layers[name] = entry
    float_params = sum(p.numel() for p in model.parameters() if id(p) not in quantized_param_ids)
    float_layers = [
        n
        for n, m in model.named_modules()
        if n and is_quantizable(m) and not any(n.startswith(q + ".") for q in layers)
    ]
    acts = [q for n, q in quantizers(model).items() if q.role == "activation"]
    return {
        "num_quantized_layers": len(layers),
        "layers": layers,
        "float_layers": float_layers,
        "num_activation_quantizers": len(acts),
        "weight_bytes": int(round(packed_bytes + 4 * float_params)),
        "float_weight_bytes": 4 * sum(p.numel() for p in model.parameters()),
    }


def prepare_quantized(
    model: nn.Module,
    *,
    plan_defaults: dict[str, Any],
    layers: dict[str, dict[str, Any]] | None,
    mode: str,
    method: str = "ste",
    fold_bn: bool = True,
    equalize: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """Copy, fold, equalise and wrap ``model`` (no calibration). Shared by PTQ and QAT.

    Example:
        >>> qm, info = prepare_quantized(model, plan_defaults={"bits": 8, "act_bits": 8}, layers=None, mode="static")
    """
    spec = MODES.get(mode)
    info: dict[str, Any] = {"mode": mode}
    work: nn.Module = copy.deepcopy(model).eval()
    gm = None
    try:
        if fold_bn:
            gm, info["fold_bn"] = fold_bn_with_summary(work)
        else:
            gm = trace_for_quantization(work)
    except UnsupportedModelError as exc:
        info["graph"] = f"eager (fx failed: {exc})"
    if equalize:
        if gm is None:
            raise UnsupportedModelError(f"equalize=True needs a torch.fx-traceable model: {info['graph']}")
        info["equalize"] = equalize_cross_layer_(gm)
    target = gm if gm is not None else work
    defaults = dict(plan_defaults)
    if spec["activations"] is None:
        defaults["act_bits"] = None
    plan: dict[str, LayerPlan] = resolve_plan(target, defaults=defaults, layers=layers, types=spec["types"])
    if spec["activations"] == "static" and gm is not None:
        target, placement = build_graph_quantized(gm, plan, method=method)
        info.update(placement)
    else:
        target = build_eager_quantized(
            target, plan, method=method, dynamic_input=spec["activations"] == "dynamic"
        )
        info.setdefault("graph", "eager")
    return target, info


def quantize_with_summary(
    model: nn.Module,
    calib_loader: Iterable | None = None,
    *,
    bits: int = 8,
    act_bits: int | None = 8,
    granularity: str = "per_channel",
    scheme: str = "symmetric",
    mode: str = "static",
    observer: str = "minmax",
    act_observer: str = "mse",
    act_scheme: str = "asymmetric",
    fold_bn: bool = True,
    layers: dict[str, dict[str, Any]] | None = None,
    equalize: bool = False,
    bias_correction: bool = False,
    num_calib_batches: int = 32,
) -> tuple[nn.Module, dict[str, Any]]:
    """Post-training quantization of a copy of ``model``; returns ``(qmodel, summary)``.

    ``mode``: ``static`` (weights + activations, ranges calibrated on ``calib_loader``),
    ``dynamic`` (Linear weights int8, activation ranges computed per batch at run time) or
    ``weight_only``. ``layers`` overrides settings per layer by name or ``re:`` pattern, e.g.
    ``{"re:blocks\\..*": {"bits": 4}, "classifier": {"enabled": False}}``. The calibration loader may
    yield ``(x, y)`` or ``x``.

    Example:
        >>> qmodel, summary = quantize_with_summary(model, calib_loader, bits=8, mode="static")
    """
    if mode == "static" and act_bits and calib_loader is None:
        raise ConfigError("mode='static' needs calib_loader (batches to observe activation ranges)")
    defaults = {
        "bits": bits,
        "act_bits": act_bits,
        "granularity": granularity,
        "scheme": scheme,
        "observer": observer,
        "act_observer": act_observer,
        "act_scheme": act_scheme,
    }
    qmodel, info = prepare_quantized(
        model, plan_defaults=defaults, layers=layers, mode=mode, fold_bn=fold_bn, equalize=equalize
    )
    if mode == "static" and calib_loader is not None:
        info["calibration"] = calibrate_(qmodel, calib_loader, num_batches=num_calib_batches)
    for q in quantizers(qmodel).values():
        if q.role == "weight":
            q.freeze()
    if bias_correction:
        if calib_loader is None:
            raise ConfigError("bias_correction=True needs calib_loader")
        info["bias_correction"] = correct_bias_(qmodel, calib_loader, num_batches=min(8, num_calib_batches))
    qmodel.eval()
    info["relu6_absorbed"] = absorb_relu6_(qmodel)
    summary = {**info, **quantization_summary(qmodel)}
    return qmodel, summary


def quantize(model: nn.Module, calib_loader: Iterable | None = None, **kwargs: Any) -> nn.Module:
    """Post-training quantization; a new fake-quantized model (``model`` is untouched).

    Same keywords as :func:`quantize_with_summary`; :func:`quantization_summary` gives the
    summary of the result later.

    Example:
        >>> qmodel = nc.quantize(model, calib_loader, bits=8, granularity="per_channel", scheme="symmetric")
    """
    return quantize_with_summary(model, calib_loader, **kwargs)[0]


def freeze_quantizers_(model: nn.Module) -> nn.Module:
    """Stop every quantizer observing (IN PLACE), e.g. after QAT, before export."""
    for q in quantizers(model).values():
        if not q.dynamic:
            q.freeze()
    absorb_relu6_(model)
    return model
