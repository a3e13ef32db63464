"""Cross-layer equalisation (Nagel et al., "Data-Free Quantization", 2019).

For ``A -> ReLU -> B`` (ReLU is positively homogeneous: ``relu(x / s) = relu(x) / s`` for s > 0),
dividing output channel ``i`` of A by ``s_i`` and multiplying input channel ``i`` of B by ``s_i``
leaves the network's function unchanged. Choosing ``s_i = sqrt(r1_i / r2_i)`` (``r`` = channel
weight ranges) gives both layers the same per-channel range, which rescues per-tensor
quantization of depthwise convolutions whose channels have very uneven ranges.

Example:
    >>> gm = fold_bn(model)
    >>> summary = equalize_cross_layer_(gm)   # in place on the folded copy
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from netcompress.quantization.tracing import module_of

_IDENTITY_LIKE = (nn.ReLU, nn.Identity)
_STOCK = {nn.Conv1d.forward, nn.Conv2d.forward, nn.Linear.forward}


def _is_depthwise(m: nn.Module) -> bool:
    return (
        isinstance(m, (nn.Conv1d, nn.Conv2d)) and m.groups == m.in_channels == m.out_channels and m.groups > 1
    )


def _plain(m: nn.Module | None) -> bool:
    if m is None or type(m).forward not in _STOCK:
        return False
    return isinstance(m, nn.Linear) or m.groups == 1 or _is_depthwise(m)


def _homogeneous(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(module_of(gm, node), _IDENTITY_LIKE)
    if node.op == "call_function":
        return node.target in (F.relu, torch.relu)
    return node.op == "call_method" and node.target == "relu"


def find_equalization_pairs(gm: fx.GraphModule) -> list[tuple[str, str]]:
    """``(A, B)`` module names where A's output reaches only B, through at most ReLU/Identity."""
    pairs = []
    for node in gm.graph.nodes:
        first = module_of(gm, node)
        if not _plain(first) or len(node.users) != 1:
            continue
        nxt = next(iter(node.users))
        while _homogeneous(gm, nxt) and len(nxt.users) == 1:
            nxt = next(iter(nxt.users))
        second = module_of(gm, nxt)
        if not _plain(second) or type(first) is not type(second):
            continue
        if first.weight.shape[0] != (
            second.weight.shape[0] if _is_depthwise(second) else second.weight.shape[1]
        ):
            continue
        pairs.append((str(node.target), str(nxt.target)))
    return pairs


def _equalize_pair(first: nn.Module, second: nn.Module) -> float:
    """Rescale one pair in place; returns the largest |log s| applied (0 = already equal)."""
    with torch.no_grad():
        w1 = first.weight
        r1 = w1.abs().reshape(w1.shape[0], -1).amax(dim=1)
        w2 = second.weight
        if _is_depthwise(second):
            r2 = w2.abs().reshape(w2.shape[0], -1).amax(dim=1)
        else:
            r2 = w2.abs().transpose(0, 1).reshape(w2.shape[1], -1).amax(dim=1)
        ok = (r1 > 0) & (r2 > 0)
        s = torch.where(ok, torch.sqrt(r1 / torch.where(ok, r2, torch.ones_like(r2))), torch.ones_like(r1))
        w1.div_(s.reshape([-1] + [1] * (w1.dim() - 1)))
        if first.bias is not None:
            first.bias.div_(s)
        if _is_depthwise(second):
            w2.mul_(s.reshape([-1] + [1] * (w2.dim() - 1)))
        else:
            w2.mul_(s.reshape([1, -1] + [1] * (w2.dim() - 2)))
        return float(s.log().abs().max())


def equalize_cross_layer_(gm: fx.GraphModule, *, iterations: int = 4) -> dict[str, Any]:
    """Equalise every ``A -> (ReLU) -> B`` pair of ``gm`` IN PLACE, ``iterations`` sweeps.

    Example:
        >>> equalize_cross_layer_(fold_bn(model))["pairs"]
        [['features.0', 'features.2'], ...]
    """
    pairs = find_equalization_pairs(gm)
    last_change = 0.0
    for _ in range(iterations):
        last_change = max(
            (_equalize_pair(gm.get_submodule(a), gm.get_submodule(b)) for a, b in pairs), default=0.0
        )
    return {"pairs": [list(p) for p in pairs], "num_pairs": len(pairs), "last_max_log_scale": last_change}
