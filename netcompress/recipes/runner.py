"""Running a recipe: build the model and data, run each step, measure, checkpoint, report.

A run writes one folder::

    <run>/recipe.yaml            the fully resolved recipe (every default filled in)
    <run>/state.json             which steps finished (what --resume reads)
    <run>/steps/01-train-supervised/{model.pt, summary.json, history.json, metrics.json, ...}
    <run>/metrics.json           {"stages": [...], "steps": [...]} - one stage per finished step
    <run>/plots/*.png, report.md, report.html, export/*

Each step is seeded with ``seed + step index`` and its data loaders are rebuilt from that
seed, so a run killed after step k and resumed produces the same numbers as one that never
stopped. A step validates on the data set's validation split (held out of the training data);
every stage row is measured on the test split. Every file is written atomically; the input
model checkpoint and the data are only read.

Under ``torchrun --nproc_per_node=N`` every rank runs every step (training steps train in DDP, each
rank on its share of the batches) and every point of a sweep, in the same order; rank 0 alone plans
and writes the run folder, copies reused steps, measures and prints, and after each step every rank
takes rank 0's model, checked by checksums (:func:`netcompress.training.replica_sync.sync_model_`).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from netcompress.core.errors import CheckpointError, ConfigError, NetcompressError, NonFiniteLossError
from netcompress.core.io import (
    atomic_write_json,
    atomic_write_text,
    load_checkpoint,
    to_jsonable,
)
from netcompress.core.methods import MethodData
from netcompress.core.model_check import check_last_batch, check_model_on_data, model_label
from netcompress.recipes.finish import finish_run
from netcompress.recipes.model_spec import build_model
from netcompress.recipes.run_folder import (
    STATE_FILE,
    create_run_dir,
    discard_run_dir,
    has_finished_step,
    hold_lock,
    is_run_folder,
    plan_run_dir,
    remove_stale_tmp,
)
from netcompress.recipes.schema import (
    LOADER_KEYS,
    apply_overrides,
    apply_profile,
    load_recipe_file,
    resolve_recipe,
)
from netcompress.recipes.stages import RunResult, measure_stage, record_step, say, split_loaders
from netcompress.recipes.steps import find_method
from netcompress.recipes.sweep import run_sweep, sweep_points
from netcompress.training import distributed, replica_sync


def run_recipe(
    recipe: str | Path | dict[str, Any],
    *,
    overrides: list[str] | tuple[str, ...] = (),
    out_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    runs_root: str | Path = "runs",
    profile: str | None = None,
    _reuse_from: tuple[Path, ...] = (),
) -> RunResult:
    """Run a recipe end to end and return its stages (one measurement per finished step).

    Example:
        >>> result = nc.run_recipe("recipes/quickstart.yaml", overrides=["seed=1"])
        >>> result.final["accuracy"]
    """
    raw = load_recipe_file(recipe) if isinstance(recipe, (str, Path)) else dict(recipe)
    raw = apply_overrides(apply_profile(raw, profile), list(overrides))
    raw.pop("profiles", None)
    resolved = resolve_recipe({k: v for k, v in raw.items() if k != "sweep"})
    from netcompress.training import Runtime

    runtime = Runtime.from_env(device=resolved["device"])  # joins torchrun's process group, if any
    progress = progress and runtime.is_main
    if raw.get("sweep") is not None:  # under torchrun: every rank runs every point, in the same order
        for _, point_overrides in sweep_points(raw["sweep"]):  # validate every point before running any
            resolve_recipe(apply_overrides({k: v for k, v in raw.items() if k != "sweep"}, point_overrides))
        run_dir, made = distributed.on_main(  # rank 0 plans and makes the sweep folder
            lambda: _plan_sweep(resolved, out_dir=out_dir, resume=resume, runs_root=Path(runs_root))
        )
        try:
            return run_sweep(
                raw,
                run_dir=run_dir,
                resume=resume,
                progress=progress,
                source=recipe if not isinstance(recipe, dict) else "a recipe",
                run_point=run_recipe,
            )
        except NetcompressError:
            if runtime.is_main and made is not _EXISTED and not has_finished_step(run_dir):
                discard_run_dir(run_dir, made)
            raise
    run_dir, state = distributed.on_main(  # rank 0 plans; every rank gets its answer (or its error)
        lambda: _plan(resolved, out_dir=out_dir, resume=resume, runs_root=Path(runs_root))
    )

    from netcompress import data as data_mod
    from netcompress.training import seed_everything

    seed = resolved["seed"]
    data_cfg = resolved["data"]
    say(progress, f"loading data {data_cfg['name']} ...")
    bundle = data_mod.load(
        data_cfg["name"], **{k: v for k, v in data_cfg.items() if k != "name" and k not in LOADER_KEYS}
    )
    example_inputs = _example_inputs(bundle)

    done = state["finished_steps"] if state else []
    if done:  # read on rank 0, sent to every rank (a run folder on rank 0's disk is enough)
        model = distributed.on_main(lambda: _load_step_model(run_dir / done[-1]["dir"] / "model.pt"))
    else:  # everything is checked and built before the run folder is made
        seed_everything(seed)
        model = build_model(resolved["model"], num_classes=bundle.num_classes)
        check_model_on_data(  # a model that does not take this data stops here, before any folder exists
            model,
            example_inputs,
            num_classes=bundle.num_classes,
            model_name=model_label(resolved["model"]),
            data_name=f"data {data_cfg['name']}",
        )
        if not distributed.is_distributed() and any((s.get("epochs") or 0) > 0 for s in resolved["steps"]):
            check_last_batch(
                model, example_inputs, train_size=len(bundle.train), batch_size=data_cfg["batch_size"]
            )
        test_loader = split_loaders(bundle, data_cfg, seed).test
        state = distributed.on_main(
            lambda: {
                "recipe_hash": _recipe_hash(resolved),
                "finished_steps": [],
                "stages": [
                    measure_stage(model, test_loader, example_inputs, resolved["evaluate"], name="initial")
                ],
            }
        )
    replica_sync.sync_model_(model, where="the initial model")

    def open_folder() -> Any:
        made = _open_run_dir(run_dir)
        hold_lock(run_dir)
        atomic_write_json(run_dir / STATE_FILE, state)
        atomic_write_text(
            run_dir / "recipe.yaml", _recipe_header(recipe) + yaml.safe_dump(resolved, sort_keys=False)
        )
        return made

    made = distributed.on_main(open_folder)  # the other ranks wait for the folder to exist

    try:
        for index, step in enumerate(resolved["steps"]):
            if index < len(done):
                continue
            reused = distributed.on_main(  # rank 0 copies the step; every rank gets its model and state
                lambda i=index, st=state: _reuse_step(i, resolved, run_dir, st, _reuse_from)
            )
            if reused is not None:
                model, state = reused
                replica_sync.sync_model_(model, where=f"after step {index + 1} (reused)")
                say(
                    progress,
                    f"[step {index + 1}/{len(resolved['steps'])}] reused from an identical earlier run",
                )
                continue
            model, state = _run_step(
                model, index, step, resolved, bundle, example_inputs, run_dir, state, progress, runtime
            )
    except NetcompressError:  # a user's error before the first step finished: leave nothing behind
        if runtime.is_main and made is not _EXISTED and not state["finished_steps"]:
            discard_run_dir(run_dir, made)
        raise

    return distributed.on_main(  # exports, measurements and the report: rank 0's; every rank gets the result
        lambda: finish_run(run_dir, resolved, state, model, bundle, example_inputs, progress=progress)
    )


def _plan(resolved: dict[str, Any], *, out_dir: Any, resume: bool, runs_root: Path) -> tuple[Path, Any]:
    run_dir = plan_run_dir(resolved, out_dir=out_dir, resume=resume, runs_root=runs_root)
    return run_dir, (_load_state(run_dir, resolved) if resume else None)  # a changed recipe is refused first


def _plan_sweep(resolved: dict[str, Any], *, out_dir: Any, resume: bool, runs_root: Path) -> tuple[Path, Any]:
    """The sweep's folder, made (rank 0 alone calls this; the other ranks never discard it)."""
    run_dir = plan_run_dir(resolved, out_dir=out_dir, resume=resume, runs_root=runs_root, sweep=True)
    return run_dir, _open_run_dir(run_dir)


_EXISTED = object()  # _open_run_dir's answer for a run folder that was there before this run


def _open_run_dir(run_dir: Path) -> Any:
    """Make the run folder, or tidy an existing one (stale temporary files of a killed write)."""
    if is_run_folder(run_dir):
        remove_stale_tmp(run_dir)
        return _EXISTED
    return create_run_dir(run_dir)


def _run_step(
    model: nn.Module,
    index: int,
    step: dict[str, Any],
    resolved: dict[str, Any],
    bundle: Any,
    example_inputs: torch.Tensor,
    run_dir: Path,
    state: dict[str, Any],
    progress: bool,
    runtime: Any,
) -> tuple[nn.Module, dict[str, Any]]:
    from netcompress.training import seed_everything

    spec = find_method(step["op"], step["method"], where=f"step {index + 1}")
    config = spec.config.from_dict(
        {k: v for k, v in step.items() if k not in ("op", "method", "label")}, where=f"step {index + 1}"
    )
    step_name = f"{index + 1:02d}-{spec.op}-{spec.name}"
    step_dir = run_dir / "steps" / step_name
    if runtime.is_main:
        step_dir.mkdir(parents=True, exist_ok=True)
    step_seed = resolved["seed"] + index + 1
    seed_everything(step_seed)
    loaders = split_loaders(bundle, resolved["data"], step_seed)
    ctx = MethodData(  # choices are made on the validation split; the test split only measures
        train_loader=loaders.train,
        val_loader=loaders.val,
        calib_loader=loaders.calib,
        example_inputs=example_inputs,
        out_dir=step_dir if runtime.is_main else None,  # only rank 0 writes
        num_classes=bundle.num_classes,
        seed=step_seed,
        device=runtime.device,
        progress=progress,
        extras={"step_models": _step_models(run_dir, state)},
    )
    label = step.get("label") or f"{spec.op}/{spec.name}"
    say(progress, f"[step {index + 1}/{len(resolved['steps'])}] {label}")
    started = time.perf_counter()
    try:
        result = spec.fn(model, config, ctx)
    except NonFiniteLossError as exc:  # the recipe step it diverged in, before fit's epoch and step
        raise NonFiniteLossError(f"step {index + 1} ({label}): {exc}") from None
    elapsed_s = time.perf_counter() - started
    model = result.model
    # the contract: rank 0's model on every rank, same structure, checked by checksums
    resynced = replica_sync.sync_model_(model, where=f"after step {index + 1} ({label})")
    if runtime.distributed:
        digest = replica_sync.model_digest(model)
        replicas = {
            "world_size": runtime.world_size,
            "model_digest": digest,
            "resynced_tensors": len(resynced),
        }
        result.summary = {**(result.summary or {}), "replicas": replicas}
    summary = to_jsonable({**(result.summary or {}), "time_s": round(elapsed_s, 3)})
    entry = {"index": index, "dir": f"steps/{step_name}", "label": label, "summary": summary}
    entry.update(has_history=result.history is not None, prefix_hash=_prefix_hash(resolved, index))
    state = distributed.on_main(  # rank 0 writes and measures; every rank gets the new state
        lambda: record_step(
            model, result.history, entry, state, run_dir, loaders.test, example_inputs, resolved
        )
    )
    return model, state


def _step_models(run_dir: Path, state: dict[str, Any]) -> dict[int, Path]:
    """The saved model of every finished step, by step number (from 1): what ``teacher: {step: N}`` reads."""
    return {entry["index"] + 1: run_dir / entry["dir"] / "model.pt" for entry in state["finished_steps"]}


def _prefix_hash(resolved: dict[str, Any], index: int) -> str:
    """Identifies the model after step ``index``: everything that determines it, and how it was measured."""
    body = {k: resolved[k] for k in ("model", "data", "seed", "evaluate")}
    body["steps"] = [{k: v for k, v in s.items() if k != "label"} for s in resolved["steps"][: index + 1]]
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _reuse_step(
    index: int, resolved: dict[str, Any], run_dir: Path, state: dict[str, Any], sources: tuple[Path, ...]
) -> tuple[nn.Module, dict[str, Any]] | None:
    """Copy step ``index`` from an earlier run that finished the very same step; its model and the
    run state (``state`` itself, appended to), or None if no earlier run did."""
    import shutil

    digest = _prefix_hash(resolved, index)
    for source in sources:
        try:
            other = json.loads((source / STATE_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            continue
        for pos, entry in enumerate(other["finished_steps"]):
            if entry.get("prefix_hash") != digest:
                continue
            target = run_dir / entry["dir"]
            if target.exists():
                shutil.rmtree(target)
            tmp = target.with_name(f".{target.name}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(source / entry["dir"], tmp)
            tmp.rename(target)
            label = resolved["steps"][index].get("label") or entry["label"]
            state["finished_steps"].append({**entry, "label": label, "reused_from": str(source)})
            state["stages"].append({**other["stages"][pos + 1], "name": label})
            atomic_write_json(run_dir / STATE_FILE, state)
            return _load_step_model(target / "model.pt"), state
    return None


def _example_inputs(bundle: Any) -> Any:
    from netcompress.core.inputs import map_inputs

    sample = bundle.test[0][0]  # a tensor, or a dict of tensors (token ids and attention mask)
    return map_inputs(sample, lambda t: t.unsqueeze(0).clone())


def _recipe_hash(resolved: dict[str, Any]) -> str:
    body = {
        k: v
        for k, v in resolved.items()
        if k not in ("evaluate", "report", "export", "description", "output", "device")
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _load_state(run_dir: Path, resolved: dict[str, Any]) -> dict[str, Any] | None:
    """The state of the run being resumed (None when it has none yet); a changed recipe is refused."""
    state_path = run_dir / STATE_FILE
    if not state_path.exists():
        return None
    state = json.loads(state_path.read_text())
    if state.get("recipe_hash") != _recipe_hash(resolved):
        raise ConfigError(
            f"--resume: the recipe differs from the one {run_dir} was started with "
            f"(compare with {run_dir / 'recipe.yaml'}); start a new run instead"
        )
    return state


def _load_step_model(path: Path) -> nn.Module:
    model = load_checkpoint(path)
    if not isinstance(model, nn.Module):
        raise CheckpointError(f"{path} does not hold a model; delete the step folder and resume again")
    return model


def _recipe_header(recipe: Any) -> str:
    if isinstance(recipe, (str, Path)):
        return f"# resolved from {recipe}; rerun with: netcompress run {Path(recipe).name} --out <folder>\n"
    return "# resolved recipe\n"
