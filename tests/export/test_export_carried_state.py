"""A forward that stores state on its modules between calls (snntorch's neurons: ``self.mem = ...``, reset to
``zeros_like(self.mem)`` at the start of every forward). Traced as it is, the state of the previous call is a
constant of that batch size, and ONNX Runtime fails on any other batch. ``export_onnx`` traces from emptied state
when the outputs do not change (the neuron then builds its state from the input), and refuses a forward whose
outputs depend on the state, naming it.

Each export is run in ONNX Runtime at a batch size other than the example's and compared with PyTorch.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.core.errors import NetcompressError
from tests.tiny_spiking import Leaky


class SpikingNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.lif1, self.fc2, self.lif2 = nn.Linear(6, 12), Leaky(), nn.Linear(12, 3), Leaky()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m1, m2, total = self.lif1.reset_mem(), self.lif2.reset_mem(), 0
        for _ in range(3):
            s1, m1 = self.lif1(self.fc1(x), m1)
            _, m2 = self.lif2(self.fc2(s1), m2)
            total = total + m2
        return total


def _ort(path, x: torch.Tensor) -> torch.Tensor:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy().astype(np.float32)})[0])


def _export_and_run_at_another_batch(model: nn.Module, x: torch.Tensor, other: torch.Tensor, tmp_path) -> dict:
    model.eval()
    with torch.no_grad():
        model(x)  # the state now has the example's batch size, as after any use
        summary = nc.export_onnx(model, tmp_path / "m.onnx", x)
        want = model(other)
    got = _ort(tmp_path / "m.onnx", other)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert want.abs().max() > 0.1  # the comparison sees the neurons' output
    return summary


def test_state_reset_every_call_exports_dynamic_in_batch(tmp_path) -> None:
    x, other = torch.randn(2, 6), torch.randn(5, 6)
    summary = _export_and_run_at_another_batch(SpikingNet(), x, other, tmp_path)
    assert summary["state_emptied"] == ["lif1.mem", "lif2.mem"]
    assert summary["check"]["input_sets"] == ["example", "random batch of 8"]


class Accumulator(nn.Module):
    """A streaming state: every call adds to what the previous calls left (``self.h``, batch-first)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.h = torch.zeros(2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.h = torch.tanh(self.fc(x) + self.h)
        return self.h


def test_state_the_outputs_depend_on_is_refused_by_name(tmp_path) -> None:
    model = Accumulator().eval()
    with pytest.raises(NetcompressError, match=r"state on its modules between calls.*'?h'? \(Accumulator, shape \(2, 4\)\)"):
        nc.export_onnx(model, tmp_path / "a.onnx", torch.randn(2, 4))


def test_snntorch_leaky_synaptic_and_conv_nets_export_dynamic_in_batch(tmp_path) -> None:
    snn = pytest.importorskip("snntorch")

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.conv, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4 * 4 * 4, 3)
            self.lif1, self.lif2 = snn.Leaky(beta=0.8), snn.Synaptic(alpha=0.8, beta=0.9)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            m1 = self.lif1.reset_mem()
            syn2, m2 = self.lif2.reset_mem()
            total = 0
            for _ in range(3):
                s1, m1 = self.lif1(nn.functional.avg_pool2d(self.conv(x), 2) * 4, m1)
                _, syn2, m2 = self.lif2(self.fc(s1.flatten(1)), syn2, m2)
                total = total + m2
            return total

    x, other = torch.randn(2, 1, 8, 8), torch.randn(7, 1, 8, 8)
    summary = _export_and_run_at_another_batch(Net(), x, other, tmp_path)
    assert {"lif1.mem", "lif2.syn", "lif2.mem"} <= set(summary["state_emptied"])  # and each neuron's ``reset``
