"""The contract for distill/soft_targets: the verb and ``apply`` give the same student; the
``_`` verb trains in place; ``teacher: {step: N}`` loads the model a run saved after step N."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import netcompress as nc
from netcompress.core.io import atomic_torch_save
from netcompress.core.methods import MethodData, apply, method_for
from netcompress.distillation import SoftTargetsConfig, distill, distill_
from netcompress.training import TrainConfig
from tests.state_checks import same_weights

FIELDS = {"epochs": 2, "lr": 0.1, "temperature": 2.0, "alpha": 0.7, "seed": 1, "progress": False}


def _loader(seed: int = 0) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(48, 8, generator=gen), torch.randint(0, 3, (48,), generator=gen)
    return DataLoader(
        TensorDataset(x, y), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(2)
    )


def _net(seed: int, hidden: int = 16) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 3))


def test_distill_verb_and_method_give_the_same_student():
    teacher = _net(7, hidden=32)
    by_verb, by_method = _net(0), _net(0)
    summary = distill_(by_verb, teacher, _loader(), val_loader=_loader(5), **FIELDS)
    assert method_for(SoftTargetsConfig).key == "distill/soft_targets"
    result = apply(
        by_method,
        SoftTargetsConfig.from_dict(FIELDS, where="test"),
        MethodData(train_loader=_loader(), val_loader=_loader(5), extras={"teacher": teacher}),
    )
    assert same_weights(by_verb, by_method)
    assert summary == result.summary


def test_distill_underscore_trains_in_place_and_the_alias_returns_the_student():
    teacher, student = _net(7, hidden=32), _net(0)
    before = copy.deepcopy(student)
    summary = nc.distill_(student, teacher, _loader(), **FIELDS)
    assert isinstance(summary, dict) and summary["epochs"] == 2
    assert not same_weights(student, before)
    again = _net(0)
    out = nc.distill(again, teacher, _loader(), **FIELDS)
    assert out is again and same_weights(again, student)


def test_distill_takes_a_train_config_with_fields_on_top():
    teacher = _net(7, hidden=32)
    a, b = _net(0), _net(0)
    train = TrainConfig(epochs=2, lr=0.1, seed=1, progress=False)
    distill(a, teacher, _loader(), config=train, temperature=2.0, alpha=0.7)
    distill(b, teacher, _loader(), **FIELDS)
    assert same_weights(a, b)


def test_teacher_from_an_earlier_step_is_the_model_saved_there(tmp_path):
    teacher = _net(7, hidden=32)
    path = atomic_torch_save(teacher, tmp_path / "step1" / "model.pt", sign=True)
    by_step, by_module = _net(0), _net(0)
    apply(
        by_step,
        SoftTargetsConfig.from_dict({**FIELDS, "teacher": {"step": 1}}, where="test"),
        MethodData(train_loader=_loader(), num_classes=3, extras={"step_models": {1: path}}),
    )
    apply(
        by_module,
        SoftTargetsConfig.from_dict(FIELDS, where="test"),
        MethodData(train_loader=_loader(), extras={"teacher": teacher}),
    )
    assert same_weights(by_step, by_module)


def _bert_pair():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=99,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=0.2,
    )  # fmt: skip
    teacher = transformers.BertModel(config).eval()
    gen = torch.Generator().manual_seed(3)
    batches = [
        {
            "input_ids": torch.randint(1, 99, (8, 12), generator=gen),
            "attention_mask": torch.ones(8, 12, dtype=torch.long),
        }
        for _ in range(3)
    ]
    return teacher, nc.prune_transformer(teacher, batches[0], heads=0.5, ffn=0.5), batches


@pytest.mark.parametrize(
    ("name", "config_cls", "verb", "fields"),
    [
        ("embedding", "EmbeddingDistillConfig", "distill_embeddings_", {"mse_weight": 0.5}),
        ("transformer", "TransformerDistillConfig", "distill_transformer_", {"value_weight": 1.0}),
    ],
)
def test_transformer_distillation_verbs_and_apply_give_the_same_student(name, config_cls, verb, fields):
    teacher, student, batches = _bert_pair()
    teacher_before = copy.deepcopy(teacher.state_dict())
    fields = {"epochs": 2, "lr": 3e-3, "seed": 1, "progress": False, **fields}
    by_verb, by_method = copy.deepcopy(student), copy.deepcopy(student)
    summary = getattr(nc, verb)(by_verb, teacher, batches, val_loader=batches[:1], **fields)
    cls = getattr(nc.distillation, config_cls)
    assert method_for(cls).key == f"distill/{name}"
    result = apply(
        by_method,
        cls.from_dict(fields, where="test"),
        MethodData(train_loader=batches, val_loader=batches[:1], extras={"teacher": teacher}),
    )
    assert same_weights(by_verb, by_method) and not same_weights(by_verb, student)
    assert summary == result.summary
    # the teacher is frozen: same weights, no gradients, still in eval mode
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_before.items())
    assert all(p.grad is None for p in teacher.parameters()) and not teacher.training


def test_transformer_distillation_teacher_from_an_earlier_step(tmp_path):
    teacher, student, batches = _bert_pair()
    path = atomic_torch_save(teacher, tmp_path / "step1" / "model.pt", sign=True)
    by_step, by_module = copy.deepcopy(student), copy.deepcopy(student)
    fields = {"epochs": 1, "lr": 3e-3, "progress": False}
    apply(
        by_step,
        nc.distillation.EmbeddingDistillConfig.from_dict({**fields, "teacher": {"step": 1}}, where="test"),
        MethodData(train_loader=batches, extras={"step_models": {1: path}}),
    )
    nc.distill_embeddings_(by_module, teacher, batches, **fields)
    assert same_weights(by_step, by_module)
