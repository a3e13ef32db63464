"""Training slimmable models (weighted sum of losses over widths) and measuring every width;
:class:`SlimmableConfig`, the method ``dynamic/slimmable`` and its verb :func:`with_slimmable_width`.

:class:`SlimmableHook` plugs into ``fit``: ``fit`` runs the batch at the widest width and
computes its loss; the hook runs the same batch at the other widths and returns
``sum_w weight_w * loss_w``, so one backward pass trains every width (slimmable networks,
Yu et al. 2019). With ``sandwich=True`` each batch uses the widest, the narrowest and
``num_random`` random middle widths ("sandwich rule", Yu & Huang 2019); with
``inplace_distillation=True`` the narrower widths learn the widest width's soft predictions
instead of the labels. Works on any model :func:`make_slimmable` accepts (residual ResNets
included); ``recalibrate_batches`` re-estimates each width's BN statistics after training.

Example::

    slim = make_slimmable(model, widths=(0.25, 0.5, 1.0), example_inputs=x)
    fit(slim, loader, hooks=[SlimmableHook(weights=[1.0, 1.0, 1.0])], config=TrainConfig(epochs=3))
    rows = evaluate_widths(slim, test_loader)       # width, accuracy, macs, params per width

In a recipe::

    - {op: dynamic, method: slimmable, widths: [0.25, 0.5, 0.75, 1.0], epochs: 5, sandwich: true,
       inplace_distillation: true, deploy_width: 0.5}        # recipes/e5_dynamic_width.yaml
"""

from __future__ import annotations

import copy
import dataclasses
import random
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from netcompress.core.config import check_range
from netcompress.core.errors import ConfigError, UnsupportedModelError
from netcompress.core.inputs import call_model, output_tensor
from netcompress.core.io import atomic_write_json
from netcompress.core.methods import MethodData, Result, apply, register_method
from netcompress.dynamic.curves import accuracy_vs_macs, param_count, plot_curve, train_summary
from netcompress.dynamic.slimmable import SlimmableModel, extract_width, make_slimmable, recalibrate_widths_
from netcompress.training.config import TrainConfig


def _as_slimmable(model: nn.Module) -> SlimmableModel:
    if not isinstance(model, SlimmableModel):
        raise UnsupportedModelError(f"expected a SlimmableModel (make_slimmable), got {type(model).__name__}")
    return model


def width_key(width: float) -> str:
    """The history/summary key fragment of a width: ``0.5`` -> ``"w0.5"``.

    Example:
        >>> width_key(0.25)
        'w0.25'
    """
    return f"w{float(width):g}"


class SlimmableHook:
    """``fit`` hook: loss = ``sum_w weights[w] * loss at width w`` over the model's widths.

    ``weights`` lists one weight per width of the model, narrowest first (default all 1.0).
    ``epoch_end`` reports ``w<width>_train_acc`` for every width trained that epoch.

    Example:
        >>> fit(slim, loader, hooks=[SlimmableHook(sandwich=True, num_random=1)], config=cfg)
    """

    def __init__(
        self,
        *,
        weights: Sequence[float] | None = None,
        sandwich: bool = False,
        num_random: int = 1,
        inplace_distillation: bool = False,
        label_smoothing: float = 0.0,
    ) -> None:
        check_range("num_random", num_random, 0)
        check_range("label_smoothing", label_smoothing, 0.0, 1.0)
        self.weights = None if weights is None else [float(w) for w in weights]
        for w in self.weights or []:
            check_range("width weight", w, 0.0)
        self.sandwich = bool(sandwich)
        self.num_random = int(num_random)
        self.inplace_distillation = bool(inplace_distillation)
        self.label_smoothing = float(label_smoothing)
        self._correct: dict[float, int] = {}
        self._seen: dict[float, int] = {}

    def _weight_of(self, model: SlimmableModel) -> dict[float, float]:
        if self.weights is None:
            return dict.fromkeys(model.widths, 1.0)
        if len(self.weights) != len(model.widths):
            raise ConfigError(f"{len(self.weights)} width weights for widths {list(model.widths)}")
        return dict(zip(model.widths, self.weights))

    def _widths_this_batch(self, model: SlimmableModel) -> list[float]:
        others = list(model.widths[:-1])  # the widest ran in fit's own forward
        if not self.sandwich or len(others) <= 1:
            return others
        middle = others[1:]
        # Python's RNG, seeded by fit's seed_everything: repeatable runs pick the same widths
        return [others[0], *sorted(random.sample(middle, min(self.num_random, len(middle))))]

    def epoch_start(self, model: nn.Module, epoch: int) -> None:
        model = _as_slimmable(model)
        model.set_width(max(model.widths))
        self._correct = dict.fromkeys(model.widths, 0)
        self._seen = dict.fromkeys(model.widths, 0)

    def _count(self, width: float, logits: torch.Tensor, targets: torch.Tensor) -> None:
        self._correct[width] += int((logits.detach().argmax(dim=1) == targets).sum())
        self._seen[width] += len(targets)

    def loss(self, model: nn.Module, inputs: Any, outputs: Any, targets: torch.Tensor, loss: torch.Tensor):
        model = _as_slimmable(model)
        weights = self._weight_of(model)
        widest = max(model.widths)
        outputs = output_tensor(outputs)  # a ModelOutput / tuple of a Hugging Face model: its logits
        self._count(widest, outputs, targets)
        total = weights[widest] * loss
        soft_targets = F.softmax(outputs.detach(), dim=1) if self.inplace_distillation else None
        try:
            for width in self._widths_this_batch(model):
                model.set_width(width)
                logits = output_tensor(call_model(model, inputs))
                self._count(width, logits, targets)
                if soft_targets is not None:
                    term = F.cross_entropy(logits, soft_targets)
                else:
                    term = F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
                total = total + weights[width] * term
        finally:
            model.set_width(widest)
        return total

    def epoch_end(self, model: nn.Module, epoch: int) -> dict[str, float]:
        return {
            f"{width_key(w)}_train_acc": self._correct[w] / self._seen[w] for w in self._seen if self._seen[w]
        }


def train_slimmable(
    model: SlimmableModel,
    train_loader: Iterable,
    *,
    config: Any = None,
    val_loader: Iterable | None = None,
    hook: SlimmableHook | None = None,
    hooks: Sequence[Any] = (),
    checkpoint_dir: Any = None,
    resume: bool = False,
) -> Any:
    """Train every width of ``model`` IN PLACE through ``fit``; return the History.

    ``train_acc``/``val_acc`` are the widest width's; rows carry ``w<width>_train_acc``.

    Example:
        >>> history = train_slimmable(slim, loader, config=TrainConfig(epochs=3), val_loader=test)
    """
    from netcompress.training.loop import fit  # training area, imported when used

    model = _as_slimmable(model)
    label_smoothing = getattr(config, "label_smoothing", 0.0) if config is not None else 0.0
    hook = hook or SlimmableHook(label_smoothing=label_smoothing)
    model.set_width(max(model.widths))
    return fit(
        model,
        train_loader,
        val_loader=val_loader,
        config=config,
        hooks=[hook, *hooks],
        checkpoint_dir=checkpoint_dir,
        resume=resume,
    )


def evaluate_widths(
    model: SlimmableModel,
    loader: Iterable,
    *,
    widths: Sequence[float] | None = None,
    device: str = "cpu",
    max_batches: int | None = None,
) -> list[dict[str, Any]]:
    """Accuracy, loss, MACs and parameters (of the extracted model) at each width, narrowest first.

    The model's current width is restored afterwards.

    Example:
        >>> [(r["width"], r["macs"], r["accuracy"]) for r in evaluate_widths(slim, test_loader)]
    """
    from netcompress.evaluation import count_macs, evaluate

    model = _as_slimmable(model)
    previous = model.width
    rows = []
    try:
        for width in sorted(widths or model.widths):
            model.set_width(width)
            metrics = evaluate(model, loader, device=device, max_batches=max_batches)
            example = model.example_inputs(1, device)
            rows.append(
                {
                    "width": float(model.width),
                    "accuracy": metrics["accuracy"],
                    "loss": metrics["loss"],
                    "macs": count_macs(model, example)[0],
                    "params": sum(p.numel() for p in extract_width(model, width).parameters()),
                }
            )
    finally:
        model.set_width(previous)
    return rows


@dataclasses.dataclass
class SlimmableConfig(TrainConfig):
    """Slimmable width: every TrainConfig field plus the widths, their loss weights and the deploy width.

    ``width_weights`` follows ``widths`` sorted narrowest first. ``deploy_width`` extracts a
    plain model at that width at the end (None: return the slimmable model at full width).
    ``recalibrate_batches`` > 0 re-estimates every width's BN statistics on that many training
    batches after training (:func:`recalibrate_widths_`).

    Example:
        >>> SlimmableConfig(widths=[0.25, 0.5, 1.0], epochs=5, deploy_width=0.5)
    """

    widths: list[float] = dataclasses.field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0])
    width_weights: list[float] | None = None
    sandwich: bool = False
    num_random: int = 1
    inplace_distillation: bool = False
    deploy_width: float | None = None
    max_eval_batches: int | None = None
    recalibrate_batches: int = 0

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
        check_range("recalibrate_batches", self.recalibrate_batches, 0)


@register_method("dynamic", "slimmable", config=SlimmableConfig)
def slimmable_method(model: nn.Module, config: SlimmableConfig, data: MethodData) -> Result:
    """Train a slimmable (switchable-width) model; accuracy vs MACs per width; optionally extract one width.

    A SlimmableModel given is trained in place; any other model is copied by ``make_slimmable``.
    With ``data.out_dir`` the rows go to ``widths.json`` and the curve to a plot there.
    """
    from netcompress.training.supervised import run_config

    data.require("train_loader", "val_loader", "example_inputs", method="dynamic/slimmable")
    slim = model if isinstance(model, SlimmableModel) else make_slimmable(
        model, widths=config.widths, example_inputs=data.example_inputs
    )  # fmt: skip
    train_config = run_config(config.train_config(), data)
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
            data.train_loader,
            config=train_config,
            val_loader=data.val_loader,
            hook=hook,
            hooks=list(data.extras.get("hooks", [])),
            checkpoint_dir=data.out_dir / "checkpoints" if data.out_dir is not None else None,
            resume=data.out_dir is not None,
        )
    recalibrated = None
    if config.recalibrate_batches:
        seen = recalibrate_widths_(slim, data.train_loader, num_batches=config.recalibrate_batches)
        recalibrated = {width_key(w): n for w, n in seen.items()}
    rows = evaluate_widths(slim, data.val_loader, device=data.device, max_batches=config.max_eval_batches)
    if data.out_dir is not None:
        atomic_write_json(data.out_dir / "widths.json", rows)
    curve = accuracy_vs_macs(rows, "macs")
    summary = train_summary(history, train_config)
    summary.update(
        widths=list(slim.widths),
        per_width={width_key(r["width"]): r for r in rows},
        deploy_width=config.deploy_width,
        recalibrated_samples=recalibrated,
        curves={"accuracy vs MACs": curve},
        plot=plot_curve(curve, "width", data.out_dir, title="Slimmable width: accuracy vs MACs"),
    )
    result_model: nn.Module = slim
    if config.deploy_width is not None:
        result_model = extract_width(slim, config.deploy_width)
        summary["deployed_params"] = param_count(result_model)
    else:
        slim.set_width(max(slim.widths))
    return Result(model=result_model, summary=summary, history=history.rows if history is not None else None)


def with_slimmable_width(
    model: nn.Module,
    train_loader: Iterable,
    *,
    val_loader: Iterable,
    example_inputs: torch.Tensor,
    config: SlimmableConfig | None = None,
    hooks: Sequence[Any] = (),
    **fields: Any,
) -> tuple[nn.Module, dict[str, Any]]:
    """The method ``dynamic/slimmable`` as a verb: a new trained slimmable model (or, with
    ``deploy_width``, the plain model extracted at that width) and the summary (per width:
    accuracy, MACs, parameters).

    ``fields`` are :class:`SlimmableConfig` fields (``widths``, ``epochs``, ``sandwich``, ...);
    they override ``config``. The input model is not modified.

    Example:
        >>> small, summary = with_slimmable_width(model, train, val_loader=val, example_inputs=x,
        ...                                       widths=[0.5, 1.0], epochs=3, deploy_width=0.5)
        >>> summary["per_width"]["w0.5"]["accuracy"]
    """
    base = config.to_dict() if config is not None else {}
    cfg = SlimmableConfig.from_dict({**base, **fields}, where="with_slimmable_width")
    if isinstance(model, SlimmableModel):
        model = copy.deepcopy(model)  # the method trains a SlimmableModel in place
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
