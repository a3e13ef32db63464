"""Activation range search: each activation quantizer's clipping range chosen by the error it
causes in the quantized layer(s) that consume it, on calibration data.

An observer judges a range by the activation's own quantization error; what matters is the error
of what the next layer computes from it. For every static activation quantizer, in forward order
(upstream ones already searched), candidates are the current (observer's) range, the min/max,
percentile and MSE observers' ranges (:data:`~netcompress.quantization.observers.OBSERVERS`) on
the activation as the quantized model produces it, and the calibrated range scaled by a grid of
clipping ratios. Each candidate is scored by the output error it causes in the consuming quantized layers,
``sum_layers ||y(Q(a)) - y(a)||^2 / ||y(a)||^2`` with everything else quantized as it is (weight
rounding error, which no activation range can remove, is left out of the score); the best is kept.
The current range is a candidate, so the search never raises that error on the search data.

Cost: per quantizer, one forward over the search batches, stopped as soon as the inputs of the
region between the quantizer and its consumers exist; each candidate then replays only that region
(:class:`~netcompress.quantization.subgraph.LocalReplay`), not the model.

Example:
    >>> qmodel = quantize(model, loader, act_range="search")
    >>> search_activation_ranges_(qmodel, loader)["changed"]     # or in place on a calibrated model
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import fx, nn

from netcompress.core.errors import ConfigError
from netcompress.quantization.affine import compute_qparams
from netcompress.quantization.calibration import activation_quantizers
from netcompress.quantization.fake_quant import FakeQuantize
from netcompress.quantization.layer_capture import calibration_inputs, forward_order
from netcompress.quantization.modules import QuantLayer
from netcompress.quantization.observers import OBSERVERS
from netcompress.quantization.subgraph import LocalReplay
from netcompress.quantization.tracing import module_of

ACT_RANGES = ("observer", "search")  # PTQStaticConfig.act_range
# candidate ranges besides the current one: observers (name, kwargs), then min/max clipping ratios
OBSERVER_CANDIDATES = (
    ("minmax", {}),
    ("percentile", {"pct": 99.9}),
    ("percentile", {"pct": 99.99}),
    ("mse", {}),
)
CLIP_RATIOS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def consumers(model: nn.Module, name: str, q: FakeQuantize) -> list[nn.Module]:
    """The quantized layers whose output ``q``'s range affects first (``[q]`` when none).

    In a traced model: the QuantLayers reached from ``q``'s node through other ops (pooling,
    reshapes, adds, other quantizers). In an eager model ``q`` is a layer's ``input_fq``.
    """
    if isinstance(model, fx.GraphModule):
        found: list[nn.Module] = []
        start = next((n for n in model.graph.nodes if n.op == "call_module" and n.target == name), None)
        stack, seen = ([start] if start is not None else []), set()
        while stack:
            node = stack.pop()
            for user in node.users:
                if user in seen:
                    continue
                seen.add(user)
                module = module_of(model, user)
                if isinstance(module, QuantLayer):
                    found.append(module)
                elif user.op != "output":
                    stack.append(user)
        return found or [q]
    parent = name.rpartition(".")[0]
    owner = model.get_submodule(parent) if parent else None
    return [owner] if isinstance(owner, QuantLayer) and owner.input_fq is q else [q]


def candidate_ranges(q: FakeQuantize, x: torch.Tensor) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """``(label, scale, zero_point)`` candidates for quantizer ``q`` on its raw input ``x``."""
    out = [("current", q.scale.clone(), q.zero_point.clone())]
    for obs_name, kwargs in OBSERVER_CANDIDATES:
        obs = OBSERVERS.get(obs_name)(q.spec, **kwargs)
        obs.observe(x)
        label = obs_name + "".join(f"_{v}" for v in kwargs.values())
        out.append((label, *compute_qparams(*obs.range(), q.spec)))
    qmin, qmax = q.spec.quant_range
    lo = (qmin - q.zero_point.float()) * q.scale  # the calibrated range: ratios clip within it
    hi = (qmax - q.zero_point.float()) * q.scale
    for r in CLIP_RATIOS:
        out.append((f"clip_{r}", *compute_qparams(lo * r, hi * r, q.spec)))
    return out


def _error(outputs: list[torch.Tensor], targets: list[torch.Tensor]) -> float:
    total = 0.0
    for out, ref in zip(outputs, targets):
        total += float((out - ref).pow(2).mean() / ref.pow(2).mean().clamp(min=1e-20))
    return total


def search_activation_ranges_(
    model: nn.Module, loader: Iterable, *, num_batches: int = 32, max_samples: int = 1024
) -> dict[str, Any]:
    """Choose every static activation quantizer's range by its consumers' output error, IN PLACE.

    ``model`` must be calibrated (every quantizer frozen); search on the calibration batches
    (``num_batches``, at most ``max_samples`` samples). Returns per quantizer the chosen
    candidate and the error before/after, and ``changed``: how many quantizers moved.

    Example:
        >>> info = search_activation_ranges_(qmodel, calib_loader)
        >>> info["error_before"] >= info["error_after"]
        True
    """
    batches = calibration_inputs(loader, num_batches=num_batches, max_samples=max_samples)
    if not batches:
        raise ConfigError("activation range search: the calibration loader yielded no batches")
    model.eval()
    acts = {n: q for n, q in activation_quantizers(model).items() if q.quantizing and not q.observing}
    order = forward_order(model, batches[0], acts)
    chosen: dict[str, dict[str, Any]] = {}
    for name in order:
        q = acts[name]
        # one forward (stopped early) caches the region's inputs; candidates replay only the region
        replay = LocalReplay(model, name, consumers(model, name, q), batches)
        q.quantizing = False  # the target: this activation in float, everything else as quantized
        try:
            targets = replay.outputs()
        finally:
            q.quantizing = True
        x = torch.cat(replay.inputs, dim=0)
        best: tuple[float, str, torch.Tensor, torch.Tensor] | None = None
        first_error = None
        for label, scale, zp in candidate_ranges(q, x):
            q.set_qparams(scale, zp)
            err = _error(replay.outputs(), targets)
            first_error = err if first_error is None else first_error
            if best is None or err < best[0]:
                best = (err, label, scale, zp)
        q.set_qparams(best[2], best[3])
        chosen[name] = {"range": best[1], "error_before": first_error, "error_after": best[0]}
    return {
        "quantizers": len(chosen),
        "changed": sum(c["range"] != "current" for c in chosen.values()),
        "error_before": sum(c["error_before"] for c in chosen.values()),
        "error_after": sum(c["error_after"] for c in chosen.values()),
        "per_quantizer": chosen,
    }
