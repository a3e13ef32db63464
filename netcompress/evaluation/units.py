"""Human-readable units for the numbers we measure: bytes, counts (params, MACs), durations.

Bytes use decimal SI prefixes by default (1 kB = 1000 B), the unit of byte budgets such as
"under 300,000 bytes"; ``binary=True`` gives KiB/MiB (what ``ls -h`` shows).
"""

from __future__ import annotations

import math

_DECIMAL_BYTES = ("B", "kB", "MB", "GB", "TB")
_BINARY_BYTES = ("B", "KiB", "MiB", "GiB", "TiB")
_COUNT_SUFFIXES = ("", "K", "M", "G", "T")


def format_bytes(size_bytes: float | None, *, binary: bool = False, digits: int = 2) -> str:
    """Format a byte count with the largest fitting prefix.

    Example:
        >>> format_bytes(8_672_811)
        '8.67 MB'
        >>> format_bytes(2048, binary=True)
        '2.00 KiB'
    """
    if size_bytes is None or (isinstance(size_bytes, float) and math.isnan(size_bytes)):
        return "-"
    base, units = (1024.0, _BINARY_BYTES) if binary else (1000.0, _DECIMAL_BYTES)
    value = float(size_bytes)
    index = 0
    while abs(value) >= base and index < len(units) - 1:
        value /= base
        index += 1
    if index == 0:
        return f"{int(value)} B"
    return f"{value:.{digits}f} {units[index]}"


def format_count(count: float | None, *, digits: int = 2) -> str:
    """Format a parameter or MAC count with K/M/G/T suffixes (powers of 1000).

    Example:
        >>> format_count(2_168_203)
        '2.17 M'
        >>> format_count(950)
        '950'
    """
    if count is None or (isinstance(count, float) and math.isnan(count)):
        return "-"
    value = float(count)
    index = 0
    while abs(value) >= 1000.0 and index < len(_COUNT_SUFFIXES) - 1:
        value /= 1000.0
        index += 1
    if index == 0:
        return f"{value:g}" if value != int(value) else str(int(value))
    return f"{value:.{digits}f} {_COUNT_SUFFIXES[index]}"


def format_ms(latency_ms: float | None) -> str:
    """Format a duration in milliseconds: three decimals below 1 ms, two below 100 ms, then one.

    Example:
        >>> format_ms(0.123456)
        '0.123 ms'
        >>> format_ms(1234.56)
        '1234.6 ms'
    """
    if latency_ms is None or (isinstance(latency_ms, float) and math.isnan(latency_ms)):
        return "-"
    value = float(latency_ms)
    decimals = 3 if abs(value) < 1 else 2 if abs(value) < 100 else 1
    return f"{value:.{decimals}f} ms"


def format_percent(fraction: float | None, *, digits: int = 2) -> str:
    """Format a fraction in 0..1 as a percentage.

    Example:
        >>> format_percent(0.9312)
        '93.12%'
    """
    if fraction is None or (isinstance(fraction, float) and math.isnan(fraction)):
        return "-"
    return f"{100.0 * float(fraction):.{digits}f}%"
