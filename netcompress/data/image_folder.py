"""The ``image_folder`` data set: a user's own class-folder tree of images of any size.

``data: {name: image_folder, root: photos/, image_size: 64}`` reads ``photos/<class>/*.jpg`` (or
``photos/{train,test}/<class>/...``, optionally with ``val/``), fits every image to one size (see
:mod:`netcompress.data.image_resize`), and splits a tree without split folders into train and test
by ``test_fraction`` (seeded, stratified); the validation split is then held out of train as for
every data set. The decoded uint8 arrays are cached (:mod:`netcompress.data.cache`), keyed by the
folder's files and the decode settings, so the next run reads them back instead of decoding.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from netcompress.core.config import check_choice, check_range
from netcompress.core.errors import ConfigError
from netcompress.data.bundle import DataBundle, ValidationSplit, split_counts, validation_indices
from netcompress.data.cache import cached_decode
from netcompress.data.catalog import register_dataset
from netcompress.data.image_folders import channel_mean_std
from netcompress.data.image_layout import ALL, ImageLayout, find_layout
from netcompress.data.image_resize import RESIZE_MODES, decode_images
from netcompress.data.in_memory import ImageTensorDataset
from netcompress.data.splits import stratified_split

PART_CODES = {ALL: 0, "train": 1, "val": 2, "test": 3}


@dataclasses.dataclass
class ImageFolderConfig(ValidationSplit):
    """Settings of the ``image_folder`` data set.

    ``image_size`` is one side (square) or ``[height, width]``; ``resize`` is "shorter" (scale so the
    image covers the size, then crop the centre), "stretch" (scale to the size, aspect ratio lost)
    or "none" (crop the centre only). ``grayscale`` gives one channel, else three (alpha dropped).
    ``mean``/``std`` (one value per channel, in [0, 1] pixel units) normalise the inputs; when
    null they are computed on the training split only. ``test_fraction`` applies when the folder
    has no ``train/``/``test/`` folders; ``seed`` draws that split. With a ``val/`` folder, it is the
    validation split and ``val_fraction``/``val_size`` are not used. ``augment`` adds random shifts
    (``crop_padding``) and flips (``flip``) to the training split.

    Example:
        >>> ImageFolderConfig(root="photos", image_size=[48, 64], grayscale=True)
    """

    root: str | None = None
    image_size: int | list[int] = 32
    resize: str = "shorter"
    grayscale: bool = False
    mean: list[float] | None = None
    std: list[float] | None = None
    test_fraction: float = 0.2
    seed: int = 0
    augment: bool = False
    crop_padding: int = 4
    flip: bool = True
    cache: bool = True
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.root:
            raise ConfigError("root is required: the folder holding one sub-folder per class")
        sides = [self.image_size] if isinstance(self.image_size, int) else list(self.image_size)
        if len(sides) not in (1, 2) or any(isinstance(s, bool) or not isinstance(s, int) for s in sides):
            raise ConfigError(f"image_size={self.image_size!r} must be one side or [height, width]")
        for side in sides:
            check_range("image_size", side, 1, 4096)
        check_choice("resize", self.resize, RESIZE_MODES)
        channels = 1 if self.grayscale else 3
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is not None and len(values) != channels:
                raise ConfigError(
                    f"{name}={values!r} needs {channels} value{'s' if channels > 1 else ''} "
                    f"(grayscale={self.grayscale})"
                )
        if (self.mean is None) != (self.std is None):
            raise ConfigError(
                "give both mean and std, or neither (then both are computed on the training split)"
            )
        if self.std is not None and min(self.std) <= 0:
            raise ConfigError(f"std={self.std!r} must be above 0")
        if not 0 < self.test_fraction <= 0.9:
            raise ConfigError(f"test_fraction={self.test_fraction!r} must be within (0, 0.9]")
        check_range("crop_padding", self.crop_padding, 0, 16)

    def size(self) -> tuple[int, int]:
        """``(height, width)`` every image is fitted to."""
        if isinstance(self.image_size, int):
            return self.image_size, self.image_size
        return int(self.image_size[0]), int(self.image_size[-1])


def read_images(
    layout: ImageLayout, config: ImageFolderConfig
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays ``x`` (N, C, H, W) uint8, ``y`` (labels) and ``part`` (codes of :data:`PART_CODES`).

    Decoded once and cached unless ``config.cache`` is false; ``info`` says whether the cache hit.

    Example:
        >>> arrays, info = read_images(find_layout(Path("photos")), ImageFolderConfig(root="photos"))
    """
    files = [(path, label, PART_CODES[part]) for part, pairs in layout.parts.items() for path, label in pairs]
    settings = {"size": list(config.size()), "resize": config.resize, "grayscale": config.grayscale}

    def _decode() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        x = decode_images(
            [f[0] for f in files], size=config.size(), resize=config.resize, grayscale=config.grayscale
        )
        y = np.array([f[1] for f in files], dtype=np.int64)
        part = np.array([f[2] for f in files], dtype=np.int64)
        return {"x": x, "y": y, "part": part}, {"class_names": layout.class_names, **settings}

    if not config.cache:
        arrays, _ = _decode()
        return arrays, {"cache_hit": False}
    arrays, _, info = cached_decode(
        kind="image_folder",
        source=layout.root,
        names=["x", "y", "part"],
        decode=_decode,
        cache_dir=config.cache_dir,
        settings=settings,
    )
    return arrays, info


def split_indices(
    y: np.ndarray, part: np.ndarray, config: ImageFolderConfig
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, str]:
    """``(train, val or None, test, how)`` indices into the decoded arrays; ``how`` names the source."""
    if (part == PART_CODES[ALL]).any():
        train, test = stratified_split(y, test_fraction=config.test_fraction, seed=config.seed)
        how = "test_fraction"
    else:
        train, test = np.flatnonzero(part == PART_CODES["train"]), np.flatnonzero(part == PART_CODES["test"])
        how = "folders"
        val = np.flatnonzero(part == PART_CODES["val"])
        if len(val):
            return train, val, test, "folders (train/, val/, test/)"
    count = config.val_count(len(train))
    if count == 0:
        return train, None, test, how
    keep, held = validation_indices(torch.from_numpy(y[train]), count=count, seed=config.val_seed)
    return train[keep.numpy()], train[held.numpy()], test, how


@register_dataset("image_folder", config=ImageFolderConfig)
def load_image_folder(config: ImageFolderConfig) -> DataBundle:
    """The bundle of a class-folder tree: fitted uint8 images in memory, normalised per channel.

    Example:
        >>> bundle = load_image_folder(ImageFolderConfig(root="photos", image_size=32))
        >>> bundle.input_shape, bundle.class_names
        ((3, 32, 32), ['cat', 'dog'])
    """
    layout = find_layout(Path(config.root).expanduser())
    arrays, cache_info = read_images(layout, config)
    x, y = arrays["x"], arrays["y"]
    train_idx, val_idx, test_idx, how = split_indices(y, arrays["part"], config)
    if config.mean is not None:
        mean, std = [float(v) for v in config.mean], [float(v) for v in config.std or []]
        stats_from = "config"
    else:
        mean, std = channel_mean_std(x[train_idx])
        std = [s if s > 0 else 1.0 for s in std]  # a constant channel is shifted, not divided by zero
        stats_from = "training split"
    images, labels = torch.from_numpy(x), torch.from_numpy(y)

    def _dataset(index: np.ndarray, *, augment: bool) -> ImageTensorDataset:
        rows = torch.from_numpy(index)
        return ImageTensorDataset(
            images[rows],
            labels[rows],
            mean=tuple(mean),
            std=tuple(std),
            augment=augment,
            crop_padding=config.crop_padding,
            flip=config.flip,
        )

    train = _dataset(train_idx, augment=config.augment)
    val = None if val_idx is None else _dataset(val_idx, augment=False)
    test = _dataset(test_idx, augment=False)
    num_classes = len(layout.class_names)
    return DataBundle(
        name="image_folder",
        train=train,
        test=test,
        val=val,
        num_classes=num_classes,
        input_shape=tuple(int(s) for s in x.shape[1:]),
        class_names=list(layout.class_names),
        info={
            **cache_info,
            "source": str(layout.root),
            "split_from": how,
            **split_counts(train, val, test),
            "train_per_class": torch.bincount(train.labels, minlength=num_classes).tolist(),
            "mean": mean,
            "std": std,
            "stats_from": stats_from,
            "config": config.to_dict(),
        },
    )
