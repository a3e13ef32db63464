"""Run folders: netcompress writes only into folders it created, and a failed start leaves nothing.

A run folder carries a marker file, ``.netcompress-run`` (JSON: format and version), written the
moment the folder is made. ``--resume`` continues only a folder with that marker; any other
folder with files in it is refused and left exactly as it was. A fresh run into an existing
folder needs the folder to be empty. The folder is made only after the recipe, the data and the
model have been checked and built, and a run that fails (with a user's error) before its first
step finishes removes what it made, so the next run takes the same name, not ``<name>-2``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from pathlib import Path
from typing import Any

from netcompress.core.errors import ConfigError
from netcompress.core.io import atomic_write_json

MARKER = ".netcompress-run"
MARKER_FORMAT = "netcompress-run"
MARKER_VERSION = 1
STATE_FILE = "state.json"
# which process is writing the folder: --resume refuses a folder another live process still writes
LOCK_FILE = ".netcompress-lock"
# what an atomic write killed midway leaves: tempfile.mkstemp(prefix=".<name>.", suffix=".tmp") in
# core.io, suffix ".tmp.onnx" in the ONNX export
STALE_TMP = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.onnx)?$")


def is_run_folder(path: Path) -> bool:
    """True when ``path`` holds the marker of a folder netcompress made."""
    try:
        marker = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("format") == MARKER_FORMAT


def plan_run_dir(
    resolved: dict[str, Any], *, out_dir: Any, resume: bool, runs_root: Path, sweep: bool = False
) -> Path:
    """The folder a run will write into, checked but not yet made (see :func:`create_run_dir`)."""
    if out_dir is None and resolved.get("output"):
        out_dir = resolved["output"]
    if out_dir is not None:
        path = Path(out_dir)
        if path.exists() and not path.is_dir():
            raise ConfigError(f"run folder {path} is a file, not a folder; choose another --out")
        if path.exists() and any(path.iterdir()):
            if not is_run_folder(path):
                raise ConfigError(
                    f"{path} is not empty and is not a netcompress run folder (no {MARKER} file); "
                    "netcompress writes only into folders it made: choose another --out"
                )
            if not resume:
                raise ConfigError(
                    f"run folder {path} already exists and is not empty; pass --resume to continue it "
                    "or choose another --out"
                )
        return check_not_in_use(check_writable(path)) if resume else check_writable(path)
    name = resolved["name"]
    candidates = sorted(
        (
            p
            for p in runs_root.glob(f"{name}*")
            if p.is_dir()
            and is_run_folder(p)
            and ((p / STATE_FILE).exists() or (sweep and (p / "points").is_dir()))
        ),
        key=lambda p: p.stat().st_mtime,
    )
    if resume:
        if not candidates:
            raise ConfigError(
                f"--resume: no earlier run of {name!r} under {runs_root}/ to resume; pass --out to name one"
            )
        return check_not_in_use(check_writable(candidates[-1]))
    path, n = runs_root / name, 2
    while path.exists():
        path, n = runs_root / f"{name}-{n}", n + 1
    return check_writable(path)


def check_writable(path: Path) -> Path:
    """``path``, once it (or the nearest folder above it that exists) is known to be writable: a
    read-only folder or file system stops the run before the data is loaded, naming the folder.

    Example:
        >>> check_writable(Path("runs/e1"))
        PosixPath('runs/e1')
    """
    folder = path
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    folder = folder if str(folder) != "." else Path.cwd()
    if not folder.is_dir():
        raise ConfigError(f"cannot make run folder {path}: {folder} is a file; choose another --out")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(
            f"cannot write run folder {path}: {folder} is read-only (permissions or file system); "
            "choose another --out"
        )
    return path


def create_run_dir(path: Path) -> Path | None:
    """Make ``path`` a run folder (marker included); returns the topmost folder this call made
    (None when ``path`` already existed), which :func:`discard_run_dir` removes."""
    made = None
    for folder in (path, *path.parents):
        if folder.exists():
            break
        made = folder
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not is_run_folder(path):
            atomic_write_json(path / MARKER, {"format": MARKER_FORMAT, "version": MARKER_VERSION})
    except OSError as exc:
        raise ConfigError(
            f"cannot make run folder {path}: {exc.strerror or exc}; choose another --out"
        ) from None
    return made


def discard_run_dir(path: Path, made: Path | None) -> None:
    """Remove what a failed start wrote: the folders :func:`create_run_dir` made, or, in an empty
    folder the user named, the files written into it (the folder itself stays)."""
    if made is not None:
        shutil.rmtree(made, ignore_errors=True)
        return
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def has_finished_step(path: Path) -> bool:
    """True when the run (or any point of a sweep) at ``path`` has finished a step."""
    for state_file in [path / STATE_FILE, *path.glob(f"points/*/{STATE_FILE}")]:
        try:
            if json.loads(state_file.read_text()).get("finished_steps"):
                return True
        except (OSError, ValueError, AttributeError):
            continue
    return False


def remove_stale_tmp(path: Path) -> list[Path]:
    """Delete the temporary files of atomic writes a killed run left inside the run folder."""
    removed = []
    for candidate in [*path.rglob("*.tmp"), *path.rglob("*.tmp.onnx")]:
        if candidate.is_file() and not candidate.is_symlink() and STALE_TMP.match(candidate.name):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


def _lock_owner(path: Path) -> dict[str, Any] | None:
    try:
        owner = json.loads((path / LOCK_FILE).read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else
    return True


def check_not_in_use(path: Path) -> Path:
    """Refuse to resume a run folder that another live process is still writing (its lock file names a
    running process): two runs in one folder overwrite each other's steps, and the resume would delete the
    other run's temporary files. A lock left by a killed run (its process gone) or by this process is stale."""
    owner = _lock_owner(path)
    if owner is None or owner["pid"] == os.getpid():
        return path
    here = owner.get("host") == socket.gethostname()
    if here and not _alive(owner["pid"]):
        return path
    where = f"process {owner['pid']}" + ("" if here else f" on {owner.get('host')}")
    raise ConfigError(
        f"run folder {path} is in use by {where} (started {owner.get('started', '?')}); wait for that run "
        f"to end or stop it, then --resume (if no run is going, delete {path / LOCK_FILE})"
    )


def hold_lock(path: Path) -> None:
    """Mark ``path`` as written by this process (see :func:`check_not_in_use`)."""
    import time

    started = time.strftime("%Y-%m-%d %H:%M:%S")
    atomic_write_json(
        path / LOCK_FILE, {"pid": os.getpid(), "host": socket.gethostname(), "started": started}
    )


def release_lock(path: Path) -> None:
    """Remove this process's lock from ``path`` (a finished run)."""
    owner = _lock_owner(path)
    if owner is not None and owner["pid"] == os.getpid():
        (path / LOCK_FILE).unlink(missing_ok=True)
