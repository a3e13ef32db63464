"""Stage table numbers, run comparison, and the Markdown/HTML report contents."""

from __future__ import annotations

import base64
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from rich.console import Console

from netcompress.core.errors import DataError
from netcompress.reporting import (
    compare_runs,
    markdown_to_html,
    plot_history,
    plot_stage_bars,
    print_stage_table,
    print_table,
    stage_table_rows,
    write_report,
)

STAGES = [
    {"name": "original", "accuracy": 0.9, "params": 2_168_203, "nonzero_params": 2_168_203, "macs": 310_000_000,
     "size_bytes": 8_700_000, "latency_ms": 2.0},
    {"name": "int8", "accuracy": 0.885, "params": 256_779, "nonzero_params": 128_000, "macs": 40_500_000,
     "size_bytes": 2_180_000, "latency_ms": 0.5},
]  # fmt: skip


def _quiet() -> Console:
    return Console(file=open("/dev/null", "w"))  # noqa: SIM115 - closed by the GC at test end


def test_stage_table_rows_relative_to_first_stage() -> None:
    base, last = stage_table_rows(STAGES)
    assert base == {
        "stage": "original", "accuracy": "90.00%", "Δ accuracy": "+0.00 pp", "params": "2.17 M",
        "nonzero": "2.17 M", "MACs": "310.00 M", "size": "8.70 MB", "size ×": "1.00×", "latency": "2.00 ms",
        "speed-up": "1.00×",
    }  # fmt: skip
    assert last["Δ accuracy"] == "-1.50 pp"
    assert last["size ×"] == "0.25×" and last["speed-up"] == "4.00×"
    assert last["params"] == "256.78 K" and last["latency"] == "0.500 ms"


def test_print_stage_table_returns_text_with_values() -> None:
    text = print_stage_table(STAGES, title="E3", console=_quiet())
    for value in ("E3", "original", "int8", "88.50%", "2.18 MB", "4.00×", "0.25×", "40.50 M"):
        assert value in text


def test_print_table_formats_numbers() -> None:
    text = print_table([{"name": "fc", "params": 1290, "sparsity": 0.49612}], ["name", "params", "sparsity"],
                       "layers", console=_quiet())  # fmt: skip
    assert "1,290" in text and "0.4961" in text and "layers" in text


def _write_run(folder: Path, stages: list[dict]) -> Path:
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"stages": stages}))
    return folder


def test_compare_runs(tmp_path: Path) -> None:
    a = _write_run(tmp_path / "run_a", STAGES)
    b = _write_run(tmp_path / "run_b", STAGES[:1])
    rows = compare_runs([a, b])
    assert [(r["run"], r["stage"]) for r in rows] == [("run_a", "int8"), ("run_b", "original")]
    assert rows[0]["accuracy_delta"] == pytest.approx(-0.015)
    assert rows[0]["size_ratio"] == pytest.approx(2.18 / 8.7) and rows[0]["speedup"] == pytest.approx(4.0)
    assert rows[1]["size_ratio"] == 1.0
    assert [r["name"] for r in rows] == ["run_a: int8", "run_b: original"]
    text = print_stage_table(rows, console=_quiet())  # runs compared as stages: ratios vs the first run
    assert "run_a: int8" in text and "4.00×" not in text and "0.25×" in text
    assert len(compare_runs([a, b], which="all")) == 3
    json.dumps(rows)
    with pytest.raises(DataError, match="run_c"):
        compare_runs([tmp_path / "run_c"])


def test_markdown_subset_escapes_html() -> None:
    out = markdown_to_html("# Head\n\nText with `code` and <script>.\n\n- a\n- **b**\n\n```\nx < y\n```")
    assert out == (
        "<h1>Head</h1>\n<p>Text with <code>code</code> and &lt;script&gt;.</p>\n"
        "<ul>\n<li>a</li>\n<li><strong>b</strong></li>\n</ul>\n<pre><code>x &lt; y</code></pre>"
    )


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict] = []
        self.cells: list[str] = []
        self.tags: set[str] = set()
        self._in_cell = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.add(tag)
        if tag == "img":
            self.images.append(dict(attrs))
        self._in_cell = tag in ("td", "th")

    def handle_endtag(self, tag: str) -> None:
        self._in_cell = False

    def handle_data(self, data: str) -> None:
        if self._in_cell:
            self.cells.append(data)


def test_write_report_md_and_self_contained_html(tmp_path: Path) -> None:
    out = tmp_path / "run"
    inside = plot_history(
        [{"epoch": 0, "train_acc": 0.5}, {"epoch": 1, "train_acc": 0.7}], out / "history.png"
    )
    outside = plot_stage_bars(STAGES, tmp_path / "elsewhere" / "stages.png")
    plots = {"Accuracy per epoch": inside, "Size, accuracy, latency": outside}
    md_path, html_path = write_report(
        out, title="E3 <food>", stages=STAGES, plots=plots,
        sections=[("Notes", "Pruned **50%**.\n\n- layer `fc`: 0.9")],
        tables={"Runs": [{"run": "a", "accuracy": 0.885}]},
    )  # fmt: skip
    assert (md_path, html_path) == (out / "report.md", out / "report.html")

    md = md_path.read_text()
    assert "![Accuracy per epoch](history.png)" in md
    assert "![Size, accuracy, latency](figures/stages.png)" in md
    assert "| int8 | 88.50% | -1.50 pp |" in md and "Pruned **50%**." in md and "| a | 0.885 |" in md

    page = _Collector()
    page.feed(html_path.read_text())
    page.close()
    assert {"html", "table", "figure", "ul", "strong"} <= page.tags
    assert "script" not in page.tags and "link" not in page.tags
    assert [img["alt"] for img in page.images] == list(plots)
    for img, path in zip(page.images, plots.values()):
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix)
        assert base64.b64decode(img["src"][len(prefix) :]) == Path(path).read_bytes()
    for value in ("original", "int8", "90.00%", "88.50%", "-1.50 pp", "8.70 MB", "2.18 MB", "0.25×", "4.00×",
                  "2.17 M", "256.78 K", "0.500 ms"):  # fmt: skip
        assert value in page.cells
    assert "E3 &lt;food&gt;" in html_path.read_text()

    # the folder moves as a whole: every Markdown image link still resolves
    moved = shutil.move(str(out), str(tmp_path / "moved"))
    for caption in plots:
        link = md.split(f"![{caption}](")[1].split(")")[0]
        assert (Path(moved) / link).is_file()


def test_write_report_missing_plot(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.png"):
        write_report(tmp_path, title="t", plots={"x": tmp_path / "nope.png"})


def test_a_noisy_latency_is_marked_in_the_table_and_noted() -> None:
    stages = [
        {"name": "initial", "latency_ms": 100.0, "latency_spread": 3.2},  # spread alone flags it
        {"name": "train", "latency_ms": 0.129, "latency_spread": 0.1},
        {
            "name": "pruned",
            "latency_ms": 0.107,
            "latency_noisy": False,
            "latency_spread": 0.9,
        },  # re-measured ok
    ]
    rows = stage_table_rows(stages, baseline=1)
    assert [r["latency"] for r in rows] == ["100.0 ms ±", "0.129 ms", "0.107 ms"]
    assert [r["speed-up"] for r in rows] == ["0.00× ±", "1.00×", "1.21×"]
    text = print_stage_table(stages, baseline=1, console=_quiet())
    assert "spread more than 50%" in text
    assert "spread" not in print_stage_table(stages[1:], console=_quiet())


def test_one_baseline_rule_for_run_and_report(tmp_path: Path) -> None:
    from netcompress.reporting import baseline_stage, run_baseline

    assert baseline_stage(["train", "prune"]) == baseline_stage(["distill"]) == 1
    assert baseline_stage(["prune", "train"]) == baseline_stage([]) == 0
    stages = [{"name": "initial"}, {"name": "train"}, {"name": "pruned"}]
    assert run_baseline({"stages": stages, "baseline": 1}) == 1
    assert run_baseline({"stages": stages, "baseline": 7}) == 0  # out of range: the first stage
    # a run written before the baseline was recorded: from its first step's folder name
    assert run_baseline({"stages": stages, "steps": [{"index": 0, "dir": "steps/01-train-supervised"}]}) == 1
    assert run_baseline({"stages": stages, "steps": [{"index": 0, "dir": "steps/01-prune-channel"}]}) == 0
    folder = _write_run(tmp_path / "r", [{**STAGES[0], "name": "initial", "latency_ms": 40.0}, *STAGES])
    metrics = json.loads((folder / "metrics.json").read_text())
    (folder / "metrics.json").write_text(json.dumps({**metrics, "baseline": 1}))
    row = compare_runs([folder])[0]
    assert row["speedup"] == pytest.approx(4.0)  # against 'original' (the baseline), not 'initial'


def test_two_runs_of_one_recipe_get_distinct_labels(tmp_path: Path) -> None:
    from netcompress.reporting import run_labels

    a = _write_run(tmp_path / "a" / "demo", STAGES)
    b = _write_run(tmp_path / "b" / "demo", STAGES)
    rows = compare_runs([a, b])
    assert [r["run"] for r in rows] == ["a/demo", "b/demo"]
    assert len({r["name"] for r in rows}) == 2
    assert run_labels([a, a]) == ["demo", "demo #2"]
    assert run_labels([a, tmp_path / "x"]) == ["demo", "x"]
