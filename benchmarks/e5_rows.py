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


class FirstBatches:
    """The first ``n`` batches of ``loader``, re-iterable, with ``len`` (a fine-tuning budget below an epoch).

    Example:
        >>> len(FirstBatches(train_loader, 20))
        20
    """

    def __init__(self, loader: Any, n: int | None) -> None:
        self.loader, self.n = loader, n

    def __len__(self) -> int:
        return len(self.loader) if self.n is None else min(self.n, len(self.loader))

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i >= len(self):
                return
            yield batch


def add_shortening_flags(parser: Any) -> None:
    """``--baseline-epochs``, ``--test-subset``, ``--train-batches``: the shortened CPU protocol."""
    parser.add_argument("--baseline-epochs", type=int, default=None, help="baseline epochs (protocol's: 15)")
    parser.add_argument("--test-subset", type=int, default=None, help="balanced test images (default all)")
    parser.add_argument("--train-batches", type=int, default=None, help="batches per fine-tuning 'epoch'")


def shortened(protocol: cp.ProtocolConfig, args: Any) -> cp.ProtocolConfig:
    """``protocol`` with the shortening flags applied; its name (and so the row store) says which.

    Example:
        >>> shortened(cp.PROTOCOLS["cpu"], args).name   # --baseline-epochs 2 --test-subset 2000 --train-batches 40
        'cpu-e2-t2000-b40'
    """
    import dataclasses

    changes: dict[str, Any] = {}
    name = protocol.name
    if args.baseline_epochs is not None:
        changes["epochs"], name = args.baseline_epochs, f"{name}-e{args.baseline_epochs}"
    if args.test_subset is not None:
        changes["test_subset"], name = args.test_subset, f"{name}-t{args.test_subset}"
    if args.train_batches is not None:
        name = f"{name}-b{args.train_batches}"
    return dataclasses.replace(protocol, name=name, **changes)
