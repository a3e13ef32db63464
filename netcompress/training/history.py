"""The per-epoch record of a training run: what the report plots and what resume continues."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

from netcompress.core.errors import CheckpointError
from netcompress.core.io import atomic_write_json


@dataclasses.dataclass
class History:
    """Rows of ``{epoch, lr, train_loss, train_acc, val_loss, val_acc, time_s, <hook keys>}``.

    ``epoch`` is 0-based; accuracies are fractions in 0..1; ``val_*`` are ``None`` without a
    validation loader. ``best_epoch`` is the epoch whose weights ``fit`` kept
    (``TrainConfig.keep_best``), or ``None``.

    Example:
        >>> h = History(rows=[{"epoch": 0, "val_acc": 0.5}, {"epoch": 1, "val_acc": 0.7}])
        >>> h.best()["epoch"], h.last["val_acc"]
        (1, 0.7)
    """

    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    best_epoch: int | None = None

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)

    @property
    def last(self) -> dict[str, Any] | None:
        """The latest row, or ``None`` before the first epoch."""
        return self.rows[-1] if self.rows else None

    def best(self, *, key: str = "val_acc", mode: str = "max") -> dict[str, Any] | None:
        """The row with the highest (``mode="max"``) or lowest ``key``; the earliest on ties.

        Rows where ``key`` is missing, ``None`` or NaN are skipped; ``None`` when none is left.

        Example:
            >>> History(rows=[{"train_loss": 2.0}, {"train_loss": 1.0}]).best(key="train_loss", mode="min")
            {'train_loss': 1.0}
        """
        if mode not in ("max", "min"):
            raise ValueError(f"mode={mode!r} is not one of ['max', 'min']")
        usable = [r for r in self.rows if isinstance(r.get(key), (int, float)) and not math.isnan(r[key])]
        if not usable:
            return None
        pick = max if mode == "max" else min
        return pick(usable, key=lambda r: r[key])

    def column(self, key: str) -> list[Any]:
        """One value per row (``None`` where a row lacks ``key``), e.g. for a plot."""
        return [r.get(key) for r in self.rows]

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "best_epoch": self.best_epoch}

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write ``{"rows": [...], "best_epoch": ...}`` atomically (temp file + rename)."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> History:
        """Read a file written by :meth:`to_json` (or a bare list of rows).

        Example:
            >>> History.from_json("runs/r1/history.json").last["val_acc"]
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CheckpointError(f"history file not found: {path}") from None
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read history file {path}: {exc}") from None
        if isinstance(data, list):
            data = {"rows": data}
        if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
            raise CheckpointError(f"history file {path} holds no 'rows' list")
        return cls(rows=data["rows"], best_epoch=data.get("best_epoch"))

    def __len__(self) -> int:
        return len(self.rows)
