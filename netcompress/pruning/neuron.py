"""Neuron pruning: remove whole neurons / channels that (almost) never fire, physically.

For each prunable layer (a Linear, Conv1d or Conv2d whose output passes an activation and then
reaches another such layer) the activation outputs are measured over a data loader and every
channel gets an importance from a registry (``CRITERIA``):

- ``apoz``: 1 - Average Percentage of Zeros after the activation (Hu et al. 2016): a neuron
  whose ReLU output is zero on most inputs carries little information;
- ``mean_activation``: the mean activation value.

The lowest ``round(amount * n)`` channels of each layer are removed: the layer's out features
(weight rows, bias), any BatchNorm on the way and the next layer's in features (for a conv
flattened into a Linear, each channel's H*W consecutive inputs) are cut. Surviving weights are
kept as they were (E5: re-initialisation from the survivors), so a removed neuron that was
dead leaves the outputs unchanged.

The model is traced with ``torch.fx`` and must be a simple chain (MLPs, VGG-style nets,
Sequentials, flatten/view included); a residual add, a concat or an unknown op between two
layers raises :class:`UnsupportedModelError` naming it. Channel pruning of arbitrary graphs is
``prune_channels`` (structured pruning) instead.

Example:
    >>> small, summary = prune_neurons(model, loader, criterion="apoz", amount=0.2)
    >>> summary["params_after"] < summary["params_before"]
    True
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from netcompress.core.config import Config, check_choice, check_range
from netcompress.core.errors import ConfigError, UnsupportedModelError
from netcompress.core.registry import Registry
from netcompress.core.selection import select_modules
from netcompress.evaluation.harness import eval_mode
from netcompress.pruning.masks import MASK_SUFFIX, masked_parameters

PRODUCERS = (nn.Linear, nn.Conv1d, nn.Conv2d)
_MODULE_KINDS: tuple[tuple[tuple[type[nn.Module], ...], str], ...] = (
    (PRODUCERS, "layer"),
    ((nn.BatchNorm1d, nn.BatchNorm2d), "bn"),
    ((nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish), "act"),
    ((nn.Hardtanh, nn.Mish, nn.Softplus), "act"),
    (
        (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d),
        "pass",
    ),
    (
        (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity),
        "pass",
    ),
    ((nn.Flatten,), "flatten"),
)
_FUNCTION_KINDS: dict[Any, str] = {
    **dict.fromkeys((F.relu, torch.relu, F.relu6, F.leaky_relu, F.gelu, F.silu, F.elu, F.hardswish), "act"),
    **dict.fromkeys((torch.sigmoid, torch.tanh, F.sigmoid, F.tanh), "act"),
    **dict.fromkeys((F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d, F.dropout), "pass"),
    **dict.fromkeys((F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, torch.nn.functional.dropout1d), "pass"),
    torch.flatten: "flatten",
}
_METHOD_KINDS = {
    "relu": "act",
    "sigmoid": "act",
    "tanh": "act",
    "flatten": "flatten",
    "view": "flatten",
    "reshape": "flatten",
}
_SHAPE_QUERIES = {("call_method", "size"), ("call_function", getattr)}


class _Stat:
    """Per-channel zero count and sum of one activation output."""

    def __init__(self, channel_dim: int) -> None:
        self.channel_dim = channel_dim
        self.zeros: torch.Tensor | None = None
        self.sums: torch.Tensor | None = None
        self.count = 0

    def update(self, out: torch.Tensor) -> None:
        x = out.detach().movedim(self.channel_dim, -1)
        x = x.reshape(-1, x.shape[-1])
        zeros, sums = (x == 0).sum(0).double(), x.double().sum(0)
        self.zeros = zeros if self.zeros is None else self.zeros + zeros
        self.sums = sums if self.sums is None else self.sums + sums
        self.count += x.shape[0]


CRITERIA: Registry[Callable[[_Stat], torch.Tensor]] = Registry("neuron pruning criterion")


@CRITERIA.register("apoz")
def _apoz_importance(stat: _Stat) -> torch.Tensor:
    """1 - APoZ: the share of inputs on which the neuron fires (higher = keep)."""
    return 1.0 - stat.zeros / max(1, stat.count)


@CRITERIA.register("mean_activation")
def _mean_importance(stat: _Stat) -> torch.Tensor:
    """Mean activation value (higher = keep)."""
    return stat.sums / max(1, stat.count)


@dataclasses.dataclass
class NeuronPruneConfig(Config):
    """Settings of :func:`prune_neurons`.

    Example:
        >>> NeuronPruneConfig(criterion="apoz", amount=0.3, layers=["re:classifier\\..*"])
    """

    criterion: str = "apoz"
    amount: float = 0.2
    layers: list[str] | None = None
    max_batches: int | None = None

    def __post_init__(self) -> None:
        check_choice("criterion", self.criterion, CRITERIA.names())
        if isinstance(self.amount, bool) or not isinstance(self.amount, (int, float)):
            raise ConfigError(f"amount={self.amount!r} must be a number in [0, 1)")
        check_range("amount", self.amount, 0.0, 0.999)
        if self.max_batches is not None:
            check_range("max_batches", self.max_batches, 1)
        if isinstance(self.layers, str):
            raise ConfigError("layers must be a list of layer names or 're:' patterns, not a string")


@dataclasses.dataclass
class _Span:
    """What one prunable layer's output passes through before the next layer consumes it."""

    producer: str
    act_node: str = ""
    bns: list[str] = dataclasses.field(default_factory=list)
    flatten_inner: int = 1  # H*W per channel when a flatten sits between conv and Linear
    act_dim: int = 1
    consumer: str = ""
    problem: str = ""  # why this layer cannot be pruned ("" = it can)
    fatal: bool = False  # the problem is an op we do not understand, not just "nothing to prune"


def _kind(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        module = modules[node.target]
        for types, kind in _MODULE_KINDS:
            if isinstance(module, types):
                return kind
        return f"module {node.target!r} ({type(module).__name__})"
    if node.op == "call_function":
        return _FUNCTION_KINDS.get(node.target, f"function {getattr(node.target, '__name__', node.target)!r}")
    if node.op == "call_method":
        return _METHOD_KINDS.get(node.target, f"method .{node.target}()")
    return f"{node.op} {node.target!r}"


def _describe(node: fx.Node) -> str:
    if node.op == "call_module":
        return f"layer {node.target!r}"
    if node.op == "call_function":
        return f"function {getattr(node.target, '__name__', str(node.target))!r}"
    return f"{node.op} {node.target!r}"


def _trace_chain(model: nn.Module) -> tuple[fx.GraphModule, list[fx.Node]]:
    """Trace ``model`` and return its data nodes in order, checking it is a simple chain."""
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many types for untraceable Python
        raise UnsupportedModelError(
            f"neuron pruning needs a torch.fx-traceable model; tracing failed: {type(exc).__name__}: {exc}"
        ) from exc
    meta: set[fx.Node] = set()
    for node in gm.graph.nodes:
        inputs = node.all_input_nodes
        if (node.op, node.target) in _SHAPE_QUERIES or (
            inputs and all(i in meta for i in inputs) and node.op != "output"
        ):
            meta.add(node)
    chain = [n for n in gm.graph.nodes if n not in meta and n.op not in ("placeholder", "output", "get_attr")]
    for node in chain:
        data_in = [i for i in node.all_input_nodes if i not in meta and i.op != "get_attr"]
        data_out = [u for u in node.users if u not in meta]
        if len(data_in) != 1 or len(data_out) != 1:
            what = _describe(node)
            raise UnsupportedModelError(
                f"neuron pruning needs a simple chain of layers, but {what} (node {node.name!r}) has "
                f"{len(data_in)} tensor inputs and {len(data_out)} users (residual/branching models: "
                "use prune_channels)"
            )
    return gm, chain


def _spans(gm: fx.GraphModule, chain: list[fx.Node]) -> dict[str, _Span]:
    modules = dict(gm.named_modules())
    spans: dict[str, _Span] = {}
    for i, node in enumerate(chain):
        if _kind(node, modules) != "layer":
            continue
        span = spans.setdefault(node.target, _Span(producer=node.target))
        if span.act_node or span.problem:
            span.problem, span.fatal = f"layer {node.target!r} is called more than once", True
            continue
        if getattr(modules[node.target], "groups", 1) != 1:
            span.problem = f"layer {node.target!r} is a grouped/depthwise conv"
            continue
        channel_dim = -1 if isinstance(modules[node.target], nn.Linear) else 1
        for nxt in chain[i + 1 :]:
            kind = _kind(nxt, modules)
            if kind == "layer":
                if getattr(modules[nxt.target], "groups", 1) != 1:
                    span.problem = f"its consumer {nxt.target!r} is a grouped/depthwise conv"
                span.consumer = nxt.target
                break
            if kind == "bn":
                span.bns.append(nxt.target)
            elif kind == "act" and not span.act_node:
                span.act_node, span.act_dim = nxt.name, channel_dim
            elif kind == "flatten":
                shape = nxt.all_input_nodes[0].meta["tensor_meta"].shape
                out_shape = nxt.meta["tensor_meta"].shape
                if len(out_shape) != 2 or out_shape[1] != math.prod(shape[1:]):
                    span.problem = (
                        f"{nxt.op} {nxt.target!r} (node {nxt.name!r}) is not a flatten to (N, features)"
                    )
                    span.fatal = True
                    break
                if not span.act_node and len(shape) > 2:
                    span.problem = f"the flatten at node {nxt.name!r} comes before the activation"
                    span.fatal = True
                    break
                span.flatten_inner *= math.prod(shape[2:])
            elif kind not in ("act", "pass"):
                span.problem = f"unsupported {kind} (node {nxt.name!r}) between it and the next layer"
                span.fatal = True
                break
        if not span.problem and not span.consumer:
            span.problem = f"layer {node.target!r} is the output layer (no layer consumes it)"
        elif not span.problem and not span.act_node:
            span.problem = f"layer {node.target!r} has no activation before the next layer"
    return spans


class _StatsInterpreter(fx.Interpreter):
    """Runs the traced model, accumulating statistics of the watched activation outputs."""

    def __init__(self, gm: fx.GraphModule, watch: dict[str, _Stat]) -> None:
        super().__init__(gm)
        self.watch = watch

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        stat = self.watch.get(n.name)
        if stat is not None:
            stat.update(out)
        return out


def _batches(loader: Iterable, max_batches: int | None) -> Iterable[torch.Tensor]:
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


@torch.no_grad()
def neuron_statistics(
    model: nn.Module, loader: Iterable, *, layers: list[str] | None = None, max_batches: int | None = None
) -> tuple[dict[str, _Span], dict[str, _Stat]]:
    """Trace ``model`` (unchanged), find prunable layers and measure their activation outputs.

    Example:
        >>> spans, stats = neuron_statistics(model, loader, max_batches=4)
        >>> 1 - stats["0"].zeros / stats["0"].count   # per-neuron firing rate of layer "0"
    """
    gm, chain = _trace_chain(model)
    with eval_mode(model):
        batches = _batches(loader, max_batches)
        first = next(iter(batches), None)
        if first is None:
            raise ConfigError("neuron pruning needs at least one batch from the loader")
        ShapeProp(gm).propagate(first)
        spans = _spans(gm, chain)
        chosen = _choose(model, spans, layers)
        stats = {name: _Stat(spans[name].act_dim) for name in chosen}
        interp = _StatsInterpreter(gm, {spans[name].act_node: stats[name] for name in chosen})
        interp.run(first)
        for inputs in batches:
            interp.run(inputs)
    return {name: spans[name] for name in chosen}, stats


def _choose(model: nn.Module, spans: dict[str, _Span], layers: list[str] | None) -> list[str]:
    if layers is None:
        for span in spans.values():
            if span.fatal:
                raise UnsupportedModelError(
                    f"cannot prune neurons of layer {span.producer!r}: {span.problem}"
                )
        return [n for n, s in spans.items() if not s.problem]
    chosen = list(select_modules(model, types=PRODUCERS, include=layers))
    for name in chosen:
        span = spans.get(name)
        if span is None or span.problem:
            why = span.problem if span else "it is not called in forward"
            raise UnsupportedModelError(f"cannot prune neurons of layer {name!r}: {why}")
    return chosen


def _slice_(module: nn.Module, names: Iterable[str], dim: int, keep: torch.Tensor) -> None:
    """Replace ``module.<name>`` by its ``keep`` entries along ``dim`` (parameters stay parameters).

    A pruning mask ``<name>_mask`` is sliced the same way, so weight sparsity from an earlier
    unstructured step stays enforced in the smaller layer.
    """
    names = list(names)
    names += [n + MASK_SUFFIX for n in names if n + MASK_SUFFIX in module._buffers]
    for name in names:
        value = getattr(module, name, None)
        if value is None:
            continue
        sliced = value.detach().index_select(dim, keep.to(value.device)).clone()
        if isinstance(value, nn.Parameter):
            setattr(module, name, nn.Parameter(sliced, requires_grad=value.requires_grad))
        else:
            module._buffers[name] = sliced


def _shrink_out_(module: nn.Module, keep: torch.Tensor) -> None:
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        _slice_(module, ("weight", "bias", "running_mean", "running_var"), 0, keep)
        module.num_features = len(keep)
        return
    _slice_(module, ("weight", "bias"), 0, keep)
    attr = "out_features" if isinstance(module, nn.Linear) else "out_channels"
    setattr(module, attr, len(keep))


def _shrink_in_(module: nn.Module, keep: torch.Tensor) -> None:
    _slice_(module, ("weight",), 1, keep)
    attr = "in_features" if isinstance(module, nn.Linear) else "in_channels"
    setattr(module, attr, len(keep))


def prune_neurons(
    model: nn.Module,
    loader: Iterable,
    *,
    criterion: str = "apoz",
    amount: float = 0.2,
    layers: list[str] | None = None,
    max_batches: int | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Remove the ``amount`` least active neurons of each prunable layer; return a NEW model.

    The input model is untouched; pruning masks of the copy are sliced along. ``layers``
    restricts pruning to names or ``re:`` patterns; the output layer is never pruned.

    Example:
        >>> small, s = prune_neurons(mlp, test_loader, criterion="apoz", amount=0.25, max_batches=8)
        >>> s["layers"]["0"]["neurons_after"]
        48
    """
    config = NeuronPruneConfig(criterion=criterion, amount=amount, layers=layers, max_batches=max_batches)
    new = copy.deepcopy(model)
    spans, stats = neuron_statistics(new, loader, layers=config.layers, max_batches=config.max_batches)
    modules = dict(new.named_modules())
    params_before = sum(p.numel() for p in new.parameters())
    report: dict[str, Any] = {}
    for name, span in spans.items():
        importance = CRITERIA.get(config.criterion)(stats[name]).float().cpu()
        n = importance.numel()
        n_remove = min(n - 1, int(round(config.amount * n)))
        order = torch.sort(importance, stable=True).indices
        keep = torch.sort(order[n_remove:]).values
        removed = torch.sort(order[:n_remove]).values
        _shrink_out_(modules[name], keep)
        for bn in span.bns:
            _shrink_out_(modules[bn], keep)
        inner = span.flatten_inner
        in_keep = (keep[:, None] * inner + torch.arange(inner)).flatten() if inner > 1 else keep
        _shrink_in_(modules[span.consumer], in_keep)
        report[name] = {
            "neurons_before": n,
            "neurons_after": len(keep),
            "removed": removed.tolist(),
            "removed_importance": [round(float(v), 6) for v in importance[removed]],
        }
    params_after = sum(p.numel() for p in new.parameters())
    summary = {
        "criterion": config.criterion,
        "amount": config.amount,
        "layers": report,
        "params_before": params_before,
        "params_after": params_after,
        "masked_parameters": len(masked_parameters(new)),
    }
    return new, summary
