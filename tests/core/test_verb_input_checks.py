"""The public verbs check the model and example inputs they are given before any work: a ConfigError (a
ValueError) naming the verb, the argument, the inputs' dtypes and shapes and the likely mistake.

One shared check (``netcompress.core.model_check``, also the CLI's one-sample model check) serves
``prune_channels``, ``prune_to_target``, ``prune_transformer``, ``export_onnx``, ``profile``, ``quantize``
(calibration batches), ``fit`` and ``distill`` (their first batch).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.core.errors import ConfigError
from tests.tiny_hf import hf_family as _hf

X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    )  # fmt: skip


def _batches(inputs) -> list:
    return [(inputs, torch.tensor([0, 1]))]


VERBS = {
    "prune_channels": lambda m, x, tmp: nc.prune_channels(m, x, ratio=0.5),
    "prune_to_target": lambda m, x, tmp: nc.prune_to_target(m, x, target="macs", reduction=2.0),
    "export_onnx": lambda m, x, tmp: nc.export_onnx(m, tmp / "m.onnx", x),
    "profile": lambda m, x, tmp: nc.profile(m, x, latency=False),
    "quantize": lambda m, x, tmp: nc.quantize(m, _batches(x)),
    "fit": lambda m, x, tmp: nc.fit(m, _batches(x), config={"epochs": 1, "progress": False}),
    "distill": lambda m, x, tmp: nc.distill(m, _cnn(), _batches(x), epochs=1, progress=False),
}
# what each verb calls the inputs it was given
ARGUMENT = {
    "quantize": r"calibration: a calib_loader batch's inputs",
    "fit": r"fit: train_loader's first batch: inputs",
    "distill": r"fit: train_loader's first batch: inputs",
}
BAD_INPUTS = {
    "a list of tensors": (
        [X, X],
        r"\(\(float32 \(2, 3, 8, 8\), float32 \(2, 3, 8, 8\)\)\) do not fit the model: TypeError: .*; a list is "
        r"passed as 2 separate positional arguments; for one batch pass one tensor",
    ),
    "integer images": (
        X.long(),
        r"\(int64 \(2, 3, 8, 8\)\) do not fit the model: RuntimeError: .*; integer inputs reach a layer that "
        r"takes floats: pass float tensors",
    ),
    "a wrong channel count": (
        torch.randn(2, 4, 8, 8),
        r"\(float32 \(2, 4, 8, 8\)\) do not fit the model: RuntimeError: .*to have 3 channels, but got 4",
    ),
    "a misspelled keyword": (
        {"inputz": X},
        r"\(\{inputz: float32 \(2, 3, 8, 8\)\}\) do not fit the model: TypeError: .*unexpected keyword argument",
    ),
}


@pytest.mark.parametrize("bad", list(BAD_INPUTS))
@pytest.mark.parametrize("verb", list(VERBS))
def test_inputs_the_model_cannot_take_are_named_before_any_work(verb, bad, tmp_path):
    inputs, message = BAD_INPUTS[bad]
    model = _cnn()
    before = copy.deepcopy(model.state_dict())
    prefix = ARGUMENT.get(verb, f"{verb}: example_inputs")
    with pytest.raises(ConfigError, match=rf"^{prefix} {message}"):
        VERBS[verb](model, inputs, tmp_path)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing trained
    assert list(tmp_path.iterdir()) == []  # nothing written


def _meta() -> nn.Module:
    with torch.device("meta"):
        return _cnn()


def _nan() -> nn.Module:
    model = _cnn()
    with torch.no_grad():
        model[3].weight[0, 0, 0, 0] = float("nan")
    return model


BAD_MODELS = {
    "a class": (
        lambda: nn.Conv2d,
        r"model is the class Conv2d, not a model; build one first \(Conv2d\(\.\.\.\)\)",
    ),
    "a state dict": (lambda: _cnn().state_dict(), r"model is a OrderedDict \(a state_dict\?\), not a model"),
    "a path": (lambda: "model.pt", r"model is a path \('model.pt'\), not a model; load it first"),
    "meta tensors": (_meta, r"model's parameter '0.weight' is on the meta device \(a shape, no values\)"),
    "NaN weights": (_nan, r"model's parameter '3.weight' holds NaN/inf values"),
}


@pytest.mark.parametrize("state", list(BAD_MODELS))
@pytest.mark.parametrize(
    "verb", ["prune_channels", "prune_to_target", "export_onnx", "profile", "quantize", "fit"]
)
def test_a_model_in_a_state_no_verb_can_use_is_named(verb, state, tmp_path):
    build, message = BAD_MODELS[state]
    with pytest.raises(ConfigError, match=rf"^{verb}: {message}"):
        VERBS[verb](build(), X, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_distill_names_a_teacher_that_is_no_model():
    with pytest.raises(ConfigError, match=r"^distillation: teacher is the class Conv2d, not a model"):
        nc.distill(_cnn(), nn.Conv2d, _batches(X), epochs=1, progress=False)


@pytest.mark.parametrize("verb", ["quantize", "fit"])
def test_a_tensor_for_a_loader_is_refused(verb):
    call = (lambda: nc.quantize(_cnn(), X)) if verb == "quantize" else (lambda: nc.fit(_cnn(), X))
    argument = "calib_loader" if verb == "quantize" else "train_loader"
    with pytest.raises(
        ConfigError, match=rf"^{verb}: {argument} must yield batches .*got a Tensor; wrap one batch"
    ):
        call()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: nc.prune_channels(_cnn(), X, ratio=1.5), r"ratio=1.5 would remove everything"),
        (lambda: nc.prune_channels(_cnn(), X, ratio=-0.1), r"ratio=-0.1 must be within \[0.0, None\]"),
        (lambda: nc.prune_to_target(_cnn(), X, reduction=0.5), r"reduction=0.5 must be within \[1.0, None\]"),
        (lambda: nc.quantize(_cnn(), _batches(X), bits=1), r"bits=1 must be within \[2, 16\] in quantize"),
        (
            lambda: nc.distill(_cnn(), _cnn(), _batches(X), alpha=2.0),
            r"alpha=2.0 must be within \[0.0, 1.0\]",
        ),
        (lambda: nc.prune_transformer(_cnn(), X, heads=1.2), r"heads=1.2 would remove everything"),
    ],
)
def test_rates_out_of_range_are_named(call, message):
    with pytest.raises(ConfigError, match=message):
        call()


def test_prune_transformer_names_a_misspelled_keyword_and_the_one_meant():
    model, inputs = _hf("bert")  # BERT's forward takes **kwargs: the typo is no TypeError of its own
    bad = {"input_idz": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
    with pytest.raises(
        ConfigError,
        match=r"^prune_transformer: example_inputs \(\{input_idz: int64 \(2, 7\), attention_mask: int64 \(2, 7\)\}\) "
        r"do not fit the model: ValueError: .*; forward takes no argument 'input_idz' \(did you mean 'input_ids'\?\); "
        r"its arguments: input_ids, attention_mask",
    ):
        nc.prune_transformer(model, bad, heads=0.5)
    with pytest.raises(
        ConfigError,
        match=r"\(\{input_ids: float32 \(2, 7\)\}\) do not fit the model: RuntimeError: .*Long, Int",
    ):
        nc.prune_transformer(model, {"input_ids": inputs["input_ids"].float()}, heads=0.5)


@pytest.mark.parametrize("method", ["ste", "lsq"])
def test_the_check_never_changes_quantizers_that_still_observe(method):
    from netcompress.core.model_check import check_model_call
    from netcompress.quantization import prepare_qat
    from netcompress.quantization.modules import quantizers

    qat = prepare_qat(
        _cnn(), bits=8, method=method
    )  # no calibration: observing (ste) / not initialised (lsq)
    before = copy.deepcopy(qat.state_dict())
    flags = {
        n: (getattr(q, "observing", None), getattr(q, "initialised", None))
        for n, q in quantizers(qat).items()
    }
    check_model_call(qat, X * 100, where="test")  # a forward on the model itself would observe these ranges
    assert all(torch.equal(before[k], v) for k, v in qat.state_dict().items())
    assert flags == {
        n: (getattr(q, "observing", None), getattr(q, "initialised", None))
        for n, q in quantizers(qat).items()
    }


def test_the_other_ptq_verbs_check_model_loaders_and_the_first_batch():
    batches = _batches(X)
    with pytest.raises(ConfigError, match=r"^quantize_accuracy_aware: model is the class Conv2d"):
        nc.quantize_accuracy_aware(nn.Conv2d, batches, batches)
    with pytest.raises(ConfigError, match=r"^quantize_accuracy_aware: val_loader must yield batches"):
        nc.quantize_accuracy_aware(_cnn(), batches, X)
    with pytest.raises(ConfigError, match=r"^mixed_precision_quantize: model is a path \('m.pt'\)"):
        nc.mixed_precision_quantize("m.pt", batches)
    with pytest.raises(
        ConfigError,
        match=r"^mixed precision: the loader's first batch: inputs \(int64 \(2, 3, 8, 8\)\) do not fit the model: "
        r"RuntimeError: .*; integer inputs reach a layer that takes floats",
    ):
        nc.mixed_precision_quantize(_cnn(), _batches(X.long()))
