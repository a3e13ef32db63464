"""The peers and verdicts of benchmarks/quantization.py on a tiny CNN (no CIFAR, no training).

The benchmark's table compares netcompress int8 with ONNX Runtime's ``quantize_static`` and
torch.ao FX PTQ; these checks make sure the peers are set up as the table says (QDQ, per-channel
weights, the same calibration batches) and that the targets' verdicts can fail.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from netcompress.data import DataBundle
from netcompress.data.in_memory import ImageTensorDataset
from netcompress.export.onnx import OrtModel, export_onnx, op_counts

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    """benchmarks/quantization.py loaded from its file (``benchmarks`` is not a package)."""
    if "bench_quantization" not in sys.modules:
        if str(BENCH) not in sys.path:
            sys.path.insert(0, str(BENCH))  # it imports cifar_protocol by its plain name when run as a script
        spec = importlib.util.spec_from_file_location("bench_quantization", BENCH / "quantization.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_quantization"] = module
        spec.loader.exec_module(module)
    return sys.modules["bench_quantization"]


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


@pytest.fixture
def model() -> nn.Module:
    torch.manual_seed(0)
    net = TinyCNN()
    gen = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return net.eval()


@pytest.fixture
def calib() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(2)
    return [(torch.randn(16, 3, 16, 16, generator=gen), torch.zeros(16, dtype=torch.long)) for _ in range(4)]


def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.argmax(1) == b.argmax(1)).float().mean())


def test_calib_reader_yields_each_batch_once_then_rewinds(bench, calib):
    reader = bench.CalibReader(calib)
    first = [reader.get_next() for _ in range(5)]
    assert [f is None for f in first] == [False, False, False, False, True]
    assert first[0]["input"].shape == (16, 3, 16, 16) and first[0]["input"].dtype.name == "float32"
    reader.rewind()
    assert (reader.get_next()["input"] == calib[0][0].numpy()).all()


def test_calibration_batches_are_fixed_and_unaugmented(bench):
    images = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8)
    train = ImageTensorDataset(images, torch.arange(40) % 4, mean=(0.5,) * 3, std=(0.25,) * 3, augment=True)
    bundle = DataBundle(name="t", train=train, test=train, num_classes=4, input_shape=(3, 8, 8))
    a = bench.calibration_batches(bundle, num_images=24, batch_size=10)
    b = bench.calibration_batches(bundle, num_images=24, batch_size=10)
    assert [x.shape[0] for x, _ in a] == [10, 10, 4]
    assert all(torch.equal(xa, xb) for (xa, _), (xb, _) in zip(a, b))
    assert train.augment  # the bundle's own dataset is left as it was
    index = torch.randperm(40, generator=torch.Generator().manual_seed(0))[:10]
    expected = (images[index].float() / 255 - 0.5) / 0.25
    assert float((a[0][0] - expected).abs().max()) < 1e-6


def test_ort_quantize_static_peer_is_per_channel_qdq_and_agrees(bench, model, calib, tmp_path):
    fp32 = tmp_path / "m.onnx"
    export_onnx(model, fp32, calib[0][0][:1], check=False)
    out = tmp_path / "m_ort_qdq.onnx"
    assert bench.ort_quantize_static(fp32, out, calib)["size_bytes"] == out.stat().st_size
    counts = op_counts(out)
    assert counts["QuantizeLinear"] >= 2 and counts["DequantizeLinear"] >= 5
    graph = onnx.load(str(out)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    int8_weights = {k: v for k, v in inits.items() if v.dtype.name == "int8" and v.ndim == 4}
    assert sorted(v.shape[0] for v in int8_weights.values()) == [8, 16]
    per_channel = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in int8_weights]
    assert sorted(inits[n.input[1]].shape[0] for n in per_channel) == [8, 16]  # one scale per channel
    test = torch.randn(256, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert _agreement(model(test), OrtModel(out)(test)) >= 0.98


def test_torch_ao_fx_peer_converts_to_quantized_kernels(bench, model, calib):
    try:
        qmodel = bench.torch_ao_fx_ptq(model, calib, calib[0][0][:1])
    except Exception as exc:  # deprecated upstream: the benchmark reports this as a failed row
        pytest.skip(f"torch.ao FX PTQ unavailable: {exc}")
    kinds = {type(m).__module__ for m in qmodel.modules()}
    assert any(k.startswith("torch.ao.nn.quantized") for k in kinds)
    test = torch.randn(256, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert _agreement(model(test), qmodel(test)) >= 0.95
    assert all(p.requires_grad for p in model.parameters())  # the input model is untouched


def _result(model: str = "mobilenet_student") -> dict:
    rows = [
        {"method": "float (PyTorch)", "accuracy": 0.800, "agreement": 1.0, "speedup_b64": 1.0},
        {"method": "netcompress W8A8 PTQ", "accuracy": 0.798, "agreement": 0.99, "speedup_b64": 3.5},
        {"method": "netcompress W4A8 QAT", "accuracy": 0.792, "agreement": 0.95},
        {"method": "ORT quantize_static (QDQ)", "accuracy": 0.797, "agreement": 0.985},
    ]
    rows[1].update(latency_ms=1.0, latency_b64_ms=10.0)
    rows[3].update(latency_ms=1.1, latency_b64_ms=10.5)
    return {"model": model, "rows": rows}


def test_target_verdicts_pass_and_fail_on_the_numbers(bench):
    result = _result()
    assert [c["ok"] for c in bench.check_targets(result)] == [True] * 7
    worse = copy.deepcopy(result)
    rows = {r["method"]: r for r in worse["rows"]}
    rows["netcompress W8A8 PTQ"].update(accuracy=0.794, speedup_b64=2.9, latency_ms=1.2)
    rows["netcompress W4A8 QAT"]["accuracy"] = 0.789
    rows["ORT quantize_static (QDQ)"]["agreement"] = 0.979
    checks = bench.check_targets(worse)
    assert [c["ok"] for c in checks] == [False, False, False, False, True, False, False]
    assert checks[0]["measured"] == "+0.60 points"
    assert len(bench.check_targets(_result("narrow_vgg"))) == 5  # the depthwise check is the student's
