"""benchmarks/vit_extra_data.py: KD on extra unlabelled images outside the training subset and the validation split."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import netcompress
from netcompress.core.errors import ConfigError
from netcompress.data import balanced_subset
from netcompress.training import TrainConfig

xd = pytest.importorskip("vit_extra_data")


def _labels(n: int = 2000) -> np.ndarray:
    return np.random.default_rng(3).integers(0, 10, n)


def test_extra_images_avoid_the_training_subset_and_the_validation_split(monkeypatch):
    import cifar_protocol as cp

    labels = _labels()

    class Images(torch.utils.data.Dataset):
        def __init__(self):
            self.labels = torch.as_tensor(labels)

        def __len__(self):
            return len(labels)

        def __getitem__(self, i):
            return torch.zeros(3, 2, 2), int(labels[i])

    bundle = types.SimpleNamespace(train=Images(), num_classes=10)
    monkeypatch.setattr(netcompress.data, "load", lambda *a, **k: bundle)
    val = set(cp.heldout_loader(cp.ProtocolConfig(train_subset=500), size=300).dataset.indices)
    seed = netcompress.data.config_for("cifar10").subset_seed
    subset = set(balanced_subset(labels, size=500, num_classes=10, seed=seed).tolist())
    extra = xd.extra_indices(labels, train_subset=500, val_size=300, n=1200, num_classes=10, subset_seed=seed)
    assert len(extra) == len(set(extra)) == 1200 and len(val) == 300 and len(subset) == 500
    assert not set(extra) & subset and not set(extra) & val
    assert extra == xd.extra_indices(
        labels, train_subset=500, val_size=300, n=1200, num_classes=10, subset_seed=seed
    )
    with pytest.raises(ConfigError, match="only 1200 training images"):
        xd.extra_indices(labels, train_subset=500, val_size=300, n=1201, num_classes=10, subset_seed=seed)


def test_unlabelled_images_drop_the_label_keeping_its_type():
    data = TensorDataset(torch.randn(4, 3), torch.tensor([1, 2, 3, 4]))
    images = xd.Unlabelled(data, [2, 0])
    x, y = images[0]
    assert torch.equal(x, data[2][0]) and y.item() == xd.UNLABELLED and y.dtype == torch.long
    batch = next(iter(DataLoader(torch.utils.data.ConcatDataset([data, images]), batch_size=6)))
    assert batch[1].tolist() == [1, 2, 3, 4, -1, -1]


def test_masked_cross_entropy_reads_only_labelled_samples():
    logits = torch.randn(5, 10, requires_grad=True)
    targets = torch.tensor([3, -1, 7, -1, 0])
    keep = targets >= 0
    expected = F.cross_entropy(logits[keep], targets[keep])
    assert torch.allclose(xd.masked_cross_entropy(logits, targets), expected)
    none = xd.masked_cross_entropy(logits, torch.full((5,), -1))
    none.backward()
    assert none.item() == 0.0 and torch.count_nonzero(logits.grad) == 0


def test_equal_step_epochs_and_budget():
    assert xd.equal_step_epochs(3, 10000, 10000) == 6 and xd.equal_step_epochs(2, 10000, 20000) == 6
    with pytest.raises(ConfigError, match="multiple of the 10000 labelled"):
        xd.equal_step_epochs(3, 10000, 5000)
    assert xd.budget_rows(3, 10000, 10000, 128) == {"kd_steps": 471, "ce_epochs": 6, "ce_steps": 474}


def _kd(alpha: float, labelled: int) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    student, teacher = nn.Linear(4, 3), nn.Linear(4, 3)
    train = TensorDataset(torch.randn(labelled, 4), torch.randint(0, 3, (labelled,)))
    extra = xd.Unlabelled(
        TensorDataset(torch.randn(16, 4), torch.zeros(16, dtype=torch.long)), list(range(16))
    )
    config = TrainConfig(
        epochs=2, optimizer="adamw", lr=0.05, weight_decay=0.0, progress=False, keep_best=False
    )
    tuned = xd.kd_finetune_extra(
        student, teacher, train, extra, lambda d: DataLoader(d, batch_size=8, shuffle=False), config,
        temperature=2.0, alpha=alpha,
    )  # fmt: skip
    return student, tuned


def test_unlabelled_images_train_through_the_soft_targets_alone():
    student, tuned = _kd(alpha=1.0, labelled=0)  # only unlabelled images: the soft targets train it
    assert not torch.equal(tuned.weight, student.weight)
    torch.manual_seed(0)
    assert torch.equal(student.weight, nn.Linear(4, 3).weight)  # the model passed in is left untouched
    student, tuned = _kd(alpha=0.0, labelled=0)  # no hard label anywhere and no soft term: nothing to learn
    assert torch.equal(tuned.weight, student.weight) and torch.equal(tuned.bias, student.bias)


def test_vit_finetune_gives_the_labelled_rows_the_same_steps(monkeypatch):
    import vit_pruning as vp

    seen = []
    monkeypatch.setattr(
        vp, "fit", lambda model, loader, config: seen.append((config.epochs, len(loader.dataset)))
    )
    monkeypatch.setattr(
        vp.xd, "kd_finetune_extra", lambda m, t, train, extra, loader, config, **k: seen.append(
            (config.epochs, len(loader(torch.utils.data.ConcatDataset([train, extra])).dataset))
        ) or m,
    )  # fmt: skip
    args = vp.parse_args(["--quick", "--extra-unlabelled", "512"])
    train, _ = vp.synthetic_bundle(n_train=256, n_test=1)
    extra = vp.xd.unlabelled_images(args, 512)
    assert len(extra) == 512 and {int(extra[i][1]) for i in range(4)} == {xd.UNLABELLED}
    model = nn.Linear(2, 2)
    vp.finetune(args, model, train, None, extra)
    vp.finetune(args, model, train, model, extra)
    assert seen == [(3, 256), (1, 768)]  # --quick: batch 64, 1 epoch; 3 x 4 batches = 1 x 12 batches
