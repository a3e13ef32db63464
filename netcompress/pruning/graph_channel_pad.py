"""Channel ids through ``F.pad`` when it pads the channel dim (PyramidNet's zero-padded shortcut)."""

from __future__ import annotations

import torch
import torch.fx

from netcompress.pruning.graph_tensor_rules import CHANNEL_PAD, Labels, RuleContext, _describe, _fail, _shape


def channel_pad(node: torch.fx.Node, ctx: RuleContext, labels: list[int]) -> Labels:
    """``F.pad`` adding constant channels (PyramidNet's shortcut): new ids, never removed; the input's stay."""
    args = [*node.args, None, None][1:3]
    pad, mode = node.kwargs.get("pad", args[0]), node.kwargs.get("mode", args[1] or "constant")
    at = (len(_shape(node)) - 2) * 2  # F.pad lists (before, after) pairs from the last dim backwards
    widths = list(pad)[at : at + 2] if isinstance(pad, (tuple, list)) else []
    if mode != "constant" or len(widths) != 2 or not all(isinstance(w, int) and w >= 0 for w in widths):
        raise _fail(node, f"it pads or crops the channel dim ({pad!r}, {mode!r}); only constant padding by fixed "
                          "widths is followed")  # fmt: skip
    front, back = ctx.graph.uf.new(widths[0]), ctx.graph.uf.new(widths[1])
    ctx.graph.block(front + back, f"{_describe(node)} adds them as constant channels")
    return [*front, *labels, *back]


CHANNEL_PAD.append(channel_pad)
