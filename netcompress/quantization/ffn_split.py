"""Outlier split of an FFN's down-projection without touching its wide activation.

An FFN ``y = W2 act(W1 x + b1) + b2`` (``act`` GELU / ReLU / SiLU: ``act(0) == 0``) reads a few
outlier channels of ``act(...)`` into ``W2`` (on all-MiniLM-L6-v2 they set ``W2``'s per-tensor dynamic
int8 range, 10-20x the median channel's). :mod:`~netcompress.quantization.outlier_split` takes them out
with a ``Mul`` by a keep mask and a ``Gather`` on the 1536-wide activation. Here they never reach it:

    int8 path:  W1's rows (and b1) of the outlier channels are zero, so act(...) is 0 there;
    float path: h = act(W1[out] x + b1[out])    (k wide, from the FFN input x)
    y = W2_rest act(W1_rest x + b1_rest) + W2[:, out] h + b2

which equals the FFN exactly in float. The int8 ``W2`` sees an activation without its outliers and
``W1``'s per-channel int8 weights lose only rows that are zero. In the exported graph the split costs a
k-wide ``MatMul`` + activation, one ``(k -> out)`` ``MatMul`` and one ``Add``: no ``Mul`` or ``Gather`` on
the wide tensor.

The two Linears run in the FFN's own modules (Hugging Face BERT calls ``W1`` in ``intermediate`` and
``W2`` in ``output``), so :class:`FFNInputSplit` hands ``h`` to :class:`FFNOutputSplit` through a shared
:class:`FFNCarry` (one per FFN; a deep copy of the model keeps the two sharing it). Pairs are found
on data: ``W2``'s input must equal ``act(W1's output)`` for one of :data:`ACTIVATIONS`.

Example:
    >>> split, info = split_ffn_outliers(bert, calib_batches, layers=[r"re:.*layer\\.\\d+\\.output\\.dense"], channels=4)
    >>> info["layers"]["encoder.layer.0.output.dense"]["input_layer"], info["max_rel_diff"] < 1e-4
    ('encoder.layer.0.intermediate.dense', True)
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from netcompress.core.errors import ConfigError, UnsupportedModelError
from netcompress.core.inputs import batch_inputs, call_model, output_tensor
from netcompress.core.selection import name_matches, set_submodule
from netcompress.quantization.input_smoothing import CHECK_TOLERANCE
from netcompress.quantization.outlier_split import _plain_linear

# elementwise activations with act(0) == 0 (so a zeroed W1 row gives a zero input to W2), by name
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


class FFNCarry:
    """Hands the float outlier activations from an FFN's first Linear to its second (one forward)."""

    def __init__(self) -> None:
        self.value: torch.Tensor | None = None


class FFNInputSplit(nn.Module):
    """``W1``: ``inner(x)`` (its outlier rows zero) and, for the down-projection, ``act(x W1[out]^T +
    b1[out])`` into ``carry``. ``inner`` is the Linear (or smoothed / split Linear) it replaces."""

    def __init__(
        self, inner: nn.Module, rows_weight: torch.Tensor, rows_bias: torch.Tensor, act: str, carry: FFNCarry
    ) -> None:
        super().__init__()
        self.inner = inner
        self.register_buffer("rows_weight", rows_weight.detach().float().clone())
        self.register_buffer("rows_bias", rows_bias.detach().float().clone())
        self.act = act
        self.carry = carry

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.carry.value = ACTIVATIONS[self.act](F.linear(x, self.rows_weight, self.rows_bias))
        return self.inner(x)

    def extra_repr(self) -> str:
        return f"outlier_rows={self.rows_weight.shape[0]}, act={self.act}"


class FFNOutputSplit(nn.Module):
    """``W2``: ``linear(h_act) + carry @ outlier_weight^T``; ``linear`` has the outlier columns zeroed
    (its input is zero there anyway) and is quantized like any other Linear."""

    def __init__(
        self, linear: nn.Linear, outliers: torch.Tensor, outlier_weight: torch.Tensor, carry: FFNCarry
    ) -> None:
        super().__init__()
        self.linear = linear
        self.register_buffer("outliers", outliers.detach().long().clone())
        self.register_buffer("outlier_weight", outlier_weight.detach().float().clone())
        self.carry = carry

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, self.carry.value = self.carry.value, None
        if h is None:
            raise UnsupportedModelError(
                "FFNOutputSplit ran before its FFN input layer (FFNInputSplit): the model does not call "
                "the FFN's two Linears in order, one after the other"
            )
        return self.linear(x) + F.linear(h, self.outlier_weight)


def _capture(model: nn.Module, batch: Any, inputs: Sequence[str], outputs: Sequence[str]) -> tuple[dict, dict]:
    """Inputs of the modules ``inputs`` and outputs of ``outputs`` on one batch (first call each)."""
    got_in: dict[str, torch.Tensor] = {}
    got_out: dict[str, torch.Tensor] = {}
    hooks = [
        model.get_submodule(n).register_forward_pre_hook(
            lambda _m, a, n=n: got_in.setdefault(n, a[0].detach())
        )
        for n in inputs
    ]
    hooks += [
        model.get_submodule(n).register_forward_hook(lambda _m, _a, o, n=n: got_out.setdefault(n, o.detach()))
        for n in outputs
    ]
    try:
        with torch.no_grad():
            call_model(model, batch_inputs(batch))
    finally:
        for h in hooks:
            h.remove()
    return got_in, got_out


def find_ffn_pairs(model: nn.Module, loader: Iterable, down: Sequence[str]) -> dict[str, tuple[str, str]]:
    """``{W2 name: (W1 name, activation)}`` for the Linears ``down``: ``W1`` is the Linear (or smoothed
    Linear) whose output, through one of :data:`ACTIVATIONS`, equals ``W2``'s input on the first batch
    of ``loader``. A ``W2`` without such a partner is an error naming it."""
    widths = {model.get_submodule(n).in_features for n in down}
    modules = dict(model.named_modules())

    def wrapped(name: str) -> bool:  # the Linear inside a smoothing wrapper: the wrapper is the candidate
        parent = modules.get(name.rsplit(".", 1)[0]) if "." in name else None
        return parent is not None and type(parent) is not nn.Linear and _plain_linear(parent) is not None

    candidates = [
        n
        for n, m in modules.items()
        if n and (found := _plain_linear(m)) is not None and found[0].out_features in widths and not wrapped(n)
    ]
    got_in, got_out = _capture(model, next(iter(loader)), down, candidates)
    pairs: dict[str, tuple[str, str]] = {}
    for name in down:
        x = got_in.get(name)
        if x is None:
            raise UnsupportedModelError(f"FFN split: {name} was not called on the first batch")
        tol = 1e-5 * float(x.abs().max().clamp_min(1e-12))
        hit = next(
            (
                (w1, act)
                for w1, act in itertools.product(candidates, ACTIVATIONS)
                if w1 != name
                and w1 in got_out
                and got_out[w1].shape == x.shape
                and float((ACTIVATIONS[act](got_out[w1]) - x).abs().max()) <= tol
            ),
            None,
        )
        if hit is None:
            raise UnsupportedModelError(
                f"FFN split: no Linear feeds {name} through an elementwise {'/'.join(ACTIVATIONS)} "
                "(its input is not act(W1 x) of any Linear of the model)"
            )
        pairs[name] = hit
    return pairs


def split_ffn_pair(
    w1_module: nn.Module, w2: nn.Linear, act: str, absmax: torch.Tensor, channels: int
) -> tuple[FFNInputSplit, FFNOutputSplit]:
    """The two halves of the split for ``W2``'s ``channels`` input channels of largest ``absmax``.
    ``w1_module`` is a Linear, a smoothed Linear or an outlier-split Linear (its ``.linear`` gets the
    zero rows); ``w2`` a plain Linear. Neither is modified."""
    if type(w2) is not nn.Linear:
        raise UnsupportedModelError(f"FFN split: the down-projection must be a plain Linear, not {type(w2).__name__}")
    width = w2.in_features
    if not 0 < channels < width:
        raise ConfigError(f"channels={channels} must be in [1, {width - 1}] for a Linear with {width} inputs")
    order = absmax.float().reshape(-1).topk(channels).indices
    inner = copy.deepcopy(w1_module)
    linear = inner if type(inner) is nn.Linear else getattr(inner, "linear", None)
    if type(linear) is not nn.Linear:
        raise UnsupportedModelError(f"FFN split: cannot find the Linear inside {type(w1_module).__name__}")
    # the float rows read the raw x: undo a smoothing scale (keep of an outlier split carries it too)
    scale = getattr(inner, "inv_scale", None)
    if scale is None and hasattr(inner, "outlier_weight"):
        raise UnsupportedModelError("FFN split: split the FFN first, then W1's own input outliers")
    rows = linear.weight.detach()[order] * (1.0 if scale is None else scale.reshape(1, -1))
    bias = linear.bias.detach()[order] if linear.bias is not None else torch.zeros(channels)
    work2 = copy.deepcopy(w2)
    with torch.no_grad():
        linear.weight[order] = 0.0
        if linear.bias is not None:
            linear.bias[order] = 0.0
        outlier_weight = work2.weight[:, order].clone()
        work2.weight[:, order] = 0.0
    carry = FFNCarry()
    return FFNInputSplit(inner, rows, bias, act, carry), FFNOutputSplit(work2, order, outlier_weight, carry)


def split_ffn_outliers(
    model: nn.Module,
    loader: Iterable,
    *,
    layers: Sequence[str],
    channels: int = 4,
    num_batches: int = 4,
) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of ``model`` whose FFN down-projections named by ``layers`` (names or ``re:`` patterns)
    take their ``channels`` largest-range input channels (max |x| over ``num_batches`` batches) from a
    float path fed by the FFN input (see the module docstring).

    Returns ``(split, info)``: ``info["layers"][W2]`` holds ``input_layer`` (W1), ``activation``,
    ``channels`` and ``range_kept`` (largest remaining max |x| over the largest); ``max_rel_diff`` the
    split model against ``model`` on the first batch (an error above 1e-3). ``model`` is not modified.
    """
    from netcompress.quantization.input_smoothing import input_absmax

    model.eval()
    names: list[str] = []
    for pattern in layers:
        hits = [n for n, m in model.named_modules() if n and type(m) is nn.Linear and name_matches(n, pattern)]
        if not hits:
            raise ConfigError(f"FFN split: no Linear matches {pattern!r}")
        names += [h for h in hits if h not in names]
    pairs = find_ffn_pairs(model, loader, names)
    stats, _ = input_absmax(model, loader, names, num_batches=num_batches)
    work = copy.deepcopy(model)
    info: dict[str, Any] = {"channels": channels, "layers": {}}
    for w2_name, (w1_name, act) in pairs.items():
        first, second = split_ffn_pair(
            model.get_submodule(w1_name), model.get_submodule(w2_name), act, stats[w2_name], channels
        )
        set_submodule(work, w1_name, first)
        set_submodule(work, w2_name, second)
        rest = stats[w2_name].float().clone()
        rest[second.outliers] = 0.0
        info["layers"][w2_name] = {
            "input_layer": w1_name,
            "activation": act,
            "channels": second.outliers.tolist(),
            "range_kept": float(rest.max() / stats[w2_name].max().clamp_min(1e-12)),
        }
    first_batch = batch_inputs(next(iter(loader)))
    with torch.no_grad():
        ref = output_tensor(call_model(model, first_batch)).float()
        got = output_tensor(call_model(work, first_batch)).float()
    rel = float((ref - got).abs().max() / ref.abs().max().clamp_min(1e-12))
    if rel > CHECK_TOLERANCE:
        raise UnsupportedModelError(f"FFN split changed the model's output by {rel:.2e} of its largest value")
    info["max_rel_diff"] = rel
    return work, info
