"""Early-exit ONNX export: one file per segment run by ONNX Runtime, routed like PyTorch; the single-graph
export of a routed model refuses clearly instead of writing a file ONNX Runtime cannot run."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("onnxruntime")

from netcompress import models  # noqa: E402
from netcompress.core.errors import ConfigError, UnsupportedModelError  # noqa: E402
from netcompress.dynamic import OrtEarlyExit, add_early_exits, export_early_exit_onnx  # noqa: E402
from netcompress.export import OrtModel, export_onnx  # noqa: E402

X = torch.randn(24, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def _ee():
    torch.manual_seed(0)
    resnet = models.create("cifar_resnet20", num_classes=10).eval()
    ee = add_early_exits(resnet, exits=["layer1.0.conv1", "layer2"], example_inputs=X[:1]).eval()
    for head in ee.heads:
        head.fc.weight.data.mul_(40)
    return ee


def _threshold_between(ee) -> float:
    """A confidence threshold far (> 1e-3) from every sample's score at exits 0 and 1."""
    with torch.no_grad():
        logits = ee.forward_all(X)
    scores = torch.cat([F.softmax(lg, 1).amax(1) for lg in logits[:2]]).sort().values
    gaps = scores.diff()
    lo, hi = len(scores) // 4, 3 * len(scores) // 4
    i = int(gaps[lo:hi].argmax()) + lo
    assert gaps[i] > 1e-3
    return float((scores[i] + scores[i + 1]) / 2)


def test_segment_files_run_in_ort_and_route_like_pytorch(tmp_path):
    ee = _ee()
    ee.set_policy(threshold=_threshold_between(ee))
    summary = export_early_exit_onnx(ee, tmp_path, X[:1])
    assert [s["file"] for s in summary["segments"]] == ["segment0.onnx", "segment1.onnx", "segment2.onnx"]
    assert summary["segments"][1]["inputs"] == ["in0", "in1"]  # the conv1 output and the block input
    assert all(row["max_rel_diff"] < 1e-4 for row in summary["check"])
    with torch.no_grad():
        expected = ee(X)
    counts = list(ee.last_exit_counts)
    assert counts[0] > 0 and counts[2] > 0  # some samples leave early, some run to the end
    runner = OrtEarlyExit(tmp_path)
    assert runner.threshold == ee.threshold and runner.criterion == "confidence"
    got = runner(X)
    assert runner.last_exit_counts == counts
    assert runner.last_exit_index.tolist() == ee.last_exit_index.tolist()
    assert (got - expected).abs().max().item() < 1e-4
    with torch.no_grad():
        for ref, out in zip(ee.forward_all(X), runner.forward_all(X)):
            assert (ref - out).abs().max().item() < 1e-4


def test_wrapper_thresholds_at_both_ends(tmp_path):
    ee = _ee()
    export_early_exit_onnx(ee, tmp_path, X[:1], check=False)
    assert json.loads((tmp_path / "early_exit.json").read_text())["threshold"] is None
    with torch.no_grad():
        full = ee(X)
    assert (OrtEarlyExit(tmp_path)(X) - full).abs().max().item() < 1e-4
    everything_early = OrtEarlyExit(tmp_path, threshold=0.0)
    everything_early(X)
    assert everything_early.last_exit_counts == [24, 0, 0]


def test_single_graph_export_of_a_routed_model_refuses_clearly(tmp_path):
    ee = _ee()
    ee.set_policy(threshold=0.9)
    with pytest.raises(UnsupportedModelError, match="export_early_exit_onnx"):
        export_onnx(ee, tmp_path / "ee.onnx", X[:1], check=False)
    assert not (tmp_path / "ee.onnx").exists()
    # without a threshold the single file is the full network, and ORT runs it
    ee.set_policy(threshold=None)
    summary = export_onnx(ee, tmp_path / "full.onnx", X[:1], check=True)
    assert summary["check"]["max_rel_diff"] < 1e-4
    with torch.no_grad():
        assert (OrtModel(tmp_path / "full.onnx")(X) - ee(X)).abs().max().item() < 1e-4


def test_wrapper_refuses_a_folder_that_is_not_an_export(tmp_path):
    with pytest.raises(ConfigError, match="early_exit.json"):
        OrtEarlyExit(tmp_path)
    (tmp_path / "early_exit.json").write_text(json.dumps({"format": "other", "version": 1}))
    with pytest.raises(ConfigError, match="expected 'netcompress-early-exit-onnx'"):
        OrtEarlyExit(tmp_path)


def test_one_threshold_per_exit_is_exported_and_routed_alike(tmp_path):
    ee = _ee()
    t = _threshold_between(ee)
    # head 0 lets nobody out, head 1 at the threshold: only exits 1 and 2 are taken
    ee.set_policy(threshold=[1.01, t])
    export_early_exit_onnx(ee, tmp_path, X[:1], check=False)
    assert json.loads((tmp_path / "early_exit.json").read_text())["threshold"] == [1.01, t]
    with torch.no_grad():
        expected = ee(X)
    counts = list(ee.last_exit_counts)
    assert counts[0] == 0 and counts[1] > 0 and counts[1] + counts[2] == 24
    runner = OrtEarlyExit(tmp_path)
    got = runner(X)
    assert runner.last_exit_counts == counts
    assert (got - expected).abs().max().item() < 1e-4
    with pytest.raises(ConfigError, match="one number per exit head \\(2 heads\\)"):
        OrtEarlyExit(tmp_path, threshold=[0.5, 0.5, 0.5])(X)
