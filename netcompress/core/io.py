"""Atomic file writes and checked loading of checkpoints.

A write goes to a temporary file in the same folder and is renamed over the target, so a
killed process leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import pickle
import re
import secrets
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from netcompress.core.errors import CheckpointError, UntrustedCheckpointError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _file_mode())  # mkstemp makes 0600; a written file gets the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")


def to_jsonable(obj: Any) -> Any:
    """A deep copy of ``obj`` made of JSON types (tensors and arrays as lists, paths as strings).

    Anything else becomes its ``str``: a summary with an odd value must not end a long run.
    """
    return json.loads(json.dumps(obj, default=_jsonable_or_str))


def _jsonable_or_str(obj: Any) -> Any:
    try:
        return _jsonable(obj)
    except TypeError:
        return str(obj)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and getattr(obj, "size", 1) == 1:
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def atomic_torch_save(obj: Any, path: str | os.PathLike, *, sign: bool = False) -> Path:
    """``torch.save`` through a temporary file; with ``sign`` also write ``<path>.sig``.

    Sign what only netcompress itself will load back with pickle (a run's step models, a cached
    teacher): :func:`load_checkpoint` then loads it whole on this machine without an opt-in.
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getvalue()
    path = atomic_write_bytes(path, data)
    if sign:
        atomic_write_text(signature_path(path), checkpoint_signature(data) + "\n")
    return path


def load_checkpoint(path: str | os.PathLike, *, trust: bool = False) -> Any:
    """``torch.load`` that runs no code from the file unless the caller opted in.

    Tensors, state dicts and plain containers load as they are (``weights_only=True``). A file
    that also pickles Python objects (a whole ``nn.Module``) loads only when it carries this
    machine's signature (see :func:`atomic_torch_save`) or with ``trust=True``, which warns:
    unpickling a file runs whatever code its author put in it.

    Example:
        >>> state = load_checkpoint("state_dict.pt")          # safe
        >>> model = load_checkpoint("model.pt", trust=True)   # a pickled model you trust
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"checkpoint path is a folder, not a file: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint is empty (0 bytes): {path}")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    data = path.read_bytes()
    if _looks_like_safetensors(data):  # a safetensors file named .bin, .pt, .st, ...
        return _load_safetensors(path)
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        if not (isinstance(exc, pickle.UnpicklingError) and _needs_trust(exc)):
            raise CheckpointError(
                f"cannot read checkpoint {path}: not a file written by torch.save nor a safetensors file, "
                f"or a damaged one ({_unpickling_detail(exc)})"
            ) from None
        blocked = exc
    if not trust and not _signed_here(path, data):
        raise UntrustedCheckpointError(
            f"{path} holds pickled Python objects ({_blocked_name(blocked)}), and loading it would run "
            "whatever code its author put in it. Safe ways to load a model: a state dict "
            "(torch.save(model.state_dict(), path)) or a .safetensors file, together with the model's name "
            "or factory (model: {factory: 'file.py:build', checkpoint: ...}). If you wrote this file "
            "yourself and trust it, opt in with --trust-checkpoint or model: {trust: true}."
        )
    if trust:
        warnings.warn(
            f"loading the pickled checkpoint {path} with trust: this runs any code stored in the file",
            stacklevel=2,
        )
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from None


def _looks_like_safetensors(data: bytes) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then that many bytes of JSON."""
    if len(data) < 10:
        return False
    size = int.from_bytes(data[:8], "little")
    return size >= 2 and data[8:9] == b"{"  # a cut-off one too: safetensors then names the problem


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _unpickling_detail(exc: BaseException) -> str:
    """The reason torch's loader gives, in one line (its advice to pass weights_only=False is left out)."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        after = text.split("WeightsUnpickler error:", 1)[1]
        reason = next((line.strip() for line in after.splitlines() if line.strip()), "")
        return f"unpickler: {reason}"
    first = _first_line(exc)
    return f"{type(exc).__name__}: {first[:160]}{'...' if len(first) > 160 else ''}"


def _needs_trust(exc: pickle.UnpicklingError) -> bool:
    # a pickle that names a class or function torch's weights-only unpickler does not allow; any other
    # unpickling error (a text file, a cut-off file) is a corrupt checkpoint, not one to trust
    text = str(exc)
    return "Unsupported global" in text or "GLOBAL " in text


def _blocked_name(exc: BaseException) -> str:
    found = re.search(r"GLOBAL ([\w.]+)", str(exc))
    return f"e.g. {found.group(1)}" if found else "not only tensors"


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:  # pragma: no cover - safetensors is a dependency
        raise CheckpointError(f"{path} is a safetensors file: pip install safetensors") from None
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:
        raise CheckpointError(f"cannot read safetensors file {path}: {type(exc).__name__}: {exc}") from None


# --- signatures of the files netcompress pickles for itself ---------------------------------

KEY_ENV = "NETCOMPRESS_KEY_FILE"


def signature_path(path: Path) -> Path:
    return path.with_name(path.name + ".sig")


def checkpoint_signature(data: bytes) -> str:
    """HMAC-SHA256 of ``data`` under this user's key: a file from anyone else does not match."""
    return hmac.new(_signing_key(), data, hashlib.sha256).hexdigest()


def _signed_here(path: Path, data: bytes) -> bool:
    sig = signature_path(path)
    if not sig.is_file():
        return False
    return hmac.compare_digest(sig.read_text().strip(), checkpoint_signature(data))


def _signing_key() -> bytes:
    """A random key made once per user (mode 0600); it never leaves this machine."""
    key_file = Path(os.environ.get(KEY_ENV) or Path.home() / ".config" / "netcompress" / "signing.key")
    if key_file.is_file():
        key = key_file.read_bytes()
        if len(key) >= 32:
            return key
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    fd, tmp = tempfile.mkstemp(dir=key_file.parent, prefix=".signing.", suffix=".tmp")
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
    os.chmod(tmp, 0o600)
    try:
        os.link(tmp, key_file)  # another process may have made one meanwhile: keep the first
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    return key_file.read_bytes()


STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")


def load_state_dict_file(
    model: torch.nn.Module, path: str | os.PathLike, *, trust: bool = False
) -> torch.nn.Module:
    """Load a state dict file (``.pt`` or ``.safetensors``, plain or under ``state_dict``/``model``)
    into ``model`` safely (no pickle); an error names the file and the keys that do not fit.

    Example:
        >>> load_state_dict_file(model, "weights.safetensors")
    """
    loaded = load_checkpoint(path, trust=trust)  # trust: a whole pickled model gives its state dict
    if isinstance(loaded, torch.nn.Module):
        loaded = loaded.state_dict()
    if isinstance(loaded, dict):
        for key in STATE_DICT_KEYS:
            if isinstance(loaded.get(key), dict):
                loaded = loaded[key]
                break
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError(f"{path} does not hold a state dict (name -> tensor)")
    expected = model.state_dict()
    loaded = _strip_wrapper_prefix(loaded, expected)
    problems = state_dict_mismatch(loaded, expected)
    if problems:
        raise CheckpointError(f"state dict {path} does not fit the model: {problems}")
    try:
        model.load_state_dict(loaded)
    except RuntimeError as exc:
        raise CheckpointError(
            f"state dict {path} does not fit the model: {' '.join(str(exc).split())}"
        ) from None
    return model


WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")  # DataParallel/DDP, torch.compile, Lightning


def _strip_wrapper_prefix(loaded: dict[str, Any], expected: dict[str, Any]) -> dict[str, Any]:
    """``loaded`` without a prefix every key carries (saved from a DDP/compiled/Lightning wrapper) when the
    model's own keys lack it and the stripped keys are exactly the model's."""
    for prefix in WRAPPER_PREFIXES:
        if (
            loaded
            and all(k.startswith(prefix) for k in loaded)
            and not all(k.startswith(prefix) for k in expected)
        ):
            stripped = {k[len(prefix) :]: v for k, v in loaded.items()}
            if set(stripped) == set(expected):
                return stripped
    return loaded


def state_dict_mismatch(loaded: dict[str, Any], expected: dict[str, Any], *, shown: int = 3) -> str:
    """One line naming what keeps ``loaded`` from fitting a model whose state dict is ``expected``
    (wrong shapes, missing keys, unexpected keys; the first ``shown`` of each), or ``""`` when it fits.

    Example:
        >>> state_dict_mismatch({"w": torch.zeros(2)}, {"w": torch.zeros(3)})
        '1 tensor of the wrong shape: w (file (2,), model (3,))'
    """

    def listed(names: list[str], what: str, fmt: Any = str) -> str:
        more = f", ... ({len(names) - shown} more)" if len(names) > shown else ""
        return f"{len(names)} {what}: " + ", ".join(fmt(n) for n in names[:shown]) + more

    shapes = [k for k in expected if k in loaded and tuple(loaded[k].shape) != tuple(expected[k].shape)]
    missing = [k for k in expected if k not in loaded]
    extra = [k for k in loaded if k not in expected]
    parts = []
    if shapes:
        parts.append(
            listed(
                shapes,
                "tensor of the wrong shape" if len(shapes) == 1 else "tensors of the wrong shape",
                lambda k: f"{k} (file {tuple(loaded[k].shape)}, model {tuple(expected[k].shape)})",
            )
        )
    if missing:
        parts.append(listed(missing, "missing key" if len(missing) == 1 else "missing keys"))
    if extra:
        parts.append(listed(extra, "unexpected key" if len(extra) == 1 else "unexpected keys"))
    return "; ".join(parts)
