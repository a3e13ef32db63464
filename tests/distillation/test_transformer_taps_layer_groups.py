"""Looped layers no layer boundary inside one container confirms (session 15): x-transformers keeps attention and
feed-forward in neighbouring containers (``ModuleList([ModuleList([norms]), block, Residual])`` each), so a layer is the
attention container plus the containers after it up to the next one; vit-pytorch's PiT / CrossViT stages hold one
layer each, whose stream is confirmed by what the stage does after its loop (a final norm's input, or the stage's
output). Every tapped state is compared with the stream the model computes itself."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from netcompress.core.errors import UnsupportedModelError
from netcompress.distillation.transformer_taps import TransformerTaps
from tests.tiny_attention import Attention


def _ff() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 24), nn.GELU(), nn.Linear(24, 16))


def _tapped(model: nn.Module, x: torch.Tensor) -> tuple[TransformerTaps, list[torch.Tensor]]:
    taps = TransformerTaps(model, who="student")
    with torch.no_grad():
        model(x)
    taps.resolve()
    got = [taps.hidden(i) for i in range(taps.num_layers + 1)]
    taps.close()
    return taps, got


@pytest.mark.parametrize("kw", [{}, {"pre_norm": False}, {"ff_glu": True, "use_rmsnorm": True}])
def test_x_transformers_layers_read_their_own_hiddens(kw) -> None:
    xt = pytest.importorskip("x_transformers")
    torch.manual_seed(0)
    enc = xt.Encoder(dim=16, depth=3, heads=2, **kw).eval()
    x = torch.randn(2, 5, 16)
    taps, got = _tapped(enc, x)
    assert taps.layer_names == ["layers.0", "layers.2", "layers.4"] and taps.stream_form == "out"
    with torch.no_grad():
        out, inter = enc(x, return_hiddens=True)  # the input of every attention layer, as x-transformers records it
        assert len(inter.hiddens) == 3
        for g, w in zip(got, inter.hiddens):
            torch.testing.assert_close(g, w, rtol=0, atol=0)
        torch.testing.assert_close(enc.final_norm(got[-1]), out, rtol=1e-6, atol=1e-6)
        assert (got[-1] - got[-2]).abs().max() > 0.1  # the last layer's feed-forward container is read too


class Stage(nn.Module):
    """vit-pytorch's PiT ``Transformer`` (``norm=False``: returns the loop's x) or CrossViT's (a final norm)."""

    def __init__(self, norm: bool, head: bool = False) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.ModuleList([Attention(), _ff()])])
        self.norm = nn.LayerNorm(16) if norm else None
        self.head = head

    def forward(self, x):
        for attn, ff in self.layers:
            x = attn(x) + x
            x = ff(x) + x
        x = x if self.norm is None else self.norm(x)
        return x[:, 0] if self.head else x

    def by_hand(self, x):
        attn, ff = self.layers[0]
        x = attn(x) + x
        return ff(x) + x


class PiTLike(nn.Module):
    """Two one-layer stages with a pooling Linear between them (PiT with depth (1, 1))."""

    def __init__(self, norm: bool) -> None:
        super().__init__()
        self.stages = nn.ModuleList([Stage(norm), nn.Linear(16, 16), Stage(norm)])

    def forward(self, x):
        for stage in self.stages:
            x = stage(x)
        return x

    def by_hand(self, x):
        first = self.stages[0].by_hand(x)
        return [x, first, self.stages[2].by_hand(self.stages[1](self.stages[0](x)))]


@pytest.mark.parametrize("norm", [False, True])
def test_one_layer_stages_read_the_stream_their_stage_confirms(norm: bool) -> None:
    torch.manual_seed(0)
    model, x = PiTLike(norm).eval(), torch.randn(2, 5, 16)
    taps, got = _tapped(model, x)
    assert taps.layer_names == ["stages.0.layers.0", "stages.2.layers.0"] and taps.stream_form == "sum"
    with torch.no_grad():
        want = model.by_hand(x)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    single = Stage(norm=True).eval()  # vit-pytorch's Transformer of depth 1: one layer, then the norm
    taps, got = _tapped(single, x)
    assert taps.stream_form == "sum"
    with torch.no_grad():
        torch.testing.assert_close(got[1], single.by_hand(x), rtol=1e-5, atol=1e-6)


def test_a_one_layer_model_is_confirmed_by_its_own_output() -> None:
    # the owner is the model itself: its output hook must not be cleared by the per-forward reset
    torch.manual_seed(0)
    model, x = Stage(norm=False).eval(), torch.randn(2, 5, 16)
    taps, got = _tapped(model, x)
    assert taps.layer_names == ["layers.0"] and taps.stream_form == "sum"
    with torch.no_grad():
        torch.testing.assert_close(got[1], model.by_hand(x), rtol=1e-5, atol=1e-6)


def test_a_one_layer_stage_whose_output_is_not_the_stream_is_refused_by_name() -> None:
    model = nn.Sequential(Stage(norm=False, head=True)).eval()  # returns the first token only
    with pytest.raises(UnsupportedModelError, match=r"layer '0\.layers\.0' is a ModuleList.*what its owner does after"):
        _tapped(model, torch.randn(2, 5, 16))
