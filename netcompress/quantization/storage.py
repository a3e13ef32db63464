"""A genuinely small file for a fake-quantized model: integer weights packed at their bit width.

``save_quantized`` writes ``NCQ1`` + a JSON header + one blob per state-dict entry. Each
quantized weight is stored as its integer codes packed ``bits`` per value (4-bit: two per
byte, 2-bit: four per byte, 7-bit: bit-packed across bytes); scales, zero points, biases and
any float tensors are stored raw. ``load_quantized`` rebuilds ``(q - zero_point) * scale``,
which is exactly what the fake quantizer produced, so the loaded model's outputs equal the
saved model's.

Example:
    >>> info = save_quantized(qmodel, "student.ncq"); info["size_bytes"] < 300_000
    >>> restored = load_quantized("student.ncq", template)   # template: same quantized structure
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from netcompress.core.errors import CheckpointError
from netcompress.core.io import atomic_write_bytes
from netcompress.quantization.blockwise import weight_codes, weight_from_codes
from netcompress.quantization.modules import QuantLayer, quantizers
from netcompress.quantization.qparams import QuantSpec

MAGIC = b"NCQ1"


def pack_bits(codes: np.ndarray, bits: int) -> bytes:
    """Pack unsigned integer ``codes`` (each < 2**bits) into ``ceil(n * bits / 8)`` bytes, LSB first.

    Example:
        >>> pack_bits(np.array([1, 15, 0, 7]), 4).hex()
        'f170'
    """
    codes = np.asarray(codes, dtype=np.int64).reshape(-1)
    if codes.size and (codes.min() < 0 or codes.max() >= 2**bits):
        raise ValueError(f"codes must lie in [0, {2**bits - 1}] to pack at {bits} bits")
    if bits == 8:
        return codes.astype(np.uint8).tobytes()
    if bits == 16:
        return codes.astype("<u2").tobytes()
    unrolled = ((codes[:, None] >> np.arange(bits)) & 1).astype(np.uint8)
    return np.packbits(unrolled.reshape(-1), bitorder="little").tobytes()


def unpack_bits(data: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``count`` unsigned codes as int64.

    Example:
        >>> unpack_bits(pack_bits(np.array([1, 15, 0, 7]), 4), 4, 4).tolist()
        [1, 15, 0, 7]
    """
    if bits == 8:
        return np.frombuffer(data, dtype=np.uint8, count=count).astype(np.int64)
    if bits == 16:
        return np.frombuffer(data, dtype="<u2", count=count).astype(np.int64)
    flat = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little", count=count * bits)
    return (flat.reshape(count, bits).astype(np.int64) << np.arange(bits)).sum(axis=1)


def _raw_entry(tensor: torch.Tensor) -> tuple[dict[str, Any], bytes]:
    t = tensor.detach().cpu().contiguous()
    data = t.numpy().tobytes() if t.numel() else b""
    return {"kind": "raw", "dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape)}, data


def save_quantized(model: nn.Module, path: str | os.PathLike) -> dict[str, Any]:
    """Write ``model``'s state with quantized weights bit-packed; returns ``{"size_bytes", ...}``.

    Example:
        >>> save_quantized(qmodel, "model.ncq")["size_bytes"]
        268412
    """
    payload, info = serialize_quantized(model)
    atomic_write_bytes(path, payload)
    return {"path": str(path), **info}


def serialize_quantized(model: nn.Module) -> tuple[bytes, dict[str, Any]]:
    """The bytes :func:`save_quantized` writes, and their summary (used to check a budget exactly).

    Example:
        >>> payload, info = serialize_quantized(qmodel); len(payload) == info["size_bytes"]
        True
    """
    state = model.state_dict()
    packed: dict[str, Any] = {}
    for name, m in model.named_modules():
        if isinstance(m, QuantLayer) and m.weight_fq is not None and not m.weight_fq.dynamic:
            fq = m.weight_fq
            packed[f"{name}.layer.weight" if name else "layer.weight"] = fq
    entries, blobs, offset = [], [], 0
    weight_bytes = 0
    for key, tensor in state.items():
        if key in packed:
            spec = packed[key].spec
            qmin, _ = spec.quant_range
            codes = weight_codes(packed[key], tensor) - qmin  # block-wise scales too (blockwise.py)
            data = pack_bits(codes.numpy(), spec.bits)
            entry = {"kind": "packed", "bits": spec.bits, "qmin": qmin, "shape": list(tensor.shape)}
            weight_bytes += len(data)
        else:
            entry, data = _raw_entry(tensor)
        entry.update(key=key, offset=offset, nbytes=len(data))
        entries.append(entry)
        blobs.append(data)
        offset += len(data)
    quant_state = {
        name: {"spec": q.spec.to_dict(), "quantizing": q.quantizing, "dynamic": q.dynamic, "role": q.role}
        for name, q in quantizers(model).items()
    }
    body = b"".join(blobs)
    fields = {"version": 1, "entries": entries, "quantizers": quant_state}
    # the checksum makes a flipped bit an error on load instead of a silently other model
    head = json.dumps({**fields, "blake2b": _checksum(fields, body)}, separators=(",", ":")).encode("utf-8")
    payload = MAGIC + struct.pack("<I", len(head)) + head + body
    return payload, {
        "size_bytes": len(payload),
        "packed_weight_bytes": weight_bytes,
        "header_bytes": len(head),
        "num_packed": len(packed),
    }


def _read(path: str | os.PathLike) -> tuple[dict[str, Any], bytes]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"quantized model file not found: {path}")
    blob = path.read_bytes()
    if blob[:4] != MAGIC or len(blob) < 8:
        raise CheckpointError(f"{path} is not a netcompress quantized file (magic {blob[:4]!r})")
    (head_len,) = struct.unpack("<I", blob[4:8])
    try:
        header = json.loads(blob[8 : 8 + head_len].decode("utf-8"))
        end = max((e["offset"] + e["nbytes"] for e in header["entries"]), default=0)
        header["quantizers"]  # noqa: B018 - a header without it is not one of ours
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated header: {exc}") from None
    payload = blob[8 + head_len :]
    if len(payload) != end:
        raise CheckpointError(
            f"{path} is truncated or padded: {len(payload)} data bytes, the header lists {end}"
        )
    if "blake2b" in header and header["blake2b"] != _checksum(
        {k: v for k, v in header.items() if k != "blake2b"}, payload
    ):
        raise CheckpointError(
            f"{path}: checksum mismatch, the file was changed or damaged after it was written"
        )
    return header, payload


def _checksum(fields: dict[str, Any], body: bytes) -> str:
    """A 128-bit BLAKE2b of the header fields (as written) and the data: every byte that matters.

    Against damage, not forgery (anyone can recompute it); 32 hex characters keep the file small.
    """
    data = json.dumps(fields, separators=(",", ":")).encode("utf-8") + body
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def load_quantized(path: str | os.PathLike, model_template: nn.Module) -> nn.Module:
    """Rebuild a quantized model from ``path`` into a copy of ``model_template`` (same quantized structure).

    The template may come from quantizing the same float architecture in the same mode
    (its scales and bits are overwritten from the file); it is not modified.

    Example:
        >>> template = nc.quantize(nc.models.create("food_cnn_dws", num_classes=11), mode="weight_only")
        >>> model = load_quantized("student.ncq", template)
    """
    header, payload = _read(path)
    model = copy.deepcopy(model_template)
    qs = quantizers(model)
    saved_q = header["quantizers"]
    if set(saved_q) != set(qs):
        missing, extra = sorted(set(saved_q) - set(qs)), sorted(set(qs) - set(saved_q))
        raise CheckpointError(
            f"{path}: template quantizers differ (missing {missing[:5]}, unexpected {extra[:5]})"
        )
    for name, info in saved_q.items():
        q = qs[name]
        q.spec = QuantSpec.from_dict(info["spec"])
        q.quantizing, q.dynamic, q.role = info["quantizing"], info["dynamic"], info["role"]
    state: dict[str, torch.Tensor] = {}
    pending: dict[str, dict[str, Any]] = {}
    for entry in header["entries"]:
        data = payload[entry["offset"] : entry["offset"] + entry["nbytes"]]
        if entry["kind"] == "raw":
            dtype = getattr(torch, entry["dtype"])
            shape = entry["shape"]
            t = torch.frombuffer(bytearray(data), dtype=dtype) if data else torch.empty(0, dtype=dtype)
            state[entry["key"]] = t.reshape(shape).clone()
        else:
            pending[entry["key"]] = entry | {"data": data}
    for name, q in qs.items():
        if not q.dynamic:
            q.set_qparams(state[f"{name}.scale"], state[f"{name}.zero_point"])
            q.freeze()
    for key, entry in pending.items():
        fq = model.get_submodule(key.rsplit(".layer.weight", 1)[0]).weight_fq
        count = int(np.prod(entry["shape"])) if entry["shape"] else 1
        codes = torch.from_numpy(unpack_bits(entry["data"], entry["bits"], count)) + entry["qmin"]
        weight = codes.reshape(entry["shape"]).float()
        state[key] = weight_from_codes(fq, weight)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{path}: template does not match: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    return model.eval()
