"""Seeded train/test splits and class-label checks shared by the data sets users bring.

A folder of images, a tensor file or a user's own ``Dataset`` often comes as one pile of samples.
:func:`stratified_split` cuts a test split out of it, class by class, in proportion, so a rare
class still appears in both; the validation split is then held out of the training part as for
every other data set (:func:`netcompress.data.bundle.hold_out_validation`).
:func:`held_out_groups` cuts the test split by group instead (e.g. FSDD's speakers), so no group
of the test split is ever seen in training.
"""

from __future__ import annotations

import numpy as np
import torch

from netcompress.core.errors import DataError


def stratified_split(labels: np.ndarray, *, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``(train indices, test indices)``: ``round(test_fraction * n)`` of each class's ``n`` to test.

    A class keeps at least one training sample; the same seed gives the same split. A split that
    leaves the test set empty is a DataError (too few samples for ``test_fraction``).

    Example:
        >>> train, test = stratified_split(np.arange(20) % 2, test_fraction=0.2, seed=0)
        >>> len(train), len(test), np.bincount(np.arange(20)[test] % 2).tolist()
        (16, 4, [2, 2])
    """
    labels = np.asarray(labels, dtype=np.int64)
    if labels.ndim != 1:  # class maps or multi-label rows: one group, a plain seeded random split
        labels = np.zeros(len(labels), dtype=np.int64)
    rng = np.random.default_rng(seed)
    test_parts = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        count = min(int(round(test_fraction * len(members))), len(members) - 1)
        test_parts.append(rng.permutation(members)[:count])
    test = np.sort(np.concatenate(test_parts)) if test_parts else np.zeros(0, dtype=np.int64)
    if len(test) == 0:
        raise DataError(
            f"test_fraction={test_fraction} of {len(labels)} samples leaves no test samples; "
            "raise test_fraction or add samples"
        )
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[test] = True
    return np.flatnonzero(~is_test), test


def class_labels(values: object, *, where: str) -> np.ndarray:
    """``values`` as a 1-D int64 array of class labels (>= 0); ``where`` names the file and key in errors.

    Integer arrays (or an ``(N, 1)`` column) pass; floats, booleans and negative values are refused:
    labels index the model's outputs.

    Example:
        >>> class_labels(np.array([[0], [2]]), where="y.npy").tolist()
        [0, 2]
    """
    array = values.numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise DataError(f"{where}: class labels must be one integer per sample, got shape {array.shape}")
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"{where}: class labels must be integers, got dtype {array.dtype}")
    if len(array) and int(array.min()) < 0:
        raise DataError(f"{where}: class labels must be >= 0, found {int(array.min())}")
    return array.astype(np.int64)


IGNORED_CLASS = 255  # the usual "skip this pixel" value of segmentation masks (VOC), never counted as a class


def training_targets(values: object, *, where: str) -> tuple[np.ndarray, str]:
    """``(targets, kind)``: one class per sample (``class``, see :func:`class_labels`), per-pixel class maps
    (N, H, W, ...) of integers (``dense``), or multi-label rows (N, K) of 0/1 (``multilabel``).

    Example:
        >>> training_targets(np.array([[0, 1, 1], [1, 0, 0]]), where="y.npy")[1]
        'multilabel'
    """
    array = values.numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    if array.ndim <= 1 or (array.ndim == 2 and array.shape[1] == 1):
        return class_labels(array, where=where), "class"
    if array.dtype != np.bool_ and not np.issubdtype(array.dtype, np.integer):
        if array.ndim == 2 and np.isin(array, (0.0, 1.0)).all():
            return array.astype(np.int64), "multilabel"
        what = "multi-label rows (N, K) of 0/1" if array.ndim == 2 else "class maps (N, H, W) of integers"
        raise DataError(f"{where}: targets of shape {array.shape} are read as {what}, got dtype {array.dtype}")
    if array.ndim == 2:
        if not np.isin(array, (0, 1)).all():
            bad = array[~np.isin(array, (0, 1))][0]
            raise DataError(
                f"{where}: targets of shape {array.shape} are read as multi-label rows (one 0/1 per label), "
                f"found {bad}; one class per sample is shape (N,)"
            )
        return array.astype(np.int64), "multilabel"
    return array.astype(np.int64), "dense"


def target_kind(targets: np.ndarray) -> str:
    """The kind of targets :func:`training_targets` returned, from their dimensions."""
    return {1: "class", 2: "multilabel"}.get(targets.ndim, "dense")


def target_classes(parts: list[np.ndarray], kind: str, *, given: int | None, where: str) -> int:
    """Classes of ``kind`` targets: :func:`count_classes` for classes, K for (N, K) multi-label rows, and for
    class maps ``given`` or the largest value plus one, leaving out ``IGNORED_CLASS`` and negative values.

    Example:
        >>> target_classes([np.array([[[0, 2], [255, 1]]])], "dense", given=None, where="y.npy")
        3
    """
    if kind == "class":
        return count_classes(parts, given=given, where=where)
    if kind == "multilabel":
        return int(parts[0].shape[1])
    if given is not None:
        return given
    values = np.concatenate([p.reshape(-1) for p in parts])
    values = values[(values >= 0) & (values != IGNORED_CLASS)]
    top = int(values.max()) if len(values) else -1
    if top < 1:
        raise DataError(f"{where}: the class maps hold fewer than two classes; set num_classes")
    return top + 1


def count_classes(labels: list[np.ndarray], *, given: int | None, where: str) -> int:
    """``given`` when set (every label must be below it), else the largest label plus one.

    Example:
        >>> count_classes([np.array([0, 3]), np.array([1])], given=None, where="data")
        4
    """
    top = max((int(part.max()) for part in labels if len(part)), default=-1)
    if given is None:
        if top < 1:
            raise DataError(f"{where}: the labels hold fewer than two classes; set num_classes")
        return top + 1
    if top >= given:
        raise DataError(f"{where}: label {top} does not fit num_classes={given} (labels are 0..{given - 1})")
    return given


def held_out_groups(
    groups: np.ndarray, names: list[str], test_names: list[str], *, what: str = "group"
) -> np.ndarray:
    """Boolean test mask: True for every sample whose group (an index into ``names``) is in ``test_names``.

    ``what`` names the kind of group in errors. A name not in ``names`` is a DataError naming it and
    listing the names found; holding out every group (nothing left to train on) is a DataError too.

    Example:
        >>> held_out_groups(np.array([0, 1, 2, 1]), ["ann", "bob", "cy"], ["bob"]).tolist()
        [False, True, False, True]
    """
    unknown = [name for name in test_names if name not in names]
    if unknown:
        raise DataError(
            f"test {what}(s) {', '.join(map(repr, unknown))} not in the data; "
            f"{what}s found: {', '.join(names)}"
        )
    if set(test_names) >= set(names):
        raise DataError(
            f"test {what}s {sorted(test_names)} are every {what} in the data: nothing left to train on"
        )
    test_ids = np.array([names.index(name) for name in test_names], dtype=np.int64)
    return np.isin(np.asarray(groups, dtype=np.int64), test_ids)
