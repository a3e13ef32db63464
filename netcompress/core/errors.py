"""Errors netcompress raises on bad input: each names the thing that is wrong."""

from __future__ import annotations


class NetcompressError(Exception):
    """Base class of every error netcompress raises on purpose."""


class ConfigError(NetcompressError, ValueError):
    """A recipe or config has an unknown key, a wrong type or an invalid value."""


class DataError(NetcompressError, OSError):
    """A data set path is missing, unreadable or corrupt."""


class CheckpointError(NetcompressError, OSError):
    """A checkpoint or saved model is missing, corrupt or of the wrong kind."""


class UntrustedCheckpointError(CheckpointError):
    """A checkpoint needs pickle (which runs code when loaded) and the caller did not opt in."""


class UnsupportedModelError(NetcompressError, TypeError):
    """A model holds a layer or op that a method cannot handle; the message names it."""


class ExportMismatchError(NetcompressError, RuntimeError):
    """An exported file's outputs in its runtime differ from the PyTorch model beyond the tolerance."""


class NonFiniteLossError(NetcompressError, FloatingPointError):
    """Training met a NaN or infinite loss and stopped before that step changed the weights."""
