"""SincNet: the sinc filters are band-pass where their cutoffs say, learnable, prunable and exportable."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from netcompress import models
from netcompress.models import SincConv1d

NFFT = 8192


def _response(kernel: np.ndarray, sample_rate: float) -> tuple[np.ndarray, np.ndarray]:
    return np.fft.rfftfreq(NFFT, 1 / sample_rate), np.abs(np.fft.rfft(kernel, NFFT, axis=-1))


def test_every_filter_peaks_inside_its_band() -> None:
    sinc = SincConv1d(80, kernel_size=101, sample_rate=8000)
    low, high = (t.detach().numpy()[:, 0] for t in sinc.cutoffs_hz())
    freqs, gain = _response(sinc.filters().detach().numpy()[:, 0, :], 8000)
    peaks = freqs[gain.argmax(axis=1)]
    assert np.all((peaks >= low) & (peaks <= high))
    # mel-spaced start: the first band is at the bottom, the last ends at fs/2
    assert abs(low[0] - 80.0) < 1e-3 and high[-1] == np.float32(4000.0)
    assert np.all(np.diff(low) > 0)


def test_wide_band_filter_has_unit_passband_and_deep_stopband() -> None:
    sinc = SincConv1d(4, kernel_size=101, sample_rate=8000)
    with torch.no_grad():
        sinc.low_hz_[0] = 950.0  # f1 = 50 + 950 = 1000 Hz
        sinc.band_hz_[0] = 950.0  # f2 = 1000 + 50 + 950 = 2000 Hz
    freqs, gain = _response(sinc.filters().detach().numpy()[0, 0], 8000)
    passband = gain[(freqs >= 1300) & (freqs <= 1700)]
    stopband = gain[(freqs <= 600) | (freqs >= 2400)]
    assert np.abs(passband - 1).max() < 0.005
    assert stopband.max() < 0.003  # Hamming window side lobes, about -53 dB


def test_forward_is_conv1d_with_filters_and_cutoffs_learn() -> None:
    sinc = SincConv1d(8, kernel_size=51, sample_rate=8000)
    x = torch.randn(2, 1, 400)
    out = sinc(x)
    assert out.shape == (2, 8, 400)
    assert torch.equal(out, F.conv1d(x, sinc.filters(), padding=25))
    out.pow(2).mean().backward()
    for param in (sinc.low_hz_, sinc.band_hz_):
        assert torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0
    assert {n for n, _ in sinc.named_parameters()} == {"low_hz_", "band_hz_"}


def test_prune_out_channels_keeps_chosen_filters() -> None:
    model = models.create("sincnet", num_filters=16, channels=(32, 32), kernel_sizes=(25, 9)).eval()
    sinc = model.frontend.sinc
    before = sinc.filters().detach()
    sinc.prune_out_channels([0, 5, 9])
    assert sinc.out_channels == 3
    assert torch.equal(sinc.filters().detach(), before[[0, 5, 9]])


def test_sincnet_layout_and_onnx_export(tmp_path) -> None:
    import onnxruntime as ort

    model = models.create("sincnet").eval()
    assert [b.depthwise.kernel_size[0] for b in model.blocks] == [25, 9, 9, 9, 9]
    assert all(b.depthwise.groups == b.depthwise.in_channels for b in model.blocks)
    x = torch.randn(1, 1, 1024)
    path = tmp_path / "sincnet.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.abs(session.run(None, {"x": x.numpy()})[0] - expected).max() < 1e-4
