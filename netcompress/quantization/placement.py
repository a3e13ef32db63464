"""Which layer gets which quantizer, and where activation quantizers go in the graph.

:func:`resolve_plan` turns global settings plus per-layer overrides (exact names or ``re:``
patterns) into a weight spec and an activation spec per layer. :func:`build_graph_quantized`
wraps the layers of a traced model and inserts activation quantizers *after*
``Conv(+BN)+ReLU`` (uint8, zero point 0 there) so ONNX Runtime fuses ``QLinearConv``
(with quantizers only on conv inputs ORT keeps float convolutions); a layer whose input is not already on a quantization grid (e.g. after an
average pool or an add) gets an input quantizer. Anything else stays float and is counted.
:func:`build_eager_quantized` is the fallback for models torch.fx cannot trace.
"""

from __future__ import annotations

import dataclasses
import operator
from collections import Counter
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from netcompress.core.config import Config
from netcompress.core.errors import ConfigError
from netcompress.core.selection import name_matches as _matches
from netcompress.core.selection import set_submodule
from netcompress.quantization.fake_quant import FakeQuantize
from netcompress.quantization.modules import (
    QuantFilterBank,
    QuantLayer,
    is_filter_bank,
    is_quantizable,
    make_quantizer,
    wrap_module,
)
from netcompress.quantization.qparams import QuantSpec
from netcompress.quantization.tracing import describe, is_pass_through, is_relu, module_of

ACT_PREFIX = "act_quant"


@dataclasses.dataclass
class LayerOverride(Config):
    """Per-layer settings accepted in ``layers={pattern: {...}}``; ``enabled=False`` keeps a layer float.

    ``act_bits=None`` (or 0) leaves that layer's activations float.

    Example:
        >>> LayerOverride.from_dict({"bits": 4, "act_bits": 4}, where="layers['re:blocks.*']")
    """

    bits: int | None = None
    act_bits: int | None = None
    granularity: str | None = None
    scheme: str | None = None
    observer: str | None = None
    observer_args: dict[str, Any] | None = None
    act_observer: str | None = None
    act_observer_args: dict[str, Any] | None = None
    act_scheme: str | None = None
    enabled: bool = True


@dataclasses.dataclass
class LayerPlan:
    name: str
    weight: QuantSpec | None
    activation: QuantSpec | None


def resolve_plan(
    model: nn.Module,
    *,
    defaults: dict[str, Any],
    layers: dict[str, dict[str, Any]] | None = None,
    types: tuple[type[nn.Module], ...] | None = None,
) -> dict[str, LayerPlan]:
    """Weight and activation :class:`QuantSpec` for each quantizable layer of ``model``.

    ``defaults`` holds the keys of :class:`LayerOverride`; ``layers`` maps names or ``re:``
    patterns to overrides, applied in order (later wins). A pattern that matches no layer is an
    error naming it. ``types`` restricts the layers considered (e.g. Linear only).

    Example:
        >>> plan = resolve_plan(model, defaults={"bits": 8, "act_bits": 8}, layers={"fc": {"bits": 4}})
    """
    candidates = {
        n: m
        for n, m in model.named_modules()
        if n and is_quantizable(m) and (types is None or isinstance(m, types) or is_filter_bank(m))
    }
    overrides = {
        pattern: LayerOverride.from_dict(cfg, where=f"layers[{pattern!r}]")
        for pattern, cfg in (layers or {}).items()
    }
    for pattern in overrides:
        if not any(_matches(n, pattern) for n in candidates):
            raise ConfigError(
                f"layer pattern {pattern!r} matches no quantizable layer; layers: {', '.join(candidates)}"
            )
    plan: dict[str, LayerPlan] = {}
    for name in candidates:
        settings = dict(defaults)
        for pattern, override in overrides.items():
            if _matches(name, pattern):
                settings.update({k: v for k, v in override.to_dict().items() if v is not None})
        if not settings.get("enabled", True) or not settings.get("bits"):
            continue
        weight = QuantSpec(
            bits=settings["bits"],
            granularity=settings.get("granularity", "per_channel"),
            scheme=settings.get("scheme", "symmetric"),
            signed=True,
            observer=settings.get("observer", "minmax"),
            observer_args=dict(settings.get("observer_args") or {}),
        )
        act = None
        if settings.get("act_bits"):
            act = QuantSpec(
                bits=settings["act_bits"],
                granularity="per_tensor",
                scheme=settings.get("act_scheme", "asymmetric"),
                signed=False,  # uint8: zero point 0 after ReLU, so ORT absorbs the ReLU
                observer=settings.get("act_observer", "minmax"),
                observer_args=dict(settings.get("act_observer_args") or {}),
            )
        plan[name] = LayerPlan(name, weight, act)
    return plan


def build_eager_quantized(
    model: nn.Module, plan: dict[str, LayerPlan], *, method: str = "ste", dynamic_input: bool = False
) -> nn.Module:
    """Wrap the planned layers of ``model`` IN PLACE (input quantizers carry activation specs).

    Example:
        >>> build_eager_quantized(copy.deepcopy(model), plan)
    """
    for name, lp in plan.items():
        module = model.get_submodule(name)
        wrapped = wrap_module(
            module,
            weight_spec=lp.weight,
            method=method,
            input_spec=lp.activation,
            dynamic_input=dynamic_input,
        )
        set_submodule(model, name, wrapped)
    return model


def _insert_after(gm: fx.GraphModule, node: fx.Node, target: str, quantizer: nn.Module) -> fx.Node:
    gm.add_submodule(target, quantizer)
    with gm.graph.inserting_after(node):
        q = gm.graph.call_module(target, (node,))
    node.replace_all_uses_with(q, delete_user_cb=lambda user: user is not q)
    return q


_ADDS = (operator.add, torch.add, "add")


def _share_with_residual_adds(source: fx.Node, q: fx.Node, quant_nodes: set[fx.Node]) -> None:
    """Feed ``q`` (``source`` quantized) to the adds whose other inputs are all quantized already.

    A residual block's input is quantized for its first layer; its skip connection used the float
    value, so the Add had one float input and ONNX Runtime kept it float between a DequantizeLinear
    and a QuantizeLinear (7 of the 9 residual Adds of EfficientNet-Lite0). With both inputs quantized it
    runs as ``QLinearAdd``, as int8 inference computes it.
    """
    for user in list(source.users):
        if user is q or user.op not in ("call_function", "call_method") or user.target not in _ADDS:
            continue
        others = [a for a in user.args if isinstance(a, fx.Node) and a is not source]
        if others and all(a in quant_nodes for a in others):
            user.replace_input_with(source, q)


def build_graph_quantized(
    gm: fx.GraphModule, plan: dict[str, LayerPlan], *, method: str = "ste"
) -> tuple[fx.GraphModule, dict[str, Any]]:
    """Wrap planned layers of traced ``gm`` IN PLACE and insert activation quantizers.

    Returns ``(gm, placement_summary)`` with the activation quantizers added and a count of the
    graph ops left in float.

    Example:
        >>> gm, info = build_graph_quantized(fold_bn(model), plan)
    """
    for name, lp in plan.items():
        set_submodule(gm, name, wrap_module(gm.get_submodule(name), weight_spec=lp.weight, method=method))
    layer_nodes = [
        n
        for n in gm.graph.nodes
        if n.op == "call_module" and n.target in plan and isinstance(module_of(gm, n), QuantLayer)
    ]
    quant_nodes: set[fx.Node] = set()
    outputs_added = inputs_added = 0
    for node in layer_nodes:
        spec = plan[node.target].activation
        if spec is None:
            continue
        end = node
        if len(end.users) == 1 and is_relu(gm, next(iter(end.users))):
            end = next(iter(end.users))
        if any(u in quant_nodes for u in end.users):
            continue
        target = f"{ACT_PREFIX}.{node.name}_out"
        quant_nodes.add(_insert_after(gm, end, target, make_quantizer(spec, method=method)))
        outputs_added += 1
    input_quant: dict[fx.Node, fx.Node] = {}
    for node in layer_nodes:
        spec = plan[node.target].activation
        if spec is None or not node.args or not isinstance(node.args[0], fx.Node):
            continue
        source = node.args[0]
        cur = source
        while (
            cur not in quant_nodes
            and is_pass_through(gm, cur)
            and cur.args
            and isinstance(cur.args[0], fx.Node)
        ):
            cur = cur.args[0]
        if cur in quant_nodes:
            continue
        if source not in input_quant:
            target = f"{ACT_PREFIX}.{node.name}_in"
            gm.add_submodule(target, make_quantizer(spec, method=method))
            with gm.graph.inserting_after(source):
                input_quant[source] = gm.graph.call_module(target, (source,))
            quant_nodes.add(input_quant[source])
            inputs_added += 1
            _share_with_residual_adds(source, input_quant[source], quant_nodes)
        node.args = (input_quant[source], *node.args[1:])
    gm.graph.lint()
    gm.recompile()
    float_ops: Counter[str] = Counter()
    for n in gm.graph.nodes:
        if n.op in ("placeholder", "output", "get_attr") or n in quant_nodes or is_pass_through(gm, n):
            continue
        module = module_of(gm, n)
        if isinstance(module, (QuantLayer, QuantFilterBank)) or is_relu(gm, n):
            continue
        float_ops[describe(gm, n)] += 1
    info = {
        "graph": "fx",
        "activation_quantizers": {"outputs": outputs_added, "inputs": inputs_added},
        "float_ops": dict(sorted(float_ops.items())),
    }
    return gm, info


def _is_relu6(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(module_of(gm, node), nn.ReLU6)
    return node.op == "call_function" and node.target is F.relu6


def scale_within(scale: torch.Tensor, qmax: int, limit: float = 6.0) -> torch.Tensor:
    """The largest float32 scales ``<= scale`` with ``scale * qmax <= limit`` in float32 arithmetic.

    ONNX Runtime drops a ``Clip(0, 6)`` before a ``QuantizeLinear`` when ``scale * 255 <= 6`` in
    float32. A range calibrated to exactly 6 (a saturated ReLU6) gives the float32 ``6/255``, whose
    product is 6.0 in float32 but 6.0000001 in double: tested in double, the ReLU6 stayed, exported as a
    ``Clip`` that kept the convolution float.

    Example:
        >>> bool((scale_within(torch.tensor([6 / 255]), 255) * 255 <= 6).all())
        True
    """
    s = torch.minimum(scale.detach().float(), torch.tensor(limit / qmax, dtype=torch.float32))
    while bool((over := s * qmax > limit).any()):
        s = torch.where(over, torch.nextafter(s, torch.zeros_like(s)), s)
    return s


def absorb_relu6_(gm: nn.Module) -> int:
    """Drop ReLU6 nodes whose only user is a frozen uint8 quantizer (zero point 0).

    A quantizer whose range ends above 6 is first narrowed to end at 6 (:func:`scale_within`): the
    ReLU6 output never exceeds 6, so no value loses a code it used. The quantizer then clamps to
    ``[0, 255 * scale]`` within ``[0, 6]`` and drops the ReLU6 bit-identically; ONNX Runtime then fuses
    ``Conv -> Q`` into ``QLinearConv`` (it does not absorb the ``Clip`` a ReLU6 exports as; on the
    pretrained EfficientNet-Lite0, 31 of 49 convolutions stayed float when this was tested in double
    precision). Returns how many were
    removed; IN PLACE.

    Example:
        >>> absorb_relu6_(qmodel)   # after calibration
        1
    """
    if not isinstance(gm, fx.GraphModule):
        return 0
    removed = 0
    for node in list(gm.graph.nodes):
        if not _is_relu6(gm, node) or len(node.users) != 1:
            continue
        user = next(iter(node.users))
        q = module_of(gm, user)
        if not isinstance(q, FakeQuantize) or q.observing or q.dynamic or q.spec.signed or not q.quantizing:
            continue
        qmin, qmax = q.spec.quant_range
        if bool((q.zero_point != 0).any()):
            continue
        if bool((q.scale * qmax > 6.0).any()):
            q.set_qparams(scale_within(q.scale, qmax), q.zero_point)
        node.replace_all_uses_with(node.args[0])
        gm.graph.erase_node(node)
        removed += 1
    if removed:
        gm.graph.lint()
        gm.delete_all_unused_submodules()
        gm.recompile()
    return removed
