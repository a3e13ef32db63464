"""Exits anywhere a traced model can be cut (inside residual blocks too), refusals that name the point,
and batched routing in which exited samples run nothing more (equal to a per-sample loop)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netcompress import models
from netcompress.core.errors import UnsupportedModelError
from netcompress.dynamic import EarlyExitModel, add_early_exits, exit_path_macs, route_exits
from netcompress.evaluation import count_macs

X = torch.randn(10, 3, 16, 16, generator=torch.Generator().manual_seed(0))
INSIDE = ["layer1.0.conv1", "layer2.1.relu1"]  # both cut through a residual block


def _resnet() -> nn.Module:
    torch.manual_seed(0)
    return models.create("cifar_resnet20", num_classes=10).eval()


def _sharp(ee: EarlyExitModel, scale: float = 200.0) -> EarlyExitModel:
    """Random heads give near-uniform softmax; scaled ones spread confidences across thresholds."""
    for head in ee.heads:
        head.fc.weight.data.mul_(scale)
    return ee


def _mixed_threshold(ee: EarlyExitModel, x: torch.Tensor) -> float:
    """A confidence threshold midway in the widest gap near the median of exit 0's scores."""
    with torch.no_grad():
        scores = F.softmax(ee.forward_all(x)[0], 1).amax(1).sort().values
    mid = len(scores) // 2
    gaps = scores[mid - 2 : mid + 3].diff()
    i = int(gaps.argmax()) + mid - 2
    return float((scores[i] + scores[i + 1]) / 2)


def test_exits_inside_residual_blocks_keep_the_model_and_pass_the_skip_on():
    resnet = _resnet()
    ee = add_early_exits(resnet, exits=INSIDE, example_inputs=X[:1]).eval()
    assert ee.exit_names == INSIDE
    # after layer1.0.conv1 the block input still waits for its skip: two values cross the cut
    state = ee.run_segment(0, (X,))
    assert len(state) == 2 and state[0].shape == (10, 16, 16, 16) and state[1].shape == (10, 16, 16, 16)
    assert torch.equal(state[1], resnet.relu(resnet.bn1(resnet.conv1(X))))
    assert ee.heads[0].fc.in_features == 16 and ee.heads[1].fc.in_features == 32
    with torch.no_grad():
        assert (ee(X) - resnet(X)).abs().max().item() < 1e-5  # threshold None: the original model
        ee.set_policy(threshold=1.01)
        assert (ee(X) - resnet(X)).abs().max().item() < 1e-5
    assert ee.last_exit_counts == [0, 0, 10]
    full = count_macs(resnet, X[:1])[0]
    assert exit_path_macs(ee, X[:1])[-1] == full + 16 * 10 + 32 * 10


def test_exit_after_a_stage_and_inside_a_stage_mix():
    ee = add_early_exits(_resnet(), exits=["layer2", "layer1.2.bn2"], example_inputs=X[:1]).eval()
    assert ee.exit_names == ["layer1.2.bn2", "layer2"]  # execution order, not the order given
    assert [len(ee.run_segment(0, (X,)))] == [2]


def test_batched_routing_equals_a_per_sample_loop():
    ee = _sharp(add_early_exits(_resnet(), exits=INSIDE, example_inputs=X[:1])).eval()
    ee.set_policy(threshold=_mixed_threshold(ee, X))
    with torch.no_grad():
        batched = ee(X)
        index = ee.last_exit_index.clone()
        loop = []
        for i in range(len(X)):
            loop.append(ee(X[i : i + 1]))
            assert ee.last_exit_index.item() == index[i].item()
    assert 0 < int((index == 0).sum()) < len(X)
    assert (batched - torch.cat(loop)).abs().max().item() < 1e-5
    with torch.no_grad():
        expected = route_exits(ee.forward_all(X), threshold=ee.threshold)
    assert index.tolist() == expected.tolist()


def test_exited_samples_run_no_later_segment():
    ee = _sharp(add_early_exits(_resnet(), exits=INSIDE, example_inputs=X[:1])).eval()
    ee.set_policy(threshold=_mixed_threshold(ee, X))
    seen: list[int] = []
    hooks = [s.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0])) for s in ee.segments]
    try:
        with torch.no_grad():
            ee(X)
    finally:
        for h in hooks:
            h.remove()
    counts = ee.last_exit_counts
    # segment k runs only the samples no earlier exit took
    assert seen[:2] == [10, 10 - counts[0]]
    if len(seen) == 3:
        assert seen[2] == counts[2]
    assert sum(counts) == 10


class _SizeAcross(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 16 * 16, 10)

    def forward(self, x):
        n = x.size(0)  # an int computed before the cut, used after it
        return self.fc(self.conv(x).reshape(n, -1))


class _Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3, 10)

    def forward(self, x):
        return self.fc(self.conv(self.conv(x)).mean((2, 3)))


class _WithLeaf(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, batch_first=True)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.enc(x).mean(1))


def test_points_the_tracer_cannot_split_are_refused_by_name():
    with pytest.raises(
        UnsupportedModelError, match=r"exit 'conv': the value 'size'.*not a per-sample tensor"
    ):
        add_early_exits(_SizeAcross(), exits=["conv"], example_inputs=X[:1])
    with pytest.raises(UnsupportedModelError, match="exit 'conv': that module runs 2 times"):
        add_early_exits(_Twice(), exits=["conv"], example_inputs=X[:1])
    with pytest.raises(UnsupportedModelError, match="'enc.linear1' lies inside 'enc'"):
        add_early_exits(_WithLeaf(), exits=["enc.linear1"], example_inputs=torch.randn(1, 5, 8))
