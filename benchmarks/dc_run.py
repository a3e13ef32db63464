"""The stage runner of ``deep_compression.py``: a configuration's cache folder (``Run``) and the loader that
lets ``fit`` checkpoint every part epoch (``ChunkedLoader``; ``early_exit.py`` uses it too)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

import netcompress as nc
from netcompress.core import atomic_torch_save, atomic_write_text
from netcompress.core.io import load_checkpoint


class Run:
    """One configuration's folder: each stage's weights, ``fit`` checkpoints, and ``rows.json``."""

    def __init__(self, folder: Path, settings: dict) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "rows.json"
        self.rows = json.loads(path.read_text()) if path.exists() else {}
        self.rows.setdefault("summary", {"settings": settings})

    def write(self) -> None:
        atomic_write_text(self.folder / "rows.json", json.dumps(self.rows, indent=1, sort_keys=True))

    def note_invocation(self, what: str) -> None:
        calls = self.rows.setdefault("invocations", [])
        calls.append({"at": time.strftime("%H:%M:%S"), what: Path("/proc/loadavg").read_text().split()[:3]})
        self.write()

    def load(self, stage: str, model: nn.Module) -> bool:
        path = self.folder / f"{stage}.pt"
        if not path.exists():
            return False
        model.load_state_dict(load_checkpoint(path))
        return True

    def save(self, stage: str, model: nn.Module) -> None:
        atomic_torch_save(model.state_dict(), self.folder / f"{stage}.pt")
        self.write()

    def fit(self, stage: str, model, loader, config, hooks) -> None:
        started = time.perf_counter()
        history = nc.fit(
            model.train(), loader, config=config, hooks=hooks, checkpoint_dir=self.folder / f"fit-{stage}",
            resume=True,
        )  # fmt: skip
        self.rows[f"history_{stage}"] = history.rows
        self.rows["summary"][f"time_s_{stage}"] = round(time.perf_counter() - started, 1)
        self.write()


class ChunkedLoader:
    """Each pass yields the next ``1/chunks`` of an epoch's shuffled batches, so ``fit`` checkpoints (and
    resumes) every part epoch; ``fit(epochs=E * chunks)`` sees every image E times, in the same order after
    a resume (epoch ``e`` is part ``e % chunks`` of shuffle ``e // chunks``, told through ``set_epoch``).

    Example:
        >>> loader = ChunkedLoader(DataLoader(data, batch_size=128), 4)
        >>> loader.set_epoch(5); len(list(loader))  # the second quarter of the second shuffle
    """

    def __init__(self, loader: DataLoader, chunks: int, *, seed: int = 0) -> None:
        self.dataset, self.batch_size = loader.dataset, loader.batch_size
        self.chunks, self.seed, self.epoch = chunks, seed, 0
        self.sampler = self  # fit calls loader.sampler.set_epoch(epoch) before each pass

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _bounds(self) -> list[int]:
        batches = -(-len(self.dataset) // self.batch_size)
        return [round(i * batches / self.chunks) * self.batch_size for i in range(self.chunks + 1)]

    def __len__(self) -> int:
        bounds = self._bounds()
        return max(-(-(b - a) // self.batch_size) for a, b in zip(bounds, bounds[1:], strict=False))

    def __iter__(self):
        shuffle, part = divmod(self.epoch, self.chunks)
        order = torch.randperm(
            len(self.dataset), generator=torch.Generator().manual_seed(self.seed + shuffle)
        )
        bounds = self._bounds()
        picked = order[bounds[part] : min(bounds[part + 1], len(order))].tolist()
        return iter(DataLoader(Subset(self.dataset, picked), batch_size=self.batch_size, shuffle=False))
