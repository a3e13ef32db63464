"""Training early-exit models: the multi-exit loss, :class:`EarlyExitConfig`, the method
``dynamic/early_exit`` and its verb :func:`with_early_exits`.

Two ways to train an :class:`~netcompress.dynamic.early_exit.EarlyExitModel` with ``fit``:

- ``fit(model, loader, hooks=[EarlyExitHook(weights=...)])`` (what :func:`train_early_exit`
  does): the model hands ``fit`` the final logits, so ``train_acc`` is the last exit's, and
  the hook replaces the loss by the weighted sum of every exit's cross entropy; history rows
  gain ``exit<i>_train_acc``.
- ``fit(model, loader, loss_fn=MultiExitLoss(weights=...))``: the plain loss-function route;
  the model returns the list of logits, so ``fit`` cannot report ``train_acc`` (None).

Example::

    ee = add_early_exits(model, exits=["features.5"], example_inputs=x)
    history = train_early_exit(ee, train_loader, config=TrainConfig(epochs=3), weights=[0.5, 1.0])
    rows = evaluate_early_exit(ee, test_loader, criterion="confidence", thresholds=[0.5, 0.9, 1.01])

In a recipe::

    - {op: dynamic, method: early_exit, exits: [features.5], criterion: confidence,
       thresholds: [0.0, 0.5, 0.8, 0.9, 0.99, 1.01], epochs: 5, lr: 0.05, deploy_threshold: 0.9}
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from netcompress.core.config import check_choice, check_range
from netcompress.core.errors import ConfigError, UnsupportedModelError
from netcompress.core.inputs import call_model, output_tensor
from netcompress.core.io import atomic_write_json
from netcompress.core.methods import MethodData, Result, apply, register_method
from netcompress.dynamic.curves import accuracy_vs_macs, param_count, plot_curve, train_summary
from netcompress.dynamic.early_exit import EarlyExitModel, as_early_exit
from netcompress.dynamic.exit_calibration import choose_threshold
from netcompress.dynamic.exit_criteria import DEFAULT_THRESHOLDS, EXIT_CRITERIA
from netcompress.dynamic.exit_ensemble import attach_exit_ensemble
from netcompress.dynamic.exit_evaluation import collect_exit_logits, exit_path_macs, trade_off_rows
from netcompress.dynamic.exit_points import add_early_exits, head_kinds
from netcompress.dynamic.exit_thresholds import choose_exit_thresholds
from netcompress.training.config import TrainConfig


def _check_weights(weights: Sequence[float] | None, num_exits: int | None) -> list[float] | None:
    if weights is None:
        return None
    weights = [float(w) for w in weights]
    for w in weights:
        check_range("exit weight", w, 0.0)
    if num_exits is not None and len(weights) != num_exits:
        raise ConfigError(f"{len(weights)} exit weights for {num_exits} exits (heads + final classifier)")
    return weights


class MultiExitLoss:
    """``sum_i weights[i] * CE(exit_logits[i], targets)``; weights default to 1 for every exit.

    Usable as ``fit``'s ``loss_fn`` for a model returning the list of exit logits.

    Example:
        >>> loss = MultiExitLoss(weights=[0.3, 1.0])([logits_head, logits_final], targets)
    """

    def __init__(self, *, weights: Sequence[float] | None = None, label_smoothing: float = 0.0) -> None:
        check_range("label_smoothing", label_smoothing, 0.0, 1.0)
        self.weights = _check_weights(weights, None)
        self.label_smoothing = float(label_smoothing)

    def per_exit(self, exit_logits: Sequence[torch.Tensor], targets: torch.Tensor) -> list[torch.Tensor]:
        """The unweighted cross entropy of each exit."""
        return [F.cross_entropy(lg, targets, label_smoothing=self.label_smoothing) for lg in exit_logits]

    def __call__(
        self, exit_logits: Sequence[torch.Tensor] | torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        if isinstance(exit_logits, torch.Tensor):
            exit_logits = [exit_logits]
        weights = self.weights or [1.0] * len(exit_logits)
        if len(weights) != len(exit_logits):
            raise ConfigError(f"{len(weights)} exit weights for {len(exit_logits)} exits")
        losses = self.per_exit(exit_logits, targets)
        return sum(w * loss for w, loss in zip(weights, losses))


class EarlyExitHook:
    """``fit`` hook training every exit: loss = weighted sum of the exits' cross entropies.

    ``epoch_start`` switches the model to hand ``fit`` its final logits (so ``train_acc`` is
    measured) and keep the others for :meth:`loss`; with ``freeze_backbone`` the backbone's
    BatchNorm layers stay in eval mode (freeze its parameters before ``fit``, as
    :func:`train_early_exit` does). ``epoch_end`` reports ``exit<i>_train_acc`` per exit.
    With a ``teacher`` (e.g. the unmodified model) every exit is distilled from it: exit ``i``'s
    term becomes ``alpha * T^2 * KL(teacher || exit_i) + (1 - alpha) * CE_i`` (``T`` = ``temperature``).

    Example:
        >>> fit(ee, loader, hooks=[EarlyExitHook(weights=[0.5, 0.5, 1.0])], config=cfg)
        >>> fit(ee, loader, hooks=[EarlyExitHook(teacher=model, alpha=0.5)], config=cfg)
    """

    def __init__(
        self,
        *,
        weights: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        freeze_backbone: bool = False,
        teacher: nn.Module | None = None,
        temperature: float = 4.0,
        alpha: float = 0.5,
    ) -> None:
        check_range("temperature", temperature, 1e-6)
        check_range("alpha", alpha, 0.0, 1.0)
        self.criterion = MultiExitLoss(weights=weights, label_smoothing=label_smoothing)
        self.freeze_backbone = bool(freeze_backbone)
        self.teacher, self.temperature, self.alpha = teacher, float(temperature), float(alpha)
        self._correct: list[int] = []
        self._seen = 0

    def epoch_start(self, model: nn.Module, epoch: int) -> None:
        as_early_exit(model).stash_exit_logits = True
        if self.freeze_backbone:
            model.segments.eval()
        self._correct, self._seen = [0] * model.num_exits, 0

    def loss(self, model: nn.Module, inputs: Any, outputs: Any, targets: torch.Tensor, loss: torch.Tensor):
        exit_logits = as_early_exit(model).pop_exit_logits()
        if exit_logits is None:
            raise UnsupportedModelError(
                "EarlyExitHook: the model kept no exit logits (was it in train mode?)"
            )
        for i, logits in enumerate(exit_logits):
            self._correct[i] += int((logits.detach().argmax(dim=1) == targets).sum())
        self._seen += len(targets)
        if self.teacher is None:
            return self.criterion(exit_logits, targets)
        from netcompress.distillation.losses import soft_target_loss  # distillation area, when used

        self.teacher.eval()
        with torch.no_grad():
            teacher_logits = output_tensor(call_model(self.teacher, inputs))
        weights = self.criterion.weights or [1.0] * len(exit_logits)
        hard = self.criterion.per_exit(exit_logits, targets)
        soft = [soft_target_loss(lg, teacher_logits, temperature=self.temperature) for lg in exit_logits]
        a = self.alpha
        return sum(w * (a * s + (1 - a) * h) for w, s, h in zip(weights, soft, hard, strict=True))

    def epoch_end(self, model: nn.Module, epoch: int) -> dict[str, float]:
        as_early_exit(model).stash_exit_logits = False
        return {f"exit{i}_train_acc": c / max(self._seen, 1) for i, c in enumerate(self._correct)}


def train_early_exit(
    model: EarlyExitModel,
    train_loader: Iterable,
    *,
    config: Any = None,
    val_loader: Iterable | None = None,
    weights: Sequence[float] | None = None,
    freeze_backbone: bool = False,
    hooks: Sequence[Any] = (),
    checkpoint_dir: Any = None,
    resume: bool = False,
    teacher: nn.Module | None = None,
    temperature: float = 4.0,
    alpha: float = 0.5,
) -> Any:
    """Train ``model`` IN PLACE with the multi-exit loss through ``fit``; return the History.

    ``freeze_backbone=True`` trains only the heads (backbone parameters frozen, its BN
    statistics kept), the usual route for a pretrained model; False trains jointly. A
    ``teacher`` distils into every exit (see :class:`EarlyExitHook`).

    Example:
        >>> history = train_early_exit(ee, loader, config=TrainConfig(epochs=2), weights=[0.5, 1.0])
        >>> history.last["exit0_train_acc"], history.last["train_acc"]
    """
    from netcompress.training.loop import fit  # training area, imported when used

    model = as_early_exit(model)
    _check_weights(weights, model.num_exits)
    label_smoothing = getattr(config, "label_smoothing", 0.0) if config is not None else 0.0
    hook = EarlyExitHook(
        weights=weights,
        label_smoothing=label_smoothing,
        freeze_backbone=freeze_backbone,
        teacher=teacher,
        temperature=temperature,
        alpha=alpha,
    )
    frozen = [p for p in model.segments.parameters() if p.requires_grad] if freeze_backbone else []
    for p in frozen:
        p.requires_grad_(False)
    try:
        return fit(
            model,
            train_loader,
            val_loader=val_loader,
            config=config,
            hooks=[hook, *hooks],
            checkpoint_dir=checkpoint_dir,
            resume=resume,
        )
    finally:
        model.stash_exit_logits = False
        for p in frozen:
            p.requires_grad_(True)


@dataclasses.dataclass
class EarlyExitConfig(TrainConfig):
    """Early exit: every TrainConfig field plus where the heads go and how samples leave.

    ``freeze_backbone`` trains the heads only (the model as trained so far stays as it is);
    False trains heads and backbone jointly. ``deploy_threshold`` is the rule the returned
    model uses in eval mode (None: the full network for every sample); or let the validation split
    choose it: ``max_accuracy_drop`` (the fewest average MACs within that accuracy drop from the
    final exit, a fraction) or ``max_macs_fraction`` (the most accurate threshold within that share
    of the full path's MACs); with ``per_exit_thresholds`` one threshold per head under that bound
    (:func:`~netcompress.dynamic.exit_thresholds.choose_exit_thresholds`). ``thresholds`` None uses
    the criterion's default grid. ``cascade`` / ``ensemble``: Zero Time Waste
    (:mod:`~netcompress.dynamic.exit_ensemble`; the ensemble is fitted on the training loader).

    Example:
        >>> EarlyExitConfig(exits=["features.5"], epochs=5, deploy_threshold=0.9)
    """

    exits: list[str] = dataclasses.field(default_factory=list)
    head: str | list[str] = "pool_linear"  # one kind for every exit, or one kind per exit (in the order of exits)
    criterion: str = "confidence"
    thresholds: list[float] | None = None
    exit_weights: list[float] | None = None
    freeze_backbone: bool = False
    deploy_threshold: float | None = None
    max_accuracy_drop: float | None = None
    max_macs_fraction: float | None = None
    per_exit_thresholds: bool = False
    max_eval_batches: int | None = None
    cascade: bool = False  # Zero Time Waste: heads read the previous head's logits
    ensemble: bool = False  # ... and exits decide by a geometric ensemble fitted on the training split
    ensemble_final: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.exits:
            raise ConfigError("exits is empty: list the layers after which to attach exit heads")
        head_kinds(self.head, self.exits)  # one known kind, or one per exit
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
        bounds = [
            k
            for k in ("deploy_threshold", "max_accuracy_drop", "max_macs_fraction")
            if getattr(self, k) is not None
        ]
        if len(bounds) > 1:
            raise ConfigError(f"{' and '.join(bounds)} both choose the threshold: give one")
        for key in ("max_accuracy_drop", "max_macs_fraction"):
            if getattr(self, key) is not None:
                check_range(key, getattr(self, key), 0.0)
        if self.per_exit_thresholds and self.max_accuracy_drop is None and self.max_macs_fraction is None:
            raise ConfigError(
                "per_exit_thresholds needs max_accuracy_drop or max_macs_fraction to choose them"
            )


@register_method("dynamic", "early_exit", config=EarlyExitConfig)
def early_exit_method(model: nn.Module, config: EarlyExitConfig, data: MethodData) -> Result:
    """Attach early-exit heads, train them (or jointly), sweep thresholds: accuracy vs expected MACs.

    An EarlyExitModel given is trained in place; any other model is copied by ``add_early_exits``.
    With ``data.out_dir`` the rows go to ``early_exit.json`` and the curve to a plot there.
    """
    from netcompress.training.supervised import run_config

    data.require("train_loader", "val_loader", "example_inputs", method="dynamic/early_exit")
    example = data.example_inputs[:1]
    ee = model if isinstance(model, EarlyExitModel) else add_early_exits(
        model, exits=config.exits, example_inputs=example, head=config.head, cascade=config.cascade
    )  # fmt: skip
    train_config = run_config(config.train_config(), data)
    history = None
    if train_config.epochs > 0:
        history = train_early_exit(
            ee,
            data.train_loader,
            config=train_config,
            val_loader=data.val_loader,
            weights=config.exit_weights,
            freeze_backbone=config.freeze_backbone,
            hooks=list(data.extras.get("hooks", [])),
            checkpoint_dir=data.out_dir / "checkpoints" if data.out_dir is not None else None,
            resume=data.out_dir is not None,
        )
    if config.ensemble:
        attach_exit_ensemble(ee, data.train_loader, include_final=config.ensemble_final,
                             device=data.device, max_batches=config.max_eval_batches)  # fmt: skip
    exit_logits, labels = collect_exit_logits(
        ee, data.val_loader, device=data.device, max_batches=config.max_eval_batches
    )
    exit_macs = exit_path_macs(ee, example.to(data.device))
    thresholds = list(
        DEFAULT_THRESHOLDS[config.criterion] if config.thresholds is None else config.thresholds
    )
    rows = trade_off_rows(
        exit_logits, labels, exit_macs=exit_macs, criterion=config.criterion, thresholds=thresholds
    )
    exit_accuracies = [float((lg.argmax(dim=1) == labels).float().mean()) for lg in exit_logits]
    for row in rows:
        row.update(exit_accuracies=exit_accuracies, exit_macs=list(exit_macs), num_samples=len(labels))
    calibration, threshold = None, config.deploy_threshold
    if config.max_accuracy_drop is not None or config.max_macs_fraction is not None:
        # chosen on the validation split, never the test split
        choose = choose_exit_thresholds if config.per_exit_thresholds else choose_threshold
        calibration = choose(
            exit_logits,
            labels,
            exit_macs=exit_macs,
            criterion=config.criterion,
            max_accuracy_drop=config.max_accuracy_drop,
            max_macs_fraction=config.max_macs_fraction,
        )
        threshold = calibration["thresholds" if config.per_exit_thresholds else "threshold"]
    if data.out_dir is not None:
        atomic_write_json(data.out_dir / "early_exit.json", rows)
    ee.set_policy(criterion=config.criterion, threshold=threshold)
    curve = accuracy_vs_macs(rows, "expected_macs")
    title = "Early exit: accuracy vs expected MACs"
    plot = plot_curve(curve, f"{config.criterion} threshold", data.out_dir, title=title)
    summary = train_summary(history, train_config)
    summary.update(
        exits=list(ee.exit_names),
        head=config.head,
        criterion=config.criterion,
        deploy_threshold=threshold,
        calibration=calibration,
        params=param_count(ee),
        head_params=param_count(ee.heads),
        exit_accuracies=rows[0]["exit_accuracies"],
        exit_macs=rows[0]["exit_macs"],
        trade_off=[
            {k: r[k] for k in ("threshold", "accuracy", "expected_macs", "exit_shares")} for r in rows
        ],
        curves={"accuracy vs MACs": curve},
        plot=plot,
    )
    return Result(model=ee, summary=summary, history=history.rows if history is not None else None)


def with_early_exits(
    model: nn.Module,
    train_loader: Iterable,
    *,
    val_loader: Iterable,
    example_inputs: torch.Tensor,
    config: EarlyExitConfig | None = None,
    hooks: Sequence[Any] = (),
    **fields: Any,
) -> tuple[EarlyExitModel, dict[str, Any]]:
    """The method ``dynamic/early_exit`` as a verb: a new EarlyExitModel (trained, its exit rule
    set to ``deploy_threshold``) and the summary with the accuracy-vs-expected-MACs trade-off.

    ``fields`` are :class:`EarlyExitConfig` fields (``exits``, ``epochs``, ``criterion``, ...);
    they override ``config``. The input model is not modified.

    Example:
        >>> ee, summary = with_early_exits(model, train, val_loader=val, example_inputs=x,
        ...                               exits=["features.5"], epochs=3, deploy_threshold=0.9)
        >>> summary["trade_off"][0]["expected_macs"]
    """
    base = config.to_dict() if config is not None else {}
    cfg = EarlyExitConfig.from_dict({**base, **fields}, where="with_early_exits")
    if isinstance(model, EarlyExitModel):
        model = copy.deepcopy(model)  # the method trains an EarlyExitModel in place
    data = MethodData(
        train_loader=train_loader,
        val_loader=val_loader,
        example_inputs=example_inputs,
        seed=cfg.seed,
        device=cfg.device,
        extras={"hooks": list(hooks)},
    )
    result = apply(model, cfg, data)
    return result.model, result.summary
