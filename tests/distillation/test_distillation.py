"""Distillation: the KD loss by hand, the hooks' teacher calls and gradients, distill vs fit."""

from __future__ import annotations

import copy
import importlib
import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from netcompress.core.errors import CheckpointError, ConfigError
from netcompress.core.methods import METHODS, MethodData, apply
from netcompress.distillation import (
    FeatureDistillation,
    SoftTargetDistillation,
    SoftTargetsConfig,
    TeacherForward,
    distill,
    kd_loss,
    load_teacher,
)
from netcompress.distillation.teacher_student import distill_config
from netcompress.training.config import TrainConfig


def _fit_or_skip():
    training = importlib.import_module("netcompress.training")
    if not hasattr(training, "fit"):
        pytest.skip("netcompress.training.fit is not written yet (training engineer's area)")
    return training.fit


class CountingTeacher(nn.Module):
    """A small teacher that counts its forwards and records grad mode and train flag."""

    def __init__(self, in_features: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, classes)
        self.calls = 0
        self.grad_enabled: list[bool] = []
        self.training_flags: list[bool] = []

    def forward(self, x):
        self.calls += 1
        self.grad_enabled.append(torch.is_grad_enabled())
        self.training_flags.append(self.training)
        return self.fc(x)


class ConvNet(nn.Module):
    def __init__(self, width: int, classes: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, stride=2)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.head(x.mean((2, 3)))


def _loader(n: int = 48, features: int = 8, batch: int = 16, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return DataLoader(
        TensorDataset(x, y), batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(1)
    )


def test_kd_loss_matches_numpy_hand_computation():
    s = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
    t = torch.tensor([[1.0, 1.5, -0.5], [-2.0, 0.0, 4.0]])
    y = torch.tensor([0, 1])
    temp, alpha = 2.0, 0.7

    def log_softmax(a):
        a = a - a.max(1, keepdims=True)
        return a - np.log(np.exp(a).sum(1, keepdims=True))

    sn, tn = s.double().numpy(), t.double().numpy()
    log_ps, log_pt = log_softmax(sn / temp), log_softmax(tn / temp)
    kl = (np.exp(log_pt) * (log_pt - log_ps)).sum() / 2  # batchmean: sum over classes, mean over batch
    ce = -(log_softmax(sn)[[0, 1], [0, 1]]).mean()
    expected = alpha * temp**2 * kl + (1 - alpha) * ce
    got = kd_loss(s, t, y, temperature=temp, alpha=alpha)
    assert abs(got.item() - expected) < 1e-6
    assert abs(expected - 0.749513457) < 1e-8  # also computed with the math module alone
    assert kd_loss(s, t, y, temperature=temp, alpha=0.0).item() == F.cross_entropy(s, y).item()
    assert kd_loss(s, s, y, temperature=temp, alpha=1.0).abs().item() < 1e-7


def test_kd_loss_rejects_bad_settings():
    s = torch.zeros(2, 3)
    with pytest.raises(ConfigError, match="alpha"):
        kd_loss(s, s, torch.zeros(2, dtype=torch.long), temperature=2.0, alpha=1.5)
    with pytest.raises(ConfigError, match="shape"):
        kd_loss(s, torch.zeros(2, 4), torch.zeros(2, dtype=torch.long), temperature=2.0, alpha=0.5)


def test_soft_target_hook_runs_teacher_once_per_batch_without_grad():
    teacher, student = CountingTeacher(), nn.Linear(8, 3)
    teacher.train()
    hook = SoftTargetDistillation(teacher, temperature=3.0, alpha=0.6)
    for x, y in _loader():
        out = student(x)
        base = F.cross_entropy(out, y)
        loss = hook.loss(student, x, out, y, base)
        expected = (
            0.6
            * 9.0
            * F.kl_div(
                F.log_softmax(out / 3, 1),
                F.log_softmax(teacher.fc(x) / 3, 1),
                reduction="batchmean",
                log_target=True,
            )
            + 0.4 * base
        )
        assert abs(loss.item() - expected.item()) < 1e-5
        loss.backward()
        hook.after_step(student)
    assert teacher.calls == 3 and teacher.grad_enabled == [False] * 3
    assert teacher.training_flags == [False] * 3 and teacher.training  # eval during, restored after
    assert teacher.fc.weight.grad is None and student.weight.grad is not None
    row = hook.epoch_end(student, 0)
    assert (
        set(row) == {"kd_soft_loss", "kd_hard_loss", "teacher_train_acc"}
        and 0 <= row["teacher_train_acc"] <= 1
    )


def test_feature_hook_adapter_loss_value_and_shared_teacher_forward():
    torch.manual_seed(0)
    student, teacher = ConvNet(4), ConvNet(6)
    teacher.calls = 0
    x, y = torch.randn(5, 1, 8, 8), torch.randint(0, 3, (5,))
    run = TeacherForward(teacher)
    soft = SoftTargetDistillation(run, temperature=2.0, alpha=0.5)
    hint = FeatureDistillation(run, student, pairs={"conv1": "conv2"}, example_inputs=x[:1], weight=0.3)
    (adapter,) = hint.adapters
    assert isinstance(adapter, nn.Conv2d) and tuple(adapter.weight.shape) == (6, 4, 1, 1)
    out = student(x)
    base = F.cross_entropy(out, y)
    after_soft = soft.loss(student, x, out, y, base)
    total = hint.loss(student, x, out, y, after_soft)
    assert run.calls == 1  # both hooks read one teacher forward
    with torch.no_grad():
        s_feat = adapter(student.conv1(x))  # (5, 6, 8, 8): pooled to the teacher's 4x4
        t_feat = teacher.conv2(F.relu(teacher.conv1(x)))
        expected = 0.3 * F.mse_loss(F.adaptive_avg_pool2d(s_feat, (4, 4)), t_feat)
    assert abs((total - after_soft).item() - expected.item()) < 1e-6
    total.backward()
    assert adapter.weight.grad is not None and teacher.conv2.weight.grad is None
    copy.deepcopy(student)
    torch.save(student, io.BytesIO())  # hooks attached: still picklable
    hint.close()
    assert not student.conv1._forward_hooks and not teacher.conv2._forward_hooks


def test_feature_hook_names_missing_layer_and_wrong_adapter():
    with pytest.raises(ConfigError, match="student has no layer 'nope'"):
        FeatureDistillation(
            ConvNet(4), ConvNet(4), pairs={"nope": "conv1"}, example_inputs=torch.randn(1, 1, 8, 8)
        )
    with pytest.raises(ConfigError, match="'linear' needs \\(N, C\\)"):
        FeatureDistillation(
            ConvNet(4),
            ConvNet(4),
            pairs={"conv1": "conv1"},
            example_inputs=torch.randn(1, 1, 8, 8),
            adapter="linear",
        )


def distill_with_history(student, teacher, loader, *, config=None, **fields):
    """The student and its per-epoch rows, through ``apply`` (as a caller needing the history does)."""
    cfg = distill_config(config, fields)
    data = MethodData(train_loader=loader, device=cfg.device, extras={"teacher": teacher})
    result = apply(student, cfg, data)
    return result.model, result.history


def _small_cfg(**kw) -> TrainConfig:
    return TrainConfig(epochs=2, lr=0.1, seed=3, progress=False, keep_best=False, **kw)


def test_distill_alpha_zero_equals_plain_fit():
    fit = _fit_or_skip()
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    plain, kd = copy.deepcopy(base), copy.deepcopy(base)
    h_plain = fit(plain, _loader(), config=_small_cfg())
    kd, h_kd = distill_with_history(kd, CountingTeacher(), _loader(), alpha=0.0, config=_small_cfg())
    for a, b in zip(plain.parameters(), kd.parameters()):
        assert torch.equal(a, b)
    assert len(h_plain.rows) == len(h_kd) == 2
    for ra, rb in zip(h_plain.rows, h_kd):
        for key in ("epoch", "lr", "train_loss", "train_acc"):
            assert ra[key] == rb[key], key


def test_distill_calls_teacher_once_per_batch_and_student_moves_towards_teacher():
    _fit_or_skip()
    torch.manual_seed(0)
    teacher, student = CountingTeacher(), nn.Linear(8, 3)
    x = torch.randn(64, 8)

    def kl():
        with torch.no_grad():
            return F.kl_div(
                F.log_softmax(student(x), 1),
                F.log_softmax(teacher.fc(x), 1),
                reduction="batchmean",
                log_target=True,
            ).item()

    before = kl()
    teacher.calls = 0
    cfg = TrainConfig(lr=0.5, schedule="constant", weight_decay=0.0, progress=False, keep_best=False)
    out = distill(student, teacher, _loader(), alpha=1.0, temperature=1.0, epochs=5, config=cfg)
    assert out is student
    assert teacher.calls == 5 * 3  # 5 epochs x 3 batches
    assert teacher.fc.weight.grad is None
    assert kl() < 0.25 * before


def test_load_teacher_from_whole_model_checkpoint_and_errors(tmp_path: Path):
    teacher = ConvNet(4)
    torch.save(teacher, tmp_path / "t.pt")
    with pytest.raises(CheckpointError, match="trust"):  # a pickled model runs code: only with the opt-in
        load_teacher({"checkpoint": str(tmp_path / "t.pt")}, num_classes=3)
    with pytest.warns(UserWarning, match="runs any code"):
        loaded = load_teacher({"checkpoint": str(tmp_path / "t.pt"), "trust": True}, num_classes=3)
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(loaded(x), teacher(x))
    torch.save(teacher.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(ConfigError, match="state dict: give teacher.model"):
        load_teacher({"checkpoint": str(tmp_path / "sd.pt")}, num_classes=3)
    with pytest.raises(CheckpointError, match="not found"):
        load_teacher({"checkpoint": str(tmp_path / "missing.pt")}, num_classes=3)
    with pytest.raises(ConfigError, match="unknown key 'modle'"):
        SoftTargetsConfig.from_dict({"teacher": {"modle": "x"}})
    with pytest.raises(ConfigError, match="unknown key 'temprature'"):
        SoftTargetsConfig.from_dict({"temprature": 2.0})


def test_soft_targets_step_with_teacher_in_extras(tmp_path: Path):
    _fit_or_skip()
    spec = METHODS.get("distill/soft_targets")
    cfg = spec.config.from_dict({"epochs": 1, "lr": 0.1, "alpha": 0.5, "keep_best": False})
    teacher = CountingTeacher()
    ctx = MethodData(
        train_loader=_loader(),
        val_loader=_loader(seed=5),
        example_inputs=torch.randn(1, 8),
        out_dir=tmp_path,
        num_classes=3,
        progress=False,
        extras={"teacher": teacher},
    )
    result = spec.fn(nn.Linear(8, 3), cfg, ctx)
    assert result.summary["teacher_params"] == 27 and result.summary["student_params"] == 27
    assert result.summary["epochs"] == 1 and len(result.history) == 1
    assert 0.0 <= result.summary["final_val_acc"] <= 1.0 and math.isfinite(result.history[0]["kd_soft_loss"])
    assert teacher.calls == 3 + 0  # validation runs the student only


def test_distill_with_feature_pairs_trains_adapter_and_removes_hooks():
    _fit_or_skip()
    torch.manual_seed(0)
    student, teacher = ConvNet(4), ConvNet(6)
    x = torch.randn(24, 1, 8, 8)
    loader = DataLoader(TensorDataset(x, torch.randint(0, 3, (24,))), batch_size=8)
    cfg = TrainConfig(lr=0.05, schedule="constant", weight_decay=0.0, progress=False, keep_best=False)
    student, history = distill_with_history(
        student, teacher, loader, epochs=4, config=cfg, feature_pairs={"conv2": "conv2"}, feature_weight=1.0
    )
    losses = [row["feature_loss"] for row in history]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert not student.conv2._forward_hooks and not teacher.conv2._forward_hooks


def test_load_teacher_builds_registered_model_from_state_dict(tmp_path: Path):
    models = pytest.importorskip("netcompress.models")
    if "digits_cnn" not in models.list():
        pytest.skip("digits_cnn not registered")
    teacher = models.create("digits_cnn", num_classes=10).eval()
    torch.save({"state_dict": teacher.state_dict()}, tmp_path / "t.pt")
    loaded = load_teacher(
        {"model": "digits_cnn", "checkpoint": str(tmp_path / "t.pt")}, num_classes=10
    ).eval()
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(loaded(x), teacher(x))
