"""benchmarks/vit_pruning.py: targets, table, our MAC-targeted prune and Torch-Pruning's at the same MACs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

import netcompress as nc
from netcompress.pruning.transformer_pruning import count_macs

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load():
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    if "vit_pruning" in sys.modules:
        return sys.modules["vit_pruning"]
    spec = importlib.util.spec_from_file_location("vit_pruning", BENCH / "vit_pruning.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["vit_pruning"] = module
    spec.loader.exec_module(module)
    return module


def _rows(ours: float, tp: float, reference: float, ratio: float = 2.0) -> dict:
    def row(name, acc, r=1.0):
        return {
            "name": name,
            "accuracy": acc,
            "mac_reduction": r,
            "macs": 10,
            "params": 5,
        }

    rows = [row("unpruned", 0.70), row("unpruned + fine-tune", reference), row("ours, KD", ours, ratio)]
    return {r["name"]: r for r in [*rows, row("Torch-Pruning, KD", tp, 2.0)]}


def test_targets_pass_and_fail_on_the_issue_thresholds():
    vp = _load()
    passed = [p for _, p in vp.targets(_rows(0.700, 0.60, 0.714), 1)]
    assert passed == [True, True, True]
    assert [p for _, p in vp.targets(_rows(0.698, 0.70, 0.714), 1)] == [True, False, False]
    assert [p for _, p in vp.targets(_rows(0.80, 0.60, 0.70, ratio=1.9), 1)] == [False, True, True]
    rows = _rows(0.7, 0.6, 0.7)
    del rows["Torch-Pruning, KD"]
    assert len(vp.targets(rows, 1)) == 2  # no Torch-Pruning row: no comparison claimed


def test_table_has_one_line_per_row():
    vp = _load()
    text = vp.table(list(_rows(0.7, 0.6, 0.7).values()))
    assert text.count("\n") == 2 + 4 - 1 and "| ours, KD | 10 | 2.00x | 5 | 70.00 % | - |" in text


def test_ours_and_torch_pruning_reach_the_same_mac_target():
    vp = _load()
    args = vp.parse_args(["--quick"])
    torch.manual_seed(0)
    model = nc.models.create("vit_tiny", **vp.QUICK_VIT).eval()
    train, _ = vp.synthetic_bundle(n_train=64, n_test=8)
    x = torch.randn(1, 3, 32, 32)
    small, summary = vp.prune_ours(args, model, train, x)
    assert 2.0 <= summary["mac_reduction"] < 2.05
    assert [u["after"] for u in summary["heads"]] == [2, 2]
    pytest.importorskip("torch_pruning")
    tp_small, info = vp.prune_torch_pruning(args, model, x)
    assert info["mac_reduction"] >= 2.0 and count_macs(model, x) / count_macs(tp_small, x) >= 2.0
    assert tp_small(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.slow
def test_quick_run_end_to_end(tmp_path):
    vp = _load()
    out = vp.main(["--quick", "--cache", str(tmp_path), "--json", str(tmp_path / "r.json")])
    names = [r["name"] for r in out["rows"]]
    assert names[:2] == ["unpruned", "unpruned + fine-tune"] and "ours, KD, int8 (static, ORT)" in names
    assert len(out["targets"]) in (2, 3) and (tmp_path / "r.json").exists()


def test_headline_ce_judges_the_ce_rows():
    vp = _load()
    rows = _rows(0.60, 0.70, 0.70)  # the KD rows: ours behind Torch-Pruning
    rows["ours"] = {**rows["ours, KD"], "name": "ours", "accuracy": 0.695}
    rows["Torch-Pruning"] = {**rows["Torch-Pruning, KD"], "name": "Torch-Pruning", "accuracy": 0.69}
    assert [p for _, p in vp.targets(rows, 1, "kd")] == [True, False, False]
    assert [p for _, p in vp.targets(rows, 1, "ce")] == [True, True, True]


def test_torch_pruning_exact_lands_on_the_target_with_a_wider_stream():
    pytest.importorskip("torch_pruning")
    vp = _load()
    torch.manual_seed(0)
    model = nc.models.create("vit_tiny", dim=32, depth=2, heads=4, mlp_dim=64, patch_size=8).eval()
    x = torch.randn(1, 3, 32, 32)
    plain, info = vp.prune_torch_pruning(vp.parse_args(["--quick"]), model, x)
    exact, exact_info = vp.prune_torch_pruning(vp.parse_args(["--quick", "--tp-exact"]), model, x)
    assert exact.cls_token.shape[-1] == plain.cls_token.shape[-1] + 4  # one round_to step wider
    assert 2.0 <= exact_info["mac_reduction"] <= info["mac_reduction"]
    ffn = exact.encoder.layers[0].linear1.out_features
    assert exact_info["ffn_after"] == ffn and all(
        layer.linear1.out_features == ffn for layer in exact.encoder.layers
    )
    # one neuron more per layer and the target is missed: the fewest removed
    macs = count_macs(model, x)
    per_neuron = 2 * 17 * exact.cls_token.shape[-1] * len(exact.encoder.layers)
    assert macs / (count_macs(exact, x) + per_neuron) < 2.0
    assert exact(torch.randn(2, 3, 32, 32)).shape == (2, 10)
