"""Layers kept in a container the model never calls (vit-pytorch ViT / CaiT, rtdl): the distiller reads the residual
stream from the container's children (the last block's output, or that plus its input where the loop adds the
residual) and checks the form at every layer boundary; before session 14 CaiT's hidden-state term read
``LayerScale(attention)``, the attention branch, and the ViT / rtdl forms were refused."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.core.errors import UnsupportedModelError
from netcompress.distillation.transformer_taps import TransformerTaps


class Attention(nn.Module):
    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v, self.to_out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x, context=None):
        b, n, _ = x.shape
        kv = x if context is None else torch.cat([x, context], 1)
        q = self.to_q(x).view(b, n, self.heads, -1).transpose(1, 2)
        k, v = (f(kv).view(b, kv.shape[1], self.heads, -1).transpose(1, 2) for f in (self.to_k, self.to_v))
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


def _ff() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 24), nn.GELU(), nn.Linear(24, 16))


class LayerScale(nn.Module):
    """vit-pytorch CaiT's wrapper: the branch times a learned per-channel scale (the residual is added outside)."""

    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn, self.scale = fn, nn.Parameter(torch.full((1, 1, 16), 0.5))

    def forward(self, x, **kwargs):
        return self.fn(x, **kwargs) * self.scale


class ViTBlocks(nn.Module):
    """vit-pytorch's ``Transformer``: ``layers = ModuleList([ModuleList([attention, feed-forward])])``."""

    def __init__(self, depth: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.ModuleList([Attention(), _ff()]) for _ in range(depth))
        self.norm = nn.LayerNorm(16)

    def forward(self, x):
        for attn, ff in self.layers:
            x = attn(x) + x
            x = ff(x) + x
        return self.norm(x)

    def by_hand(self, x):
        states = [x]
        for attn, ff in self.layers:
            x = attn(x) + x
            x = ff(x) + x
            states.append(x)
        return states


class CaiTLike(nn.Module):
    """CaiT: patch layers wrapped in LayerScale, then one class-token layer attending to the patches."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.ModuleList(nn.ModuleList([LayerScale(Attention()), LayerScale(_ff())]) for _ in range(2))
        self.cls = nn.ModuleList([nn.ModuleList([LayerScale(Attention()), LayerScale(_ff())])])
        self.cls_token = nn.Parameter(torch.randn(1, 1, 16))

    def forward(self, x):
        for attn, ff in self.patch:
            x = attn(x) + x
            x = ff(x) + x
        c = self.cls_token.expand(x.shape[0], -1, -1)
        for attn, ff in self.cls:
            c = attn(c, context=x) + c
            c = ff(c) + c
        return c[:, 0]

    def by_hand(self, x):
        states = [x]
        for attn, ff in self.patch:
            x = attn(x) + x
            x = ff(x) + x
            states.append(x)
        c = self.cls_token.expand(x.shape[0], -1, -1)
        c = self.cls[0][0](c, context=x) + c
        return [*states, self.cls[0][1](c) + c]


class RtdlBlocks(nn.Module):
    """rtdl's FT-Transformer backbone: a ModuleDict per block, ending in ``block["output"]`` (an Identity)."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"attention": Attention(), "ffn_normalization": nn.LayerNorm(16), "ffn": _ff(),
                           "output": nn.Identity()})
            for _ in range(2)
        )  # fmt: skip

    def forward(self, x):
        for block in self.blocks:
            x = x + block["attention"](x)
            x = x + block["ffn"](block["ffn_normalization"](x))
            x = block["output"](x)
        return x

    def by_hand(self, x):
        states = [x]
        for block in self.blocks:
            x = x + block["attention"](x)
            states.append(x + block["ffn"](block["ffn_normalization"](x)))
            x = states[-1]
        return states


class PostNormBlocks(ViTBlocks):
    """``x = norm(x + f(x))``: the next layer's input is neither the last block's output nor output + input."""

    def __init__(self) -> None:
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(16) for _ in self.layers)

    def forward(self, x):
        for (attn, ff), norm in zip(self.layers, self.norms):
            x = x + attn(x)
            x = norm(x + ff(x))
        return x


def _taps(model: nn.Module, x: torch.Tensor) -> TransformerTaps:
    taps = TransformerTaps(model, who="student")
    with torch.no_grad():
        model(x)
    taps.resolve()
    return taps


@pytest.mark.parametrize(
    ("cls", "layers", "form"),
    [
        (ViTBlocks, ["layers.0", "layers.1"], "sum"),
        (CaiTLike, ["patch.0", "patch.1", "cls.0"], "sum"),
        (RtdlBlocks, ["blocks.0", "blocks.1"], "out"),
    ],
)
def test_the_tapped_hidden_state_is_the_residual_stream(cls, layers, form) -> None:
    torch.manual_seed(0)
    model = cls().eval()
    x = torch.randn(2, 5, 16)
    taps = _taps(model, x)
    assert taps.layer_names == layers and taps.stream_form == form
    got = [taps.hidden(i) for i in range(taps.num_layers + 1)]
    taps.close()  # (by_hand calls the hooked children)
    with torch.no_grad():
        want = model.by_hand(x)
    assert [g.shape for g in got] == [w.shape for w in want]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_caits_layer_is_not_its_attention_branch() -> None:
    torch.manual_seed(0)
    model = CaiTLike().eval()
    x = torch.randn(2, 5, 16)
    taps = _taps(model, x)
    with torch.no_grad():
        branch = model.patch[0][0](x)  # what the hook on LayerScale(attention) returned before
    assert (taps.hidden(1) - branch).abs().max() > 0.1
    taps.close()


def test_the_taps_are_rewritten_by_every_forward() -> None:
    torch.manual_seed(0)
    model = ViTBlocks().eval()
    taps = _taps(model, torch.randn(2, 5, 16))
    x = torch.randn(3, 4, 16)
    with torch.no_grad():
        model(x)
    got = taps.hidden(2)
    assert len(taps.looped.calls(1)) == 2  # attention and feed-forward of one forward
    clone = copy.deepcopy(model)  # (best-state copies in training) the captured tensors are not copied
    records = [h.__self__ for h in clone.layers[0][0]._forward_pre_hooks.values() if hasattr(h, "__self__")]
    assert len(records) == 1 and records[0].slots.values == {} and taps.slots.values
    taps.close()
    with torch.no_grad():
        want = model.by_hand(x)
    torch.testing.assert_close(got, want[2], rtol=1e-5, atol=1e-6)
    assert not model.layers[0][0]._forward_pre_hooks and not model._forward_pre_hooks


def test_a_post_norm_loop_is_refused_by_name() -> None:
    torch.manual_seed(0)
    with pytest.raises(UnsupportedModelError, match=r"layer 'layers\.0' is a ModuleList the model never calls.*post-norm"):
        _taps(PostNormBlocks().eval(), torch.randn(2, 5, 16))


def test_a_single_looped_layer_is_confirmed_by_the_norm_after_it() -> None:
    # no next layer; the stage's final norm receives the stream (test_transformer_taps_layer_groups.py: refused
    # where the stage hands on something else)
    torch.manual_seed(0)
    model, x = ViTBlocks(depth=1).eval(), torch.randn(2, 5, 16)
    taps = _taps(model, x)
    got = taps.hidden(1)
    taps.close()
    with torch.no_grad():
        torch.testing.assert_close(got, model.by_hand(x)[1], rtol=1e-5, atol=1e-6)


def test_distillation_trains_a_pruned_looped_student() -> None:
    torch.manual_seed(0)
    teacher = ViTBlocks().eval()
    batches = [torch.randn(2, 5, 16) for _ in range(2)]
    student = nc.prune_transformer(copy.deepcopy(teacher), batches[0], heads=0.5, ffn=0.5)
    assert student.layers[0][0].heads == 1
    before = copy.deepcopy(student.state_dict())
    s = nc.distill_transformer_(student, teacher, batches, val_loader=batches, example_inputs=batches[0], epochs=2,
                                lr=1e-3, attention_weight=0, progress=False)  # fmt: skip
    assert s["val_hidden_loss_after"] < s["val_hidden_loss_before"]
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())


class BranchBlocks(nn.Module):
    """Called layers that return their branch, the loop adds the residual: ``x = layer(x) + x``."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(LayerScale(Attention()) for _ in range(2))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x) + x
        return x


def test_a_called_layer_returning_its_branch_is_refused_by_name() -> None:
    torch.manual_seed(0)
    with pytest.raises(UnsupportedModelError, match=r"layer 'layers\.0' \(LayerScale\) returns something other than "
                       r"the input of the next layer 'layers\.1'"):  # fmt: skip
        _taps(BranchBlocks().eval(), torch.randn(2, 5, 16))
