"""What a channel prune reports: parameters and MACs before and after, per-layer channels, architecture."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from netcompress.evaluation.macs import count_total_macs as count_total_macs

if TYPE_CHECKING:
    from netcompress.pruning.channel import ChannelPlan


def count_params(model: nn.Module) -> int:
    """Number of parameter elements. Example: ``count_params(nn.Linear(4, 3)) == 15``."""
    return sum(p.numel() for p in model.parameters())


def architecture_lines(model: nn.Module) -> list[str]:
    """Conv/Linear/BatchNorm layers as ``"Conv2d(3, 51)"``, ``"BatchNorm2d(51)"``, ``"Linear(53, 10)"``."""
    lines = []
    for module in model.modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            lines.append(f"{type(module).__name__}({module.in_channels}, {module.out_channels})")
        elif isinstance(module, nn.Linear):
            lines.append(f"Linear({module.in_features}, {module.out_features})")
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            lines.append(f"{type(module).__name__}({module.num_features})")
    return lines


def pruning_summary(
    original: nn.Module, pruned: nn.Module, plan: ChannelPlan, example_inputs: Any, **settings: Any
) -> dict[str, Any]:
    """JSON-able summary: params and MACs before/after, per layer and per group channels, architecture."""
    keep = plan.keep_indices()
    layers = []
    for name, layer in plan.graph.layers.items():
        row: dict[str, Any] = {"name": name, "type": layer.module_type}
        for dim in ("in", "out"):
            labels = layer.in_labels if dim == "in" else layer.out_labels
            if labels is not None:
                row[f"{dim}_channels"] = len(labels)
                row[f"{dim}_channels_after"] = len(keep[name][dim])
        layers.append(row)
    pruned_set = {plan.graph.uf.find(u) for u in plan.pruned_units}
    groups = []
    for group in plan.graph.groups:
        row = group.to_dict()
        row["channels_after"] = sum(1 for u in group.unit_ids if plan.graph.uf.find(u) not in pruned_set)
        groups.append(row)
    params = (count_params(original), count_params(pruned))
    macs = (count_total_macs(original, example_inputs), count_total_macs(pruned, example_inputs))
    return {
        **settings,
        "params_before": params[0],
        "params_after": params[1],
        "param_reduction": params[0] / max(params[1], 1),
        "macs_before": macs[0],
        "macs_after": macs[1],
        "mac_reduction": macs[0] / max(macs[1], 1),
        "channels_pruned": sum(g["channels"] - g["channels_after"] for g in groups),
        "layers": layers,
        "groups": groups,
        # per layer, the original indices of the input / output channels that survive (None: not channel-wise)
        "kept_indices": keep,
        "architecture": architecture_lines(pruned),
    }
