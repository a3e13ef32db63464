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
from collections.abc import Iterable
from typing import Any

from torch import nn

from netcompress.core.config import check_choice
from netcompress.core.selection import set_submodule
from netcompress.quantization.fake_quant import FakeQuantize, LSQFakeQuantize
from netcompress.quantization.modules import QUANTIZERS, quantizers
from netcompress.quantization.ptq import prepare_quantized, quantization_summary, run_batches


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


def prepare_qat(
    model: nn.Module,
    *,
    bits: int = 8,
    act_bits: int | None = 8,
    method: str = "ste",
    from_ptq: nn.Module | None = None,
    freeze_scales: bool = False,
    fold_bn: bool = True,
    layers: dict[str, dict[str, Any]] | None = None,
    granularity: str = "per_channel",
    scheme: str = "symmetric",
    observer: str = "minmax",
    act_observer: str = "moving_average",
    calib_loader: Iterable | None = None,
    num_calib_batches: int = 4,
) -> nn.Module:
    """A new fake-quantized model in train mode for quantization-aware training (``model`` untouched).

    BatchNorm is folded first (``fold_bn=True``) so the weights trained are the ones deployed.
    ``layers`` sets bits per layer by name or ``re:`` pattern (E4: ``{"re:sinc.*": {"bits": 7},
    "re:blocks\\..*": {"bits": 4, "act_bits": 4}, "classifier": {"act_bits": 8}}``). With
    ``from_ptq`` (a model from :func:`netcompress.quantize`), ``model`` is ignored and a copy of
    ``from_ptq`` with its calibrated scales is returned. ``calib_loader`` initialises activation
    ranges (and LSQ step sizes) before training, so an optimizer built afterwards sees them.

    Example:
        >>> qat_model = prepare_qat(model, bits=4, act_bits=8, method="lsq", calib_loader=loader)
    """
    check_choice("method", method, QUANTIZERS.names())
    if from_ptq is not None:
        qmodel = copy.deepcopy(from_ptq)
        info: dict[str, Any] = {"from_ptq": True}
    else:
        defaults = {
            "bits": bits,
            "act_bits": act_bits,
            "granularity": granularity,
            "scheme": scheme,
            "observer": observer,
            "act_observer": act_observer,
            "act_scheme": "asymmetric",
        }
        qmodel, info = prepare_quantized(
            model, plan_defaults=defaults, layers=layers, mode="static", method=method, fold_bn=fold_bn
        )
    _apply_qat_state(qmodel, method=method, freeze_scales=freeze_scales)
    if calib_loader is not None and not freeze_scales:
        qmodel.eval()
        run_batches(qmodel, calib_loader, num_batches=num_calib_batches)
    qmodel.train()
    qmodel.qat_info = {**info, "method": method, "freeze_scales": freeze_scales}
    return qmodel


def qat_summary(model: nn.Module) -> dict[str, Any]:
    """:func:`quantization_summary` plus the learned step sizes' range (LSQ)."""
    summary = quantization_summary(model)
    lsq = [q for q in quantizers(model).values() if isinstance(q, LSQFakeQuantize)]
    if lsq:
        summary["lsq_quantizers"] = len(lsq)
    summary.update(getattr(model, "qat_info", {}))
    return summary
