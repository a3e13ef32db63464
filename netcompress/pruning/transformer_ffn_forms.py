"""FFN blocks not named by their children (``transformer_blocks.FFN_PATTERNS``), found by their form.

``nn.Sequential(Linear(d, w), activation, [dropout], Linear(w, d))``: PatchTST's ``ff`` and hand-written layers.
:func:`~netcompress.pruning.transformer_blocks.find_blocks` takes one only beside an attention block of the same
layer (a model's MLP head is not an FFN), and every prune checks it against the masked original.

Example:
    >>> sequential_ffn("ff", nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 8)))
    ('ff.0', 'ff.2', 32)
"""

from __future__ import annotations

from torch import nn


def sequential_ffn(name: str, module: nn.Module) -> tuple[str, str, int] | None:
    """(up layer, down layer, width) of a ``Sequential(Linear(d, w), parameter-free modules..., Linear(w, d))``."""
    if not isinstance(module, nn.Sequential) or len(module) < 3:
        return None
    first, last, middle = module[0], module[-1], list(module)[1:-1]
    if not (isinstance(first, nn.Linear) and isinstance(last, nn.Linear)):
        return None
    if any(next(m.parameters(), None) is not None for m in middle):
        return None
    if first.out_features != last.in_features or first.in_features != last.out_features:
        return None
    return f"{name}.0", f"{name}.{len(module) - 1}", first.out_features
