"""Models whose own code reads a factorized layer's attributes (HF ViT: ``patch.weight.dtype``; HF
MobileNetV2: ``conv.stride``): factorize keeps those layers dense, named, when it can run the model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from netcompress.low_rank import factorize


class ReadsWeightAndStride(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 16, 3)
        self.body = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x.to(self.patch.weight.dtype))  # as HF ViT's patch embeddings
        pad = self.body.stride[0] - 1  # as HF MobileNetV2's TF padding
        x = self.body(nn.functional.pad(x, (pad, pad)))
        return self.head(x.mean((2, 3)))


def test_layers_read_from_outside_stay_dense_and_are_named():
    torch.manual_seed(0)
    model, x = ReadsWeightAndStride().eval(), torch.randn(2, 3, 8, 8)
    small, summary = factorize(model, rank=2, example_inputs=x)
    reasons = {s["name"]: s["reason"] for s in summary["skipped"]}
    assert "'weight'" in reasons["patch"] and "'stride'" in reasons["body"]
    assert [r["name"] for r in summary["layers"]] == ["head"]
    assert summary["factorized"] == 1
    assert isinstance(small.patch, nn.Conv2d) and isinstance(small.body, nn.Conv2d)
    assert summary["params_after"] == sum(p.numel() for p in small.parameters())
    assert summary["params_after"] < summary["params_before"]
    full, _ = factorize(model, energy=1.0, example_inputs=x)
    with torch.no_grad():
        torch.testing.assert_close(full(x), model(x), atol=1e-5, rtol=1e-4)


def test_without_example_inputs_the_error_names_the_attribute_and_the_fix():
    model = ReadsWeightAndStride().eval()
    small, _ = factorize(model, rank=2)
    with pytest.raises(AttributeError, match=r"no attribute 'weight'.*exclude="):
        small(torch.randn(1, 3, 8, 8))
    assert not hasattr(small.patch, "stride")  # still an AttributeError: hasattr and getattr defaults work


class TiedHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.mix = nn.Linear(16, 16)
        self.head = nn.Linear(16, 50, bias=False)
        self.head.weight = self.embed.weight  # tied, as a language model's output layer

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.mix(self.embed(ids)))


def test_a_weight_tied_to_another_module_is_not_factorized():
    model = TiedHead().eval()
    small, summary = factorize(model, rank=2)
    reasons = {s["name"]: s["reason"] for s in summary["skipped"]}
    assert "tied to 'embed'" in reasons["head"]
    assert small.head.weight is small.embed.weight
    assert [r["name"] for r in summary["layers"]] == ["mix"]
    assert summary["params_after"] < summary["params_before"]
