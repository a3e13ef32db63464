"""The data-set catalog: a registry of loaders, each with a config dataclass, and ``load``.

Each data set registers ``(loader, config class)``. ``load(name, **kwargs)`` builds the config with
``Config.from_dict`` so a misspelt keyword in a recipe's ``data:`` block is an error naming the key
and the data set, instead of a silent default.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from netcompress.core.config import Config
from netcompress.core.errors import DataError
from netcompress.core.registry import Registry
from netcompress.data.bundle import DataBundle


@dataclasses.dataclass(frozen=True)
class DatasetEntry:
    """What the catalog holds per name: the loader and the config class it takes."""

    loader: Callable[[Any], DataBundle]
    config_cls: type[Config]


DATASETS: Registry[DatasetEntry] = Registry("data set")


def register_dataset(
    name: str, *, config: type[Config]
) -> Callable[[Callable[[Any], DataBundle]], Callable[[Any], DataBundle]]:
    """Register ``loader(config) -> DataBundle`` under ``name``.

    Example:
        >>> @register_dataset("tiny", config=TinyConfig)
        ... def _load_tiny(cfg: TinyConfig) -> DataBundle: ...
    """

    def _add(loader: Callable[[Any], DataBundle]) -> Callable[[Any], DataBundle]:
        DATASETS.register(name, DatasetEntry(loader=loader, config_cls=config))
        return loader

    return _add


def load(name: str, /, **kwargs: Any) -> DataBundle:
    """Load the data set ``name`` with its config fields as keywords.

    Unknown names and unknown keywords raise ``ConfigError`` naming them; missing or corrupt
    files raise ``DataError`` naming the path.

    Example:
        >>> bundle = load("digits")
        >>> len(bundle.train), len(bundle.val), len(bundle.test), bundle.input_shape
        (1293, 144, 360, (1, 8, 8))
    """
    entry = DATASETS.get(name)
    config = entry.config_cls.from_dict(kwargs, where=f"data set {name!r}")
    return entry.loader(config)


def config_for(name: str, /, **kwargs: Any) -> Config:
    """The validated config ``load(name, **kwargs)`` would use; handy for recipes and reports.

    Example:
        >>> config_for("cifar10", train_subset=10000).to_dict()["train_subset"]
        10000
    """
    return DATASETS.get(name).config_cls.from_dict(kwargs, where=f"data set {name!r}")


def list_names() -> list[str]:
    """Registered data-set names, sorted (exported as ``netcompress.data.list``).

    Example:
        >>> list_names()
        ['cifar10', 'digits', 'factory', 'fsdd', 'image_folder', 'synthetic', 'tensors']
    """
    return DATASETS.names()


def default_data_dirs() -> list[Path]:
    """Folders searched when no root is given: env ``NETCOMPRESS_DATA``, else ``../shared/data`` from cwd.

    Example:
        >>> default_data_dirs()
        [PosixPath('../shared/data')]
    """
    env = os.environ.get("NETCOMPRESS_DATA")
    return [Path(env).expanduser()] if env else [Path("..") / "shared" / "data"]


def find_default(names: tuple[str, ...], *, what: str) -> Path:
    """The first of ``names`` inside the default data folders, or a DataError listing where it looked.

    Example:
        >>> find_default(("fsdd.tar.gz",), what="FSDD")  # run from the project root
        PosixPath('/work/shared/data/fsdd.tar.gz')
    """
    tried = []
    for folder in default_data_dirs():
        for name in names:
            candidate = folder / name
            if candidate.exists():
                return candidate.resolve()
            tried.append(str(candidate))
    raise DataError(
        f"no {what} data found; pass root=... or set NETCOMPRESS_DATA. Looked for: {', '.join(tried)}"
    )
