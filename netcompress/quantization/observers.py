"""Observers: watch tensors during calibration and propose the range ``(lo, hi)`` to quantize.

Each observer is registered by name in :data:`OBSERVERS` and built from a
:class:`~netcompress.quantization.qparams.QuantSpec` plus its own keyword arguments
(``spec.observer_args``). ``observe(x)`` may be called many times (one per calibration batch);
``range()`` returns per-tensor ``(1,)`` or per-channel ``(C,)`` tensors. Observers are plain
picklable objects so quantized models survive ``torch.save`` and ``copy.deepcopy``.

Example:
    >>> obs = OBSERVERS.get("percentile")(QuantSpec(bits=8), pct=99.9)
    >>> obs.observe(torch.randn(1000)); lo, hi = obs.range()
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from netcompress.core.errors import ConfigError
from netcompress.core.registry import Registry
from netcompress.quantization.affine import compute_qparams, fake_quantize

if TYPE_CHECKING:
    from netcompress.quantization.qparams import QuantSpec

OBSERVERS: Registry[type[Observer]] = Registry("observer")

# cap on the values a sampling observer keeps per batch: calibration stays cheap on 2 cores
_MAX_SAMPLES_PER_BATCH = 1 << 16


def channel_rows(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """``x`` as a 2-D ``(channels, values)`` view: one row per channel, or one row in all."""
    x = x.detach().float()
    if spec.granularity == "per_tensor" or x.dim() == 0:
        return x.reshape(1, -1)
    axis = spec.axis if spec.axis >= 0 else x.dim() + spec.axis
    return x.movedim(axis, 0).reshape(x.shape[axis], -1)


class Observer:
    """Base: running min/max that subclasses refine. Not a module: no parameters, no state dict."""

    def __init__(self, spec: QuantSpec) -> None:
        self.spec = spec
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None
        self.num_batches = 0

    @property
    def has_data(self) -> bool:
        return self.lo is not None

    def reset(self) -> None:
        """Forget everything seen so far."""
        self.lo = self.hi = None
        self.num_batches = 0
        if hasattr(self, "samples"):
            self.samples = []

    def observe(self, x: torch.Tensor) -> None:
        rows = channel_rows(x, self.spec)
        lo, hi = self._batch_range(rows)
        self._accumulate(lo, hi)
        self.num_batches += 1

    def _batch_range(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return rows.amin(dim=1), rows.amax(dim=1)

    def _accumulate(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        if self.lo is None or self.lo.shape != lo.shape:
            self.lo, self.hi = lo, hi
        else:
            self.lo, self.hi = torch.minimum(self.lo, lo), torch.maximum(self.hi, hi)

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.lo is None or self.hi is None:
            raise ConfigError(f"{type(self).__name__} has seen no data: run calibration batches first")
        return self.lo, self.hi


@OBSERVERS.register("minmax")
class MinMaxObserver(Observer):
    """Smallest and largest value ever seen: no clipping, so no outlier is ever saturated."""


class _MeanOfBatches(Observer):
    """Averages per-batch ranges: used by observers whose per-batch estimate is already robust."""

    def _accumulate(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        if self.lo is None or self.lo.shape != lo.shape:
            self.lo, self.hi = lo, hi
            return
        n = self.num_batches
        self.lo = (self.lo * n + lo) / (n + 1)
        self.hi = (self.hi * n + hi) / (n + 1)


@OBSERVERS.register("moving_average")
class MovingAverageObserver(Observer):
    """Exponential moving average of per-batch min/max (the usual QAT activation observer)."""

    def __init__(self, spec: QuantSpec, *, momentum: float = 0.1) -> None:
        super().__init__(spec)
        if not 0.0 < momentum <= 1.0:
            raise ConfigError(f"moving_average momentum={momentum!r} must be within (0, 1]")
        self.momentum = float(momentum)

    def _accumulate(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        if self.lo is None or self.lo.shape != lo.shape:
            self.lo, self.hi = lo, hi
            return
        m = self.momentum
        self.lo = (1 - m) * self.lo + m * lo
        self.hi = (1 - m) * self.hi + m * hi


def _subsample(rows: torch.Tensor) -> torch.Tensor:
    """A fixed pseudo-random subset of each row's values (about 64k in all) so quantiles stay cheap.

    Not a strided slice: on a flattened NCHW activation a stride that is a multiple of the image
    width keeps a single pixel column (often the zero-padded border), and the percentile of that
    column is not the tensor's (it made W8A8 PTQ of a depthwise CNN lose 1.5 points of top-1
    agreement). The indices depend only on the row length, so calibration stays deterministic.
    """
    keep = max(1, math.ceil(_MAX_SAMPLES_PER_BATCH / rows.shape[0]))
    if rows.shape[1] <= keep:
        return rows
    gen = torch.Generator().manual_seed(rows.shape[1])
    return rows[:, torch.randint(0, rows.shape[1], (keep,), generator=gen)]


@OBSERVERS.register("percentile")
class PercentileObserver(_MeanOfBatches):
    """``pct``-th and ``(100 - pct)``-th percentiles per batch, averaged: clips rare outliers."""

    def __init__(self, spec: QuantSpec, *, pct: float = 99.99) -> None:
        super().__init__(spec)
        if not 50.0 < pct <= 100.0:
            raise ConfigError(f"percentile pct={pct!r} must be within (50, 100]")
        self.pct = float(pct)

    def _batch_range(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = _subsample(rows)
        q = torch.tensor([1.0 - self.pct / 100.0, self.pct / 100.0])
        lo_hi = torch.quantile(rows, q, dim=1)
        return lo_hi[0], lo_hi[1]


@OBSERVERS.register("mse")
class MSEObserver(_MeanOfBatches):
    """Searches a clipping ratio of the min/max range that minimises quantization MSE.

    ``num_ratios`` candidates between ``min_ratio`` and 1 are tried per channel; the best one
    trades rounding error (large range) against clipping error (small range).
    """

    def __init__(self, spec: QuantSpec, *, num_ratios: int = 40, min_ratio: float = 0.2) -> None:
        super().__init__(spec)
        if num_ratios < 1 or not 0.0 < min_ratio <= 1.0:
            raise ConfigError(f"mse observer: num_ratios={num_ratios} >= 1 and min_ratio in (0, 1] required")
        self.ratios = torch.linspace(min_ratio, 1.0, num_ratios)

    def _batch_range(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = _subsample(rows)
        lo, hi = rows.amin(dim=1), rows.amax(dim=1)
        row_spec = self.spec.replace(granularity="per_channel", axis=0)
        best_err = torch.full_like(lo, float("inf"))
        best_lo, best_hi = lo.clone(), hi.clone()
        for r in self.ratios:
            scale, zp = compute_qparams(lo * r, hi * r, row_spec)
            err = (fake_quantize(rows, scale, zp, row_spec) - rows).pow(2).mean(dim=1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_lo = torch.where(better, lo * r, best_lo)
            best_hi = torch.where(better, hi * r, best_hi)
        return best_lo, best_hi


@OBSERVERS.register("entropy")
class EntropyObserver(Observer):
    """KL-divergence calibration (TensorRT style), per tensor: picks the |x| threshold whose
    quantized histogram stays closest to the observed one. Keeps a bounded sample of values."""

    def __init__(self, spec: QuantSpec, *, num_bins: int = 2048) -> None:
        super().__init__(spec)
        if spec.granularity != "per_tensor":
            raise ConfigError("entropy observer supports granularity='per_tensor' only")
        self.num_bins = int(num_bins)
        self.samples: list[torch.Tensor] = []

    def observe(self, x: torch.Tensor) -> None:
        rows = _subsample(channel_rows(x, self.spec))
        self.samples.append(rows.reshape(-1).clone())
        super().observe(x)

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = super().range()
        values = torch.cat(self.samples).abs()
        amax = float(values.max())
        if amax == 0.0:
            return lo, hi
        # exact zeros (ReLU outputs, padding) quantize exactly at any threshold; left in, their spike
        # in the first bin makes wide thresholds look costly and the KL search clips at ~amax / 8
        values = values[values > 0]
        hist = torch.histc(values, bins=self.num_bins, min=0.0, max=amax)
        levels = 2 ** (self.spec.bits - 1) if self.spec.signed else 2**self.spec.bits
        threshold = amax * _kl_best_bin(hist, levels) / self.num_bins
        return torch.clamp(lo, min=-threshold), torch.clamp(hi, max=threshold)


def _kl_best_bin(hist: torch.Tensor, levels: int) -> int:
    """Number of histogram bins to keep so that KL(reference || quantized) is smallest."""
    hist = hist.double()
    n = hist.numel()
    best_kl, best_i = float("inf"), n
    for i in range(max(levels, 2), n + 1, max(1, (n - levels) // 128)):
        ref = hist[:i].clone()
        ref[-1] += hist[i:].sum()  # clipped outliers pile into the last kept bin
        # merge the i bins into `levels` groups, spread each group's mass over its non-empty bins
        groups = torch.div(torch.arange(i) * levels, i, rounding_mode="floor")
        nonzero = (hist[:i] > 0).double()
        mass = torch.zeros(levels, dtype=torch.float64).index_add_(0, groups, hist[:i])
        count = torch.zeros(levels, dtype=torch.float64).index_add_(0, groups, nonzero)
        q = torch.where(nonzero > 0, mass[groups] / count[groups].clamp(min=1), torch.zeros_like(ref))
        p, q = ref / ref.sum(), q / q.sum().clamp(min=1e-12)
        mask = p > 0
        kl = float((p[mask] * torch.log(p[mask] / q[mask].clamp(min=1e-12))).sum())
        if kl < best_kl:
            best_kl, best_i = kl, i
    return best_i


def build_observer(spec: QuantSpec) -> Observer:
    """Instantiate ``spec.observer`` with ``spec.observer_args``; bad arguments name the observer.

    Example:
        >>> build_observer(QuantSpec(observer="moving_average", observer_args={"momentum": 0.05}))
    """
    cls = OBSERVERS.get(spec.observer)
    try:
        return cls(spec, **spec.observer_args)
    except TypeError as exc:
        raise ConfigError(
            f"observer {spec.observer!r}: bad observer_args {spec.observer_args}: {exc}"
        ) from None
