"""Pruning benchmark on the CIFAR-10 CPU protocol: netcompress vs Torch-Pruning vs torch.nn.utils.prune.

Every method starts from the same cached baseline (``cifar_protocol.train_baseline``) and gets
the same fine-tuning budget (``--finetune-epochs`` epochs of SGD + cosine at ``--finetune-lr``;
network slimming spends ``--slim-sparsity-epochs`` of that budget on sparsity training before
it prunes). Structured methods must reach ``--mac-reduction`` x fewer MACs (Torch-Pruning's
uniform ``pruning_ratio`` is found by bisection to reach the same MAC budget); unstructured
methods mask ``--unstructured-amount`` of all Conv/Linear weights (global L1).


The methods (registry ``METHODS``, ``--methods`` picks some) live in ``pruning_methods.py``.

Latency is timed after fine-tuning on the deployable form (masks removed: zeros stay dense), all
models of one architecture interleaved round by round (``time_alternating``), same threads.
Batch 64 is also timed in the forms a model ships in (``DEPLOY_FORMS``): BatchNorm folded into the
convolutions, and the exported ONNX file in ONNX Runtime (checked against PyTorch before timing);
each speed-up is against the unpruned model in the same form.
Per-method results are cached (``benchmarks/.cache/pruning/``) so a killed run resumes.

    python benchmarks/pruning.py --write-results      # CPU protocol, ~20-25 min on 2 cores
    python benchmarks/pruning.py --quick               # smoke run, < 1 minute after the data cache
    python benchmarks/pruning.py --full                # 50k images, 160 baseline epochs: GPU/long run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cifar_protocol as cp  # noqa: E402
from finetune_recipes import close_hooks, recipe  # noqa: E402
from pruning_joint_rows import FLOAT_FORM, deploy_int8, heldout_loader, is_int8  # noqa: E402
from pruning_latency import latency_methods, latency_table  # noqa: E402
from pruning_methods import (  # noqa: E402
    FINISHERS,
    METHODS,
    Context,
    Pruned,
    PruningBenchConfig,
    bisect_ratio,
    finetune_config,
    macs_of,
)
from pruning_recovery import validation_loader  # noqa: E402
from pruning_report import (  # noqa: E402, F401  (re-exported: pr.table, pr.target_checks, ...)
    COLUMNS,
    DEPLOY_COLUMNS,
    DEPLOY_FORMS,
    DEPLOY_LABELS,
    SECTION,
    accuracy,
    kept_reading,
    report,
    seeds_text,
    table,
    target_checks,
    write_outputs,
)

from netcompress.core import atomic_torch_save  # noqa: E402
from netcompress.core.io import load_checkpoint  # noqa: E402
from netcompress.evaluation import (  # noqa: E402
    evaluate,
    parameter_counts,
    state_dict_size_bytes,
    time_alternating,
)
from netcompress.export import OrtModel, export_onnx  # noqa: E402
from netcompress.quantization import fold_bn  # noqa: E402
from netcompress.training import fit, rng_state, set_rng_state  # noqa: E402

__all__ = ["METHODS", "PruningBenchConfig", "bisect_ratio", "main", "target_checks"]

TIMING_FIELDS = ("latency_rounds", "timing_threads")
# fields added after rows were cached: left out of the key at their defaults, so those rows stay valid
LATER_FIELDS = {"latency_reduction": 2.5, "high_mac_reduction": 8.0, "finetune_recipe": "default"}
# dense_finetune (the unpruned model given the same extra epochs) is left out of the default run only
# to fit the ~25-minute budget on a shared 2-core machine; pass it in --methods when time allows.
DEFAULT_METHODS = (
    "nc_l1_global",
    "nc_slimming",
    "tp_bn_scale",
    "tp_magnitude",
    "torch_unstructured",
    "nc_unstructured",
)


def run_method(
    name: str, base: nn.Module, ctx: Context, *, fresh: bool = False
) -> tuple[nn.Module, dict[str, Any]]:
    """Prune, evaluate, fine-tune for the shared budget, finish, measure; returns (model, row).

    The training loader's shuffle is re-seeded first, so a row does not depend on which rows ran
    before it in the same process (or came from the cache). A structured row without training hooks
    keeps its pruned model (``<name>.pruned.pt``) and fine-tune checkpoints (``<name>.finetune/``) in the
    work folder, so a run killed while fine-tuning resumes there (``fresh``: start again).
    """
    ctx.train_loader.generator.manual_seed(ctx.protocol.seed + ctx.seed)
    stem = name if ctx.seed == 0 else f"{name}-seed{ctx.seed}"
    kept = ctx.work_dir / f"{stem}.pruned.pt"
    if fresh:
        kept.unlink(missing_ok=True)
        shutil.rmtree(ctx.work_dir / f"{stem}.finetune", ignore_errors=True)
    # killed while fine-tuning: the same pruned model, loader state and fine-tune checkpoint
    if kept.exists():
        saved = load_checkpoint(kept)
        pruned = Pruned(saved["model"], epochs_used=saved["epochs_used"], info=saved["info"])
        prune_s, acc_before = saved["prune_s"], saved["acc_before"]
        set_rng_state(saved["rng"], ctx.train_loader)
    else:
        started = time.perf_counter()
        pruned = METHODS.get(name)(base, ctx)
        prune_s = time.perf_counter() - started
        acc_before = evaluate(pruned.model, ctx.test_loader)["accuracy"]
    # a structured row without training hooks resumes: its pruned model (a latency search under load would
    # not find the same one again) and the fine-tune's per-epoch checkpoint are kept under the work folder
    resumable = pruned.kind == "structured" and not pruned.hooks
    if resumable and not kept.exists():
        atomic_torch_save({"model": pruned.model, "epochs_used": pruned.epochs_used, "info": pruned.info,
                           "prune_s": prune_s, "acc_before": acc_before, "rng": rng_state(ctx.train_loader)},
                          kept, sign=True)  # fmt: skip
    started = time.perf_counter()
    epochs = ctx.config.finetune_epochs - pruned.epochs_used
    # the run's fine-tune recipe (finetune_recipes.py): optimiser settings, BN recalibration, distillation
    how = recipe(ctx.config.finetune_recipe)
    loader = how.loader(ctx.train_loader)
    extra_hooks, extra_params = how.prepare(base, pruned.model, loader, ctx.example)
    resume = resumable and not how.distils  # a hint adapter's weights are not in the fine-tune checkpoint
    try:
        fit(pruned.model, loader, config=how.train_config(finetune_config(ctx, epochs=epochs)),
            hooks=[*pruned.hooks, *extra_hooks], extra_parameters=extra_params,
            checkpoint_dir=ctx.work_dir / f"{stem}.finetune" if resume else None, resume=resume)  # fmt: skip
    finally:  # a method's own hint hooks (pruning_vgg_hint.py) come off the model too
        close_hooks([*pruned.hooks, *extra_hooks])
    if ctx.config.finetune_recipe != "default":
        pruned.info["finetune_recipe"] = f"{ctx.config.finetune_recipe}: {how.describe()}"
    finetune_s = time.perf_counter() - started
    model = pruned.model.to("cpu").eval()
    extra = FINISHERS.get(pruned.kind)(model, ctx, name)
    counts = parameter_counts(model)
    row = {
        "method": name,
        **pruned.info,
        "acc_before": acc_before,
        "acc_after": evaluate(model, ctx.test_loader)["accuracy"],
        # the validation split's accuracy (1,000 training images outside the protocol's): choices read this
        "acc_val": evaluate(model, validation_loader(ctx))["accuracy"],
        **counts,
        "macs": macs_of(model, ctx.example),
        "size_bytes": state_dict_size_bytes(model),
        "sparse_size_bytes": None,
        **extra,
        "prune_s": round(prune_s, 1),
        "finetune_s": round(finetune_s, 1),
    }
    if pruned.info.get("deploy") == "int8":  # the row IS its int8 ORT file (pruning_joint_rows.py)
        row.update(acc_after_float=row["acc_after"], acc_val_float=row["acc_val"])
        model, deployed = deploy_int8(model, pruned.info, ctx, name)
        row.update(deployed)
    return model, row


def _cached_run(name: str, base: nn.Module, ctx: Context, *, fresh: bool) -> tuple[nn.Module, dict[str, Any]]:
    path = ctx.work_dir / (f"{name}.pt" if ctx.seed == 0 else f"{name}-seed{ctx.seed}.pt")
    if path.exists() and not fresh:
        saved = load_checkpoint(path)
        return saved["model"], saved["row"]
    model, row = run_method(name, base, ctx, fresh=fresh)
    atomic_torch_save({"model": model, "row": row}, path, sign=True)
    return model, row


def rows_cache_key(config: PruningBenchConfig, baseline_settings: dict[str, Any], *, heldout: bool) -> str:
    """The key of a model's cached rows: the bench settings that change them and the baseline's settings.

    How models are timed (``TIMING_FIELDS``) is left out: a row holds accuracy and sizes, and the
    timing runs again on every call. v2: the training loader is re-seeded before every method (v1
    rows depended on the run order).
    """
    bench = {
        k: v
        for k, v in config.to_dict().items()
        if k not in TIMING_FIELDS and LATER_FIELDS.get(k, object()) != v
    }
    settings = {"bench": bench, "baseline": baseline_settings, "v": 2}
    return cp.cache_key({**settings, "eval": "heldout"} if heldout else settings)


def benchmark_model(
    model_name: str, *, methods: list[str], protocol: cp.ProtocolConfig, config: PruningBenchConfig,
    bundle: Any, fresh: bool, heldout: bool = False, seeds: int = 1, seed_methods: tuple[str, ...] = (),
) -> list[dict[str, Any]]:  # fmt: skip
    """All ``methods`` on one protocol model, then interleaved latency; returns table rows.

    ``heldout``: every accuracy is measured on 5,000 training images outside the protocol's subset
    (``cp.heldout_loader``) instead of the test set - for choosing methods and settings.
    ``seeds``: the methods in ``seed_methods`` are also fine-tuned with ``seeds - 1`` other seeds
    (shuffle order and anything else random in training); their rows get ``acc_seeds``.
    """
    base, base_info = cp.train_baseline(model_name, protocol=protocol, bundle=bundle)
    train_loader, test_loader = cp.loaders(bundle, protocol)
    if heldout:
        test_loader = cp.heldout_loader(protocol)
    example = cp.example_input(bundle)
    base_macs = macs_of(base, example)
    key = rows_cache_key(config, base_info["settings"], heldout=heldout)
    work_dir = cp.CACHE_DIR / "pruning" / protocol.name / f"{model_name}-{key}"
    work_dir.mkdir(parents=True, exist_ok=True)
    ctx = Context(bundle, protocol, config, train_loader, test_loader, example,
                  int(base_macs / config.mac_reduction), work_dir)  # fmt: skip
    base_acc = evaluate(base, test_loader)["accuracy"]
    rows = [{"method": "unpruned", "label": "unpruned baseline", "acc_before": base_acc, "acc_after": base_acc,
             **parameter_counts(base), "macs": base_macs, "size_bytes": state_dict_size_bytes(base),
             "sparse_size_bytes": None, "train_s": base_info["train_time_s"],
             "acc_val": evaluate(base, validation_loader(ctx))["accuracy"]}]  # fmt: skip
    models: dict[str, nn.Module] = {"unpruned": base}
    for name in methods:
        model, row = _cached_run(name, base, ctx, fresh=fresh)
        if name in seed_methods and seeds > 1:
            others = [
                _cached_run(name, base, dataclasses.replace(ctx, seed=s), fresh=fresh)[1]
                for s in range(1, seeds)
            ]
            row["acc_seeds"] = [row["acc_after"]] + [r["acc_after"] for r in others]
        print(
            f"[{model_name}] {name}: {json.dumps({k: v for k, v in row.items() if k != 'arch'})}", flush=True
        )
        models[name], rows = model, [*rows, row]
    repeats = {1: 20, 64: 5} if protocol.name != "quick" else {1: 3, 64: 1}
    # an int8 row (fake-quantized in PyTorch) is timed only as its int8 ORT file: no eager / folded figures
    timings = time_alternating(
        {k: m for k, m in models.items() if not is_int8(m)}, example, rounds=config.latency_rounds,
        threads=config.timing_threads, repeats=repeats,
    )  # fmt: skip
    deployed = time_alternating(
        deployed_forms(models, example, work_dir / "onnx", threads=config.timing_threads), example,
        batch_sizes=(64,), rounds=config.latency_rounds, threads=config.timing_threads, repeats=repeats,
    )  # fmt: skip
    for row in rows:
        row.update(timings.get(row["method"], {}))
        row.setdefault("deployed_form", FLOAT_FORM)
        if "acc_val5k" not in row and not heldout:  # the steadier 5,000-image validation split
            row["acc_val5k"] = evaluate(models[row["method"]], heldout_loader(ctx))["accuracy"]
        for form in DEPLOY_FORMS:
            ms = deployed.get(f"{row['method']}|{form}", {}).get("latency_b64_ms")
            row[f"{form}_b64_ms"] = ms
            row[f"{form}_speedup_b64"] = (
                None if ms is None else deployed[f"unpruned|{form}"]["latency_b64_ms"] / ms
            )
        row["model"] = model_name
        row["mac_reduction"] = base_macs / max(row["macs"], 1)
        if "latency_ms" in row:
            row["speedup_b1"] = timings["unpruned"]["latency_ms"] / row["latency_ms"]
            row["speedup_b64"] = timings["unpruned"]["latency_b64_ms"] / row["latency_b64_ms"]
        if row["sparse_size_bytes"] is not None:
            row["sparse_ratio"] = row["sparse_size_bytes"] / rows[0]["size_bytes"]
    return rows


# How the pruned models would ship, timed at batch 64 besides eager PyTorch: BatchNorm folded into the
# convolutions (``netcompress.quantization.fold_bn``), and the ONNX file run by ONNX Runtime (which folds too).
def deployed_forms(
    models: dict[str, nn.Module], example: torch.Tensor, onnx_dir: Path, *, threads: int
) -> dict[str, nn.Module]:
    """``"<name>|folded"`` and ``"<name>|ort"`` for every model (the ONNX files are written to ``onnx_dir``).

    The exported file is checked against PyTorch (``export_onnx(check=True)``): a pruned model that
    does not export faithfully stops the benchmark instead of being timed."""
    forms: dict[str, nn.Module] = {}
    for name, model in models.items():
        if is_int8(model):  # its int8 file, checked against PyTorch within the int8 tolerance by the export
            path = onnx_dir / f"{name}.int8.onnx"
            export_onnx(model, path, example, int8=True, check=True)
            forms[f"{name}|ort"] = OrtModel(path, threads=threads)
            continue
        forms[f"{name}|folded"] = fold_bn(model)
        path = onnx_dir / f"{name}.onnx"
        summary = export_onnx(model, path, example, check=True)
        if summary["check"]["max_abs_diff"] > 1e-3:
            raise RuntimeError(f"{name}: ONNX Runtime output differs from PyTorch ({summary['check']})")
        forms[f"{name}|ort"] = OrtModel(path, threads=threads)
    return forms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 500 images, 1 epoch (< 1 minute)")
    parser.add_argument("--full", action="store_true", help="50k images, 160 baseline epochs (GPU/long run)")
    parser.add_argument(
        "--models", nargs="+", default=list(cp.PROTOCOL_MODELS), choices=list(cp.PROTOCOL_MODELS)
    )
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=METHODS.names())
    for field in dataclasses.fields(PruningBenchConfig):
        parser.add_argument("--" + field.name.replace("_", "-"), type=type(field.default), default=None)
    parser.add_argument("--fresh", action="store_true", help="ignore cached per-method results")
    parser.add_argument(
        "--latency-mode", action="store_true",
        help="methods reach --latency-reduction x lower measured ORT batch-64 latency (pruning_latency.py)",
    )  # fmt: skip
    parser.add_argument(
        "--baseline-epochs", type=int, default=None, help="baseline epochs (default: protocol's)"
    )
    parser.add_argument("--seeds", type=int, default=1, help="fine-tune seeds for the --seed-methods rows")
    parser.add_argument("--seed-methods", nargs="*", default=[], choices=METHODS.names())
    parser.add_argument(
        "--heldout", action="store_true",
        help="measure accuracy on 5,000 held-out training images, not the test set (to choose methods)",
    )  # fmt: skip
    parser.add_argument("--write-results", action="store_true", help=f"replace {SECTION!r} in RESULTS.md")
    args = parser.parse_args(argv)
    if args.latency_mode and args.methods == list(DEFAULT_METHODS):
        args.methods = latency_methods()
    protocol = cp.protocol_from_flags(quick=args.quick, full=args.full)
    if args.baseline_epochs is not None:  # fewer epochs where time is short (the report says so)
        protocol = dataclasses.replace(protocol, epochs=args.baseline_epochs)
    if args.heldout and args.write_results:
        parser.error("--heldout measures on a validation split: its rows do not go into RESULTS.md")
    defaults = {"finetune_epochs": 1, "slim_sparsity_epochs": 0, "latency_rounds": 1} if args.quick else {}
    if args.full:
        defaults = {
            "finetune_epochs": 40,
            "slim_sparsity_epochs": 10,
            "finetune_lr": 0.01,
            "slim_lambda": 1e-4,
        }
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(PruningBenchConfig)}
    config = PruningBenchConfig(**{**defaults, **{k: v for k, v in overrides.items() if v is not None}})
    torch.set_num_threads(config.train_threads)  # baselines train on their own count (protocol.train_threads)
    bundle = cp.load_data(protocol)
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    sections = []
    for index, model_name in enumerate(args.models):
        model_rows = benchmark_model(model_name, methods=args.methods, protocol=protocol, config=config,
                                     bundle=bundle, fresh=args.fresh, heldout=args.heldout,
                                     seeds=args.seeds, seed_methods=tuple(args.seed_methods))  # fmt: skip
        rows += model_rows
        checks = "\n".join(f"- {line}" for line in target_checks(model_rows, config))
        deploy = cp.markdown_table(model_rows, DEPLOY_COLUMNS)
        if args.latency_mode:
            sections.append(f"### {model_name}: ORT batch-64 latency, reduction, MACs, accuracy\n\n"
                            f"{latency_table(model_rows)}")  # fmt: skip
        sections.append(
            f"### {model_name}\n\n{table(model_rows)}\n\nBatch-64 latency of the forms a model ships in "
            f"(speed-up against the unpruned model in the same form):\n\n{deploy}\n\n"
            f"Targets, as measured:\n\n{checks}"
        )
        # written after every model, so a long run that is stopped still leaves its finished tables
        body = report(argv, protocol, config, bundle, sections, seconds=time.perf_counter() - started)
        if index < len(args.models) - 1:
            body = f"**Partial**: {', '.join(args.models[index + 1 :])} still running.\n\n{body}"
        write_outputs(body, rows, protocol, write_results=args.write_results, heldout=args.heldout)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
