"""Sparse storage: a file whose size falls with sparsity (masks alone do not shrink a checkpoint).

File layout (``.ncz``)::

    b"NCZ1" | uint32 header length | JSON header | blob

The JSON header lists every state-dict tensor with its dtype, shape, encoding and the
``(offset, length)`` of its parts inside the blob, plus a CRC-32 of the blob so a damaged file
is detected instead of loading garbage. Each floating tensor gets the smallest of:

- ``dense``: raw bytes, as ``torch.save`` would store them;
- ``bitmap``: one bit per entry (non-zero or not) + the non-zero values; wins for density
  above about 1/32 when gaps are short;
- ``relative``: CSR of the flattened tensor (one row, so no row pointer): the gap to the
  previous non-zero stored in 8, 16 or 32 bits, with a zero-valued filler entry when a gap
  does not fit (Han et al., Deep Compression) + the values; wins at high sparsity.

"Non-zero" is decided on the bit pattern, so ``-0.0`` and NaN round-trip bit-exactly.
A pruning mask equal to "value is non-zero" (the usual case) costs nothing: the header says
so and the mask is rebuilt on load; any other mask is stored as a bitmap.

Example:
    >>> info = save_sparse(model, "model.ncz")
    >>> info["size_bytes"] < info["dense_size_bytes"]
    True
    >>> load_sparse("model.ncz", make_model())
"""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from netcompress.core.config import check_choice
from netcompress.core.errors import CheckpointError, ConfigError
from netcompress.core.io import atomic_write_bytes
from netcompress.core.registry import Registry
from netcompress.pruning.masks import MASK_SUFFIX, enforce_masks, load_masked_state_dict

MAGIC = b"NCZ1"
FORMAT_VERSION = 1
VALUE_DTYPES = ("float32", "float16")
_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_GAP_DTYPES = ((np.uint8, 8), (np.uint16, 16), (np.uint32, 32))


class _Blob:
    """Append-only byte buffer handing out ``[offset, length]`` parts for the header."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0

    def add(self, data: bytes) -> list[int]:
        part = [self.size, len(data)]
        self.chunks.append(data)
        self.size += len(data)
        return part


def _raw(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _from_raw(data: bytes, dtype: torch.dtype, shape: list[int]) -> torch.Tensor:
    if len(data) == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dtype).reshape(shape).clone()


def _dtype(name: str) -> torch.dtype:
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return value


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _nonzero_bits(flat: torch.Tensor) -> torch.Tensor:
    """Entries whose bit pattern is not all zeros (so -0.0 counts as a value to keep)."""
    return flat.view(_INT_OF_SIZE[flat.element_size()]) != 0


# -- encodings: each returns the header parts for one flat tensor; decoders invert them --------

ENCODINGS: Registry[Any] = Registry("sparse encoding")


def _sizes(flat: torch.Tensor, nz: torch.Tensor, value_size: int) -> dict[str, int]:
    """Bytes each encoding would take, computed without encoding (to pick the smallest)."""
    n, nnz = flat.numel(), int(nz.sum())
    sizes = {"dense": n * flat.element_size(), "bitmap": (n + 7) // 8 + nnz * value_size}
    if nnz:
        gaps = np.diff(np.concatenate(([-1], torch.nonzero(nz).flatten().numpy())))
        for np_dtype, bits in _GAP_DTYPES:
            cap = 2**bits - 1
            entries = int(((gaps + cap - 1) // cap).sum())
            sizes[f"relative{bits}"] = entries * (np.dtype(np_dtype).itemsize + value_size)
    else:
        sizes["relative8"] = 0
    return sizes


def _encode_dense(flat: torch.Tensor, nz: torch.Tensor, values_dtype: torch.dtype, blob: _Blob) -> dict:
    return {"parts": [blob.add(_raw(flat))]}


def _encode_bitmap(flat: torch.Tensor, nz: torch.Tensor, values_dtype: torch.dtype, blob: _Blob) -> dict:
    bits = np.packbits(nz.numpy())
    return {"parts": [blob.add(bits.tobytes()), blob.add(_raw(flat[nz].to(values_dtype)))]}


def _encode_relative(
    flat: torch.Tensor, nz: torch.Tensor, values_dtype: torch.dtype, blob: _Blob, *, bits: int
) -> dict:
    np_dtype = dict((b, d) for d, b in _GAP_DTYPES)[bits]
    cap = 2**bits - 1
    positions = torch.nonzero(nz).flatten().numpy()
    gaps = np.diff(np.concatenate(([-1], positions)))
    steps = (gaps + cap - 1) // cap  # entries per gap: fillers of size cap, then the remainder
    entries = np.full(int(steps.sum()), cap, dtype=np.int64)
    ends = np.cumsum(steps) - 1
    entries[ends] = gaps - cap * (steps - 1)
    values = torch.zeros(len(entries), dtype=values_dtype)
    values[torch.from_numpy(ends)] = flat[nz].to(values_dtype)
    return {"parts": [blob.add(entries.astype(np_dtype).tobytes()), blob.add(_raw(values))], "bits": bits}


def _decode_dense(entry: dict, parts: list[bytes], dtype: torch.dtype, numel: int) -> torch.Tensor:
    return _from_raw(parts[0], dtype, [numel])


def _decode_bitmap(entry: dict, parts: list[bytes], dtype: torch.dtype, numel: int) -> torch.Tensor:
    nz = np.unpackbits(np.frombuffer(parts[0], dtype=np.uint8), count=numel).astype(bool)
    values = _from_raw(parts[1], _dtype(entry["values_dtype"]), [int(nz.sum())]).to(dtype)
    out = torch.zeros(numel, dtype=dtype)
    out[torch.from_numpy(nz)] = values
    return out


def _decode_relative(entry: dict, parts: list[bytes], dtype: torch.dtype, numel: int) -> torch.Tensor:
    np_dtype = dict((b, d) for d, b in _GAP_DTYPES)[entry["bits"]]
    gaps = np.frombuffer(parts[0], dtype=np_dtype).astype(np.int64)
    values = _from_raw(parts[1], _dtype(entry["values_dtype"]), [len(gaps)]).to(dtype)
    out = torch.zeros(numel, dtype=dtype)
    if len(gaps):
        out[torch.from_numpy(np.cumsum(gaps) - 1)] = values  # fillers write 0 onto zero positions
    return out


ENCODINGS.register("dense", (_encode_dense, _decode_dense))
ENCODINGS.register("bitmap", (_encode_bitmap, _decode_bitmap))
ENCODINGS.register("relative", (_encode_relative, _decode_relative))


def _encode_tensor(name: str, t: torch.Tensor, values_dtype: str, blob: _Blob) -> dict[str, Any]:
    t = t.detach().cpu()
    entry: dict[str, Any] = {"name": name, "dtype": _dtype_name(t.dtype), "shape": list(t.shape)}
    flat = t.contiguous().reshape(-1)
    if t.dtype == torch.bool:
        entry.update(encoding="bits", parts=[blob.add(np.packbits(flat.numpy()).tobytes())])
        return entry
    if not t.is_floating_point() or flat.numel() == 0:
        entry.update(encoding="dense", parts=[blob.add(_raw(flat))])
        return entry
    vdtype = torch.float16 if values_dtype == "float16" and t.element_size() > 2 else t.dtype
    nz = _nonzero_bits(flat)
    sizes = _sizes(flat, nz, vdtype.itemsize)
    best = min(sizes, key=lambda k: (sizes[k], k != "dense"))
    if best == "dense":
        entry.update(encoding="dense", parts=[blob.add(_raw(flat))])
        return entry
    entry["values_dtype"] = _dtype_name(vdtype)
    if best == "bitmap":
        entry.update(encoding="bitmap", **_encode_bitmap(flat, nz, vdtype, blob))
    else:
        entry.update(encoding="relative", **_encode_relative(flat, nz, vdtype, blob, bits=int(best[8:])))
    return entry


def _decode_tensor(entry: dict[str, Any], blob: bytes) -> torch.Tensor:
    dtype, shape = _dtype(entry["dtype"]), entry["shape"]
    numel = int(np.prod(shape)) if shape else 1
    parts = [blob[off : off + length] for off, length in entry["parts"]]
    if entry["encoding"] == "bits":
        bits = np.unpackbits(np.frombuffer(parts[0], dtype=np.uint8), count=numel).astype(bool)
        return torch.from_numpy(bits).reshape(shape)
    _, decode = ENCODINGS.get(entry["encoding"])
    return decode(entry, parts, dtype, numel).reshape(shape)


def dense_size_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())`` without mask buffers: the size to beat.

    Example:
        >>> dense_size_bytes(model)
        2370503
    """
    state = {k: v for k, v in model.state_dict().items() if not k.endswith(MASK_SUFFIX)}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.tell()


def save_sparse(
    model: nn.Module, path: str | os.PathLike, *, values_dtype: str = "float32"
) -> dict[str, Any]:
    """Write ``model.state_dict()`` in the compact ``.ncz`` format (atomic); return sizes.

    ``values_dtype="float16"`` halves the stored values (lossy); the default is bit-exact.

    Example:
        >>> save_sparse(model, "run/sparse.ncz")
        {'path': 'run/sparse.ncz', 'size_bytes': 61234, 'dense_size_bytes': 240123, ...}
    """
    check_choice("values_dtype", values_dtype, VALUE_DTYPES)
    for module in model.modules():
        enforce_masks(module)
    state = model.state_dict()
    blob = _Blob()
    entries: list[dict[str, Any]] = []
    for name, tensor in state.items():
        if name.endswith(MASK_SUFFIX) and name[: -len(MASK_SUFFIX)] in state:
            continue  # written beside its parameter below
        entry = _encode_tensor(name, tensor, values_dtype, blob)
        mask = state.get(name + MASK_SUFFIX)
        if mask is not None and mask.dtype == torch.bool:
            flat = tensor.detach().cpu().contiguous().reshape(-1)
            if torch.equal(mask.cpu().reshape(-1), _nonzero_bits(flat)):
                entry["mask"] = "nonzero"
            else:
                entry["mask"] = _encode_tensor(name + MASK_SUFFIX, mask, values_dtype, blob)
        entries.append(entry)
    data = b"".join(blob.chunks)
    header = {
        "version": FORMAT_VERSION,
        "blob_bytes": len(data),
        "blob_crc32": zlib.crc32(data),
        "tensors": entries,
    }
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    path = atomic_write_bytes(path, MAGIC + struct.pack("<I", len(header_bytes)) + header_bytes + data)
    size, dense = path.stat().st_size, dense_size_bytes(model)
    encodings: dict[str, int] = {}
    for entry in entries:
        encodings[entry["encoding"]] = encodings.get(entry["encoding"], 0) + 1
    return {
        "path": str(path),
        "size_bytes": size,
        "dense_size_bytes": dense,
        "ratio": size / max(1, dense),
        "values_dtype": values_dtype,
        "encodings": encodings,
    }


def read_sparse_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Decode an ``.ncz`` file into a state dict (masks included as ``*_mask`` entries).

    Example:
        >>> sd = read_sparse_state_dict("model.ncz"); sorted(sd)[:2]
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"sparse model file not found: {path}")
    raw = path.read_bytes()
    try:
        if raw[:4] != MAGIC:
            raise ValueError(f"not an .ncz file (magic {raw[:4]!r}, expected {MAGIC!r})")
        (header_len,) = struct.unpack("<I", raw[4:8])
        header = json.loads(raw[8 : 8 + header_len].decode("utf-8"))
        blob = raw[8 + header_len :]
        if header.get("version") != FORMAT_VERSION:
            raise ValueError(f"format version {header.get('version')!r}, this reader knows {FORMAT_VERSION}")
        if len(blob) != header["blob_bytes"] or zlib.crc32(blob) != header["blob_crc32"]:
            raise ValueError("data section is truncated or corrupt (size/CRC-32 mismatch)")
        state: dict[str, torch.Tensor] = {}
        for entry in header["tensors"]:
            tensor = _decode_tensor(entry, blob)
            state[entry["name"]] = tensor
            mask = entry.get("mask")
            if mask == "nonzero":
                state[entry["name"] + MASK_SUFFIX] = _nonzero_bits(tensor.reshape(-1)).reshape(tensor.shape)
            elif isinstance(mask, dict):
                state[entry["name"] + MASK_SUFFIX] = _decode_tensor(mask, blob)
    except (ValueError, KeyError, TypeError, struct.error, RuntimeError) as exc:
        raise CheckpointError(f"cannot read sparse model file {path}: {exc}") from exc
    return state


def load_sparse(path: str | os.PathLike, model: nn.Module) -> nn.Module:
    """Load an ``.ncz`` file INTO ``model`` (same architecture), recreating its masks; returns it.

    Example:
        >>> model = load_sparse("run/sparse.ncz", nc.models.create("cifar_vgg", cfg=[...]))
    """
    state = read_sparse_state_dict(path)
    try:
        load_masked_state_dict(model, state, strict=True)
    except (RuntimeError, ConfigError) as exc:  # shape/key mismatch in load_state_dict or a mask
        raise CheckpointError(f"{path} does not fit this model: {exc}") from exc
    return model


SPARSE_FILE = "sparse.ncz"


def write_sparse(
    model: nn.Module, summary: dict[str, Any], out_dir: str | os.PathLike | None, *, save: bool = True
) -> dict[str, Any]:
    """A method's glue: write ``model`` to ``out_dir/sparse.ncz`` and add its sizes to ``summary``.

    Nothing is written when ``out_dir`` is None (a Python verb) or ``save`` is False.

    Example:
        >>> write_sparse(model, {}, step_dir)["sparse_size_bytes"]
    """
    if save and out_dir is not None:
        info = save_sparse(model, Path(out_dir) / SPARSE_FILE)
        summary.update(
            sparse_file=SPARSE_FILE,
            sparse_size_bytes=info["size_bytes"],
            dense_size_bytes=info["dense_size_bytes"],
            sparse_ratio=round(info["ratio"], 6),
        )
    return summary
