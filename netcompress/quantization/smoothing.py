"""Per-input-channel scaling of Linear layers that keeps the model's function: SmoothQuant and AWQ's base.

A Linear ``y = W x`` equals ``(W diag(s)) (x / s)`` for any positive ``s``. Where the input ``x`` comes
only from a LayerNorm (or a Linear, possibly through ReLU/Dropout) and goes only to Linears, ``1/s``
folds into that producer (LayerNorm weight and bias, or the producing Linear's output rows) and ``s``
into the consumers' input columns: same function, no extra op. :func:`scale_groups` finds these
groups with torch.fx; Linears it cannot fold are listed with the reason.

SmoothQuant (Xiao et al., 2022) picks ``s_j = max|X_j|^alpha / max|W_j|^(1-alpha)`` so activation
outlier channels shrink and the weights absorb them: per-tensor int8 activations lose less. It is the
``smooth`` option of static PTQ (``nc.quantize(model, calib, smooth=0.5)``).

Example:
    >>> smoothed, info = smooth_activations(model, calib_loader, alpha=0.5)
    >>> info["smoothed"], info["skipped"]
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from netcompress.core.inputs import batch_inputs, call_model
from netcompress.core.selection import set_submodule
from netcompress.quantization.value_tracing import TypeCheckedTracer

_EQUIVARIANT_MODULES = (nn.ReLU, nn.Dropout, nn.Identity)  # f(x / s) == f(x) / s for s > 0
_EQUIVARIANT_FUNCTIONS = {F.relu, torch.relu, F.dropout}


class _Tracer(TypeCheckedTracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (nn.Linear, nn.LayerNorm)) or super().is_leaf_module(m, qualname)


def _walk_back(node: fx.Node, modules: dict[str, nn.Module]) -> tuple[str | None, str, str | None]:
    """From a group's input node back through single-user scale-equivariant ops to its producer.

    The input node's own users were checked by the caller; every node stepped back to must have one.
    """
    while True:
        if node.op == "call_module":
            m = modules[node.target]
            if isinstance(m, nn.LayerNorm):
                if not m.elementwise_affine:
                    return None, "", f"LayerNorm {node.target} has no weight to fold into"
                return node.target, "layernorm", None
            if type(m) is nn.Linear:
                return node.target, "linear", None
            if isinstance(m, _EQUIVARIANT_MODULES):
                node = node.args[0]
                if len(node.users) != 1:
                    return None, "", f"{node.name} also feeds other ops"
                continue
            return None, "", f"produced by {type(m).__name__} {node.target}"
        if node.op == "call_function" and node.target in _EQUIVARIANT_FUNCTIONS:
            node = node.args[0]
            if len(node.users) != 1:
                return None, "", f"{node.name} also feeds other ops"
            continue
        return None, "", f"produced by {node.op} {node.target}"


def scale_groups(model: nn.Module) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Linears grouped by their shared input: ``[{"linears", "producer", "kind"}]`` and ``{linear: reason}``.

    A group folds (``producer`` not None) when its input feeds only those Linears and comes from a
    LayerNorm or a plain Linear through ReLU/Dropout only; each producer also has no other user.

    Example:
        >>> groups, unfoldable = scale_groups(nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 4)))
        >>> groups
        [{'linears': ['1'], 'producer': '0', 'kind': 'layernorm'}]
    """
    linears = [n for n, m in model.named_modules() if n and type(m) is nn.Linear]
    try:
        graph = fx.GraphModule(model, _Tracer().trace(model)).graph
    except Exception as exc:  # torch.fx raises many types; the reason is reported, nothing guessed
        reason = f"torch.fx cannot trace the model ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
        return [], {n: reason for n in linears}
    modules = dict(model.named_modules())
    calls: dict[str, list[fx.Node]] = {}
    for node in graph.nodes:
        if node.op == "call_module" and node.target in linears:
            calls.setdefault(node.target, []).append(node)
    unfoldable = {n: "not called in the traced graph" for n in linears if n not in calls}
    by_input: dict[fx.Node, list[str]] = {}
    for name, nodes in calls.items():
        if len(nodes) > 1:
            unfoldable[name] = "called more than once (shared weights)"
            continue
        by_input.setdefault(nodes[0].args[0], []).append(name)
    groups = []
    for src, names in by_input.items():
        users = {u for u in src.users}
        if any(not (u.op == "call_module" and u.target in names) for u in users):
            reason = f"its input {src.name} also feeds other ops"
            producer, kind = None, ""
        else:
            producer, kind, reason = _walk_back(src, modules)
        if producer is None or producer in names:
            unfoldable.update({n: reason or "its producer is in the group" for n in names})
            continue
        groups.append({"linears": names, "producer": producer, "kind": kind})
    return groups, dict(sorted(unfoldable.items()))


def input_statistics(
    model: nn.Module, loader: Iterable, names: list[str], *, num_batches: int, max_rows: int = 0
) -> dict[str, dict[str, torch.Tensor]]:
    """Per input channel ``absmax`` and ``absmean`` of each named Linear's input (and ``rows`` samples)."""
    stats: dict[str, dict[str, Any]] = {
        n: {"absmax": None, "abssum": None, "n": 0, "rows": []} for n in names
    }
    handles = []

    def make_hook(name: str) -> Any:
        def hook(_m: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0].detach().float()
            x = x.reshape(-1, x.shape[-1])
            st = stats[name]
            a = x.abs()
            st["absmax"] = a.amax(0) if st["absmax"] is None else torch.maximum(st["absmax"], a.amax(0))
            st["abssum"] = a.sum(0) if st["abssum"] is None else st["abssum"] + a.sum(0)
            st["n"] += x.shape[0]
            kept = sum(r.shape[0] for r in st["rows"])
            if kept < max_rows:
                st["rows"].append(x[: max_rows - kept].clone())

        return hook

    for n in names:
        handles.append(model.get_submodule(n).register_forward_pre_hook(make_hook(n)))
    try:
        with torch.no_grad():
            for i, batch in enumerate(loader):
                if i >= num_batches:
                    break
                call_model(model, batch_inputs(batch))
    finally:
        for h in handles:
            h.remove()
    out = {}
    for n, st in stats.items():
        if st["n"]:
            rows = torch.cat(st["rows"]) if st["rows"] else None
            out[n] = {"absmax": st["absmax"], "absmean": st["abssum"] / st["n"], "rows": rows}
    return out


class InputScaled(nn.Module):
    """``linear(x * inv_scale)``: where ``1/s`` cannot fold into a producer it runs as one ``Mul``."""

    def __init__(self, linear: nn.Module, inv_scale: torch.Tensor) -> None:
        super().__init__()
        self.linear = linear
        self.register_buffer("inv_scale", inv_scale.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x * self.inv_scale)


def apply_scales_(model: nn.Module, group: dict[str, Any], s: torch.Tensor) -> None:
    """Scale the group's Linear input columns by ``s`` and its producer's output by ``1/s`` (IN PLACE).

    Without a producer (``group["producer"] is None``) each Linear becomes :class:`InputScaled`.
    """
    s = s.detach().float()
    with torch.no_grad():
        for name in group["linears"]:
            model.get_submodule(name).weight.mul_(s)
        producer = group.get("producer")
        if producer is None:
            for name in group["linears"]:
                set_submodule(model, name, InputScaled(model.get_submodule(name), 1.0 / s))
            return
        p = model.get_submodule(producer)
        if group["kind"] == "layernorm":
            p.weight.div_(s)
        else:
            p.weight.div_(s.unsqueeze(1))
        if p.bias is not None:
            p.bias.div_(s)


def smooth_activations(
    model: nn.Module, loader: Iterable, *, alpha: float = 0.5, num_batches: int = 8
) -> tuple[nn.Module, dict[str, Any]]:
    """SmoothQuant: a copy of ``model`` with activation outliers migrated into the weights.

    ``s_j = max|X_j|^alpha / max|W_j|^(1-alpha)`` (max over calibration batches and over all Linears
    sharing the input), folded into the producing LayerNorm/Linear; groups that cannot fold stay as they
    are and are named in ``skipped``. The float function is unchanged (up to float rounding).

    Example:
        >>> smoothed, info = smooth_activations(model, calib_loader, alpha=0.5)
    """
    work = copy.deepcopy(model).eval()
    groups, skipped = scale_groups(work)
    stats = input_statistics(work, loader, [g["linears"][0] for g in groups], num_batches=num_batches)
    smoothed: dict[str, list[str]] = {}
    for group in groups:
        first = group["linears"][0]
        if first not in stats:
            skipped.update({n: "never reached by the calibration batches" for n in group["linears"]})
            continue
        x_max = stats[first]["absmax"]
        w_max = torch.stack(
            [work.get_submodule(n).weight.detach().abs().amax(0) for n in group["linears"]]
        ).amax(0)
        s = x_max.clamp_min(1e-5).pow(alpha) / w_max.clamp_min(1e-5).pow(1.0 - alpha)
        s = torch.where((x_max > 0) & (w_max > 0), s, torch.ones_like(s)).clamp(1e-4, 1e4)
        apply_scales_(work, group, s)
        smoothed[group["producer"]] = group["linears"]
    return work, {"alpha": alpha, "smoothed": smoothed, "skipped": skipped}
