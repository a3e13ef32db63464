"""einops calls (``from einops import rearrange``, as vit-pytorch and x-transformers write them) and layers
(``Rearrange``, as MONAI's ViT patch embedding): einops reads ``x.ndim`` / ``x.shape`` into a recipe cache keyed by
the shape, which a proxy cannot index (``KeyError: Proxy(getattr_2)``), so every fx-based verb refused them. They
stay single nodes of the graph now. Skipped where einops is absent (it is not a netcompress dependency)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

einops = pytest.importorskip("einops")
from einops import rearrange, reduce  # noqa: E402
from einops.layers.torch import Rearrange  # noqa: E402

from netcompress.quantization.tracing import trace_for_quantization  # noqa: E402


class EinopsNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.to_tokens = Rearrange("b c (h p) (w q) -> b (h w) (p q c)", p=4, q=4)
        self.proj, self.head = nn.Linear(48, 16), nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = rearrange(self.proj(self.to_tokens(x)), "b n (h d) -> b h n d", h=4)
        return self.head(reduce(t, "b h n d -> b (h d)", "mean"))


def test_einops_calls_and_layers_stay_single_nodes():
    torch.manual_seed(0)
    model, x = EinopsNet().eval(), torch.randn(2, 3, 16, 16)
    gm = trace_for_quantization(model)  # plain fx: no example needed
    kinds = {n.target for n in gm.graph.nodes if n.op in ("call_function", "call_module")}
    assert {rearrange, reduce, "to_tokens"} <= kinds
    torch.testing.assert_close(gm(x), model(x), rtol=0, atol=0)
    other = torch.randn(3, 3, 8, 8)  # another batch and image size: the patterns run again
    torch.testing.assert_close(gm(other), model(other), rtol=0, atol=0)
