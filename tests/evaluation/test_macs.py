"""MAC counts checked against the hand formula out_ch * out_spatial * (in_ch / groups) * kernel."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netcompress.evaluation import count_macs


def _out_len(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return math.floor((size + 2 * padding - dilation * (kernel - 1) - 1) / stride) + 1


def _conv_macs(conv: nn.Module, input_shape: tuple[int, ...]) -> int:
    batch, spatial = input_shape[0], input_shape[2:]
    outs = [
        _out_len(s, k, st, p, d)
        for s, k, st, p, d in zip(spatial, conv.kernel_size, conv.stride, conv.padding, conv.dilation)
    ]
    return (
        batch
        * conv.out_channels
        * math.prod(outs)
        * (conv.in_channels // conv.groups)
        * math.prod(conv.kernel_size)
    )


CONV_CASES = [
    ("conv2d_grouped_strided", nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2), (1, 4, 9, 9), 3600),
    ("conv2d_dilated", nn.Conv2d(3, 6, 3, padding=2, dilation=2), (1, 3, 10, 10), 16200),
    ("conv2d_depthwise", nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), (1, 8, 6, 6), 2592),
    ("conv2d_rect_kernel", nn.Conv2d(2, 4, (3, 1), stride=(2, 1)), (3, 2, 7, 5), 3 * 4 * 3 * 5 * 2 * 3),
    ("conv1d", nn.Conv1d(3, 6, 5, stride=2, padding=2, dilation=2), (2, 3, 40), 3240),
    ("conv1d_depthwise", nn.Conv1d(6, 6, 25, groups=6), (1, 6, 100), 6 * 76 * 25),
    ("conv1d_pointwise", nn.Conv1d(6, 12, 1), (1, 6, 50), 12 * 50 * 6),
]


@pytest.mark.parametrize("name,conv,shape,expected", CONV_CASES, ids=[c[0] for c in CONV_CASES])
def test_conv_macs_match_formula(name: str, conv: nn.Module, shape: tuple[int, ...], expected: int) -> None:
    total, per_layer = count_macs(conv, torch.randn(*shape))
    assert expected == _conv_macs(conv, shape)  # the literal above agrees with the formula
    assert total == expected
    assert per_layer == {"": expected}


def test_linear_macs_scale_with_batch() -> None:
    assert count_macs(nn.Linear(20, 7), torch.randn(3, 20))[0] == 3 * 20 * 7
    assert count_macs(nn.Linear(20, 7, bias=False), torch.randn(1, 20))[0] == 140


def _small_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8)),
        nn.Flatten(),
        nn.Linear(8 * 5 * 5, 10),
    )


def test_sequential_total_and_per_layer() -> None:
    total, per_layer = count_macs(_small_net(), torch.randn(1, 4, 9, 9))
    assert per_layer == {"0": 3600, "2.0": 8 * 25 * 9, "4": 2000}
    assert total == 3600 + 1800 + 2000 == sum(per_layer.values())


class _SincLike(nn.Module):
    """A leaf computing its kernel in a method and calling F.conv1d, like SincNet's front end."""

    def __init__(self) -> None:
        super().__init__()
        self.low = nn.Parameter(torch.rand(16, 1, 1))

    def filters(self) -> torch.Tensor:
        return torch.sin(self.low * torch.arange(31.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.filters(), stride=1, padding=15)


class _Wrapper(nn.Module):
    """A container doing a matmul in its own forward besides calling children; one child twice."""

    def __init__(self) -> None:
        super().__init__()
        self.front = _SincLike()
        self.proj = nn.Parameter(torch.randn(16, 4))
        self.head = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.front(x).mean(dim=2)  # (N, 16)
        hidden = features @ self.proj  # 16 * 4 MACs in the container itself
        return self.head(self.head(hidden))


def test_functional_conv_own_matmul_and_repeated_calls() -> None:
    total, per_layer = count_macs(_Wrapper(), torch.randn(1, 1, 200))
    assert per_layer == {"front": 16 * 200 * 31, "head": 2 * 16, "": 64}
    assert total == 16 * 200 * 31 + 32 + 64


def test_count_macs_leaves_model_untouched() -> None:
    model = _small_net().train()
    model[2].eval()
    count_macs(model, torch.randn(1, 4, 9, 9))
    assert model.training and not model[2].training and model[0].training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert float(model[2][1].running_mean.abs().sum()) == 0.0  # eval mode: BN statistics not updated
