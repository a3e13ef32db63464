"""The ``tensors`` data set: inputs and class labels from ``.npy``, ``.npz`` or ``.pt`` files.

Nothing read here can run code: numpy files load with ``allow_pickle=False`` and ``.pt`` files
through :func:`netcompress.core.io.load_checkpoint` (``torch.load(weights_only=True)``), which refuses
a file that pickles anything beyond tensors and plain containers. Without test tensors, a seeded,
stratified ``test_fraction`` of the samples becomes the test split; the validation split is then
held out of the rest as for every data set.

    data: {name: tensors, x: x.npy, y: y.npy}
    data: {name: tensors, path: data.npz, keys: {x: images, y: labels}}
    data: {name: tensors, path: data.pt}       # {"x": tensor, "y": tensor, optionally "x_test", "y_test"}
    data: {name: tensors, path: tokens.npz, inputs: [input_ids, attention_mask], keys: {y: labels}}
"""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from netcompress.core.config import check_range
from netcompress.core.errors import ConfigError, DataError
from netcompress.core.io import load_checkpoint
from netcompress.data.bundle import DataBundle, ValidationSplit, hold_out_validation, split_counts
from netcompress.data.catalog import register_dataset
from netcompress.data.in_memory import FloatTensorDataset
from netcompress.data.splits import (
    class_labels,
    count_classes,
    stratified_split,
    target_classes,
    training_targets,
)

ROLES = ("x", "y", "x_test", "y_test")
ARCHIVE_SUFFIXES = (".npz", ".pt", ".pth")


@dataclasses.dataclass
class TensorsConfig(ValidationSplit):
    """Settings of the ``tensors`` data set.

    Either ``path`` (a ``.npz`` or ``.pt``/``.pth`` file holding the arrays under ``keys``: roles
    x, y and optionally x_test, y_test, default names = the roles) or ``x`` and ``y`` (``.npy`` files,
    optionally with ``x_test`` and ``y_test``). ``x`` is ``(N, ...)``, ``y`` holds N integer class labels.
    uint8 inputs are scaled to [0, 1], other integer inputs (token ids) become int64, the rest float32.
    ``num_classes`` defaults to the largest label plus one. ``test_fraction``/``seed`` split off a test
    set when none is given. ``inputs`` names several arrays of ``path`` passed to the model as keyword
    arguments (``input_ids``, ``attention_mask``) instead of one ``x``; the test split then comes from
    ``test_fraction``.

    Example:
        >>> TensorsConfig(path="digits.npz", keys={"x": "images", "y": "labels"})
        >>> TensorsConfig(path="tokens.npz", inputs=["input_ids", "attention_mask"], keys={"y": "labels"})
    """

    path: str | None = None
    keys: dict[str, str] | None = None
    inputs: list[str] | None = None
    x: str | None = None
    y: str | None = None
    x_test: str | None = None
    y_test: str | None = None
    num_classes: int | None = None
    test_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        files = [name for name in ROLES if getattr(self, name)]
        if self.path and files:
            raise ConfigError(
                f"give either path (a .npz/.pt file) or x/y (.npy files), not both ({files[0]})"
            )
        if not self.path:
            if not (self.x and self.y):
                raise ConfigError("give path (a .npz/.pt file) or both x and y (.npy files)")
            if bool(self.x_test) != bool(self.y_test):
                raise ConfigError("give both x_test and y_test, or neither")
            if self.keys:
                raise ConfigError("keys name the arrays inside a .npz/.pt file given as path")
        elif not self.path.lower().endswith(ARCHIVE_SUFFIXES):
            raise ConfigError(f"path={self.path!r} must be a .npz, .pt or .pth file (use x/y for .npy files)")
        unknown = sorted(set(self.keys or {}) - set(ROLES))
        if unknown:
            raise ConfigError(f"keys: unknown role {unknown[0]!r}; roles are {', '.join(ROLES)}")
        if self.num_classes is not None:
            check_range("num_classes", self.num_classes, 2)
        if not 0 < self.test_fraction <= 0.9:
            raise ConfigError(f"test_fraction={self.test_fraction!r} must be within (0, 0.9]")
        if self.inputs is not None:
            if not self.inputs or not self.path:
                raise ConfigError(
                    "inputs names the arrays of a .npz/.pt file given as path, e.g. [input_ids, attention_mask]"
                )
            clash = sorted(set(self.keys or {}) - {"y"})
            if clash:
                raise ConfigError(
                    f"give inputs or keys.{clash[0]}, not both (with inputs, keys holds only y)"
                )


def _read_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"tensor file not found: {path}")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"cannot read {path} as a numpy array: {type(exc).__name__}: {exc}") from None


def _read_archive(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"tensor file not found: {path}")
    if path.suffix.lower() == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise DataError(f"cannot read {path} as a .npz archive: {type(exc).__name__}: {exc}") from None
    loaded = load_checkpoint(path)  # weights_only: a pickled object is refused with the safe-loading error
    if not isinstance(loaded, dict):
        raise DataError(
            f"{path} holds a {type(loaded).__name__}; expected a dict of tensors such as {{'x': ..., 'y': ...}}"
        )
    return loaded


def read_tensor_arrays(config: TensorsConfig) -> dict[str, tuple[Any, str]]:
    """``{role: (array or tensor, where)}`` for the roles present; ``where`` names the file and key.

    Example:
        >>> read_tensor_arrays(TensorsConfig(path="d.npz"))["x"][1]
        "d.npz (key 'x')"
    """
    if not config.path:
        return {
            role: (_read_npy(Path(getattr(config, role)).expanduser()), getattr(config, role))
            for role in ROLES
            if getattr(config, role)
        }
    path = Path(config.path).expanduser()
    content = _read_archive(path)
    names = {role: (config.keys or {}).get(role, role) for role in ROLES}
    found = {}
    for role, key in names.items():
        if key in content:
            found[role] = (content[key], f"{path} (key {key!r})")
        elif role in ("x", "y"):
            raise DataError(
                f"{path} has no key {key!r} for {role}; it holds {', '.join(map(repr, sorted(content)))}"
            )
    if ("x_test" in found) != ("y_test" in found):
        missing = "y_test" if "x_test" in found else "x_test"
        raise DataError(
            f"{path} has {names['x_test' if missing == 'y_test' else 'y_test']!r} but no key {names[missing]!r}"
        )
    return found


def _inputs(value: Any, *, where: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        if not isinstance(value, np.ndarray):
            raise DataError(f"{where}: expected an array of inputs, got {type(value).__name__}")
        if not (np.issubdtype(value.dtype, np.number) or value.dtype == np.bool_) or np.iscomplexobj(value):
            raise DataError(f"{where}: inputs must be numbers, got dtype {value.dtype}")
        value = torch.from_numpy(np.ascontiguousarray(value))
    if value.dim() < 2:
        raise DataError(
            f"{where}: inputs must be (N, ...) with one row per sample, got shape {tuple(value.shape)}"
        )
    if value.is_complex():
        raise DataError(f"{where}: inputs must be real numbers, got dtype {value.dtype}")
    if value.dtype == torch.uint8:
        return value.to(torch.float32).div_(255.0)
    if not value.is_floating_point() and value.dtype != torch.bool:
        return value.to(torch.int64)  # token ids for an embedding layer stay integers
    value = value.to(torch.float32)
    finite = torch.isfinite(value.reshape(len(value), -1)).all(dim=1)
    if not bool(finite.all()):  # one NaN sample turns every weight NaN in the first epoch
        bad = torch.nonzero(~finite).flatten()
        raise DataError(
            f"{where}: {len(bad)} sample(s) hold NaN or infinite values (first: sample {int(bad[0])}); "
            "remove or fix them"
        )
    return value


def _pair(arrays: dict[str, tuple[Any, str]], x_role: str, y_role: str) -> tuple[torch.Tensor, np.ndarray, str]:
    (x_value, x_where), (y_value, y_where) = arrays[x_role], arrays[y_role]
    x = _inputs(x_value, where=x_where)
    y, kind = training_targets(y_value, where=y_where)
    if len(x) != len(y):
        raise DataError(f"{x_where} has {len(x)} samples but {y_where} has {len(y)} labels")
    if len(x) == 0:
        raise DataError(f"{x_where} holds no samples")
    return x, y, kind


@register_dataset("tensors", config=TensorsConfig)
def load_tensors(config: TensorsConfig) -> DataBundle:
    """The bundle of tensors read from files (see :class:`TensorsConfig`).

    Example:
        >>> bundle = load_tensors(TensorsConfig(x="x.npy", y="y.npy"))
        >>> bundle.input_shape, bundle.num_classes
        ((1, 8, 8), 10)
    """
    if config.inputs:
        return _load_named_inputs(config)
    arrays = read_tensor_arrays(config)
    x, y, kind = _pair(arrays, "x", "y")
    if "x_test" in arrays:
        test_x, test_y, test_kind = _pair(arrays, "x_test", "y_test")
        if test_kind != kind or test_y.shape[1:] != y.shape[1:]:
            raise DataError(
                f"{arrays['y_test'][1]} holds targets of shape {test_y.shape[1:]} ({test_kind}), "
                f"but {arrays['y'][1]} holds {y.shape[1:]} ({kind})"
            )
        if test_x.shape[1:] != x.shape[1:]:
            raise DataError(
                f"{arrays['x_test'][1]} has samples of shape {tuple(test_x.shape[1:])}, "
                f"but {arrays['x'][1]} has {tuple(x.shape[1:])}"
            )
        split_from = "files"
    else:
        train_idx, test_idx = stratified_split(y, test_fraction=config.test_fraction, seed=config.seed)
        test_x, test_y = x[torch.from_numpy(test_idx)], y[test_idx]
        x, y = x[torch.from_numpy(train_idx)], y[train_idx]
        split_from = "test_fraction"
    num_classes = target_classes([y, test_y], kind, given=config.num_classes, where=arrays["y"][1])
    train, val = hold_out_validation(FloatTensorDataset(x, torch.from_numpy(y)), config)
    return DataBundle(
        name="tensors",
        train=train,
        test=FloatTensorDataset(test_x, torch.from_numpy(test_y)),
        val=val,
        num_classes=num_classes,
        input_shape=tuple(int(s) for s in x.shape[1:]),
        class_names=[f"class_{i}" for i in range(num_classes)],
        info={
            "source": config.path or config.x,
            "split_from": split_from,
            "targets": kind,  # class / dense (class maps) / multilabel: fit's loss: auto reads the same
            "num_train": len(train),
            "num_val": 0 if val is None else len(val),
            "num_test": len(test_y),
            "config": config.to_dict(),
        },
    )


class TensorDictDataset(Dataset):
    """Samples ``({name: tensor[i]}, label)``: several keyword inputs per sample (token ids and a mask).

    Example:
        >>> ds = TensorDictDataset({"input_ids": torch.zeros(4, 6, dtype=torch.long)}, torch.arange(4) % 2)
        >>> ds[1][0]["input_ids"].shape, ds[1][1]
        (torch.Size([6]), 1)
    """

    def __init__(self, tensors: dict[str, torch.Tensor], labels: torch.Tensor) -> None:
        self.tensors, self.labels = tensors, labels.to(torch.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[dict[str, torch.Tensor], int]:
        return {name: t[index] for name, t in self.tensors.items()}, int(self.labels[index])

    def subset(self, indices: Any, *, augment: bool | None = None) -> TensorDictDataset:
        del augment  # nothing to augment in token ids
        index = torch.as_tensor(indices, dtype=torch.int64)
        return TensorDictDataset({n: t[index] for n, t in self.tensors.items()}, self.labels[index])


def _load_named_inputs(config: TensorsConfig) -> DataBundle:
    """The bundle of ``config.inputs`` (keyword inputs) and ``keys.y`` labels read from ``config.path``."""
    path = Path(str(config.path)).expanduser()
    content = _read_archive(path)
    y_key = (config.keys or {}).get("y", "y")
    missing = [k for k in [*(config.inputs or []), y_key] if k not in content]
    if missing:
        held = ", ".join(map(repr, sorted(content)))
        if missing == [y_key]:  # inputs without labels: embedding-style data
            raise DataError(
                f"{path} has no key {y_key!r} for the class labels (it holds {held}); the tensors data set "
                "needs one integer label per sample (keys: {y: NAME}); unlabelled sentences for an encoder "
                "are the sentences data set (name: sentences, with the model's folder as path)"
            )
        raise DataError(f"{path} has no key {missing[0]!r}; it holds {held}")
    tensors = {name: _inputs(content[name], where=f"{path} (key {name!r})") for name in config.inputs or []}
    y = class_labels(content[y_key], where=f"{path} (key {y_key!r})")
    for name, tensor in tensors.items():
        if len(tensor) != len(y):
            raise DataError(
                f"{path} (key {name!r}) has {len(tensor)} samples but key {y_key!r} has {len(y)} labels"
            )
    train_idx, test_idx = stratified_split(y, test_fraction=config.test_fraction, seed=config.seed)
    whole = TensorDictDataset(tensors, torch.from_numpy(y))
    train, test = whole.subset(train_idx), whole.subset(test_idx)
    num_classes = count_classes(
        [y[train_idx], y[test_idx]], given=config.num_classes, where=f"{path} ({y_key!r})"
    )
    train, val = hold_out_validation(train, config)
    first = next(iter(tensors.values()))
    return DataBundle(
        name="tensors",
        train=train,
        test=test,
        val=val,
        num_classes=num_classes,
        input_shape=tuple(int(s) for s in first.shape[1:]),
        class_names=[f"class_{i}" for i in range(num_classes)],
        info={
            "source": str(config.path),
            "inputs": list(config.inputs or []),
            "split_from": "test_fraction",
            **split_counts(train, val, test),
            "config": config.to_dict(),
        },
    )
