"""The channel dependency graph: which channel dimensions of which layers must shrink together.

Removing output channel ``i`` of a convolution is only correct if every tensor that carries
that channel loses it too: the BatchNorm after it, the next layer's input channel, the other
branch of a residual add, the slice of a concatenation, the ``H*W`` input features of a Linear
after a flatten. This module finds those couplings by tracing the model with ``torch.fx`` and
running ``ShapeProp`` on example inputs, then labelling every element of every tensor's channel
dimension (dim 1) with an id:

* a producer (Conv, Linear, or a module implementing the pruning protocol below) creates fresh ids;
* ops that keep channels pass ids through; ``add``/``mul``/``sub`` between tensors unite the
  ids of both operands; ``cat`` on dim 1 concatenates id lists; a flatten repeats each id ``H*W``
  times; a depthwise conv unites each input channel with its output channels;
* a tensor's channels need not sit at dim 1: permute/transpose move them (channels-last
  ``(N, H, W, C)``, tokens ``(N, L, C)``) and a Linear acts on the last dim;
* GroupNorm unites the channels of each of its groups, so a group is kept or removed whole;
* the model's inputs and outputs, constants, channels that broadcast, and channels a LayerNorm
  (or RMSNorm) normalises over are *blocked*: removing one would change the statistics of the
  others, so they are kept whole and the group's ``reason`` names the norm.

Ids united by a union-find form *pruning units*: each unit is removed whole or kept whole.
Units whose members sit in the same layers form a :class:`ChannelGroup` (for example: the
output channels of ``conv1``, ``bn1`` and the input channels of ``conv2``). Any op the rules do
not know raises :class:`~netcompress.core.UnsupportedModelError` naming the op and node, so an
unknown model is refused rather than pruned wrongly.

Pruning protocol for custom layers (e.g. SincNet's sinc filter bank): a module with an int
attribute ``out_channels`` and a method ``prune_out_channels(keep_idx: LongTensor)`` is treated
as a leaf producer; optionally ``prune_in_channels(keep_idx)`` makes its input prunable too,
and ``channel_weights() -> Tensor[out, ...]`` gives importance functions its per-channel weights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
import torch.fx
from torch import nn

from netcompress.core.errors import ConfigError, UnsupportedModelError
from netcompress.evaluation.harness import eval_mode as eval_mode  # the one eval-mode context


def is_prunable_custom(module: nn.Module) -> bool:
    """True when ``module`` implements the pruning protocol (``out_channels`` + ``prune_out_channels``)."""
    return isinstance(getattr(module, "out_channels", None), int) and callable(
        getattr(module, "prune_out_channels", None)
    )


class UnionFind:
    """Channel ids and their unions; ``find`` returns the representative (the unit id)."""

    def __init__(self) -> None:
        self.parent: list[int] = []

    def new(self, count: int) -> list[int]:
        start = len(self.parent)
        self.parent.extend(range(start, start + count))
        return list(range(start, start + count))

    def find(self, label: int) -> int:
        root = label
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[label] != root:  # path compression keeps later finds O(1)
            self.parent[label], label = root, self.parent[label]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@dataclasses.dataclass
class LayerChannels:
    """The channel ids along one layer's input and output channel dimensions.

    ``kind`` selects the surgery: "conv", "conv_transpose", "linear", "batchnorm", "instancenorm",
    "groupnorm", "prelu" or "custom".
    ``in_labels`` is None where the input dimension is not pruned by this layer (BatchNorm and
    PReLU keep one per-channel vector, stored in ``out_labels``).
    """

    name: str
    kind: str
    module_type: str
    in_labels: list[int] | None
    out_labels: list[int] | None


# layers that hold one vector per channel and produce nothing themselves
PER_CHANNEL_KINDS = ("batchnorm", "instancenorm", "groupnorm", "prelu")


@dataclasses.dataclass
class ChannelGroup:
    """Coupled channels that are pruned together; ``units[k]`` lists ``(layer, "in"|"out", index)``."""

    id: int
    units: list[list[tuple[str, str, int]]]
    unit_ids: list[int]
    producers: list[str]  # layers whose filters make these channels (Conv, Linear, protocol modules)
    out_layers: list[str]  # producers plus per-channel layers (BatchNorm, PReLU) on these channels
    prunable: bool
    reason: str = ""

    @property
    def num_units(self) -> int:
        return len(self.units)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "producers": list(self.producers),
            "layers": list(self.out_layers),
            "channels": self.num_units,
            "members": sorted({f"{layer}.{dim}" for unit in self.units[:1] for layer, dim, _ in unit}),
            "prunable": self.prunable,
            "reason": self.reason,
        }


class ChannelGraph:
    """Layers with channel ids, the union-find over ids, and the resulting groups.

    Built by :func:`build_channel_graph`; used by :mod:`netcompress.pruning.channel` to choose
    units and compute, per layer, which input/output channel indices survive.
    """

    def __init__(self) -> None:
        self.uf = UnionFind()
        self.layers: dict[str, LayerChannels] = {}
        self.blocked: list[int] = []
        self.block_reasons: list[tuple[int, str]] = []  # (a label, why its channels are kept whole)
        self.groups: list[ChannelGroup] = []
        self.example_output_shapes: list[tuple[int, ...]] = []
        self.pieces: dict[Any, list[list[int]]] = {}  # fx node of a split/chunk -> each piece's channel ids

    def block(self, labels: list[int] | None, reason: str = "") -> None:
        if labels:
            self.blocked.extend(labels)
            if reason:
                self.block_reasons.append((labels[0], reason))

    def is_blocked(self, labels: list[int]) -> bool:
        """True when every label is already blocked (blocking is permanent, so this stays true)."""
        roots = {self.uf.find(b) for b in self.blocked}
        return all(self.uf.find(label) in roots for label in labels)

    def unite(self, a: list[int], b: list[int], *, where: str) -> None:
        if len(a) != len(b):
            raise UnsupportedModelError(f"{where}: cannot couple {len(a)} channels with {len(b)} channels")
        for x, y in zip(a, b):
            self.uf.union(x, y)

    def finalize(self) -> None:
        """Collect units (union-find roots) into groups of units sharing the same member layers."""
        blocked_roots = {self.uf.find(b) for b in self.blocked}
        reasons: dict[int, list[str]] = {}
        for label, why in self.block_reasons:
            reasons.setdefault(self.uf.find(label), []).append(why)
        members: dict[int, list[tuple[str, str, int]]] = {}
        for layer in self.layers.values():
            for dim, labels in (("out", layer.out_labels), ("in", layer.in_labels)):
                for idx, label in enumerate(labels or ()):
                    members.setdefault(self.uf.find(label), []).append((layer.name, dim, idx))
        by_signature: dict[frozenset, list[int]] = {}
        for root, mem in members.items():
            signature = frozenset((layer, dim) for layer, dim, _ in mem)
            by_signature.setdefault(signature, []).append(root)
        groups = []
        for signature, roots in by_signature.items():
            roots.sort(key=lambda r: min((layer, dim, i) for layer, dim, i in members[r]))
            out_layers = sorted({layer for layer, dim in signature if dim == "out"})
            producers = [n for n in out_layers if self.layers[n].kind not in PER_CHANNEL_KINDS]
            blocked = any(r in blocked_roots for r in roots)
            reason = ""
            if blocked:
                named = sorted({why for r in roots for why in reasons.get(r, ())})
                reason = "; ".join(named) or "coupled to the model's input/output, a constant, or a broadcast"
            elif not producers:
                reason = "no layer produces these channels"
            groups.append(
                ChannelGroup(
                    id=0,
                    units=[sorted(members[r]) for r in roots],
                    unit_ids=roots,
                    producers=producers,
                    out_layers=out_layers,
                    prunable=not blocked and bool(producers),
                    reason=reason,
                )
            )
        order = list(self.layers)
        groups.sort(
            key=lambda g: (min((order.index(p) for p in g.producers), default=len(order)), g.unit_ids[0])
        )
        for i, group in enumerate(groups):
            group.id = i
        self.groups = groups

    def keep_indices(self, pruned_units: set[int]) -> dict[str, dict[str, list[int] | None]]:
        """Per layer, the surviving input and output channel indices when ``pruned_units`` go."""
        pruned = {self.uf.find(u) for u in pruned_units}
        out: dict[str, dict[str, list[int] | None]] = {}
        for name, layer in self.layers.items():
            keep: dict[str, list[int] | None] = {}
            for dim, labels in (("in", layer.in_labels), ("out", layer.out_labels)):
                keep[dim] = (
                    None
                    if labels is None
                    else [i for i, lb in enumerate(labels) if self.uf.find(lb) not in pruned]
                )
            out[name] = keep
        return out

    def prunable_groups(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    def summary(self) -> list[dict[str, Any]]:
        return [g.to_dict() for g in self.groups]


def as_inputs(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    """Positional inputs for the channel tracer (torch.fx ``ShapeProp`` runs on positional args).

    A dict (keyword inputs) is refused naming the tracer; code that only *runs* the model uses
    :func:`netcompress.core.inputs.call_model`, which takes all three forms.
    """
    if isinstance(example_inputs, Mapping):
        raise ConfigError(
            "channel pruning's torch.fx channel tracer (netcompress.pruning.graph_tracing) takes a tensor "
            f"or a tuple of tensors as example_inputs, not a dict (keys {sorted(map(str, example_inputs))})"
        )
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if (
        isinstance(example_inputs, (tuple, list))
        and example_inputs
        and all(isinstance(t, torch.Tensor) for t in example_inputs)
    ):
        return tuple(example_inputs)
    raise ConfigError(
        f"example_inputs must be a tensor or a tuple of tensors, got {type(example_inputs).__name__}"
    )
