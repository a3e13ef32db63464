"""Recipe steps of the quantization area: ``op: quantize`` with methods ptq_static, ptq_dynamic,
weight_only, qat and mixed_precision.

Example recipe step::

    - op: quantize
      method: ptq_static
      bits: 8
      granularity: per_channel
      layers: {"re:classifier.*": {"bits": 8, "act_bits": 8}}
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from netcompress.core.config import Config, check_choice, check_range
from netcompress.core.methods import MethodData, Result, register_method
from netcompress.quantization.mixed_precision import SENSITIVITY_METRICS, mixed_precision_quantize
from netcompress.quantization.modules import QUANTIZERS
from netcompress.quantization.observers import OBSERVERS
from netcompress.quantization.ptq import freeze_quantizers_, quantize_with_summary
from netcompress.quantization.qat import prepare_qat, qat_summary
from netcompress.quantization.qparams import GRANULARITIES, SCHEMES
from netcompress.quantization.storage import save_quantized
from netcompress.training.config import TrainConfig


def _check_common(cfg: Any) -> None:
    check_range("bits", cfg.bits, 2, 16)
    check_choice("granularity", cfg.granularity, GRANULARITIES)
    check_choice("scheme", cfg.scheme, SCHEMES)


@dataclasses.dataclass
class PTQStaticConfig(Config):
    """Static post-training quantization: weights and calibrated activations."""

    bits: int = 8
    act_bits: int = 8
    granularity: str = "per_channel"
    scheme: str = "symmetric"
    observer: str = "minmax"
    act_observer: str = "mse"  # best agreement on both benchmark models (benchmarks/RESULTS.md)
    fold_bn: bool = True
    equalize: bool = False
    bias_correction: bool = False
    num_calib_batches: int = 32
    layers: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_common(self)
        check_range("act_bits", self.act_bits, 2, 16)
        check_choice("observer", self.observer, OBSERVERS.names())
        check_choice("act_observer", self.act_observer, OBSERVERS.names())
        check_range("num_calib_batches", self.num_calib_batches, 1)


@dataclasses.dataclass
class PTQDynamicConfig(Config):
    """Dynamic quantization: Linear weights at ``bits``, activation ranges computed per batch."""

    bits: int = 8
    granularity: str = "per_channel"
    scheme: str = "symmetric"
    layers: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_common(self)


@dataclasses.dataclass
class WeightOnlyConfig(Config):
    """Weight-only quantization: every Conv/Linear weight at ``bits``, activations float."""

    bits: int = 8
    granularity: str = "per_channel"
    scheme: str = "symmetric"
    observer: str = "minmax"
    fold_bn: bool = True
    layers: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_common(self)
        check_choice("observer", self.observer, OBSERVERS.names())


@dataclasses.dataclass
class QATConfig(TrainConfig):
    """Quantization-aware training: the training fields of TrainConfig plus bit widths and method."""

    bits: int = 8
    act_bits: int = 8
    # "quantizer", not "method": a recipe step's "method" key already names the step (quantize/qat)
    quantizer: str = "ste"
    granularity: str = "per_channel"
    scheme: str = "symmetric"
    freeze_scales: bool = False
    fold_bn: bool = True
    num_calib_batches: int = 4
    layers: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_common(self)
        check_range("act_bits", self.act_bits, 2, 16)
        check_choice("quantizer", self.quantizer, QUANTIZERS.names())


@dataclasses.dataclass
class MixedPrecisionConfig(Config):
    """Per-layer weight bits chosen by sensitivity so the saved file fits ``budget_bytes``."""

    budget_bytes: int = 300_000
    bits_options: list[int] = dataclasses.field(default_factory=lambda: [2, 4, 8])
    act_bits: int | None = None
    num_batches: int = 2
    metric: str = "output_mse"
    granularity: str = "per_channel"
    scheme: str = "symmetric"
    save: bool = True  # write the bit-packed file (model.ncq) into the step folder

    def __post_init__(self) -> None:
        check_range("budget_bytes", self.budget_bytes, 1)
        for b in self.bits_options:
            check_range("bits_options[]", b, 2, 16)
        check_choice("metric", self.metric, SENSITIVITY_METRICS.names())
        check_choice("granularity", self.granularity, GRANULARITIES)
        check_choice("scheme", self.scheme, SCHEMES)


def _calib(ctx: MethodData) -> Any:
    return ctx.calib_loader if ctx.calib_loader is not None else ctx.train_loader


@register_method("quantize", "ptq_static", config=PTQStaticConfig)
def _ptq_static(model: nn.Module, config: PTQStaticConfig, ctx: MethodData) -> Result:
    """Static post-training quantization with calibration batches."""
    qmodel, summary = quantize_with_summary(model, _calib(ctx), mode="static", **config.to_dict())
    return Result(model=qmodel, summary=summary)


@register_method("quantize", "ptq_dynamic", config=PTQDynamicConfig)
def _ptq_dynamic(model: nn.Module, config: PTQDynamicConfig, ctx: MethodData) -> Result:
    """Dynamic quantization of Linear layers."""
    qmodel, summary = quantize_with_summary(model, None, mode="dynamic", act_bits=8, **config.to_dict())
    return Result(model=qmodel, summary=summary)


@register_method("quantize", "weight_only", config=WeightOnlyConfig)
def _weight_only(model: nn.Module, config: WeightOnlyConfig, ctx: MethodData) -> Result:
    """Weight-only quantization."""
    qmodel, summary = quantize_with_summary(
        model, None, mode="weight_only", act_bits=None, **config.to_dict()
    )
    return Result(model=qmodel, summary=summary)


@register_method("quantize", "qat", config=QATConfig)
def _qat(model: nn.Module, config: QATConfig, ctx: MethodData) -> Result:
    """Quantization-aware training with netcompress.training.fit, then frozen scales."""
    from netcompress.training import fit  # being written in parallel; imported when the step runs

    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = config.to_dict()
    qmodel = prepare_qat(
        model,
        bits=config.bits,
        act_bits=config.act_bits,
        method=config.quantizer,
        freeze_scales=config.freeze_scales,
        fold_bn=config.fold_bn,
        layers=config.layers or None,
        granularity=config.granularity,
        scheme=config.scheme,
        calib_loader=_calib(ctx),
        num_calib_batches=config.num_calib_batches,
    )
    train_config = TrainConfig(**{k: v for k, v in values.items() if k in train_fields})
    history = fit(qmodel, ctx.train_loader, val_loader=ctx.val_loader, config=train_config)
    freeze_quantizers_(qmodel).eval()
    rows = list(getattr(history, "rows", []))
    summary = qat_summary(qmodel)
    if rows:
        summary["final_val_acc"] = rows[-1].get("val_acc")
    return Result(model=qmodel, summary=summary, history=rows)


@register_method("quantize", "mixed_precision", config=MixedPrecisionConfig)
def _mixed_precision(model: nn.Module, config: MixedPrecisionConfig, ctx: MethodData) -> Result:
    """Per-layer bit widths under a byte budget; writes the bit-packed file."""
    values = config.to_dict()
    save = values.pop("save")
    qmodel, summary = mixed_precision_quantize(model, _calib(ctx), **values)
    if save:
        summary["file"] = save_quantized(qmodel, ctx.out_dir / "model.ncq")
    return Result(model=qmodel, summary=summary)
