"""Learned rounding of weights (AdaRound: Nagel et al., "Up or Down? Adaptive Rounding for
Post-Training Quantization", 2020), layer by layer on calibration data.

Rounding every weight to the nearest grid point minimises each weight's own error, not the layer's
output error. AdaRound keeps each layer's scale and zero point and learns, per weight, whether to
round down or up: ``W~ = s * (clamp(floor(W / s) + h(V) + z, qmin, qmax) - z)`` with the rectified
sigmoid ``h(V) = clamp(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)``. ``V`` starts where ``W~ = W``
and minimises, on three quarters of the calibration samples,

    ||layer(x~; W~) - layer_float(x)||^2 / E_nearest  +  lam * mean(1 - |2 h(V) - 1|^beta)

(``E_nearest``: the error of round-to-nearest, so the reconstruction term starts at 1 whatever the
layer's scale and ``lam`` means the same on every layer) where ``x~`` is the layer's input in the quantized model (everything upstream already quantized,
with its learned rounding: the paper's asymmetric reconstruction) and ``x`` the float model's. The
regulariser's ``beta`` anneals from 20 to 2 after a warm-up so every ``h`` ends at 0 or 1; the
weight is then set to ``s * (floor(W / s) + [V >= 0] + z - z)``, exactly on the layer's grid,
and the frozen weight quantizer leaves it unchanged. Where that rounding does not also lower the
error on the held-out quarter, the layer keeps round-to-nearest (``kept`` counts the others).

Example:
    >>> qmodel = quantize(model, loader, bits=4, act_bits=8, rounding="adaround")
    >>> adaround_(qmodel, loader, iterations=300)["layers"]   # or in place on a calibrated model
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from netcompress.core.errors import ConfigError
from netcompress.quantization.affine import _shape_for
from netcompress.quantization.kernel_calls import has_own_forward, kernel_weight
from netcompress.quantization.layer_capture import calibration_inputs, capture, float_mode, forward_order
from netcompress.quantization.modules import QuantLayer

ROUNDINGS = ("nearest", "adaround")  # PTQStaticConfig.rounding
ZETA, GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch: h reaches exactly 0 and 1


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    """``h(V)``: a sigmoid stretched to (-0.1, 1.1) and clipped to [0, 1]."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def _init_v(rest: torch.Tensor) -> torch.Tensor:
    """``V`` with ``h(V) = rest`` (the fractional part), so the soft weight starts at the float one."""
    p = ((rest - GAMMA) / (ZETA - GAMMA)).clamp(1e-4, 1 - 1e-4)
    return torch.log(p / (1 - p))


def beta_at(step: int, iterations: int, *, warmup: float, start: float = 20.0, end: float = 2.0) -> float:
    """The regulariser's exponent: ``start`` during the warm-up, then a cosine decay to ``end``."""
    begin = warmup * iterations
    if step < begin:
        return start
    t = (step - begin) / max(1.0, iterations - begin)
    return end + 0.5 * (start - end) * (1 + torch.cos(torch.tensor(t * torch.pi)).item())


class _Adam:
    """Adam on one tensor, in place (torch.optim's import pulls in torch._dynamo: seconds per process)."""

    def __init__(self, param: torch.Tensor, *, lr: float, betas: tuple[float, float] = (0.9, 0.999)) -> None:
        self.param, self.lr, self.betas, self.t = param, lr, betas, 0
        self.m = torch.zeros_like(param)
        self.v = torch.zeros_like(param)

    def step(self, grad: torch.Tensor) -> None:
        b1, b2 = self.betas
        self.t += 1
        self.m.mul_(b1).add_(grad, alpha=1 - b1)
        self.v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        m_hat = self.m / (1 - b1**self.t)
        v_hat = self.v / (1 - b2**self.t)
        with torch.no_grad():
            self.param.sub_(self.lr * m_hat / (v_hat.sqrt() + 1e-8))


class _Grid:
    """The layer's frozen weight grid: scale/zero point shaped like the weight, integer range."""

    def __init__(self, m: QuantLayer, weight: torch.Tensor) -> None:
        fq = m.weight_fq
        spec = fq.spec
        self.scale = _shape_for(fq.scale, weight, spec)
        self.zero = _shape_for(fq.zero_point, weight, spec).float()
        self.qmin, self.qmax = spec.quant_range

    def weight(self, codes: torch.Tensor) -> torch.Tensor:
        """Dequantized weight of (possibly fractional) codes before the zero point is added."""
        return self.scale * (torch.clamp(codes + self.zero, self.qmin, self.qmax) - self.zero)


def adaroundable(m: nn.Module) -> str | None:
    """Why learned rounding cannot be applied to ``m`` (None when it can)."""
    if not isinstance(m, QuantLayer) or m.weight_fq is None:
        return "not a quantized Conv/Linear layer"
    if m.weight_fq.dynamic or m.weight_fq.observing:
        return "its weight quantizer is not frozen"
    if has_own_forward(m.layer):
        effective = kernel_weight(m.layer)
        if effective is None or not torch.equal(effective, m.layer.weight.detach()):
            return "its own forward transforms the weight before the kernel call"
    return None


def round_layer_(
    m: QuantLayer,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    iterations: int,
    lr: float,
    reg_weight: float = 2.0,
    warmup: float = 0.2,
    batch_size: int = 32,
    seed: int = 0,
) -> dict[str, float]:
    """Learn the rounding of one layer's weight IN PLACE; returns output MSEs before and after.

    ``inputs`` are the layer's inputs in the quantized model (before its own ``input_fq``, which
    is applied here), ``targets`` the float layer's outputs on the float inputs.
    """
    w = m.layer.weight.detach()
    grid = _Grid(m, w)
    with torch.no_grad():
        x = m.input_fq(inputs) if m.input_fq is not None else inputs
    scaled = w / grid.scale
    floor = torch.floor(scaled)
    v = _init_v(scaled - floor).requires_grad_(True)
    gen = torch.Generator().manual_seed(seed)
    adam = _Adam(v, lr=lr)
    n = x.shape[0]
    # a quarter of the samples is held out: learned rounding is kept only where it also lowers the
    # error there (a Linear head with more weights than calibration outputs overfits otherwise)
    n_fit = n - n // 4 if n >= 8 else n
    fit, held = torch.arange(n_fit), torch.arange(n_fit, n) if n_fit < n else torch.arange(n)

    def output_error(weight: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        xs, ts = (x, targets) if rows is None else (x[rows], targets[rows])
        return (m._run(xs, lambda _w: weight) - ts).pow(2).mean()

    nearest = grid.weight(torch.round(scaled))
    with torch.no_grad():
        norm = max(float(output_error(nearest, fit)), 1e-20)
    for step in range(iterations):
        rows = fit[torch.randint(0, n_fit, (min(batch_size, n_fit),), generator=gen)]
        h = rectified_sigmoid(v)
        rec = output_error(grid.weight(floor + h), rows) / norm
        beta = beta_at(step, iterations, warmup=warmup)
        reg = (1 - (2 * h - 1).abs().pow(beta)).mean() if step >= warmup * iterations else 0.0
        loss = rec + reg_weight * reg
        (grad,) = torch.autograd.grad(loss, v)
        adam.step(grad)
    with torch.no_grad():
        hard = grid.weight(floor + (v >= 0).float())
        kept = bool(output_error(hard, held) < output_error(nearest, held))
        m.layer.weight.copy_(hard if kept else nearest)
        nearest_mse, final_mse = float(output_error(nearest)), float(output_error(m.layer.weight.detach()))
    return {"nearest_mse": nearest_mse, "adaround_mse": final_mse, "kept": kept}


@contextlib.contextmanager
def _float_weights(rounded: dict[QuantLayer, torch.Tensor]) -> Iterator[None]:
    """The float weights back in the layers already rounded: targets come from the float model.

    (Rounded weights are written into ``layer.weight``, so switching quantizers off alone would
    give later layers targets that carry the upstream rounding error.)
    """
    on_grid = {m: m.layer.weight.detach().clone() for m in rounded}
    try:
        with torch.no_grad():
            for m, w in rounded.items():
                m.layer.weight.copy_(w)
        yield
    finally:
        with torch.no_grad():
            for m, w in on_grid.items():
                m.layer.weight.copy_(w)


def adaround_(
    model: nn.Module,
    loader: Iterable,
    *,
    iterations: int = 300,
    lr: float = 0.03,
    num_batches: int = 8,
    max_samples: int = 256,
    reg_weight: float = 2.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Learned rounding of every quantized layer of a calibrated ``model``, IN PLACE, in forward order.

    Each layer's input is taken from the quantized model with the layers before it already
    rounded; its target from the same model with every quantizer off (float). Layers that cannot
    be handled are left at nearest rounding and listed with the reason under ``skipped``.

    Example:
        >>> qmodel = quantize(model, loader, bits=4)          # nearest rounding, calibrated
        >>> adaround_(qmodel, loader, iterations=200)["output_mse_ratio"]
        0.41
    """
    if iterations < 1 or lr <= 0:
        raise ConfigError(f"adaround: iterations={iterations} >= 1 and lr={lr} > 0 required")
    batches = calibration_inputs(loader, num_batches=num_batches, max_samples=max_samples)
    if not batches:
        raise ConfigError("adaround: the calibration loader yielded no batches")
    model.eval()
    quant_layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantLayer)}
    order = [(n, quant_layers[n]) for n in forward_order(model, batches[0], quant_layers)]
    layers: dict[str, dict[str, float]] = {}
    skipped: dict[str, str] = {}
    rounded: dict[QuantLayer, torch.Tensor] = {}  # layers already rounded -> their float weights
    for index, (name, m) in enumerate(order):
        reason = adaroundable(m)
        if reason is not None:
            skipped[name] = reason
            continue
        with float_mode(model), _float_weights(rounded):
            targets = capture(model, batches, [m], want=("output",))[0]["output"]
        inputs = capture(model, batches, [m], want=("input",))[0]["input"]
        rounded[m] = m.layer.weight.detach().clone()  # the float weight, before this layer is rounded
        layers[name] = round_layer_(
            m, inputs, targets, iterations=iterations, lr=lr, reg_weight=reg_weight, seed=seed + index
        )
    before = sum(v["nearest_mse"] for v in layers.values())
    kept = sum(v["kept"] for v in layers.values())
    after = sum(v["adaround_mse"] for v in layers.values())
    return {
        "layers": len(layers),
        "kept": kept,  # layers whose learned rounding beat nearest on held-out calibration samples
        "skipped": skipped,
        "iterations": iterations,
        "output_mse_ratio": after / before if before > 0 else 1.0,
        "per_layer": layers,
    }
