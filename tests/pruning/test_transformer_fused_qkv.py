"""Fused q|k|v attention as user code writes it (one Linear ``3 * inner`` wide, split in forward), found by its
form and its split read from the traced forward (``transformer_qkv_graph``): vit-pytorch's ``to_qkv`` + ``chunk`` +
einops ``rearrange``, the timm/DeiT/Swin ``qkv`` + ``reshape(B, N, 3, H, D).permute(2, 0, 3, 1, 4)``, a GPT-NeoX
style ``reshape(B, N, H, 3, D)`` (head after head), MONAI's ``SABlock`` (einops ``Rearrange`` layer built with the
head count), and rtdl's ``W_q/W_k/W_v/W_out`` with ``_n_heads``.

Each prune is compared here with the original whose removed heads' output-projection columns and removed neurons'
down-projection columns are zero (``masked``): a wrong claim about which rows are q, k and v cannot pass it.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netcompress as nc
from netcompress.core.errors import UnsupportedModelError
from netcompress.pruning.transformer_blocks import find_blocks
from netcompress.pruning.transformer_pruning import TransformerPruneConfig, transformer_prune
from netcompress.pruning.transformer_qkv_graph import split_from_graph, trace_tokens
from tests.transformer_masks import masked_heads_and_neurons

try:  # imported by name as vit-pytorch does (``from einops import rearrange``)
    from einops import rearrange
except ImportError:  # einops is not a netcompress dependency
    rearrange = None

DIM, HEADS, DIM_HEAD = 16, 4, 8


class TimmAttention(nn.Module):
    """timm's ``Attention`` (``merged``: the heads merged back with ``-1``; timm writes ``C``, the input width)."""

    def __init__(self, num_heads: int = HEADS, head_dim: int = DIM_HEAD, merged: str = "-1", heads_outer: bool = False):
        super().__init__()
        self.num_heads, self.head_dim, self.merged, self.heads_outer = num_heads, head_dim, merged, heads_outer
        self.qkv = nn.Linear(DIM, num_heads * head_dim * 3)
        self.proj = nn.Linear(num_heads * head_dim, DIM)

    def forward(self, x):
        B, N, C = x.shape
        if self.heads_outer:  # GPT-NeoX order: per head q_h | k_h | v_h
            qkv = self.qkv(x).reshape(B, N, self.num_heads, 3, self.head_dim).permute(3, 0, 2, 1, 4)
        else:
            qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        x = x.transpose(1, 2).reshape(B, N, C if self.merged == "C" else -1)
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, dim: int = DIM, hidden: int = 24) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, attn: nn.Module, mlp: nn.Module) -> None:
        super().__init__()
        self.norm1, self.attn, self.norm2, self.mlp = nn.LayerNorm(DIM), attn, nn.LayerNorm(DIM), mlp

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Net(nn.Module):
    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.blocks, self.head = nn.ModuleList(blocks), nn.Linear(DIM, 3)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(1))


def lucidrains_model(one_head_stem: bool = False) -> nn.Module:
    """vit-pytorch's ``Attention`` and ``FeedForward`` as written there (pre-norm inside each); ``one_head_stem``:
    first a one-head attention without output projection (T2T-ViT's token-to-token stage)."""
    if rearrange is None:
        pytest.skip("einops is not installed")

    class Attention(nn.Module):
        def __init__(self, dim: int = DIM, heads: int = HEADS, dim_head: int = DIM_HEAD) -> None:
            super().__init__()
            inner = dim_head * heads
            self.heads, self.scale = heads, dim_head**-0.5
            self.norm, self.attend = nn.LayerNorm(dim), nn.Softmax(dim=-1)
            self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
            project_out = not (heads == 1 and dim_head == dim)
            self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(0.0)) if project_out else nn.Identity()

        def forward(self, x):
            x = self.norm(x)
            qkv = self.to_qkv(x).chunk(3, dim=-1)
            q, k, v = map(lambda t: rearrange(t, "b n (h d) -> b h n d", h=self.heads), qkv)
            attn = self.attend(torch.matmul(q, k.transpose(-1, -2)) * self.scale)
            out = rearrange(torch.matmul(attn, v), "b h n d -> b n (h d)")
            return self.to_out(out)

    class FeedForward(nn.Module):
        def __init__(self, dim: int = DIM, hidden: int = 24) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0),
                                     nn.Linear(hidden, dim), nn.Dropout(0.0))  # fmt: skip

        def forward(self, x):
            return self.net(x)

    class Transformer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = Attention(heads=1, dim_head=DIM) if one_head_stem else nn.Identity()
            self.layers = nn.ModuleList([nn.ModuleList([Attention(), FeedForward()]) for _ in range(2)])
            self.head = nn.Linear(DIM, 3)

        def forward(self, x):
            x = x + self.stem(x)
            for attn, ff in self.layers:
                x = attn(x) + x
                x = ff(x) + x
            return self.head(x.mean(1))

    return Transformer()


def prune_and_compare(model: nn.Module, x: torch.Tensor) -> tuple[nn.Module, dict]:
    torch.manual_seed(0)
    model = model.eval()
    small, summary = transformer_prune(model, x, TransformerPruneConfig(heads=0.5, ffn=0.5))
    with torch.no_grad():
        got, want = small(x), masked_heads_and_neurons(model, summary)(x)
        assert (got - want).abs().max().item() < 1e-5
        assert (got - model(x)).abs().max().item() > 1e-4  # the comparison tells pruned from unpruned
    assert all(h["after"] == HEADS // 2 for h in summary["heads"]) and summary["heads"]
    return small, summary


X = torch.randn(2, 7, DIM)


def test_lucidrains_to_qkv_chunk_rearrange() -> None:
    model = lucidrains_model()
    blocks = find_blocks(model)
    assert [(u.name, u.layout, u.num_heads, u.head_dim, u.q, u.o) for u in blocks.attention][0] == (
        "layers.0.0", "packed", HEADS, DIM_HEAD, "layers.0.0.to_qkv", "layers.0.0.to_out.0"
    )  # fmt: skip
    assert [(u.up, u.down, u.width) for u in blocks.ffn][0] == (["layers.0.1.net.1"], "layers.0.1.net.4", 24)
    small, _ = prune_and_compare(model, X)
    attn = small.layers[0][0]
    assert (attn.heads, attn.to_qkv.out_features, attn.to_out[0].in_features) == (2, 3 * 2 * DIM_HEAD, 2 * DIM_HEAD)
    assert small.layers[0][1].net[1].out_features == 12


def test_a_one_head_attention_without_output_projection_is_left_alone() -> None:
    model = lucidrains_model(one_head_stem=True)
    blocks = find_blocks(model)
    assert blocks.unknown == {} and [u.name for u in blocks.attention] == ["layers.0.0", "layers.1.0"]
    small, _ = prune_and_compare(model, X)
    assert small.stem.to_qkv.out_features == 3 * DIM and small.layers[1][0].heads == 2


@pytest.mark.parametrize(("heads_outer", "layout"), [(False, "packed"), (True, "packed_heads")])
def test_split_is_read_from_the_graph(heads_outer: bool, layout: str) -> None:
    attn = TimmAttention(heads_outer=heads_outer)
    assert split_from_graph(*trace_tokens(attn, DIM), "qkv", HEADS * DIM_HEAD) == (layout, HEADS)
    model = Net([Block(TimmAttention(heads_outer=heads_outer), Mlp()) for _ in range(2)])
    assert [u.layout for u in find_blocks(model).attention] == [layout, layout]
    small, _ = prune_and_compare(model, X)
    assert small.blocks[0].attn.num_heads == 2 and small.blocks[0].attn.qkv.out_features == 3 * 2 * DIM_HEAD


def test_a_block_merging_heads_to_the_input_width_is_refused_by_name() -> None:
    model = Net([Block(TimmAttention(head_dim=DIM // HEADS, merged="C"), Mlp())]).eval()  # timm: inner == dim
    assert [u.layout for u in find_blocks(model).attention] == ["packed"]
    with pytest.raises(UnsupportedModelError, match=r"'blocks\.0\.attn'"):
        nc.prune_transformer(model, X, heads=0.5, ffn=0.0)
    small = nc.prune_transformer(model, X, heads=0.0, ffn=0.5)  # its FFN still prunes
    assert small.blocks[0].mlp.fc1.out_features == 12


class NoHeadCountAttention(nn.Module):
    """The head count is a constant of the code: pruning could not update what the forward reads."""

    def __init__(self) -> None:
        super().__init__()
        self.fused, self.mix = nn.Linear(DIM, 3 * HEADS * DIM_HEAD), nn.Linear(HEADS * DIM_HEAD, DIM)

    def forward(self, x):
        B, N, _ = x.shape
        qkv = self.fused(x).reshape(B, N, 3, 4, DIM_HEAD).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(*qkv.unbind(0))
        return self.mix(x.transpose(1, 2).reshape(B, N, -1))


def test_heads_no_attribute_holds_are_named() -> None:
    blocks = find_blocks(Net([Block(NoHeadCountAttention(), Mlp())]))
    assert not blocks.attention
    assert "fused q|k|v layer 'fused' splits into 4 heads, but no attribute" in blocks.unknown["blocks.0.attn"]


def test_pruned_fused_models_export_to_onnx(tmp_path) -> None:
    for i, model in enumerate([lucidrains_model(), Net([Block(TimmAttention(), Mlp())])]):
        small, _ = prune_and_compare(model, X)
        report = nc.export_onnx(small, tmp_path / f"m{i}.onnx", X, check=True)
        assert report["check"]["max_abs_diff"] < 1e-4


def test_monai_sablock_and_rtdl_attention() -> None:
    monai = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    vit = monai.ViT(in_channels=1, img_size=(16, 16), patch_size=(8, 8), hidden_size=32, mlp_dim=48, num_layers=2,
                    num_heads=4, classification=True, num_classes=3, spatial_dims=2).eval()  # fmt: skip
    assert [(u.layout, u.num_heads, u.o) for u in find_blocks(vit).attention][0] == ("packed", 4, "blocks.0.attn.out_proj")
    small = nc.prune_transformer(vit, torch.randn(2, 1, 16, 16), heads=0.5, ffn=0.5)
    attn = small.blocks[0].attn
    assert attn.num_heads == 2 and attn.input_rearrange.axes_lengths == {"qkv": 3, "l": 2}
    rtdl = pytest.importorskip("rtdl_revisiting_models")
    layer = rtdl.MultiheadAttention(d_embedding=DIM, n_heads=HEADS, dropout=0.0)
    unit = find_blocks(layer).attention[0]
    assert (unit.layout, unit.num_heads, unit.q, unit.o) == ("linear", HEADS, "W_q", "W_out")


class CachingAttention(TimmAttention):
    """Caches the token count on itself (as Swin caches a window size) and holds a BatchNorm over the output."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(DIM)

    def forward(self, x):
        self.tokens = x.shape[1]
        return self.bn(super().forward(x).transpose(1, 2)).transpose(1, 2)


def test_reading_the_split_leaves_the_module_as_it_was() -> None:
    attn = CachingAttention().train()
    stats = attn.bn.running_mean.clone(), attn.bn.running_var.clone(), int(attn.bn.num_batches_tracked)
    assert find_blocks(Net([Block(attn, Mlp())])).attention[0].layout == "packed"
    assert attn.training and attn.bn.training and not hasattr(attn, "tokens")
    assert torch.equal(attn.bn.running_mean, stats[0]) and torch.equal(attn.bn.running_var, stats[1])
    assert int(attn.bn.num_batches_tracked) == stats[2]


class QueryKVAttention(nn.Module):
    """vit-pytorch's CrossViT / CaiT attention: ``to_q`` and one ``to_kv`` chunked into k | v."""

    def __init__(self, heads: int = HEADS) -> None:
        super().__init__()
        self.heads, self.norm = heads, nn.LayerNorm(DIM)
        self.to_q, self.to_kv = nn.Linear(DIM, heads * DIM_HEAD, bias=False), nn.Linear(DIM, 2 * heads * DIM_HEAD)
        self.to_out = nn.Sequential(nn.Linear(heads * DIM_HEAD, DIM), nn.Dropout(0.0))

    def forward(self, x, context=None):
        x = self.norm(x)
        context = x if context is None else context
        qkv = (self.to_q(x), *self.to_kv(context).chunk(2, dim=-1))
        q, k, v = map(lambda t: rearrange(t, "b n (h d) -> b h n d", h=self.heads), qkv)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


def test_query_and_fused_key_value() -> None:
    if rearrange is None:
        pytest.skip("einops is not installed")
    model = Net([Block(QueryKVAttention(), Mlp()) for _ in range(2)])
    unit = find_blocks(model).attention[0]
    assert (unit.layout, unit.num_heads, unit.q, unit.k, unit.v, unit.o) == (
        "q_kv", HEADS, "blocks.0.attn.to_q", "blocks.0.attn.to_kv", "blocks.0.attn.to_kv", "blocks.0.attn.to_out.0"
    )  # fmt: skip
    small, summary = prune_and_compare(model, X)
    attn = small.blocks[0].attn
    assert (attn.heads, attn.to_q.out_features, attn.to_kv.out_features) == (2, 2 * DIM_HEAD, 4 * DIM_HEAD)
    kept = summary["heads"][0]["kept"]  # k rows of the kept heads, then their v rows
    rows = torch.cat([torch.arange(h * DIM_HEAD, (h + 1) * DIM_HEAD) for h in kept])
    want = model.blocks[0].attn.to_kv.weight[torch.cat([rows, rows + HEADS * DIM_HEAD])]
    assert torch.equal(attn.to_kv.weight, want)
