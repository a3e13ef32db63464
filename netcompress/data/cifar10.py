"""CIFAR-10 from any of its usual forms, decoded once and cached as uint8 arrays.

Accepted ``root``:
(a) the python pickle-batch folder ``cifar-10-batches-py`` (data_batch_1..5, test_batch) or a
    folder holding it, or the ``cifar-10-python.tar.gz`` archive;
(b) a JPEG class-folder tree ``<root>/{train,test}/<class>/*.jpg`` (or a folder holding one such tree);
(c) that tree as a ``.tar.gz``, streamed and decoded with Pillow without unpacking.
JPEG sources are decoded once and cached (see ``netcompress.data.cache``); pickle batches are
already raw pixels and load in well under a second, so they are read directly.
"""

from __future__ import annotations

import dataclasses
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from netcompress.core.config import check_range
from netcompress.core.errors import DataError
from netcompress.data.archives import iter_tar_members
from netcompress.data.bundle import DataBundle, ValidationSplit, hold_out_validation, split_counts
from netcompress.data.cache import cached_decode
from netcompress.data.catalog import find_default, register_dataset
from netcompress.data.image_folders import (
    SPLITS,
    channel_mean_std,
    decode_class_tree,
    iter_folder_images,
    split_and_class,
)
from netcompress.data.in_memory import ImageTensorDataset

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PICKLE_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
# Looked for, in this order, inside NETCOMPRESS_DATA or ../shared/data when no root is given.
DEFAULT_NAMES = ("cifar10-jpg.tar.gz", "cifar10-jpg", "cifar-10-batches-py", "cifar-10-python.tar.gz")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


@dataclasses.dataclass
class Cifar10Config(ValidationSplit):
    """Settings of the ``cifar10`` data set.

    ``train_subset`` keeps a fixed, class-balanced subset of the training images (drawn with
    ``subset_seed``); the test set is always complete. ``augment`` is the standard random crop
    (``crop_padding``, zero fill) plus horizontal flip, on the training split only. The validation
    split (``val_fraction``, ``val_size``, ``val_seed``) is held out of the (subset of the) training
    images and never augmented.

    Example:
        >>> Cifar10Config(train_subset=10000, augment=True)
    """

    root: str | None = None
    train_subset: int | None = None
    subset_seed: int = 0
    augment: bool = True
    crop_padding: int = 4
    flip: bool = True
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.train_subset is not None:
            check_range("train_subset", self.train_subset, 1)
        check_range("crop_padding", self.crop_padding, 0, 16)


def resolve_source(root: Path) -> tuple[str, Path]:
    """``(kind, path)`` for a CIFAR root: kind is "pickle" (folder), "tree" (folder) or "archive".

    Example:
        >>> resolve_source(Path("../shared/data/cifar10-jpg.tar.gz"))
        ('archive', PosixPath('../shared/data/cifar10-jpg.tar.gz'))
    """
    if not root.exists():
        raise DataError(f"CIFAR-10 path does not exist: {root}")
    if root.is_file():
        if root.name.lower().endswith(ARCHIVE_SUFFIXES):
            return "archive", root
        raise DataError(f"CIFAR-10 path {root} is a file but not a .tar.gz/.tgz/.tar archive")
    if (root / "data_batch_1").is_file():
        return "pickle", root
    if (root / "cifar-10-batches-py" / "data_batch_1").is_file():
        return "pickle", root / "cifar-10-batches-py"
    if all((root / split).is_dir() for split in SPLITS):
        return "tree", root
    subdirs = [d for d in sorted(root.iterdir()) if d.is_dir() and all((d / s).is_dir() for s in SPLITS)]
    if len(subdirs) == 1:
        return "tree", subdirs[0]
    raise DataError(
        f"CIFAR-10 folder {root} has neither pickle batches (data_batch_1..5, test_batch, optionally "
        f"inside cifar-10-batches-py/) nor a JPEG tree ({{train,test}}/<class>/*.jpg)"
    )


# What the official batches pickle: dicts, lists, bytes and numpy arrays. Nothing else may be built,
# so a crafted "batch" cannot call a function while it is read.
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how protocol 2 writes bytes under Python 3
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR-10 batch holds only arrays")


def _unpickle_batch(data: bytes, *, where: str) -> dict[bytes, Any]:
    import io

    try:
        batch = _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # pickle raises many types for a bad file
        raise DataError(f"cannot read CIFAR-10 batch {where}: {type(exc).__name__}: {exc}") from None
    if not isinstance(batch, dict):
        raise DataError(f"CIFAR-10 batch {where} is not a pickled dict")
    return batch


def arrays_from_pickles(blobs: dict[str, bytes], *, source: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """Arrays ``{split}_x`` (N, 3, 32, 32) uint8 and ``{split}_y`` from the pickle batches' bytes.

    Example:
        >>> arrays, classes = arrays_from_pickles({n: (d / n).read_bytes() for n in names}, source=str(d))
    """
    arrays: dict[str, np.ndarray] = {}
    for split, names in PICKLE_BATCHES.items():
        xs, ys = [], []
        for name in names:
            where = f"{source}/{name}"
            if name not in blobs:
                raise DataError(f"CIFAR-10 batch missing: {where}")
            batch = _unpickle_batch(blobs[name], where=where)
            try:
                data = np.asarray(batch[b"data"], dtype=np.uint8)
                labels = np.asarray(batch.get(b"labels", batch.get(b"fine_labels")), dtype=np.int64)
                xs.append(data.reshape(len(data), 3, 32, 32))
            except (KeyError, TypeError, ValueError) as exc:
                raise DataError(f"CIFAR-10 batch {where} has an unexpected layout: {exc}") from None
            if len(labels) != len(data):
                raise DataError(f"CIFAR-10 batch {where} has {len(data)} images but {len(labels)} labels")
            ys.append(labels)
        arrays[f"{split}_x"] = np.concatenate(xs)
        arrays[f"{split}_y"] = np.concatenate(ys)
    classes = CIFAR10_CLASSES
    if "batches.meta" in blobs:
        meta = _unpickle_batch(blobs["batches.meta"], where=f"{source}/batches.meta")
        if b"label_names" in meta:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[b"label_names"]]
    return arrays, list(classes)


def _read_pickle_folder(folder: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    blobs = {}
    for name in [*PICKLE_BATCHES["train"], *PICKLE_BATCHES["test"], "batches.meta"]:
        path = folder / name
        if path.is_file():
            try:
                blobs[name] = path.read_bytes()
            except OSError as exc:
                raise DataError(f"cannot read CIFAR-10 batch {path}: {exc}") from None
    return arrays_from_pickles(blobs, source=str(folder))


def _read_archive(path: Path) -> tuple[dict[str, np.ndarray], list[str], str]:
    """One streaming pass: collects pickle batches and class-tree images, whichever the archive holds."""
    blobs: dict[str, bytes] = {}
    images: list[tuple[str, str, str, bytes]] = []
    pickle_names = {*PICKLE_BATCHES["train"], *PICKLE_BATCHES["test"], "batches.meta"}
    for name, data in iter_tar_members(path):
        base = name.rsplit("/", 1)[-1]
        if base in pickle_names:
            blobs[base] = data
            continue
        found = split_and_class(name)
        if found is not None:
            images.append((found[0], found[1], name, data))
    if "data_batch_1" in blobs:
        return (*arrays_from_pickles(blobs, source=str(path)), "pickle")
    if not images:
        raise DataError(
            f"archive {path} holds neither CIFAR-10 pickle batches nor a {{train,test}}/<class>/*.jpg tree"
        )
    return (*decode_class_tree(iter(images), source=str(path)), "jpeg")


def _decode_cached_source(kind: str, path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    if kind == "archive":
        arrays, classes, content = _read_archive(path)
    else:
        arrays, classes = decode_class_tree(iter_folder_images(path), source=str(path))
        content = "jpeg"
    mean, std = channel_mean_std(arrays["train_x"])
    return arrays, {"class_names": classes, "mean": mean, "std": std, "content": content}


def balanced_subset(labels: np.ndarray, *, size: int, num_classes: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded subset with ``size // num_classes`` images per class.

    The remainder (``size % num_classes``) goes one each to the lowest class indices. A class
    with too few images is a DataError.

    Example:
        >>> idx = balanced_subset(np.arange(1000) % 10, size=100, num_classes=10, seed=0)
        >>> np.bincount(np.arange(1000)[idx] % 10).tolist()
        [10, 10, 10, 10, 10, 10, 10, 10, 10, 10]
    """
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in range(num_classes):
        members = np.flatnonzero(labels == cls)
        quota = size // num_classes + (1 if cls < size % num_classes else 0)
        if quota > len(members):
            raise DataError(
                f"train_subset={size} needs {quota} images of class {cls}, only {len(members)} exist"
            )
        chosen.append(rng.permutation(members)[:quota])
    return np.sort(np.concatenate(chosen))


def read_cifar_arrays(
    root: Path, *, cache_dir: str | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, Any]]:
    """``(arrays, meta, info)`` for a CIFAR root; JPEG sources go through the decode cache.

    Example:
        >>> arrays, meta, info = read_cifar_arrays(Path("../shared/data/cifar10-jpg.tar.gz"))
        >>> arrays["train_x"].shape, info["cache_hit"]
        ((50000, 3, 32, 32), True)
    """
    kind, path = resolve_source(root)
    if kind == "pickle":
        start = time.perf_counter()
        arrays, classes = _read_pickle_folder(path)
        mean, std = channel_mean_std(arrays["train_x"])
        meta = {"class_names": classes, "mean": mean, "std": std, "content": "pickle"}
        return (
            arrays,
            meta,
            {"format": kind, "content": "pickle", "source": str(path), "read_s": time.perf_counter() - start},
        )
    names = ["train_x", "train_y", "test_x", "test_y"]
    arrays, meta, info = cached_decode(
        kind="cifar10",
        source=path,
        names=names,
        decode=lambda: _decode_cached_source(kind, path),
        cache_dir=cache_dir,
    )
    return arrays, meta, {"format": kind, "content": meta.get("content", "jpeg"), "source": str(path), **info}


@register_dataset("cifar10", config=Cifar10Config)
def load_cifar10(config: Cifar10Config) -> DataBundle:
    """The CIFAR-10 bundle: uint8 images in memory, normalised with the training set's channel statistics.

    Example:
        >>> bundle = load_cifar10(Cifar10Config(train_subset=10000))
        >>> len(bundle.train), len(bundle.val), len(bundle.test), bundle.input_shape
        (9000, 1000, 10000, (3, 32, 32))
    """
    root = Path(config.root).expanduser() if config.root else find_default(DEFAULT_NAMES, what="CIFAR-10")
    arrays, meta, info = read_cifar_arrays(root, cache_dir=config.cache_dir)
    classes = list(meta["class_names"])
    train_x, train_y = arrays["train_x"], arrays["train_y"]
    if config.train_subset is not None:
        if config.train_subset > len(train_y):
            raise DataError(f"train_subset={config.train_subset} exceeds the {len(train_y)} training images")
        keep = balanced_subset(
            train_y, size=config.train_subset, num_classes=len(classes), seed=config.subset_seed
        )
        train_x, train_y = train_x[keep], train_y[keep]
    mean, std = tuple(meta["mean"]), tuple(meta["std"])
    train = ImageTensorDataset(
        torch.from_numpy(np.ascontiguousarray(train_x)),
        torch.from_numpy(train_y),
        mean=mean,
        std=std,
        augment=config.augment,
        crop_padding=config.crop_padding,
        flip=config.flip,
    )
    test = ImageTensorDataset(
        torch.from_numpy(arrays["test_x"]), torch.from_numpy(arrays["test_y"]), mean=mean, std=std
    )
    train, val = hold_out_validation(train, config)
    channels, height, width = (int(s) for s in arrays["test_x"].shape[1:])
    return DataBundle(
        name="cifar10",
        train=train,
        test=test,
        val=val,
        num_classes=len(classes),
        input_shape=(channels, height, width),
        class_names=classes,
        info={
            **info,
            **split_counts(train, val, test),
            "train_per_class": torch.bincount(train.labels, minlength=len(classes)).tolist(),
            "mean": list(mean),
            "std": list(std),
            "config": config.to_dict(),
        },
    )
