"""Iterative channel pruning: keep a share of channels, fine-tune, repeat (E3's pruning-rate lines).

Each round removes ``1 - keep_per_round`` of the prunable channels (physically), then
fine-tunes for a few epochs; the accuracy and parameter count after every round form the
curve E3 plots, one line per rate (``netcompress run`` with a sweep over ``keep_per_round``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from netcompress.core.config import Config, check_choice, check_range
from netcompress.core.methods import MethodData, Result, register_method
from netcompress.pruning.channel import SCOPES, ChannelPruneConfig, channel_prune
from netcompress.pruning.importance import IMPORTANCES
from netcompress.training.config import TrainConfig


@dataclasses.dataclass
class IterativeChannelConfig(Config):
    """Rounds of prune-then-fine-tune; ``keep_per_round`` = 0.9 keeps 90% of channels each round."""

    keep_per_round: float = 0.9
    rounds: int = 5
    importance: str = "l1"
    scope: str = "local"
    ignore: list[str] = dataclasses.field(default_factory=list)
    min_channels: int = 1
    # BatchNorm statistics re-estimated on this many training batches after every prune (0 = off)
    recalibrate_bn_batches: int = 10
    train: dict[str, Any] = dataclasses.field(default_factory=lambda: {"epochs": 2, "lr": 0.01})

    def __post_init__(self) -> None:
        check_range("keep_per_round", self.keep_per_round, 0.0, 1.0)
        check_choice("importance", self.importance, IMPORTANCES.names())
        check_choice("scope", self.scope, SCOPES)
        check_range("min_channels", self.min_channels, 1)
        check_range("rounds", self.rounds, 1)
        check_range("recalibrate_bn_batches", self.recalibrate_bn_batches, 0)
        TrainConfig.from_dict(self.train, where="train")


def prune_channels_iteratively(
    model: nn.Module, ctx: MethodData, *, config: IterativeChannelConfig
) -> tuple[nn.Module, list[dict[str, Any]], list[dict[str, Any]]]:
    """Run the rounds; returns the final model, one row per round, and the training history."""
    from netcompress.evaluation import evaluate
    from netcompress.pruning.bn_recalibration import recalibrate_after_pruning
    from netcompress.pruning.finetune import run_train_config
    from netcompress.training import fit

    train_cfg = run_train_config(TrainConfig.from_dict(config.train, where="train"), ctx)
    start = evaluate(model, ctx.val_loader)
    rounds = [{"round": 0, "params": _params(model), "accuracy": start["accuracy"]}]
    history: list[dict[str, Any]] = []
    for r in range(1, config.rounds + 1):
        prune = ChannelPruneConfig(
            ratio=1.0 - config.keep_per_round, importance=config.importance, scope=config.scope,
            ignore=config.ignore, min_channels=config.min_channels, round_to=1,
        )  # fmt: skip
        model, summary = channel_prune(model, ctx.example_inputs, prune)
        recal = recalibrate_after_pruning(
            model, train_loader=ctx.train_loader, num_batches=config.recalibrate_bn_batches
        )
        pruned_acc = evaluate(model, ctx.val_loader)["accuracy"]
        rows = fit(model, ctx.train_loader, val_loader=ctx.val_loader, config=train_cfg).rows
        history += [{**row, "round": r, "epoch": len(history) + i} for i, row in enumerate(rows)]
        accuracy = evaluate(model, ctx.val_loader)["accuracy"]
        rounds.append(
            {
                "round": r,
                "params": _params(model),
                "accuracy_pruned": pruned_acc,
                "accuracy": accuracy,
                "macs": summary.get("macs_after"),
                "bn_recalibration_batches": recal["batches"],
            }
        )
    return model, rounds, history


@register_method("prune", "iterative_channel", config=IterativeChannelConfig)
def iterative_channel(model: nn.Module, config: IterativeChannelConfig, ctx: MethodData) -> Result:
    """Iterative channel pruning: keep a share per round, fine-tune, repeat; accuracy-vs-params curve."""
    model, rounds, history = prune_channels_iteratively(model, ctx, config=config)
    curve = {
        "x": [r["params"] for r in rounds],
        "y": [r["accuracy"] for r in rounds],
        "x_label": "parameters",
    }
    summary = {
        "keep_per_round": config.keep_per_round,
        "rounds": rounds,
        "params_before": rounds[0]["params"],
        "params_after": rounds[-1]["params"],
        "curves": {"validation accuracy vs parameters": curve},
    }
    return Result(model=model, summary=summary, history=history)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
