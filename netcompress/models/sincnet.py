"""SincNet-style 1-D CNN on raw audio (E4): a learned sinc band-pass filter bank, then depthwise-separable convs.

The filter bank learns only two numbers per filter, its low cutoff and its band width (Ravanelli &
Bengio 2018), so the front end has 2 parameters per filter instead of ``kernel_size``. The kernel is
built in :meth:`SincConv1d.filters` from those ordinary ``nn.Parameter`` s (pruning and
quantization see them; a quantizer can wrap ``filters()``), and ``forward`` calls
``F.conv1d(x, self.filters(), ...)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from netcompress.core.errors import ConfigError
from netcompress.models.catalog import check_int, check_width, register_model, scaled


def _hz_to_mel(hz: float | torch.Tensor):
    return 2595.0 * (torch.log10(1.0 + torch.as_tensor(hz, dtype=torch.float64) / 700.0))


def _mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


class SincConv1d(nn.Module):
    """Band-pass filter bank ``h_i[n] = (sin(2 pi f2_i n / fs) - sin(2 pi f1_i n / fs)) / (pi n)``, Hamming-windowed.

    ``f1 = min_low_hz + |low_hz_|`` and ``f2 = clamp(f1 + min_band_hz + |band_hz_|, min_low_hz, fs/2)``;
    the ideal band-pass has unit gain in ``[f1, f2]``. Cutoffs start mel-spaced over ``[30, fs/2)``.
    Input ``(N, 1, L)``, output ``(N, out_channels, L')`` with "same" padding by default.

    Pruning protocol: ``out_channels`` and :meth:`prune_out_channels` (keeps the given filters, in place).

    Example:
        >>> sinc = SincConv1d(40, kernel_size=101, sample_rate=8000)
        >>> sinc(torch.randn(2, 1, 800)).shape
        torch.Size([2, 40, 800])
    """

    in_channels = 1

    def __init__(
        self,
        out_channels: int,
        *,
        kernel_size: int = 101,
        sample_rate: int = 8000,
        stride: int = 1,
        padding: int | None = None,
        min_low_hz: float = 50.0,
        min_band_hz: float = 50.0,
    ) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ConfigError(f"sinc kernel_size={kernel_size} must be odd (the filters are symmetric)")
        self.kernel_size = kernel_size
        self.sample_rate = float(sample_rate)
        self.stride = stride
        self.padding = kernel_size // 2 if padding is None else padding
        self.min_low_hz = float(min_low_hz)
        self.min_band_hz = float(min_band_hz)

        top_hz = self.sample_rate / 2 - (self.min_low_hz + self.min_band_hz)
        edges = _mel_to_hz(
            torch.linspace(float(_hz_to_mel(30.0)), float(_hz_to_mel(top_hz)), out_channels + 1)
        )
        self.low_hz_ = nn.Parameter(edges[:-1].float().unsqueeze(1))
        self.band_hz_ = nn.Parameter(torch.diff(edges).float().unsqueeze(1))

        offsets = torch.arange(kernel_size, dtype=torch.float32) - kernel_size // 2
        centre = (offsets == 0).float()
        # the centre tap is 0/0 in the formula; replace its divisor by 1 and its value by the limit
        self.register_buffer("n_", (offsets + centre).unsqueeze(0), persistent=False)
        self.register_buffer("centre_", centre.unsqueeze(0), persistent=False)
        self.register_buffer(
            "window_", torch.hamming_window(kernel_size, periodic=False).unsqueeze(0), persistent=False
        )

    @property
    def out_channels(self) -> int:
        return self.low_hz_.shape[0]

    def cutoffs_hz(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Low and high cutoff (Hz) of every filter, each shaped ``(out_channels, 1)``."""
        low = self.min_low_hz + torch.abs(self.low_hz_)
        high = torch.clamp(
            low + self.min_band_hz + torch.abs(self.band_hz_), self.min_low_hz, self.sample_rate / 2
        )
        return low, high

    def filters(self) -> torch.Tensor:
        """The conv kernel ``(out_channels, 1, kernel_size)`` built from the learned cutoffs.

        Uses only sin/mul/div/add, so it exports to ONNX and differentiates everywhere.
        """
        low, high = self.cutoffs_hz()
        to_phase = 2 * math.pi / self.sample_rate
        side = (torch.sin(high * to_phase * self.n_) - torch.sin(low * to_phase * self.n_)) / (
            math.pi * self.n_
        )
        centre = 2 * (high - low) / self.sample_rate
        kernel = (side * (1 - self.centre_) + centre * self.centre_) * self.window_
        return kernel.unsqueeze(1)

    def forward(self, x):
        return F.conv1d(x, self.filters(), stride=self.stride, padding=self.padding)

    def prune_out_channels(self, keep_idx: Sequence[int] | torch.Tensor) -> None:
        """Keep only the filters ``keep_idx`` (in that order); modifies this module in place."""
        keep = torch.as_tensor(keep_idx, dtype=torch.long, device=self.low_hz_.device)
        self.low_hz_ = nn.Parameter(self.low_hz_.detach()[keep].clone())
        self.band_hz_ = nn.Parameter(self.band_hz_.detach()[keep].clone())

    def extra_repr(self) -> str:
        return (
            f"1, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, sample_rate={int(self.sample_rate)}"
        )


class LogAbs(nn.Module):
    """``log(|x| + eps)``: compresses the filter-bank output's dynamic range (a module, so quantizers see it)."""

    def __init__(self, eps: float = 1e-3) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x):
        return torch.log(torch.abs(x) + self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


class DSConv1dBlock(nn.Module):
    """Depthwise Conv1d (k, "same") -> pointwise Conv1d -> BN -> ReLU -> AvgPool1d(2)."""

    def __init__(self, in_channels: int, out_channels: int, *, kernel_size: int, stride: int = 1) -> None:
        super().__init__()
        self.depthwise = nn.Conv1d(
            in_channels,
            in_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=in_channels,
            bias=False,
        )
        self.pointwise = nn.Conv1d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm1d(out_channels)
        self.relu = nn.ReLU()
        self.pool = nn.AvgPool1d(2)

    def forward(self, x):
        return self.pool(self.relu(self.bn(self.pointwise(self.depthwise(x)))))


class SincNet(nn.Module):
    """``frontend`` (sinc, log_abs, bn, pool), ``blocks`` (DSConv1dBlock...), global average pool, ``fc``."""

    def __init__(
        self,
        *,
        num_classes: int,
        sample_rate: int,
        num_filters: int,
        sinc_kernel_size: int,
        frontend_pool: int,
        channels: Sequence[int],
        kernel_sizes: Sequence[int],
        log_eps: float,
        min_low_hz: float,
        min_band_hz: float,
    ) -> None:
        super().__init__()
        self.frontend = nn.Sequential()
        self.frontend.add_module(
            "sinc",
            SincConv1d(
                num_filters,
                kernel_size=sinc_kernel_size,
                sample_rate=sample_rate,
                min_low_hz=min_low_hz,
                min_band_hz=min_band_hz,
            ),
        )
        self.frontend.add_module("log_abs", LogAbs(log_eps))
        self.frontend.add_module("bn", nn.BatchNorm1d(num_filters))
        self.frontend.add_module("pool", nn.AvgPool1d(frontend_pool))
        blocks = []
        previous = num_filters
        for index, (out, kernel) in enumerate(zip(channels, kernel_sizes)):
            # the first block halves the time axis once more: long raw-audio sequences are cheap to shorten early
            blocks.append(DSConv1dBlock(previous, out, kernel_size=kernel, stride=2 if index == 0 else 1))
            previous = out
        self.blocks = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool1d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(previous, num_classes)

    def forward(self, x):
        return self.fc(self.flatten(self.avgpool(self.blocks(self.frontend(x)))))


def _shape(kw: dict) -> tuple[int, ...]:
    return (1, kw["input_length"])


@register_model("sincnet", input_shape=_shape)
def sincnet(
    *,
    num_classes: int = 10,
    sample_rate: int = 8000,
    input_length: int = 8000,
    num_filters: int = 80,
    sinc_kernel_size: int = 101,
    frontend_pool: int = 4,
    channels: Sequence[int] = (240, 240, 240, 240, 240),
    kernel_sizes: Sequence[int] = (25, 9, 9, 9, 9),
    width: float = 1.0,
    log_eps: float = 1e-3,
    min_low_hz: float = 50.0,
    min_band_hz: float = 50.0,
) -> SincNet:
    """SincNet-style raw-audio classifier, input (N, 1, L): 265,370 params at the defaults (10 classes).

    Sinc filter bank (80 filters, 101 taps) -> log|x| -> BN -> AvgPool(4) -> five depthwise-separable
    blocks (kernels 25, 9, 9, 9, 9; 240 channels; each halves the time axis) -> global average pool ->
    Linear. ``input_length`` only sets the nominal input shape; any length of at least
    ``frontend_pool * 2 ** (len(channels) + 1)`` samples works (256 at the defaults).

    Example:
        >>> sincnet(num_classes=10)(torch.randn(2, 1, 8000)).shape
        torch.Size([2, 10])
    """
    check_int("num_classes", num_classes)
    check_int("sample_rate", sample_rate, lo=100)
    check_int("input_length", input_length)
    check_int("num_filters", num_filters)
    check_int("sinc_kernel_size", sinc_kernel_size, lo=3)
    check_int("frontend_pool", frontend_pool)
    if len(channels) != len(kernel_sizes) or not channels:
        raise ConfigError(
            f"channels ({len(channels)} entries) and kernel_sizes ({len(kernel_sizes)} entries) "
            "must be non-empty and of equal length"
        )
    for i, (c, k) in enumerate(zip(channels, kernel_sizes)):
        check_int(f"channels[{i}]", c)
        check_int(f"kernel_sizes[{i}]", k)
    if not (min_low_hz > 0 and min_band_hz > 0 and min_low_hz + min_band_hz < sample_rate / 2):
        raise ConfigError(
            f"min_low_hz={min_low_hz}, min_band_hz={min_band_hz} must be positive and below fs/2"
        )
    width = check_width(width)
    return SincNet(
        num_classes=num_classes,
        sample_rate=sample_rate,
        num_filters=num_filters,
        sinc_kernel_size=sinc_kernel_size,
        frontend_pool=frontend_pool,
        channels=[scaled(c, width) for c in channels],
        kernel_sizes=list(kernel_sizes),
        log_eps=float(log_eps),
        min_low_hz=float(min_low_hz),
        min_band_hz=float(min_band_hz),
    )
