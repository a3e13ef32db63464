"""Head-dim pruning: every attention head stays and loses query/key and value channels inside it.

:class:`HeadDimAttention` holds, per head, ``qk_dim`` query/key channels and ``v_dim`` value channels of an
``nn.MultiheadAttention`` (or :class:`~netcompress.pruning.transformer_mha.PrunedMultiheadAttention`): the kept
rows of the packed ``in_proj`` ([q | k | v], head by head) and the matching ``out_proj`` columns. It keeps the
source's ``1/sqrt(head_dim)`` score scale, so it computes exactly what the source computes with the removed
``in_proj`` rows (and biases) zeroed: query/key channel ``i`` only adds ``q_i * k_i`` to the scores, value
channel ``i`` only feeds ``out_proj`` column ``i``. Masks (``attn_mask`` 2-D or per-head 3-D,
``key_padding_mask``, ``is_causal``), ``batch_first`` both ways, unbatched inputs, ``need_weights`` and attention
dropout in train mode behave as in ``nn.MultiheadAttention`` (``is_causal`` without ``attn_mask`` applies the
causal mask, as in ``PrunedMultiheadAttention``, where ``nn.MultiheadAttention`` raises). It sets ``_qkv_same_embed_dim = False``, so
``nn.TransformerEncoderLayer``/``nn.TransformerEncoder`` never take their fused fast path and call it instead.

Channel scores (per head, ``(num_heads, head_dim)``):

- ``activation`` (calibration batches): query/key channel ``i`` scores ``mean|q_i| * mean|k_i|`` over the
  tokens (its share of the ``QK^T`` products), value channel ``i`` ``mean|v_i| * ||W_out[:, i]||`` (its share
  of the output); the means run over every token the module sees, padding included;
- ``magnitude`` (no data): the same with the row norms of ``W_q``/``W_k``/``W_v`` in place of the activations.

Hugging Face BERT/ViT-style self-attention (separate q/k/v ``Linear`` layers, ``attention_head_size``) is
sliced in place by :mod:`~netcompress.pruning.transformer_head_dim_hf` (equal q/k and v counts). Refused with an
error naming the module: ``kdim``/``vdim`` other than ``embed_dim`` (separate q/k/v weights), ``bias_k``/
``bias_v``, ``add_zero_attn``, an attention already head-dim pruned, and other attention classes (GPT-2
``Conv1D``, RoPE, grouped-query).

Example:
    >>> scores = head_dim_scores(model, batches)  # or head_dim_scores(model) for magnitude scores
    >>> apply_head_dims_(model, scores, qk=0.5, v=0.25)  # in place: every head keeps 4 of 8 q/k channels
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from netcompress.core.errors import ConfigError, UnsupportedModelError
from netcompress.core.inputs import call_model, split_batch
from netcompress.core.selection import name_matches
from netcompress.pruning.transformer_blocks import AttentionUnit
from netcompress.pruning.transformer_head_dim_hf import apply_hf_, check_hf_unit, hf_sums, mask_hf_, out_norms
from netcompress.pruning.transformer_mha import PrunedMultiheadAttention, attend

SOURCE_TYPES = (nn.MultiheadAttention, PrunedMultiheadAttention)
IMPORTANCES = ("activation", "magnitude")


class HeadDimAttention(nn.Module):
    """Attention with ``num_heads`` heads of ``qk_dim`` query/key and ``v_dim`` value channels (scale of ``head_dim``)."""

    def __init__(
        self, embed_dim: int, num_heads: int, head_dim: int, qk_dim: int, v_dim: int, *, bias: bool = True,
        batch_first: bool = False, dropout: float = 0.0, head_index: Sequence[int] | None = None,
        source_heads: int | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.qk_dim, self.v_dim = qk_dim, v_dim
        self.batch_first, self.dropout = batch_first, dropout
        self._qkv_same_embed_dim = False  # keeps nn.Transformer* off their fused fast path
        rows = num_heads * (2 * qk_dim + v_dim)
        self.in_proj_weight = nn.Parameter(torch.zeros(rows, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(rows)) if bias else None
        self.out_proj = nn.Linear(num_heads * v_dim, embed_dim, bias=bias)
        self.head_index = list(range(num_heads)) if head_index is None else [int(h) for h in head_index]
        self.source_heads = num_heads if source_heads is None else int(source_heads)

    @classmethod
    def from_attention(
        cls,
        attn: nn.Module,
        qk_keep: Sequence[Sequence[int]],
        v_keep: Sequence[Sequence[int]],
        name: str = "",
    ) -> HeadDimAttention:
        """The channels ``qk_keep[h]`` / ``v_keep[h]`` (indices inside head ``h``) of ``attn``'s heads."""
        check_source(attn, name)
        d, heads, inner = attn.head_dim, attn.num_heads, attn.num_heads * attn.head_dim
        if len(qk_keep) != heads or len(v_keep) != heads:
            raise ConfigError(
                f"head-dim pruning {name!r}: one kept-channel list per head ({heads}) is needed"
            )
        if len({len(k) for k in qk_keep}) != 1 or len({len(k) for k in v_keep}) != 1:
            raise ConfigError(f"head-dim pruning {name!r}: every head must keep the same number of channels")
        for kept in [*qk_keep, *v_keep]:
            if not kept or len(set(kept)) != len(kept) or not all(0 <= int(i) < d for i in kept):
                raise ConfigError(
                    f"head-dim pruning {name!r}: kept channels {list(kept)} are not distinct in [0, {d})"
                )
        qk = [h * d + int(i) for h in range(heads) for i in sorted(qk_keep[h])]
        v = [h * d + int(i) for h in range(heads) for i in sorted(v_keep[h])]
        packed = torch.tensor([*qk, *(r + inner for r in qk), *(r + 2 * inner for r in v)], dtype=torch.long)
        bias = attn.in_proj_bias is not None
        new = cls(
            attn.embed_dim, heads, d, len(qk_keep[0]), len(v_keep[0]), bias=bias, batch_first=attn.batch_first,
            dropout=attn.dropout, head_index=list(getattr(attn, "head_index", range(heads))),
            source_heads=getattr(attn, "source_heads", heads),
        )  # fmt: skip
        weight = attn.in_proj_weight
        new = new.to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            new.in_proj_weight.copy_(weight[packed])
            new.out_proj.weight.copy_(attn.out_proj.weight[:, v])
            if bias:
                new.in_proj_bias.copy_(attn.in_proj_bias[packed])
                new.out_proj.bias.copy_(attn.out_proj.bias)
        return new.train(attn.training)

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
        attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True, is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
        # PrunedMultiheadAttention's forward with qk_dim / v_dim channels and the source's 1/sqrt(head_dim)
        return attend(
            self, self.qk_dim, self.v_dim, query, key, value, key_padding_mask, need_weights, attn_mask,
            average_attn_weights, is_causal,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, qk_dim={self.qk_dim}, v_dim={self.v_dim}"


def check_source(attn: nn.Module, name: str = "") -> None:
    """Raise an error naming ``attn`` unless head-dim pruning follows it exactly."""
    where = f"head-dim pruning {name!r} ({type(attn).__name__})"
    if isinstance(attn, HeadDimAttention):
        raise UnsupportedModelError(f"{where}: already head-dim pruned; prune the original model once")
    if not isinstance(attn, SOURCE_TYPES):
        raise UnsupportedModelError(
            f"{where}: only nn.MultiheadAttention, PrunedMultiheadAttention and BERT/ViT-style attention are "
            "supported (not GPT-2 Conv1D, RoPE or grouped-query attention)"
        )
    if isinstance(attn, nn.MultiheadAttention):
        if not attn._qkv_same_embed_dim:
            raise UnsupportedModelError(f"{where}: kdim/vdim differ from embed_dim (separate q/k/v weights)")
        if attn.bias_k is not None or attn.bias_v is not None:
            raise UnsupportedModelError(f"{where}: bias_k/bias_v (add_bias_kv=True) is not supported")
        if attn.add_zero_attn:
            raise UnsupportedModelError(f"{where}: add_zero_attn=True is not supported")


def attention_modules(model: nn.Module, ignore: Iterable[str] = ()) -> dict[str, nn.Module | AttentionUnit]:
    """The attention head-dim pruning would prune, every one checked: name -> the ``nn.MultiheadAttention``
    (or ``PrunedMultiheadAttention``), or the block finder's unit of a BERT/ViT-style attention.

    Modules matching ``ignore`` (names or ``re:`` patterns) stay whole; any other attention the transformer
    block finder sees but head-dim pruning cannot follow is an error naming it.
    """
    from netcompress.pruning.transformer_blocks import find_blocks

    ignore = list(ignore)
    skip = [n for n, _ in model.named_modules() if any(name_matches(n, p) for p in ignore)]
    for pattern in ignore:
        if not any(name_matches(n, pattern) for n, _ in model.named_modules()):
            raise ConfigError(f"head-dim pruning: ignore pattern {pattern!r} matches no module")
    blocks = find_blocks(model)
    units = {u.name: u for u in blocks.attention}
    names = [*units, *blocks.unknown]
    names += [n for n, m in model.named_modules() if isinstance(m, (*SOURCE_TYPES, HeadDimAttention))]
    found: dict[str, nn.Module | AttentionUnit] = {}
    for name in dict.fromkeys(names):
        if name in skip:
            continue
        module = model.get_submodule(name)
        if name in units and not isinstance(module, (*SOURCE_TYPES, HeadDimAttention)):
            check_hf_unit(module, units[name])
            found[name] = units[name]
            continue
        check_source(module, name)
        found[name] = module
    if not found:
        raise UnsupportedModelError("head-dim pruning found no attention to prune")
    return found


def _run(model: nn.Module, batches: Iterable[Any]) -> None:
    with torch.no_grad():
        for batch in batches:
            call_model(model, split_batch(batch)[0])


def head_dim_scores(
    model: nn.Module, batches: Iterable[Any] | None = None, *, ignore: Iterable[str] = ()
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per attention module name: (q/k scores, v scores), each ``(num_heads, head_dim)``.

    With ``batches`` (calibration batches, ``(inputs, target)`` or inputs) the activation scores, else the
    magnitude scores (see the module docstring).
    """
    found = attention_modules(model, ignore)
    attns = {n: m for n, m in found.items() if isinstance(m, nn.Module)}
    units = {n: u for n, u in found.items() if isinstance(u, AttentionUnit)}
    batches = list(batches) if batches is not None else None
    sums: dict[str, list[torch.Tensor]] = {}
    if batches is None:
        for name, attn in attns.items():
            sums[name] = [
                w.detach().norm(dim=1).view(attn.num_heads, attn.head_dim)
                for w in attn.in_proj_weight.chunk(3)
            ]
    else:

        def hook(name: str) -> Any:
            def pre(module: nn.Module, args: tuple, kwargs: dict) -> None:
                given = [*args, *(kwargs[k] for k in ("query", "key", "value") if k in kwargs)][:3]
                ws = module.in_proj_weight.chunk(3)
                bs = module.in_proj_bias.chunk(3) if module.in_proj_bias is not None else (None,) * 3
                flat = [
                    F.linear(t, w, b_).abs().reshape(-1, module.num_heads, module.head_dim).mean(0)
                    for t, w, b_ in zip(given, ws, bs, strict=True)
                ]
                prev = sums.get(name)
                sums[name] = flat if prev is None else [p + f for p, f in zip(prev, flat, strict=True)]

            return pre

        handles = [m.register_forward_pre_hook(hook(n), with_kwargs=True) for n, m in attns.items()]
        try:
            sums.update(hf_sums(model, units, batches, lambda b: _run(model, b)))
        finally:
            for handle in handles:
                handle.remove()
    if batches is None:
        sums.update(hf_sums(model, units, None, None))
    missed = [n for n in found if n not in sums]
    if missed:
        raise ConfigError(f"head-dim activation scores: the calibration batches never called {missed}")
    out = {}
    for name, (q, k, v) in sums.items():
        attn = found[name]
        if isinstance(attn, AttentionUnit):
            w_out = out_norms(model, attn)
        else:
            w_out = attn.out_proj.weight.detach().norm(dim=0).view(attn.num_heads, attn.head_dim)
        out[name] = (q * k, v * w_out)
    return out


def kept_channels(share: float, head_dim: int) -> int:
    """Channels a head keeps when ``share`` of its ``head_dim`` go: ``round((1 - share) * head_dim)``, at least 1."""
    return max(1, round((1 - share) * head_dim))


def apply_head_dims_(
    model: nn.Module, scores: dict[str, tuple[torch.Tensor, torch.Tensor]], qk: float, v: float
) -> dict[str, tuple[list[list[int]], list[list[int]]]]:
    """Replace every scored attention of ``model`` (in place) by a :class:`HeadDimAttention` keeping the
    top-scored ``kept_channels(qk)`` q/k and ``kept_channels(v)`` value channels of each head.

    Returns the kept channels per module: (q/k per head, v per head), each sorted.
    """
    kept = {}
    units = _units(model, scores)
    for name, (qk_scores, v_scores) in scores.items():
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        attn = getattr(parent, attr)
        d = qk_scores.shape[1]
        qk_idx = [sorted(row.topk(kept_channels(qk, d)).indices.tolist()) for row in qk_scores]
        v_idx = [sorted(row.topk(kept_channels(v, d)).indices.tolist()) for row in v_scores]
        if name in units:
            apply_hf_(model, units[name], qk_idx, v_idx)
        else:
            setattr(parent, attr, HeadDimAttention.from_attention(attn, qk_idx, v_idx, name))
        kept[name] = (qk_idx, v_idx)
    return kept


def _units(model: nn.Module, names: Iterable[str]) -> dict[str, AttentionUnit]:
    """The block finder's units of the BERT/ViT-style attention among ``names``."""
    from netcompress.pruning.transformer_blocks import find_blocks

    wanted = set(names)
    return {
        u.name: u
        for u in find_blocks(model).attention
        if u.name in wanted and not isinstance(model.get_submodule(u.name), SOURCE_TYPES)
    }


def masked_reference(model: nn.Module, kept: dict[str, tuple[list[list[int]], list[list[int]]]]) -> nn.Module:
    """``model`` (in place) with the ``in_proj`` rows head-dim pruning removes zeroed (weights and biases)."""
    units = _units(model, kept)
    with torch.no_grad():
        for name, (qk_idx, v_idx) in kept.items():
            if name in units:
                mask_hf_(model, units[name], qk_idx, v_idx)
                continue
            attn = model.get_submodule(name)
            d, inner = attn.head_dim, attn.num_heads * attn.head_dim
            for h, (qk_keep, v_keep) in enumerate(zip(qk_idx, v_idx, strict=True)):
                gone_qk = [h * d + i for i in range(d) if i not in qk_keep]
                gone_v = [2 * inner + h * d + i for i in range(d) if i not in v_keep]
                rows = torch.tensor([*gone_qk, *(r + inner for r in gone_qk), *gone_v], dtype=torch.long)
                attn.in_proj_weight[rows] = 0
                if attn.in_proj_bias is not None:
                    attn.in_proj_bias[rows] = 0
    return model
