"""The cost model's corrections, shared by the float and int8 latency searches.

- :func:`smooth_savings`: every group's measured saving made non-decreasing as it narrows; an entry
  timed slower than the unpruned model (noise) takes a MAC prior instead;
- :func:`interaction_terms`: the layers between two candidate groups, whose cost the per-group savings
  count twice (``CostTable.pairs``);
- :func:`layer_weights`: MACs (latency) or parameters (bytes) per layer, what both split costs by.

Example:
    >>> weights = layer_weights(model, x, "latency")
    >>> smooth_savings(variants, table, weights); table.pairs = interaction_terms(variants, table, weights)
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any

from torch import nn

from netcompress.pruning.latency_table import CostTable


def interaction_terms(
    variants: Any, table: CostTable, layer_weights: Mapping[str, float]
) -> list[tuple[str, str, float]]:
    """``(in_label, out_label, cost)`` of every layer whose input and output channels are two candidate groups.

    A layer's cost is estimated from the measured saving of each of its two groups at their narrowest
    width, per share of channels removed, split among the layers touching that group by
    ``layer_weights`` (MACs for latency, parameters for bytes); the two estimates are averaged.
    """
    graph = variants.graph
    group_of = {graph.uf.find(u): g.id for g in graph.groups for u in g.unit_ids}
    label_of = {gid: label for label, gid in variants.labels.items()}
    ends: dict[str, tuple[int | None, int | None]] = {}
    for name, layer in graph.layers.items():
        if layer.kind in ("conv", "conv_transpose", "linear", "custom") and layer.in_labels and layer.out_labels:
            ends[name] = (
                group_of.get(graph.uf.find(layer.in_labels[0])),
                group_of.get(graph.uf.find(layer.out_labels[0])),
            )
    per_share = {}
    for label, gid in variants.labels.items():
        last = len(table.widths) - 1
        removed = table.removed(label, last)
        touching = sum(layer_weights.get(n, 0.0) for n, io in ends.items() if gid in io)
        if removed > 0 and touching > 0:
            per_share[gid] = max(table.saving(label, last), 0.0) / removed / touching
    pairs = []
    for name, (gin, gout) in ends.items():
        if gin in per_share and gout in per_share and gin != gout:
            cost = layer_weights.get(name, 0.0) * (per_share[gin] + per_share[gout]) / 2
            if cost > 0:
                pairs.append((label_of[gin], label_of[gout], cost))
    return pairs


def smooth_savings(variants: Any, table: CostTable, layer_weights: Mapping[str, float]) -> int:
    """Make every group's saving non-decreasing as it narrows; an entry timed slower than the unpruned model
    (below the noise: a ResNet-20 stage group alone on a loaded machine) gets a prior instead, the group's
    MACs (bytes: parameters) removed times the table's median measured ms per MAC. Returns how many entries
    took the prior; changes ``table.costs`` in memory only (the cache keeps the timings)."""
    graph = variants.graph
    group_of = {graph.uf.find(u): g.id for g in graph.groups for u in g.unit_ids}
    touching: dict[int, float] = {}
    for name, layer in graph.layers.items():
        ids = {group_of.get(graph.uf.find(lb[0])) for lb in (layer.in_labels, layer.out_labels) if lb}
        for gid in ids - {None}:
            touching[gid] = touching.get(gid, 0.0) + layer_weights.get(name, 0.0)
    weight = {label: touching.get(gid, 0.0) for label, gid in variants.labels.items()}
    rates = [table.saving(g, i) / (weight[g] * table.removed(g, i))
             for g in table.costs for i in range(1, len(table.widths))
             if table.saving(g, i) > 0 and weight[g] > 0 and table.removed(g, i) > 0]  # fmt: skip
    per_unit = statistics.median(rates) if rates else 0.0
    priors = 0
    for label, costs in table.costs.items():
        best = 0.0
        for i in range(1, len(costs)):
            saving = table.base - costs[i]
            if saving < 0 and table.removed(label, i) > 0:
                saving, priors = per_unit * weight[label] * table.removed(label, i), priors + 1
            best = max(best, saving)
            costs[i] = table.base - best
    return priors


def layer_weights(model: nn.Module, example_inputs: Any, target: str) -> dict[str, float]:
    if target == "latency":
        from netcompress.evaluation.macs import count_macs

        return {k: float(v) for k, v in count_macs(model, example_inputs)[1].items()}
    return {n: float(sum(p.numel() for p in m.parameters(recurse=False))) for n, m in model.named_modules()}
