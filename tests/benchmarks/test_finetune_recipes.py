"""Issue 18, session 15: the fine-tune recipe a pruning row's budget is spent with (``--finetune-recipe``)."""

from __future__ import annotations

import dataclasses

import finetune_probe as fp
import finetune_recipes as fr
import pruning as pr
import pytest
import torch
import torch.nn.functional as F
from pruning_methods import PruningBenchConfig
from torch import nn

from netcompress.core import ConfigError
from netcompress.distillation import FeatureDistillation, SoftTargetDistillation
from netcompress.training import TrainConfig


class _Net(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                      nn.MaxPool2d(2))  # fmt: skip
        self.avgpool, self.flatten = nn.AdaptiveAvgPool2d(1), nn.Flatten()
        self.classifier = nn.Linear(width, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.avgpool(self.features(x))))


def test_default_recipe_changes_nothing_and_keeps_the_cache_key(monkeypatch) -> None:
    config = TrainConfig(epochs=5, lr=0.02, schedule="cosine", weight_decay=5e-4, progress=False)
    default = fr.recipe("default")
    assert default.train_config(config) == config and not default.distils
    assert default.prepare(_Net(4), _Net(2), [], torch.zeros(1, 3, 8, 8)) == ([], [])
    settings = {"epochs": 15}
    key = pr.rows_cache_key(PruningBenchConfig(), settings, heldout=False)
    # the default recipe is left out of the key: every row cached before the field existed stays valid
    keyed = []
    real = pr.cp.cache_key
    monkeypatch.setattr(pr.cp, "cache_key", lambda s: keyed.append(s) or real(s))
    assert pr.rows_cache_key(PruningBenchConfig(), settings, heldout=False) == key
    assert "finetune_recipe" not in keyed[-1]["bench"] and "finetune_lr" in keyed[-1]["bench"]
    monkeypatch.setitem(fr.RECIPES._entries, "_test_lr", fr.Recipe(lr=0.05))
    other = pr.rows_cache_key(PruningBenchConfig(finetune_recipe="_test_lr"), settings, heldout=False)
    assert other != key  # another recipe, other rows


def test_unknown_recipe_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="unknown fine-tune recipe 'nope'; known: default"):
        PruningBenchConfig(finetune_recipe="nope")
    with pytest.raises(ConfigError, match="unknown field 'lrr'"):
        fp.parse_recipe("x:lrr=0.1")


def test_recipe_sets_the_optimiser_fields() -> None:
    config = TrainConfig(epochs=5, lr=0.02, schedule="cosine", weight_decay=5e-4, progress=False)
    name, recipe = fp.parse_recipe(
        "r:lr=0.05,schedule=onecycle,label_smoothing=0.1,weight_decay=1e-4,recalibrate=1"
    )
    assert name == "r" and recipe.recalibrate is True
    out = recipe.train_config(config)
    assert (out.lr, out.schedule, out.label_smoothing, out.weight_decay, out.epochs) == (
        0.05,
        "onecycle",
        0.1,
        1e-4,
        5,
    )
    warm = fr.Recipe(warmup_epochs=9).train_config(config)
    assert warm.warmup_epochs == 5 and warm.lr == 0.02  # clipped to the budget; lr kept
    assert recipe.describe() == "lr 0.05, onecycle, label smoothing 0.1, wd 0.0001, BN recal."


def test_kd_and_hint_share_one_teacher_forward_and_add_the_expected_terms() -> None:
    torch.manual_seed(0)
    teacher, student = _Net(8).eval(), _Net(4)
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 4, (6,))
    recipe = fr.Recipe(kd_alpha=0.7, kd_temperature=3.0, hint_weight=0.5)
    hooks, params = recipe.prepare(teacher, student, [], x[:1])
    kd, hint = hooks
    assert isinstance(kd, SoftTargetDistillation) and isinstance(hint, FeatureDistillation)
    assert kd.teacher_forward is hint.teacher_forward and kd.teacher_forward.teacher is not teacher  # a copy
    assert [p.shape for p in params] == [torch.Size([8, 4, 1, 1])]  # the 1x1 adapter, student 4 -> teacher 8
    out = student(x)
    ce = F.cross_entropy(out, y)
    total = ce
    for hook in hooks:
        total = hook.loss(student, x, out, y, total)
    assert kd.teacher_forward.calls == 1
    t_logits, t_feat = teacher(x), teacher.features(x)
    soft = F.kl_div(F.log_softmax(out / 3, 1), F.log_softmax(t_logits / 3, 1), reduction="batchmean",
                    log_target=True) * 9  # fmt: skip
    mse = F.mse_loss(hint.adapters[0](student.features(x)), t_feat)
    expected = 0.7 * soft + 0.3 * ce + 0.5 * mse
    assert torch.allclose(total, expected, atol=1e-6)
    fr.close_hooks(hooks)
    assert not student.features._forward_hooks and not kd.teacher_forward.teacher.features._forward_hooks


def test_recalibration_resets_bn_statistics_to_the_loader_batches() -> None:
    torch.manual_seed(0)
    student = _Net(4)
    batches = [(torch.randn(16, 3, 8, 8) * 3 + 2, torch.zeros(16, dtype=torch.long)) for _ in range(2)]
    hooks, params = fr.Recipe(recalibrate=True).prepare(_Net(8), student, batches, batches[0][0])
    assert hooks == [] and params == []
    bn = student.features[1]
    with torch.no_grad():
        conv = torch.cat([student.features[0](b) for b, _ in batches])
    expected = conv.mean(dim=(0, 2, 3))
    assert torch.allclose(bn.running_mean, expected, atol=1e-5)
    assert bn.momentum == 0.1 and student.training  # restored


def test_run_method_fine_tunes_with_the_recipe(monkeypatch, tmp_path) -> None:
    """run_method gives fit the recipe's config, hooks and adapter parameters, and closes the hooks."""
    monkeypatch.setitem(fr.RECIPES._entries, "_test_kd", fr.Recipe(lr=0.1, kd_alpha=0.5, hint_weight=1.0))
    seen = {}

    def fake_fit(model, loader, *, config, hooks, extra_parameters, checkpoint_dir, resume):
        seen.update(config=config, hooks=list(hooks), params=list(extra_parameters), ckpt=checkpoint_dir)

    monkeypatch.setattr(pr, "fit", fake_fit)
    monkeypatch.setattr(pr, "evaluate", lambda model, loader: {"accuracy": 0.5})
    monkeypatch.setattr(pr, "validation_loader", lambda ctx: None)
    monkeypatch.setattr(pr, "atomic_torch_save", lambda *a, **k: None)
    protocol = dataclasses.replace(pr.cp.ProtocolConfig(), name="quick")
    loader = torch.utils.data.DataLoader([(torch.randn(3, 8, 8), 0)] * 4, batch_size=2,
                                         generator=torch.Generator())  # fmt: skip
    config = PruningBenchConfig(finetune_recipe="_test_kd")
    ctx = pr.Context(None, protocol, config, loader, None, torch.randn(1, 3, 8, 8), 0, tmp_path)
    student = _Net(4)
    monkeypatch.setattr(
        pr.METHODS, "get", lambda name: lambda base, ctx: pr.Pruned(student, info={"label": "x"})
    )
    _, row = pr.run_method("x", _Net(8), ctx)
    assert seen["config"].lr == 0.1 and seen["ckpt"] is None  # distilling: no resumable checkpoint
    assert [type(h) for h in seen["hooks"]] == [SoftTargetDistillation, FeatureDistillation]
    assert len(seen["params"]) == 1 and not student.features._forward_hooks  # closed after fit
    assert row["finetune_recipe"] == "_test_kd: lr 0.1, KD T 4 alpha 0.5, hint features x1"


def test_batch_size_recipe_reads_the_same_data_in_smaller_batches_from_the_same_generator() -> None:
    data = [(torch.full((1,), float(i)), i) for i in range(10)]
    gen = torch.Generator().manual_seed(3)
    loader = torch.utils.data.DataLoader(data, batch_size=4, shuffle=True, generator=gen)
    assert fr.Recipe().loader(loader) is loader and fr.Recipe(batch_size=4).loader(loader) is loader
    small = fr.Recipe(batch_size=3).loader(loader)
    assert small.generator is gen and small.batch_size == 3
    state = gen.get_state()
    seen = [int(t) for _, targets in small for t in targets]
    assert sorted(seen) == list(range(10)) and len(list(small)) == 4  # every image once per epoch, 4 steps
    gen.set_state(state)
    expected = [int(t) for _, targets in loader for t in targets]
    assert seen == expected  # the order the original loader gives from the same shuffle state
    with pytest.raises(ConfigError, match="batch_size"):
        fr.Recipe(batch_size=0)
