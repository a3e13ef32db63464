"""Post-training quantization: SQNR, BN folding, placement, modes, per-layer overrides, CLE, bias correction."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from netcompress.core.errors import ConfigError
from netcompress.core.methods import MethodData, apply
from netcompress.quantization import (
    QuantConv2d,
    QuantSpec,
    equalize_cross_layer_,
    fold_bn,
    quantize,
    wrap_module,
)
from netcompress.quantization.bn_folding import fold_bn_and_report
from netcompress.quantization.modules import quantizers
from netcompress.quantization.ptq import MODE_CONFIGS


def ptq_with_summary(model, calib_loader=None, *, mode="static", **fields):
    """``(qmodel, summary)`` of the registered PTQ method of ``mode`` (what a recipe step runs)."""
    config = MODE_CONFIGS[mode].from_dict(fields)
    result = apply(model, config, MethodData(calib_loader=calib_loader))
    return result.model, result.summary


def test_sqnr_of_8bit_conv_output_at_least_30db(nets):
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 32, 3, padding=1)
    x = torch.randn(4, 16, 12, 12)
    q = wrap_module(conv, weight_spec=QuantSpec(bits=8, granularity="per_channel"))
    assert isinstance(q, QuantConv2d)
    with torch.no_grad():
        sqnr = nets.sqnr_db(conv(x), q(x))
    # threshold 30 dB (8-bit per-channel weights; measured here 48.1 dB; 4-bit 22.9 dB)
    assert sqnr >= 30.0, sqnr
    q4 = wrap_module(conv, weight_spec=QuantSpec(bits=4, granularity="per_channel"))
    with torch.no_grad():
        assert nets.sqnr_db(conv(x), q4(x)) < sqnr - 15  # ~6 dB per bit


def test_fold_bn_preserves_outputs(small_cnn):
    x = torch.randn(4, 3, 16, 16)
    folded, summary = fold_bn_and_report(small_cnn)
    assert summary["num_folded"] == 2 and summary["bn_left"] == []
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        assert float((folded(x) - small_cnn(x)).abs().max()) < 1e-5
    # the conv without bias got one
    assert folded.get_submodule("features.4").bias is not None


def test_quantize_leaves_input_untouched_and_static_is_close(small_cnn, image_batches, nets):
    before = copy.deepcopy(small_cnn.state_dict())
    qmodel, summary = ptq_with_summary(small_cnn, image_batches, bits=8, num_calib_batches=4)
    after = small_cnn.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert any(isinstance(m, nn.BatchNorm2d) for m in small_cnn.modules())
    assert summary["num_quantized_layers"] == 3 and summary["float_layers"] == []
    assert summary["activation_quantizers"] == {"outputs": 3, "inputs": 2}
    assert summary["float_ops"] == {"AdaptiveAvgPool2d": 1}
    assert summary["calibration"] == {"num_batches": 4, "uncalibrated": []}
    # 216 + 1152 + 160 weights at 1 byte, 8 bytes of qparams per channel, 4 bytes per bias
    assert summary["weight_bytes"] == 216 + 1152 + 160 + 8 * (8 + 16 + 10) + 4 * (8 + 16 + 10)
    x = image_batches[0][0]
    with torch.no_grad():
        assert nets.sqnr_db(small_cnn(x), qmodel(x)) > 25.0
    assert all(not q.observing for q in quantizers(qmodel).values())


def test_activation_quantizer_follows_relu_and_is_uint8_zero_point_zero(small_cnn, image_batches):
    qmodel = quantize(small_cnn, image_batches)
    code = qmodel.code
    assert "act_quant._0_in" in code or "act_quant.features_0_in" in code
    outs = {n: q for n, q in quantizers(qmodel).items() if n.endswith("_out")}
    relu_outs = [q for n, q in outs.items() if "classifier" not in n]
    assert len(relu_outs) == 2
    for q in relu_outs:
        assert q.spec.signed is False and int(q.zero_point) == 0 and q.bits == 8


def test_third_party_model_quantizes_and_runs(nets):
    torch.manual_seed(0)
    model = nets.ThirdParty().eval()
    data = [torch.randn(4, 3, 10, 10) for _ in range(3)]  # loader yielding x only
    qmodel, summary = ptq_with_summary(model, data)
    assert summary["graph"] == "fx"
    assert sorted(summary["layers"]) == ["branch", "dw", "head", "stem"]
    assert summary["float_ops"].get("add") == 1 and summary["float_ops"].get("cat") == 1
    assert summary["float_ops"].get("gelu") == 1
    assert summary["relu6_absorbed"] == 1  # its uint8 quantizer already clips to [0, <= 6]
    x = torch.randn(2, 3, 10, 10)
    with torch.no_grad():
        ref, out = model(x), qmodel(x)
    assert out.shape == (2, 5)
    assert float((ref - out).abs().max()) < 0.05 * float(ref.abs().max()) + 0.02
    # the subclass with its own forward (x0.5) is still honoured
    assert type(qmodel.get_submodule("branch").layer).__name__ == "ScaledConv"
    buf = io.BytesIO()
    torch.save(qmodel, buf)
    buf.seek(0)
    restored = torch.load(buf, weights_only=False)
    with torch.no_grad():
        assert torch.equal(restored(x), out)
        assert torch.equal(copy.deepcopy(qmodel)(x), out)


def test_untraceable_model_falls_back_to_eager_input_quantizers():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 3)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
                x = x * 2
            return self.fc(x)

    model = Branchy().eval()
    qmodel, summary = ptq_with_summary(model, [torch.randn(4, 6) for _ in range(2)])
    assert summary["graph"].startswith("eager (fx failed")
    assert summary["layers"]["fc"]["input_bits"] == 8
    x = torch.randn(3, 6)
    with torch.no_grad():
        assert float((qmodel(x) - model(x)).abs().max()) < 0.05


def test_dynamic_and_weight_only_modes(small_cnn):
    dyn, s_dyn = ptq_with_summary(small_cnn, mode="dynamic")
    assert (
        list(s_dyn["layers"]) == ["classifier"] and s_dyn["layers"]["classifier"]["input_bits"] == "dynamic"
    )
    wo, s_wo = ptq_with_summary(small_cnn, mode="weight_only", bits=4)
    assert s_wo["num_quantized_layers"] == 3 and s_wo["num_activation_quantizers"] == 0
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = small_cnn(x)
        assert float((dyn(x) - ref).abs().max()) < 0.02
        assert 0 < float((wo(x) - ref).abs().max()) < 0.5


def test_per_layer_overrides_and_errors(small_cnn, image_batches):
    qmodel, summary = ptq_with_summary(
        small_cnn,
        image_batches,
        layers={"re:features\\..*": {"bits": 4}, "classifier": {"enabled": False}},
    )
    assert {n: e["weight_bits"] for n, e in summary["layers"].items()} == {"features.0": 4, "features.4": 4}
    assert summary["float_layers"] == ["classifier"]
    with pytest.raises(ConfigError, match="matches no quantizable layer"):
        quantize(small_cnn, image_batches, layers={"featurez.0": {"bits": 4}})
    with pytest.raises(ConfigError, match="unknown key 'bitz'"):
        quantize(small_cnn, image_batches, layers={"classifier": {"bitz": 4}})
    with pytest.raises(ConfigError, match="calib_loader"):
        quantize(small_cnn, None, mode="static")
    with pytest.raises(ConfigError, match="unknown quantization mode"):
        quantize(small_cnn, image_batches, mode="statc")


def test_cross_layer_equalisation_rescues_per_tensor_depthwise():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(), nn.Conv2d(8, 4, 1)
    ).eval()
    with torch.no_grad():  # depthwise channels with ranges spread over 3 decades
        model[2].weight.mul_(torch.logspace(-2, 1, 8).reshape(8, 1, 1, 1))
    x = torch.randn(4, 3, 8, 8)
    gm = fold_bn(model)
    info = equalize_cross_layer_(gm)
    assert info["pairs"] == [["0", "2"], ["2", "4"]]
    with torch.no_grad():
        assert float((gm(x) - model(x)).abs().max()) < 1e-4  # function preserved
        ref = model(x)
        errs = {}
        for eq in (False, True):
            q = quantize(model, mode="weight_only", bits=4, granularity="per_tensor", equalize=eq)
            errs[eq] = float((q(x) - ref).pow(2).mean())
    assert errs[True] < 0.5 * errs[False], errs


def test_bias_correction_reduces_mean_output_shift():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1)).eval()
    with torch.no_grad():
        model[0].weight.add_(0.02)  # a systematic weight offset that 3-bit rounding distorts
    data = [torch.randn(8, 8, 8, 8) + 1.0 for _ in range(4)]
    x = torch.randn(16, 8, 8, 8) + 1.0
    shifts = {}
    for bc in (False, True):
        q = quantize(model, data, bits=3, act_bits=None, mode="static", bias_correction=bc, fold_bn=False)
        with torch.no_grad():
            shifts[bc] = float((q(x) - model(x)).mean(dim=(0, 2, 3)).abs().mean())
    assert shifts[True] < 0.5 * shifts[False], shifts
