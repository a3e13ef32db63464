"""The ``factory`` data set: a user's own ``torch.utils.data.Dataset``, built by their own function.

``data: {factory: "mydata.py:build", kwargs: {root: ...}}`` (a recipe may leave out
``name: factory``) calls ``build(**kwargs)`` through :func:`netcompress.core.factory.call_factory`.
It returns either one Dataset of ``(input, label)`` pairs (the input a tensor, a tuple of tensors
passed as positional arguments, or a dict passed as keyword arguments; or dict samples holding the
inputs and ``labels``), split here into train and test (seeded,
stratified by ``test_fraction``), or ``{"train": ds, "test": ds}``. The validation split is held out
of train as for every data set. Labels are read once (from a ``targets`` or ``labels`` attribute
when the dataset has one, else by reading every sample) and checked: one integer class per sample, or per-pixel
class maps (N, H, W) or multi-label 0/1 rows (N, K) (:func:`~netcompress.data.splits.training_targets`; the
splits are then plain seeded random ones, and ``fit`` picks the matching loss).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from netcompress.core.config import check_range
from netcompress.core.errors import ConfigError, DataError
from netcompress.core.factory import call_factory
from netcompress.core.inputs import LABEL_KEYS
from netcompress.data.bundle import DataBundle, ValidationSplit, hold_out_validation, split_counts
from netcompress.data.catalog import register_dataset
from netcompress.data.splits import stratified_split, target_classes, target_kind, training_targets


@dataclasses.dataclass
class FactoryDataConfig(ValidationSplit):
    """Settings of the ``factory`` data set.

    ``factory`` is ``package.module:function`` or ``path/to/file.py:function``, called with
    ``kwargs``. ``num_classes`` defaults to the largest label plus one. ``test_fraction`` and
    ``seed`` split a single returned dataset into train and test.

    Example:
        >>> FactoryDataConfig(factory="mydata.py:build", kwargs={"n": 100})
    """

    factory: str | None = None
    kwargs: dict[str, Any] | None = None
    num_classes: int | None = None
    test_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.factory:
            raise ConfigError("factory is required: 'file.py:function' or 'package.module:function'")
        if self.num_classes is not None:
            check_range("num_classes", self.num_classes, 2)
        if not 0 < self.test_fraction <= 0.9:
            raise ConfigError(f"test_fraction={self.test_fraction!r} must be within (0, 0.9]")


class LabelledDataset(Dataset):
    """The samples ``indices`` of a user's dataset as ``(input tensor, int label)``, labels known up front.

    ``labels`` (an int64 tensor) lets the validation split and the loaders stratify without reading
    any input; ``subset`` keeps that for a subset.

    Example:
        >>> ds = LabelledDataset(user_ds, np.arange(len(user_ds)), labels)
        >>> ds.subset([0, 1]).labels.tolist()
    """

    def __init__(self, base: Dataset, indices: Sequence[int] | np.ndarray, labels: np.ndarray) -> None:
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64)[self.indices])

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        inputs = sample_inputs(self.base[int(self.indices[index])])
        label = self.labels[index]  # a class map or multi-label row stays a tensor
        return _as_tensors(inputs), label if label.dim() else int(label)

    def subset(self, indices: Any, *, augment: bool | None = None) -> LabelledDataset:
        del augment  # a user's dataset applies its own transforms
        rows = np.asarray(torch.as_tensor(indices, dtype=torch.int64))
        out = LabelledDataset.__new__(LabelledDataset)
        out.base, out.indices, out.labels = self.base, self.indices[rows], self.labels[torch.from_numpy(rows)]
        return out


def sample_inputs(sample: Any) -> Any:
    """The model inputs of one sample: ``sample[0]`` of an ``(inputs, label)`` pair, or a dict without its
    ``labels``/``label`` key (Hugging Face style).

    Example:
        >>> sample_inputs({"input_ids": ids, "labels": 1}).keys()
        dict_keys(['input_ids'])
    """
    if isinstance(sample, Mapping):
        return {k: v for k, v in sample.items() if k not in LABEL_KEYS}
    return sample[0]


def _as_tensors(inputs: Any) -> Any:
    if isinstance(inputs, np.ndarray):
        return torch.as_tensor(inputs)
    if isinstance(inputs, Mapping):
        return {k: _as_tensors(v) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return tuple(_as_tensors(v) for v in inputs)
    return inputs


def _check_sample_inputs(inputs: Any, *, where: str) -> None:
    """A tensor or array, a tuple/list of them (positional inputs) or a str-keyed dict (keyword inputs)."""
    arrays = (torch.Tensor, np.ndarray)
    if isinstance(inputs, Mapping):
        parts = list(inputs.values())
        ok = bool(parts) and all(isinstance(k, str) for k in inputs)
    elif isinstance(inputs, (tuple, list)):
        parts, ok = list(inputs), bool(inputs)
    else:
        parts, ok = [inputs], True
    if not ok or not all(isinstance(v, arrays) for v in parts):
        raise DataError(
            f"{where}: sample 0's input is a {type(inputs).__name__}"
            + (f" holding {', '.join(sorted({type(v).__name__ for v in parts}))}" if parts else "")
            + "; expected a tensor or numpy array, a tuple of them (positional model inputs) or a dict of "
            "them (keyword model inputs)"
        )


def _label_of(sample: Any, *, index: int, where: str) -> Any:
    if isinstance(sample, Mapping):
        keys = [k for k in LABEL_KEYS if k in sample]
        if not keys:
            raise DataError(
                f"{where}: sample {index} is a dict without a 'labels' or 'label' key; a dict sample holds the "
                "model's keyword inputs and its class under 'labels'"
            )
        label = sample[keys[0]]
    elif not isinstance(sample, (tuple, list)) or len(sample) != 2:
        raise DataError(
            f"{where}: sample {index} is a {type(sample).__name__}; expected an (input, label) pair"
        )
    else:
        label = sample[1]
    if isinstance(label, torch.Tensor) and label.numel() == 1:
        label = label.reshape(()).numpy()
    return label


def dataset_labels(dataset: Any, *, where: str) -> np.ndarray:
    """The class label of every sample of ``dataset``, checked (see :func:`class_labels`).

    A ``targets`` or ``labels`` attribute of the right length is used as it is (torchvision's
    datasets have one); otherwise every sample is read once.

    Example:
        >>> dataset_labels(TensorDataset(torch.randn(4, 2), torch.tensor([0, 1, 1, 0])), where="data").tolist()
        [0, 1, 1, 0]
    """
    if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        raise DataError(
            f"{where}: returned a {type(dataset).__name__}, not a Dataset with __len__ and __getitem__"
        )
    count = len(dataset)
    if count == 0:
        raise DataError(f"{where}: the dataset is empty")
    first = dataset[0]
    _label_of(first, index=0, where=where)
    _check_sample_inputs(sample_inputs(first), where=where)
    for attr in ("targets", "labels"):
        known = getattr(dataset, attr, None)
        if known is not None and hasattr(known, "__len__") and len(known) == count:
            return training_targets(known, where=f"{where} ({attr})")[0]
    labels = [_label_of(dataset[i], index=i, where=where) for i in range(count)]
    try:
        array = np.array(labels)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: labels must be integer classes: {exc}") from None
    return training_targets(array, where=f"{where} (labels)")[0]


def build_user_data(config: FactoryDataConfig) -> dict[str, Dataset]:
    """``{"train": ds}`` or ``{"train": ds, "test": ds}`` from the factory; anything else is a DataError."""
    where = f"data factory {config.factory}"
    built = call_factory(config.factory, config.kwargs, where=where)
    if isinstance(built, dict):
        keys = set(built)
        if keys != {"train", "test"}:
            raise DataError(
                f"{where}: returned a dict with keys {sorted(keys)}; expected exactly 'train' and 'test'"
            )
        return dict(built)
    return {"train": built}


def _shapes(inputs: Any) -> Any:
    """One sample's input shape(s), in the sample's own structure (tuple of shapes, dict of shapes)."""
    if isinstance(inputs, Mapping):
        return {k: _shapes(v) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return tuple(_shapes(v) for v in inputs)
    return tuple(torch.as_tensor(inputs).shape)


def _first_shape(shapes: Any) -> tuple[int, ...]:
    """The bundle's ``input_shape``: the shape of the first input when a sample has several."""
    while not (isinstance(shapes, tuple) and all(isinstance(d, int) for d in shapes)):
        shapes = next(iter(shapes.values())) if isinstance(shapes, Mapping) else shapes[0]
    return shapes


def _class_names(dataset: Any, num_classes: int) -> list[str]:
    names = getattr(dataset, "classes", None)  # torchvision's convention
    if isinstance(names, (list, tuple)) and len(names) == num_classes:
        return [str(n) for n in names]
    return [f"class_{i}" for i in range(num_classes)]


@register_dataset("factory", config=FactoryDataConfig)
def load_factory_data(config: FactoryDataConfig) -> DataBundle:
    """The bundle of a user's own dataset(s) (see :class:`FactoryDataConfig`).

    Example:
        >>> bundle = load_factory_data(FactoryDataConfig(factory="mydata.py:build"))
        >>> bundle.split_sizes()
    """
    where = f"data factory {config.factory}"
    parts = build_user_data(config)
    labels = {name: dataset_labels(ds, where=f"{where} [{name}]") for name, ds in parts.items()}
    if "test" in parts:
        train = LabelledDataset(parts["train"], np.arange(len(labels["train"])), labels["train"])
        test = LabelledDataset(parts["test"], np.arange(len(labels["test"])), labels["test"])
        split_from = "factory"
    else:
        train_idx, test_idx = stratified_split(
            labels["train"], test_fraction=config.test_fraction, seed=config.seed
        )
        train = LabelledDataset(parts["train"], train_idx, labels["train"])
        test = LabelledDataset(parts["train"], test_idx, labels["train"])
        split_from = "test_fraction"
    shapes = {name: _shapes(sample_inputs(ds[0])) for name, ds in parts.items()}
    if len(set(map(str, shapes.values()))) > 1:
        raise DataError(
            f"{where}: train inputs have shape {shapes['train']} but test inputs {shapes['test']}"
        )
    kinds = {name: target_kind(part) for name, part in labels.items()}
    if len(set(kinds.values())) > 1 or len({part.shape[1:] for part in labels.values()}) > 1:
        shapes = {name: f"{part.shape[1:]} ({kinds[name]})" for name, part in labels.items()}
        raise DataError(f"{where}: train and test targets differ: {shapes}")
    num_classes = target_classes(list(labels.values()), kinds["train"], given=config.num_classes, where=where)
    train, val = hold_out_validation(train, config)
    return DataBundle(
        name="factory",
        train=train,
        test=test,
        val=val,
        num_classes=num_classes,
        input_shape=_first_shape(shapes["train"]),
        class_names=_class_names(parts["train"], num_classes),
        info={
            "source": config.factory,
            "split_from": split_from,
            **split_counts(train, val, test),
            "config": config.to_dict(),
        },
    )
