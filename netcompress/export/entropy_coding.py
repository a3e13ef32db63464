"""Canonical Huffman coding of small non-negative integers (cluster indices, position gaps).

A code is described by one length per symbol (``uint8``, 0 = unused); the codes themselves are
canonical (symbols sorted by (length, value) get consecutive codes), so the lengths are all a
file stores. Lengths are limited to :data:`MAX_CODE_BITS` so decoding is one table lookup per
symbol. Encoding is vectorised with numpy; decoding walks a precomputed window table.

Example:
    >>> stream = huffman_encode(np.array([0, 0, 0, 1, 2, 0]), alphabet=3)
    >>> huffman_decode(stream.payload, stream.lengths, count=6).tolist()
    [0, 0, 0, 1, 2, 0]
"""

from __future__ import annotations

import dataclasses
import heapq

import numpy as np

from netcompress.core.errors import CheckpointError

MAX_CODE_BITS = 16


@dataclasses.dataclass
class HuffmanStream:
    """One encoded stream: code lengths per symbol, packed bits (MSB first) and their count."""

    lengths: np.ndarray  # uint8, one per symbol of the alphabet
    payload: bytes
    bits: int


def code_lengths(freqs: np.ndarray, *, max_bits: int = MAX_CODE_BITS) -> np.ndarray:
    """Huffman code length of every symbol (0 for a symbol that never occurs), at most ``max_bits``.

    Lengths over the limit are fixed by flattening the frequencies (halving, keeping every used
    symbol at least 1) and rebuilding, which converges to a balanced code.

    Example:
        >>> code_lengths(np.array([5, 1, 1, 0])).tolist()
        [1, 2, 2, 0]
    """
    freqs = np.asarray(freqs, dtype=np.int64)
    used = np.flatnonzero(freqs > 0)
    if used.size > (1 << max_bits):
        raise ValueError(f"an alphabet of {used.size} used symbols does not fit codes of {max_bits} bits")
    lengths = np.zeros(freqs.size, dtype=np.uint8)
    if used.size == 1:
        lengths[used] = 1
        return lengths
    weights = freqs[used].copy()
    while True:
        depth = _huffman_depths(weights)
        if depth.max(initial=0) <= max_bits:
            lengths[used] = depth
            return lengths
        weights = np.maximum(weights // 2, 1)


def _huffman_depths(weights: np.ndarray) -> np.ndarray:
    """Depth of each leaf in a Huffman tree over ``weights`` (ties broken by insertion order)."""
    n = weights.size
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    heap = [(int(w), i) for i, w in enumerate(weights)]
    heapq.heapify(heap)
    parent = list(range(2 * n - 1))
    node = n
    while len(heap) > 1:
        w1, a = heapq.heappop(heap)
        w2, b = heapq.heappop(heap)
        parent[a] = parent[b] = node
        heapq.heappush(heap, (w1 + w2, node))
        node += 1
    depth = [0] * (2 * n - 1)
    for i in range(2 * n - 3, -1, -1):  # parents are created after their children
        depth[i] = depth[parent[i]] + 1
    return np.array(depth[:n], dtype=np.int64)


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """The canonical code (as an integer, MSB first) of every symbol with a length > 0.

    Example:
        >>> canonical_codes(np.array([1, 2, 2])).tolist()  # 0, 10, 11
        [0, 2, 3]
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.zeros(lengths.size, dtype=np.int64)
    order = np.lexsort((np.arange(lengths.size), lengths))
    code, prev = 0, 0
    for sym in order[lengths[order] > 0]:
        code <<= int(lengths[sym]) - prev
        prev = int(lengths[sym])
        codes[sym] = code
        code += 1
    return codes


def huffman_encode(symbols: np.ndarray, *, alphabet: int) -> HuffmanStream:
    """Huffman-code ``symbols`` (integers in ``[0, alphabet)``) with a code built from their counts.

    Example:
        >>> huffman_encode(np.array([1, 1, 1, 0]), alphabet=2).bits
        4
    """
    symbols = np.asarray(symbols, dtype=np.int64).ravel()
    if symbols.size and (symbols.min() < 0 or symbols.max() >= alphabet):
        raise ValueError(f"symbols must lie in [0, {alphabet})")
    lengths = code_lengths(np.bincount(symbols, minlength=alphabet))
    codes = canonical_codes(lengths)
    sym_len = lengths.astype(np.int64)[symbols]
    total = int(sym_len.sum())
    if total == 0:
        return HuffmanStream(lengths, b"", 0)
    starts = np.repeat(np.cumsum(sym_len) - sym_len, sym_len)
    pos = np.arange(total, dtype=np.int64) - starts  # bit position inside its code
    bits = (np.repeat(codes[symbols], sym_len) >> (np.repeat(sym_len, sym_len) - 1 - pos)) & 1
    return HuffmanStream(lengths, np.packbits(bits.astype(np.uint8)).tobytes(), total)


def huffman_decode(payload: bytes, lengths: np.ndarray, *, count: int, bits: int | None = None) -> np.ndarray:
    """Decode ``count`` symbols from ``payload`` with the canonical code given by ``lengths``.

    A stream that ends early, or holds a bit pattern no code starts with, is a
    :class:`CheckpointError`.

    Example:
        >>> s = huffman_encode(np.array([2, 0, 2]), alphabet=3)
        >>> huffman_decode(s.payload, s.lengths, count=3).tolist()
        [2, 0, 2]
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    if lengths.size == 0 or lengths.max() == 0 or lengths.max() > MAX_CODE_BITS:
        raise CheckpointError("damaged Huffman table")
    width = int(lengths.max())
    codes = canonical_codes(lengths)
    table_sym = np.full(1 << width, -1, dtype=np.int64)
    table_len = np.zeros(1 << width, dtype=np.int64)
    for sym in np.flatnonzero(lengths):
        shift = width - int(lengths[sym])
        lo = int(codes[sym]) << shift
        table_sym[lo : lo + (1 << shift)] = sym
        table_len[lo : lo + (1 << shift)] = lengths[sym]
    stream = np.unpackbits(np.frombuffer(payload, dtype=np.uint8))
    n_bits = stream.size if bits is None else min(bits, stream.size)
    padded = np.concatenate([stream[:n_bits], np.zeros(width, dtype=np.uint8)]).astype(np.int64)
    window = np.zeros(n_bits + 1, dtype=np.int64)
    for j in range(width):
        window = (window << 1) | padded[j : j + n_bits + 1]
    sym_at, len_at = table_sym[window].tolist(), table_len[window].tolist()
    out = [0] * count
    p = 0
    for i in range(count):
        if p >= n_bits:
            raise CheckpointError(f"Huffman stream ends after {i} of {count} symbols")
        s = sym_at[p]
        if s < 0:
            raise CheckpointError("Huffman stream holds a bit pattern its table does not define")
        out[i] = s
        p += len_at[p]
    if p > n_bits:
        raise CheckpointError("Huffman stream ends inside its last code")
    return np.array(out, dtype=np.int64)
