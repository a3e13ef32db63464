"""Accuracy-aware PTQ: the layer that breaks the bound is found by sensitivity and kept float; the best
model comes back with ``met`` and the float layers named, met or not; int8-slower layers (decided with a
fake timer) stay float."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from netcompress.core.errors import ConfigError
from netcompress.core.methods import MethodData, apply
from netcompress.export import int8_speed
from netcompress.quantization import AccuracyAwareConfig, quantize_accuracy_aware
from netcompress.quantization.accuracy_aware import _moves
from netcompress.quantization.fidelity import Outputs, resolve_bounds, score_outputs, shortfall
from netcompress.quantization.modules import QuantLayer
from tests.state_checks import state_of

from .conftest import SmallCNN, bert_batches, tiny_bert


def _cnn(*, outliers=("classifier",)) -> nn.Module:
    """SmallCNN whose named layers carry one huge weight on a dead input channel: the float outputs
    do not change, but per-tensor int8 rounds every other weight of that layer to zero."""
    torch.manual_seed(0)
    model = SmallCNN().eval()
    dead_bn = {"classifier": "features.5", "features.4": "features.1"}
    with torch.no_grad():
        for name in outliers:
            bn = model.get_submodule(dead_bn[name])
            bn.weight[0], bn.bias[0] = 0.0, -1.0  # channel 0 is 0 after the ReLU
            model.get_submodule(name).weight[(0, 0) + (0,) * (model.get_submodule(name).weight.dim() - 2)] = (
                1000.0
            )
    return model


def _images(seed: int, n: int = 4, size: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(size, 3, 8, 8, generator=gen), torch.randint(0, 10, (size,), generator=gen))
        for _ in range(n)
    ]


FIELDS = {
    "granularity": "per_tensor",
    "num_calib_batches": 2,
    "num_val_batches": 2,
    "num_sensitivity_batches": 1,
}


def test_the_outlier_layer_ranks_first_and_stays_float_until_the_bound_holds():
    model = _cnn()
    before = state_of(model)
    qmodel, summary = quantize_accuracy_aware(model, _images(1), _images(2), min_agreement=0.9, **FIELDS)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # input untouched
    assert summary["metric"] == "agreement" and summary["bounds"] == {"min_agreement": 0.9}
    search = summary["search"]
    assert search["validation"] == "val_loader" and search["num_val_samples"] == 32
    assert not search["baseline"]["met"] and search["baseline"]["agreement"] < 0.9
    assert next(iter(search["sensitivity"])) == "classifier"
    assert summary["met"] is True
    assert summary["fallback_layers"] == {"classifier": "float"}
    assert summary["float_layers"] == ["classifier"]
    assert len(search["trials"]) == 2 and search["trials"][1]["added"] == "classifier: float"
    assert summary["scores"]["agreement"] >= 0.9 and summary["scores"]["shortfall"] == 0.0
    assert isinstance(qmodel.get_submodule("classifier"), nn.Linear)  # really float in the returned model
    assert sum(isinstance(m, QuantLayer) for m in qmodel.modules()) == 2


def test_unmet_bound_returns_the_closest_model_and_says_so():
    model = _cnn(outliers=("classifier", "features.4"))
    qmodel, summary = quantize_accuracy_aware(
        model, _images(1), _images(2), min_agreement=1.0, max_trials=1, **FIELDS
    )
    trials = summary["search"]["trials"]
    assert summary["met"] is False and len(trials) == 2
    best = min(trials, key=lambda t: (t["shortfall"], t["fallback"]))
    assert summary["scores"]["shortfall"] == best["shortfall"]
    assert len(summary["fallback_layers"]) == best["fallback"]
    assert set(summary["fallback_layers"]) <= {"classifier", "features.4"}
    # the returned model is the one measured: its agreement on the validation batches is the summary's
    val = _images(2)[:2]
    with torch.no_grad():
        ref = torch.cat([model(x) for x, _ in val]).argmax(1)
        got = torch.cat([qmodel(x) for x, _ in val]).argmax(1)
    assert float((ref == got).double().mean()) == pytest.approx(summary["scores"]["agreement"])


def test_no_trials_keeps_everything_quantized_and_reports_unmet():
    model = _cnn()
    with torch.no_grad():  # labels the float model gets right: any change of prediction is a drop
        val = [(x, model(x).argmax(1)) for x, _ in _images(2)]
    qmodel, summary = quantize_accuracy_aware(model, _images(1), val, max_drop=0.0, max_trials=0, **FIELDS)
    assert summary["metric"] == "accuracy" and summary["met"] is False
    assert summary["fallback_layers"] == {} and summary["float_layers"] == []
    assert summary["search"]["sensitivity"] == {}  # nothing measured that was not used
    scores = summary["scores"]
    assert scores["float_accuracy"] == 1.0 and scores["drop"] == 1.0 - scores["accuracy"] > 0.5


def test_verb_and_registered_method_give_identical_weights():
    fields = {**FIELDS, "min_agreement": 0.9, "sensitivity": "one_at_a_time"}
    model, calib, val = _cnn(), _images(1), _images(2)
    qmodel, summary = quantize_accuracy_aware(model, calib, val, **fields)
    result = apply(
        model,
        AccuracyAwareConfig.from_dict(fields, where="step"),
        MethodData(calib_loader=calib, val_loader=val),
    )
    a, b = state_of(qmodel), state_of(result.model)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert summary["fallback_layers"] == result.summary["fallback_layers"] == {"classifier": "float"}


def test_bounds_belong_to_their_metric():
    with pytest.raises(ConfigError, match="max_drop does not apply to metric 'embedding'"):
        resolve_bounds("embedding", {"max_drop": 0.01})
    assert resolve_bounds("agreement", {}) == {"min_agreement": 0.99}
    scores = {"cosine_mean": 0.98, "nn_agreement": 0.97}
    assert shortfall(scores, {"min_cosine": 0.99, "min_agreement": 0.95}, "embedding") == pytest.approx(0.01)
    with pytest.raises(ConfigError, match="mode"):
        AccuracyAwareConfig(mode="int3")
    ref = Outputs("accuracy", torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))
    out = Outputs("accuracy", torch.tensor([[0.0, 1.0], [0.0, 1.0]]), None)
    assert score_outputs(ref, out)["drop"] == 0.5 and score_outputs(ref, out)["agreement"] == 0.5


def test_fallback_goes_through_higher_bits_before_float():
    assert _moves(["a", "b"], 8) == [("a", 8), ("b", 8), ("a", "float"), ("b", "float")]
    assert _moves(["a"], None) == [("a", "float")]


def _fake_timer(calls):
    """float 1 ms; int8 2 ms for a 2-D input (the classifier), 0.5 ms otherwise."""

    def timer(models, inputs, *, threads, rounds):
        calls.append((sorted(models), tuple(inputs.shape), threads, rounds))
        return {"float": 1.0, "int8": 2.0 if inputs.dim() == 2 else 0.5}

    return timer


def test_layers_slower_in_int8_stay_float_and_the_speedup_is_stated(monkeypatch):
    calls = []
    monkeypatch.setattr(int8_speed, "ort_timer", _fake_timer(calls))
    torch.manual_seed(0)
    model = SmallCNN().eval()
    fields = {**FIELDS, "granularity": "per_channel", "min_agreement": 0.5}
    qmodel, summary = quantize_accuracy_aware(
        model, _images(1), _images(2), speed_fallback=True, time_int8=True, speed_threads=2, **fields
    )
    speed = summary["speed_fallback"]
    assert speed["kept_float"] == ["classifier"] and speed["skipped"] == {}
    assert set(speed["layers"]) == {"features.0", "features.4", "classifier"}
    assert speed["layers"]["features.0"]["speedup"] == 2.0 and speed["layers"]["classifier"]["speedup"] == 0.5
    assert summary["float_layers"] == ["classifier"] and summary["fallback_layers"] == {}
    assert summary["met"] is True
    whole = summary["speed"]
    assert whole["speedup"] == 2.0 and whole["faster"] is True and whole["threads"] == 2
    assert whole["int8_bytes"] < whole["float_bytes"]
    assert all(c[0] == ["float", "int8"] and c[2:] == (2, 3) for c in calls) and len(calls) == 4


def test_slower_in_int8_margin():
    timings = {"a": {"float_ms": 1.0, "int8_ms": 1.05}, "b": {"float_ms": 1.0, "int8_ms": 1.2}}
    assert int8_speed.slower_in_int8(timings) == ["a", "b"]
    assert int8_speed.slower_in_int8(timings, margin=0.1) == ["b"]


# --- a tiny Hugging Face BERT: dict batches, embedding metric, dynamic int8 ---


_bert_batches = bert_batches


def test_tiny_bert_dynamic_keeps_the_damaged_linear_float_for_cosine():
    model = tiny_bert()
    damaged = "encoder.layer.1.output.dense"
    with torch.no_grad():  # a dead FFN neuron (GELU(-10) ~ 0) with a huge outgoing weight
        model.get_submodule("encoder.layer.1.intermediate.dense").weight[0] = 0.0
        model.get_submodule("encoder.layer.1.intermediate.dense").bias[0] = -10.0
        model.get_submodule(damaged).weight.mul_(30.0)  # an FFN whose output matters
        model.get_submodule(damaged).weight[0, 0] = 500.0
    fields = {"mode": "dynamic", "granularity": "per_tensor", "min_cosine": 0.99, "num_val_batches": 2}
    qmodel, summary = quantize_accuracy_aware(model, None, _bert_batches(3), **fields)
    assert summary["metric"] == "embedding"
    assert summary["search"]["baseline"]["cosine_mean"] < 0.99
    assert next(iter(summary["search"]["sensitivity"])) == damaged
    assert summary["met"] is True and summary["fallback_layers"] == {damaged: "float"}
    assert summary["scores"]["cosine_mean"] >= 0.99 and "nn_agreement" in summary["scores"]
    assert summary["num_quantized_layers"] == 11 and summary["float_layers"] == [damaged]
    assert isinstance(qmodel.get_submodule(damaged), nn.Linear)


def test_input_smoothing_keeps_the_function_folds_into_value_and_lowers_int8_error():
    from netcompress.quantization import quantize
    from netcompress.quantization.input_smoothing import ScaledInputLinear, smooth_inputs

    model = tiny_bert()
    with torch.no_grad():  # outlier channels in the residual stream, as trained encoders have
        for ln in (
            "embeddings.LayerNorm",
            "encoder.layer.0.output.LayerNorm",
            "encoder.layer.1.attention.output.LayerNorm",
        ):
            model.get_submodule(ln).weight[3] = 40.0
    batches = _bert_batches(5)
    smoothed, info = smooth_inputs(model, batches, alpha=0.8)
    assert info["folded"] == {
        f"encoder.layer.{i}.attention.output.dense": f"encoder.layer.{i}.attention.self.value" for i in (0, 1)
    }
    assert len(info["scaled"]) == 10 and info["max_rel_diff"] < 1e-5
    q, k, v = (
        smoothed.get_submodule(f"encoder.layer.0.attention.self.{n}") for n in ("query", "key", "value")
    )
    assert isinstance(q, ScaledInputLinear)
    assert q.inv_scale.data_ptr() == k.inv_scale.data_ptr() == v.inv_scale.data_ptr()  # one input, one Mul
    assert isinstance(
        model.get_submodule("encoder.layer.0.attention.self.query"), nn.Linear
    )  # input untouched
    x = _bert_batches(6)[0]
    with torch.no_grad():
        ref = model(**x).last_hidden_state
        assert (smoothed(**x).last_hidden_state - ref).abs().max() < 1e-4 * ref.abs().max()
        plain = quantize(model, mode="dynamic")(**x).last_hidden_state
        smooth = quantize(smoothed, mode="dynamic")(**x).last_hidden_state
    err_plain, err_smooth = (
        ((plain - ref).norm() / ref.norm()).item(),
        ((smooth - ref).norm() / ref.norm()).item(),
    )
    assert err_smooth < 0.7 * err_plain
