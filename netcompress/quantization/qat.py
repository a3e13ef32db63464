"""Quantization-aware training: a fake-quantized copy of a model, ready for ``netcompress.training.fit``.

``method="ste"`` keeps observing ranges while training (weights: current min/max; activations:
moving average) and rounds with the straight-through estimator. ``method="lsq"`` learns every
step size (Esser et al.). ``from_ptq`` starts from a post-training-quantized model's scales,
and ``freeze_scales=True`` keeps them fixed (E5: QAT with frozen scales after PTQ).

Example:
    >>> qat_model = prepare_qat(model, bits=4, act_bits=4, method="lsq", calib_loader=train_loader)
    >>> nc.fit(qat_model, train_loader, config=TrainConfig(epochs=2, lr=0.01))
    >>> freeze_quantizers_(qat_model); export_onnx(qat_model, "qat.onnx", x, int8=True)
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable
from typing import Any

from torch import nn

from netcompress.core.config import Config, check_choice, check_range
from netcompress.core.errors import ConfigError
from netcompress.core.methods import MethodData, Result, register_method
from netcompress.core.selection import set_submodule
from netcompress.quantization.calibration import first_inputs, run_batches
from netcompress.quantization.fake_quant import FakeQuantize, LSQFakeQuantize
from netcompress.quantization.modules import QUANTIZERS, quantizers
from netcompress.quantization.observers import OBSERVERS
from netcompress.quantization.ptq import freeze_quantizers_, prepare_quantized, quantization_summary
from netcompress.quantization.qparams import GRANULARITIES, SCHEMES
from netcompress.training.config import TrainConfig


def _to_lsq(q: FakeQuantize) -> LSQFakeQuantize:
    """An LSQ quantizer starting from ``q``'s scale and zero point (when ``q`` has them)."""
    lsq = LSQFakeQuantize(q.spec, role=q.role)
    lsq.quantizing = q.quantizing
    if q.calibrated or isinstance(q, LSQFakeQuantize):
        lsq.set_qparams(q.scale.detach().abs(), q.zero_point)
    return lsq


def _apply_qat_state(model: nn.Module, *, method: str, freeze_scales: bool) -> None:
    for name, q in list(quantizers(model).items()):
        if q.dynamic:
            continue
        if method == "lsq" and not isinstance(q, LSQFakeQuantize):
            q = _to_lsq(q)
            set_submodule(model, name, q)
        if freeze_scales:
            q.freeze()
            if isinstance(q, LSQFakeQuantize):
                q.scale.requires_grad_(False)
        elif not isinstance(q, LSQFakeQuantize):
            q.unfreeze()


@dataclasses.dataclass
class QATPrepareConfig(Config):
    """What :func:`prepare_qat` reads: the quantization half of :class:`QATConfig`.

    ``quantizer`` is ``ste`` or ``lsq`` (``prepare_qat`` also takes it as ``method``, its old name;
    a recipe step's ``method`` key already names the step). ``layers`` sets bits per layer by
    name or ``re:`` pattern. ``act_bits=None`` leaves activations float.
    """

    bits: int = 8
    act_bits: int | None = 8
    quantizer: str = "ste"
    granularity: str = "per_channel"
    scheme: str = "symmetric"
    observer: str = "minmax"
    act_observer: str = "moving_average"
    freeze_scales: bool = False
    fold_bn: bool = True
    num_calib_batches: int = 4
    layers: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        check_range("bits", self.bits, 2, 16)
        if self.act_bits is not None:
            check_range("act_bits", self.act_bits, 2, 16)
        check_choice("quantizer", self.quantizer, QUANTIZERS.names())
        check_choice("granularity", self.granularity, GRANULARITIES)
        check_choice("scheme", self.scheme, SCHEMES)
        check_choice("observer", self.observer, OBSERVERS.names())
        check_choice("act_observer", self.act_observer, OBSERVERS.names())
        check_range("num_calib_batches", self.num_calib_batches, 1)


@dataclasses.dataclass
class QATConfig(QATPrepareConfig, TrainConfig):
    """Quantization-aware training: the training fields of TrainConfig, then those of QATPrepareConfig."""

    def __post_init__(self) -> None:
        TrainConfig.__post_init__(self)
        QATPrepareConfig.__post_init__(self)


def build_qat_model(
    model: nn.Module,
    config: QATPrepareConfig,
    *,
    calib_loader: Iterable | None = None,
    from_ptq: nn.Module | None = None,
    example_inputs: Any = None,
) -> nn.Module:
    """A new fake-quantized model in train mode for QAT, as ``config`` says (``model`` untouched).

    ``example_inputs`` (default: the first calibration batch's inputs, as PTQ) let a model torch.fx cannot
    trace symbolically (HF ResNet, MobileNetV2) trace with values, so BN folds and activations are placed
    on the graph, as PTQ does; without them such a model fell back to eager wrapping, BN unfolded.
    """
    from netcompress.clustering.grid import per_tensor_for_clustered, snap_codebooks_to_grid

    method = config.quantizer
    # clustered layers: one weight scale per tensor, so k shared values stay k quantized values
    layers = per_tensor_for_clustered(model, config.layers)
    if from_ptq is None and quantizers(model):
        from_ptq = model  # a model from a PTQ step (E5: QAT after PTQ) trains with its calibrated scales
    if from_ptq is not None:
        qmodel = copy.deepcopy(from_ptq)
        info: dict[str, Any] = {"from_ptq": True}
    else:
        defaults = {
            "bits": config.bits,
            "act_bits": config.act_bits,
            "granularity": config.granularity,
            "scheme": config.scheme,
            "observer": config.observer,
            "act_observer": config.act_observer,
            "act_scheme": "asymmetric",
        }
        qmodel, info = prepare_quantized(
            model,
            plan_defaults=defaults,
            layers=layers,
            mode="static",
            method=method,
            fold_bn=config.fold_bn,
            example_inputs=example_inputs if example_inputs is not None else first_inputs(calib_loader),
        )
    _apply_qat_state(qmodel, method=method, freeze_scales=config.freeze_scales)
    if calib_loader is not None and not config.freeze_scales:
        qmodel.eval()
        run_batches(qmodel, calib_loader, num_batches=config.num_calib_batches)
    info["grid_clustered"] = snap_codebooks_to_grid(qmodel)
    qmodel.train()
    qmodel.qat_info = {**info, "method": method, "freeze_scales": config.freeze_scales}
    return qmodel


def prepare_qat(
    model: nn.Module,
    *,
    from_ptq: nn.Module | None = None,
    calib_loader: Iterable | None = None,
    config: QATPrepareConfig | None = None,
    example_inputs: Any = None,
    **fields: Any,
) -> nn.Module:
    """A new fake-quantized model in train mode for quantization-aware training (``model`` untouched).

    ``fields`` are those of :class:`QATPrepareConfig` (``method`` is accepted for ``quantizer``).
    BatchNorm is folded first (``fold_bn=True``) so the weights trained are the ones deployed.
    ``layers`` sets bits per layer by name or ``re:`` pattern (E4: ``{"re:sinc.*": {"bits": 7},
    "re:blocks\\..*": {"bits": 4, "act_bits": 4}, "classifier": {"act_bits": 8}}``). With
    ``from_ptq`` (a model from :func:`netcompress.quantize`), ``model`` is ignored and a copy of
    ``from_ptq`` with its calibrated scales is returned. ``calib_loader`` initialises activation
    ranges (and LSQ step sizes) before training, so an optimizer built afterwards sees them.
    ``example_inputs`` (default: ``calib_loader``'s first batch) let a model with shape checks trace.

    Example:
        >>> qat_model = prepare_qat(model, bits=4, act_bits=8, method="lsq", calib_loader=loader)
    """
    if "method" in fields:
        if "quantizer" in fields:
            raise ConfigError("prepare_qat: pass quantizer or method (its old name), not both")
        fields["quantizer"] = fields.pop("method")
    if fields.get("layers", {}) is None:  # layers=None was the old keyword default
        del fields["layers"]
    if config is None:
        config = QATPrepareConfig.from_dict(fields, where="prepare_qat")
    elif fields:
        raise ConfigError("prepare_qat: pass either config or fields, not both")
    return build_qat_model(
        model, config, calib_loader=calib_loader, from_ptq=from_ptq, example_inputs=example_inputs
    )


def qat_summary(model: nn.Module) -> dict[str, Any]:
    """:func:`quantization_summary` plus the learned step sizes' range (LSQ)."""
    summary = quantization_summary(model)
    lsq = [q for q in quantizers(model).values() if isinstance(q, LSQFakeQuantize)]
    if lsq:
        summary["lsq_quantizers"] = len(lsq)
    summary.update(getattr(model, "qat_info", {}))
    return summary


@register_method("quantize", "qat", config=QATConfig)
def qat(model: nn.Module, config: QATConfig, data: MethodData) -> Result:
    """Quantization-aware training with netcompress.training.fit, then frozen scales."""
    from netcompress.clustering.grid import GridClusterPreserving
    from netcompress.training import fit  # the training loop, loaded when the method runs

    qmodel = build_qat_model(model, config, calib_loader=data.calibration, example_inputs=data.example_inputs)
    train_config = config.train_config()
    train_config = train_config.replace(
        # a device left at the default follows the run's (cuda:LOCAL_RANK under torchrun); a quiet run stays quiet
        device=data.device if train_config.device == "cpu" else train_config.device,
        progress=train_config.progress and data.progress,
    )
    hooks = [GridClusterPreserving()] if qmodel.qat_info["grid_clustered"] else []
    history = fit(qmodel, data.train_loader, val_loader=data.val_loader, config=train_config, hooks=hooks)
    freeze_quantizers_(qmodel).eval()
    rows = list(getattr(history, "rows", []))
    summary = qat_summary(qmodel)
    if rows:
        summary["final_val_acc"] = rows[-1].get("val_acc")
    return Result(model=qmodel, summary=summary, history=rows)
