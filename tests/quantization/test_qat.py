"""Quantization-aware training: LSQ gradients, STE training, per-layer bits, frozen scales after PTQ."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from netcompress.quantization import LSQFakeQuantize, QuantFilterBank, fold_bn, prepare_qat, quantize
from netcompress.quantization.modules import quantizers
from netcompress.quantization.qparams import quantize_tensor


def _sgd_steps(model, batches, *, steps, lr=0.05):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    losses = []
    for i in range(steps):
        x, y = batches[i % len(batches)]
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def test_lsq_step_sizes_receive_gradients(small_cnn, image_batches):
    qat = prepare_qat(small_cnn, bits=4, act_bits=4, method="lsq", calib_loader=image_batches)
    lsq = {n: q for n, q in quantizers(qat).items() if isinstance(q, LSQFakeQuantize)}
    assert len(lsq) == 3 + 5  # 3 weight quantizers, 5 activation quantizers
    assert all(q.initialised for q in lsq.values())
    x, y = image_batches[0]
    F.cross_entropy(qat(x), y).backward()
    for name, q in lsq.items():
        assert q.scale.grad is not None, name
        assert float(q.scale.grad.abs().sum()) > 0, name


@pytest.mark.parametrize("method", ["ste", "lsq"])
def test_qat_training_lowers_loss_and_input_untouched(small_cnn, image_batches, method):
    before = copy.deepcopy(small_cnn.state_dict())
    qat = prepare_qat(small_cnn, bits=4, act_bits=8, method=method, calib_loader=image_batches)
    assert qat.training
    losses = _sgd_steps(qat, image_batches[:1], steps=20, lr=0.1)
    float_losses = _sgd_steps(fold_bn(small_cnn).train(), image_batches[:1], steps=20, lr=0.1)
    # fitting one batch: measured here float 2.38 -> 1.50, STE 2.38 -> 1.57, LSQ 2.38 -> 1.55
    assert losses[-1] < 0.75 * losses[0], losses[::4]
    assert abs(losses[-1] - float_losses[-1]) < 0.25, (losses[-1], float_losses[-1])
    assert all(torch.equal(before[k], v) for k, v in small_cnn.state_dict().items())


def test_per_layer_bits_with_filter_bank(nets):
    torch.manual_seed(0)
    model = nets.randomise_bn(nets.TinySinc())
    layers = {
        "sinc": {"bits": 7},
        "re:block\\..*": {"bits": 4, "act_bits": 4},
        "classifier": {"bits": 8, "act_bits": 8},
    }
    data = [(torch.randn(4, 1, 64), torch.randint(0, 10, (4,))) for _ in range(2)]
    qat = prepare_qat(model, bits=8, act_bits=8, layers=layers, calib_loader=data)
    assert isinstance(qat.get_submodule("sinc"), QuantFilterBank)
    bits = {n: q.bits for n, q in quantizers(qat).items()}
    assert bits["sinc.weight_fq"] == 7
    assert bits["block.0.weight_fq"] == 4 and bits["classifier.weight_fq"] == 8
    assert bits["act_quant.block_0_out"] == 4 and bits["act_quant.classifier_in"] == 8
    # the kernel the sinc layer convolves with lies on the 7-bit grid
    sinc = qat.get_submodule("sinc")
    kernel = sinc.quantized_weight()
    fq = sinc.weight_fq
    codes = kernel / fq.scale.reshape(-1, 1, 1)
    assert torch.allclose(codes, torch.round(codes), atol=1e-3)
    assert int(quantize_tensor(kernel, fq.scale, fq.zero_point, fq.spec).abs().max()) <= 64
    # gradients reach the sinc cut-off frequencies through the quantized kernel
    x, y = data[0]
    F.cross_entropy(qat(x), y).backward()
    assert float(qat.get_submodule("sinc.layer").low.grad.abs().sum()) > 0


def test_qat_from_ptq_with_frozen_scales(small_cnn, image_batches):
    ptq = quantize(small_cnn, image_batches, bits=8)
    qat = prepare_qat(small_cnn, from_ptq=ptq, freeze_scales=True)
    scales = {n: q.scale.clone() for n, q in quantizers(qat).items()}
    ref = {n: q.scale.clone() for n, q in quantizers(ptq).items()}
    assert all(torch.equal(scales[n], ref[n]) for n in ref)
    _sgd_steps(qat, image_batches, steps=3)
    assert all(torch.equal(q.scale, scales[n]) for n, q in quantizers(qat).items())
    lsq = prepare_qat(small_cnn, from_ptq=ptq, method="lsq")
    assert all(isinstance(q, LSQFakeQuantize) for q in quantizers(lsq).values())
    assert all(torch.allclose(q.scale.detach(), ref[n]) for n, q in quantizers(lsq).items())


def test_qat_with_fit_when_available(small_cnn, image_batches):
    training = pytest.importorskip("netcompress.training")
    fit = getattr(training, "fit", None)
    if fit is None:
        pytest.skip("netcompress.training.fit not written yet")
    qat = prepare_qat(small_cnn, bits=4, act_bits=8, method="lsq", calib_loader=image_batches)
    history = fit(qat, image_batches, config=training.TrainConfig(epochs=1, lr=0.01, progress=False))
    assert len(history.rows) == 1 and history.rows[0]["train_loss"] > 0
