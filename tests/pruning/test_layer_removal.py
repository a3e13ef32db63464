"""Depth pruning in a plain chain: a C->C conv + BN + ReLU of a VGG removed whole (issue 18, session 16).

The removed model must equal the original with those modules replaced by identities, and a VGG built without
that layer (same weights): same outputs, exact MACs and parameters, in PyTorch and ONNX Runtime. A layer whose
widths differ, one whose chain changes the shape (stride 2), one outside an nn.Sequential and one called twice
are refused with the reason. The least-squares refit of the next layer lowers its output error.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from netcompress.core.errors import ConfigError, UnsupportedModelError
from netcompress.evaluation import count_macs, parameter_counts
from netcompress.export import OrtModel, export_onnx
from netcompress.models.vgg import cifar_vgg
from netcompress.pruning.layer_removal import find_chain, remove_layers

X = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
CFG = [8, 8, "M", 16, 16, "M", 16]


def _vgg(cfg=CFG) -> nn.Module:
    torch.manual_seed(0)
    model = cifar_vgg(cfg=cfg, num_classes=10)
    for m in model.modules():  # non-trivial BN statistics, so a wrong copy would show
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def test_removed_model_equals_identities_and_the_shorter_vgg() -> None:
    model = _vgg()
    small, summary = remove_layers(model, X, ["features.3", "features.10"])
    assert summary["removed"] == [
        {"parent": "features", "modules": ["features.3", "features.4", "features.5"]},
        {"parent": "features", "modules": ["features.10", "features.11", "features.12"]},
    ]
    assert summary["refit"] is None
    by_hand = copy.deepcopy(model)
    for i in (3, 4, 5, 10, 11, 12):
        by_hand.features[i] = nn.Identity()
    # the same network written as a shorter cfg, the surviving weights copied in order
    shorter = _vgg([8, "M", 16, "M", 16])
    kept = [m for i, m in enumerate(model.features) if i not in (3, 4, 5, 10, 11, 12)]
    for dst, src in zip(shorter.features, kept):
        dst.load_state_dict(src.state_dict())
    shorter.classifier.load_state_dict(model.classifier.state_dict())
    with torch.no_grad():
        out = small(X)
        assert torch.equal(out, by_hand(X))
        assert torch.allclose(out, shorter(X), atol=1e-6)
        assert not torch.allclose(out, model(X), atol=1e-3)  # the removal did change the model
    macs, per_layer = count_macs(model, X)
    assert count_macs(small, X)[0] == count_macs(shorter, X)[0]
    assert count_macs(small, X)[0] == macs - per_layer["features.3"] - per_layer["features.10"] - sum(
        per_layer.get(f"features.{i}", 0) for i in (4, 5, 11, 12)
    )
    assert count_macs(small, X)[0] < macs
    assert parameter_counts(small)["params"] == parameter_counts(shorter)["params"]
    # conv weights (no bias in front of BN) and BN weight + bias of the two removed chains
    removed = (8 * 8 * 9 + 2 * 8) + (16 * 16 * 9 + 2 * 16)
    assert parameter_counts(small)["params"] == parameter_counts(model)["params"] - removed
    assert torch.equal(model.features[3].weight, _vgg().features[3].weight)  # the input is left alone


def test_removed_model_runs_in_onnx_runtime_like_pytorch(tmp_path) -> None:
    small, _ = remove_layers(_vgg(), X, ["features.3"])
    path = tmp_path / "small.onnx"
    export_onnx(small, path, X)
    with torch.no_grad():
        expected = small(X)
    got = torch.as_tensor(OrtModel(path, threads=1)(X))
    assert torch.allclose(got, expected, atol=1e-4)


def test_refit_lowers_the_next_layers_output_error() -> None:
    model = _vgg()
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 3, 8, 8, generator=gen), torch.zeros(8, dtype=torch.long)) for _ in range(3)]
    plain, _ = remove_layers(model, X, ["features.3"])
    small, summary = remove_layers(model, X, ["features.3"], loader=batches, num_batches=3)
    (row,) = summary["refit"]["layers"]
    assert row["name"] == "features.7"  # the first conv after the removed chain (past the max-pool)
    assert row["error_after"] < 0.9 * row["error_before"]

    def next_conv_out(m: nn.Module) -> torch.Tensor:
        seen = []
        handle = m.features[7].register_forward_hook(lambda _m, _i, o: seen.append(o))
        with torch.no_grad():
            m(batches[0][0])
        handle.remove()
        return seen[0]

    target = next_conv_out(model)
    assert (next_conv_out(small) - target).norm() < (next_conv_out(plain) - target).norm()
    # only the refit layer changed
    changed = [n for n, p in small.state_dict().items() if not torch.equal(p, plain.state_dict()[n])]
    assert changed == ["features.7.weight"]


class Wrapped(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        y = self.conv(self.stem(x))
        return self.head((y + self.stem(x)).mean((2, 3)))


def test_refusals_name_the_problem() -> None:
    model = _vgg()
    with pytest.raises(UnsupportedModelError, match="maps 8 to 16 channels"):
        find_chain(model, "features.7", X)
    with pytest.raises(UnsupportedModelError, match="only Conv1d/2d/3d and Linear"):
        find_chain(model, "features.4", X)
    with pytest.raises(ConfigError, match="no module named 'features.99'"):
        remove_layers(model, X, ["features.99"])
    with pytest.raises(ConfigError, match="non-empty list"):
        remove_layers(model, X, "features.3")
    with pytest.raises(ConfigError, match="named twice"):
        remove_layers(model, X, ["features.3", "features.3"])
    strided = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())
    with pytest.raises(UnsupportedModelError, match=r"turns shape \(4, 8, 8, 8\) into \(4, 8, 4, 4\)"):
        find_chain(strided, "1", X)
    with pytest.raises(
        UnsupportedModelError, match="not in a plain chain: its parent 'the model' is a Wrapped"
    ):
        find_chain(Wrapped(), "conv", X)
    shared = nn.Conv2d(8, 8, 3, padding=1)
    twice = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), shared, nn.ReLU(), shared)
    with pytest.raises(UnsupportedModelError, match="called 2 times"):
        find_chain(twice, "1", X)
