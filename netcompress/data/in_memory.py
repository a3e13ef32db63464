"""Datasets held whole in memory as compact tensors, with a batched fetch path.

Images stay uint8 (CIFAR-10 train: 150 MB) and audio int16; conversion to normalised float and
augmentation happen per fetch. ``DataLoader`` calls ``__getitems__`` with a whole batch of indices
(torch >= 2.0), so one batch costs a handful of tensor ops rather than ``batch_size`` Python calls:
loading must not dominate a small CNN's training step on 2 cores.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch.utils.data import Dataset

from netcompress.data.augment import normalize, random_crop_flip


class _TensorDataset(Dataset):
    """What the in-memory datasets share: samples indexed out of tensors named in ``TENSORS``."""

    TENSORS: tuple[str, ...] = ()

    def subset(self, indices: torch.Tensor | list[int], *, augment: bool | None = None) -> _TensorDataset:
        """The samples at ``indices`` as a dataset of the same kind (``augment`` overrides, where it applies).

        Example:
            >>> val = ds.subset([0, 5, 9], augment=False)
        """
        index = torch.as_tensor(indices, dtype=torch.int64)
        out = copy.copy(self)
        for name in self.TENSORS:
            setattr(out, name, getattr(self, name)[index])
        if augment is not None and hasattr(out, "augment"):
            out.augment = augment
        return out


class ImageTensorDataset(_TensorDataset):
    """``(C, H, W)`` images from an ``(N, C, H, W)`` tensor, normalised per channel, optionally augmented.

    ``scale`` maps stored values to [0, 1] (255 for uint8 pixels) before ``(x - mean) / std``.
    ``crop_padding`` > 0 enables random shifts by up to that many pixels and ``flip`` random
    horizontal mirroring; both only when ``augment`` is True.

    Example:
        >>> ds = ImageTensorDataset(torch.zeros(10, 3, 32, 32, dtype=torch.uint8), torch.arange(10),
        ...                         mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
        >>> ds[0][0].shape, ds[0][1]
        (torch.Size([3, 32, 32]), 0)
    """

    TENSORS = ("images", "labels")

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        scale: float = 255.0,
        augment: bool = False,
        crop_padding: int = 4,
        flip: bool = True,
    ) -> None:
        if images.dim() != 4 or images.shape[1] != len(mean) or len(mean) != len(std):
            raise ValueError(
                f"images must be (N, C, H, W) with C == len(mean) == len(std); got {tuple(images.shape)}, "
                f"{len(mean)} means, {len(std)} stds"
            )
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.mean = torch.tensor(mean, dtype=torch.float32)
        self.std = torch.tensor(std, dtype=torch.float32)
        self.scale = float(scale)
        self.augment = augment
        self.crop_padding = crop_padding
        self.flip = flip

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, indices: torch.Tensor | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch for ``indices`` as ``(float images (N, C, H, W), int64 labels (N,))``.

        Example:
            >>> x, y = ds.batch(torch.arange(4))
        """
        index = torch.as_tensor(indices, dtype=torch.int64)
        images = self.images[index]
        if self.augment and (self.crop_padding > 0 or self.flip):
            images = random_crop_flip(images, padding=self.crop_padding, flip=self.flip)
        return normalize(images, mean=self.mean, std=self.std, scale=self.scale), self.labels[index]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        # DataLoader's default collate stacks a list of samples; handing it views of one batched
        # result keeps the augmentation vectorised and the loader API unchanged.
        images, labels = self.batch(indices)
        return list(zip(images.unbind(0), labels.tolist()))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        images, labels = self.batch([int(index)])
        return images[0], int(labels[0])


class WaveformDataset(_TensorDataset):
    """``(1, L)`` float waveforms in [-1, 1) from an ``(N, L)`` int16 tensor.

    Example:
        >>> ds = WaveformDataset(torch.zeros(4, 8000, dtype=torch.int16), torch.arange(4))
        >>> ds[1][0].shape, ds[1][1]
        (torch.Size([1, 8000]), 1)
    """

    TENSORS = ("waves", "labels")

    def __init__(self, waves: torch.Tensor, labels: torch.Tensor) -> None:
        if waves.dim() != 2:
            raise ValueError(f"waves must be (N, L), got {tuple(waves.shape)}")
        if len(labels) != len(waves):
            raise ValueError(f"{len(waves)} waves but {len(labels)} labels")
        self.waves = waves
        self.labels = labels.to(torch.int64)

    def __len__(self) -> int:
        return len(self.waves)

    def batch(self, indices: torch.Tensor | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(float waves (N, 1, L), int64 labels (N,))`` for ``indices``.

        Example:
            >>> x, y = ds.batch([0, 1])
        """
        index = torch.as_tensor(indices, dtype=torch.int64)
        return self.waves[index].to(torch.float32).div_(32768.0).unsqueeze(1), self.labels[index]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        waves, labels = self.batch(indices)
        return list(zip(waves.unbind(0), labels.tolist()))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        waves, labels = self.batch([int(index)])
        return waves[0], int(labels[0])


class FloatTensorDataset(_TensorDataset):
    """Already-prepared float samples ``(N, *shape)`` with labels (the synthetic data set).

    Example:
        >>> ds = FloatTensorDataset(torch.randn(8, 1, 8, 8), torch.arange(8) % 2)
        >>> ds[3][0].shape
        torch.Size([1, 8, 8])
    """

    TENSORS = ("inputs", "labels")

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        if len(labels) != len(inputs):
            raise ValueError(f"{len(inputs)} inputs but {len(labels)} labels")
        # int64 inputs are token ids (embedding lookups), kept as they are; everything else is float32
        self.inputs = inputs if inputs.dtype == torch.int64 else inputs.to(torch.float32)
        self.labels = labels.to(torch.int64)

    def __len__(self) -> int:
        return len(self.inputs)

    def batch(self, indices: torch.Tensor | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs (N, ...), int64 labels (N,))`` for ``indices``.

        Example:
            >>> x, y = ds.batch([0, 1, 2])
        """
        index = torch.as_tensor(indices, dtype=torch.int64)
        return self.inputs[index], self.labels[index]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, Any]]:
        inputs, labels = self.batch(indices)
        # class maps (N, H, W) and multi-label rows (N, K) stay tensors per sample
        return list(zip(inputs.unbind(0), labels.unbind(0) if labels.dim() > 1 else labels.tolist()))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        inputs, labels = self.batch([int(index)])
        return inputs[0], labels[0] if labels.dim() > 1 else int(labels[0])
