"""The first-divergence note of a failed export check records each module's output; a later in-place op
(pytorchcv's ``BatchNorm -> ReLU(inplace=True)`` in MixNet) rewrote the recorded tensor, so an ONNX file that
matched PyTorch everywhere was reported as diverging at the BatchNorm (a MixNet int8 check named a BatchNorm
"91.7% off" while the growth was in its SE gates). Outputs are copied when recorded. And the exporter folds an
eval BatchNorm into the Conv before it: that Conv is compared with the norm's output, not the conv's (igcv3's float
check named its first conv "16.2% off")."""

from __future__ import annotations

import torch
from torch import nn

import netcompress as nc
from netcompress.export.divergence import first_divergence


def test_an_inplace_relu_after_a_module_does_not_fake_a_divergence(tmp_path):
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Linear(4, 8), nn.ReLU(inplace=True), nn.Linear(8, 2)).eval(), torch.randn(5, 4)
    assert (model[0](x) < 0).any()  # the ReLU changes the first layer's output
    nc.export_onnx(model, tmp_path / "m.onnx", x, int8=False, check=True)
    found = first_divergence(model, tmp_path / "m.onnx", x, tolerance=1e-4)
    assert found is not None and found["compared"] >= 2
    assert not found["exceeds"] and found["rel_diff"] < 1e-4


def test_a_conv_with_its_batchnorm_folded_is_compared_after_the_norm(tmp_path):
    # the exporter folds an eval BatchNorm into the Conv before it: the ONNX Conv holds the norm's output
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(128, 2)).eval()
    with torch.no_grad():
        model[1].running_mean.uniform_(-1.0, 1.0)
        model[1].running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 6, 6)
    nc.export_onnx(model, tmp_path / "m.onnx", x, int8=False, check=True)
    found = first_divergence(model, tmp_path / "m.onnx", x, tolerance=1e-4)
    assert found is not None and not found["exceeds"] and found["rel_diff"] < 1e-4


def test_small_fractions_keep_two_digits_in_the_note():
    from netcompress.export.divergence import percent

    assert (percent(0.05), percent(1e-4), percent(3.2e-4)) == ("5.0%", "0.01%", "0.032%")
