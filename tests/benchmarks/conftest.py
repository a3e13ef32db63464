"""The benchmark scripts are not a package: put the project root (for ``benchmarks.<name>``) and
``benchmarks/`` (their own imports by plain name, e.g. ``cifar_protocol``) on ``sys.path``, so these
tests import them under a plain ``pytest`` too, whatever the working directory."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for folder in (ROOT, ROOT / "benchmarks"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
