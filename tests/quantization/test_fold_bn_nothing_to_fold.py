"""BN folding of a model without BatchNorm: nothing to fold, so no trace (models torch.fx cannot trace pass)
and the result is an eval-mode copy of the model's own class, which saves, loads and exports as the model does."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.core.errors import UnsupportedModelError
from netcompress.quantization import fold_bn
from netcompress.quantization.bn_folding import NOTHING_TO_FOLD, fold_bn_and_report
from netcompress.quantization.equalization import equalize_cross_layer_
from netcompress.quantization.ptq import prepare_quantized


class Untraceable(nn.Module):
    """Control flow on a tensor's value: torch.fx cannot trace it, with or without example inputs."""

    def __init__(self, bn: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8) if bn else nn.Identity()
        self.relu = nn.ReLU()
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.bn(self.conv(x))).mean((2, 3))
        if h.sum() > 1e9:  # data-dependent branch
            h = h * 0
        return self.head(h)


def test_untraceable_model_without_batchnorm_comes_back_unchanged(tmp_path):
    torch.manual_seed(0)
    model, x = Untraceable().train(), torch.randn(2, 3, 6, 6)
    folded, summary = fold_bn_and_report(model)
    assert summary == {"folded": [], "num_folded": 0, "bn_left": [], "not_folded": [], "nothing_to_fold": NOTHING_TO_FOLD}
    assert type(folded) is Untraceable and folded is not model and not folded.training
    assert model.training  # the user's model is untouched
    assert folded.state_dict().keys() == model.state_dict().keys()
    with torch.no_grad():
        assert torch.equal(folded(x), model.eval()(x))
    # what a user does next with the result: save/load through nc.save, export to ONNX
    nc.save(folded, tmp_path / "f.nc")
    loaded = nc.load(tmp_path / "f.nc", allow_modules=[__name__])
    assert type(loaded) is Untraceable
    with torch.no_grad():
        assert torch.equal(loaded(x), folded(x))
    nc.export_onnx(folded, tmp_path / "f.onnx", x, check=True)
    assert type(fold_bn(model)) is Untraceable


def test_untraceable_model_with_batchnorm_is_still_refused_by_name():
    with pytest.raises(UnsupportedModelError, match="torch.fx cannot trace Untraceable"):
        fold_bn_and_report(Untraceable(bn=True))


def test_traceable_model_without_batchnorm_then_equalisation_and_static_quantization():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    with torch.no_grad():
        model[0].weight[0].mul_(20)  # one wide channel: equalisation rescales it
    x = torch.randn(2, 3, 8, 8)
    folded = fold_bn(model)
    assert type(folded) is nn.Sequential
    with torch.no_grad():
        ref = folded(x)
    summary = equalize_cross_layer_(folded)  # the docstring's fold_bn -> equalize path, on a plain module
    assert summary["pairs"] == [["0", "2"]]
    assert folded[0].weight[0].abs().max() < model[0].weight[0].abs().max() / 2
    with torch.no_grad():
        torch.testing.assert_close(folded(x), ref, atol=1e-5, rtol=1e-4)
    # static PTQ still places its quantizers on the traced graph (not the eager fallback)
    qmodel, info = prepare_quantized(model, plan_defaults={"bits": 8, "act_bits": 8}, layers=None, mode="static")
    assert info["graph"] == "fx" and info["fold_bn"]["nothing_to_fold"] == NOTHING_TO_FOLD
    assert info["activation_quantizers"] == {"outputs": 2, "inputs": 1}
    # the untraceable one falls back to eager wrapping, as before, and still says there was nothing to fold
    _, eager = prepare_quantized(Untraceable(), plan_defaults={"bits": 8, "act_bits": 8}, layers=None, mode="static")
    assert eager["graph"].startswith("eager (fx failed: torch.fx cannot trace Untraceable")
    assert eager["fold_bn"]["num_folded"] == 0


def test_a_folded_graph_module_saves_loads_and_exports(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)).eval()
    model[1].running_mean.uniform_(-0.5, 0.5)
    x = torch.randn(2, 3, 6, 6)
    folded, summary = fold_bn_and_report(model)
    assert summary["folded"] == [["0", "1"]] and "nothing_to_fold" not in summary
    assert isinstance(folded, torch.fx.GraphModule)
    assert list(folded.state_dict()) == ["0.weight", "0.bias", "4.weight", "4.bias"]
    nc.save(folded, tmp_path / "f.nc")
    loaded = nc.load(tmp_path / "f.nc")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=1e-5, rtol=1e-4)
    nc.export_onnx(folded, tmp_path / "f.onnx", x, check=True)
