"""FFN blocks not named by their children (``transformer_blocks.FFN_PATTERNS``), found by their form.

``nn.Sequential(Linear(d, w), activation, [dropout], Linear(w, d))``: PatchTST's ``ff`` and hand-written layers.
:func:`~netcompress.pruning.transformer_blocks.find_blocks` takes one only beside an attention block of the same
layer (a model's MLP head is not an FFN), and every prune checks it against the masked original.

Example:
    >>> sequential_ffn("ff", nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 8))).width
    32
"""

from __future__ import annotations

from torch import nn

from netcompress.pruning.transformer_blocks import FFNUnit, in_out, is_dense


def sequential_ffn(name: str, module: nn.Module) -> FFNUnit | None:
    """The FFN unit of a ``Sequential(Linear(d, w), parameter-free modules..., Linear(w, d))``, else None."""
    if not isinstance(module, nn.Sequential) or len(module) < 3:
        return None
    first, last, middle = module[0], module[-1], list(module)[1:-1]
    if not (is_dense(first) and is_dense(last)) or any(next(m.parameters(), None) is not None for m in middle):
        return None
    (d_in, width), (w_in, d_out) = in_out(first), in_out(last)
    if width != w_in or d_in != d_out:
        return None
    return FFNUnit(name, [f"{name}.0"], f"{name}.{len(module) - 1}", width)
