"""Issue 15, session 12: head-dim pruning inside attention heads, a benchmark prototype for the ViT.

``prune/transformer`` removes whole heads; Torch-Pruning on ``nn.MultiheadAttention`` shrinks every head's
width instead. Here every head keeps its place and loses query/key channels (``qk_share``) and value channels
(``v_share``): :class:`HeadDimAttention` holds the kept rows of the packed ``in_proj`` ([q | k | v], per head)
and the matching ``out_proj`` columns, and keeps the source's ``1/sqrt(head_dim)`` score scale, so it equals
the source attention with the removed rows zeroed (``tests/benchmarks/test_vit_head_dim.py``).

Channel scores are activation-weighted (on calibration batches): query/key channel ``i`` of a head scores
``mean|q_i| * mean|k_i|`` over the tokens (its share of the QK^T products), value channel ``i`` scores
``mean|v_i| * ||W_out[:, i]||`` (its share of the output). Self-attention only, no masks.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from netcompress.pruning.transformer_mha import PrunedMultiheadAttention


class HeadDimAttention(PrunedMultiheadAttention):
    """Self-attention with ``num_heads`` heads of ``qk_dim`` query/key and ``v_dim`` value channels."""

    def __init__(
        self, embed_dim: int, num_heads: int, head_dim: int, qk_dim: int, v_dim: int, *, bias: bool = True,
        batch_first: bool = False,
    ) -> None:  # fmt: skip
        super().__init__(embed_dim, num_heads, head_dim, bias=bias, batch_first=batch_first)
        self.qk_dim, self.v_dim = qk_dim, v_dim
        rows = num_heads * (2 * qk_dim + v_dim)
        self.in_proj_weight = nn.Parameter(torch.zeros(rows, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(rows)) if bias else None
        self.out_proj = nn.Linear(num_heads * v_dim, embed_dim, bias=bias)

    @classmethod
    def from_kept(
        cls, attn: nn.Module, qk_keep: list[list[int]], v_keep: list[list[int]]
    ) -> HeadDimAttention:
        """The channels ``qk_keep[h]`` / ``v_keep[h]`` (indices inside head ``h``) of ``attn``'s heads."""
        d, heads, inner = attn.head_dim, attn.num_heads, attn.num_heads * attn.head_dim
        if getattr(attn, "dropout", 0.0):
            raise ValueError("head-dim pruning prototype: attention dropout is not supported")
        qk = [h * d + i for h in range(heads) for i in sorted(qk_keep[h])]
        v = [h * d + i for h in range(heads) for i in sorted(v_keep[h])]
        if len({len(k) for k in qk_keep}) != 1 or len({len(k) for k in v_keep}) != 1:
            raise ValueError("every head must keep the same number of channels")
        packed = torch.tensor([*qk, *(r + inner for r in qk), *(r + 2 * inner for r in v)], dtype=torch.long)
        bias = attn.in_proj_bias is not None
        new = cls(
            attn.embed_dim, heads, d, len(qk_keep[0]), len(v_keep[0]), bias=bias, batch_first=attn.batch_first
        ).to(attn.in_proj_weight.dtype)
        with torch.no_grad():
            new.in_proj_weight.copy_(attn.in_proj_weight[packed])
            new.out_proj.weight.copy_(attn.out_proj.weight[:, v])
            if bias:
                new.in_proj_bias.copy_(attn.in_proj_bias[packed])
                new.out_proj.bias.copy_(attn.out_proj.bias)
        return new.train(attn.training)

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_padding_mask: Any = None,
        need_weights: bool = True, attn_mask: Any = None, average_attn_weights: bool = True, is_causal: bool = False,
    ) -> tuple[torch.Tensor, None]:  # fmt: skip
        if key_padding_mask is not None or attn_mask is not None or is_causal:
            raise ValueError("head-dim pruning prototype: masks are not supported")
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        b, lq, ls, h = query.shape[0], query.shape[1], key.shape[1], self.num_heads
        nqk = h * self.qk_dim
        w_q, w_k, w_v = self.in_proj_weight.split([nqk, nqk, h * self.v_dim])
        b_q, b_k, b_v = (
            self.in_proj_bias.split([nqk, nqk, h * self.v_dim])
            if self.in_proj_bias is not None
            else (None,) * 3
        )
        q = F.linear(query, w_q, b_q).view(b, lq, h, self.qk_dim).transpose(1, 2)
        k = F.linear(key, w_k, b_k).view(b, ls, h, self.qk_dim).transpose(1, 2)
        v = F.linear(value, w_v, b_v).view(b, ls, h, self.v_dim).transpose(1, 2)
        weights = (q @ k.transpose(-2, -1) * self.head_dim**-0.5).softmax(-1)  # the source's scale
        out = self.out_proj((weights @ v).transpose(1, 2).reshape(b, lq, h * self.v_dim))
        return (out if self.batch_first else out.transpose(0, 1)), None

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, qk_dim={self.qk_dim}, v_dim={self.v_dim}"


def channel_scores(model: nn.Module, batches: Iterable[Any]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per attention module name: (qk scores, v scores), each ``(num_heads, head_dim)`` (see the module doc)."""
    attns = {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, (nn.MultiheadAttention, PrunedMultiheadAttention))
    }
    sums: dict[str, list[torch.Tensor]] = {}

    def hook(name: str) -> Any:
        def pre(module: nn.Module, args: tuple) -> None:
            x = args[0] if module.batch_first else args[0].transpose(0, 1)
            heads, d = module.num_heads, module.head_dim
            q, k, v = F.linear(x, module.in_proj_weight, module.in_proj_bias).abs().chunk(3, dim=-1)
            flat = [t.reshape(-1, heads, d).mean(0) for t in (q, k, v)]
            prev = sums.get(name)
            sums[name] = flat if prev is None else [p + f for p, f in zip(prev, flat, strict=True)]

        return pre

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in attns.items()]
    try:
        with torch.no_grad():
            for batch in batches:
                model(batch[0] if isinstance(batch, (list, tuple)) else batch)
    finally:
        for handle in handles:
            handle.remove()
    out = {}
    for name, (q, k, v) in sums.items():
        attn = attns[name]
        w_out = attn.out_proj.weight.detach().norm(dim=0).view(attn.num_heads, attn.head_dim)
        out[name] = (q * k, v * w_out)
    return out


def prune_head_dims(model: nn.Module, scores: dict, qk_share: float, v_share: float) -> nn.Module:
    """``model`` (in place) with every scored attention replaced by a :class:`HeadDimAttention` keeping
    ``round((1 - share) * head_dim)`` (at least 1) top-scored channels per head."""
    for name, (qk, v) in scores.items():
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        attn = getattr(parent, attr)
        d = attn.head_dim
        keep_qk, keep_v = (max(1, round((1 - s) * d)) for s in (qk_share, v_share))
        qk_idx = [row.topk(keep_qk).indices.tolist() for row in qk]
        v_idx = [row.topk(keep_v).indices.tolist() for row in v]
        setattr(parent, attr, HeadDimAttention.from_kept(attn, qk_idx, v_idx))
    return model


def prune_to_target(
    model: nn.Module, x: torch.Tensor, loader: Any, *, qk: float, v: float, ffn: float, importance: str,
    reconstruct: bool, mac_target: float, seed: int, calib_batches: int = 8,
) -> tuple[nn.Module, dict]:  # fmt: skip
    """FFN neurons (``prune/transformer``, heads kept) and head dims, the split ``qk``/``v``/``ffn`` scaled
    by the smallest factor reaching ``mac_target`` (bisection), then the FFN share alone lowered to the fewest
    neurons that still reach it (head dims move in whole channels); ``loader()`` gives a calibration loader."""
    from itertools import islice

    from netcompress.pruning.transformer_pruning import TransformerPruneConfig, count_macs, transformer_prune
    from netcompress.training import seed_everything

    base = count_macs(model, x)

    def build(t: float, t_ffn: float | None = None) -> tuple[nn.Module, dict]:
        seed_everything(seed)  # the loader's augmentation draws from the global RNG: same batches every time
        config = TransformerPruneConfig(
            heads=0.0, ffn=min(ffn * (t if t_ffn is None else t_ffn), 0.99), importance=importance,
            calib_batches=calib_batches, reconstruct=reconstruct,
        )  # fmt: skip
        small, summary = transformer_prune(model, x, config, loader=loader())
        scores = channel_scores(small, islice(loader(), calib_batches))
        prune_head_dims(small, scores, min(qk * t, 0.99), min(v * t, 0.99))
        ffn_after = [u["after"] for u in summary["ffn"]]
        return small.eval(), {"ffn": ffn_after, "mac_reduction": base / count_macs(small, x)}

    lo, hi = 0.0, 1.0 / max(qk, v, ffn)
    best = build(hi)
    if best[1]["mac_reduction"] < mac_target:
        raise ValueError(f"the split q{qk}v{v}f{ffn} cannot reach {mac_target}x fewer MACs")
    for _ in range(12):
        mid = (lo + hi) / 2
        candidate = build(mid)
        if candidate[1]["mac_reduction"] >= mac_target:
            hi, best = mid, candidate
        else:
            lo = mid
    if ffn > 0:  # head dims step in whole channels: then the fewest FFN neurons that still reach the target
        lo_f, hi_f = 0.0, hi
        for _ in range(10):
            mid = (lo_f + hi_f) / 2
            candidate = build(hi, mid)
            if candidate[1]["mac_reduction"] >= mac_target:
                hi_f, best = mid, candidate
            else:
                lo_f = mid
    small, info = best
    attn = [m for m in small.modules() if isinstance(m, HeadDimAttention)]
    info.update(factor=round(hi, 4), qk_dim=[m.qk_dim for m in attn], v_dim=[m.v_dim for m in attn])
    return small, info


def prune_for_benchmark(args: Any, model: nn.Module, x: torch.Tensor, loader: Any) -> tuple[nn.Module, dict]:
    """``vit_pruning``'s ``--head-dim QK,V`` (with ``--ffn-share``, ``--importance``, ``--reconstruct``): the
    pruned model and a summary shaped like ``prune/transformer``'s (heads kept, FFN widths, head dims)."""
    qk, v = (float(s) for s in args.head_dim.split(","))
    small, info = prune_to_target(
        model, x, loader, qk=qk, v=v, ffn=args.ffn_share, importance=args.importance,
        reconstruct=args.reconstruct, mac_target=args.mac_reduction, seed=args.seed,
    )  # fmt: skip
    attn = [m for m in small.modules() if isinstance(m, HeadDimAttention)]
    return small, {
        **info, "heads": [{"after": m.num_heads} for m in attn], "ffn": [{"after": f} for f in info["ffn"]],
    }  # fmt: skip
