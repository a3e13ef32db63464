"""A loaded data set: train, validation and test splits plus what a model needs to know about them.

The validation split is held out of the training data (seeded, class-balanced, its size set by
:class:`ValidationSplit`, the settings every data set's config inherits). Everything that chooses
(rates, thresholds, the best epoch, calibration settings) is made on it; the test split is only
for the reported figures.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from netcompress.core.config import Config, check_range
from netcompress.core.errors import ConfigError


@dataclasses.dataclass
class ValidationSplit(Config):
    """How much of the training data every data set holds out as its validation split.

    ``val_size`` (a count) wins over ``val_fraction`` (a share of the training data, rounded);
    ``val_fraction: 0`` (or ``val_size: 0``) turns the split off: every training sample trains,
    and steps get no validation loader (training records no ``val_acc``, nothing is chosen on
    held-out data). ``val_seed`` picks which samples: the same seed holds out the same indices.

    Example:
        >>> DigitsConfig(val_fraction=0.2, val_seed=1)
    """

    val_fraction: float = 0.1
    val_size: int | None = None
    val_seed: int = 0

    def __post_init__(self) -> None:
        check_range("val_fraction", self.val_fraction, 0.0, 0.9)
        if self.val_size is not None:
            check_range("val_size", self.val_size, 0)

    def val_count(self, num_train: int) -> int:
        """How many of ``num_train`` training samples the split holds out."""
        count = self.val_size if self.val_size is not None else round(self.val_fraction * num_train)
        if count and count >= num_train:
            raise ConfigError(
                f"a validation split of {count} leaves nothing of the {num_train} training samples to train on"
            )
        return count


def validation_indices(labels: torch.Tensor, *, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded, class-balanced split of ``range(len(labels))`` into sorted (train, validation) indices.

    Samples are drawn in a seeded random order, one class after another (round robin), so every
    class gets ``count / classes`` samples give or take one, however small ``count`` is.

    Example:
        >>> train_idx, val_idx = validation_indices(torch.arange(100) % 10, count=20, seed=0)
        >>> len(train_idx), len(val_idx), torch.bincount(torch.as_tensor(val_idx) % 10).tolist()
        (80, 20, [2, 2, 2, 2, 2, 2, 2, 2, 2, 2])
    """
    labels = torch.as_tensor(labels, dtype=torch.int64)
    if labels.dim() != 1:  # class maps or multi-label rows: one group, a plain seeded random split
        labels = torch.zeros(len(labels), dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    shuffled = labels[order]
    rank = torch.zeros(len(labels), dtype=torch.int64)  # position of each sample within its class
    for cls in shuffled.unique():
        members = shuffled == cls
        rank[members] = torch.arange(int(members.sum()))
    picked = order[torch.sort(rank, stable=True).indices[:count]]
    is_val = torch.zeros(len(labels), dtype=torch.bool)
    is_val[picked] = True
    return torch.nonzero(~is_val).flatten(), torch.nonzero(is_val).flatten()


def hold_out_validation(train: Dataset, split: ValidationSplit) -> tuple[Dataset, Dataset | None]:
    """``(train without the validation split, validation split or None)``, drawn as ``split`` says.

    Datasets with a ``subset`` method (the in-memory ones) give the validation split without
    augmentation; any other dataset is split with ``torch.utils.data.Subset``.
    """
    count = split.val_count(len(train))
    if count == 0:
        return train, None
    labels = getattr(train, "labels", None)
    if labels is None:
        labels = torch.tensor([int(train[i][1]) for i in range(len(train))])
    train_idx, val_idx = validation_indices(labels, count=count, seed=split.val_seed)
    if hasattr(train, "subset"):
        return train.subset(train_idx), train.subset(val_idx, augment=False)
    return Subset(train, train_idx.tolist()), Subset(train, val_idx.tolist())


def split_counts(train: Dataset, val: Dataset | None, test: Dataset) -> dict[str, int]:
    """``num_train``, ``num_val`` (0 without a validation split) and ``num_test``: every bundle's info holds them."""
    return {"num_train": len(train), "num_val": 0 if val is None else len(val), "num_test": len(test)}


@dataclasses.dataclass
class DataBundle:
    """Train/validation/test datasets yielding ``(input_tensor, int_label)``, and their shape facts.

    ``val`` is held out of the training data (None when the data set's config turns it off).
    """

    name: str
    train: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, ...]  # one sample, without the batch dimension: (C, H, W) or (C, L)
    class_names: list[str] = dataclasses.field(default_factory=list)
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    val: Dataset | None = None

    def loaders(
        self, *, batch_size: int = 128, eval_batch_size: int = 256, num_workers: int = 0, seed: int = 0
    ) -> tuple[DataLoader, DataLoader]:
        """Seeded shuffling train loader and a test loader in a fixed, class-mixed order.

        The validation split is not in either: :meth:`val_loader` reads it.
        """
        gen = torch.Generator().manual_seed(seed)
        train = DataLoader(
            self.train,
            batch_size=batch_size,
            shuffle=True,
            num_workers=num_workers,
            generator=gen,
            drop_last=False,
        )
        return train, _fixed_order_loader(self.test, eval_batch_size, num_workers)

    def val_loader(self, *, eval_batch_size: int = 256, num_workers: int = 0) -> DataLoader | None:
        """The validation split in a fixed, class-mixed order; None when the bundle has none.

        Example:
            >>> val = nc.data.load("digits").val_loader(eval_batch_size=64)
        """
        if self.val is None:
            return None
        return _fixed_order_loader(self.val, eval_batch_size, num_workers)

    def split_sizes(self) -> dict[str, int]:
        """Samples per split, e.g. ``{"train": 1293, "val": 144, "test": 360}``."""
        return {
            "train": len(self.train),
            "val": 0 if self.val is None else len(self.val),
            "test": len(self.test),
        }

    def example_inputs(self, batch_size: int = 1) -> torch.Tensor:
        return torch.randn(batch_size, *self.input_shape)


def _fixed_order_loader(dataset: Dataset, batch_size: int, num_workers: int) -> DataLoader:
    # A fixed interleaving (not the file order, which is often sorted by class), so that an
    # evaluation limited to the first few batches still sees every class.
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0)).tolist()
    return DataLoader(dataset, batch_size=batch_size, sampler=order, num_workers=num_workers)
