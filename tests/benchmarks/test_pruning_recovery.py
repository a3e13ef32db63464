"""The latency mode's session-8 rows: registered names, KD hooks and the per-row target checks."""

from __future__ import annotations

import pruning_latency as pl
import pruning_recovery as rec
from pruning_methods import METHODS


def _acc(row: dict) -> float:
    return row["acc_after"]


def test_recovery_rows_and_their_kd_variants_are_registered() -> None:
    for name in (*rec.RECOVERY_ROWS, "nc_latency"):
        assert name in METHODS.names() and f"{name}_kd" in METHODS.names()
        assert f"{name}_kd" in pl.LATENCY_ROWS  # kept out of the MAC-budget checks


def test_checks_cover_every_latency_and_8x_row() -> None:
    rows = [
        {"method": "unpruned", "acc_after": 0.7366},
        {"method": "nc_latency_kd", "acc_after": 0.73, "ort_speedup_b64": 2.40, "search_speedup": 2.5,
         "met": True, "search_rounds": 2},
        {"method": "tp_magnitude_at_latency", "acc_after": 0.7043, "ort_speedup_b64": 2.74},
        {"method": "nc_macs_high_fill", "acc_after": 0.7160, "mac_reduction": 8.07},
        {"method": "nc_macs_high", "acc_after": 0.6893, "mac_reduction": 9.10},
        {"method": "tp_magnitude_macs_high", "acc_after": 0.6946, "mac_reduction": 8.00},
    ]  # fmt: skip
    # without torch-pruning installed (CI) the checks also say its rows are skipped: not a row check
    lines = [line for line in pl.latency_checks(rows, 2.5, _acc, high=8.0) if line != pl.TP_MISSING]
    assert lines[0].startswith("nc_latency_kd ORT batch-64 speed-up after fine-tuning 2.40x for 2.5x")
    assert "PASS" in lines[0]  # 2.40 >= 2.5 / 1.05
    assert (
        lines[1]
        == "nc_latency_kd vs tp_magnitude_at_latency (ORT b64 2.74x): +2.57 points (target >= +1): PASS"
    )
    assert lines[2] == "nc_latency_kd vs unpruned: 0.66 points lower (target <= 1): PASS"
    assert lines[3] == (
        "nc_macs_high_fill: 8.07x fewer MACs (target 8x within 2 %: PASS); vs tp_magnitude_macs_high (8.00x): "
        "+2.14 points (target >= +2): PASS"
    )
    assert lines[4] == (
        "nc_macs_high: 9.10x fewer MACs (target 8x within 2 %: MISS); vs tp_magnitude_macs_high (8.00x): "
        "-0.53 points (target >= +2): MISS"
    )
    assert len(lines) == 5
