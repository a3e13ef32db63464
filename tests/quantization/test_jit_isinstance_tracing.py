"""``torch.jit.isinstance`` on a traced value (MONAI's U-Net up-sampling block ``UpCat``): plain torch.fx answers
False for a proxy, so the traced graph took the branch the model never takes (BN folding, 4-bit weights and early
exits then crashed on a channel mismatch). Now the type comes from the example input, or the trace fails by name."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.core.errors import UnsupportedModelError
from netcompress.dynamic import add_early_exits
from netcompress.pruning.graph_tracing import trace_model
from netcompress.quantization.bn_folding import fold_bn_and_report
from netcompress.quantization.tracing import trace_for_quantization


class UpCat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.convs = nn.Sequential(nn.Conv2d(8, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())

    def forward(self, x: torch.Tensor, x_e: torch.Tensor | None) -> torch.Tensor:
        x0 = self.up(x)
        if x_e is not None and torch.jit.isinstance(x_e, torch.Tensor):
            return self.convs(torch.cat([x_e, x0], dim=1))
        return self.convs(x0)  # 4 channels into an 8-channel conv: never taken by this model


class SkipNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.upcat = UpCat()
        self.head = nn.Conv2d(4, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        return self.head(self.upcat(self.down(s), s)).mean((2, 3))


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = SkipNet().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 1.5)
    return model


X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def test_without_an_example_the_trace_fails_naming_jit_isinstance():
    with pytest.raises(UnsupportedModelError, match=r"torch\.jit\.isinstance\(stem_2, Tensor\)"):
        trace_for_quantization(_model())


def test_traced_graphs_take_the_branch_the_model_takes():
    model = _model()
    want = model(X)
    assert torch.jit.isinstance is not None and torch.jit.isinstance(X, torch.Tensor)  # restored after tracing
    for gm in (trace_for_quantization(model, example_inputs=X), trace_model(model, X)):
        assert any(n.target is torch.cat for n in gm.graph.nodes)
        torch.testing.assert_close(gm(X), want, rtol=0, atol=0)


def test_bn_folding_and_4_bit_weights_keep_the_skip():
    model = _model()
    folded, summary = fold_bn_and_report(model, example_inputs=X)
    assert summary["num_folded"] == 3
    torch.testing.assert_close(folded(X), model(X), rtol=1e-5, atol=1e-5)
    q = nc.quantize(model, [(X, torch.zeros(2))], mode="weight_only", bits=4)
    err = (q(X) - model(X)).abs().max() / model(X).abs().max()
    assert 0 < err < 0.2


def test_early_exit_final_output_is_the_models():
    model = _model()
    ee = add_early_exits(model, exits=["down"], example_inputs=X[:1]).eval()
    with torch.no_grad():
        outs = ee.forward_all(X)
    assert len(outs) == 2 and outs[0].shape == (2, 5)
    torch.testing.assert_close(outs[-1], model(X), rtol=1e-6, atol=1e-6)
