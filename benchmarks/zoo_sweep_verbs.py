"""The verbs of ``benchmarks/zoo_sweep.py``: each runs one netcompress verb on a model and checks its result.

A verb returns a one-line detail (ok), raises :class:`Wrong` (the verb returned, the result failed the check),
or lets the library's exception through (the runner classifies it: a NetcompressError is a refusal, anything
else a crash). Checks compare every tensor a model returns (logits and boxes, several heads), not only the main one.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

import netcompress as nc
from netcompress.core.errors import ExportMismatchError, NetcompressError
from netcompress.core.inputs import call_model, output_tensor
from netcompress.pruning import masked_reference
from netcompress.training import TrainConfig

INTEGER_MATMULS = ("MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QLinearMatMul", "QGemm")


class Wrong(Exception):
    """The verb returned, but its result failed the sweep's check."""


def _out(model: nn.Module, inputs: Any) -> torch.Tensor:
    with torch.no_grad():
        return output_tensor(call_model(model.eval(), inputs)).float()


def _outs(model: nn.Module, inputs: Any) -> list[torch.Tensor]:
    """Every floating-point tensor the model returns (tensors, tuples, dicts, ModelOutputs, nested)."""

    def walk(o: Any) -> list[torch.Tensor]:
        if isinstance(o, torch.Tensor):
            return [o.float()] if o.is_floating_point() else []
        if isinstance(o, Mapping):
            return [t for v in o.values() for t in walk(v)]
        if isinstance(o, (tuple, list)):
            return [t for v in o for t in walk(v)]
        return []

    with torch.no_grad():
        return walk(call_model(model.eval(), inputs))


def _close_all(a: list[torch.Tensor], b: list[torch.Tensor], rtol: float, what: str) -> None:
    if len(a) != len(b):
        raise Wrong(f"{what}: {len(b)} output tensors != {len(a)}")
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        _close(x, y, rtol, f"{what} (output {i})" if len(a) > 1 else what)


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float, what: str) -> None:
    if a.shape != b.shape:
        raise Wrong(f"{what}: shape {tuple(b.shape)} != {tuple(a.shape)}")
    scale = float(a.abs().max()) or 1.0
    diff = float((a - b).abs().max())
    if not diff <= rtol * scale:
        raise Wrong(f"{what}: max diff {diff:.3g} (relative {diff / scale:.3g})")


def _weights_2d(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(name, weight as (outputs, inputs per output)) of every Linear, HF Conv1D (stored (in, out)) and Conv."""
    found = []
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear):
            found.append((n, m.weight))
        elif type(m).__name__ == "Conv1D":
            found.append((n, m.weight.t()))
        elif isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            found.append((n, m.weight.flatten(1)))
    return found


def _export(model: nn.Module, x: Any, tmp: Path, name: str, int8: bool) -> dict[str, Any]:
    try:
        return nc.export_onnx(model, tmp / f"{name}.onnx", x, int8=int8, check=True)
    except ExportMismatchError as exc:
        raise Wrong(f"export check: {exc}") from exc


# ---------------------------------------------------------------- vision verbs
def v_profile(model: nn.Module, x: Any, ctx: dict) -> str:
    stats = nc.profile(model, x, latency=False, memory=False)
    params = sum(p.numel() for p in model.parameters())
    if stats["params"] != params or not stats["macs"] > 0:
        raise Wrong(f"params {stats['params']} vs {params}, macs {stats['macs']}")
    return f"{stats['macs']:,} MACs"


def v_prune(model: nn.Module, x: Any, ctx: dict) -> str:
    if ctx["family"] == "transformer":
        small = nc.prune_transformer(model, x, heads=0.5, ffn=0.5)  # verified against the masked model inside
        before, after = (sum(p.numel() for p in m.parameters()) for m in (model, small))
        if after >= before:
            raise Wrong(f"nothing removed ({before} -> {after} params)")
        if [t.shape for t in _outs(small, x)] != [t.shape for t in _outs(model, x)]:
            raise Wrong("output shapes changed")
        ctx["small"] = small
        return f"{before}->{after} params"
    from netcompress.pruning.channel import apply_channel_plan, plan_channel_pruning

    plan = plan_channel_pruning(model, x, ratio=0.3)
    small = apply_channel_plan(model, plan, x)
    before, after = (sum(p.numel() for p in m.parameters()) for m in (model, small))
    if after >= before:
        nc.prune_channels(model, x, ratio=0.3)  # what the user calls: a refusal naming why, or a silent no-op
        raise Wrong(f"nothing removed ({before} -> {after} params)")
    _close_all(_outs(masked_reference(model, plan.keep_indices()), x), _outs(small, x), 1e-4, "pruned vs masked")
    ctx["small"] = small
    return f"{before}->{after} params"


def _int8_kernels(s: dict) -> str:
    """The export summary ``s``'s check and integer-kernel count; WRONG when the ORT graph has none."""
    ints = sum(
        n for op, n in s["int8_op_counts"].items() if op.startswith("QLinear") or op in INTEGER_MATMULS
    )
    if ints == 0:
        raise Wrong(f"no integer kernel in the ORT graph: {s['op_counts']}")
    return f"rel {s['check']['max_rel_diff']:.3f}, {ints} int ops"


def v_quant_int8(model: nn.Module, x: Any, ctx: dict) -> str:
    q = nc.quantize(model, ctx["calib"], bits=8)
    return _int8_kernels(_export(q, x, ctx["tmp"], "int8", int8=True))


def v_export_float(model: nn.Module, x: Any, ctx: dict) -> str:
    s = _export(model, x, ctx["tmp"], "float", int8=False)
    return f"rel {s['check']['max_rel_diff']:.1e}"


def v_save_load(model: nn.Module, x: Any, ctx: dict) -> str:
    path = ctx["tmp"] / "m.nc"
    saved = nc.save(model, path, example_inputs=x)
    # a user's model classes load only when named; the top-level packages of what save reports
    allow = sorted({m.partition(".")[0] for m in saved.get("allow_modules", [])})
    back = nc.load(path, allow_modules=allow)
    torch.manual_seed(0)  # a forward that samples (ViLT) draws the same numbers for both
    a = _outs(model, x)
    torch.manual_seed(0)
    _close_all(a, _outs(back, x), 1e-6, "loaded vs saved")
    return f"{path.stat().st_size:,} B"


def _changed(before: dict, model: nn.Module) -> bool:
    # a key added by training (brevitas initialises its scales on the first training step) is a change
    return any(k not in before or not torch.equal(before[k], v) for k, v in model.state_dict().items()
               if v.is_floating_point())  # fmt: skip


def v_fit(model: nn.Module, x: Any, ctx: dict) -> str:
    m = copy.deepcopy(model)
    before = copy.deepcopy(m.state_dict())
    hist = nc.fit_(m, ctx["train"], config=TrainConfig(epochs=1, lr=0.01, progress=False, weight_decay=0))
    loss = hist.last["train_loss"]
    if not (loss == loss and abs(loss) < 1e6) or not _changed(before, m):
        raise Wrong(f"loss {loss}, weights changed: {_changed(before, m)}")
    if not torch.isfinite(_out(m, x)).all():
        raise Wrong("non-finite outputs after a step")
    return f"loss {loss:.3f}"


def v_distill(model: nn.Module, x: Any, ctx: dict) -> str:
    student = copy.deepcopy(ctx.get("small", model))
    before = copy.deepcopy(student.state_dict())
    nc.distill(student, model, ctx["train"], epochs=1, lr=0.01, progress=False)
    if not _changed(before, student) or not torch.isfinite(_out(student, x)).all():
        raise Wrong("student unchanged or non-finite")
    return "student " + ("pruned" if "small" in ctx else "copy")


# ---------------------------------------------------------------- text verbs
def t_prune(hidden: float) -> Callable[[nn.Module, Any, dict], str]:
    def run(model: nn.Module, x: Any, ctx: dict) -> str:
        small = nc.prune_transformer(model, x, heads=0.5, ffn=0.5, hidden=hidden)
        before, after = (sum(p.numel() for p in m.parameters()) for m in (model, small))
        if after >= before:
            raise Wrong(f"nothing removed ({before} -> {after})")
        if _out(small, x).shape[:-1] != _out(model, x).shape[:-1]:
            raise Wrong("output shape changed")
        other = ctx["other"]  # another length than the example's (where the model takes one)
        if not torch.isfinite(_out(small, other)).all():
            raise Wrong("non-finite output at another sequence length")
        ctx.setdefault("small", small)
        return f"{before}->{after}"

    return run


def t_wanda(model: nn.Module, x: Any, ctx: dict) -> str:
    m = copy.deepcopy(model)
    s = nc.prune_wanda_(m, ctx["calib"], amount=0.5, calib_batches=2)
    skipped = set(s.get("skipped", {}))  # named with a reason (a weight tied to the embedding)
    layers = [(float((w == 0).float().mean()), w.shape[1]) for n, w in _weights_2d(m) if n not in skipped]
    zeros = [z for z, _ in layers]
    pruned = [z for z in zeros if z > 0]
    # half of each output's inputs, rounded down (2 of 5 time-series features is 0.4)
    short = [(z, cols) for z, cols in layers if 0 < z < (cols // 2) / cols - 1e-6]
    if not pruned or short or not torch.isfinite(_out(m, x)).all():
        raise Wrong(f"sparsity per layer {[round(z, 2) for z in zeros]}")
    return f"{len(pruned)} layers ~{sum(pruned) / len(pruned):.2f}"


def t_n_m(model: nn.Module, x: Any, ctx: dict) -> str:
    m = copy.deepcopy(model)
    s = nc.prune_n_m_(m, ctx["calib"], n=2, m=4, calib_batches=2)
    skipped = set(s.get("skipped", {}))
    masked = 0
    for name, w in _weights_2d(m):
        if name in skipped or w.shape[1] % 4 or not (w == 0).any():
            continue
        if int((w.reshape(w.shape[0], -1, 4) != 0).sum(-1).max()) > 2:
            raise Wrong(f"{name}: a group of 4 keeps more than 2")
        masked += 1
    if masked == 0:
        raise Wrong(f"no layer masked: {s}")
    return f"{masked} layers 2:4"


def t_dynamic(model: nn.Module, x: Any, ctx: dict) -> str:
    q = nc.quantize(model, mode="dynamic")
    s = _export(q, x, ctx["tmp"], "dyn", int8=True)
    ints = sum(s["int8_op_counts"].get(op, 0) for op in INTEGER_MATMULS)
    if ints == 0:
        raise Wrong(f"no integer MatMul: {s['op_counts']}")
    return f"rel {s['check']['max_rel_diff']:.3f}, {ints} int matmuls"


def t_int4(model: nn.Module, x: Any, ctx: dict) -> str:
    q = nc.quantize(model, ctx["calib"], mode="weight_only", bits=4)
    s = _export(q, x, ctx["tmp"], "int4", int8=True)
    n = s["op_counts"].get("MatMulNBits", 0) + s["int8_op_counts"].get("MatMulNBits", 0)
    dq = s["op_counts"].get("DequantizeLinear", 0)
    if n == 0 and dq and not any(isinstance(mod, nn.Linear) for mod in model.modules()):
        return f"rel {s['check']['max_rel_diff']:.3f}, no Linear: {dq} DequantizeLinear (4-bit conv weights)"
    if n == 0:
        raise Wrong(f"no MatMulNBits: {s['op_counts']}")
    return f"rel {s['check']['max_rel_diff']:.3f}, {n} MatMulNBits"


def t_accuracy_aware(model: nn.Module, x: Any, ctx: dict) -> str:
    # (N, classes) logits: top-1 agreement; LM logits (N, L, vocab): per-token agreement; token states: cosine
    lm = "LM" in type(model).__name__
    bound = {"metric": "agreement", "min_agreement": 0.99} if _out(model, x).dim() == 2 or lm else {
        "metric": "embedding", "min_cosine": 0.99}  # fmt: skip
    q, s = nc.quantize_accuracy_aware(
        model, ctx["calib"], ctx["calib"], mode="dynamic", max_trials=2, **bound
    )
    if "met" not in s or not torch.isfinite(_out(q, x)).all():
        raise Wrong(f"summary {sorted(s)}")
    return f"met={s['met']} float={len(s.get('fallback_layers', {}))}"


def t_distill(model: nn.Module, x: Any, ctx: dict) -> str:
    student = copy.deepcopy(ctx.get("small", model))
    before = copy.deepcopy(student.state_dict())
    note = ""
    try:
        s = nc.distill_transformer_(student, model, ctx["train"], example_inputs=x, epochs=1, progress=False)
    except NetcompressError as exc:  # follow the advice of a refusal once, as a user would
        if "attention_weight=0" not in str(exc):
            raise
        s = nc.distill_transformer_(
            student, model, ctx["train"], example_inputs=x, epochs=1, progress=False, attention_weight=0,
            value_weight=0,
        )  # fmt: skip
        note = ", hidden states only (maps refused)"
    if not _changed(before, student) or not torch.isfinite(_out(student, x)).all():
        raise Wrong(f"student unchanged or non-finite: {s}")
    return "student " + ("pruned" if "small" in ctx else "copy") + note


VISION_VERBS = {
    "profile": v_profile, "prune": v_prune, "quant_int8": v_quant_int8, "export_float": v_export_float,
    "save_load": v_save_load, "fit": v_fit, "distill": v_distill,
}  # fmt: skip
TEXT_VERBS = {
    "profile": v_profile, "prune_hf": t_prune(0.0), "prune_hidden": t_prune(0.25), "wanda": t_wanda,
    "n_m": t_n_m, "dynamic_int8": t_dynamic, "int4": t_int4, "acc_aware": t_accuracy_aware,
    "distill_tf": t_distill, "save_load": v_save_load,
}  # fmt: skip


def r4_prune(model: nn.Module, x: Any, ctx: dict) -> str:
    return v_prune(model, x, ctx) if ctx["family"] == "cnn" else TEXT_VERBS["prune_hf"](model, x, ctx)


def r4_distill(model: nn.Module, x: Any, ctx: dict) -> str:
    return (v_distill if ctx["family"] == "cnn" else t_distill)(model, x, ctx)


# round 4: every verb of both tables on every model (prune_hidden: transformers only)
ALL_VERBS = {
    "profile": v_profile, "prune": r4_prune, "prune_hidden": t_prune(0.25), "quant_int8": v_quant_int8,
    "dynamic_int8": t_dynamic, "int4": t_int4, "wanda": t_wanda, "n_m": t_n_m, "acc_aware": t_accuracy_aware,
    "export_float": v_export_float, "save_load": v_save_load, "fit": v_fit, "distill": r4_distill,
}  # fmt: skip
