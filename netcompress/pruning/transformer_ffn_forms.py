"""FFN blocks not named by their children (``transformer_blocks.FFN_PATTERNS``), found by their form.

``nn.Sequential(Linear(d, w), activation, [dropout], Linear(w, d))``: PatchTST's ``ff`` and hand-written layers;
also with a norm over ``d`` first (vit-pytorch's ``FeedForward.net``: ``LayerNorm, Linear, GELU, Dropout, Linear,
Dropout``), with the up layer and its activation in a nested ``Sequential`` (x-transformers' ``ff``), or with a
GLU module whose one Linear ``proj`` is ``2 * w`` wide and chunked in its forward (x-transformers' ``GLU``), or a
``Linear(d, 2 * w)`` followed by a parameterless GLU that chunks it (perceiver-pytorch's ``GEGLU``),
and diffusers' ``FeedForward.net`` (a ModuleList run in order: ``GELU``/``GEGLU`` holding ``proj``, Dropout, Linear).
:func:`~netcompress.pruning.transformer_blocks.find_blocks` takes one only inside a block that also holds an
attention block (a model's MLP head is not an FFN), and every prune checks it against the masked original.

Example:
    >>> sequential_ffn("ff", nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 8)))
    ('ff.0', 'ff.2', 32, 1)
"""

from __future__ import annotations

from torch import nn

_NORMS = (nn.LayerNorm, nn.RMSNorm)


def _leaves(name: str, module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The items of a Sequential, nested Sequentials opened, with their qualified names."""
    out = []
    for key, child in module.named_children():
        full = f"{name}.{key}"
        out += _leaves(full, child) if isinstance(child, nn.Sequential) else [(full, child)]
    return out


def _has_parameters(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _proj_activation(name: str, module: nn.Module) -> tuple[str, nn.Linear, int] | None:
    """(name, layer, halves) of an activation module holding one Linear child ``proj`` and no other parameters:
    a GLU (``2 * w`` wide, chunked: x-transformers' ``GLU``, diffusers' ``GEGLU``/``SwiGLU``, halves 2) or an
    activation of its output (diffusers' ``GELU``/``ApproximateGELU``/``LinearActivation``, halves 1)."""
    proj = getattr(module, "proj", None)
    if not isinstance(proj, nn.Linear):
        return None
    if sum(p.numel() for p in module.parameters()) != sum(p.numel() for p in proj.parameters()):
        return None
    return f"{name}.proj", proj, 2 if "glu" in type(module).__name__.lower() else 1


def _chunked_glu(module: nn.Module | None) -> bool:
    """A parameterless GLU module (``nn.GLU`` or a class named ``*GLU*``, e.g. perceiver-pytorch's ``GEGLU``) that
    splits its input in two halves, value | gate: neuron i is the up layer's rows i and width + i."""
    if module is None or _has_parameters(module) or "glu" not in type(module).__name__.lower():
        return False
    return not isinstance(module, nn.GLU) or module.dim == -1


def _in_order(name: str, module: nn.Module) -> bool:
    """Layers applied one after the other: a Sequential, or diffusers' ``FeedForward.net`` (a ModuleList its
    forward runs item after item)."""
    return isinstance(module, nn.Sequential) or (isinstance(module, nn.ModuleList) and name.rsplit(".")[-1] == "net")


def sequential_ffn(name: str, module: nn.Module) -> tuple[str, str, int, int] | None:
    """(up layer, down layer, width, halves) of a Sequential FFN (see the module docstring); ``halves`` is 2
    when the up layer holds value | gate for a GLU."""
    if not _in_order(name, module) or len(module) < 2:
        return None
    leaves = _leaves(name, module)
    weighted = [i for i, (_, m) in enumerate(leaves) if _has_parameters(m)]
    if weighted and isinstance(leaves[weighted[0]][1], _NORMS) and len(weighted) == 3:
        weighted = weighted[1:]  # a norm over d before the up layer: not touched by neuron pruning
    if len(weighted) != 2:
        return None
    (up_name, up), (down_name, down) = (leaves[i] for i in weighted)
    halves = 1
    if (proj := _proj_activation(up_name, up)) is not None:
        up_name, up, halves = proj
    if not (isinstance(up, nn.Linear) and isinstance(down, nn.Linear)):
        return None
    width = down.in_features
    after = leaves[weighted[0] + 1][1] if weighted[0] + 1 < len(leaves) else None
    if halves == 1 and up.out_features == 2 * width and _chunked_glu(after):
        halves = 2  # Perceiver's ``GEGLU()`` after the up layer: x, gates = up(x).chunk(2, -1)
    if up.out_features != halves * width or up.in_features != down.out_features:
        return None
    return up_name, down_name, width, halves


def depthwise_between(name: str, width: int, module: nn.Module) -> list[str]:
    """The depthwise convs over an FFN's ``width`` neurons inside its module ``name`` (SegFormer's Mix-FFN)."""
    return [
        f"{name}.{sub}" if name and sub else name or sub
        for sub, layer in module.named_modules()
        if isinstance(layer, nn.Conv2d) and layer.in_channels == layer.out_channels == layer.groups == width
    ]


def beside_attention(name: str, parent: str, attention: list[str], one_block: bool = False) -> bool:
    """Some block between the model and ``parent`` (Sequential FFN ``name``'s parent), or the model when it is one
    block (``one_block``: a class named ``*Block``/``*Layer``), also holds one of the ``attention`` units (their
    names), and ``name`` is not inside one (Swin-V2's position-bias MLP)."""
    if any(name.startswith(u + ".") for u in attention):
        return False
    while parent:
        if any(u.startswith(parent + ".") for u in attention):
            return True
        parent = parent.rpartition(".")[0]
    # the model is one block (lucidrains' ConformerBlock): its attention is in no numbered layer
    return one_block and bool(attention) and not any(p.isdigit() for u in attention for p in u.split("."))
