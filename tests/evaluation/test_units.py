"""Human units: exact strings, since reports and tables show them verbatim."""

from __future__ import annotations

import pytest

from netcompress.evaluation import format_bytes, format_count, format_ms, format_percent


@pytest.mark.parametrize(
    "value,expected",
    [(0, "0 B"), (999, "999 B"), (300_000, "300.00 kB"), (8_701_749, "8.70 MB"), (None, "-")],
)
def test_format_bytes_decimal(value: int | None, expected: str) -> None:
    assert format_bytes(value) == expected


def test_format_bytes_binary() -> None:
    assert format_bytes(553_433_881, binary=True) == "527.80 MiB"  # VGG-16's float file in E2
    assert format_bytes(2048, binary=True) == "2.00 KiB"


def test_format_count_ms_percent() -> None:
    assert [format_count(v) for v in (950, 2_168_203, 1_813_566_976, 256_779)] == [
        "950",
        "2.17 M",
        "1.81 G",
        "256.78 K",
    ]
    assert [format_ms(v) for v in (0.123456, 12.3456, 1234.56)] == ["0.123 ms", "12.35 ms", "1234.6 ms"]
    assert format_percent(0.9312) == "93.12%" and format_percent(None) == "-"
