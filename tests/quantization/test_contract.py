"""The method contract of the quantization area: each Python verb gives the same model as the registered
method run from the same fields (as a recipe step runs it), and the in-place rule holds (a verb without a
trailing ``_`` leaves its argument bit-identical, a verb with one changes it)."""

from __future__ import annotations

import copy

import pytest
import torch

from netcompress.core.methods import MethodData, apply, find_method
from netcompress.quantization import (
    calibrate_,
    correct_bias_,
    freeze_quantizers_,
    mixed_precision_quantize,
    prepare_qat,
    quantize,
)
from netcompress.quantization.modules import quantizers
from netcompress.quantization.ptq import MODE_CONFIGS, PTQStaticConfig
from netcompress.quantization.qat import QATConfig, QATPrepareConfig
from netcompress.training import TrainConfig, fit
from tests.state_checks import assert_same_state, state_of


def _step(method: str, model: torch.nn.Module, fields: dict, data: MethodData):
    """What a recipe step ``{op: quantize, method: ..., **fields}`` runs: its config, through apply."""
    spec = find_method("quantize", method, where="steps[0]")
    return apply(model, spec.config.from_dict(fields, where="steps[0]"), data)


PTQ_CASES = [
    ("ptq_static", "static", {"bits": 8, "num_calib_batches": 2}),
    (
        "ptq_static",
        "static",
        {"bits": 4, "act_bits": 8, "bias_correction": True, "granularity": "per_tensor"},
    ),
    ("ptq_dynamic", "dynamic", {"bits": 8}),
    ("weight_only", "weight_only", {"bits": 4, "scheme": "asymmetric"}),
]


@pytest.mark.parametrize(("method", "mode", "fields"), PTQ_CASES)
def test_quantize_verb_equals_registered_method(method, mode, fields, small_cnn, image_batches):
    torch.manual_seed(0)
    before = state_of(small_cnn)
    verb = quantize(small_cnn, image_batches, mode=mode, **fields)
    assert_same_state(before, state_of(small_cnn))  # quantize never modifies its argument
    step = _step(method, small_cnn, fields, MethodData(calib_loader=image_batches)).model
    assert_same_state(state_of(verb), state_of(step))
    assert_same_state(before, state_of(small_cnn))
    assert find_method("quantize", method, where="t").config is MODE_CONFIGS[mode]


def test_quantize_takes_a_config_and_rejects_both(small_cnn, image_batches):
    cfg = PTQStaticConfig(bits=6, num_calib_batches=2)
    a = quantize(small_cnn, image_batches, config=cfg)
    assert_same_state(
        state_of(a), state_of(quantize(small_cnn, image_batches, layers=None, bits=6, num_calib_batches=2))
    )
    b = quantize(small_cnn, image_batches, bits=6, num_calib_batches=2)
    assert_same_state(state_of(a), state_of(b))
    assert_same_state(state_of(b), state_of(quantize(small_cnn, image_batches, config=cfg.replace(layers={}))))
    with pytest.raises(Exception, match="not both"):
        quantize(small_cnn, image_batches, config=cfg, bits=4)


def test_mixed_precision_verb_equals_registered_method(small_cnn, image_batches, tmp_path):
    fields = {"budget_bytes": 6_000, "bits_options": [2, 4, 8], "num_batches": 2}
    before = state_of(small_cnn)
    verb, summary = mixed_precision_quantize(small_cnn, image_batches, **fields)
    assert_same_state(before, state_of(small_cnn))
    result = _step(
        "mixed_precision", small_cnn, fields, MethodData(calib_loader=image_batches, out_dir=tmp_path)
    )
    assert_same_state(state_of(verb), state_of(result.model))
    assert summary["bits"] == result.summary["bits"]
    assert "file" not in summary and (tmp_path / "model.ncq").exists()  # only the step writes the file


def test_qat_verbs_equal_registered_method(small_cnn, image_batches):
    train = {"epochs": 1, "lr": 0.01, "seed": 0, "progress": False}
    quant = {"bits": 4, "act_bits": 8, "quantizer": "lsq", "num_calib_batches": 2}
    before = state_of(small_cnn)
    qat_model = prepare_qat(small_cnn, calib_loader=image_batches, **quant)
    assert_same_state(before, state_of(small_cnn))  # prepare_qat never modifies its argument
    fit(qat_model, image_batches, config=TrainConfig(**train))
    freeze_quantizers_(qat_model).eval()
    result = _step("qat", small_cnn, {**train, **quant}, MethodData(train_loader=image_batches))
    assert_same_state(state_of(qat_model), state_of(result.model))
    assert_same_state(before, state_of(small_cnn))


def test_prepare_qat_old_method_keyword_and_layers_none(small_cnn, image_batches):
    a = prepare_qat(small_cnn, method="lsq", layers=None, calib_loader=image_batches)
    b = prepare_qat(small_cnn, config=QATPrepareConfig(quantizer="lsq"), calib_loader=image_batches)
    assert_same_state(state_of(a), state_of(b))
    assert a.qat_info["method"] == "lsq"
    # QATConfig holds QATPrepareConfig's fields with the same defaults (declared once)
    assert {
        f: getattr(QATConfig(), f) for f in QATPrepareConfig.field_names()
    } == QATPrepareConfig().to_dict()


def test_in_place_verbs_change_their_argument(small_cnn, image_batches):
    qmodel = quantize(small_cnn, image_batches, bits=4, num_calib_batches=2)
    before = state_of(qmodel)
    calibrate_(qmodel, image_batches[1:], num_batches=1)
    assert any(not torch.equal(before[k], v) for k, v in qmodel.state_dict().items())
    before = state_of(qmodel)
    correct_bias_(qmodel, image_batches, num_batches=2)
    assert any(not torch.equal(before[k], v) for k, v in qmodel.state_dict().items())
    qat_model = prepare_qat(copy.deepcopy(small_cnn), calib_loader=image_batches)
    assert any(q.observing for q in quantizers(qat_model).values())
    assert freeze_quantizers_(qat_model) is qat_model
    assert not any(q.observing for q in quantizers(qat_model).values())


def test_accuracy_aware_verb_equals_registered_method(small_cnn, image_batches):
    from netcompress.quantization import AccuracyAwareConfig, quantize_accuracy_aware

    fields = {"min_agreement": 1.0, "max_trials": 2, "num_calib_batches": 2, "num_val_batches": 2}
    before = state_of(small_cnn)
    qmodel, summary = quantize_accuracy_aware(small_cnn, image_batches, image_batches, **fields)
    assert_same_state(before, state_of(small_cnn))
    result = _step(
        "accuracy_aware", small_cnn, fields, MethodData(calib_loader=image_batches, val_loader=image_batches)
    )
    assert isinstance(result.summary["met"], bool) and AccuracyAwareConfig.__name__
    assert summary["fallback_layers"] == result.summary["fallback_layers"]
    assert_same_state(state_of(qmodel), state_of(result.model))
