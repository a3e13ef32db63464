"""Accuracy-aware PTQ: quantize, then hand the layers that hurt most back to float until a bound holds.

1. Quantize the whole model (static, dynamic or weight-only PTQ, the settings of
   :class:`~netcompress.quantization.ptq.PTQStaticConfig`) and measure it against the float model on
   the validation batches (:mod:`netcompress.quantization.fidelity`: accuracy drop, top-1 agreement, or
   embedding cosine / nearest-neighbour agreement).
2. If the bound fails, rank the quantized layers by how much each one hurts, measured on the
   validation batches by switching quantizers off and on in that model: ``leave_one_out`` (the error
   removed when the layer alone goes back to float) or ``one_at_a_time`` (the error of the float model
   with that layer alone quantized).
3. Re-quantize with the worst layer kept float (or first at ``fallback_bits``, and/or with its few
   outlier input channels split off to float, ``outlier_channels``, then float), then the two worst,
   and so on, measuring each candidate, until the bound holds or ``max_trials`` is spent.

It always returns the best model it found: the first (so fewest float layers) that meets the bound,
else the one closest to it; the summary says ``met``, the scores, and which layers the search kept
float or split (``fallback_layers``: name -> ``"float"``, ``"split"`` or bits). With
``speed_fallback`` the layers whose int8 form is measured slower than float in ONNX Runtime (:mod:`netcompress.export.int8_speed`) stay float from the start; with
``time_int8`` the chosen model's int8 file is timed against float and the summary states the speed-up.

Example:
    >>> qmodel, summary = quantize_accuracy_aware(model, calib_loader, val_loader, max_drop=0.01)
    >>> summary["met"], summary["fallback_layers"], summary["scores"]["drop"]
    >>> apply(bert, AccuracyAwareConfig(mode="dynamic", min_cosine=0.99, min_agreement=0.95), data)
"""

from __future__ import annotations

import dataclasses
import itertools
import tempfile
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import fx, nn

from netcompress.core.config import check_choice, check_range
from netcompress.core.errors import ConfigError
from netcompress.core.inputs import batch_inputs, call_model, output_tensor
from netcompress.core.methods import MethodData, Result, apply, register_method
from netcompress.core.model_check import check_loader, check_model
from netcompress.core.selection import set_submodule
from netcompress.evaluation.harness import eval_mode
from netcompress.quantization.fake_quant import FakeQuantize
from netcompress.quantization.fidelity import (
    METRICS,
    choose_metric,
    collect_outputs,
    resolve_bounds,
    score_outputs,
    shortfall,
)
from netcompress.quantization.input_smoothing import smooth_inputs
from netcompress.quantization.modules import quant_layers
from netcompress.quantization.outlier_split import apply_splits, prepare_split_layers
from netcompress.quantization.placement import ACT_PREFIX
from netcompress.quantization.ptq import MODES, PTQStaticConfig, run_ptq

SENSITIVITY_MODES = ("leave_one_out", "one_at_a_time")


@dataclasses.dataclass
class AccuracyAwareConfig(PTQStaticConfig):
    """PTQ whose most harmful layers fall back to float until a bound on the validation split holds.

        ``mode``: static, dynamic or weight_only (the PTQ fields above apply as in those methods).
        ``metric``: ``accuracy`` (bound ``max_drop``, float minus quantized accuracy on labelled
        validation batches), ``agreement`` (``min_agreement``, top-1 agreement with float; per real token
        for (batch, tokens, vocab) language-model logits), ``embedding``
        (``min_cosine`` mean cosine and/or ``min_agreement`` nearest-neighbour agreement of mean-pooled
        embeddings) or ``auto`` (accuracy if ``max_drop`` is set, embedding for token-state outputs or
        ``min_cosine``, else agreement). No bound set: 1 point, 99% agreement, cosine 0.99.
        ``fallback_bits``: a layer's first fallback step (e.g. 8 when ``bits=4``); float after that.
    ``outlier_channels``: k > 0 adds a cheaper step before float: the layer's k largest-range input
    channels (on the calibration batches) computed in float, the rest int8
    (:mod:`netcompress.quantization.outlier_split`, LLM.int8()-style).
        ``input_smoothing``: SmoothQuant strength alpha (0: off) for the Linears matching ``smooth_layers``,
        applied before quantizing (:mod:`netcompress.quantization.input_smoothing`; works untraced).
    """

    mode: str = "static"
    metric: str = "auto"
    max_drop: float | None = None
    min_agreement: float | None = None
    min_cosine: float | None = None
    sensitivity: str = "leave_one_out"
    num_val_batches: int = 8
    num_sensitivity_batches: int = 2
    max_trials: int = 16
    fallback_bits: int | None = None
    outlier_channels: int = 0
    speed_fallback: bool = False  # keep float the layers whose int8 form ONNX Runtime runs slower
    time_int8: bool = False  # time the chosen model's int8 file against float (summary["speed"])
    speed_threads: int = 1
    speed_rounds: int = 3
    input_smoothing: float = 0.0
    smooth_layers: list[str] = dataclasses.field(default_factory=lambda: ["re:.*"])

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("mode", self.mode, MODES.names())
        check_choice("metric", self.metric, ("auto", *METRICS))
        check_choice("sensitivity", self.sensitivity, SENSITIVITY_MODES)
        if self.max_drop is not None:
            check_range("max_drop", self.max_drop, 0.0, 1.0)
        for name in ("min_agreement", "min_cosine"):
            if getattr(self, name) is not None:
                check_range(name, getattr(self, name), -1.0, 1.0)
        check_range("num_val_batches", self.num_val_batches, 1)
        check_range("num_sensitivity_batches", self.num_sensitivity_batches, 1)
        check_range("max_trials", self.max_trials, 0)
        if self.fallback_bits is not None:
            check_range("fallback_bits", self.fallback_bits, 2, 16)
        check_range("outlier_channels", self.outlier_channels, 0)
        check_range("speed_threads", self.speed_threads, 1)
        check_range("speed_rounds", self.speed_rounds, 1)
        check_range("input_smoothing", self.input_smoothing, 0.0, 1.0)

    def ptq_settings(self) -> PTQStaticConfig:
        """The PTQ settings alone (every PTQStaticConfig field, as set here)."""
        return PTQStaticConfig(**{f: getattr(self, f) for f in PTQStaticConfig.field_names()})

    def bounds(self) -> dict[str, float | None]:
        return {"max_drop": self.max_drop, "min_agreement": self.min_agreement, "min_cosine": self.min_cosine}


def layer_quantizers(qmodel: nn.Module, name: str) -> list[str]:
    """Qualified names of the quantizers that make layer ``name`` int8: its weight/input/output
    quantizers and, in a traced model, the activation quantizers placed at its input and output."""
    owned = {f"{name}.{role}" for role in ("weight_fq", "input_fq", "output_fq")}
    if isinstance(qmodel, fx.GraphModule):
        node = next((n for n in qmodel.graph.nodes if n.op == "call_module" and n.target == name), None)
        if node is not None:
            owned |= {f"{ACT_PREFIX}.{node.name}_in", f"{ACT_PREFIX}.{node.name}_out"}
    return [n for n, q in qmodel.named_modules() if n in owned and isinstance(q, FakeQuantize)]


def toggle_sensitivity(
    qmodel: nn.Module, names: Iterable[str], measure: Callable[[nn.Module], float], *, mode: str
) -> dict[str, float]:
    """Per-layer harm from switching quantizers of ``qmodel`` off (restored afterwards), largest first.

    ``leave_one_out``: error of the quantized model minus its error with the layer in float (the
    error that layer causes with the others quantized); ``one_at_a_time``: error with only that layer
    quantized. ``measure(model) -> error`` (lower is better). A quantizer is switched off by standing
    an ``nn.Identity`` in its place (dynamic quantizers have no off switch of their own).
    """
    names = list(names)
    owned = {n: layer_quantizers(qmodel, n) for n in names}
    originals = {q: qmodel.get_submodule(q) for qs in owned.values() for q in qs}

    def switch(qnames: Iterable[str], on: bool) -> None:
        for q in qnames:
            set_submodule(qmodel, q, originals[q] if on else nn.Identity())

    harm: dict[str, float] = {}
    try:
        if mode == "leave_one_out":
            base = measure(qmodel)
            for n in names:
                switch(owned[n], False)
                harm[n] = base - measure(qmodel)
                switch(owned[n], True)
        else:
            switch(originals, False)
            for n in names:
                switch(owned[n], True)
                harm[n] = measure(qmodel)
                switch(owned[n], False)
    finally:
        switch(originals, True)
    return dict(sorted(harm.items(), key=lambda kv: -kv[1]))


def _moves(order: list[str], fallback_bits: int | None, split: bool = False) -> list[tuple[str, Any]]:
    """The fallback steps in order: every layer to ``fallback_bits`` (worst first), then to an outlier
    split (``split``), then to float."""
    levels: list[Any] = ([fallback_bits] if fallback_bits is not None else []) + (["split"] if split else [])
    levels.append("float")
    return [(name, level) for level in levels for name in order]


def _overrides(fallback: dict[str, Any], act_bits: int | None) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, level in fallback.items():
        if level == "split":
            continue  # the split layer's Linear is quantized as set (it is renamed `<name>.linear`)
        if level == "float":
            out[name] = {"enabled": False}
        else:
            out[name] = {"bits": level, **({"act_bits": level} if act_bits else {})}
    return out


def _speed_fallback(
    model: nn.Module, settings: PTQStaticConfig, config: AccuracyAwareConfig, calib: Any, example: Any
) -> dict[str, Any]:
    from netcompress.export.int8_speed import layer_speeds, slower_in_int8

    probe = run_ptq(model, calib, settings, mode=config.mode).model
    speeds = layer_speeds(probe, example, threads=config.speed_threads, rounds=config.speed_rounds)
    return {**speeds, "kept_float": slower_in_int8(speeds["layers"])}


def run_accuracy_aware(model: nn.Module, config: AccuracyAwareConfig, data: MethodData) -> Result:
    """The search described in the module docstring; ``model`` is never modified."""
    where = "val_loader" if data.val_loader is not None else "calibration"
    val = data.val_loader if data.val_loader is not None else data.calibration
    if val is None:
        raise ConfigError("quantize/accuracy_aware needs val_loader (or calib_loader) batches to measure on")
    calib = data.calibration if config.mode == "static" else None
    with eval_mode(model), torch.no_grad():
        first = output_tensor(call_model(model, batch_inputs(next(iter(val)))))
    metric = choose_metric(config.metric, config.bounds(), first)
    bounds = resolve_bounds(metric, config.bounds())
    reference = collect_outputs(model, val, metric=metric, num_batches=config.num_val_batches)
    settings = config.ptq_settings()
    original, smoothing = model, None
    if config.input_smoothing:
        model, smoothing = smooth_inputs(
            model,
            data.calibration if data.calibration is not None else val,
            alpha=config.input_smoothing,
            num_batches=config.num_calib_batches,
            layers=config.smooth_layers,
        )
    example = data.example_inputs if data.example_inputs is not None else batch_inputs(next(iter(val)))
    fallback: dict[str, Any] = {}
    speed_info = None
    if config.speed_fallback:
        speed_info = _speed_fallback(model, settings, config, calib, example)
        fallback = {n: "float" for n in speed_info["kept_float"]}

    splits: dict[str, Any] = {}  # quantized layer name -> its outlier split, prepared on first use

    def build(levels: dict[str, Any]) -> Result:
        layers = {**settings.layers, **_overrides(levels, settings.act_bits)}
        base = model
        split_names = [n for n, lv in levels.items() if lv == "split"]
        if split_names:
            if not splits:
                splits.update(
                    prepare_split_layers(
                        model,
                        data.calibration if data.calibration is not None else val,
                        names,
                        channels=config.outlier_channels,
                        num_batches=config.num_calib_batches,
                    )
                )
            base = apply_splits(model, {t: sp for n in split_names for t, sp in [splits[n]]})
        return run_ptq(base, calib, dataclasses.replace(settings, layers=layers), mode=config.mode)

    def measure(result: Result, levels: dict[str, Any], added: str | None) -> dict[str, Any]:
        scores = score_outputs(
            reference, collect_outputs(result.model, val, metric=metric, num_batches=config.num_val_batches)
        )
        gap = shortfall(scores, bounds, metric)
        return {"fallback": len(levels), "added": added, **scores, "shortfall": gap, "met": gap == 0.0}

    names: list[str] = []
    current = build(fallback)
    trials = [measure(current, fallback, None)]
    best, best_trial, best_levels = current, trials[0], dict(fallback)
    sensitivity: dict[str, float] = {}
    if not trials[0]["met"] and config.max_trials > 0:
        sens_ref = collect_outputs(original, val, metric=metric, num_batches=config.num_sensitivity_batches)

        def error(m: nn.Module) -> float:
            out = collect_outputs(m, val, metric=metric, num_batches=config.num_sensitivity_batches)
            return score_outputs(sens_ref, out)["error"]

        names[:] = [n for n in quant_layers(current.model) if n not in fallback]
        sensitivity = toggle_sensitivity(current.model, names, error, mode=config.sensitivity)
        levels = dict(fallback)
        for name, level in itertools.islice(
            _moves(list(sensitivity), config.fallback_bits, config.outlier_channels > 0), config.max_trials
        ):
            levels[name] = level
            candidate = build(levels)
            trial = measure(candidate, levels, f"{name}: {level}")
            trials.append(trial)
            if (trial["shortfall"], trial["fallback"]) < (best_trial["shortfall"], best_trial["fallback"]):
                best, best_trial, best_levels = candidate, trial, dict(levels)
            if trial["met"]:
                break
    summary = dict(best.summary)
    tuner_levels = {
        n: lv for n, lv in best_levels.items() if n not in (speed_info or {}).get("kept_float", [])
    }
    summary.update(
        metric=metric,
        bounds=bounds,
        met=best_trial["met"],
        scores={k: v for k, v in best_trial.items() if k not in ("fallback", "added", "met")},
        fallback_layers={n: lv for n, lv in tuner_levels.items()},
        search={
            "validation": where,
            "num_val_samples": int(reference.values.shape[0]),
            "baseline": {k: v for k, v in trials[0].items() if k not in ("fallback", "added")},
            "sensitivity_mode": config.sensitivity,
            "sensitivity": sensitivity,
            "trials": trials,
        },
    )
    if smoothing is not None:
        summary["input_smoothing"] = smoothing
    if speed_info is not None:
        summary["speed_fallback"] = speed_info
    if config.time_int8:
        from netcompress.export.int8_speed import time_int8_vs_float

        with tempfile.TemporaryDirectory() as tmp:
            folder = data.out_dir if data.out_dir is not None else tmp
            summary["speed"] = time_int8_vs_float(
                original,
                best.model,
                example,
                folder=folder,
                threads=config.speed_threads,
                rounds=config.speed_rounds,
            )
    return Result(model=best.model, summary=summary)


@register_method("quantize", "accuracy_aware", config=AccuracyAwareConfig)
def accuracy_aware(model: nn.Module, config: AccuracyAwareConfig, data: MethodData) -> Result:
    """PTQ with per-layer float fallback until an accuracy/agreement/cosine bound holds."""
    return run_accuracy_aware(model, config, data)


def quantize_accuracy_aware(
    model: nn.Module,
    calib_loader: Iterable | None = None,
    val_loader: Iterable | None = None,
    *,
    config: AccuracyAwareConfig | None = None,
    example_inputs: Any = None,
    **fields: Any,
) -> tuple[nn.Module, dict[str, Any]]:
    """Accuracy-aware PTQ of a copy of ``model``: ``(qmodel, summary)``; see the module docstring.

    Example:
        >>> qmodel, summary = nc.quantize_accuracy_aware(model, calib, val, max_drop=0.01)
        >>> summary["met"], list(summary["fallback_layers"])
    """
    check_model(model, where="quantize_accuracy_aware")
    check_loader(calib_loader, where="quantize_accuracy_aware", argument="calib_loader")
    check_loader(val_loader, where="quantize_accuracy_aware", argument="val_loader")
    if config is None:
        config = AccuracyAwareConfig.from_dict(fields, where="quantize_accuracy_aware")
    elif fields:
        raise ConfigError("quantize_accuracy_aware: pass either config or fields, not both")
    data = MethodData(calib_loader=calib_loader, val_loader=val_loader, example_inputs=example_inputs)
    result = apply(model, config, data)
    return result.model, result.summary
