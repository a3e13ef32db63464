"""prune_to_target(target="latency" | "bytes"): cached cost table, greedy search, end-to-end confirmation.

Timings are never asserted: the latency tests replace the timing function with a deterministic one
(``latency_table.time_deployed``) that charges a fixed cost per output channel of named convolutions.
File sizes are deterministic, so the bytes test measures the real ONNX files.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import netcompress.pruning  # noqa: F401  (registers the methods)
from netcompress.core.errors import ConfigError, UnsupportedModelError
from netcompress.core.methods import METHODS, MethodData
from netcompress.export import export_onnx
from netcompress.pruning import latency_table
from netcompress.pruning.auto import AutoPruneConfig, prune_to_target
from netcompress.pruning.latency_table import MeasureSpec, cost_table, table_key

from .conftest import TwoBranch

X = torch.randn(2, 3, 8, 8)


class FakeClock:
    """``4 ms + cost[name] * out_channels`` summed over convs; records every call (one per measurement)."""

    def __init__(self, cost: dict[str, float], *, both_pruned_penalty: float = 0.0) -> None:
        self.cost, self.penalty, self.calls = cost, both_pruned_penalty, []

    def ms(self, model: nn.Module) -> float:
        convs = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
        total = 4.0 + sum(self.cost.get(n, 0.0) * c for n, c in convs.items())
        # an interaction the per-group table cannot see: the end-to-end check must catch it
        return total + (self.penalty if self.penalty and convs["a"] < 16 and convs["b"] < 16 else 0.0)

    def __call__(self, models, example_inputs, spec: MeasureSpec) -> dict[str, float]:
        self.calls.append((sorted(models), spec.runtime, spec.batch_size, spec.threads))
        return {name: self.ms(m) for name, m in models.items()}


@pytest.fixture
def clock(monkeypatch):
    def install(cost: dict[str, float], **kwargs) -> FakeClock:
        fake = FakeClock(cost, **kwargs)
        monkeypatch.setattr(latency_table, "time_deployed", fake)
        return fake

    return install


def _latency(model, tmp_path, **kwargs):
    kwargs = {
        "target": "latency",
        "runtime": "torch",
        "ignore": ["a2", "b2"],
        "cache_dir": tmp_path,
        **kwargs,
    }
    return prune_to_target(model, X, **kwargs)


@pytest.mark.parametrize(
    ("cost", "pruned", "kept"), [({"a": 10.0, "b": 1.0}, "a", "b"), ({"a": 1.0, "b": 10.0}, "b", "a")]
)
def test_search_meets_an_exact_target_on_the_layer_with_the_best_proxy_per_ms(
    clock, tmp_path, cost, pruned, kept
) -> None:
    fake = clock(cost)
    model = TwoBranch().eval()
    # unpruned: 4 + 16 * 10 + 16 * 1 = 180 ms; 1.8x lower = 100 ms = the expensive branch at half width
    small, summary = _latency(model, tmp_path, reduction=1.8)
    assert summary["met"] is True and summary["reason"] is None
    assert summary["target_before"] == 180.0 and summary["target_after"] == 100.0 == fake.ms(small)
    assert summary["achieved_reduction"] == pytest.approx(1.8)
    assert getattr(small, pruned).out_channels == 8 and getattr(small, kept).out_channels == 16
    assert summary["candidates"][0]["widths"] == {pruned: 0.5} and len(summary["candidates"]) == 1
    assert summary["candidates"][0]["predicted"] == 100.0  # the table predicted it exactly
    assert small.fc.out_features == 10
    assert set(summary["speedup_by_form"]) == {"torch", "onnxruntime"}
    json.dumps(summary)


def test_cost_table_is_cached_and_reused(clock, tmp_path) -> None:
    fake = clock({"a": 10.0, "b": 1.0})
    model = TwoBranch().eval()
    _, first = _latency(model, tmp_path, reduction=1.8)
    table_calls = 2  # one interleaved call per group (base + its three widths)
    assert (
        first["cost_table"]["cached"] is False and len(fake.calls) == table_calls + 1 + 1
    )  # + confirm + other form
    fake.calls.clear()
    _, second = _latency(model, tmp_path, reduction=1.8)
    assert (
        second["cost_table"]["cached"] is True and second["cost_table"]["path"] == first["cost_table"]["path"]
    )
    assert (
        len(fake.calls) == 2
    )  # nothing measured for the table: the end-to-end check and the other form only
    assert second["cost_table"]["entries"] == first["cost_table"]["entries"]
    # the table alone, asked again: not one timing
    fake.calls.clear()
    spec = MeasureSpec(target="latency", runtime="torch", batch_size=1)
    kept = {"a": [16, 12, 8, 4], "b": [16, 12, 8, 4]}
    table = cost_table(
        model, X, lambda *_: model, spec, kept=kept, widths=[1.0, 0.75, 0.5, 0.25], cache_dir=tmp_path
    )
    assert table.cached and fake.calls == []


def test_cache_key_changes_with_threads_batch_size_and_runtime(clock, tmp_path) -> None:
    model, kept = TwoBranch().eval(), {"a": [16, 8]}
    base = MeasureSpec(target="latency", runtime="torch", batch_size=1, threads=1)
    keys = [
        table_key(model, X, spec, kept)
        for spec in (base, MeasureSpec(target="latency", runtime="torch", batch_size=1, threads=2),
                     MeasureSpec(target="latency", runtime="torch", batch_size=64, threads=1),
                     MeasureSpec(target="latency", runtime="onnxruntime", batch_size=1, threads=1))
    ]  # fmt: skip
    assert len({json.dumps(k, sort_keys=True) for k in keys}) == 4
    assert {"cpu", "torch", "onnxruntime", "structure"} <= set(keys[0])
    assert (
        table_key(model, torch.randn(7, 3, 8, 8), base, kept) == keys[0]
    )  # the example's batch does not matter
    fake = clock({"a": 10.0})
    _latency(model, tmp_path, reduction=1.5, threads=1)
    fake.calls.clear()
    _, summary = _latency(model, tmp_path, reduction=1.5, threads=2)
    assert summary["cost_table"]["cached"] is False and len(fake.calls) == 4  # measured again: 2 groups + 2
    assert all(call[3] == 2 for call in fake.calls)


def test_missed_prediction_keeps_pruning_until_the_measurement_meets_it(clock, tmp_path) -> None:
    # a 30 ms penalty when both branches are narrowed, which the per-group table cannot predict
    fake = clock({"a": 5.0, "b": 5.0}, both_pruned_penalty=30.0)
    small, summary = _latency(TwoBranch().eval(), tmp_path, reduction=2.0, tolerance=0.0)
    rounds = summary["candidates"]
    assert rounds[0]["met"] is False and rounds[0]["measured"] > rounds[0]["predicted"]
    assert rounds[-1]["met"] is True and len(rounds) >= 2
    assert fake.ms(small) == summary["target_after"] <= summary["target_before"] / 2.0
    assert [r["scale"] for r in rounds] == sorted(
        (r["scale"] for r in rounds), reverse=True
    )  # savings rescaled down


def test_overshoot_is_widened_again_and_the_met_model_losing_least_is_kept(clock, tmp_path) -> None:
    # 30 ms faster than the table predicts when both branches are narrowed: the first result overshoots
    clock({"a": 5.0, "b": 5.0}, both_pruned_penalty=-30.0)
    _, summary = _latency(TwoBranch().eval(), tmp_path, reduction=2.0, tolerance=0.0)
    rounds = summary["candidates"]
    assert rounds[0]["met"] is True and rounds[0]["overshoot"] is True and len(rounds) >= 2
    assert (
        rounds[1]["scale"] > rounds[0]["scale"] == 1.0 and rounds[1]["proxy_lost"] < rounds[0]["proxy_lost"]
    )
    met = [r for r in rounds if r["met"]]
    assert summary["met"] is True
    assert summary["candidates"][summary["chosen_round"] - 1]["proxy_lost"] == min(
        r["proxy_lost"] for r in met
    )


def test_a_form_the_model_cannot_take_reports_its_error(clock, tmp_path) -> None:
    fake = clock({"a": 10.0, "b": 1.0})

    def no_onnx(models, example_inputs, spec):
        if spec.runtime == "onnxruntime":
            raise UnsupportedModelError("cannot export op 'foo'")
        return fake(models, example_inputs, spec)

    latency_table.time_deployed = no_onnx  # the fixture restores the original
    _, summary = _latency(TwoBranch().eval(), tmp_path, reduction=1.8)
    assert summary["met"] is True and summary["by_form"]["onnxruntime"] == {"error": "cannot export op 'foo'"}
    assert set(summary["speedup_by_form"]) == {"torch"}


def test_impossible_target_returns_the_best_model_with_the_reason(clock, tmp_path) -> None:
    fake = clock({"a": 10.0, "b": 1.0})
    small, summary = _latency(TwoBranch().eval(), tmp_path, reduction=10.0)
    # narrowest: 4 + 4 * 10 + 4 * 1 = 48 ms, 3.75x: the best any width assignment can do
    assert summary["met"] is False
    assert "cannot reach 10.0x lower latency" in summary["reason"] and "narrowest" in summary["reason"]
    assert summary["achieved_reduction"] == pytest.approx(3.75) and fake.ms(small) == 48.0
    assert small.a.out_channels == 4 and small.b.out_channels == 4 and small.fc.out_features == 10


def test_classifier_outputs_are_never_pruned(clock, tmp_path) -> None:
    clock({"a": 1.0, "b": 1.0, "a2": 5.0, "b2": 5.0})
    model = TwoBranch().eval()
    small, summary = prune_to_target(
        model, X, target="latency", runtime="torch", reduction=20.0, cache_dir=tmp_path
    )
    assert small.fc.out_features == 10 and small(X).shape == (2, 10)
    labels = {entry["group"] for entry in summary["cost_table"]["entries"]}
    assert labels == {"a", "b", "a2", "b2"}  # every prunable group, never the classifier's outputs
    assert all("fc" not in r["layers"] for r in summary["rates"])


def _vgg() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 16, 10),
    ).eval()  # fmt: skip


def test_bytes_target_meets_the_measured_file_size(tmp_path) -> None:
    model = _vgg()
    small, summary = prune_to_target(
        model, X, target="bytes", reduction=3.0, cache_dir=tmp_path, out_dir=tmp_path
    )
    size = export_onnx(small, tmp_path / "small.onnx", X[:1], check=False)["size_bytes"]
    unpruned = export_onnx(model, tmp_path / "model.onnx", X[:1], check=False)["size_bytes"]
    assert summary["met"] is True and summary["unit"] == "bytes"
    assert summary["target_after"] == size and summary["target_before"] == unpruned
    assert unpruned / size >= 3.0 and summary["achieved_reduction"] == unpruned / size
    assert summary["by_form"]["onnx_int8"]["pruned_bytes"] < summary["by_form"]["onnx"]["pruned_bytes"]
    assert small[-1].out_features == 10
    assert (tmp_path / "bytes_candidates.png").stat().st_size > 0 and summary["plot"].endswith(".png")


def test_recipe_step_accepts_the_measured_fields(clock, tmp_path) -> None:
    fake = clock({"0": 2.0, "3": 1.0})
    spec = METHODS.get("prune/auto")
    fields = {"target": "latency", "reduction": 1.5, "runtime": "torch", "batch_size": 8, "threads": 1,
              "widths": [1.0, 0.5], "max_rounds": 2, "cache_dir": str(tmp_path), "recalibrate_bn_batches": 0}  # fmt: skip
    config = spec.config.from_dict(fields, where="step prune/auto")
    data = MethodData(example_inputs=X, out_dir=tmp_path, progress=False)
    result = spec.fn(_vgg(), config, data)
    assert result.summary["met"] is True and result.summary["measure"]["batch_size"] == 8
    assert {call[2] for call in fake.calls} == {8}
    assert (tmp_path / "latency_candidates.png").stat().st_size > 0
    json.dumps(result.summary)


@pytest.mark.parametrize(
    ("key", "value"),
    [("runtime", "tpu"), ("batch_size", 0), ("threads", 0), ("widths", [1.5]), ("widths", []),
     ("max_rounds", 0), ("ship_form", "zip"), ("tolerance", 0.9), ("target", "speed")],
)  # fmt: skip
def test_bad_values_are_errors_naming_the_key(key, value) -> None:
    with pytest.raises(ConfigError, match=key):
        AutoPruneConfig.from_dict({key: value}, where="step prune/auto")
    with pytest.raises(ConfigError, match="'batchsize'"):
        AutoPruneConfig.from_dict({"batchsize": 64})
    with pytest.raises(ConfigError, match="needs loader"):
        prune_to_target(_vgg(), X, target="latency", method="sensitivity", loader=None)


def test_sensitivity_proxy_measures_accuracy_drops_on_the_loader(clock, tmp_path) -> None:
    clock({"a": 10.0, "b": 1.0})
    gen = torch.Generator().manual_seed(0)
    loader = [
        (torch.randn(8, 3, 8, 8, generator=gen), torch.randint(0, 10, (8,), generator=gen)) for _ in range(2)
    ]
    _, summary = _latency(TwoBranch().eval(), tmp_path, reduction=1.8, method="sensitivity", loader=loader)
    assert summary["proxy"] == "sensitivity" and 0.0 <= summary["baseline_accuracy"] <= 1.0
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in summary["candidates"])
    for entry in summary["cost_table"]["entries"]:  # running max of the drop: never falls as a group narrows
        same = [e["proxy_lost"] for e in summary["cost_table"]["entries"] if e["group"] == entry["group"]]
        assert same == sorted(same)


def test_noisy_table_entries_are_made_monotone_and_slower_ones_take_the_mac_prior() -> None:
    from netcompress.pruning.graph_tracing import build_channel_graph
    from netcompress.pruning.latency_search import Variants, smooth_savings
    from netcompress.pruning.latency_table import CostTable

    model = TwoBranch().eval()
    graph = build_channel_graph(model, X)
    scores = {g.id: torch.ones(g.num_units) for g in graph.prunable_groups() if g.producers in (["a"], ["b"])}
    variants = Variants.of(model, graph, scores, [1.0, 0.75, 0.5, 0.25], round_to=1, min_channels=1)
    table = CostTable(key={}, base=100.0, widths=[1.0, 0.75, 0.5, 0.25], kept=variants.kept,
                      costs={"a": [100.0, 110.0, 80.0, 90.0], "b": [100.0, 96.0, 92.0, 88.0]})  # fmt: skip
    weights = {"a": 1000.0, "a_bn": 0.0, "a2": 1000.0, "b": 1000.0, "b2": 1000.0}
    assert smooth_savings(variants, table, weights) == 1  # a at 0.75 timed slower than unpruned
    assert table.costs["b"] == [100.0, 96.0, 92.0, 88.0]  # untouched: monotone and positive
    # ms per MAC removed (a, a2 / b, b2 touch each group: 2000 MACs): b 4 / (2000 * 0.25) = 0.008 at every width,
    # a 0.02 and 0.0067: median 0.008, so a at 0.75 saves 0.008 * 2000 * 0.25 = 4 ms; at 0.25 it keeps 0.5's 20
    assert table.costs["a"] == pytest.approx([100.0, 96.0, 80.0, 80.0])
