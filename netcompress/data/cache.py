"""Cache of decoded data sets as ``.npy`` arrays, keyed by the source's path, size and mtime.

Decoding 60,000 CIFAR JPEGs takes seconds of CPU; reading the decoded uint8 arrays back takes a
fraction of one. An entry is a folder of ``<array>.npy`` files plus ``meta.json``, written last:
an entry without ``meta.json`` is incomplete and ignored. Every file is written to a temporary
name and renamed, so concurrent or killed runs never leave a half-written array that looks valid.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from netcompress.core.io import atomic_write_json

# Bump when a decoder changes what it stores, so old entries are not reused.
CACHE_FORMAT_VERSION = 1


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``cache_dir``, else env ``NETCOMPRESS_CACHE``, else ``~/.cache/netcompress``.

    Example:
        >>> cache_root("/tmp/nc-cache")
        PosixPath('/tmp/nc-cache')
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("NETCOMPRESS_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "netcompress"


def source_fingerprint(path: Path) -> dict[str, Any]:
    """Identity of a source file or folder: resolved path, total size, latest mtime, file count.

    A folder is summarised over every file below it, so adding, replacing or touching any
    image invalidates the cache entry.

    Example:
        >>> source_fingerprint(Path("cifar10-jpg.tar.gz"))["size_bytes"]
        19756925
    """
    path = path.resolve()
    if path.is_file():
        st = path.stat()
        return {"path": str(path), "size_bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "files": 1}
    digest = hashlib.sha1()
    size = files = latest = 0
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for name in sorted(filenames):
            st = os.stat(os.path.join(dirpath, name))
            rel = os.path.relpath(os.path.join(dirpath, name), path)
            digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            size += st.st_size
            files += 1
            latest = max(latest, st.st_mtime_ns)
    return {
        "path": str(path),
        "size_bytes": size,
        "mtime_ns": latest,
        "files": files,
        "tree": digest.hexdigest(),
    }


def cache_key(kind: str, fingerprint: dict[str, Any]) -> str:
    """Folder name for an entry: ``<kind>-<hash of fingerprint and format version>``.

    Example:
        >>> cache_key("cifar10", {"path": "/d/c.tar.gz", "size_bytes": 1, "mtime_ns": 2})[:8]
        'cifar10-'
    """
    blob = json.dumps({"v": CACHE_FORMAT_VERSION, "kind": kind, **fingerprint}, sort_keys=True)
    return f"{kind}-{hashlib.sha1(blob.encode()).hexdigest()[:16]}"


def load_entry(folder: Path, names: list[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """The arrays ``names`` and the meta dict of a complete entry, or None when absent or unreadable.

    Example:
        >>> hit = load_entry(root / key, ["train_x", "train_y"])
    """
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        arrays = {name: np.load(folder / f"{name}.npy", allow_pickle=False) for name in names}
    except (OSError, ValueError):
        # A damaged entry is rebuilt from the source rather than failing the run.
        return None
    return arrays, meta


def save_entry(folder: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
    """Write ``arrays`` as ``.npy`` files and then ``meta.json``, each atomically.

    Example:
        >>> save_entry(root / key, {"train_x": x, "train_y": y}, {"source": "..."})
    """
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".npy.tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, np.ascontiguousarray(array), allow_pickle=False)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, folder / f"{name}.npy")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    atomic_write_json(folder / "meta.json", meta)
    return folder


def cached_decode(
    *,
    kind: str,
    source: Path,
    names: list[str],
    decode: Callable[[], tuple[dict[str, np.ndarray], dict[str, Any]]],
    cache_dir: str | os.PathLike | None = None,
    settings: dict[str, Any] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, Any]]:
    """Arrays decoded from ``source``: from the cache when present, else ``decode()`` then cached.

    ``settings`` (JSON-able) are part of the key: the same folder decoded at another image size is
    another entry.

    Returns ``(arrays, meta, info)``; ``info`` is JSON-able: cache_hit, cache_path and the seconds
    spent (decode_s on a miss, cache_load_s on a hit). An unwritable cache folder only warns:
    the data is still returned.

    Example:
        >>> arrays, meta, info = cached_decode(kind="fsdd", source=p, names=["audio"], decode=lambda: ...)
    """
    fingerprint = source_fingerprint(source)
    if settings:
        fingerprint["settings"] = settings
    folder = cache_root(cache_dir) / cache_key(kind, fingerprint)
    start = time.perf_counter()
    hit = load_entry(folder, names)
    if hit is not None:
        arrays, meta = hit
        info = {"cache_hit": True, "cache_path": str(folder), "cache_load_s": time.perf_counter() - start}
        return arrays, meta, info
    start = time.perf_counter()
    arrays, meta = decode()
    info = {"cache_hit": False, "cache_path": str(folder), "decode_s": time.perf_counter() - start}
    try:
        save_entry(folder, arrays, {**meta, "source": str(source.resolve())})
    except OSError as exc:
        warnings.warn(f"could not write the data cache at {folder}: {exc}", stacklevel=2)
    return arrays, meta, info
