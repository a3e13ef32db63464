"""Coding one tensor for the Deep-Compression file: fill-value positions, codebook indices, Huffman.

A tensor is coded the smallest of three ways, always exactly (values are compared as bit
patterns, so NaN payloads survive; ``-0.0`` is stored as ``0.0``, which every operation treats alike):

- ``raw``: its bytes;
- codebook: the distinct values once (``codebooks``) and a Huffman-coded index per element
  (``indices``);
- sparse: the most common value (zero in a pruned layer) is left out; the others are kept with
  their relative positions (Han et al., Deep Compression): each gap to the previous kept entry is
  a symbol below ``2**skip_bits - 1``; the top symbol is a filler that skips ``2**skip_bits - 1``
  positions and holds no value (format 2: Han's fillers carry a zero value, which costs an index
  each; format-1 files, ``gap_bits``, still decode). The symbols are Huffman-coded
  (``positions``) with the width whose code plus table is smallest; kept values go through a
  codebook (or raw when they are too many distinct ones).

Example:
    >>> writer = SegmentWriter()
    >>> entry = encode_tensor(torch.tensor([0.0, 0.0, 0.5, 0.0, 0.5]), writer)
    >>> torch.equal(decode_tensor(entry, bytes(writer.body)), torch.tensor([0.0, 0.0, 0.5, 0.0, 0.5]))
    True
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from netcompress.core.errors import CheckpointError
from netcompress.export.entropy_coding import code_lengths, huffman_decode, huffman_encode

MAX_CODEBOOK = 4096  # more distinct values than this are stored raw
MAX_GAP_BITS = 12
PARTS = ("header", "structure", "positions", "indices", "codebooks", "dense")
_INT_VIEWS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_SEGMENT_KEYS = ("raw", "fill", "lengths", "data")
_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


class SegmentWriter:
    """The file body being written; every segment is counted under one of :data:`PARTS`."""

    def __init__(self) -> None:
        self.body = bytearray()
        self.parts = dict.fromkeys(PARTS, 0)

    def add(self, data: bytes, part: str) -> list[int]:
        start = len(self.body)
        self.body += data
        self.parts[part] += len(data)
        return [start, len(data)]


def view_dtype(dtype: torch.dtype) -> torch.dtype:
    """The integer dtype whose values are the bit patterns of ``dtype`` (itself for integers)."""
    if dtype in _INT_DTYPES:
        return dtype
    size = torch.empty(0, dtype=dtype).element_size()
    if size not in _INT_VIEWS:
        raise CheckpointError(f"tensors of dtype {dtype} cannot be stored in a compressed file")
    return _INT_VIEWS[size]


def dtype_from_name(name: str) -> torch.dtype:
    dtype = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise CheckpointError(f"unknown dtype {name!r} in the compressed file")
    return dtype


def _pack_lengths(lengths: np.ndarray) -> bytes:
    """Code lengths (<= 16, so 5 bits would do) trimmed of unused trailing symbols, one byte each."""
    used = np.flatnonzero(lengths)
    end = int(used[-1]) + 1 if used.size else 0
    return lengths[:end].astype(np.uint8).tobytes()


def _huffman(symbols: np.ndarray, alphabet: int, writer: SegmentWriter, part: str) -> dict[str, Any]:
    stream = huffman_encode(symbols, alphabet=alphabet)
    return {
        "lengths": writer.add(_pack_lengths(stream.lengths), "codebooks"),
        "data": writer.add(stream.payload, part),
        "bits": stream.bits,
    }


def _unhuffman(entry: dict[str, Any], body: bytes, count: int) -> np.ndarray:
    lengths = np.frombuffer(_segment(body, entry["lengths"]), dtype=np.uint8)
    return huffman_decode(_segment(body, entry["data"]), lengths, count=count, bits=int(entry["bits"]))


def _segment(body: bytes, seg: list[int]) -> bytes:
    start, length = int(seg[0]), int(seg[1])
    if start < 0 or length < 0 or start + length > len(body):
        raise CheckpointError("a segment lies outside the file body")
    return body[start : start + length]


def _best_skip_bits(gaps: np.ndarray) -> int:
    """Filler width whose Huffman-coded symbols plus code table take the fewest bits."""
    if gaps.size == 0:
        return 1
    best: tuple[int, int] | None = None
    for b in range(1, MAX_GAP_BITS + 1):
        span = (1 << b) - 1
        if best is not None and span > 4 * int(gaps.max()) + 4:
            break  # wider fillers only grow the table
        symbols, _ = _skip_entries(gaps, b)
        freqs = np.bincount(symbols, minlength=span + 1)
        lengths = code_lengths(freqs)
        cost = int((freqs * lengths).sum()) + 8 * (int(np.flatnonzero(lengths)[-1]) + 1)
        if best is None or cost < best[0]:
            best = (cost, b)
    return best[1]


def _skip_entries(gaps: np.ndarray, skip_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(symbol per entry, True where the entry is a kept value and not a filler) for ``gaps``."""
    span = (1 << skip_bits) - 1  # a filler (symbol ``span``) skips this many positions
    fillers = gaps // span
    counts = fillers + 1
    owner = np.repeat(np.arange(gaps.size), counts)
    within = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    last = within == fillers[owner]
    return np.where(last, (gaps % span)[owner], span), last


def _skip_positions(symbols: np.ndarray, skip_bits: int) -> np.ndarray:
    """Inverse of :func:`_skip_entries`: the kept positions."""
    span = (1 << skip_bits) - 1
    if symbols.size and symbols.max() > span:
        raise CheckpointError("a position symbol lies outside its alphabet")
    filler = symbols == span
    return (np.cumsum(np.where(filler, span, symbols + 1)) - 1)[~filler]


def encode_tensor(
    tensor: torch.Tensor,
    writer: SegmentWriter,
    *,
    part: str = "indices",
    raw_dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """Code ``tensor`` into ``writer`` the smallest exact way; return its table entry.

    ``part`` is where Huffman-coded values are counted (``indices``); their codebooks go to
    ``codebooks``, positions to ``positions`` and raw bytes to ``dense``. ``raw_dtype`` (a smaller
    float dtype, e.g. ``torch.float16``): a floating tensor that would be stored raw is stored as
    ``tensor.to(raw_dtype)`` instead (entry ``"stored"``; it decodes to that rounded value in the
    tensor's own dtype): the one lossy choice, and only when asked for.
    """
    tensor = tensor.detach().cpu().contiguous()
    if raw_dtype is not None and tensor.is_floating_point() and _narrower(raw_dtype, tensor.dtype):
        scratch = SegmentWriter()
        entry = encode_tensor(tensor, scratch, part=part)
        if "raw" in entry:
            small = tensor.to(raw_dtype).reshape(-1)
            data = small.view(torch.uint8).numpy().tobytes() if small.numel() else b""
            return {
                **entry,
                "stored": str(raw_dtype).removeprefix("torch."),
                "raw": writer.add(data, "dense"),
            }
        _shift(entry, len(writer.body))
        writer.body += scratch.body
        for name, size in scratch.parts.items():
            writer.parts[name] += size
        return entry
    if tensor.is_floating_point():  # -0.0 (a negative weight times a pruning mask) is stored as 0.0
        tensor = torch.where(tensor == 0, torch.zeros_like(tensor), tensor)
    view = view_dtype(tensor.dtype)
    head = {"enc": "coded", "dtype": str(tensor.dtype).removeprefix("torch."), "shape": list(tensor.shape)}
    flat = tensor.reshape(-1)
    raw_bytes = flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
    if flat.numel() < 16:
        return {**head, "raw": writer.add(raw_bytes, "dense")}
    bits = flat.view(view).numpy().astype(np.int64)
    uniq, inverse, counts = np.unique(bits, return_inverse=True, return_counts=True)
    elem = flat.element_size()
    trials = [_dense_codebook(head, uniq, inverse, view, part), _sparse(head, bits, uniq, counts, view, part)]
    best: tuple[SegmentWriter, dict[str, Any]] | None = None
    for trial in trials:
        if trial is None:
            continue
        scratch = SegmentWriter()
        entry = trial(scratch)
        if best is None or len(scratch.body) < len(best[0].body):
            best = (scratch, entry)
    if best is None or len(best[0].body) >= flat.numel() * elem:
        return {**head, "raw": writer.add(raw_bytes, "dense")}
    scratch, entry = best
    _shift(entry, len(writer.body))
    writer.body += scratch.body
    for name, size in scratch.parts.items():
        writer.parts[name] += size
    return entry


def _narrower(small: torch.dtype, dtype: torch.dtype) -> bool:
    return small.is_floating_point and torch.finfo(small).bits < torch.finfo(dtype).bits


def _shift(entry: dict[str, Any], base: int) -> None:
    """Move every segment of ``entry`` by ``base`` bytes (a scratch body appended to the real one)."""
    for key, value in entry.items():
        if isinstance(value, dict):
            _shift(value, base)
        elif key in _SEGMENT_KEYS:
            value[0] += base


def _codebook_bytes(values: np.ndarray, view: torch.dtype) -> bytes:
    np_dtype = torch.empty(0, dtype=view).numpy().dtype
    return values.astype(np_dtype).tobytes()


def _dense_codebook(head, uniq, inverse, view, part):
    if uniq.size > MAX_CODEBOOK:
        return None

    def write(w: SegmentWriter) -> dict[str, Any]:
        values = {
            "codebook": writer_codebook(w, uniq, view),
            "huffman": _huffman(inverse, uniq.size, w, part),
        }
        return {**head, "values": values}

    return write


def writer_codebook(w: SegmentWriter, uniq: np.ndarray, view: torch.dtype) -> dict[str, Any]:
    return {"data": w.add(_codebook_bytes(uniq, view), "codebooks"), "size": int(uniq.size)}


def _sparse(head, bits, uniq, counts, view, part):
    mode = int(np.argmax(counts))
    if counts[mode] < bits.size // 4:  # a fill value this rare cannot pay for the positions
        return None
    fill = int(uniq[mode])
    positions = np.flatnonzero(bits != fill)
    gaps = np.diff(positions, prepend=-1) - 1
    skip_bits = _best_skip_bits(gaps)
    symbols, _ = _skip_entries(gaps, skip_bits)
    kept = bits[positions]

    def write(w: SegmentWriter) -> dict[str, Any]:
        entry = {
            **head,
            "fill": w.add(_codebook_bytes(np.array([fill]), view), "codebooks"),
            "skip_bits": skip_bits,
            "entries": int(symbols.size),
            "kept": int(positions.size),
            "positions": _huffman(symbols, 1 << skip_bits, w, "positions"),
        }
        kept_uniq, kept_inverse = np.unique(kept, return_inverse=True)
        if kept_uniq.size <= MAX_CODEBOOK:
            entry["values"] = {
                "codebook": writer_codebook(w, kept_uniq, view),
                "huffman": _huffman(kept_inverse, kept_uniq.size, w, part),
            }
        else:
            entry["values"] = {"raw": w.add(_codebook_bytes(kept, view), "dense")}
        return entry

    return write


def decode_tensor(entry: dict[str, Any], body: bytes) -> torch.Tensor:
    """Rebuild the tensor :func:`encode_tensor` described by ``entry`` from the file ``body``."""
    dtype = dtype_from_name(entry["dtype"])
    shape = [int(s) for s in entry["shape"]]
    count = int(np.prod(shape)) if shape else 1
    view = view_dtype(dtype)
    np_dtype = torch.empty(0, dtype=view).numpy().dtype
    if "raw" in entry:
        stored = dtype_from_name(entry.get("stored", entry["dtype"]))
        if stored.is_floating_point != dtype.is_floating_point:
            raise CheckpointError(f"a {dtype} tensor cannot be stored as {stored}")
        data = _segment(body, entry["raw"])
        if len(data) != count * torch.empty(0, dtype=stored).element_size():
            raise CheckpointError(f"raw tensor data of {len(data)} bytes does not fit shape {shape}")
        if not data:
            return torch.empty(shape, dtype=dtype)
        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8).view(stored).reshape(shape)
        return raw.to(dtype) if stored != dtype else raw.clone()
    if "fill" in entry:
        entries = int(entry["entries"])
        gaps = _unhuffman(entry["positions"], body, entries)
        if "skip_bits" in entry:  # format 2: fillers hold no value
            positions = _skip_positions(gaps, int(entry["skip_bits"]))
            if positions.size != int(entry["kept"]):
                raise CheckpointError("the pruned positions do not match their count")
        else:  # format 1: every entry, filler or not, has a value (the fill value for a filler)
            positions = np.cumsum(gaps + 1) - 1
        if positions.size and positions[-1] >= count:
            raise CheckpointError("pruned positions run past the end of the tensor")
        kept = _decode_values(entry["values"], body, positions.size, np_dtype)
        out = np.full(count, np.frombuffer(_segment(body, entry["fill"]), dtype=np_dtype)[0], dtype=np_dtype)
        out[positions] = kept
    else:
        out = _decode_values(entry["values"], body, count, np_dtype)
    return torch.from_numpy(out.copy()).view(dtype).reshape(shape)


def _decode_values(values: dict[str, Any], body: bytes, count: int, np_dtype: np.dtype) -> np.ndarray:
    if "raw" in values:
        out = np.frombuffer(_segment(body, values["raw"]), dtype=np_dtype)
        if out.size != count:
            raise CheckpointError("raw value data does not match its count")
        return out
    codebook = np.frombuffer(_segment(body, values["codebook"]["data"]), dtype=np_dtype)
    idx = _unhuffman(values["huffman"], body, count)
    if idx.size and idx.max() >= codebook.size:
        raise CheckpointError("an index points past the end of its codebook")
    return codebook[idx]
