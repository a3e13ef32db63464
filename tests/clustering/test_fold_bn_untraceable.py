"""cluster_weights_(fold_bn=True) on models torch.fx cannot trace symbolically (HF vision models)."""

from __future__ import annotations

import torch
from torch import nn

from netcompress.clustering import cluster_weights_


class ShapeChecked(nn.Module):
    """Control flow on the input's shape (as HF models check num_channels): no symbolic trace."""

    def __init__(self, bn: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8) if bn else nn.Identity()
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != 3:
            raise ValueError("expected 3 channels")
        return self.head(self.bn(self.conv(x)).mean((2, 3)))


def test_no_batchnorm_means_nothing_to_fold_and_no_trace():
    model = ShapeChecked(bn=False).eval()
    summary = cluster_weights_(model, clusters=4, fold_bn=True)
    assert summary["bn_folded"] == []
    assert len(summary["layers"]) == 2
    assert all(torch.unique(m.weight).numel() <= 4 for m in (model.conv, model.head))


def test_example_inputs_let_a_shape_checked_model_fold():
    torch.manual_seed(0)
    model, x = ShapeChecked(bn=True).eval(), torch.randn(2, 3, 6, 6)
    model.bn.running_mean.uniform_(-0.5, 0.5)
    model.bn.running_var.uniform_(0.5, 1.5)
    with torch.no_grad():
        ref = model(x)
    summary = cluster_weights_(model, clusters=4096, fold_bn=True, example_inputs=x)
    assert summary["bn_folded"] == [["conv", "bn"]]
    assert isinstance(model.bn, nn.Identity)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, atol=2e-3, rtol=1e-2)


class Mixed(nn.Module):
    """An LM-like model: a head tied to its embedding (GPT-2), an untied position table, a Conv3d."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.pos = nn.Embedding(3, 4)
        self.video = nn.Conv3d(4, 4, 1)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids) + self.pos.weight[: ids.shape[1]]
        x = self.video(x.permute(0, 2, 1)[..., None, None])[..., 0, 0].permute(0, 2, 1)
        return self.head(x)


def test_layers_of_other_types_are_named_as_left_dense():
    model, ids = Mixed(), torch.tensor([[1, 2, 3]])
    summary = cluster_weights_(model, clusters=4)
    # the tied embedding is clustered through its head, the Conv3d too (session 13); the other stays dense, named
    assert summary["not_clustered"] == {"pos": "Embedding"}
    assert torch.unique(model.video.weight).numel() <= 4
    assert torch.unique(model.embed.weight).numel() <= 4
    assert model(ids).shape == (1, 3, 10)
