"""Shapes that lucidrains' vit-pytorch reads (``b, n, _, h = *x.shape, self.heads``), a position table kept as a
plain tensor attribute (no parameter, no buffer): value tracing failed on both ("Proxy object cannot be
iterated", "needs a value the example input did not give"), so BN folding, int8 and early exits refused such models
(vit-pytorch's CaiT, PiT, LeViT, SimpleViT). The traced graphs now compute what the models compute."""

from __future__ import annotations

import torch
from torch import nn

from netcompress.quantization.bn_folding import fold_bn_and_report
from netcompress.quantization.tracing import trace_for_quantization


class Attention(nn.Module):
    def __init__(self, dim: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.heads, self.qkv, self.out = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _, h = *x.shape, self.heads  # unpacks the shape attribute itself
        q, k, v = (t.reshape(b, n, h, -1).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1))
        y = (q @ k.transpose(-1, -2)).softmax(-1) @ v
        return self.out(y.transpose(1, 2).reshape(b, n, -1))


class TinyViT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 16, 4, stride=4)
        self.bn = nn.BatchNorm2d(16)
        self.pos = torch.linspace(-1, 1, 16 * 16).reshape(16, 16)  # a plain attribute: no parameter, no buffer
        self.attn = Attention()
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 4:  # a shape check: plain fx cannot trace it, value tracing can
            raise ValueError("image size must be a multiple of 4")
        t = self.bn(self.patch(x)).flatten(2).transpose(1, 2) + self.pos.to(x.device, dtype=x.dtype)
        return self.head(self.attn(t).mean(1))


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = TinyViT().eval()
    model.bn.running_mean.uniform_(-0.3, 0.3)
    model.bn.running_var.uniform_(0.5, 1.5)
    return model


X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def test_star_unpacked_shapes_and_plain_tensor_attributes_trace():
    model = _model()
    gm = trace_for_quantization(model, example_inputs=X)
    torch.testing.assert_close(gm(X), model(X), rtol=0, atol=0)
    other = torch.randn(5, 3, 16, 16)  # the batch size stays free
    torch.testing.assert_close(gm(other), model(other), rtol=0, atol=0)
    folded, summary = fold_bn_and_report(model, example_inputs=X)
    assert summary["num_folded"] == 1
    torch.testing.assert_close(folded(X), model(X), rtol=1e-5, atol=1e-5)
