"""Head-dim pruning (``nc.prune_head_dims``) of fused q|k|v attention (``transformer_head_dim_fused``): vit-pytorch's
``to_qkv(x).chunk(3)`` with a stored ``scale``, timm's ``qkv(x).reshape(B, N, 3, H, head_dim)`` with
``scaled_dot_product_attention``'s default scale (the kept query rows are rescaled so the scores stay those of the
original head size), the GPT-NeoX head-after-head order, and CaiT's ``to_q`` + ``to_kv``. Each pruned model equals the original with the removed
fused rows zeroed; the comparison tells pruned from unpruned."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netcompress.core.errors import ConfigError, UnsupportedModelError
from netcompress.pruning import prune_head_dims
from netcompress.pruning.transformer_blocks import find_blocks
from netcompress.pruning.transformer_head_dim import head_dim_scores, masked_reference

DIM, HEADS, D = 16, 4, 8


class ViTPytorchAttention(nn.Module):
    """vit-pytorch: ``heads`` and a stored ``scale``; q, k, v split in equal thirds, heads from ``h``."""

    def __init__(self) -> None:
        super().__init__()
        self.heads, self.scale = HEADS, D**-0.5
        self.to_qkv = nn.Linear(DIM, 3 * HEADS * D)
        self.to_out = nn.Sequential(nn.Linear(HEADS * D, DIM), nn.Dropout(0.0))

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in self.to_qkv(x).chunk(3, dim=-1))
        attn = (q @ k.transpose(-1, -2) * self.scale).softmax(-1)
        return self.to_out((attn @ v).transpose(1, 2).reshape(b, n, -1))


class TimmAttention(nn.Module):
    """timm: ``num_heads``/``head_dim``, SDPA at its default scale (1/sqrt of the q width it is given)."""

    def __init__(self, heads_outer: bool = False, cube: bool = False) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.heads_outer, self.cube = HEADS, D, heads_outer, cube
        self.qkv = nn.Linear(DIM, 3 * HEADS * D)
        self.proj = nn.Linear(HEADS * D, DIM)

    def forward(self, x):
        b, n, _ = x.shape
        if self.heads_outer:
            qkv = self.qkv(x).reshape(b, n, self.num_heads, 3, self.head_dim).permute(3, 0, 2, 1, 4)
        else:
            qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.cube:  # a scale no row factor can keep: 1 / head_dim ** 1.5
            out = F.scaled_dot_product_attention(q, k, v, scale=self.head_dim**-1.5)
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class QKVAttention(nn.Module):
    """vit-pytorch's CaiT / CrossViT: ``to_q`` and one ``to_kv`` (k | v), keys and values over ``x`` and a context."""

    def __init__(self) -> None:
        super().__init__()
        self.heads, self.scale = HEADS, D**-0.5
        self.to_q, self.to_kv = nn.Linear(DIM, HEADS * D, bias=False), nn.Linear(DIM, 2 * HEADS * D, bias=False)
        self.to_out = nn.Sequential(nn.Linear(HEADS * D, DIM), nn.Dropout(0.0))

    def forward(self, x, context=None):
        b, n, _ = x.shape
        kv = x if context is None else torch.cat((x, context), dim=1)
        q = self.to_q(x).reshape(b, n, self.heads, -1).transpose(1, 2)
        k, v = (t.reshape(b, kv.shape[1], self.heads, -1).transpose(1, 2) for t in self.to_kv(kv).chunk(2, dim=-1))
        attn = (q @ k.transpose(-1, -2) * self.scale).softmax(-1)
        return self.to_out((attn @ v).transpose(1, 2).reshape(b, n, -1))


class Block(nn.Module):
    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.norm, self.attn = nn.LayerNorm(DIM), attn
        self.fc1, self.fc2 = nn.Linear(DIM, 24), nn.Linear(24, DIM)

    def forward(self, x):
        x = x + self.attn(self.norm(x))
        return x + self.fc2(F.gelu(self.fc1(x)))


def _net(make) -> nn.Module:  # noqa: ANN001
    torch.manual_seed(0)
    return nn.Sequential(Block(make()), Block(make())).eval()


X = torch.randn(2, 7, DIM, generator=torch.Generator().manual_seed(1))
BATCHES = [torch.randn(3, 7, DIM, generator=torch.Generator().manual_seed(s)) for s in (2, 3)]


@pytest.mark.parametrize(
    ("make", "layout"),
    [
        (ViTPytorchAttention, "packed"),
        (TimmAttention, "packed"),
        (lambda: TimmAttention(heads_outer=True), "packed_heads"),
        (QKVAttention, "q_kv"),
    ],
)
@pytest.mark.parametrize("calib", [None, BATCHES])
def test_fused_attention_keeps_fewer_channels_per_head(make, layout, calib) -> None:  # noqa: ANN001
    model = _net(make)
    assert [u.layout for u in find_blocks(model).attention] == [layout, layout]
    small = prune_head_dims(model, X, qk=0.5, v=0.5, calib=calib)
    attn = small[0].attn
    widths = [attn.to_q.out_features, attn.to_kv.out_features] if layout == "q_kv" else [
        (attn.to_qkv if hasattr(attn, "to_qkv") else attn.qkv).out_features]  # fmt: skip
    assert sum(widths) == 3 * HEADS * D // 2
    assert getattr(small[0].attn, "head_dim", D // 2) == D // 2
    # the reference: the original with the removed fused rows zeroed (same scores, so the same kept channels)
    scores = head_dim_scores(copy.deepcopy(model), calib)
    kept = {n: ([r.topk(D // 2).indices.sort().values.tolist() for r in qk],
                [r.topk(D // 2).indices.sort().values.tolist() for r in v]) for n, (qk, v) in scores.items()}  # fmt: skip
    ref = masked_reference(copy.deepcopy(model), kept)
    with torch.no_grad():
        got, want, full = small(X), ref(X), model(X)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (got - full).abs().max() > 1e-3


def test_unequal_counts_and_an_unfollowable_scale_are_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"'0\.attn' \(TimmAttention\).*same number of channels"):
        prune_head_dims(_net(TimmAttention), X, qk=0.5, v=0.25)
    with pytest.raises(UnsupportedModelError, match=r"'0\.attn' \(TimmAttention\).*under either score scale"):
        prune_head_dims(_net(lambda: TimmAttention(cube=True)), X, qk=0.5, v=0.5)
