"""A loaded data set: train and test splits plus what a model needs to know about them."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset


@dataclasses.dataclass
class DataBundle:
    """Train/test datasets yielding ``(input_tensor, int_label)``, and their shape facts."""

    name: str
    train: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, ...]  # one sample, without the batch dimension: (C, H, W) or (C, L)
    class_names: list[str] = dataclasses.field(default_factory=list)
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def loaders(
        self, *, batch_size: int = 128, eval_batch_size: int = 256, num_workers: int = 0, seed: int = 0
    ) -> tuple[DataLoader, DataLoader]:
        """Seeded shuffling train loader and a test loader in a fixed, class-mixed order."""
        gen = torch.Generator().manual_seed(seed)
        train = DataLoader(
            self.train,
            batch_size=batch_size,
            shuffle=True,
            num_workers=num_workers,
            generator=gen,
            drop_last=False,
        )
        # A fixed interleaving (not the file order, which is often sorted by class), so that an
        # evaluation limited to the first few batches still sees every class.
        order = torch.randperm(len(self.test), generator=torch.Generator().manual_seed(0)).tolist()
        test = DataLoader(self.test, batch_size=eval_batch_size, sampler=order, num_workers=num_workers)
        return train, test

    def example_inputs(self, batch_size: int = 1) -> torch.Tensor:
        return torch.randn(batch_size, *self.input_shape)
