"""Channel importance criteria: which pruning units of a :class:`ChannelGroup` matter least.

Each criterion in :data:`IMPORTANCES` returns scores per layer along that layer's output channels
(``{layer_name: Tensor[out_channels]}``); :func:`unit_scores` sums them over every layer of a
coupled unit, so a residual channel is judged by all the filters that write it. Larger = keep.

- ``l1`` / ``l2``: norm of each output filter (Conv, Linear, protocol module weights);
- ``fpgm``: distance of each filter to the others in its layer (filters near the geometric
  median are replaceable, so they score low);
- ``taylor``: first-order Taylor ``sum |w * dL/dw|`` over filter and BatchNorm parameters,
  accumulated over ``max_batches`` batches of ``loader`` (a copy of the model is used);
- ``bn_scale``: ``|gamma|`` of the BatchNorm on the channel (network slimming);
- ``group_l1`` / ``group_l2``: the whole coupled group's weights that vanish with a channel: the
  producers' filters, the BatchNorm scale (gamma) on it, and the consumers' input-channel
  weights (``sum |w|`` or ``sum w^2``, as Torch-Pruning's group magnitude). A channel whose outgoing
  weights are small is cheap to remove even when its filter is large;
- ``random``: a seeded baseline.

A criterion may also score input-channel members: key ``"<layer>:in"`` holds one value per input
channel (per input feature for a Linear after a flatten) and :func:`unit_scores` adds it to the
units those channels belong to.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from netcompress.core.errors import ConfigError
from netcompress.core.inputs import call_model, output_tensor, split_batch
from netcompress.core.registry import Registry
from netcompress.pruning.graph import ChannelGraph

ImportanceFn = Callable[..., dict[str, torch.Tensor]]
IMPORTANCES: Registry[ImportanceFn] = Registry("channel importance")

_FILTER_KINDS = ("conv", "conv_transpose", "linear", "custom")


def transposed_rows(module: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    """A ConvTranspose's ``(in, out / groups, *kernel)`` weight (or its gradient) as one row per output channel."""
    groups = module.groups
    per_in, per_out = tensor.shape[0] // groups, tensor.shape[1]
    return tensor.reshape(groups, per_in, per_out, -1).transpose(1, 2).reshape(groups * per_out, -1)


def filter_weights(module: nn.Module, *, kind: str, out_channels: int) -> torch.Tensor | None:
    """The weights of each output channel as rows of a (out_channels, -1) matrix, or None.

    Protocol modules may define ``channel_weights()``; otherwise their parameters whose first
    dimension equals ``out_channels`` are concatenated.
    """
    if kind in ("conv", "linear"):
        return module.weight.detach().flatten(1)
    if kind == "conv_transpose":
        return transposed_rows(module, module.weight.detach())
    if kind == "custom":
        if callable(getattr(module, "channel_weights", None)):
            return module.channel_weights().detach().reshape(out_channels, -1)
        rows = [
            p.detach().reshape(out_channels, -1)
            for p in module.parameters()
            if p.dim() and p.shape[0] == out_channels
        ]
        return torch.cat(rows, dim=1) if rows else None
    return None


def _filter_layers(model: nn.Module, graph: ChannelGraph) -> dict[str, torch.Tensor]:
    out = {}
    for name, layer in graph.layers.items():
        if layer.kind in _FILTER_KINDS and layer.out_labels:
            rows = filter_weights(
                model.get_submodule(name), kind=layer.kind, out_channels=len(layer.out_labels)
            )
            if rows is not None:
                out[name] = rows.float()
    return out


@IMPORTANCES.register("l1")
def l1_importance(model: nn.Module, graph: ChannelGraph, **_: Any) -> dict[str, torch.Tensor]:
    """Sum of |w| per output filter. Example: ``l1_importance(model, graph)["conv1"].shape == (16,)``."""
    return {name: rows.abs().sum(1) for name, rows in _filter_layers(model, graph).items()}


@IMPORTANCES.register("l2")
def l2_importance(model: nn.Module, graph: ChannelGraph, **_: Any) -> dict[str, torch.Tensor]:
    """Euclidean norm per output filter."""
    return {name: rows.norm(dim=1) for name, rows in _filter_layers(model, graph).items()}


@IMPORTANCES.register("fpgm")
def fpgm_importance(model: nn.Module, graph: ChannelGraph, **_: Any) -> dict[str, torch.Tensor]:
    """Sum of distances from each filter to the layer's other filters (He et al., FPGM)."""
    return {name: torch.cdist(rows, rows).sum(1) for name, rows in _filter_layers(model, graph).items()}


def _group_magnitude(model: nn.Module, graph: ChannelGraph, power: int) -> dict[str, torch.Tensor]:
    out = {name: rows.abs().pow(power).sum(1) for name, rows in _filter_layers(model, graph).items()}
    for name, layer in graph.layers.items():
        module = model.get_submodule(name)
        weight = getattr(module, "weight", None)
        if layer.out_labels and layer.kind not in _FILTER_KINDS:
            # BatchNorm / PReLU: the per-channel scale (gamma), as Torch-Pruning; biases are left out
            n_out = len(layer.out_labels)
            if isinstance(weight, torch.Tensor) and weight.dim() and weight.shape[0] == n_out:
                out[name] = weight.detach().float().reshape(n_out, -1).abs().pow(power).sum(1)
        # a grouped conv's input channels share its filters' score
        if layer.in_labels and layer.kind in ("conv", "linear") and getattr(module, "groups", 1) == 1:
            magnitude = weight.detach().float().abs().pow(power)
            out[f"{name}:in"] = magnitude.transpose(0, 1).reshape(magnitude.shape[1], -1).sum(1)
        if layer.in_labels and layer.kind == "conv_transpose" and module.groups == 1:  # inputs are its dim 0
            out[f"{name}:in"] = weight.detach().float().abs().pow(power).flatten(1).sum(1)
    return out


@IMPORTANCES.register("group_l1")
def group_l1_importance(model: nn.Module, graph: ChannelGraph, **_: Any) -> dict[str, torch.Tensor]:
    """``sum |w|`` over the producers' filters, the BatchNorm gammas and the consumers' input weights."""
    return _group_magnitude(model, graph, 1)


@IMPORTANCES.register("group_l2")
def group_l2_importance(model: nn.Module, graph: ChannelGraph, **_: Any) -> dict[str, torch.Tensor]:
    """``sum w^2`` over every weight of the coupled group that a channel carries (Torch-Pruning's p=2)."""
    return _group_magnitude(model, graph, 2)


@IMPORTANCES.register("bn_scale")
def bn_scale_importance(model: nn.Module, graph: ChannelGraph, **_: Any) -> dict[str, torch.Tensor]:
    """|gamma| of every affine BatchNorm; groups without BatchNorm get no score and are not pruned."""
    out = {}
    for name, layer in graph.layers.items():
        module = model.get_submodule(name)
        if layer.kind == "batchnorm" and getattr(module, "weight", None) is not None:
            out[name] = module.weight.detach().abs().float()
    return out


@IMPORTANCES.register("random")
def random_importance(
    model: nn.Module, graph: ChannelGraph, *, seed: int = 0, **_: Any
) -> dict[str, torch.Tensor]:
    """Uniform random scores from a generator seeded with ``seed`` (a baseline)."""
    gen = torch.Generator().manual_seed(seed)
    return {
        name: torch.rand(len(layer.out_labels), generator=gen)
        for name, layer in graph.layers.items()
        if layer.kind in _FILTER_KINDS and layer.out_labels
    }


@IMPORTANCES.register("taylor")
def taylor_importance(
    model: nn.Module, graph: ChannelGraph, *, loader: Any = None, max_batches: int = 4, **_: Any
) -> dict[str, torch.Tensor]:
    """First-order Taylor ``sum |w * grad|`` per output channel, over ``max_batches`` of ``loader``.

    A deep copy in eval mode is used, so the caller's model (weights, grads, BN statistics) is
    untouched. Cross-entropy against the loader's labels is the loss.
    """
    if loader is None:
        raise ConfigError(
            "importance='taylor' needs loader= (batches of (inputs, targets)) to compute gradients"
        )
    work = copy.deepcopy(model).eval()
    params: dict[str, list[nn.Parameter]] = {}
    transposed: dict[str, nn.Module] = {}  # a ConvTranspose's weight holds its outputs along dim 1
    for name, layer in graph.layers.items():
        if layer.out_labels:
            n_out = len(layer.out_labels)
            module = work.get_submodule(name)
            if layer.kind == "conv_transpose":
                transposed[name] = module
                params[name] = [p for p in (module.weight, module.bias) if p is not None and p.requires_grad]
                continue
            params[name] = [
                p for p in module.parameters() if p.dim() and p.shape[0] == n_out and p.requires_grad
            ]
    totals = {name: torch.zeros(len(graph.layers[name].out_labels)) for name, ps in params.items() if ps}
    seen = 0
    for batch in loader:
        if seen >= max_batches:
            break
        inputs, targets = split_batch(batch)
        if targets is None:
            raise ConfigError(
                "importance='taylor' needs batches with targets: (inputs, targets) or a dict with labels"
            )
        work.zero_grad(set_to_none=True)
        F.cross_entropy(output_tensor(call_model(work, inputs)), targets).backward()
        for name in totals:
            for p in params[name]:
                if p.grad is not None:
                    score = (p.detach() * p.grad).abs()
                    if name in transposed and p.dim() > 1:
                        score = transposed_rows(transposed[name], score)
                    totals[name] += score.reshape(score.shape[0], -1).sum(1)
        seen += 1
    if seen == 0:
        raise ConfigError("importance='taylor': the loader yielded no batches")
    return totals


def layer_scores(
    name: str,
    model: nn.Module,
    graph: ChannelGraph,
    *,
    loader: Any = None,
    max_batches: int = 4,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Run criterion ``name`` from :data:`IMPORTANCES`; unknown names raise ConfigError listing them.

    Example:
        >>> scores = layer_scores("l1", model, build_channel_graph(model, x))
    """
    fn = IMPORTANCES.get(name)
    return fn(model, graph, loader=loader, max_batches=max_batches, seed=seed)


def unit_scores(graph: ChannelGraph, scores: dict[str, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Score of every unit of every group: the sum over the unit's scored members.

    Output-channel members read ``scores[layer]``; input-channel members read ``scores["layer:in"]``
    where the criterion gives one (the group criteria).

    Groups none of whose layers carry a score are left out (they are not pruned).

    Example:
        >>> unit_scores(graph, layer_scores("l1", model, graph))[0].shape  # (units of group 0,)
    """
    out: dict[int, torch.Tensor] = {}
    for group in graph.groups:
        values = torch.zeros(group.num_units)
        scored = False
        for k, unit in enumerate(group.units):
            for layer, dim, idx in unit:
                key = layer if dim == "out" else f"{layer}:in"
                if key in scores:
                    values[k] += float(scores[key][idx])
                    scored = True
        if scored:
            out[group.id] = values
    return out
