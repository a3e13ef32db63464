"""Seeding, RNG snapshots and the runtime seam (a single process, or DDP under ``torchrun``).

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
import random
from typing import Any

import numpy as np
import torch
from torch import nn

from netcompress.training import distributed as dist_mod
from netcompress.training import replica_sync


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
    """Where the loop runs: the device and, under ``torchrun``, the process group.

    A single process by default: ``wrap_model``, ``train_loader`` and the reductions are
    identities. Under ``torchrun`` (``WORLD_SIZE > 1``) :meth:`from_env` joins the process group
    (:mod:`netcompress.training.distributed`), ``wrap_model`` returns PyTorch's
    ``DistributedDataParallel``, ``train_loader`` gives each rank its share through a seeded
    ``DistributedSampler`` (the global batch unchanged), ``all_reduce_sum`` sums the epoch's
    loss/correct/count sums, ``reduce_metrics`` averages the hooks' metrics over ranks (weighted by
    samples), and ``is_main`` gates printing and checkpoint writes.

    Example:
        >>> rt = Runtime.from_env(device="cpu"); rt.world_size
        1
    """

    device: str = "cpu"
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @classmethod
    def from_env(cls, *, device: str = "cpu") -> Runtime:
        """The runtime of this process: joins torchrun's process group when ``WORLD_SIZE > 1``;
        ``device="cuda"`` becomes ``cuda:LOCAL_RANK``."""
        rank, world_size, local_rank = dist_mod.init_from_env(device)
        return cls(
            device=dist_mod.rank_device(device, local_rank),
            world_size=world_size,
            rank=rank,
            local_rank=local_rank,
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def wrap_model(self, model: nn.Module, *, find_unused_parameters: bool = False) -> nn.Module:
        """The module the loop calls forward on (DDP wrapper under torchrun)."""
        if not self.distributed:
            return model
        return dist_mod.wrap_ddp(model, device=self.device, find_unused_parameters=find_unused_parameters)

    def train_loader(self, loader: Any, *, seed: int) -> Any:
        """This rank's share of the train loader (the loader itself in a single process)."""
        return dist_mod.shard_loader(loader, seed=seed) if self.distributed else loader

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum of ``tensor`` over processes (itself in a single process)."""
        return dist_mod.all_reduce_sum(tensor) if self.distributed else tensor

    def reduce_metrics(self, metrics: dict[str, Any], *, weight: float) -> dict[str, Any]:
        """A hook's per-epoch metrics over every rank (:func:`~netcompress.training.distributed.reduce_metrics`)."""
        return dist_mod.reduce_metrics(metrics, weight=weight) if self.distributed else metrics

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        return dist_mod.broadcast_object(obj) if self.distributed else obj

    def sync_model(self, model: nn.Module, *, where: str = "fit") -> list[str]:
        """Rank 0's model on every rank, checked (:func:`~netcompress.training.replica_sync.sync_model_`)."""
        return replica_sync.sync_model_(model, where=where) if self.distributed else []
