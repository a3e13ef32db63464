"""Recipe steps of the quantization area: registered, validated, runnable on a tiny model."""

from __future__ import annotations

import pytest
import torch

from netcompress.core.errors import ConfigError
from netcompress.core.methods import METHODS, MethodData, find_method
from netcompress.quantization.qat import QATConfig

QUANT_METHODS = ["ptq_static", "ptq_dynamic", "weight_only", "mixed_precision", "qat"]


def _ctx(tmp_path, batches):
    return MethodData(
        train_loader=batches,
        val_loader=batches,
        example_inputs=batches[0][0][:1],
        out_dir=tmp_path,
        num_classes=10,
        progress=False,
    )


@pytest.mark.parametrize("method", QUANT_METHODS)
def test_step_registered_and_rejects_unknown_keys(method):
    spec = find_method("quantize", method, where="steps[0]")
    assert f"quantize/{method}" in METHODS
    with pytest.raises(ConfigError, match="unknown key 'bitz'"):
        spec.config.from_dict({"bitz": 4}, where="steps[0]")


@pytest.mark.parametrize("method", ["ptq_static", "ptq_dynamic", "weight_only", "mixed_precision"])
def test_steps_run_and_return_json_summaries(method, small_cnn, image_batches, tmp_path):
    import json

    spec = find_method("quantize", method, where="steps[0]")
    fields = {"budget_bytes": 6_000} if method == "mixed_precision" else {"bits": 8}
    result = spec.fn(small_cnn, spec.config.from_dict(fields), _ctx(tmp_path, image_batches))
    json.dumps(result.summary)
    assert result.summary["num_quantized_layers"] >= 1
    with torch.no_grad():
        assert result.model(image_batches[0][0]).shape == (8, 10)
    if method == "mixed_precision":
        assert result.summary["file"]["size_bytes"] <= 6_000
        assert (tmp_path / "model.ncq").exists()


def test_qat_config_holds_training_fields():
    cfg = QATConfig.from_dict({"epochs": 2, "lr": 0.01, "bits": 4, "quantizer": "lsq"})
    assert (cfg.epochs, cfg.bits, cfg.quantizer) == (2, 4, "lsq")
    with pytest.raises(ConfigError, match="quantizer"):
        QATConfig(quantizer="lsqq")
