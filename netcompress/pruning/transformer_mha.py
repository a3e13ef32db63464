"""Multi-head attention with fewer heads than its width: what a head-pruned ``nn.MultiheadAttention`` becomes.

``nn.MultiheadAttention`` requires ``embed_dim == num_heads * head_dim``, so it cannot hold 3 heads of 8
channels on a 32-wide residual stream. :class:`PrunedMultiheadAttention` computes exactly what
``nn.MultiheadAttention`` computes (same packed ``in_proj_weight``/``in_proj_bias``, same ``out_proj``, same
call signature and return value) with any number of heads and any stream width. It is a plain module-level
class, so a model holding it pickles and deep-copies.

Differences from ``nn.MultiheadAttention``:

- ``_qkv_same_embed_dim`` is False, so ``nn.TransformerEncoderLayer``/``nn.TransformerEncoder`` never take
  their fused fast path (which assumes ``embed_dim == num_heads * head_dim``) and call this module instead;
- attention weights returned with ``average_attn_weights=True`` are averaged over the kept heads;
- a per-head 3-D ``attn_mask`` of shape ``(batch * original_heads, L, S)`` is accepted: the rows of the kept
  heads (``head_index``) are used.

Example:
    >>> mha = nn.MultiheadAttention(32, 4, batch_first=True)
    >>> small = PrunedMultiheadAttention.from_attention(mha, keep_heads=[0, 2, 3])
    >>> small(x, x, x, need_weights=False)[0].shape == x.shape
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class PrunedMultiheadAttention(nn.Module):
    """Self/cross attention with ``num_heads`` heads of ``head_dim`` on an ``embed_dim``-wide stream."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        head_dim: int,
        *,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        head_index: Sequence[int] | None = None,
        source_heads: int | None = None,
    ) -> None:
        super().__init__()
        inner = num_heads * head_dim
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.batch_first, self.dropout = batch_first, dropout
        self._qkv_same_embed_dim = False  # keeps nn.Transformer* off their fused fast path
        self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * inner)) if bias else None
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias)
        nn.init.xavier_uniform_(self.in_proj_weight)
        self.head_index = list(range(num_heads)) if head_index is None else [int(h) for h in head_index]
        self.source_heads = num_heads if source_heads is None else int(source_heads)

    @classmethod
    def from_attention(cls, attn: nn.Module, keep_heads: Sequence[int]) -> PrunedMultiheadAttention:
        """The heads ``keep_heads`` of an ``nn.MultiheadAttention`` (or of another pruned one)."""
        d, inner = attn.head_dim, attn.num_heads * attn.head_dim
        rows = torch.tensor([h * d + i for h in keep_heads for i in range(d)], dtype=torch.long)
        packed = torch.cat([rows, rows + inner, rows + 2 * inner])
        bias = attn.in_proj_bias is not None
        old_index = list(getattr(attn, "head_index", range(attn.num_heads)))
        new = cls(
            attn.embed_dim, len(keep_heads), d, bias=bias, batch_first=attn.batch_first,
            dropout=attn.dropout, head_index=[old_index[h] for h in keep_heads],
            source_heads=getattr(attn, "source_heads", attn.num_heads),
        )  # fmt: skip
        weight = attn.in_proj_weight
        new = new.to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            new.in_proj_weight.copy_(weight[packed])
            if bias:
                new.in_proj_bias.copy_(attn.in_proj_bias[packed])
                new.out_proj.bias.copy_(attn.out_proj.bias)
            new.out_proj.weight.copy_(attn.out_proj.weight[:, rows])
        new.train(attn.training)
        return new

    def _mask(
        self, attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None, b: int, lq: int, ls: int,
        is_causal: bool, dtype: torch.dtype,
    ) -> torch.Tensor | None:  # fmt: skip
        def additive(mask: torch.Tensor) -> torch.Tensor:
            if mask.dtype == torch.bool:
                return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
                    mask, float("-inf")
                )
            return mask.to(dtype)

        merged = None
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(lq, ls, dtype=torch.bool).triu(1)
        if attn_mask is not None:
            mask = additive(attn_mask)
            if mask.dim() == 3:
                mask = mask.view(b, -1, lq, ls)
                if mask.shape[1] == self.source_heads and self.source_heads != self.num_heads:
                    mask = mask[:, self.head_index]
            merged = mask
        if key_padding_mask is not None:
            pad = additive(key_padding_mask).view(b, 1, 1, ls)
            merged = pad if merged is None else merged + pad
        return merged

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return attend(
            self, self.head_dim, self.head_dim, query, key, value, key_padding_mask, need_weights, attn_mask,
            average_attn_weights, is_causal,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, head_dim={self.head_dim}"


def attend(
    module: nn.Module, qk_dim: int, v_dim: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    key_padding_mask: torch.Tensor | None, need_weights: bool, attn_mask: torch.Tensor | None,
    average_attn_weights: bool, is_causal: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
    """``nn.MultiheadAttention``'s forward for ``module``'s packed ``in_proj`` ([q | k | v] rows, per head) of
    ``qk_dim`` query/key and ``v_dim`` value channels per head, scaled by ``module.head_dim`` (the source's);
    the masks follow :meth:`PrunedMultiheadAttention._mask` (``head_index``/``source_heads`` on ``module``)."""
    unbatched = query.dim() == 2
    if unbatched:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.unsqueeze(0)
    if not module.batch_first or unbatched:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    b, lq, ls, h = query.shape[0], query.shape[1], key.shape[1], module.num_heads
    sizes = [h * qk_dim, h * qk_dim, h * v_dim]
    w_q, w_k, w_v = module.in_proj_weight.split(sizes)
    b_q, b_k, b_v = module.in_proj_bias.split(sizes) if module.in_proj_bias is not None else (None,) * 3
    q = F.linear(query, w_q, b_q).view(b, lq, h, qk_dim).transpose(1, 2)
    k = F.linear(key, w_k, b_k).view(b, ls, h, qk_dim).transpose(1, 2)
    v = F.linear(value, w_v, b_v).view(b, ls, h, v_dim).transpose(1, 2)
    scores = q @ k.transpose(-2, -1) * module.head_dim**-0.5
    mask = PrunedMultiheadAttention._mask(
        module, attn_mask, key_padding_mask, b, lq, ls, is_causal, scores.dtype
    )  # type: ignore[arg-type]
    if mask is not None:
        scores = scores + mask
    weights = scores.softmax(-1)
    dropped = F.dropout(weights, module.dropout, module.training) if module.dropout > 0 else weights
    out = module.out_proj((dropped @ v).transpose(1, 2).reshape(b, lq, h * v_dim))
    if not module.batch_first or unbatched:
        out = out.transpose(0, 1)
    if unbatched:
        out = out.squeeze(1)
    if not need_weights:
        return out, None
    if average_attn_weights:
        weights = weights.mean(1)
    return out, weights.squeeze(0) if unbatched else weights
