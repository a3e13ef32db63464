"""The contract for train/supervised and train/finetune: ``fit`` and ``apply`` give the same model."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from netcompress.core.methods import MethodData, apply, method_for
from netcompress.training import FinetuneConfig, TrainConfig, fit
from tests.state_checks import same_weights


def _loader(seed: int = 0) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(48, 8, generator=gen), torch.randint(0, 3, (48,), generator=gen)
    return DataLoader(
        TensorDataset(x, y), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(1)
    )


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


@pytest.mark.parametrize(
    "config_cls, key", [(TrainConfig, "train/supervised"), (FinetuneConfig, "train/finetune")]
)
def test_fit_and_the_registered_method_give_the_same_model(config_cls, key):
    fields = {"epochs": 2, "lr": 0.1, "seed": 3, "progress": False}
    assert method_for(config_cls).key == key
    by_verb, by_method = _model(), _model()
    fit(by_verb, _loader(), val_loader=_loader(5), config=TrainConfig(**fields))
    result = apply(
        by_method,
        config_cls.from_dict(fields, where="test"),
        MethodData(train_loader=_loader(), val_loader=_loader(5), seed=3, progress=False),
    )
    assert result.model is by_method and len(result.history) == 2
    assert same_weights(by_verb, by_method)
    assert not same_weights(by_verb, _model())  # training moved the weights


def test_train_method_without_a_folder_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    apply(_model(), TrainConfig(epochs=1, progress=False), MethodData(train_loader=_loader(), progress=False))
    assert list(tmp_path.iterdir()) == []


def test_finetune_config_is_its_own_class_with_train_config_defaults():
    assert FinetuneConfig().to_dict() == TrainConfig().to_dict()
    assert method_for(FinetuneConfig).key != method_for(TrainConfig).key
