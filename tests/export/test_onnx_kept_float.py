"""An int8 ONNX file keeps float the layers the model keeps float (ONNX Runtime's WeightBiasQuantization
would quantize a float Conv/Gemm sitting between quantized ones to per-tensor int8), and an all-int8 file is
written as before."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import netcompress as nc
import netcompress.export.onnx as export_module
from netcompress.export.divergence import first_divergence
from netcompress.export.onnx import export_onnx
from netcompress.export.onnx_kept_float import keep_float_layers, quantize_biases
from netcompress.export.ort_model import ort_session
from netcompress.pruning.latency_joint import int8_model
from netcompress.quantization import quantize_accuracy_aware


def _vgg() -> nn.Module:
    torch.manual_seed(0)
    model = nc.models.create("cifar_vgg", cfg="narrow", num_classes=10).eval()
    with torch.no_grad():  # non-zero biases: their int32 codes are what the rewrite computes
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.normal_(0, 0.1)
    return model


FLOAT_PLAN = ["features.0", "features.7", "features.14", "classifier"]


def _nodes(path) -> dict[str, onnx.NodeProto]:
    return {n.name: n for n in onnx.load(str(path)).graph.node}


def _without_fix(monkeypatch) -> None:
    monkeypatch.setattr(
        export_module, "keep_float_layers", lambda raw, final: {"kept_float": [], "warning": None}
    )


def _run(path, x: torch.Tensor) -> np.ndarray:
    return ort_session(path).run(None, {"input": x.numpy()})[0]


def test_joint_plan_file_keeps_its_float_convs_float(tmp_path, monkeypatch):
    model, x = _vgg(), torch.randn(8, 3, 32, 32)
    qmodel = int8_model(model, [x], FLOAT_PLAN)
    summary = export_onnx(qmodel, tmp_path / "fixed.onnx", x, int8=True, check=True)
    assert summary["int8_op_counts"] == {"QLinearConv": 4}
    assert summary["kept_float"] == ["features.7", "features.14"]
    assert summary["float_layers"] == []  # kept-float layers are not reported as unfused quantized ones
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "fixed.onnx")).metadata_props}
    assert meta["netcompress.kept_float"] == "features.7,features.14"  # ort_session keeps them float at load
    nodes = _nodes(tmp_path / "fixed.onnx")
    inits = {i.name: i for i in onnx.load(str(tmp_path / "fixed.onnx")).graph.initializer}
    for layer in ("features.0", "features.7", "features.14"):
        node = nodes[f"/model/{layer}/Conv"]
        assert node.op_type == "Conv"
        weight = numpy_helper.to_array(inits[node.input[1]])  # the model's float weight, bit for bit
        assert np.array_equal(weight, qmodel.get_submodule(layer).weight.detach().numpy())
    for layer in ("features.3", "features.10", "features.17", "features.21"):
        assert nodes[f"/model/{layer}/Conv"].op_type == "QLinearConv"
    _without_fix(monkeypatch)
    before = export_onnx(qmodel, tmp_path / "before.onnx", x, int8=True, check=True)
    assert before["int8_op_counts"] == {"QLinearConv": 6}  # the defect: 2 float layers made int8
    assert summary["check"]["max_abs_diff"] <= before["check"]["max_abs_diff"]


def test_all_int8_file_is_unchanged(tmp_path, monkeypatch):
    model, x = _vgg(), torch.randn(8, 3, 32, 32)
    qmodel = int8_model(model, [x], ["features.0", "classifier"])  # nothing float between int8 layers
    summary = export_onnx(qmodel, tmp_path / "now.onnx", x, int8=True, check=True)
    assert summary["kept_float"] == [] and summary["int8_op_counts"] == {"QLinearConv": 6}
    _without_fix(monkeypatch)
    export_onnx(qmodel, tmp_path / "before.onnx", x, int8=True)
    assert (tmp_path / "now.onnx").read_bytes() == (tmp_path / "before.onnx").read_bytes()


def test_bias_rewrite_gives_what_onnx_runtime_computes(tmp_path, monkeypatch):
    """The int32 bias codes written before optimising, with the transformer off, give the same file
    outputs (bit for bit) as ONNX Runtime's own bias quantization: per-channel weights, non-zero biases."""
    model, x = _vgg(), torch.randn(8, 3, 32, 32)
    qmodel = int8_model(model, [x], ["features.0", "classifier"])
    raw = tmp_path / "raw.onnx"

    def keep_raw(raw_path, final):
        shutil.copy(raw_path, raw)
        return {"kept_float": [], "warning": None}

    monkeypatch.setattr(export_module, "keep_float_layers", keep_raw)
    export_onnx(qmodel, tmp_path / "ort.onnx", x, int8=True)
    rewritten = onnx.load(str(raw))
    count, failed = quantize_biases(rewritten)
    assert (count, failed) == (6, [])
    onnx.save(rewritten, str(tmp_path / "ours_raw.onnx"))
    ort_session(
        tmp_path / "ours_raw.onnx",
        optimized_path=str(tmp_path / "ours.onnx"),
        disabled_optimizers=["WeightBiasQuantization"],
    )
    assert export_module.op_counts(tmp_path / "ours.onnx") == export_module.op_counts(tmp_path / "ort.onnx")
    probe = torch.randn(16, 3, 32, 32)
    assert np.array_equal(_run(tmp_path / "ours.onnx", probe), _run(tmp_path / "ort.onnx", probe))


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(16, 32), nn.Linear(32, 32), nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def test_float_linear_between_quantized_linears_stays_float_gemm(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model, x = MLP().eval(), torch.randn(16, 16)
    qmodel = nc.quantize(model, [(x, torch.zeros(16))], mode="static", layers={"fc2": {"enabled": False}})
    summary = export_onnx(qmodel, tmp_path / "mlp.onnx", x, int8=True, check=True)
    assert summary["kept_float"] == ["fc2"]
    node = _nodes(tmp_path / "mlp.onnx")["/model/fc2/Gemm"]
    assert node.op_type == "Gemm" and ("transB", 1) in [(a.name, a.i) for a in node.attribute]
    inits = {i.name: i for i in onnx.load(str(tmp_path / "mlp.onnx")).graph.initializer}
    assert np.array_equal(numpy_helper.to_array(inits[node.input[1]]), model.fc2.weight.detach().numpy())
    _without_fix(monkeypatch)
    before = export_onnx(qmodel, tmp_path / "before.onnx", x, int8=True)
    assert _nodes(tmp_path / "before.onnx")["/model/fc2/Gemm"].op_type != "Gemm"  # the defect, for Gemm
    assert sum(summary["int8_op_counts"].values()) == sum(before["int8_op_counts"].values()) - 1


class ThreeConvs(nn.Module):
    """conv0's channel 0 is dead after its ReLU; conv1 carries one huge weight on it: the float outputs do
    not change, but per-tensor int8 rounds conv1's other weights to zero, so accuracy-aware PTQ keeps it float."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0, self.conv1, self.conv2 = (
            nn.Conv2d(3, 8, 3, padding=1),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.Conv2d(8, 8, 3, padding=1),
        )
        self.head = nn.Linear(8 * 8 * 8, 10)
        with torch.no_grad():
            for layer in (self.conv0, self.conv1, self.conv2, self.head):
                layer.bias.zero_()
            self.conv0.weight[0].zero_()
            self.conv0.bias[0] = -1.0
            self.conv1.weight[0, 0, 0, 0] = 1000.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv0(x))
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.head(torch.flatten(x, 1))  # spatial detail: the predictions vary


def test_accuracy_aware_fallback_layer_is_float_in_the_file(tmp_path):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    images = [
        (torch.randn(16, 3, 8, 8, generator=gen), torch.randint(0, 10, (16,), generator=gen))
        for _ in range(4)
    ]
    model = ThreeConvs().eval()
    qmodel, summary = quantize_accuracy_aware(
        model,
        images[:2],
        images[2:],
        min_agreement=0.9,
        granularity="per_tensor",
        num_calib_batches=2,
        num_val_batches=2,
        num_sensitivity_batches=1,
        sensitivity="one_at_a_time",
    )
    assert summary["fallback_layers"] == {"conv1": "float"}
    x = images[0][0]
    exported = export_onnx(qmodel, tmp_path / "aa.onnx", x, int8=True, check=True)
    assert exported["kept_float"] == ["conv1"]
    assert _nodes(tmp_path / "aa.onnx")["/model/conv1/Conv"].op_type == "Conv"
    assert exported["int8_op_counts"].get("QLinearConv") == 2
    inits = {i.name: i for i in onnx.load(str(tmp_path / "aa.onnx")).graph.initializer}
    weight = numpy_helper.to_array(inits[_nodes(tmp_path / "aa.onnx")["/model/conv1/Conv"].input[1]])
    assert np.array_equal(weight, model.conv1.weight.detach().numpy())
    # the divergence finder runs the file as ort_session does: conv1 float, nothing exceeds (ORT's load-time
    # quantization of conv1 would put it 100 % off)
    found = first_divergence(qmodel, tmp_path / "aa.onnx", x, tolerance=0.05)
    assert found is not None and found["compared"] > 0 and not found["exceeds"]


def test_unrewritable_bias_keeps_todays_file_and_warns(tmp_path, monkeypatch):
    model, x = _vgg(), torch.randn(8, 3, 32, 32)
    qmodel = int8_model(model, [x], FLOAT_PLAN)
    monkeypatch.setattr("netcompress.export.onnx_kept_float.quantize_biases", lambda m: (0, ["features.3"]))
    with pytest.warns(UserWarning, match=r"features\.7, features\.14 .*features\.3"):
        summary = export_onnx(qmodel, tmp_path / "w.onnx", x, int8=True)
    assert summary["kept_float"] == [] and summary["int8_op_counts"] == {"QLinearConv": 6}


def test_keep_float_layers_leaves_a_file_without_float_layers_alone(tmp_path):
    torch.manual_seed(0)
    qmodel = nc.quantize(MLP().eval(), [(torch.randn(16, 16), torch.zeros(16))], mode="static")
    path = tmp_path / "m.onnx"
    export_onnx(qmodel, path, torch.randn(4, 16), int8=True)
    data = path.read_bytes()
    assert keep_float_layers(path, path) == {"kept_float": [], "warning": None} and path.read_bytes() == data
