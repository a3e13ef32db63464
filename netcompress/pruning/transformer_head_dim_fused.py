"""Head-dim pruning of fused q|k|v attention: one ``Linear`` holding q, k and v (or k and v), split in the forward.

The layouts the block finder reads from the traced forward (:mod:`~netcompress.pruning.transformer_qkv_graph`):
``"packed"`` (q | k | v, each head after head: vit-pytorch's ``to_qkv(x).chunk(3)`` + ``rearrange(h=heads)``, timm's
``qkv(x).reshape(B, N, 3, num_heads, head_dim)``, MONAI's ``SABlock``) and ``"packed_heads"`` (per head q_h | k_h | v_h,
GPT-NeoX order), and ``"q_kv"`` (a query Linear and one k|v Linear, ``to_kv(context).chunk(2)``: vit-pytorch's CaiT
and CrossViT). Every head keeps the same number of q/k and v channels (the fused width is split in equal thirds or
reshaped with one head size); the kept rows of the fused layer and the output projection's matching columns stay,
and a head-size attribute equal to the old size (timm's ``head_dim``) is set to the kept count.

The score scale is the one thing the layer rows cannot show: a forward scaling by a stored ``scale`` keeps the
original ``1/sqrt(head_dim)``, one calling ``scaled_dot_product_attention`` without ``scale`` would use the kept
count. So each pruned module is compared on a probe input with the original whose removed rows are zeroed; where they
differ, the kept query rows are multiplied by ``sqrt(kept / head_dim)`` (the same scores under the default scale) and
compared again; a module that still differs is refused by name.

Example:
    >>> apply_fused_(model, unit, qk_idx, v_idx)  # in place; then masked_fused_(reference, unit, qk_idx, v_idx)
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from netcompress.core.errors import ConfigError, UnsupportedModelError
from netcompress.pruning.transformer_blocks import HEAD_DIM_ATTRS, AttentionUnit

FUSED = ("packed", "packed_heads", "q_kv")


def check_fused_unit(module: nn.Module, unit: AttentionUnit) -> None:
    """Raise an error naming ``module`` (the attention module of ``unit``) unless its fused layer can be sliced."""
    where = f"head-dim pruning {unit.name!r} ({type(module).__name__})"
    if unit.num_kv_heads != unit.num_heads:
        raise UnsupportedModelError(f"{where}: grouped-query attention is not supported")
    rel = _relative(unit)
    for name in (rel.q, rel.k, rel.o):
        if not isinstance(module.get_submodule(name), nn.Linear):
            kind = type(module.get_submodule(name)).__name__
            raise UnsupportedModelError(f"{where}: {unit.layout} q/k/v layer {name!r} is a {kind}, not nn.Linear")


def _index(unit: AttentionUnit, idx: list[list[int]], part: int) -> torch.Tensor:
    """Rows of the channels ``idx[h]`` of part ``part`` (0 q, 1 k, 2 v) of every head in the layer holding that part
    (the fused layer; for ``"q_kv"`` the query layer or the k|v layer)."""
    d, inner = unit.head_dim, unit.num_heads * unit.head_dim
    if unit.layout == "q_kv":
        rows = [(part == 2) * inner + h * d + i for h, kept in enumerate(idx) for i in kept]
    elif unit.layout == "packed":
        rows = [part * inner + h * d + i for h, kept in enumerate(idx) for i in kept]
    else:
        rows = [h * 3 * d + part * d + i for h, kept in enumerate(idx) for i in kept]
    return torch.tensor(rows, dtype=torch.long)


def _layer_of(unit: AttentionUnit, part: int) -> str:
    return unit.q if part == 0 else unit.k


def fused_rows(unit: AttentionUnit, qk_idx: list[list[int]], v_idx: list[list[int]]) -> dict[str, torch.Tensor]:
    """Per layer (the fused one, or the query and k|v layers) its kept rows, in its own order."""
    rows: dict[str, list[torch.Tensor]] = {}
    for part, idx in enumerate((qk_idx, qk_idx, v_idx)):
        rows.setdefault(_layer_of(unit, part), []).append(_index(unit, idx, part))
    return {name: torch.cat(parts).sort().values for name, parts in rows.items()}


def fused_sums(layer_out: dict[str, torch.Tensor], unit: AttentionUnit) -> list[torch.Tensor]:
    """[q, k, v] channel scores ``(num_heads, head_dim)`` out of per-row scores of each layer."""
    every = [list(range(unit.head_dim))] * unit.num_heads
    return [
        layer_out[_layer_of(unit, p)][_index(unit, every, p)].view(unit.num_heads, unit.head_dim) for p in range(3)
    ]


def masked_fused_(model: nn.Module, unit: AttentionUnit, qk_idx: list[list[int]], v_idx: list[list[int]]) -> None:
    """Zero the fused layer's rows (and biases) head-dim pruning removes, in place."""
    for name, kept in fused_rows(unit, qk_idx, v_idx).items():
        layer = model.get_submodule(name)
        gone = sorted(set(range(layer.out_features)) - set(kept.tolist()))
        with torch.no_grad():
            layer.weight[gone] = 0
            if layer.bias is not None:
                layer.bias[gone] = 0


def _slice(model: nn.Module, unit: AttentionUnit, rows: dict[str, torch.Tensor], cols: torch.Tensor) -> None:
    for name, kept in rows.items():
        layer = model.get_submodule(name)
        layer.weight = nn.Parameter(layer.weight.detach()[kept].clone(), requires_grad=layer.weight.requires_grad)
        if layer.bias is not None:
            layer.bias = nn.Parameter(layer.bias.detach()[kept].clone(), requires_grad=layer.bias.requires_grad)
        layer.out_features = len(kept)
    out = model.get_submodule(unit.o)
    out.weight = nn.Parameter(out.weight.detach()[:, cols].clone(), requires_grad=out.weight.requires_grad)
    out.in_features = len(cols)


def _probe(a: nn.Module, b: nn.Module, width: int) -> bool | None:
    """Whether modules ``a`` and ``b`` agree on a random ``(2, 5, width)`` input (None: it takes another input)."""
    x = torch.randn(2, 5, width, generator=torch.Generator().manual_seed(0))
    was = b.training
    try:
        with torch.no_grad():
            want, got = a.eval()(x), b.eval()(x)
    except Exception:  # the module needs other inputs: the whole model's check decides
        return None
    finally:
        b.train(was)
    want, got = (t[0] if isinstance(t, (tuple, list)) else t for t in (want, got))
    return bool(torch.allclose(got, want, rtol=1e-4, atol=1e-5 * (1 + want.abs().max().item())))


def apply_fused_(model: nn.Module, unit: AttentionUnit, qk_idx: list[list[int]], v_idx: list[list[int]]) -> None:
    """Keep ``qk_idx[h]``/``v_idx[h]`` (indices inside head ``h``) of ``unit``'s fused rows, in place."""
    parent_name, _, attr = unit.name.rpartition(".")
    module = model.get_submodule(unit.name)
    check_fused_unit(module, unit)
    kept, d = len(qk_idx[0]), unit.head_dim
    if kept != len(v_idx[0]):
        raise ConfigError(
            f"head-dim pruning {unit.name!r} ({type(module).__name__}) splits one fused q|k|v layer into equal "
            f"heads: head_dim_qk and head_dim_v must keep the same number of channels ({kept} vs {len(v_idx[0])})"
        )
    reference = copy.deepcopy(module)
    masked_fused_(reference, _relative(unit), qk_idx, v_idx)
    width = model.get_submodule(unit.q).in_features
    _slice(model, unit, fused_rows(unit, qk_idx, v_idx), _cols(unit, v_idx))
    for name in HEAD_DIM_ATTRS:  # timm reshapes with ``head_dim``; vit-pytorch / MONAI read it from the heads
        if getattr(module, name, None) == d:
            setattr(module, name, kept)
    if kept == d or _probe(reference, module, width) in (True, None):
        return
    wanted = set(_index(unit, qk_idx, 0).tolist())
    queries = torch.tensor([i for i, r in enumerate(fused_rows(unit, qk_idx, v_idx)[unit.q].tolist()) if r in wanted])
    layer, factor = model.get_submodule(unit.q), math.sqrt(kept / d)
    with torch.no_grad():
        layer.weight[queries] *= factor
        if layer.bias is not None:
            layer.bias[queries] *= factor
    if not _probe(reference, module, width):
        owner = model.get_submodule(parent_name) if parent_name else model
        raise UnsupportedModelError(
            f"head-dim pruning {unit.name!r} ({type(getattr(owner, attr, module)).__name__}): the module with fewer "
            "channels per head differs from the original with the removed rows zeroed, under either score scale "
            "(its forward uses the head size in another way); prune whole heads instead (nc.prune_transformer)"
        )


def _cols(unit: AttentionUnit, v_idx: list[list[int]]) -> torch.Tensor:
    d = unit.head_dim
    return torch.tensor([h * d + i for h, kept in enumerate(v_idx) for i in kept], dtype=torch.long)


def _relative(unit: AttentionUnit) -> AttentionUnit:
    """``unit`` with its layer names relative to the attention module itself."""
    cut = len(unit.name) + 1 if unit.name else 0
    return AttentionUnit("", unit.layout, unit.num_heads, unit.head_dim, unit.num_kv_heads, unit.q[cut:],
                         unit.k[cut:], unit.v[cut:], unit.o[cut:])  # fmt: skip
