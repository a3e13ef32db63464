"""A compressed file loaded in a fresh interpreter (no state shared with the test process) must give the same outputs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def assert_fresh_load_equal(path: Path, x: torch.Tensor, expected: torch.Tensor, tmp_path: Path, check: str = "") -> None:
    """``nc.load_compressed(path)`` in a new interpreter maps ``x`` to exactly ``expected``; ``check``: one more
    statement run there on the loaded model ``m`` (e.g. an assert on a buffer's dtype)."""
    torch.save(x, tmp_path / "x.pt")
    torch.save(expected, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import torch, netcompress as nc
        m = nc.load_compressed({str(path)!r})
        {check}
        with torch.no_grad():
            ok = torch.equal(m(torch.load({str(tmp_path / "x.pt")!r})), torch.load({str(tmp_path / "expected.pt")!r}))
        print("EQUAL" if ok else "DIFFERENT")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env={"PYTHONPATH": str(ROOT)}, timeout=120
    )
    assert out.stdout.strip() == "EQUAL", out.stderr[-2000:]
