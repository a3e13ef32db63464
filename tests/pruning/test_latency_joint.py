"""prune_to_target(quantize="joint" | "int8"): widths and int8/float per layer against the int8 ORT latency.

Timings are never asserted: ``latency_table.time_deployed`` is replaced by a deterministic clock that
charges ``cost[layer] * out_channels`` per convolution, times ``int8[layer]`` when the layer is quantized.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import netcompress.pruning  # noqa: F401  (registers the methods)
from netcompress.core.errors import ConfigError
from netcompress.core.methods import METHODS, MethodData
from netcompress.pruning import latency_confirm, latency_table
from netcompress.pruning.auto import AutoPruneConfig, prune_to_target
from netcompress.pruning.latency_joint import JointTable
from netcompress.pruning.latency_table import CostTable
from netcompress.quantization.modules import QuantLayer, quant_layers

from .conftest import TwoBranch

X = torch.randn(2, 3, 8, 8)


class Int8Clock:
    """``4 ms + sum cost[conv] * out_channels * (int8[conv] if quantized else 1)``; records every call."""

    def __init__(self, cost: dict[str, float], int8: dict[str, float]) -> None:
        self.cost, self.int8, self.calls = cost, int8, []

    def ms(self, model: nn.Module) -> float:
        total = 4.0
        for name, module in model.named_modules():
            if isinstance(module, nn.Conv2d):
                quantized = name.endswith(".layer")
                layer = name.removesuffix(".layer")
                total += (
                    self.cost.get(layer, 0.0)
                    * module.out_channels
                    * (self.int8.get(layer, 1.0) if quantized else 1.0)
                )
        return total

    def __call__(self, models, example_inputs, spec) -> dict[str, float]:
        self.calls.append(sorted(models))
        return {name: self.ms(m) for name, m in models.items()}


@pytest.fixture
def clock(monkeypatch):
    def install(cost: dict[str, float], int8: dict[str, float]) -> Int8Clock:
        fake = Int8Clock(cost, int8)
        monkeypatch.setattr(latency_table, "time_deployed", fake)
        return fake

    return install


def _joint(tmp_path, **kwargs):
    kwargs = {"target": "latency", "runtime": "onnxruntime", "ignore": ["a2", "b2"], "cache_dir": tmp_path,
              "quantize": "joint", "widths": [1.0, 0.5], **kwargs}  # fmt: skip
    return prune_to_target(TwoBranch().eval(), X, **kwargs)


def _int8(model: nn.Module) -> set[str]:
    return set(quant_layers(model))


def test_int8_where_it_is_cheaper_than_pruning_and_float_where_the_target_is_met_without_it(clock, tmp_path):
    fake = clock({"a": 10.0, "b": 1.0}, {"a": 0.5, "b": 0.5})
    # float 4 + 160 + 16 = 180 ms; 1.8x lower = 100 ms = "a" int8 (saves 80 ms), nothing pruned
    qmodel, summary = _joint(tmp_path, reduction=1.8)
    plan = summary["precision"]
    assert summary["met"] is True and summary["target_before"] == 180.0 and summary["target_after"] == 100.0
    assert (
        "a" in plan["int8"]
        and "b" in plan["float"]
        and plan["float"] == sorted(plan["float"], key=plan["float"].index)
    )
    assert "met without it" in plan["reasons"]["b"]
    assert summary["candidates"][0]["widths"] == {} and summary["candidates"][0]["int8_layers"] == ["a"]
    assert summary["candidates"][0]["predicted"] == 100.0  # the int8 table predicted it exactly
    # the returned model is the int8 plan: "a" quantized, "b" float, every channel kept; and it is what was timed
    assert _int8(qmodel) == set(plan["int8"]) and isinstance(qmodel.get_submodule("a"), QuantLayer)
    assert fake.ms(qmodel) == 100.0 and qmodel.get_submodule("a").layer.out_channels == 16
    assert (
        plan["export_check"]["int8_ops"]["QLinearConv"] >= 1 and plan["export_check"]["top1_agreement"] >= 0.5
    )
    assert set(summary["by_form"]) == {"onnxruntime_int8", "onnxruntime"}
    assert summary["by_form"]["onnxruntime"]["reduction"] == 1.0  # the float pruned model: nothing pruned
    assert {"sqnr_db", "proxy", "float_delta_ms"} <= set(plan["layers"]["a"]) and plan["layers"]["a"][
        "float_delta_ms"
    ] == 80.0
    json.dumps(summary)


def test_a_layer_slower_in_int8_stays_float_and_the_summary_says_so(clock, tmp_path):
    fake = clock({"a": 10.0, "b": 1.0}, {"a": 0.5, "b": 1.5})
    # 180 -> 72 ms: "a" int8 (100 ms) and pruned to half (60 ms); "b" in int8 would add 8 ms
    qmodel, summary = _joint(tmp_path, reduction=2.5)
    plan = summary["precision"]
    assert summary["met"] is True and "b" in plan["float"] and "a" in plan["int8"]
    assert "int8 measured slower" in plan["reasons"]["b"] and plan["layers"]["b"]["float_delta_ms"] == -8.0
    assert not any(move["group"] == "int8:b" for move in summary["trajectory"])
    assert qmodel.get_submodule("a").layer.out_channels == 8 and qmodel.get_submodule("b").out_channels == 16
    assert fake.ms(qmodel) == summary["target_after"] == 60.0 <= 180.0 / 2.5
    assert summary["candidates"][-1]["widths"] == {"a": 0.5}


def test_quantize_int8_quantizes_every_layer_even_a_slower_one(clock, tmp_path):
    fake = clock({"a": 10.0, "b": 1.0}, {"a": 0.5, "b": 1.5})
    # all int8 unpruned: 4 + 80 + 24 = 108 ms; 2.5x lower = 72 ms: "a" at half width (68 ms)
    qmodel, summary = _joint(tmp_path, reduction=2.5, quantize="int8")
    assert summary["precision"]["float"] == [] and {"a", "b"} <= _int8(qmodel)
    assert summary["met"] is True and fake.ms(qmodel) == summary["target_after"] == 68.0
    assert qmodel.get_submodule("a").layer.out_channels == 8


def test_impossible_target_returns_the_best_with_the_reason(clock, tmp_path):
    fake = clock({"a": 10.0, "b": 1.0}, {"a": 0.5, "b": 0.5})
    qmodel, summary = _joint(tmp_path, reduction=40.0)
    # the best: both int8 at half width, 4 + 0.5 * (80 + 8) = 48 ms
    assert summary["met"] is False and "cannot reach 40.0x lower latency" in summary["reason"]
    assert fake.ms(qmodel) == summary["target_after"] == 48.0 and summary[
        "achieved_reduction"
    ] == pytest.approx(180 / 48)
    assert qmodel(X).shape == (2, 10)


def test_int8_tables_are_cached_and_reused(clock, tmp_path):
    fake = clock({"a": 10.0, "b": 1.0}, {"a": 0.5, "b": 0.5})
    _, first = _joint(tmp_path, reduction=1.8)
    assert first["cost_table"]["cached"] is False
    fake.calls.clear()
    _, second = _joint(tmp_path, reduction=1.8)
    assert (
        second["cost_table"]["cached"] is True and len(fake.calls) == 2
    )  # the confirmation + the float form
    assert second["precision"] == {**first["precision"], "export_check": second["precision"]["export_check"]}


def test_joint_table_prediction_spreads_the_boundary_cost_over_float_layers():
    widths = CostTable(key={}, base=100.0, widths=[1.0, 0.5], kept={"g": [16, 8]}, costs={"g": [100.0, 60.0]})
    # float model 190 ms; deltas 50 + 20 = 70: 20 ms of quantize/dequantize boundaries, 10 per float layer
    table = JointTable(widths, {"x": 50.0, "y": 20.0}, 190.0, {"x": (None, "g"), "y": ("g", None)})
    assert table.correction == 10.0 and table.base == 190.0
    assert table.predict({"int8:x": 0, "int8:y": 0}) == 190.0  # all float
    assert table.predict({"int8:x": 1, "int8:y": 1}) == 100.0  # all int8
    assert table.predict({"int8:x": 1, "int8:y": 0}) == 130.0
    assert table.predict({"g": 1, "int8:x": 0, "int8:y": 1}) == 60.0 + 60.0 * 0.5  # x keeps half its MACs
    table.scale = 0.5
    assert table.predict({"int8:x": 1, "int8:y": 1}) == 145.0


@pytest.mark.parametrize(
    ("fields", "match"),
    [({"quantize": "fp16"}, "quantize"), ({"quantize": "joint", "runtime": "torch"}, "quantize"),
     ({"quantize": "int8", "target": "macs"}, "quantize")],
)  # fmt: skip
def test_bad_quantize_settings_name_the_key(fields, match):
    with pytest.raises(ConfigError, match=match):
        AutoPruneConfig.from_dict({"target": "latency", "runtime": "onnxruntime", **fields})


def test_recipe_step_returns_the_int8_model_after_recovery(clock, tmp_path):
    clock({"a": 10.0, "b": 1.0}, {"a": 0.5, "b": 1.5})
    spec = METHODS.get("prune/auto")
    fields = {"target": "latency", "reduction": 1.8, "runtime": "onnxruntime", "quantize": "joint",
              "ignore": ["a2", "b2"], "cache_dir": str(tmp_path), "recalibrate_bn_batches": 0, "widths": [1.0, 0.5]}  # fmt: skip
    config = spec.config.from_dict(fields, where="step prune/auto")
    batches = [(torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))) for _ in range(2)]
    data = MethodData(
        example_inputs=X, val_loader=batches, calib_loader=batches, out_dir=tmp_path, progress=False
    )
    result = spec.fn(TwoBranch().eval(), config, data)
    assert _int8(result.model) == set(result.summary["precision"]["int8"]) and "a" in _int8(result.model)
    assert (
        "b" not in _int8(result.model) and result.summary["precision"]["proxy_source"] == "validation batches"
    )
    assert "export_check" in result.summary["precision"]
    json.dumps(result.summary)


def test_joint_search_with_median_checks_fill_up_and_finalists(clock, monkeypatch, tmp_path):
    fake = clock({"a": 5.0, "b": 5.0}, {"a": 0.5, "b": 0.5})
    rounds: list[int] = []

    def per_round(models, example_inputs, spec):  # every check: spec.rounds rounds of the same fake clock
        rounds.append(spec.rounds)
        return {name: [fake.ms(m)] * spec.rounds for name, m in models.items()}

    monkeypatch.setattr(latency_confirm, "time_deployed_rounds", per_round)
    # float 4 + 80 + 80 = 164 ms; 2x: the search meets it with both int8 and "b" at 12 of 16 (74 ms, 2.22x); the
    # fill-up gives "b" back (both int8, full width: 84 ms, 1.95x >= 0.97 x 2: held); keeping "a" or "b" float
    # again (124 ms, 1.32x) is refused; the held step loses the least proxy and re-times within the tolerance
    qmodel, summary = _joint(tmp_path, reduction=2.0, widths=[1.0, 0.75, 0.5], confirm_rounds=3, fill_up=4,
                             finalists=2, fill_up_slack=0.03)  # fmt: skip
    rows = summary["candidates"]
    assert [r["phase"] for r in rows] == ["search", "fill_up", "fill_up", "fill_up"]
    assert (
        rows[0]["widths"] == {"b": 0.75} and rows[0]["int8_layers"] == ["a", "b"] and rows[0]["met"] is True
    )
    assert rows[1]["widths"] == {} and rows[1]["int8_layers"] == ["a", "b"] and rows[1]["held"] is True
    assert rows[1]["reduction"] == pytest.approx(164 / 84) and [r["held"] for r in rows[2:]] == [False, False]
    assert sorted(r["int8_layers"][0] for r in rows[2:]) == ["a", "b"] and all(
        r["widths"] == {} for r in rows[2:]
    )
    # MACs are the float model's: the precision moves leave them alone, the widening adds "b"'s back
    assert rows[0]["macs"] < rows[1]["macs"] == rows[2]["macs"] == rows[3]["macs"]
    assert all(
        r["timings"] == 3 and r["ratios"] == pytest.approx([r["reduction"]] * 3, abs=1e-4) for r in rows
    )
    finalists = summary["confirmation"]["finalists"]
    assert (
        [f["round"] for f in finalists] == [2, 1] and summary["chosen_round"] == 2 and summary["met"] is True
    )
    assert set(rounds) == {3} and len(rounds) == 5  # four checks, one re-timing of both finalists
    assert {"a", "b"} <= _int8(qmodel) and qmodel.get_submodule("b").layer.out_channels == 16
    assert fake.ms(qmodel) == summary["target_after"] == 84.0 and summary["precision"]["float"] == [
        "a2",
        "b2",
        "fc",
    ]
    json.dumps(summary)
