"""stages.png stays legible: log axes where values span decades, tick labels and titles that never
overlap, and a noisy latency hatched and marked (checked on the drawn figure, a synthetic 8-stage run)."""

from __future__ import annotations

import itertools

import pytest

from netcompress.reporting.stage_plots import needs_log_axis, stage_bars_figure

NAMES = [
    "initial",
    "train",
    "channel pruning 50% (L2) + weight reconstruction",
    "KD from the trained model",
    "L1 unstructured 50% (global)",
    "fine-tune",
    "int8 static PTQ",
    "onnx int8 (ORT)",
]


def _stages(names, *, latencies, sizes):
    return [
        {"name": n, "accuracy": 0.9 + 0.01 * (i % 3), "size_bytes": s, "latency_ms": t, "latency_spread": 0.1}
        for i, (n, t, s) in enumerate(zip(names, latencies, sizes))
    ]


# the run: the initial stage timed at 100 ms against ~0.1 ms for the same architecture
SPIKY = [100.0, 0.129, 0.107, 0.113, 0.155, 0.148, 0.229, 0.022]
DEMO_SIZES = [104_250, 104_250, 32_500, 32_500, 16_360, 16_360, 18_690, 10_950]
WIDE_SIZES = [44_000_000, 44_000_000, 9_000_000, 9_000_000, 2_500_000, 2_500_000, 600_000, 90_000]
SHORT = [f"stage {i}" for i in range(8)]


def _text_boxes(fig):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            for loc, label in zip(axis.get_majorticklocs(), axis.get_ticklabels()):
                if label.get_visible() and label.get_text() and low <= loc <= high:
                    boxes.append((label.get_text(), label.get_window_extent(renderer)))
        boxes.append((ax.get_title(), ax.title.get_window_extent(renderer)))
    return boxes


def _overlaps(boxes):
    return [
        (a, b)
        for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2)
        if box_a.width and box_b.width and box_a.shrunk(0.98, 0.9).overlaps(box_b.shrunk(0.98, 0.9))
    ]


@pytest.mark.parametrize(
    ("names", "sizes", "size_log"),
    [
        (NAMES, DEMO_SIZES, False),
        (NAMES, WIDE_SIZES, True),
        (SHORT, WIDE_SIZES, True),
        (SHORT, DEMO_SIZES, False),
    ],
    ids=[
        "demo names, sizes within a decade",
        "demo names, sizes over 2 decades",
        "short names, wide",
        "short",
    ],
)
def test_stage_bars_use_log_axes_for_decades_and_no_labels_overlap(names, sizes, size_log):
    stages = _stages(names, latencies=SPIKY, sizes=sizes)
    stages[0]["latency_noisy"] = True
    fig = stage_bars_figure(stages)
    accuracy, size, latency = fig.axes
    horizontal = names is NAMES  # a long name: bars lie down, values on the x axis
    scale = (lambda ax: ax.get_xscale()) if horizontal else (lambda ax: ax.get_yscale())
    assert (scale(accuracy), scale(size), scale(latency)) == (
        "linear",
        "log" if size_log else "linear",
        "log",
    )
    boxes = _text_boxes(fig)
    assert len(boxes) > 12 and _overlaps(boxes) == []
    value_ticks = [text for text, _ in boxes if text.endswith(("kB", "MB"))]
    assert 2 <= len(value_ticks) <= 10 and all(len(t) <= 7 for t in value_ticks)  # "100 kB", not "100.00 kB"
    # the noisy latency: hatched bar, label and title marked
    noisy_bar = latency.patches[0]
    assert noisy_bar.get_hatch() == "//" and all(not p.get_hatch() for p in latency.patches[1:])
    assert latency.containers and "±" in latency.get_title()
    assert any(t.get_text().endswith("±") for t in latency.texts)
    assert "±" not in size.get_title()


def test_needs_log_axis_only_for_spans_over_two_decades():
    assert needs_log_axis("latency_ms", [100.0, 0.129]) and needs_log_axis("size_bytes", [44e6, 9e4])
    assert not needs_log_axis("size_bytes", [104_250, 10_950])  # 9.5x
    assert not needs_log_axis("accuracy", [0.001, 0.99])  # accuracy stays linear
    assert not needs_log_axis("latency_ms", [None, 0.1])
