"""Streaming reads of tar archives (``.tar``, ``.tar.gz``, ``.tgz``) without unpacking them to disk.

Stream mode reads the compressed file once, front to back, which is what decoding a whole data
set needs; a truncated or corrupt archive is a ``DataError`` naming it.
"""

from __future__ import annotations

import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from netcompress.core.errors import DataError

TAR_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)


def iter_tar_members(path: Path) -> Iterator[tuple[str, bytes]]:
    """``(member name, bytes)`` of each regular file in a (compressed) tar, streamed in archive order.

    Example:
        >>> name, data = next(iter_tar_members(Path("cifar10-jpg.tar.gz")))
    """
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                fh = tar.extractfile(member)
                if fh is None:
                    continue
                yield member.name, fh.read()
    except DataError:
        raise
    except TAR_ERRORS as exc:
        raise DataError(f"cannot read archive {path}: {type(exc).__name__}: {exc}") from None
