"""Mixed precision: per-layer sensitivity to low bit widths, and bits chosen to meet a byte budget.

Sensitivity of layer L at k bits = the network's output error (or accuracy drop) when L alone
has k-bit weights. The allocation starts every layer at the widest option and repeatedly
narrows the layer whose step costs the least added sensitivity per byte saved, until the
weights fit ``budget_bytes`` (a greedy multiple-choice knapsack).

Example:
    >>> qmodel, summary = mixed_precision_quantize(model, loader, budget_bytes=300_000, bits_options=[4, 8])
    >>> save_quantized(qmodel, "student.ncq")["size_bytes"] <= 300_000
    True
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from netcompress.core.config import Config, check_choice, check_range
from netcompress.core.errors import ConfigError, UnsupportedModelError
from netcompress.core.inputs import batch_size_of, call_model, output_tensor, split_batch
from netcompress.core.methods import MethodData, Result, apply, register_method
from netcompress.core.model_check import check_loader, check_model, check_model_call
from netcompress.core.registry import Registry
from netcompress.quantization.bn_folding import fold_bn
from netcompress.quantization.observers import build_observer
from netcompress.quantization.ptq import PTQStaticConfig, WeightOnlyConfig
from netcompress.quantization.qparams import GRANULARITIES, SCHEMES, QuantSpec, compute_qparams, fake_quantize
from netcompress.quantization.storage import save_quantized, serialize_quantized

# metric name -> fn(reference_outputs, outputs, labels) -> error (higher = worse)
SENSITIVITY_METRICS: Registry[Any] = Registry("sensitivity metric")

# bytes per output channel for a weight's scale (float32) and zero point (int32) in the saved file
QPARAM_BYTES_PER_CHANNEL = 8
# per state-dict entry in the saved file's JSON header (a conservative estimate)
HEADER_BYTES_PER_ENTRY = 160


@SENSITIVITY_METRICS.register("output_mse")
def _output_mse(ref: torch.Tensor, out: torch.Tensor, labels: torch.Tensor | None) -> float:
    """Output MSE relative to the reference outputs' mean square (scale-free)."""
    return float((out - ref).pow(2).mean() / ref.pow(2).mean().clamp(min=1e-12))


@SENSITIVITY_METRICS.register("accuracy_drop")
def _accuracy_drop(ref: torch.Tensor, out: torch.Tensor, labels: torch.Tensor | None) -> float:
    """Float accuracy minus quantized accuracy (labels from the loader, else the float top-1)."""
    target = labels if labels is not None else ref.argmax(1)
    return float((ref.argmax(1) == target).float().mean() - (out.argmax(1) == target).float().mean())


@dataclasses.dataclass
class MixedPrecisionConfig(Config):
    """Per-layer weight bits chosen by sensitivity so the saved file fits ``budget_bytes``.

    ``act_bits=None`` quantizes weights only; otherwise activations are statically calibrated.
    """

    budget_bytes: int = 300_000
    bits_options: list[int] = dataclasses.field(default_factory=lambda: [2, 4, 8])
    act_bits: int | None = None
    num_batches: int = 2  # batches of the sensitivity measurement
    metric: str = "output_mse"
    granularity: str = "per_channel"
    scheme: str = "symmetric"
    num_calib_batches: int = 8  # activation calibration batches (act_bits set)
    save: bool = True  # write the bit-packed file (model.ncq) into the out_dir (a recipe step's folder)

    def __post_init__(self) -> None:
        check_range("budget_bytes", self.budget_bytes, 1)
        for b in self.bits_options:
            check_range("bits_options[]", b, 2, 16)
        if self.act_bits is not None:
            check_range("act_bits", self.act_bits, 2, 16)
        check_range("num_batches", self.num_batches, 1)
        check_choice("metric", self.metric, SENSITIVITY_METRICS.names())
        check_choice("granularity", self.granularity, GRANULARITIES)
        check_choice("scheme", self.scheme, SCHEMES)
        check_range("num_calib_batches", self.num_calib_batches, 1)


# layer_sensitivity's keyword defaults are the config's
_DEFAULTS = MixedPrecisionConfig()


def _folded_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy with BatchNorm folded, as PTQ will see it (plain copy if untraceable)."""
    try:
        return fold_bn(model)
    except UnsupportedModelError:
        return copy.deepcopy(model).eval()


def _weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {
        n: m
        for n, m in model.named_modules()
        if n
        and isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))
        and isinstance(m.weight, torch.Tensor)
    }


def layer_sensitivity(
    model: nn.Module,
    loader: Iterable,
    *,
    bits_options: Sequence[int] = tuple(_DEFAULTS.bits_options),
    num_batches: int = _DEFAULTS.num_batches,
    metric: str = _DEFAULTS.metric,
    granularity: str = _DEFAULTS.granularity,
    scheme: str = _DEFAULTS.scheme,
    observer: str = WeightOnlyConfig.observer,
    fold_bn_first: bool = True,
) -> dict[str, dict[int, float]]:
    """``{layer: {bits: error}}`` with only that layer's weights quantized (``model`` untouched).

    BatchNorm is folded first (when traceable) so the weights measured are those deployed.

    Example:
        >>> sens = layer_sensitivity(model, loader, bits_options=(2, 4, 8), num_batches=2)
        >>> sens["features.0"][2] > sens["features.0"][8]
        True
    """
    score = SENSITIVITY_METRICS.get(metric)
    work = _folded_copy(model) if fold_bn_first else copy.deepcopy(model).eval()
    batches = []
    for batch in loader:
        if len(batches) >= num_batches:
            break
        batches.append(split_batch(batch))
    if not batches:
        raise ConfigError("sensitivity loader yielded no batches")
    check_model_call(
        work, batches[0][0], where="mixed precision", argument="the loader's first batch: inputs"
    )
    labels = (
        None
        if any(lb is None for _, lb in batches)
        else torch.cat([torch.as_tensor(lb) for _, lb in batches])
    )

    def outputs() -> torch.Tensor:
        with torch.no_grad():
            return torch.cat(
                [output_tensor(call_model(work, x)).reshape(batch_size_of(x), -1) for x, _ in batches]
            )

    reference = outputs()
    result: dict[str, dict[int, float]] = {}
    for name, layer in _weight_layers(work).items():
        original = layer.weight.detach().clone()
        result[name] = {}
        for bits in bits_options:
            spec = QuantSpec(bits=bits, granularity=granularity, scheme=scheme, observer=observer)
            obs = build_observer(spec)
            obs.observe(original)
            scale, zp = compute_qparams(*obs.range(), spec)
            with torch.no_grad():
                layer.weight.copy_(fake_quantize(original, scale, zp, spec))
            result[name][int(bits)] = score(reference, outputs(), labels)
        with torch.no_grad():
            layer.weight.copy_(original)
    return result


def weight_bytes(numel: int, channels: int, bits: int) -> float:
    """Bytes of one packed weight tensor plus its per-channel scale and zero point."""
    return numel * bits / 8 + channels * QPARAM_BYTES_PER_CHANNEL


def allocate_bits(
    sensitivity: dict[str, dict[int, float]],
    *,
    sizes: dict[str, tuple[int, int]],
    budget_bytes: float,
) -> dict[str, int]:
    """Bits per layer with total weight bytes <= ``budget_bytes`` and small total sensitivity.

    ``sizes[name] = (numel, channels)``. Greedy: from the widest option, repeatedly take the
    narrowing step with the least sensitivity increase per byte saved.

    Example:
        >>> allocate_bits({"a": {4: 0.1, 8: 0.0}}, sizes={"a": (1000, 10)}, budget_bytes=700)
        {'a': 4}
    """
    options = {n: sorted(s) for n, s in sensitivity.items()}
    bits = {n: opts[-1] for n, opts in options.items()}

    def total() -> float:
        return sum(weight_bytes(*sizes[n], b) for n, b in bits.items())

    while total() > budget_bytes:
        best, best_ratio = None, float("inf")
        for n, b in bits.items():
            i = options[n].index(b)
            if i == 0:
                continue
            lower = options[n][i - 1]
            saved = weight_bytes(*sizes[n], b) - weight_bytes(*sizes[n], lower)
            ratio = (sensitivity[n][lower] - sensitivity[n][b]) / max(saved, 1e-9)
            if ratio < best_ratio:
                best, best_ratio = (n, lower), ratio
        if best is None:
            raise ConfigError(
                f"budget_bytes={budget_bytes:.0f} is unreachable: the narrowest bit widths still need {total():.0f} bytes"
            )
        bits[best[0]] = best[1]
    return bits


@register_method("quantize", "mixed_precision", config=MixedPrecisionConfig)
def mixed_precision(model: nn.Module, config: MixedPrecisionConfig, data: MethodData) -> Result:
    """Per-layer bit widths under a byte budget; writes the bit-packed file into out_dir.

    The budget covers the whole file written by ``save_quantized``: packed weights, their scales,
    every float tensor left (biases, layers not quantized, activation scales) and the header.
    A copy of ``model`` is quantized (``model`` is untouched).
    """
    c = config
    loader = data.calibration
    sens = layer_sensitivity(
        model,
        loader,
        bits_options=c.bits_options,
        num_batches=c.num_batches,
        metric=c.metric,
        granularity=c.granularity,
        scheme=c.scheme,
    )
    work = _folded_copy(model)
    layers = _weight_layers(work)
    sizes = {n: (m.weight.numel(), m.weight.shape[0]) for n, m in layers.items() if n in sens}
    quantized_ids = {id(layers[n].weight) for n in sizes}
    state = work.state_dict()
    fixed = sum(4 * p.numel() for p in work.parameters() if id(p) not in quantized_ids)
    fixed += sum(4 * b.numel() for b in work.buffers())
    # header entries: every state tensor plus two qparams per quantized weight and two per activation quantizer
    num_entries = len(state) + 2 * len(sizes) + (4 * len(sizes) if c.act_bits else 0)
    fixed += HEADER_BYTES_PER_ENTRY * num_entries + 64 + (16 * len(sizes) if c.act_bits else 0)
    # the estimate of the fixed bytes may be short; measure the real file and tighten until it fits
    for _attempt in range(4):
        bits = allocate_bits(sens, sizes=sizes, budget_bytes=c.budget_bytes - fixed)
        weights = {
            "bits": max(c.bits_options),
            "granularity": c.granularity,
            "scheme": c.scheme,
            "layers": {n: {"bits": b} for n, b in bits.items()},
        }
        if c.act_bits:
            ptq = PTQStaticConfig(**weights, act_bits=c.act_bits, num_calib_batches=c.num_calib_batches)
        else:
            ptq = WeightOnlyConfig(**weights, block_size=0)  # per-channel: the byte model above
        result = apply(model, ptq, MethodData(calib_loader=loader))
        qmodel, summary = result.model, result.summary
        file_bytes = serialize_quantized(qmodel)[1]["size_bytes"]
        if file_bytes <= c.budget_bytes:
            break
        fixed += file_bytes - c.budget_bytes + 64
    else:
        raise ConfigError(f"budget_bytes={c.budget_bytes} not met: the file still needs {file_bytes} bytes")
    summary.update(
        budget_bytes=c.budget_bytes,
        bits=bits,
        sensitivity={n: {str(k): v for k, v in s.items()} for n, s in sens.items()},
        file_bytes=file_bytes,
        total_sensitivity=float(sum(sens[n][b] for n, b in bits.items())),
    )
    if c.save and data.out_dir is not None:
        summary["file"] = save_quantized(qmodel, data.out_dir / "model.ncq")
    return Result(model=qmodel, summary=summary)


def mixed_precision_quantize(
    model: nn.Module,
    loader: Iterable,
    *,
    config: MixedPrecisionConfig | None = None,
    **fields: Any,
) -> tuple[nn.Module, dict[str, Any]]:
    """Quantize a copy of ``model`` with per-layer bits so its saved file fits ``budget_bytes``.

    ``fields`` are those of :class:`MixedPrecisionConfig`; returns ``(qmodel, summary)`` and
    writes no file (``save_quantized`` does). ``loader`` gives the sensitivity and calibration
    batches.

    Example:
        >>> qmodel, summary = mixed_precision_quantize(model, loader, budget_bytes=300_000)
        >>> summary["bits"]
        {'features.0': 8, 'features.3': 4, ...}
    """
    check_model(model, where="mixed_precision_quantize")
    check_loader(loader, where="mixed_precision_quantize", argument="loader")
    if config is None:
        config = MixedPrecisionConfig.from_dict(fields, where="mixed_precision_quantize")
    elif fields:
        raise ConfigError("mixed_precision_quantize: pass either config or fields, not both")
    result = apply(model, config, MethodData(calib_loader=loader))
    return result.model, result.summary
