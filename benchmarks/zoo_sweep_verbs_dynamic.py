"""The ``--verb-set dynamic`` verbs of ``benchmarks/zoo_sweep.py``: netcompress's dynamic-inference and
remaining pruning methods on public models (same contract as ``zoo_sweep_verbs``: a one-line detail, a
:class:`Wrong`, or the library's own exception).

- ``early_exit``   attach two exits (a third and two thirds of the way through the convs), calibrate the
                   thresholds on the calibration batches, check batched routing == per-sample routing, export
                   every exit to ONNX and run it in ONNX Runtime (checked against PyTorch inside);
- ``slimmable``    make the model slimmable at (0.5, 1.0), width 1.0 == the original, one sandwich training
                   step, extract the plain 0.5 model and compare it with the slimmable model at 0.5;
- ``apoz`` / ``mean_act``  neuron pruning by activation statistics through the dependency graph, compared
                   with the original whose consumers ignore the removed neurons;
- ``target_macs`` / ``target_latency`` / ``target_bytes``  ``prune_to_target`` (few candidates, tiny batch);
- ``global_l1``    global unstructured pruning with its per-layer floor (``max_layer_sparsity``).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from zoo_sweep_verbs import Wrong, _close_all, _out, _outs

import netcompress as nc
from netcompress import dynamic
from netcompress.core.errors import ExportMismatchError
from netcompress.pruning import masked_reference

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _labelled(ctx: dict) -> list[tuple[torch.Tensor, torch.Tensor]]:
    batches = [b for b in ctx["calib"] if isinstance(b, tuple) and len(b) == 2 and isinstance(b[0], torch.Tensor)]
    return batches


def _exit_points(model: nn.Module) -> list[str]:
    convs = [n for n, m in model.named_modules() if isinstance(m, CONVS)]
    if len(convs) < 3:
        return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][:1]
    return list(dict.fromkeys([convs[len(convs) // 3], convs[2 * len(convs) // 3]]))


def d_early_exit(model: nn.Module, x: Any, ctx: dict) -> str:
    one = x[:1] if isinstance(x, torch.Tensor) else x  # the library refuses other inputs by name
    ee = dynamic.add_early_exits(model, exits=_exit_points(model), example_inputs=one)
    cal = dynamic.calibrate_early_exit(ee, ctx["calib"], max_accuracy_drop=0.5, example_inputs=one)
    batches = _labelled(ctx)
    ee.eval()
    # route some samples out early: a threshold halfway between two middle confidences of the first exit
    # (not at a sample's own confidence, where batch-size rounding noise would flip its exit)
    xb = torch.cat([x, batches[0][0]])
    with torch.no_grad():
        first = torch.softmax(ee.forward_all(xb)[0], -1).max(-1).values.sort().values
    k = len(first) // 2
    ee.set_policy(criterion="confidence", threshold=[float(first[k - 1] + first[k]) / 2] * len(ee.heads))
    with torch.no_grad():
        routed = _out(ee, xb)
        single = torch.cat([_out(ee, xb[i : i + 1]) for i in range(len(xb))])
    _close_all([single], [routed], 1e-4, "batched vs per-sample routing")
    try:
        s = dynamic.export_early_exit_onnx(ee, ctx["tmp"] / "ee", x, check=True)
    except ExportMismatchError as exc:
        raise Wrong(f"early-exit export: {exc}") from exc
    thr = cal.get("thresholds", cal.get("threshold"))
    return f"{len(ee.heads)} exits + final, calibrated {thr}, ORT checked {len(s['check'])} exits"


def d_slimmable(model: nn.Module, x: Any, ctx: dict) -> str:
    slim = dynamic.make_slimmable(model, widths=(0.5, 1.0), example_inputs=x)
    with dynamic.at_width(slim, 1.0):
        _close_all(_outs(model, x), _outs(slim, x), 1e-4, "slimmable at 1.0 vs original")
    batches = _labelled(ctx)
    if batches:
        cfg = dynamic.SlimmableConfig(widths=[0.5, 1.0], epochs=1, sandwich=True, progress=False, lr=0.01)
        dynamic.train_slimmable(slim, batches[:1], config=cfg)
    small = dynamic.extract_width(slim, 0.5)
    with dynamic.at_width(slim, 0.5):
        ref = _outs(slim.eval(), x)
    _close_all(ref, _outs(small, x), 1e-4, "extracted 0.5 vs slimmable at 0.5")
    before, after = (sum(p.numel() for p in m.parameters()) for m in (model, small))
    if after >= before:
        raise Wrong(f"width 0.5 removed nothing ({before} -> {after} params)")
    return f"{before}->{after} params" + ("" if batches else " (no labels: not trained)")


def _neurons(criterion: str):  # noqa: ANN202
    def verb(model: nn.Module, x: Any, ctx: dict) -> str:
        small, s = nc.prune_neurons(model, ctx["calib"], criterion=criterion, amount=0.25, max_batches=2)
        before, after = s["params_before"], s["params_after"]
        if after >= before:
            raise Wrong(f"nothing removed ({before} -> {after} params)")
        _close_all(_outs(masked_reference(model, s["kept_indices"]), x), _outs(small, x), 1e-4, "pruned vs masked")
        return f"{before}->{after} params, {len(s['layers'])} groups"

    return verb


def _target(target: str, **extra: Any):  # noqa: ANN202
    def verb(model: nn.Module, x: Any, ctx: dict) -> str:
        small, s = nc.prune_to_target(
            model, x, target=target, reduction=1.3, rate_grid=(0.2, 0.4), max_rounds=2, **extra
        )
        achieved = s.get("achieved_reduction")
        if achieved is None or not torch.isfinite(_out(small, x)).all():
            raise Wrong(f"summary {sorted(s)}")
        if target == "macs" and achieved < 1.3 * 0.98:
            raise Wrong(f"macs reduction {achieved:.2f} < 1.3")
        if [t.shape for t in _outs(small, x)] != [t.shape for t in _outs(model, x)]:
            raise Wrong("output shapes changed")
        return f"achieved {achieved:.2f}x"

    return verb


def d_global_l1(model: nn.Module, x: Any, ctx: dict) -> str:
    m = copy.deepcopy(model)
    s = nc.prune_unstructured(m, amount=0.5, method="l1", scope="global", max_layer_sparsity=0.8)
    if abs(s["global_sparsity"] - 0.5) > 0.02:
        raise Wrong(f"global sparsity {s['global_sparsity']:.3f} != 0.5")
    layer = [p["sparsity"] if isinstance(p, dict) else float(p) for p in s["per_layer"].values()]
    worst = max(layer, default=0.0)
    if worst > 0.8 + 1e-6:
        raise Wrong(f"a layer at {worst:.3f} > floor 0.8")
    if not torch.isfinite(_out(m, x)).all():
        raise Wrong("non-finite outputs")
    return f"global {s['global_sparsity']:.3f}, worst layer {worst:.3f}, {len(s['per_layer'])} layers"


DYNAMIC_VERBS = {
    "early_exit": d_early_exit, "slimmable": d_slimmable, "apoz": _neurons("apoz"),
    "mean_act": _neurons("mean_activation"), "target_macs": _target("macs"),
    "target_latency": _target("latency", runtime="torch", batch_size=2, timing_rounds=2),
    "target_bytes": _target("bytes"), "global_l1": d_global_l1,
}  # fmt: skip

VERBS = DYNAMIC_VERBS  # zoo_sweep.py --verb-set dynamic
