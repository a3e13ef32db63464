"""Rows of the E5 benchmarks (apoz.py, clustering.py, combinations.py), kept between runs.

On a shared 2-core machine one benchmark's full table takes longer than a run may (15 minutes), so
each script measures a part per run (``--variants``, ``--clusters``, ``--parts``) and merges its rows,
keyed, into ``benchmarks/.cache/e5-<name>-<protocol>.json``; ``--report`` builds the table from them.

Example:
    >>> store = RowStore("clustering", "quick")
    >>> store.put(("ft", 16), {"acc": 0.7}); store.get(("ft", 16))["acc"]
    0.7
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import cifar_protocol as cp
import torch

from netcompress.core import atomic_write_text


class RowStore:
    """Rows by key (a tuple of strings/numbers), read from and written back to one JSON file."""

    def __init__(self, name: str, protocol: str, *, folder: Path = cp.CACHE_DIR) -> None:
        self.path = Path(folder) / f"e5-{name}-{protocol}.json"
        self.rows: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            self.rows = json.loads(self.path.read_text())

    @staticmethod
    def _key(key: tuple) -> str:
        return "/".join(str(k) for k in key)

    def get(self, key: tuple) -> dict[str, Any] | None:
        return self.rows.get(self._key(key))

    def put(self, key: tuple, row: dict[str, Any]) -> None:
        fresh = RowStore.__new__(RowStore)  # re-read: another run may have added rows meanwhile
        fresh.path, fresh.rows = self.path, json.loads(self.path.read_text()) if self.path.exists() else {}
        fresh.rows[self._key(key)] = {**row, "load_average": [round(x, 2) for x in os.getloadavg()]}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(fresh.rows, indent=1, sort_keys=True))
        self.rows = fresh.rows


def max_distinct(model: torch.nn.Module) -> int:
    """Most distinct values any Conv/Linear weight of ``model`` holds (a QAT layer: its deployed weight)."""
    from netcompress.quantization.modules import quant_layers

    quant = quant_layers(model)
    counts = [int(q.quantized_weight().detach().unique().numel()) for q in quant.values()]
    if not quant:
        counts = [
            int(m.weight.detach().unique().numel())
            for m in model.modules()
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
        ]
    return max(counts)
