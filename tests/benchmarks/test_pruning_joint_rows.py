"""Session 16's int8-deployed latency rows: the row's accuracy and latency are its int8 ONNX Runtime file's.

No timing is read: the search is replaced where a test needs it, and accuracy is scored on a few random batches.
"""

from __future__ import annotations

from pathlib import Path

import pruning
import pruning_joint_rows as jr
import pruning_latency as pl
import pytest
import torch
from pruning_methods import METHODS, Context, PruningBenchConfig
from torch import nn

from netcompress.export import OrtModel
from netcompress.pruning.latency_joint import int8_model
from netcompress.quantization.modules import quant_layers

X = torch.randn(4, 3, 8, 8)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())  # fmt: skip
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def _batches(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(n)]


def _ctx(tmp_path) -> Context:
    return Context(None, None, PruningBenchConfig(), _batches(3, 0), _batches(2, 1), X, 0, tmp_path)


def test_rows_are_latency_rows() -> None:
    assert jr.JOINT_ROWS == ("nc_latency_joint", "nc_int8_only", "tp_magnitude_at_latency_int8")
    assert all(name in METHODS.names() and name in pl.LATENCY_ROWS for name in jr.JOINT_ROWS)


def test_deployed_accuracy_is_the_int8_ort_files(monkeypatch, tmp_path) -> None:
    scored = []

    def evaluate(model, loader):  # every accuracy of an int8 row: an ONNX Runtime int8 file
        assert isinstance(model, OrtModel)
        scored.append(Path(model.path).read_bytes().count(b"QLinearConv"))
        return {"accuracy": 0.25 * len(scored)}

    monkeypatch.setattr(jr, "evaluate", evaluate)
    monkeypatch.setattr(jr, "validation_loader", lambda ctx: _batches(1, 2))
    monkeypatch.setattr(jr, "heldout_loader", lambda ctx: _batches(1, 3))
    model = Tiny().eval()
    qmodel, row = jr.deploy_int8(model, {"precision": {"float": ["features.3"]}}, _ctx(tmp_path), "row")
    assert len(scored) == 3 and all(count >= 1 for count in scored)  # test, 1,000 and 5,000 splits
    assert (row["acc_after"], row["acc_val"], row["acc_val5k"]) == (0.25, 0.5, 0.75)
    assert row["deployed_form"] == "int8 ORT" and row["float_layers"] == ["features.3"]
    assert set(quant_layers(qmodel)) == {"features.0", "fc"} and row["int8_layers"] == 2
    assert row["int8_ops"]["QLinearConv"] == 1 and row["export_check"]["top1_agreement"] >= 0.5
    assert jr.is_int8(qmodel) and not jr.is_int8(model)


def test_deployed_forms_time_an_int8_row_as_its_int8_file_only(tmp_path) -> None:
    model = Tiny().eval()
    qmodel = int8_model(model, [X], fast=True)
    forms = pruning.deployed_forms({"unpruned": model, "q": qmodel}, X, tmp_path, threads=1)
    assert set(forms) == {"unpruned|folded", "unpruned|ort", "q|ort"}
    assert forms["q|ort"].path.endswith("q.int8.onnx")
    assert Path(forms["q|ort"].path).read_bytes().count(b"QLinearConv") == 2
    assert Path(forms["unpruned|ort"].path).read_bytes().count(b"QLinearConv") == 0


def test_int8_only_row_quantizes_the_baseline_without_a_fine_tune(tmp_path) -> None:
    base = Tiny().eval()
    pruned = METHODS.get("nc_int8_only")(base, _ctx(tmp_path))
    assert pruned.epochs_used == PruningBenchConfig().finetune_epochs and pruned.info["deploy"] == "int8"
    assert pruned.info["precision"] == {"float": []} and pruned.model is not base
    assert all(
        torch.equal(a, b) for a, b in zip(pruned.model.state_dict().values(), base.state_dict().values())
    )


def test_joint_row_runs_the_joint_search_with_the_confirmation_switches(monkeypatch, tmp_path) -> None:
    import netcompress.pruning.auto as auto

    calls = []
    checks = [{"round": 1, "phase": "search", "reduction": 2.6, "met": True, "int8_layers": ["features.0"],
               "widths": {"g": 0.5}, "overshoot": False}]  # fmt: skip
    plan = {"int8": ["features.0"], "float": ["fc"], "reasons": {"fc": "met without it"}, "layers": {},
            "boundary_ms": 0.1, "mode": "joint"}  # fmt: skip
    summary = {"architecture": "a", "met": True, "reason": None, "achieved_reduction": 2.6, "candidates": checks,
               "speedup_by_form": {"onnxruntime_int8": 2.6}, "precision": plan, "confirmation": None,
               "chosen_round": 1, "rates": [], "cost_table": {"base": 9.0}, "trajectory": []}  # fmt: skip

    def search(model, example, config, **kwargs):
        calls.append((config, kwargs))
        return Tiny(), summary

    monkeypatch.setattr(auto, "_search", search)
    monkeypatch.setattr(jr, "validation_loader", lambda ctx: "validation")
    monkeypatch.setattr(jr, "with_recalibration", lambda pruned, ctx: pruned)
    pruned = METHODS.get("nc_latency_joint")(Tiny(), _ctx(tmp_path))
    ((config, kwargs),) = calls
    assert (config.quantize, config.confirm_rounds, config.fill_up, config.finalists, config.max_rounds) == (
        "joint", 7, 12, 4, 6,
    )  # fmt: skip
    assert config.strategy == "sensitivity" and config.reduction == 2.5 and config.runtime == "onnxruntime"
    assert kwargs["loader"] == "validation" and kwargs["calib"] is not None and config.batch_size == 64
    assert pruned.info["deploy"] == "int8" and pruned.info["precision"]["float"] == ["fc"]
    assert (
        pruned.info["candidates"][0]["int8_layers"] == ["features.0"]
        and "overshoot" not in pruned.info["candidates"][0]
    )


@pytest.mark.parametrize(
    ("speedup", "acc", "verdicts", "gap"),
    [(2.6, 0.73, ("PASS", "PASS"), "0.66 points below"), (2.2, 0.70, ("MISS", "MISS"), "3.66 points below"),
     (2.4, 0.75, ("PASS", "PASS"), "1.34 points above")],
)  # fmt: skip
def test_int8_only_checks(speedup, acc, verdicts, gap) -> None:
    rows = [{"method": "unpruned", "acc_after": 0.7366},
            {"method": "nc_int8_only", "deployed_form": "int8 ORT", "ort_speedup_b64": speedup, "acc_after": acc},
            {"method": "nc_latency_fill", "ort_speedup_b64": 2.8, "acc_after": 0.72}]  # fmt: skip
    (line,) = jr.joint_checks(rows, 2.5, lambda r: r["acc_after"])
    assert line.startswith(f"nc_int8_only (int8 ORT vs unpruned float ORT): {speedup:.2f}x for 2.5x")
    assert f"met within 5 %: {verdicts[0]}" in line and f"{gap} unpruned (target <= 1: {verdicts[1]})" in line


def test_retime_table_reports_the_median_per_round_ratio_and_its_range() -> None:
    import pruning_retime

    timed = {
        "row": {"ratio": 2.5, "ratios": [2.0, 2.5, 3.5], "spread": 0.6, "unpruned": 30.0, "candidate": 12.0}
    }
    lines = pruning_retime.retime_table(timed).splitlines()
    assert lines[0].startswith("| row | median ratio (unpruned float ORT / row) | spread | min - max |")
    assert lines[2] == "| row | 2.50 | 0.60 | 2.00 - 3.50 | 30.0 | 12.0 |"


def test_latency_checks_say_higher_when_a_row_beats_the_unpruned_model() -> None:
    rows = [{"method": "unpruned", "acc_after": 0.7366},
            {"method": "nc_latency_joint", "deployed_form": "int8 ORT", "ort_speedup_b64": 2.67, "acc_after": 0.7508,
             "search_speedup": 2.7, "met": True, "search_rounds": 12}]  # fmt: skip
    lines = pl.latency_checks(rows, 2.5, lambda r: r["acc_after"])
    assert lines[0].startswith(
        "nc_latency_joint ORT batch-64 speed-up after fine-tuning 2.67x for 2.5x (int8 ORT file;"
    )
    # without Torch-Pruning installed (CI) the checks end with a line saying its rows are skipped
    assert "nc_latency_joint vs unpruned: 1.42 points higher (target <= 1): PASS" in lines
    assert not any("points lower" in line for line in lines)
