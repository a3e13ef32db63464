"""Recipe steps ``dynamic/early_exit`` and ``dynamic/slimmable`` (E5's dynamic computation).

Example recipe steps::

    - {op: dynamic, method: early_exit, exits: [features.5], criterion: confidence,
       thresholds: [0.0, 0.5, 0.8, 0.9, 0.99, 1.01], epochs: 5, lr: 0.05, deploy_threshold: 0.9}
    - {op: dynamic, method: slimmable, widths: [0.25, 0.5, 0.75, 1.0], epochs: 5, deploy_width: 0.5}

Both publish ``summary["curves"]["accuracy vs MACs"]`` (one point per threshold or width) and
write their rows to the step folder (``early_exit.json`` / ``widths.json``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from netcompress.core.config import check_choice, check_range
from netcompress.core.errors import ConfigError
from netcompress.core.io import atomic_write_json
from netcompress.core.methods import MethodData, Result, register_method
from netcompress.dynamic.early_exit import EXIT_CRITERIA, HEADS, EarlyExitModel, add_early_exits
from netcompress.dynamic.exit_training import evaluate_early_exit, train_early_exit
from netcompress.dynamic.slimmable import SlimmableModel, extract_width, make_slimmable
from netcompress.dynamic.slimmable_training import (
    SlimmableHook,
    evaluate_widths,
    train_slimmable,
    width_key,
)
from netcompress.training.config import TrainConfig


def _train_config(config: TrainConfig) -> TrainConfig:
    return TrainConfig(**{name: getattr(config, name) for name in TrainConfig.field_names()})


@dataclasses.dataclass
class EarlyExitStepConfig(TrainConfig):
    """Early exit: every TrainConfig field plus where the heads go and how samples leave.

    ``freeze_backbone`` trains the heads only (the model as trained so far stays as it is);
    False trains heads and backbone jointly. ``deploy_threshold`` is the rule the returned
    model uses in eval mode (None: the full network for every sample). ``thresholds`` None
    uses the criterion's default grid.
    """

    exits: list[str] = dataclasses.field(default_factory=list)
    head: str = "pool_linear"
    criterion: str = "confidence"
    thresholds: list[float] | None = None
    exit_weights: list[float] | None = None
    freeze_backbone: bool = False
    deploy_threshold: float | None = None
    max_eval_batches: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.exits:
            raise ConfigError("exits is empty: list the layers after which to attach exit heads")
        check_choice("head", self.head, HEADS.names())
        check_choice("criterion", self.criterion, EXIT_CRITERIA.names())
        for w in self.exit_weights or []:
            check_range("exit_weights entry", w, 0.0)
        if self.exit_weights is not None and len(self.exit_weights) != len(self.exits) + 1:
            raise ConfigError(
                f"exit_weights has {len(self.exit_weights)} entries; it needs {len(self.exits) + 1} "
                "(one per exit plus the final classifier)"
            )
        if self.max_eval_batches is not None:
            check_range("max_eval_batches", self.max_eval_batches, 1)


@dataclasses.dataclass
class SlimmableStepConfig(TrainConfig):
    """Slimmable width: every TrainConfig field plus the widths, their loss weights and the deploy width.

    ``width_weights`` follows ``widths`` sorted narrowest first. ``deploy_width`` extracts a
    plain model at that width at the end (None: return the slimmable model at full width).
    """

    widths: list[float] = dataclasses.field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0])
    width_weights: list[float] | None = None
    sandwich: bool = False
    num_random: int = 1
    inplace_distillation: bool = False
    deploy_width: float | None = None
    max_eval_batches: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.widths:
            raise ConfigError("widths is empty")
        for w in self.widths:
            check_range("widths entry", w, 1e-6, 1.0)
        if 1.0 not in [float(w) for w in self.widths]:
            raise ConfigError(f"widths {self.widths} must include 1.0 (the full model)")
        if self.width_weights is not None and len(self.width_weights) != len(set(self.widths)):
            raise ConfigError(f"width_weights has {len(self.width_weights)} entries for widths {self.widths}")
        for w in self.width_weights or []:
            check_range("width_weights entry", w, 0.0)
        check_range("num_random", self.num_random, 0)
        if self.deploy_width is not None and float(self.deploy_width) not in [float(w) for w in self.widths]:
            raise ConfigError(f"deploy_width={self.deploy_width} is not one of widths {self.widths}")
        if self.max_eval_batches is not None:
            check_range("max_eval_batches", self.max_eval_batches, 1)


def _train_summary(history: Any, config: TrainConfig) -> dict[str, Any]:
    from netcompress.training.steps import summarize

    return summarize(history, config) if history is not None else {"epochs": 0}


def _plot_curve(curve: dict[str, Any], label: str, ctx: MethodData, *, title: str) -> str:
    """Draw the accuracy-vs-MACs curve into the step folder (single-run reports do not draw curves)."""
    from netcompress.reporting import plot_accuracy_vs_params

    points = list(zip(curve["x"], curve["y"]))
    path = plot_accuracy_vs_params(
        {label: points}, ctx.out_dir / "accuracy_vs_macs.png", title=title, xlabel="MACs"
    )
    return str(path)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@register_method("dynamic", "early_exit", config=EarlyExitStepConfig)
def early_exit_step(model: nn.Module, config: EarlyExitStepConfig, ctx: MethodData) -> Result:
    """Attach early-exit heads, train them (or jointly), sweep thresholds: accuracy vs expected MACs."""
    from netcompress.training.steps import run_config

    example = ctx.example_inputs[:1]
    ee = model if isinstance(model, EarlyExitModel) else add_early_exits(
        model, exits=config.exits, example_inputs=example, head=config.head
    )  # fmt: skip
    train_config = run_config(_train_config(config), ctx)
    history = None
    if train_config.epochs > 0:
        history = train_early_exit(
            ee,
            ctx.train_loader,
            config=train_config,
            val_loader=ctx.val_loader,
            weights=config.exit_weights,
            freeze_backbone=config.freeze_backbone,
            hooks=list(ctx.extras.get("hooks", [])),
            checkpoint_dir=ctx.out_dir / "checkpoints",
            resume=True,
        )
    rows = evaluate_early_exit(
        ee,
        ctx.val_loader,
        criterion=config.criterion,
        thresholds=config.thresholds,
        example_inputs=example,
        device=ctx.device,
        max_batches=config.max_eval_batches,
    )
    atomic_write_json(ctx.out_dir / "early_exit.json", rows)
    ee.set_policy(criterion=config.criterion, threshold=config.deploy_threshold)
    curve = {"x": [r["expected_macs"] for r in rows], "y": [r["accuracy"] for r in rows], "x_label": "MACs"}
    plot = _plot_curve(
        curve, f"{config.criterion} threshold", ctx, title="Early exit: accuracy vs expected MACs"
    )
    summary = _train_summary(history, train_config)
    summary.update(
        exits=list(ee.exit_names),
        head=config.head,
        criterion=config.criterion,
        deploy_threshold=config.deploy_threshold,
        params=_params(ee),
        head_params=_params(ee.heads),
        exit_accuracies=rows[0]["exit_accuracies"],
        exit_macs=rows[0]["exit_macs"],
        trade_off=[
            {k: r[k] for k in ("threshold", "accuracy", "expected_macs", "exit_shares")} for r in rows
        ],
        curves={"accuracy vs MACs": curve},
        plot=plot,
    )
    return Result(model=ee, summary=summary, history=history.rows if history is not None else None)


@register_method("dynamic", "slimmable", config=SlimmableStepConfig)
def slimmable_step(model: nn.Module, config: SlimmableStepConfig, ctx: MethodData) -> Result:
    """Train a slimmable (switchable-width) model; accuracy vs MACs per width; optionally extract one width."""
    from netcompress.training.steps import run_config

    slim = model if isinstance(model, SlimmableModel) else make_slimmable(
        model, widths=config.widths, example_inputs=ctx.example_inputs[:1]
    )  # fmt: skip
    train_config = run_config(_train_config(config), ctx)
    history = None
    if train_config.epochs > 0:
        hook = SlimmableHook(
            weights=config.width_weights,
            sandwich=config.sandwich,
            num_random=config.num_random,
            inplace_distillation=config.inplace_distillation,
            label_smoothing=train_config.label_smoothing,
        )
        history = train_slimmable(
            slim,
            ctx.train_loader,
            config=train_config,
            val_loader=ctx.val_loader,
            hook=hook,
            hooks=list(ctx.extras.get("hooks", [])),
            checkpoint_dir=ctx.out_dir / "checkpoints",
            resume=True,
        )
    rows = evaluate_widths(slim, ctx.val_loader, device=ctx.device, max_batches=config.max_eval_batches)
    atomic_write_json(ctx.out_dir / "widths.json", rows)
    curve = {"x": [r["macs"] for r in rows], "y": [r["accuracy"] for r in rows], "x_label": "MACs"}
    summary = _train_summary(history, train_config)
    summary.update(
        widths=list(slim.widths),
        per_width={width_key(r["width"]): r for r in rows},
        deploy_width=config.deploy_width,
        curves={"accuracy vs MACs": curve},
        plot=_plot_curve(curve, "width", ctx, title="Slimmable width: accuracy vs MACs"),
    )
    result_model: nn.Module = slim
    if config.deploy_width is not None:
        result_model = extract_width(slim, config.deploy_width)
        summary["deployed_params"] = _params(result_model)
    else:
        slim.set_width(max(slim.widths))
    return Result(model=result_model, summary=summary, history=history.rows if history is not None else None)
