"""The embedded default data set: scikit-learn's bundled 8x8 handwritten digits (no download).

1,797 real grey-scale images of the digits 0-9 (pixel values 0..16), split once with a seeded,
stratified split into 1,437 train / 360 test images, so every machine trains on the same data;
by default 144 of the 1,437 are held out as the validation split (1,293 train).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from netcompress.core.config import check_range
from netcompress.data.bundle import DataBundle, ValidationSplit, hold_out_validation, split_counts
from netcompress.data.catalog import register_dataset
from netcompress.data.in_memory import ImageTensorDataset

DIGITS_PIXEL_MAX = 16.0
DIGITS_TOTAL = 1797


@dataclasses.dataclass
class DigitsConfig(ValidationSplit):
    """Settings of the ``digits`` data set.

    ``image_size`` resizes (bilinear) from 8x8, e.g. to feed a model built for larger inputs;
    ``augment`` enables random shifts of up to ``shift_pixels`` (never flips: a mirrored digit is
    not the same digit). The validation split (``val_fraction``, ``val_size``, ``val_seed``, see
    :class:`~netcompress.data.bundle.ValidationSplit`) is held out of the 1,437 training images.

    Example:
        >>> DigitsConfig(image_size=16, augment=True)
    """

    test_size: int = 360
    split_seed: int = 0
    image_size: int | None = None
    augment: bool = False
    shift_pixels: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("test_size", self.test_size, 10, DIGITS_TOTAL - 10)
        check_range("shift_pixels", self.shift_pixels, 0, 4)
        if self.image_size is not None:
            check_range("image_size", self.image_size, 2, 256)


def stratified_split(labels: np.ndarray, *, test_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of indices into (train, test), each sorted.

    Example:
        >>> train_idx, test_idx = stratified_split(np.arange(100) % 10, test_size=20, seed=0)
        >>> len(train_idx), len(test_idx)
        (80, 20)
    """
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    train_idx, test_idx = train_test_split(index, test_size=test_size, stratify=labels, random_state=seed)
    return np.sort(train_idx), np.sort(test_idx)


@register_dataset("digits", config=DigitsConfig)
def load_digits(config: DigitsConfig) -> DataBundle:
    """The digits bundle: inputs (1, 8, 8) (or (1, S, S) with ``image_size``), 10 classes.

    Example:
        >>> bundle = load_digits(DigitsConfig())
        >>> len(bundle.train), len(bundle.val), len(bundle.test), bundle.input_shape
        (1293, 144, 360, (1, 8, 8))
    """
    from sklearn.datasets import load_digits as sk_load_digits

    raw = sk_load_digits()
    images = torch.from_numpy(raw.images.astype(np.float32)).unsqueeze(1)  # (1797, 1, 8, 8), 0..16
    labels = torch.from_numpy(raw.target.astype(np.int64))
    if config.image_size is not None and config.image_size != images.shape[-1]:
        size = (config.image_size, config.image_size)
        images = torch.nn.functional.interpolate(images, size=size, mode="bilinear", align_corners=False)
    train_idx, test_idx = stratified_split(raw.target, test_size=config.test_size, seed=config.split_seed)
    train_images = images[torch.from_numpy(train_idx)]
    # Normalise with the training split's statistics only, so the test set stays unseen.
    mean = float(train_images.mean() / DIGITS_PIXEL_MAX)
    std = float(train_images.std() / DIGITS_PIXEL_MAX)
    common = {"mean": (mean,), "std": (std,), "scale": DIGITS_PIXEL_MAX, "flip": False}
    train = ImageTensorDataset(
        train_images,
        labels[torch.from_numpy(train_idx)],
        augment=config.augment,
        crop_padding=config.shift_pixels,
        **common,
    )
    test = ImageTensorDataset(
        images[torch.from_numpy(test_idx)], labels[torch.from_numpy(test_idx)], **common
    )
    train, val = hold_out_validation(train, config)
    side = int(images.shape[-1])
    return DataBundle(
        name="digits",
        train=train,
        test=test,
        val=val,
        num_classes=10,
        input_shape=(1, side, side),
        class_names=[str(d) for d in range(10)],
        info={
            "source": "sklearn.datasets.load_digits",
            **split_counts(train, val, test),
            "mean": [mean],
            "std": [std],
            "config": config.to_dict(),
        },
    )
