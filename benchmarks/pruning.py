"""Pruning benchmark on the CIFAR-10 CPU protocol: netcompress vs Torch-Pruning vs torch.nn.utils.prune.

Every method starts from the same cached baseline (``cifar_protocol.train_baseline``) and gets
the same fine-tuning budget (``--finetune-epochs`` epochs of SGD + cosine at ``--finetune-lr``;
network slimming spends ``--slim-sparsity-epochs`` of that budget on sparsity training before
it prunes). Structured methods must reach ``--mac-reduction`` x fewer MACs (Torch-Pruning's
uniform ``pruning_ratio`` is found by bisection to reach the same MAC budget); unstructured
methods mask ``--unstructured-amount`` of all Conv/Linear weights (global L1).

Methods (registry ``METHODS``; ``--methods`` picks some):

- ``dense_finetune``: the unpruned baseline trained for the same budget (the fair "unpruned" reference);
- ``nc_l1_global``: ``prune_to_target(target="macs", importance="l1", method="global")``;
- ``nc_slimming``: sparsity training with ``BNL1Penalty``, then ``slim`` at the share of channels
  that reaches the MAC budget;
- ``nc_sensitivity``: ``prune_to_target(method="sensitivity")`` (per-layer rates from accuracy drops);
- ``nc_l1_global_recal`` / ``nc_l1_global_cost_recal`` / ``nc_l2_uniform(_recal)``: ``prune_to_target`` with
  ``method="global"`` / ``"global_cost"`` (importance per MAC saved) / ``"uniform"`` (one ratio for every
  group, like Torch-Pruning); ``_recal`` = ``recalibrate_bn`` on 10 training batches before fine-tuning;
- ``tp_magnitude_recal``: ``tp_magnitude`` plus our BN recalibration (reported next to the plain one);
- ``tp_bn_scale`` / ``tp_magnitude``: Torch-Pruning ``MetaPruner`` with ``BNScaleImportance`` /
  ``MagnitudeImportance`` at their documented defaults (local, p=2), final classifier ignored;
- ``torch_unstructured`` / ``nc_unstructured``: global L1 unstructured masks; the netcompress one
  is also saved as a sparse ``.ncz`` file.

Latency is timed after fine-tuning on the deployable form (masks removed: zeros stay dense), all
models of one architecture interleaved round by round (``time_alternating``), same threads.
Per-method results are cached (``benchmarks/.cache/pruning/``) so a killed run resumes.

    python benchmarks/pruning.py --write-results      # CPU protocol, ~20-25 min on 2 cores
    python benchmarks/pruning.py --quick               # smoke run, < 1 minute after the data cache
    python benchmarks/pruning.py --full                # 50k images, 160 baseline epochs: GPU/long run
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cifar_protocol as cp  # noqa: E402

from netcompress.core import Config, Registry, atomic_torch_save, atomic_write_text, check_range  # noqa: E402
from netcompress.core.io import load_checkpoint  # noqa: E402
from netcompress.distillation import SoftTargetDistillation  # noqa: E402
from netcompress.evaluation import count_macs, evaluate, parameter_counts, state_dict_size_bytes  # noqa: E402
from netcompress.pruning import (  # noqa: E402
    BNL1Penalty,
    MaskKeeper,
    prune_channels,
    prune_to_target,
    prune_unstructured,
    recalibrate_bn,
    remove_masks,
    save_sparse,
    slim,
)
from netcompress.training import TrainConfig, fit  # noqa: E402

SECTION = "## Pruning (CIFAR-10 CPU protocol)"
# a constant, not a PruningBenchConfig field: the config is part of the cache key of every cached row
RECALIBRATE_BN_BATCHES = 10
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


@dataclasses.dataclass
class PruningBenchConfig(Config):
    """Budget and targets shared by every method.

    Example:
        >>> PruningBenchConfig(finetune_epochs=5, mac_reduction=3.5).slim_sparsity_epochs
        2
    """

    mac_reduction: float = 3.5
    # 5 epochs, not 10-15: at a load average of 6 on 2 cores one full-size VGG epoch takes ~60 s
    finetune_epochs: int = 5
    finetune_lr: float = 0.02
    unstructured_amount: float = 0.9
    # a short sparsity phase needs a large lambda: the paper's 1e-4 over 160 epochs moves gamma by
    # ~lr*lambda*steps = 0.6; 5e-2 over 2 epochs (158 steps, mean lr 0.01) moves it by ~0.08
    slim_lambda: float = 5e-2
    slim_sparsity_epochs: int = 2
    latency_rounds: int = 5
    timing_threads: int = 1

    def __post_init__(self) -> None:
        check_range("mac_reduction", self.mac_reduction, 1.0)
        check_range("finetune_epochs", self.finetune_epochs, 0)
        check_range("slim_sparsity_epochs", self.slim_sparsity_epochs, 0, self.finetune_epochs)
        check_range("unstructured_amount", self.unstructured_amount, 0.0, 1.0)
        check_range("latency_rounds", self.latency_rounds, 1)


@dataclasses.dataclass
class Context:
    """What a method needs: the baseline, data, an example input and the MAC budget."""

    bundle: Any
    protocol: cp.ProtocolConfig
    config: PruningBenchConfig
    train_loader: Any
    test_loader: Any
    example: torch.Tensor
    mac_budget: int
    work_dir: Path
    seed: int = 0  # added to the protocol's seed for everything a method trains (a second fine-tune seed)


@dataclasses.dataclass
class Pruned:
    """A method's pruned model before fine-tuning, its training hooks and how to finish it."""

    model: nn.Module
    kind: str = "structured"  # structured | torch_masks | nc_masks: picks the finisher
    hooks: tuple[Any, ...] = ()
    epochs_used: int = 0  # fine-tuning epochs already spent (slimming's sparsity training)
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


MethodFn = Callable[[nn.Module, Context], Pruned]
METHODS: Registry[MethodFn] = Registry("pruning benchmark method")
FINISHERS: Registry[Callable[[nn.Module, Context, str], dict[str, Any]]] = Registry("finisher")


def macs_of(model: nn.Module, example: torch.Tensor) -> int:
    return int(count_macs(model, example)[0])


def bisect_ratio(
    prune_at: Callable[[float], nn.Module], fits: Callable[[nn.Module], bool], *, hi: float = 0.95
) -> float:
    """Smallest ratio in [0, hi] (to 1e-3) whose pruned model fits the budget; fewer channels = fewer MACs."""
    lo = 0.0
    if not fits(prune_at(hi)):
        raise cp.ConfigError(f"the MAC budget cannot be reached even at ratio {hi}")
    while hi - lo > 1e-3:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if fits(prune_at(mid)) else (mid, hi)
    return hi


def finetune_config(ctx: Context, *, epochs: int) -> TrainConfig:
    return TrainConfig(
        epochs=epochs,
        lr=ctx.config.finetune_lr,
        momentum=ctx.protocol.momentum,
        weight_decay=ctx.protocol.weight_decay,
        schedule="cosine",
        seed=ctx.protocol.seed + ctx.seed,
        device=ctx.protocol.device,
        progress=False,
        keep_best=False,  # no selection on the test set
    )


@METHODS.register("dense_finetune")
def _dense(base: nn.Module, ctx: Context) -> Pruned:
    return Pruned(copy.deepcopy(base), info={"label": "unpruned + same fine-tune"})


@METHODS.register("nc_l1_global")
def _nc_l1(base: nn.Module, ctx: Context) -> Pruned:
    small, summary = prune_to_target(
        base, ctx.example, target="macs", reduction=ctx.config.mac_reduction, importance="l1"
    )
    return Pruned(
        small, info={"label": "netcompress L1, global (prune_to_target)", "arch": summary["architecture"]}
    )


def with_recalibration(pruned: Pruned, ctx: Context) -> Pruned:
    """Re-estimate BatchNorm statistics (``recalibrate_bn``) on the training data; records the accuracy before.

    Part of netcompress's structured pruning (the recipe steps' ``recalibrate_bn_batches``); given
    to a Torch-Pruning model only in a separately named row, so its documented default is reported too.
    """
    acc_stale = evaluate(pruned.model, ctx.test_loader)["accuracy"]
    summary = recalibrate_bn(pruned.model, ctx.train_loader, num_batches=RECALIBRATE_BN_BATCHES)
    pruned.info.update(acc_stale_bn=acc_stale, bn_recalibration=summary)
    return pruned


def _nc_auto(strategy: str, importance: str, label: str, *, recalibrate: bool, round_to: int = 1) -> MethodFn:
    def _run(base: nn.Module, ctx: Context) -> Pruned:
        small, summary = prune_to_target(
            base, ctx.example, target="macs", reduction=ctx.config.mac_reduction, importance=importance,
            method=strategy, round_to=round_to,
        )  # fmt: skip
        info = {"label": label, "arch": summary["architecture"], "search_value": summary["search_value"]}
        pruned = Pruned(small, info=info)
        return with_recalibration(pruned, ctx) if recalibrate else pruned

    return _run


NC_AUTO = {
    "nc_l1_global_recal": ("global", "l1", "netcompress L1, global + BN recal."),
    "nc_l1_global_cost_recal": ("global_cost", "l1", "netcompress L1, global per MAC + BN recal."),
    "nc_l2_uniform": ("uniform", "l2", "netcompress L2, uniform (no BN recal.)"),
    "nc_l2_uniform_recal": ("uniform", "l2", "netcompress L2, uniform + BN recal."),
}
for _name, (_strategy, _importance, _label) in NC_AUTO.items():
    METHODS.register(_name, _nc_auto(_strategy, _importance, _label, recalibrate=_name.endswith("_recal")))
# kept channels rounded up to multiples of 8: odd widths (17 channels at full resolution) ran ~35 % slower
# at batch 64 than Torch-Pruning's 16 for the same MACs (oneDNN blocks channels by 8/16)
for _name, _strategy, _importance in [("nc_l2_uniform_r8_recal", "uniform", "l2"),
                                      ("nc_l1_global_r8_recal", "global", "l1")]:  # fmt: skip
    _label = f"netcompress {_importance.upper()}, {_strategy}, channels x8 + BN recal."
    METHODS.register(_name, _nc_auto(_strategy, _importance, _label, recalibrate=True, round_to=8))


@METHODS.register("nc_sensitivity")
def _nc_sensitivity(base: nn.Module, ctx: Context) -> Pruned:
    small, summary = prune_to_target(
        base, ctx.example, target="macs", reduction=ctx.config.mac_reduction, importance="l1",
        method="sensitivity", loader=ctx.train_loader, max_batches=4,
    )  # fmt: skip
    return Pruned(small, info={"label": "netcompress L1, sensitivity rates", "arch": summary["architecture"]})


@METHODS.register("nc_slimming")
def _nc_slimming(base: nn.Module, ctx: Context) -> Pruned:
    sparse = copy.deepcopy(base)
    epochs = ctx.config.slim_sparsity_epochs
    penalty = BNL1Penalty(lambda_=ctx.config.slim_lambda)
    history = fit(sparse, ctx.train_loader, config=finetune_config(ctx, epochs=epochs), hooks=[penalty])
    percent = bisect_ratio(
        lambda p: slim(sparse, ctx.example, percent=p)[0], lambda m: macs_of(m, ctx.example) <= ctx.mac_budget
    )
    small, summary = slim(sparse, ctx.example, percent=percent)
    info = {
        "label": f"netcompress slimming ({epochs} ep. BN-L1 {ctx.config.slim_lambda:g}, then slim)",
        "percent": percent,
        "bn_sparsity": [row.get("bn_sparsity") for row in history.rows],
        "arch": summary["architecture"],
    }
    return Pruned(small, epochs_used=epochs, info=info)


def _tp() -> Any:
    """Torch-Pruning, imported when a peer row runs: the peer is an optional extra (pip install -e ".[bench]")."""
    try:
        import torch_pruning
    except ModuleNotFoundError:
        raise SystemExit(
            'Torch-Pruning is not installed: pip install -e ".[bench]" (or skip its rows with --methods)'
        ) from None
    return torch_pruning


def _tp_method(importance: Callable[[], Any], label: str) -> MethodFn:
    def _run(base: nn.Module, ctx: Context) -> Pruned:
        def prune_at(ratio: float) -> nn.Module:
            model = copy.deepcopy(base).eval()
            final = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
            pruner = _tp().pruner.MetaPruner(
                model, ctx.example, importance=importance(), pruning_ratio=ratio, ignored_layers=[final]
            )
            pruner.step()
            return model

        # MACs stop falling monotonically near ratio 1 (Torch-Pruning then leaves whole groups alone)
        ratio = bisect_ratio(prune_at, lambda m: macs_of(m, ctx.example) <= ctx.mac_budget, hi=0.8)
        return Pruned(prune_at(ratio), info={"label": label, "pruning_ratio": ratio})

    return _run


METHODS.register(
    "tp_bn_scale",
    _tp_method(lambda: _tp().importance.BNScaleImportance(), "Torch-Pruning BNScaleImportance (local)"),
)
METHODS.register(
    "tp_magnitude",
    _tp_method(
        lambda: _tp().importance.MagnitudeImportance(p=2), "Torch-Pruning MagnitudeImportance p=2 (local)"
    ),
)


@METHODS.register("tp_magnitude_recal")
def _tp_magnitude_recal(base: nn.Module, ctx: Context) -> Pruned:
    pruned = METHODS.get("tp_magnitude")(base, ctx)
    pruned.info["label"] = "Torch-Pruning MagnitudeImportance p=2 (local) + our BN recal."
    return with_recalibration(pruned, ctx)


# KD from the unpruned model during the same fine-tuning epochs; T and alpha as the distillation
# benchmark (fixed there before any run), not tuned here
KD_TEMPERATURE, KD_ALPHA = 4.0, 0.9


def kd_hook(base: nn.Module) -> SoftTargetDistillation:
    return SoftTargetDistillation(copy.deepcopy(base).eval(), temperature=KD_TEMPERATURE, alpha=KD_ALPHA)


def _with_kd(method: str) -> MethodFn:
    def _run(base: nn.Module, ctx: Context) -> Pruned:
        pruned = METHODS.get(method)(base, ctx)
        pruned.hooks = (*pruned.hooks, kd_hook(base))
        pruned.info["label"] += " + KD from the unpruned model"
        return pruned

    return _run


def _progressive(importance: str, strategy: str, *, stages: int, kd: bool) -> MethodFn:
    """The one-shot method's final widths (``prune_to_target`` on the baseline, channels x8), reached in
    ``stages`` equal steps per group with the importance re-scored on the current model each time; one
    epoch at the constant fine-tune lr between steps, the rest of the budget (cosine) after the last."""

    def _run(base: nn.Module, ctx: Context) -> Pruned:
        _, target = prune_to_target(
            base, ctx.example, target="macs", reduction=ctx.config.mac_reduction, importance=importance,
            method=strategy, round_to=8,
        )  # fmt: skip
        widths = {
            g["producers"][0]: (g["channels"], g["channels_after"]) for g in target["groups"] if g["prunable"]
        }
        model, hooks = copy.deepcopy(base), [kd_hook(base)] if kd else []
        stages_here = max(1, min(stages, ctx.config.finetune_epochs))  # a 1-epoch smoke budget: one step
        between = dataclasses.replace(finetune_config(ctx, epochs=1), schedule="constant")
        current = dict.fromkeys(widths, 0)
        for stage in range(1, stages_here + 1):
            if stage > 1:
                fit(model, ctx.train_loader, config=between, hooks=hooks)
            ratios = {}
            for layer, (before, after) in widths.items():
                now = before - current[layer]
                keep = before - round((before - after) * stage / stages_here)
                ratios[layer] = (now - keep) / now
                current[layer] = before - keep
            model = prune_channels(model, ctx.example, ratios=ratios, importance=importance)
            recalibrate_bn(model, ctx.train_loader, num_batches=RECALIBRATE_BN_BATCHES)
        label = f"netcompress {importance}, {strategy} widths x8, in {stages_here} steps" + (
            " + KD" if kd else ""
        )
        return Pruned(model, hooks=tuple(hooks), epochs_used=stages_here - 1, info={"label": label})

    return _run


for _name, (_strategy, _importance) in {
    "nc_group_l2_uniform_r8_recal": ("uniform", "group_l2"),
    "nc_group_l2_global_r8_recal": ("global", "group_l2"),
    "nc_group_l2_uniform_recal": ("uniform", "group_l2"),
}.items():
    _x8 = "_r8" in _name
    _label = f"netcompress group L2, {_strategy}{', channels x8' if _x8 else ''} + BN recal."
    METHODS.register(
        _name, _nc_auto(_strategy, _importance, _label, recalibrate=True, round_to=8 if _x8 else 1)
    )
for _name in (
    "nc_l1_global_r8_recal",
    "nc_group_l2_uniform_r8_recal",
    "nc_group_l2_global_r8_recal",
    "tp_magnitude",
):
    METHODS.register(f"{_name}_kd", _with_kd(_name))
for _strategy in ("uniform", "global"):
    for _kd in (False, True):
        _name = f"nc_group_l2_{_strategy}_3steps" + ("_kd" if _kd else "")
        METHODS.register(_name, _progressive("group_l2", _strategy, stages=3, kd=_kd))


def _prunable(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@METHODS.register("torch_unstructured")
def _torch_unstructured(base: nn.Module, ctx: Context) -> Pruned:
    model = copy.deepcopy(base)
    amount = ctx.config.unstructured_amount
    torch_prune.global_unstructured(
        _prunable(model), pruning_method=torch_prune.L1Unstructured, amount=amount
    )
    return Pruned(model, kind="torch_masks", info={"label": f"torch.nn.utils.prune global L1 {amount:.0%}"})


@METHODS.register("nc_unstructured")
def _nc_unstructured(base: nn.Module, ctx: Context) -> Pruned:
    model = copy.deepcopy(base)
    amount = ctx.config.unstructured_amount
    prune_unstructured(model, amount=amount, method="l1", scope="global")
    label = f"netcompress unstructured global L1 {amount:.0%}"
    return Pruned(model, kind="nc_masks", hooks=(MaskKeeper(),), info={"label": label})


@FINISHERS.register("structured")
def _finish_structured(model: nn.Module, ctx: Context, name: str) -> dict[str, Any]:
    return {}


@FINISHERS.register("torch_masks")
def _finish_torch_masks(model: nn.Module, ctx: Context, name: str) -> dict[str, Any]:
    with torch.no_grad():
        for module, param in _prunable(model):
            torch_prune.remove(module, param)  # weight = weight_orig * mask, as a plain parameter
            # orig * mask leaves -0.0 where orig < 0; .ncz keeps -0.0 bit-exactly as a non-zero value,
            # so canonicalise (-0.0 + 0.0 == +0.0) for the file to see the zeros
            getattr(module, param).add_(0.0)
    return {"sparse_size_bytes": save_sparse(model, ctx.work_dir / f"{name}.ncz")["size_bytes"]}


@FINISHERS.register("nc_masks")
def _finish_nc_masks(model: nn.Module, ctx: Context, name: str) -> dict[str, Any]:
    sparse = save_sparse(model, ctx.work_dir / f"{name}.ncz")
    remove_masks(model)
    return {"sparse_size_bytes": sparse["size_bytes"]}


def run_method(name: str, base: nn.Module, ctx: Context) -> tuple[nn.Module, dict[str, Any]]:
    """Prune, evaluate, fine-tune for the shared budget, finish, measure; returns (model, row).

    The training loader's shuffle is re-seeded first, so a row does not depend on which rows ran
    before it in the same process (or came from the cache).
    """
    ctx.train_loader.generator.manual_seed(ctx.protocol.seed + ctx.seed)
    started = time.perf_counter()
    pruned = METHODS.get(name)(base, ctx)
    prune_s = time.perf_counter() - started
    acc_before = evaluate(pruned.model, ctx.test_loader)["accuracy"]
    started = time.perf_counter()
    epochs = ctx.config.finetune_epochs - pruned.epochs_used
    fit(pruned.model, ctx.train_loader, config=finetune_config(ctx, epochs=epochs), hooks=list(pruned.hooks))
    finetune_s = time.perf_counter() - started
    model = pruned.model.to("cpu").eval()
    extra = FINISHERS.get(pruned.kind)(model, ctx, name)
    counts = parameter_counts(model)
    row = {
        "method": name,
        **pruned.info,
        "acc_before": acc_before,
        "acc_after": evaluate(model, ctx.test_loader)["accuracy"],
        **counts,
        "macs": macs_of(model, ctx.example),
        "size_bytes": state_dict_size_bytes(model),
        "sparse_size_bytes": None,
        **extra,
        "prune_s": round(prune_s, 1),
        "finetune_s": round(finetune_s, 1),
    }
    return model, row


def _cached_run(name: str, base: nn.Module, ctx: Context, *, fresh: bool) -> tuple[nn.Module, dict[str, Any]]:
    path = ctx.work_dir / (f"{name}.pt" if ctx.seed == 0 else f"{name}-seed{ctx.seed}.pt")
    if path.exists() and not fresh:
        saved = load_checkpoint(path)
        return saved["model"], saved["row"]
    model, row = run_method(name, base, ctx)
    atomic_torch_save({"model": model, "row": row}, path)
    return model, row


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
    # v2: the training loader is re-seeded before every method (v1 rows depended on the run order)
    settings = {"bench": config.to_dict(), "baseline": base_info["settings"], "v": 2}
    key = cp.cache_key({**settings, "eval": "heldout"} if heldout else settings)
    work_dir = cp.CACHE_DIR / "pruning" / protocol.name / f"{model_name}-{key}"
    work_dir.mkdir(parents=True, exist_ok=True)
    ctx = Context(bundle, protocol, config, train_loader, test_loader, example,
                  int(base_macs / config.mac_reduction), work_dir)  # fmt: skip
    base_acc = evaluate(base, test_loader)["accuracy"]
    rows = [{"method": "unpruned", "label": "unpruned baseline", "acc_before": base_acc, "acc_after": base_acc,
             **parameter_counts(base), "macs": base_macs, "size_bytes": state_dict_size_bytes(base),
             "sparse_size_bytes": None, "train_s": base_info["train_time_s"]}]  # fmt: skip
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
    timings = cp.time_alternating(
        models, example, rounds=config.latency_rounds, threads=config.timing_threads,
        repeats={1: 20 if protocol.name != "quick" else 3, 64: 5 if protocol.name != "quick" else 1},
    )  # fmt: skip
    for row in rows:
        row.update(timings[row["method"]])
        row["model"] = model_name
        row["mac_reduction"] = base_macs / max(row["macs"], 1)
        row["speedup_b1"] = timings["unpruned"]["latency_ms"] / row["latency_ms"]
        row["speedup_b64"] = timings["unpruned"]["latency_b64_ms"] / row["latency_b64_ms"]
        if row["sparse_size_bytes"] is not None:
            row["sparse_ratio"] = row["sparse_size_bytes"] / rows[0]["size_bytes"]
    return rows


COLUMNS: list[cp.Column] = [
    ("method", "label", cp.fmt_text),
    ("acc before FT %", "acc_before", cp.fmt_percent),
    ("acc after FT %", "acc_after", cp.fmt_percent),
    ("seeds: mean ± sd %", "acc_seeds_text", cp.fmt_text),
    ("params", "params", cp.fmt_number()),
    ("non-zero", "nonzero_params", cp.fmt_number()),
    ("MMACs", "mmacs", cp.fmt_number(2)),
    ("MAC red. x", "mac_reduction", cp.fmt_number(2)),
    ("dense file KB", "size_kb", cp.fmt_number(1)),
    (".ncz file KB", "sparse_kb", cp.fmt_number(1)),
    ("b1 ms", "latency_ms", cp.fmt_number(3)),
    ("b1 speed-up", "speedup_b1", cp.fmt_number(2)),
    ("b64 ms", "latency_b64_ms", cp.fmt_number(1)),
    ("b64 speed-up", "speedup_b64", cp.fmt_number(2)),
]


def accuracy(row: dict[str, Any]) -> float:
    """The row's accuracy after fine-tuning: the mean over its seeds when it has several."""
    seeds = row.get("acc_seeds") or [row["acc_after"]]
    return sum(seeds) / len(seeds)


def seeds_text(row: dict[str, Any]) -> str | None:
    seeds = row.get("acc_seeds")
    if not seeds:
        return None
    mean = sum(seeds) / len(seeds)
    sd = (sum((a - mean) ** 2 for a in seeds) / max(len(seeds) - 1, 1)) ** 0.5
    return f"{100 * mean:.2f} ± {100 * sd:.2f} (n={len(seeds)})"


def table(rows: list[dict[str, Any]]) -> str:
    view = [
        {**r, "mmacs": r["macs"] / 1e6, "size_kb": r["size_bytes"] / 1e3,
         "sparse_kb": None if r.get("sparse_size_bytes") is None else r["sparse_size_bytes"] / 1e3,
         "acc_seeds_text": seeds_text(r)}
        for r in rows
    ]  # fmt: skip
    return cp.markdown_table(view, COLUMNS)


def target_checks(rows: list[dict[str, Any]], config: PruningBenchConfig) -> list[str]:
    """The issue's targets, checked on the measured rows (one line each, PASS/MISS with numbers).

    Accuracy is the mean over a row's seeds where it has several (``accuracy``)."""
    by = {r["method"]: r for r in rows}
    lines = []
    # every structured netcompress row; peers include Torch-Pruning given our BN recalibration (the stronger)
    ours = [r for r in rows if r["method"].startswith("nc_") and r["method"] != "nc_unstructured"]
    peers = [r for r in rows if r["method"].startswith("tp_")]
    if ours:
        best = max(ours, key=accuracy)
        if peers:
            peer = max(peers, key=accuracy)
            gap = 100 * (accuracy(best) - accuracy(peer))
            lines.append(f"best netcompress structured ({best['method']}) vs best Torch-Pruning ({peer['method']}): "
                         f"{gap:+.2f} points (target >= +2): {'PASS' if gap >= 2 else 'MISS'}")  # fmt: skip
        references = [("unpruned baseline", by["unpruned"])]
        if "dense_finetune" in by:
            references.append(("dense_finetune", by["dense_finetune"]))
        for name, reference in references:
            drop = 100 * (accuracy(reference) - accuracy(best))
            lines.append(f"{best['method']} vs {name}: {drop:.2f} points lower (target <= 1): "
                         f"{'PASS' if drop <= 1 else 'MISS'}")  # fmt: skip
        for r in ours:
            need = 0.7 * r["mac_reduction"]
            lines.append(f"{r['method']} batch-64 speed-up {r['speedup_b64']:.2f}x vs 0.7 x {r['mac_reduction']:.2f} "
                         f"= {need:.2f}x: {'PASS' if r['speedup_b64'] >= need else 'MISS'}")  # fmt: skip
    for r in rows:
        if r.get("sparse_ratio") is not None:
            lines.append(f"{r['method']} .ncz file = {r['sparse_ratio']:.1%} of the dense unpruned file "
                         f"(target <= 25%): {'PASS' if r['sparse_ratio'] <= 0.25 else 'MISS'}")  # fmt: skip
    return lines


def report(
    argv: list[str] | None, protocol: cp.ProtocolConfig, config: PruningBenchConfig, bundle: Any,
    sections: list[str], *, seconds: float,
) -> str:  # fmt: skip
    """The Markdown body of the RESULTS.md section: command, machine, protocol, one table per model."""
    machine = cp.machine_description()
    command = "python benchmarks/pruning.py " + " ".join(sys.argv[1:] if argv is None else argv)
    return "\n\n".join([
        f"Command: `{command.strip()}` ({time.strftime('%Y-%m-%d')}), {seconds:.0f} s of wall time "
        "(baselines loaded from the cache if present).",
        cp.describe_machine(machine, timing_threads=config.timing_threads),
        f"Protocol `{protocol.name}`: CIFAR-10, {len(bundle.train)} training images, {len(bundle.test)} test "
        f"images; baselines {protocol.epochs} epochs SGD+cosine (VGG lr 0.05, ResNet-20 lr 0.1), wd 5e-4, "
        f"batch {protocol.batch_size}. Every method then gets {config.finetune_epochs} epochs at lr "
        f"{config.finetune_lr} (cosine) in total. Settings: `{json.dumps(config.to_dict())}`.",
        *sections,
    ])  # fmt: skip


def write_outputs(
    body: str,
    rows: list[dict[str, Any]],
    protocol: cp.ProtocolConfig,
    *,
    write_results: bool,
    heldout: bool = False,
) -> None:
    out_dir = cp.CACHE_DIR / "pruning" / (protocol.name + ("-heldout" if heldout else ""))
    atomic_write_text(out_dir / "results.md", body + "\n")
    payload = {"machine": cp.machine_description(), "rows": rows}
    atomic_write_text(out_dir / "results.json", json.dumps(payload, indent=1) + "\n")
    if write_results:
        cp.write_results_section(SECTION, body + kept_reading())


def kept_reading(path: Path = cp.RESULTS_PATH) -> str:
    """The hand-written ``### Reading`` part of the current section, kept when the tables are rewritten."""
    text = path.read_text() if path.exists() else ""
    match = re.search(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", text, re.DOTALL | re.MULTILINE)
    reading = match and re.search(r"^### Reading\n.*", match.group(0), re.DOTALL | re.MULTILINE)
    return "\n\n" + reading.group(0).strip() if reading else ""


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
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for training (1: two spin against each other under load)",
    )
    parser.add_argument("--fresh", action="store_true", help="ignore cached per-method results")
    parser.add_argument("--seeds", type=int, default=1, help="fine-tune seeds for the --seed-methods rows")
    parser.add_argument("--seed-methods", nargs="*", default=[], choices=METHODS.names())
    parser.add_argument(
        "--heldout", action="store_true",
        help="measure accuracy on 5,000 held-out training images, not the test set (to choose methods)",
    )  # fmt: skip
    parser.add_argument("--write-results", action="store_true", help=f"replace {SECTION!r} in RESULTS.md")
    args = parser.parse_args(argv)
    protocol = cp.protocol_from_flags(quick=args.quick, full=args.full)
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
    torch.set_num_threads(args.threads)
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
        sections.append(f"### {model_name}\n\n{table(model_rows)}\n\nTargets, as measured:\n\n{checks}")
        # written after every model, so a long run that is stopped still leaves its finished tables
        body = report(argv, protocol, config, bundle, sections, seconds=time.perf_counter() - started)
        if index < len(args.models) - 1:
            body = f"**Partial**: {', '.join(args.models[index + 1 :])} still running.\n\n{body}"
        write_outputs(body, rows, protocol, write_results=args.write_results, heldout=args.heldout)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
