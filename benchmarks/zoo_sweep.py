"""Sweep public model classes nobody here wrote through netcompress's public verbs; print a matrix.

Each model (``benchmarks/zoo_sweep_models.py``: tiny random-weight ``transformers`` configs and
``efficientnet_pytorch`` widths, no downloads) goes through every verb of its kind; each cell is

- ``ok``      the verb ran and its result passed the sweep's own check,
- ``refused`` a NetcompressError with a one-line message (acceptable: the user is told what and why),
- ``WRONG``   the verb returned but the result is wrong (pruned != masked, export outside tolerance,
              save/load changed outputs, no integer kernel, sparsity not as asked, non-finite loss),
- ``CRASH``   any other exception (a bug),
- ``TIMEOUT`` over ``--verb-seconds``.

Checks are independent of the library's own where that is cheap: channel pruning is compared with the
original whose consumers ignore the removed channels (forward pre-hooks zero them); transformer pruning
relies on its built-in masked-model verification (a mismatch there is an UnsupportedModelError).

Usage (from the repository root)::

    PYTHONPATH=$PWD nice -n 10 python benchmarks/zoo_sweep.py --out benchmarks/zoo_sweep.jsonl
    PYTHONPATH=$PWD python benchmarks/zoo_sweep.py --only swin,llama --verbs quant_int8,export_float
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import signal
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from zoo_sweep_models import IMAGE_SIZE, LABELS, TEXT, VISION, text_inputs  # noqa: E402
from zoo_sweep_models2 import IMAGE_SIZE2, OTHER, TEXT2, VISION2  # noqa: E402

import netcompress as nc  # noqa: E402
from netcompress.core.errors import ExportMismatchError, NetcompressError  # noqa: E402
from netcompress.core.inputs import call_model, output_tensor  # noqa: E402
from netcompress.training import TrainConfig  # noqa: E402

INTEGER_MATMULS = ("MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QLinearMatMul", "QGemm")


class Wrong(Exception):
    """The verb returned, but its result failed the sweep's check."""


class _Timeout(Exception):
    pass


def _out(model: nn.Module, inputs: Any) -> torch.Tensor:
    with torch.no_grad():
        return output_tensor(call_model(model.eval(), inputs)).float()


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float, what: str) -> None:
    if a.shape != b.shape:
        raise Wrong(f"{what}: shape {tuple(b.shape)} != {tuple(a.shape)}")
    scale = float(a.abs().max()) or 1.0
    diff = float((a - b).abs().max())
    if not diff <= rtol * scale:
        raise Wrong(f"{what}: max diff {diff:.3g} (relative {diff / scale:.3g})")


def _linear_weights(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [
        (n, m.weight)
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"
    ]


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


def _masked_channels(model: nn.Module, keep: dict[str, dict[str, list[int] | None]]) -> nn.Module:
    """The original where every Conv/Linear ignores its removed input channels (zeroed by a pre-hook)."""
    ref = copy.deepcopy(model)
    for name, module in ref.named_modules():
        kept = keep.get(name, {}).get("in")
        if kept is None or not isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            continue
        width = module.in_features if isinstance(module, nn.Linear) else module.in_channels
        mask = torch.zeros(width)
        mask[kept] = 1

        def hook(mod: nn.Module, args: tuple, mask: torch.Tensor = mask) -> tuple:
            t = args[0]
            shape = [1] * t.dim()
            shape[-1 if isinstance(mod, nn.Linear) else 1] = -1
            return (t * mask.view(shape), *args[1:])

        module.register_forward_pre_hook(hook)
    return ref


def v_prune(model: nn.Module, x: Any, ctx: dict) -> str:
    if ctx["family"] == "transformer":
        small = nc.prune_transformer(model, x, heads=0.5, ffn=0.5)  # verified against the masked model inside
        before, after = (sum(p.numel() for p in m.parameters()) for m in (model, small))
        if after >= before:
            raise Wrong(f"nothing removed ({before} -> {after} params)")
        if _out(small, x).shape != _out(model, x).shape:
            raise Wrong("output shape changed")
        ctx["small"] = small
        return f"{before}->{after} params"
    from netcompress.pruning.channel import apply_channel_plan, plan_channel_pruning

    plan = plan_channel_pruning(model, x, ratio=0.3)
    small = apply_channel_plan(model, plan, x)
    before, after = (sum(p.numel() for p in m.parameters()) for m in (model, small))
    if after >= before:
        raise Wrong(f"nothing removed ({before} -> {after} params)")
    _close(_out(_masked_channels(model, plan.keep_indices()), x), _out(small, x), 1e-4, "pruned vs masked")
    ctx["small"] = small
    return f"{before}->{after} params"


def v_quant_int8(model: nn.Module, x: Any, ctx: dict) -> str:
    q = nc.quantize(model, ctx["calib"], bits=8)
    s = _export(q, x, ctx["tmp"], "int8", int8=True)
    ints = sum(
        n for op, n in s["int8_op_counts"].items() if op.startswith("QLinear") or op in INTEGER_MATMULS
    )
    if ints == 0:
        raise Wrong(f"no integer kernel in the ORT graph: {s['op_counts']}")
    return f"rel {s['check']['max_rel_diff']:.3f}, {ints} int ops"


def v_export_float(model: nn.Module, x: Any, ctx: dict) -> str:
    s = _export(model, x, ctx["tmp"], "float", int8=False)
    return f"rel {s['check']['max_rel_diff']:.1e}"


def v_save_load(model: nn.Module, x: Any, ctx: dict) -> str:
    path = ctx["tmp"] / "m.nc"
    saved = nc.save(model, path, example_inputs=x)
    # a user's model classes load only when named; the top-level packages of what save reports
    allow = sorted({m.partition(".")[0] for m in saved.get("allow_modules", [])})
    back = nc.load(path, allow_modules=allow)
    _close(_out(model, x), _out(back, x), 1e-6, "loaded vs saved")
    return f"{path.stat().st_size:,} B"


def _changed(before: dict, model: nn.Module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in model.state_dict().items() if v.is_floating_point())


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
    zeros = [float((w == 0).float().mean()) for n, w in _linear_weights(m) if n not in skipped]
    pruned = [z for z in zeros if z > 0]
    if not pruned or min(pruned) < 0.45 or not torch.isfinite(_out(m, x)).all():
        raise Wrong(f"sparsity per layer {[round(z, 2) for z in zeros]}")
    return f"{len(pruned)} layers ~{sum(pruned) / len(pruned):.2f}"


def t_n_m(model: nn.Module, x: Any, ctx: dict) -> str:
    m = copy.deepcopy(model)
    s = nc.prune_n_m_(m, ctx["calib"], n=2, m=4, calib_batches=2)
    skipped = set(s.get("skipped", {}))
    layers = [n for n, _ in _linear_weights(m) if n not in skipped]
    masked = 0
    for name in layers:
        w = m.get_submodule(name).weight
        w = w.t() if type(m.get_submodule(name)).__name__ == "Conv1D" else w  # Conv1D stores (in, out)
        if w.shape[1] % 4 or not (w == 0).any():
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


def _run_verb(fn: Callable, model: nn.Module, x: Any, ctx: dict, seconds: int) -> tuple[str, str, float]:
    def alarm(*_: Any) -> None:
        raise _Timeout

    start = time.perf_counter()
    signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    sys.stdout.flush()
    saved = os.dup(1), os.dup(2)
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 1)  # the exporters print whole graphs on failure; the cell's detail says what failed
    os.dup2(quiet, 2)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            detail = fn(model, x, ctx)
        status = "ok"
    except _Timeout:
        status, detail = "TIMEOUT", f"over {seconds} s"
    except Wrong as exc:
        status, detail = "WRONG", str(exc)
    except NetcompressError as exc:
        status, detail = "refused", f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - every other failure is a bug to classify
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        status = "CRASH"
        detail = f"{type(exc).__name__}: {exc} [{Path(frame.filename).name}:{frame.lineno}]"
    finally:
        signal.alarm(0)
        sys.stdout.flush()
        for fd, copy_ in zip((1, 2), saved, strict=True):
            os.dup2(copy_, fd)
            os.close(copy_)
        os.close(quiet)
    return status, " ".join(str(detail).split())[:400], time.perf_counter() - start


def sweep_model(name: str, kind: str, verbs: list[str], seconds: int) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    other = text_inputs(3, 11, seed=5)
    if kind == "other":  # waveforms, spectrograms, (source, target): the transformer verbs
        build, make, labelled = OTHER[name]
        family, table, x, other = "transformer", TEXT_VERBS, make(2, False, 0), make(3, True, 5)
        labels = [torch.randint(0, LABELS, (4,), generator=gen) for _ in range(2)]
        batches = [(make(4, False, s), y) if labelled else make(4, False, s) for s, y in zip((1, 2), labels)]
    elif kind == "vision":
        build, family = {**VISION, **VISION2}[name]
        hw = {**IMAGE_SIZE, **IMAGE_SIZE2}.get(name, (32, 32))
        x = torch.randn(2, 3, *hw, generator=gen)
        batches = [(torch.randn(4, 3, *hw, generator=gen), torch.randint(0, LABELS, (4,), generator=gen))]
        table = VISION_VERBS
    else:
        build, family, table = {**TEXT, **TEXT2}[name], "transformer", TEXT_VERBS
        x = text_inputs(2, 9, seed=0)
        batches = [(text_inputs(4, 9, seed=s), torch.randint(0, 3, (4,), generator=gen)) for s in (1, 2)]
    model = build().eval()
    if kind != "other" and _out(model, x).dim() == 3:  # token outputs (LM logits, states): unlabelled batches
        batches = [b[0] for b in batches]
    for m in model.modules():  # trained-like BN statistics
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.3, 0.3, generator=gen)
            m.running_var.uniform_(0.5, 1.5, generator=gen)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ctx = {"tmp": Path(tmp), "calib": batches, "train": batches, "family": family, "other": other}
        for verb in verbs:
            if verb not in table:
                continue
            status, detail, secs = _run_verb(table[verb], model, x, ctx, seconds)
            rows.append({"model": name, "kind": kind, "class": type(model).__name__, "verb": verb,
                         "status": status, "detail": detail, "seconds": round(secs, 2)})  # fmt: skip
            print(f"  {name:22s} {verb:13s} {status:8s} {secs:6.1f}s  {detail[:300]}", flush=True)
    return rows


def print_matrix(rows: list[dict[str, Any]]) -> None:
    short = {"ok": "ok", "refused": "ref", "WRONG": "WRONG", "CRASH": "CRASH", "TIMEOUT": "TIME"}
    for kind, verbs in (("vision", VISION_VERBS), ("text", TEXT_VERBS), ("other", TEXT_VERBS)):
        mine = [r for r in rows if r["kind"] == kind]
        if not mine:
            continue
        print(f"\n| {kind} | " + " | ".join(verbs) + " |")
        print("|---|" + "---|" * len(verbs))
        for model in dict.fromkeys(r["model"] for r in mine):
            cells = {r["verb"]: short[r["status"]] for r in mine if r["model"] == model}
            print(f"| {model} | " + " | ".join(cells.get(v, "-") for v in verbs) + " |")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    print("\ncells:", ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="", help="comma-separated model names (default: all)")
    p.add_argument("--kinds", default="vision,text,other")
    p.add_argument("--round", choices=("all", "1", "3"), default="all", help="1: zoo_sweep_models, 3: ...2")
    p.add_argument("--verbs", default="", help="comma-separated verbs (default: all of each kind)")
    p.add_argument("--verb-seconds", type=int, default=120)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="append one JSON line per cell here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    only = {n for n in args.only.split(",") if n}
    rows: list[dict[str, Any]] = []
    start = time.time()
    for kind in args.kinds.split(","):
        names = {"vision": [*VISION, *VISION2], "text": [*TEXT, *TEXT2], "other": [*OTHER]}[kind]
        if args.round != "all":
            names = [n for n in names if (n in VISION2 or n in TEXT2 or n in OTHER) == (args.round == "3")]
        table = VISION_VERBS if kind == "vision" else TEXT_VERBS
        verbs = [v for v in args.verbs.split(",") if v] or list(table)
        for name in names:
            if only and name not in only:
                continue
            rows += sweep_model(name, kind, verbs, args.verb_seconds)
    print_matrix(rows)
    print(f"wall {time.time() - start:.0f} s")
    if args.out:
        with open(args.out, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
