"""Dynamic (slimmable) width: one set of weights that runs at several widths, on any model the
channel dependency graph can follow (plain chains, residual adds, downsample shortcuts, concatenations).

:func:`make_slimmable` copies a model, traces its channel dependency graph
(:mod:`netcompress.pruning.graph_tracing`, the one channel pruning uses) and applies each width
per channel GROUP: a group (for example the stem conv's outputs, every BatchNorm on them and both
operands of every residual add in that stage) keeps its first ``ceil(w * n)`` channels, so
coupled channels always slice together. Groups the graph blocks (the model's input, the
classifier's outputs, channels a LayerNorm normalises over) are never sliced. Every BatchNorm
keeps private statistics and affine parameters per width ("switchable BN", Yu et al.,
*Slimmable Neural Networks*, 2019). :func:`extract_width` cuts out a plain, physically smaller
model for one width with the same outputs.

Example::

    slim = make_slimmable(cifar_resnet20(), widths=(0.25, 0.5, 1.0), example_inputs=torch.randn(2, 3, 32, 32))
    with at_width(slim, 0.5):
        logits = slim(images)
    small = extract_width(slim, 0.5)      # plain nn.Conv2d/BatchNorm2d/Linear, half the channels
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from netcompress.core.errors import ConfigError, UnsupportedModelError
from netcompress.core.inputs import batch_inputs, batch_size_of, call_model, move_inputs
from netcompress.core.selection import set_submodule
from netcompress.dynamic.slim_layers import (
    BATCH_NORMS,
    PLAIN_CLASSES,
    SLIM_CLASSES,
    Selection,
    SlimLayer,
    SwitchableBatchNorm,
    active_channels,
    as_index,
    slim_copy,
)
from netcompress.evaluation.harness import eval_mode
from netcompress.pruning.graph import ChannelGraph, as_inputs
from netcompress.pruning.graph_tracing import trace_channels
from netcompress.pruning.surgery import SHRINKERS

Keep = dict[str, dict[str, list[int] | None]]


@dataclasses.dataclass
class WidthPlan:
    """Per width, the kept input/output channel indices of every layer of the channel graph
    (``keep[width][layer]["in"|"out"]``), each layer's kind, and the groups with their channel
    count per width (``groups[i]["channels"][width]``)."""

    kinds: dict[str, str]
    keep: dict[float, Keep]
    groups: list[dict[str, Any]]


class SlimmableModel(nn.Module):
    """A model whose slimmable layers all follow one ``width`` (one of ``widths``).

    ``net`` is the copied model with its layers swapped; ``forward`` is ``net``'s own.
    ``input_shapes`` (one sample per input) size the example inputs of :meth:`example_inputs`.
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        widths: Sequence[float],
        input_shapes: Sequence[Sequence[int]],
        plan: WidthPlan,
        input_dtypes: Sequence[torch.dtype] | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.widths = tuple(sorted({float(w) for w in widths}))
        self.input_shapes = [tuple(int(s) for s in shape) for shape in input_shapes]
        self.input_dtypes = list(input_dtypes or [torch.float32] * len(self.input_shapes))
        self.input_shape = self.input_shapes[0]
        self.plan = plan
        self.width = max(self.widths)
        self.set_width(self.width)

    def slim_layers(self) -> dict[str, nn.Module]:
        return {n: m for n, m in self.net.named_modules() if isinstance(m, (SlimLayer, SwitchableBatchNorm))}

    def set_width(self, width: float) -> SlimmableModel:
        """Run at ``width`` from now on; it must be one of ``widths`` (each has its own BN)."""
        self.width = self.match_width(width)
        for layer in self.slim_layers().values():
            layer.width = self.width
        return self

    def match_width(self, width: float) -> float:
        width = float(width)
        match = [w for w in self.widths if abs(w - width) < 1e-9]
        if not match:
            raise ConfigError(f"width={width} is not one of the trained widths {list(self.widths)}")
        return match[0]

    def example_inputs(self, batch: int = 1, device: Any = "cpu") -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Zeros shaped like the inputs given to :func:`make_slimmable`, ``batch`` samples."""
        inputs = tuple(
            torch.zeros(batch, *shape, device=device, dtype=dtype)
            for shape, dtype in zip(self.input_shapes, self.input_dtypes)
        )
        return inputs[0] if len(inputs) == 1 else inputs

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.net(*args, **kwargs)


def set_width(model: SlimmableModel, width: float) -> SlimmableModel:
    """Switch a :class:`SlimmableModel` (in place) to ``width``; returns it.

    Example:
        >>> set_width(slim, 0.5)(torch.randn(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """
    return _as_slimmable(model, "set_width").set_width(width)


@contextlib.contextmanager
def at_width(model: SlimmableModel, width: float) -> Iterator[SlimmableModel]:
    """Run ``model`` at ``width`` inside the block; the previous width is restored after it.

    Example:
        >>> with at_width(slim, 0.25):
        ...     small_logits = slim(x)
    """
    model = _as_slimmable(model, "at_width")
    previous = model.width
    model.set_width(width)
    try:
        yield model
    finally:
        model.set_width(previous)


def _as_slimmable(model: nn.Module, verb: str) -> SlimmableModel:
    if not isinstance(model, SlimmableModel):
        raise UnsupportedModelError(
            f"{verb} needs a SlimmableModel (make_slimmable), got {type(model).__name__}"
        )
    return model


def _check_widths(widths: Sequence[float]) -> list[float]:
    widths = sorted({float(w) for w in widths})
    if not widths:
        raise ConfigError("widths is empty")
    for w in widths:
        if not 0.0 < w <= 1.0:
            raise ConfigError(f"width {w} must be in (0, 1]")
    if abs(max(widths) - 1.0) > 1e-9:
        raise ConfigError(f"widths {widths} must include 1.0 (the full model)")
    return widths


def _trace(net: nn.Module, example_inputs: Any) -> ChannelGraph:
    inputs = as_inputs(example_inputs)
    # a batch of 2 keeps the tracer from confusing the batch dim with a squeezable one
    inputs = tuple(torch.cat([t, t]) if t.dim() > 0 and t.shape[0] == 1 else t for t in inputs)
    try:
        return trace_channels(net, inputs).graph
    except UnsupportedModelError as exc:
        raise UnsupportedModelError(
            f"slimmable width follows the channel graph, which failed: {exc}"
        ) from exc


def width_plan(graph: ChannelGraph, widths: Sequence[float]) -> WidthPlan:
    """Per width, each unblocked group keeps its first ``ceil(w * n)`` units (channels)."""
    sliced = graph.prunable_groups()
    if not sliced:
        reasons = sorted({g.reason for g in graph.groups if g.reason})
        raise UnsupportedModelError(f"no channel group can be slimmed ({'; '.join(reasons) or 'no layers'})")
    keep: dict[float, Keep] = {}
    for w in widths:
        pruned = {u for g in sliced for u in g.unit_ids[active_channels(g.num_units, w) :]}
        keep[w] = graph.keep_indices(pruned)
    groups = [
        {
            "id": g.id,
            "producers": list(g.producers),
            "layers": list(g.out_layers),
            "channels": {w: active_channels(g.num_units, w) if g.prunable else g.num_units for w in widths},
            "sliced": g.prunable,
            "reason": g.reason,
        }
        for g in graph.groups
    ]
    return WidthPlan({n: layer.kind for n, layer in graph.layers.items()}, keep, groups)


def _full(keep: list[int] | None, labels: list[int] | None) -> list[int] | None:
    return keep if keep is not None or labels is None else list(range(len(labels)))


def _selection(kind: str, module: nn.Module, in_keep: list[int] | None, out_keep: list[int]) -> Selection:
    if kind == "conv":
        groups = module.groups
        if groups == 1:
            return Selection(as_index(out_keep), as_index(in_keep), 1)
        if module.in_channels // groups == 1:  # depthwise: one group per kept input channel
            return Selection(as_index(out_keep), None, len(in_keep))
        positions = [i for i in in_keep if i < module.in_channels // groups]
        return Selection(as_index(out_keep), as_index(positions), groups)
    if kind == "conv_transpose":  # the layer reads its weight's rows by in_sel, its group positions from out_sel
        per_in = module.in_channels // module.groups
        return Selection(as_index(out_keep), as_index(in_keep), len(in_keep) if per_in == 1 else module.groups)
    if kind == "linear":
        return Selection(as_index(out_keep), as_index(in_keep))
    if kind == "groupnorm":
        return Selection(
            as_index(out_keep), None, len(out_keep) // (module.num_channels // module.num_groups)
        )
    return Selection(as_index(out_keep))  # prelu


def _swap_layers(net: nn.Module, graph: ChannelGraph, plan: WidthPlan, widths: list[float]) -> None:
    for name, layer in graph.layers.items():
        module = net.get_submodule(name)
        keeps = {w: plan.keep[w][name] for w in widths}
        if layer.kind == "batchnorm":
            if type(module) not in BATCH_NORMS:
                raise UnsupportedModelError(
                    f"layer {name!r} ({type(module).__name__}) is a BatchNorm subclass; slimmable width "
                    "switches BatchNorm1d/2d/3d only"
                )
            channels = {w: _full(k["out"], layer.out_labels) for w, k in keeps.items()}
            set_submodule(net, name, SwitchableBatchNorm(module, widths, channels))
            continue
        sizes = {(len(k["in"] or ()), len(k["out"] or ())) for k in keeps.values()}
        if len(sizes) == 1:
            continue  # the same channels at every width: the layer stays as it is
        if type(module) not in SLIM_CLASSES or layer.kind == "custom":
            raise UnsupportedModelError(
                f"layer {name!r} ({type(module).__name__}) sits on channels that change with the width; "
                f"slimmable width can slice {', '.join(t.__name__ for t in SLIM_CLASSES)} and BatchNorm"
            )
        if layer.kind == "instancenorm" and module.track_running_stats:
            raise UnsupportedModelError(
                f"layer {name!r} ({type(module).__name__}) tracks running statistics; slimmable width switches "
                "InstanceNorm without them (track_running_stats=False)"
            )
        new = slim_copy(module)
        new.selections = {
            w: _selection(
                layer.kind, module, _full(k["in"], layer.in_labels), _full(k["out"], layer.out_labels)
            )
            for w, k in keeps.items()
        }
        set_submodule(net, name, new)


def make_slimmable(
    model: nn.Module, *, widths: Sequence[float] = (0.25, 0.5, 0.75, 1.0), example_inputs: Any
) -> SlimmableModel:
    """A new :class:`SlimmableModel` from any model the channel graph can follow (the input is untouched).

    At width 1.0 it computes exactly what ``model`` computes. Ops the graph cannot follow and
    layers it cannot slice raise :class:`UnsupportedModelError` naming the op or module.

    Example:
        >>> slim = make_slimmable(cifar_resnet20(), widths=(0.5, 1.0), example_inputs=torch.randn(2, 3, 32, 32))
        >>> slim.widths
        (0.5, 1.0)
    """
    widths = _check_widths(widths)
    net = copy.deepcopy(model)
    graph = _trace(net, example_inputs)
    plan = width_plan(graph, widths)
    _swap_layers(net, graph, plan, widths)
    given = as_inputs(example_inputs)
    slim = SlimmableModel(
        net,
        widths=widths,
        input_shapes=[t.shape[1:] for t in given],
        plan=plan,
        input_dtypes=[t.dtype for t in given],
    )
    for w in widths:  # every width must run; an error here names the width instead of surfacing in training
        try:
            with at_width(slim, w), eval_mode(slim), torch.no_grad():
                slim(*given)
        except Exception as exc:
            raise UnsupportedModelError(
                f"{type(model).__name__} fails at width {w} ({type(exc).__name__}: {exc})"
            ) from exc
    return slim


def extract_width(model: SlimmableModel, width: float) -> nn.Module:
    """A plain standalone model at ``width``: physically smaller layers, that width's BN, same outputs.

    The slimmable model is left as it was (width included).

    Example:
        >>> small = extract_width(slim, 0.5)
        >>> (small(x) - set_width(slim, 0.5)(x)).abs().max() < 1e-5
        tensor(True)
    """
    model = _as_slimmable(model, "extract_width")
    width = model.match_width(width)
    keep = model.plan.keep[width]
    net = copy.deepcopy(model.net)
    for name, layer in list(net.named_modules()):
        if isinstance(layer, SwitchableBatchNorm):
            set_submodule(net, name, copy.deepcopy(layer.bns[layer.widths.index(width)]))
        elif isinstance(layer, SlimLayer):
            layer.__class__ = PLAIN_CLASSES[type(layer)]
            for attr in ("selections", "width"):
                layer.__dict__.pop(attr, None)
            SHRINKERS.get(model.plan.kinds[name])(layer, keep[name]["in"], keep[name]["out"])
    return net


def recalibrate_widths_(model: SlimmableModel, loader: Any, *, num_batches: int = 10) -> dict[float, int]:
    """Re-estimate each width's private BatchNorm statistics on ``num_batches`` batches (in place).

    Per width, only that width's BNs are reset and fed (cumulative average: ``momentum=None`` for the
    pass), in train mode under ``no_grad``; no weight changes, the other widths' statistics stay as
    they are. Useful after training, whose running averages lag the final weights. Returns the
    samples seen per width.

    Example:
        >>> recalibrate_widths_(slim, train_loader, num_batches=20)
        {0.25: 2560, 0.5: 2560, 1.0: 2560}
    """
    model = _as_slimmable(model, "recalibrate_widths_")
    if num_batches < 1:
        raise ConfigError(f"num_batches={num_batches} must be >= 1")
    switchable = [m for m in model.net.modules() if isinstance(m, SwitchableBatchNorm)]
    seen: dict[float, int] = {}
    for width in model.widths:
        bns = [m.bns[m.widths.index(width)] for m in switchable]
        saved = [(bn.momentum, bn.training) for bn in bns]
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
        seen[width] = 0
        try:
            with at_width(model, width), eval_mode(model), torch.no_grad():
                for bn in bns:
                    bn.train()
                device = next((p.device for p in model.parameters()), torch.device("cpu"))
                for index, batch in enumerate(loader):
                    if index >= num_batches:
                        break
                    inputs = move_inputs(batch_inputs(batch), device)
                    call_model(model, inputs)
                    seen[width] += batch_size_of(inputs)
        finally:
            for bn, (momentum, training) in zip(bns, saved):
                bn.momentum = momentum
                bn.train(training)
    return seen
