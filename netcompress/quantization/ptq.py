"""Post-training quantization: static (calibrated activations), dynamic and weight-only.

Three methods (``quantize/ptq_static``, ``ptq_dynamic``, ``weight_only``), configs below. Each copies the
model, folds BatchNorm, optionally equalises ranges, wraps Conv/Linear layers with fake quantizers,
calibrates activation ranges (static), freezes every scale and optionally corrects the output bias.

Example:
    >>> qmodel = quantize(model, calib_loader, bits=8, granularity="per_channel")
    >>> result = apply(model, PTQStaticConfig(bits=8), MethodData(calib_loader=calib_loader))
    >>> result.summary["num_quantized_layers"], result.summary["weight_bytes"]
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable
from typing import Any

from torch import fx, nn

from netcompress.clustering.grid import per_tensor_for_clustered
from netcompress.core.config import Config, check_choice, check_range
from netcompress.core.errors import ConfigError, UnsupportedModelError
from netcompress.core.methods import MethodData, Result, apply, register_method
from netcompress.core.model_check import check_loader, check_model
from netcompress.core.registry import Registry
from netcompress.quantization.adaround import ROUNDINGS, adaround_
from netcompress.quantization.bn_folding import fold_bn_and_report
from netcompress.quantization.calibration import calibrate_, correct_bias_, first_inputs
from netcompress.quantization.embeddings import EMBEDDING_MODES, check_embedding_options, quantize_embeddings_
from netcompress.quantization.equalization import equalize_cross_layer_
from netcompress.quantization.foreign_layers import refuse_quantized_layers
from netcompress.quantization.kernel_calls import own_forward_problem
from netcompress.quantization.modules import is_quantizable, quantizers
from netcompress.quantization.observers import OBSERVERS
from netcompress.quantization.placement import (
    LayerPlan,
    absorb_relu6_,
    build_eager_quantized,
    build_graph_quantized,
    resolve_plan,
)
from netcompress.quantization.qparams import GRANULARITIES, SCHEMES
from netcompress.quantization.range_search import ACT_RANGES, search_activation_ranges_
from netcompress.quantization.smoothing import smooth_activations
from netcompress.quantization.summary import float_modules, quantization_summary
from netcompress.quantization.tracing import trace_for_quantization
from netcompress.quantization.weight_nbits import check_weight_only, finish_weight_only_, prepare_weight_only

# mode -> (layer types it quantizes or None for all, whether activations get static quantizers)
MODES: Registry[dict[str, Any]] = Registry("quantization mode")
MODES.register("static", {"types": None, "activations": "static"})
MODES.register("dynamic", {"types": (nn.Linear,), "activations": "dynamic"})
MODES.register("weight_only", {"types": None, "activations": None})


def prepare_quantized(
    model: nn.Module,
    *,
    plan_defaults: dict[str, Any],
    layers: dict[str, dict[str, Any]] | None,
    mode: str,
    method: str = "ste",
    fold_bn: bool = True,
    equalize: bool = False,
    example_inputs: Any = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Copy, fold, equalise and wrap ``model`` (no calibration). Shared by PTQ and QAT.

    Example:
        >>> qm, info = prepare_quantized(model, plan_defaults={"bits": 8, "act_bits": 8}, layers=None, mode="static")
    """
    refuse_quantized_layers(model, "quantize")
    spec = MODES.get(mode)
    info: dict[str, Any] = {"mode": mode}
    work: nn.Module = copy.deepcopy(model).eval()
    gm = None
    try:
        if fold_bn:
            work, info["fold_bn"] = fold_bn_and_report(work, example_inputs=example_inputs)
        # folded: a GraphModule already; nothing to fold (no BatchNorm): the copy, traced here
        gm = work if isinstance(work, fx.GraphModule) else trace_for_quantization(work, example_inputs=example_inputs)
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
    # layers whose own forward cannot be quantized stay float, and the summary says why
    reasons = {
        n: r
        for n, m in target.named_modules()
        if n
        and is_quantizable(m)
        and (spec["types"] is None or isinstance(m, spec["types"]))
        and (r := own_forward_problem(m, observed_later=spec["activations"] == "static")) is not None
    }
    info["float_reasons"] = reasons
    if spec["types"] is not None and not any(
        is_quantizable(m) and isinstance(m, spec["types"]) for m in target.modules()
    ):  # e.g. dynamic int8 (Linear only) on a convolutional model: nothing would be quantized
        weighted = sorted({type(m).__name__ for m in target.modules() if is_quantizable(m)})
        raise ConfigError(
            f"mode={mode!r} quantizes {', '.join(t.__name__ for t in spec['types'])} layers; "
            f"{type(model).__name__} has none (its quantizable layers: {', '.join(weighted) or 'none'}); "
            "use mode='static' or 'weight_only' for convolutions"
        )
    layers = {**(layers or {}), **{n: {"enabled": False} for n in reasons}}
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


@dataclasses.dataclass
class PTQWeightConfig(Config):
    """The weight settings every PTQ method shares (a base, not a method of its own).

    ``layers`` overrides settings per layer by name or ``re:`` pattern, e.g.
    ``{"re:blocks\\..*": {"bits": 4}, "classifier": {"enabled": False}}``. ``embeddings``: ``int8`` or
    ``int4`` quantizes every ``nn.Embedding`` table too (per row, or ``embedding_block_size`` blocks;
    exported as integer ``Gather`` / ``GatherBlockQuantized``: quantization/embeddings.py).
    """

    bits: int = 8
    granularity: str = "per_channel"
    scheme: str = "symmetric"
    observer: str = "minmax"
    fold_bn: bool = True
    equalize: bool = False  # cross-layer range equalisation before quantizing (needs torch.fx)
    layers: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    embeddings: str = "float"  # "int8" / "int4": nn.Embedding tables too (embeddings.py)
    embedding_block_size: int | None = None  # None: per row at int8, 32 at int4

    def __post_init__(self) -> None:
        check_range("bits", self.bits, 2, 16)
        check_embedding_options(self.embeddings, self.embedding_block_size)
        check_choice("granularity", self.granularity, GRANULARITIES)
        check_choice("scheme", self.scheme, SCHEMES)
        check_choice("observer", self.observer, OBSERVERS.names())


@dataclasses.dataclass
class PTQStaticConfig(PTQWeightConfig):
    """Static post-training quantization: weights and calibrated activations.

    The full set of PTQ settings: the dynamic and weight-only methods run with these defaults for
    the fields they do not expose. ``act_bits=None`` leaves activations float.
    """

    act_bits: int | None = 8
    act_observer: str = "mse"  # best agreement on both benchmark models (benchmarks/RESULTS.md)
    act_scheme: str = "asymmetric"
    bias_correction: bool = False
    num_calib_batches: int = 32
    smooth: float = 0.0  # SmoothQuant migration strength alpha (0: off; smoothing.py)
    rounding: str = "nearest"  # "adaround": weights' rounding learned layer by layer (adaround.py)
    adaround_iterations: int = 300
    adaround_lr: float = 0.03
    act_range: str = "observer"  # "search": each range picked by its consumers' error (range_search.py)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.act_bits is not None:
            check_range("act_bits", self.act_bits, 2, 16)
        check_choice("act_observer", self.act_observer, OBSERVERS.names())
        check_choice("act_scheme", self.act_scheme, SCHEMES)
        check_range("num_calib_batches", self.num_calib_batches, 1)
        check_range("smooth", self.smooth, 0.0, 1.0)
        check_choice("rounding", self.rounding, ROUNDINGS)
        check_range("adaround_iterations", self.adaround_iterations, 1)
        check_range("adaround_lr", self.adaround_lr, 1e-6, 10.0)
        check_choice("act_range", self.act_range, ACT_RANGES)


@dataclasses.dataclass
class PTQDynamicConfig(PTQWeightConfig):
    """Dynamic quantization: Linear weights at ``bits``, int8 activation ranges computed per batch."""


@dataclasses.dataclass
class WeightOnlyConfig(PTQWeightConfig):
    """Weight-only quantization: every Conv/Linear weight at ``bits``, activations float.

    Linear layers get ``block_size`` block-wise scales along the input dimension (0: ``granularity``
    decides, as for Conv layers) and export as ONNX Runtime's ``MatMulNBits``
    (``export_onnx(..., int8=True)``; ``accuracy_level`` is that node's attribute, 4 = int8 activations
    inside the kernel). ``rounding="gptq"`` compensates rounding errors layer by layer on calibration
    data (``gptq_damp``, ``gptq_block_size``, ``act_order``); ``awq=True`` first searches per-input-channel
    scales on calibration data (``awq_grid`` exponents), folded into the preceding op where the graph allows.
    See weight_nbits.py, gptq.py, awq.py.
    """

    bits: int = 4
    block_size: int = 64  # fp32 scales at 32 cost 1 bit/weight: MiniLM Linears 0.65x int8 (0.60x at 64)
    rounding: str = "nearest"
    gptq_damp: float = 0.01
    gptq_block_size: int = 128
    act_order: bool = False
    awq: bool = False
    awq_grid: int = 20
    num_calib_batches: int = 8
    accuracy_level: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_weight_only(self)


# quantize(mode=...) -> the config of that mode's method
MODE_CONFIGS: dict[str, type[PTQWeightConfig]] = {
    "static": PTQStaticConfig,
    "dynamic": PTQDynamicConfig,
    "weight_only": WeightOnlyConfig,
}


def run_ptq(
    model: nn.Module, calib_loader: Iterable | None, settings: PTQStaticConfig, *, mode: str
) -> Result:
    """Post-training quantization of a copy of ``model`` in ``mode`` (see :data:`MODES`).

    ``settings`` is the full set of PTQ settings (the dynamic and weight-only methods fill the
    fields they lack from PTQStaticConfig's defaults). The calibration loader may yield
    ``(x, y)`` or ``x``.
    """
    s = settings
    refuse_quantized_layers(model, f"quantize(mode={mode!r})")
    if mode == "static" and s.act_bits and calib_loader is None:
        raise ConfigError("mode='static' needs calib_loader (batches to observe activation ranges)")
    defaults = {
        "bits": s.bits,
        "act_bits": s.act_bits,
        "granularity": s.granularity,
        "scheme": s.scheme,
        "observer": s.observer,
        "act_observer": s.act_observer,
        "act_scheme": s.act_scheme,
    }
    info: dict[str, Any] = {}
    if mode == "static" and s.smooth:
        model, info["smooth"] = smooth_activations(
            model, calib_loader, alpha=s.smooth, num_batches=s.num_calib_batches
        )
    qmodel, prep = prepare_quantized(
        model,
        plan_defaults=defaults,
        layers=per_tensor_for_clustered(model, s.layers),  # k shared values stay k quantized values
        mode=mode,
        fold_bn=s.fold_bn,
        equalize=s.equalize,
        example_inputs=first_inputs(calib_loader),
    )
    info = {**prep, **info}
    if s.embeddings != "float":
        info["embeddings"] = quantize_embeddings_(
            qmodel, bits=EMBEDDING_MODES[s.embeddings], block_size=s.embedding_block_size, scheme=s.scheme
        )
    if mode == "static" and calib_loader is not None:
        info["calibration"] = calibrate_(qmodel, calib_loader, num_batches=s.num_calib_batches)
    for q in quantizers(qmodel).values():
        if q.role == "weight":
            q.freeze()
    if (s.act_range != "observer" or s.rounding != "nearest") and calib_loader is None:
        raise ConfigError(f"act_range={s.act_range!r}, rounding={s.rounding!r} need calib_loader")
    if s.act_range == "search":
        info["range_search"] = search_activation_ranges_(
            qmodel, calib_loader, num_batches=s.num_calib_batches
        )
    if s.rounding == "adaround":
        info["adaround"] = adaround_(qmodel, calib_loader, iterations=s.adaround_iterations, lr=s.adaround_lr)
    if s.bias_correction:
        if calib_loader is None:
            raise ConfigError("bias_correction=True needs calib_loader")
        info["bias_correction"] = correct_bias_(qmodel, calib_loader, num_batches=min(8, s.num_calib_batches))
    qmodel.eval()
    info["relu6_absorbed"] = absorb_relu6_(qmodel)
    info["float_modules"] = float_modules(qmodel)
    summary = quantization_summary(qmodel, inputs=first_inputs(calib_loader))
    return Result(model=qmodel, summary={**info, **summary})


@register_method("quantize", "ptq_static", config=PTQStaticConfig)
def ptq_static(model: nn.Module, config: PTQStaticConfig, data: MethodData) -> Result:
    """Static post-training quantization with calibration batches."""
    return run_ptq(model, data.calibration, config, mode="static")


@register_method("quantize", "ptq_dynamic", config=PTQDynamicConfig)
def ptq_dynamic(model: nn.Module, config: PTQDynamicConfig, data: MethodData) -> Result:
    """Dynamic quantization of Linear layers."""
    return run_ptq(model, None, PTQStaticConfig(**config.to_dict()), mode="dynamic")


@register_method("quantize", "weight_only", config=WeightOnlyConfig)
def weight_only(model: nn.Module, config: WeightOnlyConfig, data: MethodData) -> Result:
    """Weight-only quantization (block-wise Linear scales, optional AWQ scaling and GPTQ rounding)."""
    calib = data.calibration
    refuse_quantized_layers(model, "quantize(mode='weight_only')")
    model, info = prepare_weight_only(model, config, calib)
    base = {f.name: getattr(config, f.name) for f in dataclasses.fields(PTQWeightConfig)}
    result = run_ptq(model, None, PTQStaticConfig(**base), mode="weight_only")
    info.update(finish_weight_only_(result.model, config, calib))
    return Result(
        model=result.model,
        summary={**result.summary, **info, **quantization_summary(result.model, inputs=first_inputs(calib))},
    )


def quantize(
    model: nn.Module,
    calib_loader: Iterable | None = None,
    *,
    mode: str | None = None,
    config: PTQWeightConfig | None = None,
    **fields: Any,
) -> nn.Module:
    """Post-training quantization; a new fake-quantized model (``model`` is untouched).

    ``mode``: ``static`` (the default: weights + activations, ranges calibrated on
    ``calib_loader``), ``dynamic`` (Linear weights, activation ranges computed per batch at run
    time) or ``weight_only``; it picks the method and so the config (:data:`MODE_CONFIGS`) that
    ``fields`` build. Or pass ``config`` itself. The summary comes from
    :func:`netcompress.core.methods.apply` (or :func:`quantization_summary` of the result).

    Example:
        >>> qmodel = nc.quantize(model, calib_loader, bits=8, granularity="per_channel", scheme="symmetric")
    """
    check_model(model, where="quantize")
    check_loader(calib_loader, where="quantize", argument="calib_loader")
    if fields.get("layers", {}) is None:  # layers=None was the old keyword default
        del fields["layers"]
    if config is None:
        MODES.get(mode or "static")  # an unknown mode names the known ones
        config = MODE_CONFIGS[mode or "static"].from_dict(fields, where="quantize")
    elif fields or mode is not None:
        raise ConfigError("quantize: pass either config or mode/fields, not both")
    return apply(model, config, MethodData(calib_loader=calib_loader)).model


def freeze_quantizers_(model: nn.Module) -> nn.Module:
    """Stop every quantizer observing (IN PLACE), e.g. after QAT, before export."""
    for q in quantizers(model).values():
        if not q.dynamic:
            q.freeze()
    absorb_relu6_(model)
    return model
