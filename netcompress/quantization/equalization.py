"""Cross-layer equalisation (Nagel et al., "Data-Free Quantization", 2019).

For ``A -> ReLU -> B`` (ReLU is positively homogeneous: ``relu(x / s) = relu(x) / s`` for s > 0),
dividing output channel ``i`` of A by ``s_i`` and multiplying input channel ``i`` of B by ``s_i``
leaves the network's function unchanged. Choosing ``s_i = sqrt(r1_i / r2_i)`` (``r`` = channel
weight ranges) gives both layers the same per-channel range, which rescues per-tensor
quantization of depthwise convolutions whose channels have very uneven ranges.

The path from A to B may hold any op that commutes with a positive per-channel scale: ReLU and
LeakyReLU, average and max pooling (global or not, module or function), a spatial ``mean``,
dropout, identity, and a flatten; after a flatten of ``(N, C, H, W)`` each channel owns ``H*W``
consecutive inputs of a following Linear, which get that channel's scale. Depthwise
convolutions pair on either side (their channels are the pair's channels). A Conv/Linear subclass
with its own ``forward`` (TF "same" padding) pairs when a probe shows the scales pass through it.

Example:
    >>> gm = fold_bn(model)
    >>> summary = equalize_cross_layer_(gm)   # in place on the folded copy
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from netcompress.quantization.kernel_calls import has_own_forward, probe_input
from netcompress.quantization.tracing import module_of, trace_for_quantization

# ops f with f(s * x) = s * f(x) for a positive per-channel s (channels on dim 1)
_COMMUTING_MODULES = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
)
_COMMUTING_FUNCTIONS = {
    F.relu,
    torch.relu,
    F.leaky_relu,
    F.dropout,
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
}
_COMMUTING_METHODS = {"relu", "contiguous"}


def _is_depthwise(m: nn.Module) -> bool:
    return (
        isinstance(m, (nn.Conv1d, nn.Conv2d)) and m.groups == m.in_channels == m.out_channels and m.groups > 1
    )


def _scales_pass_through(m: nn.Module) -> bool:
    """A probe: the layer's own forward is linear per output channel and per input channel."""
    x = probe_input(m)
    if x is None:
        return False
    gen = torch.Generator().manual_seed(3)
    s_out = torch.rand(m.weight.shape[0], generator=gen) + 0.5
    s_in = torch.rand(x.shape[1], generator=gen) + 0.5
    w = m.weight.detach().clone()
    b = None if m.bias is None else m.bias.detach().clone()
    view_in = [1, -1] + [1] * (x.dim() - 2)
    try:
        with torch.no_grad():
            y = m(x)
            m.weight.mul_(s_out.reshape([-1] + [1] * (w.dim() - 1)))
            if b is not None:
                m.bias.mul_(s_out)
            out_ok = torch.allclose(m(x), y * s_out.reshape(view_in), rtol=1e-4, atol=1e-5)
            m.weight.copy_(w)
            if b is not None:
                m.bias.copy_(b)
            if _is_depthwise(m):
                m.weight.mul_(s_in.reshape([-1] + [1] * (w.dim() - 1)))
            else:
                m.weight.mul_(s_in.reshape([1, -1] + [1] * (w.dim() - 2)))
            y_in = m(x)
            m.weight.copy_(w)
            if b is not None:
                m.bias.copy_(b)
            in_ok = torch.allclose(y_in, m(x * s_in.reshape(view_in)), rtol=1e-4, atol=1e-5)
    except Exception:  # a forward the probe does not fit: not paired
        with torch.no_grad():
            m.weight.copy_(w)
            if b is not None:
                m.bias.copy_(b)
        return False
    return bool(out_ok and in_ok)


def _plain(m: nn.Module | None) -> bool:
    if not isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
        return False
    if not (isinstance(m, nn.Linear) or m.groups == 1 or _is_depthwise(m)):
        return False
    return not has_own_forward(m) or _scales_pass_through(m)


def _commutes(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(module_of(gm, node), _COMMUTING_MODULES)
    if node.op == "call_function":
        return node.target in _COMMUTING_FUNCTIONS
    if node.op == "call_method" and node.target == "mean":
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        dims = dims if isinstance(dims, (tuple, list)) else [dims]
        return all(isinstance(d, int) and d >= 2 for d in dims)
    return node.op == "call_method" and node.target in _COMMUTING_METHODS


def _is_flatten(gm: fx.GraphModule, node: fx.Node) -> bool:
    """A flatten from dim 1: channels stay the outermost of the flattened features."""
    if node.op == "call_module":
        m = module_of(gm, node)
        return isinstance(m, nn.Flatten) and m.start_dim == 1
    if node.op == "call_function" and node.target is torch.flatten:
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        return start == 1 and node.kwargs.get("end_dim", -1) == -1 and len(node.args) < 3
    if node.op == "call_method" and node.target == "flatten":
        return (node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)) == 1
    return False


def _in_channels(m: nn.Module) -> int:
    return m.weight.shape[0] if _is_depthwise(m) else m.weight.shape[1]


def find_equalization_pairs(gm: nn.Module) -> list[tuple[str, str]]:
    """``(A, B)`` module names where A's output reaches only B through ops that commute with scales."""
    return [(a, b) for a, b, _ in _pairs(gm)]


def _graph_module(model: nn.Module) -> fx.GraphModule:
    """``model`` itself when traced already; else its trace, which shares its submodules (``fold_bn`` of a
    model without BatchNorm returns the model's own class: scaling the traced layers scales the model's)."""
    return model if isinstance(model, fx.GraphModule) else trace_for_quantization(model)


def _pairs(gm: nn.Module) -> list[tuple[str, str, int]]:
    """``(A, B, k)``: each of A's output channels feeds ``k`` consecutive inputs of B (k > 1 after a flatten)."""
    gm = _graph_module(gm)
    pairs = []
    for node in gm.graph.nodes:
        first = module_of(gm, node)
        if not isinstance(first, (nn.Conv1d, nn.Conv2d, nn.Linear)) or len(node.users) != 1:
            continue
        nxt, flattened, reduced = next(iter(node.users)), False, False
        while len(nxt.users) == 1 and (_commutes(gm, nxt) or (not flattened and _is_flatten(gm, nxt))):
            flattened = flattened or _is_flatten(gm, nxt)
            reduced = reduced or (nxt.op == "call_method" and nxt.target == "mean")
            nxt = next(iter(nxt.users))
        second = module_of(gm, nxt)
        if not isinstance(second, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            continue
        channels, inputs = first.weight.shape[0], _in_channels(second)
        if isinstance(first, nn.Linear) and not isinstance(second, nn.Linear):
            continue  # a Linear's features do not become a conv's channels through these ops
        if isinstance(second, nn.Linear) and not isinstance(first, nn.Linear) and not (flattened or reduced):
            continue  # a Linear on a conv's output acts on its last spatial dim, not its channels
        if flattened and not isinstance(second, nn.Linear):
            continue
        k = inputs // channels if channels and inputs % channels == 0 else 0
        if k < 1 or (k > 1 and not flattened) or (isinstance(first, nn.Linear) and k != 1):
            continue
        if not (_plain(first) and _plain(second)):
            continue
        pairs.append((str(node.target), str(nxt.target), k))
    return pairs


def _equalize_pair(first: nn.Module, second: nn.Module, k: int = 1) -> float:
    """Rescale one pair in place; returns the largest |log s| applied (0 = already equal)."""
    with torch.no_grad():
        w1 = first.weight
        r1 = w1.abs().reshape(w1.shape[0], -1).amax(dim=1)
        w2 = second.weight
        if _is_depthwise(second):
            r2 = w2.abs().reshape(w2.shape[0], -1).amax(dim=1)
        else:
            r2 = w2.abs().transpose(0, 1).reshape(w1.shape[0], -1).amax(dim=1)  # k inputs per channel
        ok = (r1 > 0) & (r2 > 0)
        s = torch.where(ok, torch.sqrt(r1 / torch.where(ok, r2, torch.ones_like(r2))), torch.ones_like(r1))
        w1.div_(s.reshape([-1] + [1] * (w1.dim() - 1)))
        if first.bias is not None:
            first.bias.div_(s)
        if _is_depthwise(second):
            w2.mul_(s.reshape([-1] + [1] * (w2.dim() - 1)))
        else:
            w2.mul_(s.repeat_interleave(k).reshape([1, -1] + [1] * (w2.dim() - 2)))
        return float(s.log().abs().max())


def equalize_cross_layer_(gm: nn.Module, *, iterations: int = 4) -> dict[str, Any]:
    """Equalise every ``A -> (commuting ops) -> B`` pair of ``gm`` IN PLACE, ``iterations`` sweeps.

    Example:
        >>> equalize_cross_layer_(fold_bn(model))["pairs"]
        [['features.0', 'features.2'], ...]
    """
    pairs = _pairs(gm)
    last_change = 0.0
    for _ in range(iterations):
        last_change = max(
            (_equalize_pair(gm.get_submodule(a), gm.get_submodule(b), k) for a, b, k in pairs), default=0.0
        )
    return {
        "pairs": [[a, b] for a, b, _ in pairs],
        "num_pairs": len(pairs),
        "last_max_log_scale": last_change,
    }
