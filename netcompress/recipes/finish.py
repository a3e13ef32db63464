"""The end of a run: export, the deployed model's measurements, metrics.json, plots and report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netcompress.core.io import atomic_write_json, to_jsonable
from netcompress.recipes.stages import STAGE_SPLIT, RunResult, measure_onnx_stage, say, split_loaders


def finish_run(
    run_dir: Path,
    resolved: dict[str, Any],
    state: dict[str, Any],
    model: nn.Module,
    bundle: Any,
    example_inputs: torch.Tensor,
    *,
    progress: bool,
) -> RunResult:
    stages = list(state["stages"])
    export_cfg = resolved["export"]
    exports: dict[str, Any] = {}
    if export_cfg.get("sparse"):
        from netcompress.pruning.sparse_storage import save_sparse

        exports["sparse"] = save_sparse(model, run_dir / "export" / "model.ncz")
    if export_cfg.get("compressed"):
        from netcompress.export.compressed_file import save_compressed

        path = run_dir / "export" / "model.dc"
        exports["compressed"] = save_compressed(model, path, example_inputs=example_inputs)
    if export_cfg.get("onnx"):
        from netcompress.export import export_onnx

        int8 = bool(export_cfg.get("int8"))
        path = run_dir / "export" / ("model_int8.onnx" if int8 else "model.onnx")
        summary = export_onnx(model, path, example_inputs, int8=int8, check=True)
        exports["onnx"] = to_jsonable(summary)
        test_loader = split_loaders(bundle, resolved["data"], resolved["seed"]).test
        stages.append(
            measure_onnx_stage(
                Path(summary.get("path", path)), test_loader, example_inputs, resolved["evaluate"], int8=int8
            )
        )

    splits = data_splits(bundle)
    metrics = {
        "name": resolved["name"],
        "baseline": baseline_stage(resolved),  # the stage ratios are taken against (report reads it)
        "splits": splits,
        "stages": stages,
        "steps": state["finished_steps"],
        "exports": exports,
    }
    atomic_write_json(run_dir / "metrics.json", metrics)

    from netcompress.reporting import print_stage_table

    if progress:
        print_stage_table(stages, baseline=baseline_stage(resolved))
    md = html = None
    if resolved["report"].get("plots", True) or resolved["report"].get("title"):
        md, html = write_run_report(run_dir, resolved, state, stages, model, exports, splits)
        say(progress, f"report: {md}  and  {html}")
    from netcompress.recipes.run_folder import release_lock

    release_lock(run_dir)
    return RunResult(run_dir, resolved, stages, state["finished_steps"], md, html)


def baseline_stage(resolved: dict[str, Any]) -> int:
    """The stage ratios are taken against (:func:`netcompress.reporting.baseline_stage`, the rule
    ``netcompress report`` follows too): the trained model when the run starts by training."""
    from netcompress.reporting.tables import baseline_stage as rule

    return rule([step["op"] for step in resolved.get("steps") or []])


def data_splits(bundle: Any) -> dict[str, Any]:
    """Which split each figure of a run used, and how many samples each split holds."""
    sizes = bundle.split_sizes()
    return {
        "sizes": sizes,
        "stages": STAGE_SPLIT,  # accuracy and loss of every stage row
        "choices": "val" if sizes["val"] else None,  # what steps choose on; history rows' val_acc/val_loss
    }


def _splits_text(splits: dict[str, Any]) -> str:
    sizes = splits["sizes"]
    if splits["choices"] is None:
        held = "no validation split (`val_fraction: 0`): steps had no held-out data to choose on"
    else:
        held = (
            f"{sizes['val']:,} validation samples held out of the training data: every choice the steps "
            "make (rates, thresholds, the best epoch) and `val_acc`/`val_loss` in the training histories"
        )
    return (
        f"- {sizes['train']:,} training samples\n- {held}\n"
        f"- {sizes['test']:,} test samples: every figure of the stage table ({splits['stages']} split)"
    )


def layer_sparsity(model: nn.Module) -> dict[str, float]:
    """Share of exactly-zero weights per Conv/Linear layer."""
    out = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)) and isinstance(weight, torch.Tensor):
            out[name] = float((weight == 0).sum()) / weight.numel()
    return out


def write_run_report(
    run_dir: Path,
    resolved: dict[str, Any],
    state: dict[str, Any],
    stages: list[dict[str, Any]],
    model: nn.Module,
    exports: dict[str, Any],
    splits: dict[str, Any] | None = None,
) -> tuple[Path, Path]:
    from netcompress import reporting

    plots_dir = run_dir / "plots"
    plots_dir.mkdir(exist_ok=True)
    plots: dict[str, Path] = {}
    for step in state["finished_steps"]:
        if not step.get("has_history"):
            continue
        rows = json.loads((run_dir / step["dir"] / "history.json").read_text())
        if not rows:
            continue
        stem = Path(step["dir"]).name
        secondary = [k for k in ("bn_sparsity", "sparsity") if k in rows[0]] or None
        metrics = [k for k in ("train_acc", "val_acc") if k in rows[0]]
        path = plots_dir / f"{stem}-accuracy.png"
        title = f"{step['label']}: accuracy vs epoch" + (
            " (val_acc: validation split)" if "val_acc" in metrics else ""
        )
        reporting.plot_history(rows, path, metrics=metrics, secondary=secondary, title=title)
        plots[f"{step['label']} (step {step['index'] + 1}): accuracy vs epoch"] = path
        if "lr" in rows[0]:
            path = plots_dir / f"{stem}-lr.png"
            reporting.plot_lr(rows, path)
            plots[f"{step['label']} (step {step['index'] + 1}): learning rate"] = path
    for step in state["finished_steps"]:
        for name, curve in (step["summary"].get("curves") or {}).items():
            path = plots_dir / f"{Path(step['dir']).name}-curve.png"
            reporting.plot_accuracy_vs_params(
                {step["label"]: list(zip(curve["x"], curve["y"]))},
                path,
                title=name,
                xlabel=curve.get("x_label", "parameters"),
            )
            plots[f"{step['label']} (step {step['index'] + 1}): {name}"] = path
    sparsity = layer_sparsity(model)
    if sparsity:
        path = plots_dir / "layer-sparsity.png"
        reporting.plot_layer_sparsity(sparsity, path)
        plots["Per-layer sparsity of the final model"] = path
    path = plots_dir / "stages.png"
    reporting.plot_stage_bars(stages, path)
    plots["Accuracy, size and latency per stage"] = path

    sections = []
    if resolved.get("description"):
        sections.append(("About this run", str(resolved["description"])))
    if splits is not None:
        sections.append(("Data splits", _splits_text(splits)))
    step_lines = []
    for step in state["finished_steps"]:
        summary = {k: v for k, v in step["summary"].items() if not isinstance(v, (dict, list))}
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in list(summary.items())[:12])
        step_lines.append(f"{step['index'] + 1}. **{step['label']}**: {shown}")
    if step_lines:
        sections.append(("Steps", "\n".join(step_lines)))
    for step in state["finished_steps"]:
        text = step["summary"].get("architecture")
        if isinstance(text, list):
            sections.append(
                (
                    f"Architecture after step {step['index'] + 1}",
                    "```\n" + "\n".join(map(str, text)) + "\n```",
                )
            )
    if exports:
        sections.append(("Exports", "```json\n" + json.dumps(exports, indent=2)[:4000] + "\n```"))
    title = resolved["report"].get("title") or f"netcompress run: {resolved['name']}"
    return reporting.write_report(
        run_dir, title=title, stages=stages, plots=plots, sections=sections, baseline=baseline_stage(resolved)
    )


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
