"""Seeding, RNG snapshots and the runtime seam (where multi-process training would plug in).

Repeatable runs need three things; ``fit`` does the first two, the caller the third:

1. ``seed_everything(seed)`` seeds Python, NumPy and torch (CPU and CUDA) at the start of fit.
2. On ``resume=True`` fit restores the RNG states saved at the end of the last finished epoch,
   including the state of the train loader's shuffle generator.
3. The train loader must shuffle from its own seeded generator,
   ``DataLoader(ds, shuffle=True, generator=torch.Generator().manual_seed(seed))``
   (``DataBundle.loaders(seed=...)`` does this), and with ``num_workers > 0`` random
   augmentations must draw from torch's per-worker seed (``torch.initial_seed()`` in the worker),
   which DataLoader derives from that generator.
"""

from __future__ import annotations

import dataclasses
import os
import random
from typing import Any

import numpy as np
import torch
from torch import nn

from netcompress.core.errors import ConfigError


def seed_everything(seed: int, *, deterministic: bool = False) -> None:
    """Seed ``random``, NumPy and torch (all devices); optionally ask for deterministic kernels.

    ``deterministic=True`` makes cuDNN pick deterministic algorithms (slower); CPU kernels
    used here are already deterministic for a fixed thread count.

    Example:
        >>> seed_everything(0); a = torch.rand(1); seed_everything(0); bool(a == torch.rand(1))
        True
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def _loader_generators(loader: Any) -> list[torch.Generator]:
    # the shuffle may draw from the loader's generator or from its sampler's own one
    found: list[torch.Generator] = []
    sampler = getattr(loader, "sampler", None)
    batch_sampler = getattr(loader, "batch_sampler", None)
    for owner in (loader, sampler, getattr(batch_sampler, "sampler", None)):
        gen = getattr(owner, "generator", None)
        if isinstance(gen, torch.Generator) and all(gen is not g for g in found):
            found.append(gen)
    return found


def rng_state(loader: Any = None) -> dict[str, Any]:
    """Snapshot of every random state a training epoch draws from (for ``last.pt``).

    Example:
        >>> state = rng_state(train_loader); ...; set_rng_state(state, train_loader)
    """
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "loader": [g.get_state() for g in _loader_generators(loader)],
    }


def set_rng_state(state: dict[str, Any], loader: Any = None) -> None:
    """Restore a snapshot taken by :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    gens = _loader_generators(loader)
    if len(gens) == len(state.get("loader", [])):
        for gen, saved in zip(gens, state["loader"]):
            gen.set_state(saved)


@dataclasses.dataclass
class Runtime:
    """Where the loop runs: device, and (later) the process group.

    Single process today: ``wrap_model`` and ``all_reduce_sum`` are identities. Under
    ``torchrun`` this is the one place to change: ``from_env`` would call
    ``torch.distributed.init_process_group``, ``wrap_model`` would return
    ``DistributedDataParallel(model, device_ids=[local_rank])``, ``all_reduce_sum`` would
    ``dist.all_reduce`` the epoch's loss/correct/count sums, ``is_main`` would gate printing
    and checkpoint writes, and the caller would give the loader a ``DistributedSampler``.

    Example:
        >>> rt = Runtime.from_env(device="cpu"); rt.world_size
        1
    """

    device: str = "cpu"
    world_size: int = 1
    rank: int = 0

    @classmethod
    def from_env(cls, *, device: str = "cpu") -> Runtime:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size > 1:
            raise ConfigError(
                f"WORLD_SIZE={world_size}: multi-process training is not wired in yet; "
                "see Runtime in netcompress/training/runtime.py for where it plugs in"
            )
        return cls(device=device, world_size=1, rank=0)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap_model(self, model: nn.Module) -> nn.Module:
        """The module the loop calls forward on (DDP wrapper under torchrun)."""
        return model

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum of ``tensor`` over processes (itself in a single process)."""
        return tensor
