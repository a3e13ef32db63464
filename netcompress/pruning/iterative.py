"""Iterative prune-and-fine-tune (Han et al. 2015) and one-shot unstructured pruning.

Each round prunes ``amount_per_round`` of the *remaining* weights (sparsity after round r is
``1 - (1 - k)^r``), then fine-tunes through :func:`netcompress.training.fit` with a
:class:`MaskKeeper`; one shot is a single round. The summary holds sparsity and accuracy per round.

Example:
    >>> summary = prune_iterative_(model, train_loader, val_loader=val_loader,
    ...                            config=IterativeConfig(amount_per_round=0.5, rounds=3))
    >>> [r["sparsity"] for r in summary["rounds"]]
    [0.5, 0.75, 0.875]

Example recipe step::

    - {op: prune, method: iterative, amount_per_round: 0.5, rounds: 3, epochs_per_round: 2}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from torch import nn

from netcompress.core.config import check_choice, check_range
from netcompress.core.methods import MethodData, Result, register_method
from netcompress.pruning.finetune import accuracy, check_train, finetune, method_train_config
from netcompress.pruning.finetune import train_config as as_train_config
from netcompress.pruning.schedules import selection
from netcompress.pruning.sparse_storage import write_sparse
from netcompress.pruning.unstructured import SCORES, UnstructuredConfig, WeightSelection, mask_lowest_


@dataclasses.dataclass
class IterativeConfig(WeightSelection):
    """``prune/iterative`` and :func:`prune_iterative_`: prune ``amount_per_round`` of what remains, then
    fine-tune ``epochs_per_round`` epochs (``train``: the other TrainConfig fields), ``rounds`` times.

    Example:
        >>> IterativeConfig(amount_per_round=0.5, rounds=3)   # 50%, 75%, 87.5%
    """

    amount_per_round: float = 0.2
    rounds: int = 3
    epochs_per_round: int = 1
    criterion: str = "l1"  # the score: a name in unstructured.SCORES
    train: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("amount_per_round", self.amount_per_round, 0.0, 1.0)
        check_range("rounds", self.rounds, 1)
        check_range("epochs_per_round", self.epochs_per_round, 0)
        check_choice("criterion", self.criterion, SCORES.names())
        check_train(self.train)


def prune_iterative_(
    model: nn.Module,
    train_loader: Iterable | None,
    *,
    config: IterativeConfig | None = None,
    prune: UnstructuredConfig | None = None,
    val_loader: Iterable | None = None,
    train_config: Any = None,
) -> dict[str, Any]:
    """Prune and fine-tune ``model`` IN PLACE round by round; summary per round.

    ``train_config`` (TrainConfig or dict) replaces ``config.train`` with ``config.epochs_per_round``
    epochs. ``train_loader=None`` (or 0 epochs) skips fine-tuning, which makes one round a plain
    one-shot prune with accuracy measured. ``prune`` overrides the weight selection and score.

    Example:
        >>> s = prune_iterative_(model, train_loader, val_loader=val_loader,
        ...                      config=IterativeConfig(amount_per_round=0.5, rounds=2))
        >>> [(r["sparsity"], r["accuracy"]) for r in s["rounds"]]
    """
    config = config or IterativeConfig()
    prune = prune or selection(config, config.criterion)
    if train_config is None:
        tc = as_train_config(config.train, epochs=config.epochs_per_round)
    else:
        tc = as_train_config(train_config)
    rounds: list[dict[str, Any]] = []
    history: list[dict[str, Any]] = []
    for r in range(1, config.rounds + 1):
        target = 1.0 - (1.0 - config.amount_per_round) ** r
        summary = mask_lowest_(model, prune.replace(amount=target))
        row = {
            "round": r,
            "target_sparsity": round(target, 6),
            "sparsity": summary["global_sparsity"],
            "nonzero_params": summary["nonzero_params"],
            "accuracy_pruned": accuracy(model, val_loader),
        }
        history.extend(finetune(model, train_loader, val_loader, tc, round_index=r))
        row["accuracy"] = accuracy(model, val_loader)
        rounds.append(row)
    return {
        "method": prune.method,
        "scope": prune.scope,
        "amount_per_round": config.amount_per_round,
        "rounds": rounds,
        "sparsity": rounds[-1]["sparsity"],
        "accuracy": rounds[-1]["accuracy"],
        "history": history,
    }


def prune_one_shot_(
    model: nn.Module,
    train_loader: Iterable | None = None,
    *,
    prune: UnstructuredConfig | None = None,
    val_loader: Iterable | None = None,
    train_config: Any = None,
) -> dict[str, Any]:
    """Prune ``model`` IN PLACE to ``prune.amount`` at once, then fine-tune if a loader is given.

    Example:
        >>> prune_one_shot_(model, train_loader, prune=UnstructuredConfig(amount=0.8))["rounds"][0]
    """
    prune = prune or UnstructuredConfig()
    config = IterativeConfig(amount_per_round=prune.amount, rounds=1)
    return prune_iterative_(
        model, train_loader, config=config, prune=prune, val_loader=val_loader,
        train_config=as_train_config(train_config),
    )  # fmt: skip


def prune_iterative(model: nn.Module, train_loader: Iterable | None, **kwargs: Any) -> dict[str, Any]:
    """Alias of :func:`prune_iterative_` (prunes and fine-tunes ``model`` in place, returns the summary)."""
    return prune_iterative_(model, train_loader, **kwargs)


def prune_one_shot(model: nn.Module, train_loader: Iterable | None = None, **kwargs: Any) -> dict[str, Any]:
    """Alias of :func:`prune_one_shot_` (prunes ``model`` in place, returns the summary)."""
    return prune_one_shot_(model, train_loader, **kwargs)


@register_method("prune", "iterative", config=IterativeConfig)
def iterative(model: nn.Module, config: IterativeConfig, data: MethodData) -> Result:
    """Iterative prune-and-fine-tune rounds (Han et al.)."""
    tc = method_train_config(config.train, data, epochs=config.epochs_per_round)
    summary = prune_iterative_(
        model, data.train_loader, config=config, val_loader=data.val_loader, train_config=tc
    )
    history = summary.pop("history")
    summary = write_sparse(model, summary, data.out_dir, save=config.save_sparse)
    return Result(model=model, summary=summary, history=history)
