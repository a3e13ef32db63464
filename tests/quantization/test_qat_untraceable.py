"""QAT on models torch.fx traces only with values, and the int8 export of a QAT model not yet frozen."""

from __future__ import annotations

import torch
from torch import nn

import netcompress as nc
from netcompress.quantization import prepare_qat
from netcompress.quantization.fake_quant import FakeQuantize


class ShapeChecked(nn.Module):
    """Control flow on the input's shape (as HF ResNet checks num_channels): no symbolic trace."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != 3:
            raise ValueError("expected 3 channels")
        return self.head(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def _loader(scale: float = 1.0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [(scale * torch.randn(4, 3, 8, 8, generator=gen), torch.randint(0, 4, (4,), generator=gen))]


def test_prepare_qat_traces_with_the_calibration_batch_and_folds_bn(tmp_path):
    torch.manual_seed(0)
    q = prepare_qat(ShapeChecked().eval(), calib_loader=_loader())
    assert "eager" not in str(q.qat_info.get("graph", ""))  # before: eager wrapping, BN left unfolded
    assert q.qat_info["fold_bn"]["folded"] == [["conv", "bn"]]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in q.modules())
    s = nc.export_onnx(q.eval(), tmp_path / "q.onnx", _loader()[0][0], int8=True, check=True)
    assert s["int8_op_counts"].get("QLinearConv", 0) == 1


def test_int8_export_of_an_observing_qat_model_keeps_its_scales(tmp_path):
    torch.manual_seed(0)
    small = _loader(0.05)  # calibrated on a narrow range; the check's random batch is far wider
    q = prepare_qat(ShapeChecked().eval(), calib_loader=small).eval()
    assert any(m.observing for m in q.modules() if isinstance(m, FakeQuantize))
    scales = {k: v.clone() for k, v in q.state_dict().items() if k.endswith("scale")}
    s = nc.export_onnx(q, tmp_path / "q.onnx", small[0][0], int8=True, check=True, check_batch_size=8)
    assert s["check"]["max_rel_diff"] <= 0.05
    assert all(torch.equal(q.state_dict()[k], v) for k, v in scales.items())  # the user's model untouched
