"""benchmarks/resnet_widths.py: the allocations it builds have the widths and MACs it says."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))
rw = pytest.importorskip("resnet_widths")


@pytest.mark.parametrize(
    "stream,internal", [((16, 32, 64), (16, 32, 64)), ((8, 16, 40), (4, 16, 48)), ((16, 24, 56), (4, 8, 32))]
)
def test_built_model_has_the_widths_and_the_analytic_macs(stream, internal) -> None:
    from netcompress.evaluation import count_macs

    x = torch.randn(1, 3, 32, 32)
    model = rw.build(stream, internal, x)
    convs = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert convs["conv1"].out_channels == stream[0]
    for stage in (1, 2, 3):
        for block in range(3):
            assert convs[f"layer{stage}.{block}.conv1"].out_channels == internal[stage - 1]
            assert convs[f"layer{stage}.{block}.conv2"].out_channels == stream[stage - 1]
    # the analytic count is every convolution; count_macs adds the classifier (stream[2] * 10)
    assert int(count_macs(model, x)[0]) - stream[2] * 10 == rw.conv_macs(stream, internal)
    assert model(x).shape == (1, 10)


def test_allocations_keep_only_the_requested_reduction() -> None:
    found = rw.allocations(3.60, 3.62, torch.randn(1, 3, 32, 32))
    assert {"unpruned", "uniform 1/2"} <= set(found)
    others = [v for k, v in found.items() if k not in ("unpruned", "uniform 1/2")]
    assert others and all(3.60 <= v["mac_reduction"] <= 3.62 for v in others)
    assert found["uniform 1/2"]["mac_reduction"] == pytest.approx(3.96, abs=0.01)
