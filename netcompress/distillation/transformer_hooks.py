"""Training hooks for transformer distillation, plugged into :func:`netcompress.training.fit`.

:class:`EmbeddingDistillation` pulls a sentence encoder's pooled embeddings towards the teacher's (cosine
and/or MSE); it needs no labels, so it trains on unlabelled text. :class:`TransformerDistillation` adds
TinyBERT/MiniLM layer terms: hidden-state MSE through learned projections, attention-map KL and value-relation
KL between mapped layers (:mod:`netcompress.distillation.transformer_taps` reads them during the forward).
Both add their terms to the loss ``fit`` computed (cross entropy, or zero for batches without targets) and
share one :class:`~netcompress.distillation.hooks.TeacherForward` per batch.

Example:
    >>> hook = EmbeddingDistillation(teacher, cosine_weight=1.0)
    >>> fit(student, sentence_loader, hooks=[hook], config=TrainConfig(epochs=3, optimizer="adamw", lr=1e-4))
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from netcompress.core.config import check_choice, check_range
from netcompress.core.errors import ConfigError
from netcompress.core.inputs import batch_inputs, call_model, move_inputs, output_tensor
from netcompress.distillation.hooks import TeacherForward
from netcompress.distillation.transformer_losses import (
    attention_kl,
    bank_similarity_loss,
    check_layer_map,
    embedding_loss,
    hidden_mse,
    relation_scores,
    sentence_embedding,
    similarity_kl,
    tail_cosine_loss,
)
from netcompress.distillation.transformer_taps import TransformerTaps
from netcompress.evaluation.harness import eval_mode

POOLS = ("mean", "cls")
TERMS = ("hidden", "attention", "value")


def token_mask(inputs: Any, length: int | None = None) -> torch.Tensor | None:
    """The (N, L) ``attention_mask`` of dict inputs (1 = real token), or None (every token counts)."""
    mask = inputs.get("attention_mask") if isinstance(inputs, dict) else None
    if (
        not isinstance(mask, torch.Tensor)
        or mask.dim() != 2
        or (length is not None and mask.shape[1] != length)
    ):
        return None
    return mask


def _teacher(teacher: nn.Module | TeacherForward) -> TeacherForward:
    return teacher if isinstance(teacher, TeacherForward) else TeacherForward(teacher)


class EmbeddingDistillation:
    """Hook adding ``cosine_weight * mean(1 - cos(s, t)) + mse_weight * MSE(s, t)`` of pooled embeddings.

    ``pool``: ``"mean"`` over the attention mask (sentence-transformers' pooling) or ``"cls"`` (first token);
    models returning (N, D) are used as they are. Rows gain ``embedding_loss`` and ``embedding_cosine``
    (the mean cosine to the teacher on the training batches). ``similarity_weight`` adds the relational term
    :func:`~netcompress.distillation.transformer_losses.similarity_kl` (the batch's cosine-similarity rows,
    student vs teacher, at ``similarity_temperature``); rows then gain ``similarity_loss``. ``tail_weight``
    adds :func:`~netcompress.distillation.transformer_losses.tail_cosine_loss` (the gaps ``1 - cos`` weighted
    towards the batch's worst sentences by ``tail_power``, or only its ``tail_top_k`` hardest); rows then gain
    ``tail_loss``. ``bank_weight`` adds
    :func:`~netcompress.distillation.transformer_losses.bank_similarity_loss` against ``bank`` ((M, D) teacher
    embeddings of other sentences); rows then gain ``bank_loss``.
    """

    def __init__(
        self,
        teacher: nn.Module | TeacherForward,
        *,
        cosine_weight: float = 1.0,
        mse_weight: float = 0.0,
        pool: str = "mean",
        similarity_weight: float = 0.0,
        similarity_temperature: float = 0.05,
        tail_weight: float = 0.0,
        tail_power: float = 2.0,
        tail_top_k: int = 0,
        bank_weight: float = 0.0,
        bank: torch.Tensor | None = None,
    ) -> None:
        check_range("cosine_weight", cosine_weight, 0.0)
        check_range("mse_weight", mse_weight, 0.0)
        check_range("similarity_weight", similarity_weight, 0.0)
        check_range("tail_weight", tail_weight, 0.0)
        check_range("tail_power", tail_power, 1.0)
        check_range("tail_top_k", tail_top_k, 0)
        check_range("bank_weight", bank_weight, 0.0)
        if bank_weight and (not isinstance(bank, torch.Tensor) or bank.dim() != 2 or bank.shape[0] < 2):
            raise ConfigError("bank_weight > 0 needs bank: an (M, D) tensor of teacher embeddings, M >= 2")
        check_choice("pool", pool, POOLS)
        if not similarity_temperature > 0:
            raise ConfigError(f"similarity_temperature must be > 0, got {similarity_temperature!r}")
        if not any((cosine_weight, mse_weight, similarity_weight, tail_weight, bank_weight)):
            raise ConfigError(
                "embedding distillation needs cosine_weight, mse_weight, similarity_weight, tail_weight or "
                "bank_weight > 0"
            )
        self.teacher_forward = _teacher(teacher)
        self.cosine_weight, self.mse_weight, self.pool = float(cosine_weight), float(mse_weight), pool
        self.similarity_weight, self.similarity_temperature = float(similarity_weight), float(similarity_temperature)
        self.tail_weight, self.tail_power, self.tail_top_k = float(tail_weight), float(tail_power), int(tail_top_k)
        self.bank_weight, self.bank = float(bank_weight), (bank.detach() if bank_weight else None)
        self.epoch_start(None, 0)

    def embeddings(self, outputs: Any, inputs: Any) -> torch.Tensor:
        hidden = output_tensor(outputs)
        return sentence_embedding(
            hidden, token_mask(inputs, hidden.shape[1] if hidden.dim() == 3 else None), self.pool
        )

    def loss(
        self, model: nn.Module, inputs: Any, outputs: Any, targets: Any, loss: torch.Tensor
    ) -> torch.Tensor:
        student = self.embeddings(outputs, inputs)
        teacher = self.embeddings(self.teacher_forward(inputs), inputs)
        term, cosine = embedding_loss(
            student, teacher.detach(), cosine_weight=self.cosine_weight, mse_weight=self.mse_weight
        )
        if self.similarity_weight:
            relational = similarity_kl(student, teacher.detach(), temperature=self.similarity_temperature)
            self._sim_sum = self._sim_sum + relational.detach()
            term = term + self.similarity_weight * relational
        if self.tail_weight:
            tail = tail_cosine_loss(student, teacher.detach(), power=self.tail_power, top_k=self.tail_top_k)
            self._tail_sum = self._tail_sum + tail.detach()
            term = term + self.tail_weight * tail
        if self.bank_weight:
            banked = bank_similarity_loss(student, teacher.detach(), self.bank.to(student.device))
            self._bank_sum = self._bank_sum + banked.detach()
            term = term + self.bank_weight * banked
        self._loss_sum = self._loss_sum + term.detach()
        self._cos_sum = self._cos_sum + cosine.detach()
        self._batches += 1
        return loss + term

    def after_step(self, model: nn.Module) -> None:
        self.teacher_forward.clear()

    def epoch_start(self, model: nn.Module | None, epoch: int) -> None:
        self._loss_sum = self._cos_sum = self._sim_sum = self._tail_sum = self._bank_sum = torch.zeros(())
        self._batches = 0

    def epoch_end(self, model: nn.Module, epoch: int) -> dict[str, float]:
        if not self._batches:
            return {}
        row = {
            "embedding_loss": float(self._loss_sum) / self._batches,
            "embedding_cosine": float(self._cos_sum) / self._batches,
        }
        if self.similarity_weight:
            row["similarity_loss"] = float(self._sim_sum) / self._batches
        if self.tail_weight:
            row["tail_loss"] = float(self._tail_sum) / self._batches
        if self.bank_weight:
            row["bank_loss"] = float(self._bank_sum) / self._batches
        return row


def _lstsq_projection(student: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor | None) -> nn.Linear:
    """A Linear from the student's width to the teacher's, fitted by least squares on one batch's tokens."""
    s, t = student.detach().float(), teacher.detach().float().to(student.device)
    if valid is not None:
        keep = valid.bool().to(s.device)
        s, t = s[keep], t[keep]
    s, t = s.reshape(-1, s.shape[-1]), t.reshape(-1, t.shape[-1])
    ones = torch.ones(s.shape[0], 1, dtype=s.dtype, device=s.device)
    solution = torch.linalg.lstsq(torch.cat([s, ones], 1).cpu(), t.cpu()).solution  # (Ds + 1, Dt)
    proj = nn.Linear(s.shape[1], t.shape[1])
    with torch.no_grad():
        proj.weight.copy_(solution[:-1].T)
        proj.bias.copy_(solution[-1])
    return proj


class TransformerDistillation:
    """Hook adding TinyBERT/MiniLM layer terms between a student and a teacher transformer.

    ``layer_map[i]`` is the teacher layer (1-based) student layer ``i + 1`` learns from (default uniform:
    ``ceil((i + 1) * teacher_layers / student_layers)``); ``include_embeddings`` also maps the embedding
    outputs (layer 0). Per mapped pair: ``hidden_weight`` x MSE of hidden states (through a Linear projection,
    least-squares initialised on ``example_inputs``, where the widths differ, e.g. after hidden-width
    pruning), ``attention_weight`` x KL of the attention distributions (head-averaged when the head counts
    differ), ``value_weight`` x KL of the value relations over ``relation_heads`` heads (0: the teacher's head
    count). Pass :meth:`parameters` to ``fit`` as ``extra_parameters``; call :meth:`close` afterwards.
    Rows gain ``hidden_loss``, ``attention_loss``, ``value_loss`` (for the terms that are on).
    """

    def __init__(
        self,
        teacher: nn.Module | TeacherForward,
        student: nn.Module,
        *,
        example_inputs: Any,
        hidden_weight: float = 1.0,
        attention_weight: float = 1.0,
        value_weight: float = 0.0,
        layer_map: Sequence[int] | None = None,
        include_embeddings: bool = False,
        relation_heads: int = 0,
    ) -> None:
        for name, value in (("hidden_weight", hidden_weight), ("attention_weight", attention_weight)):
            check_range(name, value, 0.0)
        check_range("value_weight", value_weight, 0.0)
        check_range("relation_heads", relation_heads, 0)
        self.teacher_forward = _teacher(teacher)
        self.weights = {
            "hidden": float(hidden_weight),
            "attention": float(attention_weight),
            "value": float(value_weight),
        }
        self.student_taps = TransformerTaps(student, who="student")
        self.teacher_taps = TransformerTaps(self.teacher_forward.teacher, who="teacher")
        try:
            self._check(layer_map, include_embeddings, relation_heads)
            self._probe(student, example_inputs)
        except Exception:
            self.close()
            raise
        self.epoch_start(None, 0)

    def _check(self, layer_map: Sequence[int] | None, include_embeddings: bool, relation_heads: int) -> None:
        s, t = self.student_taps, self.teacher_taps
        s.require_layers()
        t.require_layers()
        self.layer_map = check_layer_map(layer_map, s.num_layers, t.num_layers)
        self.hidden_pairs = ([(0, 0)] if include_embeddings else []) + list(
            zip(range(1, s.num_layers + 1), self.layer_map)
        )
        self.attention_pairs = list(zip(range(1, s.num_layers + 1), self.layer_map))
        if self.weights["attention"] or self.weights["value"]:
            for i, j in self.attention_pairs:
                s.require_attention(i)
                t.require_attention(j)
        self.relation_heads = relation_heads or t._unit(self.layer_map[-1]).num_heads

    def _probe(self, student: nn.Module, example_inputs: Any) -> None:
        """One eval forward of each model: attention read-outs verified, projections sized and fitted."""
        teacher = self.teacher_forward.teacher
        for model, taps, layers in (
            (student, self.student_taps, [i for i, _ in self.attention_pairs]),
            (teacher, self.teacher_taps, self.layer_map),
        ):
            param = next(model.parameters(), None)
            inputs = move_inputs(example_inputs, param.device) if param is not None else example_inputs
            with eval_mode(model), torch.no_grad():
                call_model(model, inputs)
            taps.resolve()  # looped layers (vit-pytorch, rtdl): where the residual stream is
            if self.weights["attention"] or self.weights["value"]:
                for index in sorted(set(layers)):
                    taps.verify_attention(index)
        projections = []
        for i, j in self.hidden_pairs:
            hs, ht = self.student_taps.hidden(i), self.teacher_taps.hidden(j)
            same = hs.shape[-1] == ht.shape[-1]
            projections.append(
                nn.Identity() if same else _lstsq_projection(hs, ht, token_mask(inputs, hs.shape[1]))
            )
        device = next(student.parameters()).device
        self.projections = nn.ModuleList(projections).to(device)
        self.student_taps.clear()
        self.teacher_taps.clear()

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.projections.parameters()

    def terms(self, inputs: Any) -> dict[str, torch.Tensor]:
        """The weighted-off terms of the last student and teacher forwards (hidden, attention, value)."""
        s, t = self.student_taps, self.teacher_taps
        out: dict[str, torch.Tensor] = {}

        def ran(i: int, j: int) -> bool:  # a layer LayerDrop skipped this step has no term (only then)
            return not (s.skips_layers() or t.skips_layers()) or (s.captured(i) and t.captured(j))

        hidden = [(p, ij) for p, ij in zip(self.projections, self.hidden_pairs) if ran(*ij)]
        pairs = [ij for ij in self.attention_pairs if ran(*ij)]
        if self.weights["hidden"] and hidden:
            total = 0.0
            for proj, (i, j) in hidden:
                hs = s.hidden(i)
                if next(proj.parameters(), hs).device != hs.device:
                    proj.to(hs.device)
                total = total + hidden_mse(proj(hs), t.hidden(j).detach(), token_mask(inputs, hs.shape[1]))
            out["hidden"] = total / len(hidden)
        if self.weights["attention"] and pairs:
            total = 0.0
            for i, j in pairs:
                scores = s.attention_scores(i)
                total = total + attention_kl(
                    scores, t.attention_scores(j).detach(), token_mask(inputs, scores.shape[2])
                )
            out["attention"] = total / len(pairs)
        if self.weights["value"] and pairs:
            total = 0.0
            for i, j in pairs:
                vs, vt = s.values(i), t.values(j)
                valid = token_mask(inputs, vs.shape[1])
                rs = relation_scores(vs, self.relation_heads, valid, who="student")
                rt = relation_scores(vt.detach(), self.relation_heads, valid, who="teacher")
                total = total + attention_kl(rs, rt, valid)
            out["value"] = total / len(pairs)
        return out

    def loss(
        self, model: nn.Module, inputs: Any, outputs: Any, targets: Any, loss: torch.Tensor
    ) -> torch.Tensor:
        self.teacher_forward(inputs)  # fills the teacher taps (or reuses this batch's run)
        terms = self.terms(inputs)
        for name, value in terms.items():
            self._sums[name] = self._sums[name] + value.detach()
            loss = loss + self.weights[name] * value
        self._batches += 1
        return loss

    @torch.no_grad()
    def evaluate(self, student: nn.Module, batches: Iterable[Any]) -> dict[str, float]:
        """Mean unweighted terms over ``batches`` (eval mode, no gradients): ``hidden_loss``, ..."""
        sums: dict[str, float] = {}
        count = 0
        device = next(student.parameters()).device
        with eval_mode(student):
            for batch in batches:
                inputs = move_inputs(batch_inputs(batch), device)
                call_model(student, inputs)
                self.teacher_forward.clear()
                self.teacher_forward(inputs)
                for name, value in self.terms(inputs).items():
                    sums[name] = sums.get(name, 0.0) + float(value)
                count += 1
        self.after_step(student)
        return {f"{name}_loss": value / max(count, 1) for name, value in sums.items()}

    def after_step(self, model: nn.Module) -> None:
        self.teacher_forward.clear()
        self.student_taps.clear()
        self.teacher_taps.clear()

    def epoch_start(self, model: nn.Module | None, epoch: int) -> None:
        self._sums = {name: torch.zeros(()) for name in TERMS}
        self._batches = 0

    def epoch_end(self, model: nn.Module, epoch: int) -> dict[str, float]:
        if not self._batches:
            return {}
        return {f"{n}_loss": float(self._sums[n]) / self._batches for n in TERMS if self.weights[n]}

    def close(self) -> None:
        """Remove the forward hooks from the student and the teacher."""
        self.student_taps.close()
        self.teacher_taps.close()
