"""What ``fit`` shows while it trains: a Rich bar per epoch, one line per epoch, or nothing.

On a terminal a Rich bar per epoch shows the running loss and accuracy; in a log file or CI
(``CI=true``) a bar would write a wall of control codes, so one concise line per epoch is
printed instead; ``TrainConfig(progress=False)`` prints nothing.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import torch

from netcompress.core.registry import Registry

# Running figures are read (a device sync) at most this often, not on every batch.
REFRESH_S = 0.5

REPORTERS: Registry[type] = Registry("progress reporter")


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def epoch_line(row: dict[str, Any], *, epochs: int) -> str:
    """One concise line for a history row.

    Example:
        >>> epoch_line({"epoch": 0, "lr": 0.1, "train_loss": 1.5, "train_acc": 0.4,
        ...             "val_loss": None, "val_acc": None, "time_s": 2.0}, epochs=3)
        'epoch 1/3  lr 0.1  loss 1.5000  acc 0.4000  val_loss -  val_acc -  2.0s'
    """
    return (
        f"epoch {row['epoch'] + 1}/{epochs}  lr {row['lr']:.4g}  loss {_fmt(row['train_loss'], '.4f')}  "
        f"acc {_fmt(row['train_acc'], '.4f')}  val_loss {_fmt(row['val_loss'], '.4f')}  "
        f"val_acc {_fmt(row['val_acc'], '.4f')}  {row['time_s']:.1f}s"
    )


@REPORTERS.register("silent")
class SilentReporter:
    """Shows nothing (``progress=False``, benchmarks, tests)."""

    def epoch_start(self, epoch: int, epochs: int, num_batches: int) -> None:
        pass

    def batch(self, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int, counted: int = 0) -> None:
        pass

    def epoch_end(self, row: dict[str, Any], epochs: int) -> None:
        pass

    def close(self) -> None:
        pass


@REPORTERS.register("lines")
class LineReporter(SilentReporter):
    """One line per epoch on stdout (logs and CI)."""

    def epoch_end(self, row: dict[str, Any], epochs: int) -> None:
        print(epoch_line(row, epochs=epochs), flush=True)


@REPORTERS.register("rich")
class RichReporter(SilentReporter):
    """A Rich progress bar per epoch with the running loss and accuracy."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[metrics]}"),
        )
        self._progress.start()
        self._task: Any = None
        self._last_refresh = 0.0

    def epoch_start(self, epoch: int, epochs: int, num_batches: int) -> None:
        self._task = self._progress.add_task(f"epoch {epoch + 1}/{epochs}", total=num_batches, metrics="")
        self._last_refresh = time.monotonic()

    def batch(self, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int, counted: int = 0) -> None:
        now = time.monotonic()
        if now - self._last_refresh < REFRESH_S:
            self._progress.advance(self._task)
            return
        self._last_refresh = now
        # counted: what accuracy counts (samples, or pixels of a segmentation map)
        metrics = f"loss {float(loss_sum) / seen:.4f}  acc {int(correct) / (counted or seen):.4f}"
        self._progress.update(self._task, advance=1, metrics=metrics)

    def epoch_end(self, row: dict[str, Any], epochs: int) -> None:
        metrics = (
            f"loss {_fmt(row['train_loss'], '.4f')}  acc {_fmt(row['train_acc'], '.4f')}  "
            f"val_loss {_fmt(row['val_loss'], '.4f')}  val_acc {_fmt(row['val_acc'], '.4f')}"
        )
        self._progress.update(self._task, metrics=metrics)

    def close(self) -> None:
        self._progress.stop()


def reporter_kind(*, progress: bool) -> str:
    """``"silent"``, ``"rich"`` on an interactive terminal, else ``"lines"``."""
    if not progress:
        return "silent"
    in_ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    return "rich" if sys.stdout.isatty() and not in_ci else "lines"


def make_reporter(*, progress: bool) -> SilentReporter:
    """The reporter for this process (see :func:`reporter_kind`).

    Example:
        >>> type(make_reporter(progress=False)).__name__
        'SilentReporter'
    """
    return REPORTERS.get(reporter_kind(progress=progress))()
