"""Shared plumbing: configs, registries, layer selection, atomic I/O, errors."""

from netcompress.core.config import Config, check_choice, check_fraction, check_range
from netcompress.core.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    NetcompressError,
    UnsupportedModelError,
    UntrustedCheckpointError,
)
from netcompress.core.io import (
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    load_checkpoint,
    to_jsonable,
)
from netcompress.core.registry import Registry
from netcompress.core.selection import get_submodule, select_modules, set_submodule

__all__ = [
    "CheckpointError",
    "Config",
    "ConfigError",
    "DataError",
    "NetcompressError",
    "Registry",
    "UnsupportedModelError",
    "UntrustedCheckpointError",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_choice",
    "check_fraction",
    "check_range",
    "get_submodule",
    "load_checkpoint",
    "select_modules",
    "set_submodule",
    "to_jsonable",
]
