"""Hidden-width pruning of adaLN transformers (DiT, PixArt): a modulation layer ``Linear(d, k * d)`` whose ``k``
chunks (shift, scale, gate) are applied channel by channel to the stream keeps stream channel ``c``'s row in every
chunk; a final projection as wide as the stream by chance (DiT's ``proj_out_2``, whose output no module reads) keeps
its outputs; a position buffer (DiT's sin-cos table) keeps the kept channels.

The hand-written DiT has no norm on the stream, so channels no layer writes (zero rows in every writer, zero
columns in the position table, zero rows in every modulation chunk) can be pruned without changing the output: the
pruned model must equal the ORIGINAL (an independent check). diffusers' ``DiTTransformer2DModel`` is compared with
the masked original the pruner documents, plus the row layout of every chunk.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from netcompress.pruning.transformer_blocks import find_blocks
from netcompress.pruning.transformer_pruning import TransformerPruneConfig, transformer_prune
from netcompress.pruning.transformer_stream import find_outputs_only, stream_layers
from netcompress.pruning.transformer_surgery import TransformerPlan
from netcompress.pruning.transformer_verify import masked_reference
from tests.tiny_attention import Attention

D = 16
pytestmark = pytest.mark.filterwarnings("ignore:buffer.s. .* now hold the kept channels")


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = Attention(D, heads=2)
        self.fc1, self.act, self.fc2 = nn.Linear(D, 32), nn.GELU(), nn.Linear(32, D)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * D))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c)[:, None].chunk(6, dim=-1)
        x = x + gate1 * self.attn(x * (1 + scale1) + shift1)
        return x + gate2 * self.fc2(self.act(self.fc1(x * (1 + scale2) + shift2)))


class HandDiT(nn.Module):
    """Patch conv + fixed position table, label conditioning, two adaLN-Zero blocks (no norms), final shift/scale
    from ``final_mod`` (a Linear(d, 2d) outside the blocks) and a per-token projection as wide as the stream."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.patch = nn.Conv2d(4, D, 2, stride=2)
        self.register_buffer("pos", torch.randn(1, 16, D))
        self.label = nn.Embedding(10, D)
        self.blocks = nn.ModuleList(Block() for _ in range(2))
        self.final_mod = nn.Linear(D, 2 * D)
        self.proj = nn.Linear(D, D)  # 16 = 2 x 2 patch x 4 channels: the output, not the stream (reshaped)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        c = self.label(y)
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.final_mod(nn.functional.silu(c))[:, None].chunk(2, dim=-1)
        pixels = self.proj(h * (1 + scale) + shift)  # (N, 16 patches, 2 x 2 x 4): unpatchified as DiT does
        return pixels.reshape(-1, 4, 4, 2, 2, 4).permute(0, 5, 1, 3, 2, 4).reshape(-1, 4, 8, 8)


X = (torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([3, 7]))
DEAD = [1, 4, 9, 14]


def _kill(model: HandDiT) -> HandDiT:
    """Zero stream channels DEAD wherever they are written (the conditioning as wide as the stream included): the
    output cannot depend on them. Their reader columns are zeroed too, so magnitude scores pick exactly them."""
    with torch.no_grad():
        model.patch.weight[DEAD] = 0
        model.patch.bias[DEAD] = 0
        model.pos[..., DEAD] = 0
        model.label.weight[:, DEAD] = 0
        model.final_mod.weight[:, DEAD] = 0
        model.proj.weight[:, DEAD] = 0
        for b in model.blocks:
            for layer in (b.attn.to_out, b.fc2):
                layer.weight[DEAD] = 0
                layer.bias[DEAD] = 0
            for layer in (b.attn.to_q, b.attn.to_k, b.attn.to_v, b.fc1, b.adaLN_modulation[1]):
                layer.weight[:, DEAD] = 0
            rows = [j * D + c for j in range(6) for c in DEAD]
            b.adaLN_modulation[1].weight[rows] = 0
            b.adaLN_modulation[1].bias[rows] = 0
        rows = [j * D + c for j in range(2) for c in DEAD]
        model.final_mod.weight[rows] = 0
        model.final_mod.bias[rows] = 0
    return model.eval()


def test_stream_layers_of_a_hand_written_dit() -> None:
    model = HandDiT().eval()
    blocks = find_blocks(model)
    blocks.outputs_only = find_outputs_only(model, X)
    assert blocks.outputs_only == {"proj"}
    stream = stream_layers(model, blocks)
    assert stream.modulations == [("blocks.0.adaLN_modulation.1", 6), ("blocks.1.adaLN_modulation.1", 6),
                                  ("final_mod", 2)]  # fmt: skip
    assert stream.buffers == [("", "pos")] and "proj" in stream.readers and "proj" not in stream.writers


def test_dead_stream_channels_of_an_adaln_model_go_without_changing_its_output() -> None:
    model = _kill(HandDiT())
    small, summary = transformer_prune(model, X, TransformerPruneConfig(heads=0.0, ffn=0.0, hidden=0.25))
    assert (summary["hidden_before"], summary["hidden_after"]) == (D, 12)
    assert small.blocks[0].adaLN_modulation[1].out_features == 72 and small.final_mod.out_features == 24
    assert small.pos.shape == (1, 16, 12) and (small.proj.in_features, small.proj.out_features) == (12, D)
    with torch.no_grad():
        torch.testing.assert_close(small(*X), model(*X), atol=1e-5, rtol=1e-5)


def test_a_model_without_adaln_has_no_modulations() -> None:
    """The same Linear(d, 2d) outside the blocks, in a model no layer of which is named adaLN: not a modulation."""
    model = HandDiT().eval()
    for b in model.blocks:
        b.mod = b.adaLN_modulation
        del b.adaLN_modulation
    blocks = find_blocks(model)
    assert stream_layers(model, blocks).modulations == []


def _check_against_masked(
    model: nn.Module, small: nn.Module, x: tuple, summary: dict, patch: str = "pos_embed.proj"
) -> list[int]:
    """pruned == the masked original (the reference ``transformer_verify`` documents); returns the kept channels,
    read off the patch convolution's rows."""
    w, w_small = model.get_submodule(patch).weight, small.get_submodule(patch).weight
    kept = [next(i for i in range(w.shape[0]) if torch.equal(w[i], row)) for row in w_small]
    blocks = find_blocks(model)
    blocks.outputs_only = find_outputs_only(model, x)
    plan = TransformerPlan(hidden=kept, hidden_width=D)
    plan.neurons = {f["name"]: f["kept"] for f in summary["ffn"]}
    ref = masked_reference(model, blocks, plan, stream_layers(model, blocks))
    with torch.no_grad():
        got, want, full = small(*x)[0], ref(*x)[0], model(*x)[0]
    assert got.shape == full.shape
    assert (got - want).abs().max().item() < 1e-5
    assert (got - full).abs().max().item() > 1e-4
    return kept


def test_diffusers_dit_hidden_width_equals_the_masked_original() -> None:
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    model = diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, num_layers=2,
                                            sample_size=8, patch_size=2, num_embeds_ada_norm=10).eval()  # fmt: skip
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(2, 4, 8, 8, generator=g), torch.randint(0, 1000, (2,), generator=g),
         torch.randint(0, 10, (2,), generator=g))  # fmt: skip
    with pytest.warns(UserWarning, match="pos_embed.pos_embed .* another input size"):
        small, summary = transformer_prune(model, x, TransformerPruneConfig(hidden=0.25))
    assert summary["hidden_after"] == 12
    kept = _check_against_masked(model, small, x, summary)
    linear, small_linear = model.transformer_blocks[0].norm1.linear, small.transformer_blocks[0].norm1.linear
    rows = [j * D + c for j in range(6) for c in kept]  # shift, scale, gate (attention, then FFN): channel c each
    assert torch.equal(small_linear.weight, linear.weight[rows][:, kept])
    assert torch.equal(small.proj_out_1.bias, model.proj_out_1.bias[[j * D + c for j in range(2) for c in kept]])
    assert small.proj_out_2.out_features == D  # 2 x 2 x 4 pixels per patch, as wide as the stream by chance
    assert torch.equal(small.pos_embed.pos_embed, model.pos_embed.pos_embed[..., kept])


class _PixArt(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.pixart = model

    def forward(self, x: torch.Tensor, text: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.pixart(x, encoder_hidden_states=text, timestep=t).sample


def test_diffusers_pixart_hidden_width_equals_the_masked_original() -> None:
    """PixArt: one AdaLayerNormSingle outside the blocks (Linear(d, 6d)), per-block ``scale_shift_table`` (6, d), the
    caption projection writing the cross-attention's d-wide keys, and ``proj_out`` writing 2 widths of pixels."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    model = _PixArt(diffusers.PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2, sample_size=8,
        patch_size=2, cross_attention_dim=16, caption_channels=12, norm_num_groups=4, use_additional_conditions=False,
    )).eval()  # fmt: skip
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 5, 12, generator=g),
         torch.randint(0, 1000, (2,), generator=g))  # fmt: skip
    small, summary = transformer_prune(model, x, TransformerPruneConfig(heads=0.0, ffn=0.0, hidden=0.25))
    assert summary["hidden_after"] == 12
    kept = _check_against_masked(model, small, x, summary, "pixart.pos_embed.proj")
    assert small.pixart.adaln_single.linear.out_features == 72 and small.pixart.proj_out.out_features == 32
    assert torch.equal(small.pixart.transformer_blocks[1].scale_shift_table,
                       model.pixart.transformer_blocks[1].scale_shift_table[:, kept])  # fmt: skip


def test_hidden_width_of_a_copy_leaves_the_original() -> None:
    model = HandDiT().eval()
    before = copy.deepcopy(model.state_dict())
    transformer_prune(model, X, TransformerPruneConfig(heads=0.0, ffn=0.0, hidden=0.25))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_forward_keeping_state_on_its_modules_prunes_and_stays_copyable() -> None:
    """The autograd probe for final projections runs on a copy, and the MAC count and the verification (run under
    grad) put back what the forward stores: a forward that keeps a tensor on its module (RecurrentGemma's recurrent
    state) would otherwise leave a graph tensor there, and the model no longer copies (a CRASH in the sweep)."""

    class Stateful(HandDiT):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            out = super().forward(x, y)
            self.last = out
            return out

    model = Stateful().eval()
    small, summary = transformer_prune(model, X, TransformerPruneConfig(heads=0.0, ffn=0.0, hidden=0.25))
    assert summary["hidden_after"] == 12
    copy.deepcopy(model)
    copy.deepcopy(small)  # the pruned copy too (verified under grad)
