"""The check the early-exit ONNX tests share: per-segment files exported, run in ONNX Runtime, equal to PyTorch
at every exit (relative to each output's scale) and routing every sample to the same exit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn


def assert_ort_runs_like_pytorch(ee: nn.Module, folder: Path, x: torch.Tensor) -> dict[str, Any]:
    """Export ``ee`` per segment into ``folder``, run it with ``OrtEarlyExit`` on ``x``; return the export summary."""
    from netcompress.dynamic import OrtEarlyExit, export_early_exit_onnx

    summary = export_early_exit_onnx(ee, folder, x[:1])
    assert all(row["max_rel_diff"] < 1e-4 for row in summary["check"])
    runner = OrtEarlyExit(folder)
    with torch.no_grad():
        reference = ee.forward_all(x)
        expected = ee(x)
    for ref, got in zip(reference, runner.forward_all(x)):
        assert (ref - got).abs().max().item() < 1e-4 * max(1.0, ref.abs().max().item())
    got = runner(x)
    assert runner.last_exit_index.tolist() == ee.last_exit_index.tolist()
    assert (got - expected).abs().max().item() < 1e-4 * max(1.0, expected.abs().max().item())
    return summary


def randomise_bn_(model: nn.Module, gen: torch.Generator) -> None:
    """Give every BatchNorm2d of ``model`` non-trivial running statistics and affine parameters, IN PLACE (a fresh BN
    folds to the identity and would prove nothing)."""
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        n = bn.num_features
        bn.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
        bn.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
        bn.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
        bn.bias.data.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)
