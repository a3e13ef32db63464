"""Which output rows of a packed q|k|v layer belong to which heads, per packed layout
(:class:`~netcompress.pruning.transformer_blocks.AttentionUnit`'s ``layout``): the surgery slices these rows and
the importance reads them.

Example:
    >>> packed_rows(unit, keep_q=[0, 2], keep_kv=[0, 2])  # "packed": q rows of heads 0 and 2, then k, then v
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from netcompress.pruning.transformer_blocks import AttentionUnit


def mp_rows(unit: AttentionUnit, heads: list[int], part: int) -> torch.Tensor:
    """CodeGen's ``mp_num`` layout: rows of ``heads`` in q (part 0), v (1) or k (2); each shard holds
    q|v|k of ``inner / shards`` channels and the heads run across the shards' q (v, k) parts in order."""
    local = unit.num_heads * unit.head_dim // unit.shards
    flat = head_rows_of(heads, unit.head_dim)
    return (flat // local) * 3 * local + part * local + flat % local


def head_rows_of(heads: list[int], head_dim: int) -> torch.Tensor:
    return torch.tensor([h * head_dim + i for h in heads for i in range(head_dim)], dtype=torch.long)


def packed_rows(unit: AttentionUnit, keep_q: list[int], keep_kv: list[int]) -> torch.Tensor:
    """The output rows of a packed q|k|v layer that the kept query / key-value heads use."""
    d, inner, kv_width = unit.head_dim, unit.num_heads * unit.head_dim, unit.num_kv_heads * unit.head_dim
    if unit.layout == "packed_heads":  # head after head, each q_h | k_h | v_h
        return torch.tensor([h * 3 * d + i for h in keep_q for i in range(3 * d)], dtype=torch.long)
    if unit.layout == "packed_mp":  # written back as one shard q|v|k (mp_num becomes 1)
        return torch.cat([mp_rows(unit, keep_q, 0), mp_rows(unit, keep_kv, 1), mp_rows(unit, keep_kv, 2)])
    if unit.layout == "packed_groups":  # per key/value head g: its query heads, k_g, v_g
        r, rows = unit.groups, []
        for g in keep_kv:
            base = g * (r + 2) * d
            rows += [base + (h - g * r) * d + i for h in keep_q if h // r == g for i in range(d)]
            rows += [base + (r + j) * d + i for j in (0, 1) for i in range(d)]
        return torch.tensor(rows, dtype=torch.long)
    q = torch.tensor([h * d + i for h in keep_q for i in range(d)], dtype=torch.long)
    kv = torch.tensor([h * d + i for h in keep_kv for i in range(d)], dtype=torch.long)
    return torch.cat([q, kv + inner, kv + inner + kv_width])
