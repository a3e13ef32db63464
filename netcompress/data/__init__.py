"""Data sets: the embedded ``digits`` default, CIFAR-10, FSDD audio, a synthetic set, and your own:
an ``image_folder``, ``tensors`` from ``.npy``/``.npz``/``.pt`` files, or a ``factory`` building a Dataset.

``load(name, **config)`` returns a :class:`DataBundle` with train, validation and test splits
(the validation split is held out of the training data: ``val_fraction`` 0.1 by default);
``list()`` names what exists::

    import netcompress as nc
    bundle = nc.data.load("cifar10", train_subset=10000)
    train_loader, test_loader = bundle.loaders(batch_size=128, seed=0)
    val_loader = bundle.val_loader()
"""

from __future__ import annotations

# Importing the data-set modules registers them in DATASETS.
from netcompress.data import (  # noqa: F401
    cifar10,
    digits,
    fsdd,
    image_folder,
    sentence_data,
    synthetic,
    tensor_files,
    user_dataset,
)
from netcompress.data.augment import normalize, random_crop_flip
from netcompress.data.bundle import DataBundle, ValidationSplit, hold_out_validation, validation_indices
from netcompress.data.catalog import DATASETS, config_for, list_names, load, register_dataset
from netcompress.data.cifar10 import Cifar10Config, balanced_subset
from netcompress.data.digits import DigitsConfig
from netcompress.data.fsdd import FsddConfig
from netcompress.data.image_folder import ImageFolderConfig
from netcompress.data.in_memory import FloatTensorDataset, ImageTensorDataset, WaveformDataset
from netcompress.data.splits import stratified_split
from netcompress.data.synthetic import SyntheticConfig
from netcompress.data.tensor_files import TensorsConfig
from netcompress.data.user_dataset import FactoryDataConfig

list = list_names  # noqa: A001 - the contract's name: netcompress.data.list()

__all__ = [
    "DATASETS",
    "Cifar10Config",
    "DataBundle",
    "DigitsConfig",
    "FactoryDataConfig",
    "FloatTensorDataset",
    "FsddConfig",
    "ImageFolderConfig",
    "ImageTensorDataset",
    "SyntheticConfig",
    "TensorsConfig",
    "ValidationSplit",
    "WaveformDataset",
    "balanced_subset",
    "config_for",
    "list",
    "list_names",
    "hold_out_validation",
    "load",
    "normalize",
    "random_crop_flip",
    "register_dataset",
    "stratified_split",
    "validation_indices",
]
