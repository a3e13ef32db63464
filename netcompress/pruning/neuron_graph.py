"""Where neuron pruning measures and cuts: activation statistics per pruning unit of the channel graph.

Neuron pruning (:mod:`netcompress.pruning.neuron`) uses the same dependency graph as channel pruning
(:func:`~netcompress.pruning.graph_tracing.trace_channels`), so residual adds, concatenations,
depthwise convs, flattens and GroupNorm are handled: channels that must be removed together (the
output of a residual stage and every block writing into it) form one pruning unit and share one
decision. Every activation (ReLU, GELU, ...) whose output carries a unit's channels is measured, and
the unit's statistics aggregate all of them: zeros and sums over every such activation output, so a
residual channel's APoZ counts its zeros after every block of its stage.

Example:
    >>> traced = trace_channels(model, x)
    >>> stats = unit_statistics(traced, batches)   # {group id: UnitStat}
    >>> 1 - stats[0].zeros / stats[0].count        # per-unit firing rate of group 0
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from netcompress.pruning.graph import as_inputs
from netcompress.pruning.graph_tracing import TracedChannels

ACTIVATION_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish,
    nn.Hardtanh, nn.Mish, nn.Softplus,
)  # fmt: skip
ACTIVATION_NAMES = frozenset(
    (
        "relu",
        "relu_",
        "relu6",
        "leaky_relu",
        "elu",
        "gelu",
        "silu",
        "sigmoid",
        "tanh",
        "hardswish",
        "hardtanh",
    )
    + ("mish", "softplus")
)


class UnitStat:
    """Per pruning unit of one group: zeros, sum and count of the activation values measured on it."""

    def __init__(self, num_units: int) -> None:
        self.zeros = torch.zeros(num_units, dtype=torch.float64)
        self.sums = torch.zeros(num_units, dtype=torch.float64)
        self.count = torch.zeros(num_units, dtype=torch.float64)


def is_activation(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[str(node.target)], ACTIVATION_MODULES)
    if node.op == "call_function":
        return getattr(node.target, "__name__", "") in ACTIVATION_NAMES
    return node.op == "call_method" and node.target in ACTIVATION_NAMES


class _Watcher(fx.Interpreter):
    """Runs the traced model and adds every watched activation output to its units' statistics."""

    def __init__(self, traced: TracedChannels, watch: dict[fx.Node, tuple[int, torch.Tensor, torch.Tensor]]):
        super().__init__(traced.gm)
        self.traced, self.watch = traced, watch
        self.stats: dict[int, UnitStat] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if n in self.watch:
            dim, group_ids, unit_ids = self.watch[n]
            x = out.detach().movedim(dim, -1)
            x = x.reshape(-1, x.shape[-1]).double()
            zeros, sums, rows = (x == 0).sum(0).double(), x.sum(0), float(x.shape[0])
            for gid in group_ids.unique().tolist():
                if gid < 0:  # channels of a group that is not measured
                    continue
                stat = self.stats.setdefault(gid, UnitStat(self.traced.graph.groups[gid].num_units))
                on = group_ids == gid
                stat.zeros.index_add_(0, unit_ids[on], zeros[on])
                stat.sums.index_add_(0, unit_ids[on], sums[on])
                stat.count.index_add_(
                    0, unit_ids[on], torch.full((int(on.sum()),), rows, dtype=torch.float64)
                )
        return out


def _watch_list(
    traced: TracedChannels, groups: set[int]
) -> dict[fx.Node, tuple[int, torch.Tensor, torch.Tensor]]:
    """For every activation node: its channel dim and, per channel, its group id and unit index (-1: none)."""
    graph = traced.graph
    where = {root: (g.id, k) for g in graph.groups if g.id in groups for k, root in enumerate(g.unit_ids)}
    modules = dict(traced.gm.named_modules())
    watch = {}
    for node, labels in traced.env.items():
        if labels is None or not is_activation(node, modules):
            continue
        pairs = [where.get(graph.uf.find(label), (-1, -1)) for label in labels]
        group_ids = torch.tensor([g for g, _ in pairs])
        unit_ids = torch.tensor([k for _, k in pairs])
        if (group_ids >= 0).any():
            watch[node] = (traced.channel_dim(node), group_ids, unit_ids)
    return watch


@torch.no_grad()
def unit_statistics(traced: TracedChannels, batches: Iterable[Any], groups: set[int]) -> dict[int, UnitStat]:
    """Activation statistics per unit of each group in ``groups``, over ``batches`` of model inputs.

    Groups no activation carries are absent from the result (nothing to measure them by).
    """
    watcher = _Watcher(traced, _watch_list(traced, groups))
    for inputs in batches:
        watcher.run(*as_inputs(inputs))
    return watcher.stats
