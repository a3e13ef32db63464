"""The byte layout of the Deep-Compression file (``nc.save_compressed``): header, metadata, body, digest.

Format 3 (written): ``magic | version | body bytes | meta bytes | meta | body | BLAKE2b-256``, where
``meta`` is one raw LZMA2 stream (no container headers) of the tensor table's JSON, a newline, and the
structure's JSON (:mod:`netcompress.export.object_codec`). In the table every segment ``[start, length]``
is stored as ``[start - end of the segment before it (in the JSON's order), length]``: the body is
written in table order, so nearly every start becomes 0 and costs almost nothing. Formats 1 and 2 (read
only) hold the table and the structure as two zlib streams with absolute starts. The digest covers every
byte before it: a changed, truncated or foreign file is a clear error.

Example:
    >>> data = pack(table, description, body)
    >>> unpack(data, "m.ncz") == (table, description, body)
    True
"""

from __future__ import annotations

import hashlib
import json
import lzma
import struct
import zlib
from typing import Any

from netcompress.core.errors import CheckpointError

MAGIC = b"NCDCMP\r\n"
VERSION = 3  # 3: one LZMA2 stream for table + structure, relative segment starts; 2: fillers hold no value
READABLE_VERSIONS = (1, 2, 3)
SEGMENT_KEYS = ("raw", "fill", "lengths", "data")
_FIXED_V2 = struct.Struct("<8sHQII")  # magic, version, body bytes, table bytes, structure bytes
_FIXED = struct.Struct("<8sHII")  # magic, version, body bytes, meta bytes
_VERSION_AT = struct.Struct("<8sH")
DIGEST = 32
# lc=0, pb=0: the metadata is ASCII JSON, where literal-context and position bits only cost (measured
# on ResNet-20 and VGG files: 1-3 % smaller than the default lc=3, pb=2)
FORMAT_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "lc": 0, "lp": 0, "pb": 0}]


def pack(table: dict[str, Any], description: str, body: bytes) -> bytes:
    """The format-3 file holding ``table``, ``description`` and ``body`` (digest appended)."""
    meta = json.dumps(relative_segments(table), separators=(",", ":")) + "\n" + description
    packed = lzma.compress(meta.encode("utf-8"), format=lzma.FORMAT_RAW, filters=FORMAT_FILTERS)
    data = _FIXED.pack(MAGIC, VERSION, len(body), len(packed)) + packed + bytes(body)
    return data + hashlib.blake2b(data, digest_size=DIGEST).digest()


def meta_bytes(data: bytes) -> int:
    """Bytes of the header and metadata (table + structure) of a format-3 file ``data``."""
    _, _, _, meta = _FIXED.unpack_from(data)
    return _FIXED.size + meta + DIGEST


def unpack(data: bytes, where: str) -> tuple[dict[str, Any], str, bytes]:
    """``(table, description, body)`` of any readable version; a clear :class:`CheckpointError` otherwise."""
    if len(data) < _VERSION_AT.size or not data.startswith(MAGIC):
        raise CheckpointError(
            f"{where} is not a netcompress compressed model (write one with nc.save_compressed)"
        )
    version = _VERSION_AT.unpack_from(data)[1]
    if version not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{where} has compressed-file version {version}; this netcompress reads {READABLE_VERSIONS}"
        )
    fixed = _FIXED if version >= 3 else _FIXED_V2
    if len(data) < fixed.size + DIGEST:
        raise CheckpointError(f"{where} is truncated: {len(data)} bytes cannot hold its header")
    sizes = fixed.unpack_from(data)[2:]
    expected = fixed.size + sum(sizes) + DIGEST
    if len(data) != expected:
        problem = "is truncated" if len(data) < expected else "has extra bytes"
        raise CheckpointError(
            f"{where} {problem}: its header says {expected} bytes, the file has {len(data)}"
        )
    if hashlib.blake2b(data[:-DIGEST], digest_size=DIGEST).digest() != data[-DIGEST:]:
        raise CheckpointError(
            f"{where}: checksum mismatch, the file was changed or damaged after it was written"
        )
    start = fixed.size
    try:
        if version >= 3:
            body_len, meta_len = sizes
            meta = lzma.decompress(
                data[start : start + meta_len], format=lzma.FORMAT_RAW, filters=FORMAT_FILTERS
            )
            table_json, description = meta.decode("utf-8").split("\n", 1)
            table = absolute_segments(json.loads(table_json))
            body = data[start + meta_len : -DIGEST]
        else:
            body_len, table_len, structure_len = sizes
            table = json.loads(zlib.decompress(data[start : start + table_len]))
            end = start + table_len + structure_len
            description = zlib.decompress(data[start + table_len : end]).decode("utf-8")
            body = data[end:-DIGEST]
    except (ValueError, zlib.error, lzma.LZMAError) as exc:
        raise CheckpointError(f"{where}: the tensor table or structure is damaged: {exc}") from None
    if not isinstance(table, dict):
        raise CheckpointError(f"{where}: the tensor table is damaged (not a mapping)")
    return table, description, body


def relative_segments(table: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``table`` with each segment's start relative to the end of the one before it."""
    end = [0]

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                if key in SEGMENT_KEYS and _is_segment(value):
                    out[key] = [int(value[0]) - end[0], int(value[1])]
                    end[0] = int(value[0]) + int(value[1])
                else:
                    out[key] = walk(value)
            return out
        return node

    return walk(table)


def absolute_segments(table: Any) -> Any:
    """Inverse of :func:`relative_segments` (in place; returns ``table``)."""
    end = [0]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in SEGMENT_KEYS and _is_segment(value):
                    node[key] = [int(value[0]) + end[0], int(value[1])]
                    end[0] = node[key][0] + node[key][1]
                else:
                    walk(value)

    walk(table)
    return table


def _is_segment(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value)
