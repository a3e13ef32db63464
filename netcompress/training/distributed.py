"""Several processes under ``torchrun``: PyTorch's own DistributedDataParallel, and one contract for
compression state.

``torchrun --nproc_per_node=N`` starts N copies of the same program with ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set; :func:`init_from_env` joins them into one
process group (gloo on CPU; on CUDA, NCCL for GPU tensors and gloo for CPU ones). Outside torchrun
every function here is the single-process identity, so the same code runs both ways.

The contract every compression step follows (what the recipe runner and ``fit`` do):

1. Every rank runs the same step from the same seed on the same calibration/validation batches, so
   data-dependent decisions (masks, channel choice and surgery, calibration ranges, codebooks,
   thresholds, automatic rates) come out the same; only ``fit`` shards the training data.
2. After the step, :func:`~netcompress.training.replica_sync.sync_model_` checks that every rank holds the same structure (names,
   shapes, dtypes and module types: a surgery that differed fails here), broadcasts every
   parameter, buffer and tensor-holding attribute (observer ranges kept outside buffers) from
   rank 0, and :func:`~netcompress.training.replica_sync.check_consistent` compares per-tensor checksums across ranks; a divergence
   raises :class:`ReplicaDivergenceError` naming the first differing tensor.
3. Surgery happens on the plain module; ``fit`` wraps it in DDP for the forward only and drops
   the wrapper when it returns (:func:`wrap_ddp`, :func:`unwrap`). A teacher is never wrapped.

Example (run with ``torchrun --nproc_per_node=2 script.py``)::

    rank, world, local_rank = init_from_env("cpu")
    totals = all_reduce_sums({"correct": 3, "total": 4})   # summed over ranks

The model-state half of the contract (checksums, :func:`sync_model_`) is in
:mod:`netcompress.training.replica_sync`.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from netcompress.core.errors import ConfigError, NetcompressError

T = TypeVar("T")


class ReplicaDivergenceError(NetcompressError, RuntimeError):
    """Ranks hold different models (or structures) where the contract says they must agree."""


# --- the process group --------------------------------------------------------------------------


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the one that writes files and prints."""
    return rank() == 0


def backend_for(device: str) -> str:
    """gloo on CPU; on CUDA, NCCL for GPU tensors and gloo for CPU ones (metrics, objects)."""
    return "cpu:gloo,cuda:nccl" if torch.device(device).type == "cuda" else "gloo"


def init_from_env(device: str = "cpu", *, timeout_s: float | None = None) -> tuple[int, int, int]:
    """Join torchrun's process group (once per process); return ``(rank, world_size, local_rank)``.

    ``device`` picks the backend (:func:`backend_for`); on CUDA the process binds to GPU
    ``LOCAL_RANK``. ``timeout_s`` (or ``NETCOMPRESS_DIST_TIMEOUT_S``) bounds every collective, so a
    rank that never arrives fails the run instead of hanging it. Without ``WORLD_SIZE > 1`` nothing
    is initialised and ``(0, 1, 0)`` is returned.

    Example:
        >>> init_from_env("cpu")   # outside torchrun
        (0, 1, 0)
    """
    world = env_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world <= 1:
        return 0, 1, 0
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ConfigError(
            f"WORLD_SIZE={world} but {', '.join(missing)} not set: start the processes with torchrun"
        )
    if not dist.is_initialized():
        if torch.device(device).type == "cuda":
            if not torch.cuda.is_available():
                raise ConfigError(f"device={device!r} under torchrun, but this machine has no CUDA device")
            torch.cuda.set_device(local_rank)
        seconds = timeout_s or float(os.environ.get("NETCOMPRESS_DIST_TIMEOUT_S", "1800"))
        dist.init_process_group(backend=backend_for(device), timeout=datetime.timedelta(seconds=seconds))
    return dist.get_rank(), dist.get_world_size(), local_rank


def rank_device(device: str, local_rank: int) -> str:
    """``cuda`` becomes ``cuda:LOCAL_RANK`` (one GPU per process); anything else is kept."""
    dev = torch.device(device)
    return f"cuda:{local_rank}" if dev.type == "cuda" and dev.index is None else str(dev)


def shutdown() -> None:
    """Leave the process group (end of a torchrun program); nothing outside one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every rank gets here (a no-op in a single process)."""
    if is_distributed():
        dist.barrier()


# --- collectives -------------------------------------------------------------------------------


def _coll_device() -> torch.device:
    # NCCL reduces only GPU tensors; gloo only CPU ones
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise sum of ``tensor`` over ranks (a new tensor; ``tensor`` itself outside a group)."""
    if not is_distributed():
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_reduce_sums(values: dict[str, float]) -> dict[str, float]:
    """Sum each named count over ranks, in float64 (counts stay exact up to 2**53).

    Reduce counts and sums, never averages: accuracy is ``sum(correct) / sum(total)``, which a mean
    of per-rank accuracies is not when ranks saw different numbers of samples.

    Example:
        >>> all_reduce_sums({"correct": 3, "total": 4})   # rank 0; rank 1 had 1 of 6
        {'correct': 4.0, 'total': 10.0}
    """
    names = list(values)
    if not is_distributed():
        return {k: float(values[k]) for k in names}
    vec = torch.tensor([float(values[k]) for k in names], dtype=torch.float64, device=_coll_device())
    dist.all_reduce(vec, op=dist.ReduceOp.SUM)
    return dict(zip(names, vec.cpu().tolist()))


def _numbers(value: Any) -> list[float] | None:
    items = value if isinstance(value, (list, tuple)) else [value]
    ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items)
    return [float(v) for v in items] if ok else None


def reduce_metrics(metrics: dict[str, Any], *, weight: float) -> dict[str, Any]:
    """Per-rank metrics (a hook's ``epoch_end``) as one global row, the same on every rank.

    A number (or list of numbers) that differs between ranks becomes the mean over the ranks that
    report it, weighted by ``weight`` (the samples each rank trained on): a per-rank mean loss or
    accuracy becomes the mean over all samples. A value every rank reports alike (computed from the
    shared model) is kept exactly; anything else is rank 0's. Keys keep rank 0's order.

    Example:
        >>> reduce_metrics({"kd_soft_loss": 0.5}, weight=16)   # rank 1 had 0.7 over 48 samples
        {'kd_soft_loss': 0.65}
    """
    if not is_distributed():
        return dict(metrics)
    everyone: list[Any] = [None] * world_size()
    dist.all_gather_object(everyone, (float(weight), dict(metrics)))
    keys = list(dict.fromkeys(k for _, m in everyone for k in m))
    out: dict[str, Any] = {}
    for key in keys:
        given = [(w, m[key]) for w, m in everyone if key in m]
        first = everyone[0][1].get(key, given[0][1])
        numbers = [_numbers(v) for _, v in given]
        if all(v == given[0][1] for _, v in given) or any(n is None for n in numbers):
            out[key] = first
            continue
        if len({len(n) for n in numbers}) > 1:
            raise ReplicaDivergenceError(f"hook metric {key!r} has a different length on different ranks")
        total = sum(w for w, _ in given) or float(len(given))
        weights = [w if sum(w for w, _ in given) else 1.0 for w, _ in given]
        mean = [sum(w * n[i] for w, n in zip(weights, numbers)) / total for i in range(len(numbers[0]))]
        out[key] = mean if isinstance(first, (list, tuple)) else mean[0]
    return out


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (pickled); ``obj`` itself in a single process."""
    if not is_distributed():
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and hand its result (or its NetcompressError) to every rank.

    Every rank raises rank 0's user error, so none waits forever in the next collective.

    Example:
        >>> run_dir = on_main(lambda: plan_and_create_run_folder(...))
    """
    if not is_distributed():
        return fn()
    outcome: tuple[str, Any] = ("ok", None)
    if is_main():
        try:
            outcome = ("ok", fn())
        except NetcompressError as exc:
            outcome = ("error", exc)
        except Exception as exc:  # still tell the other ranks, then fail with the original
            broadcast_object(("crash", f"{type(exc).__name__}: {exc}"))
            raise
    kind, value = broadcast_object(outcome)
    if kind == "error":
        raise value
    if kind == "crash":
        raise ReplicaDivergenceError(f"rank 0 failed: {value}")
    return value


# --- DDP, sampling, evaluation ------------------------------------------------------------------


def wrap_ddp(model: nn.Module, *, device: str, find_unused_parameters: bool = False) -> nn.Module:
    """``DistributedDataParallel(model)`` under torchrun (``model`` itself otherwise).

    Buffers are not broadcast at every forward (``broadcast_buffers=False``): the caller syncs them
    from rank 0 before validating and at the end (:func:`sync_model_`), and quantizer observers
    replace their buffers, which DDP's per-forward broadcast would not follow.
    """
    if not is_distributed() or not any(p.requires_grad for p in model.parameters()):
        return model
    import inspect

    dev = torch.device(device)
    ddp = nn.parallel.DistributedDataParallel
    # the newer name of broadcast_buffers=False (the init sync from rank 0 stays, as wanted)
    no_forward_sync = (
        {"forward_sync_buffers": False}
        if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
        else {"broadcast_buffers": False}
    )
    return ddp(
        model,
        device_ids=[dev.index if dev.index is not None else torch.cuda.current_device()]
        if dev.type == "cuda"
        else None,
        find_unused_parameters=find_unused_parameters,
        **no_forward_sync,
    )


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DDP wrapper (surgery and saving always act on it)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@torch.no_grad()
def average_gradients(params: Iterable[nn.Parameter]) -> None:
    """Mean gradient over ranks for parameters DDP does not hold (a distiller's adapters)."""
    if not is_distributed():
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(world_size())


def shard_loader(loader: Any, *, seed: int) -> Any:
    """The train loader of this rank: the same data set through a seeded ``DistributedSampler``.

    The global batch stays the loader's ``batch_size`` (each of N ranks reads ``batch_size / N``),
    so a recipe means the same under torchrun, learning rate included. The order is fixed by
    ``seed`` and the epoch (:func:`set_epoch`), so a resumed run draws the same batches. A loader
    that already has a DistributedSampler is kept.
    """
    from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

    if not is_distributed():
        return loader
    if not isinstance(loader, DataLoader):
        raise ConfigError(
            f"under torchrun the train loader must be a torch DataLoader (got {type(loader).__name__}) "
            "so that each rank can read its own share"
        )
    if isinstance(loader.sampler, DistributedSampler):
        return loader
    world = world_size()
    batch = loader.batch_size
    if batch is None or batch % world:
        raise ConfigError(
            f"batch_size={batch} cannot be split over WORLD_SIZE={world} processes; "
            f"use a multiple of {world} (it stays the global batch)"
        )
    sampler = DistributedSampler(
        loader.dataset,
        num_replicas=world,
        rank=rank(),
        shuffle=isinstance(loader.sampler, RandomSampler),
        seed=seed,
        drop_last=loader.drop_last,
    )
    return DataLoader(
        loader.dataset,
        batch_size=batch // world,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        worker_init_fn=loader.worker_init_fn,
        persistent_workers=loader.persistent_workers if loader.num_workers else False,
    )


def set_epoch(loader: Any, epoch: int) -> None:
    """Tell a DistributedSampler which epoch it draws (its shuffle is seed + epoch)."""
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)


def shard_batches(loader: Iterable[T]) -> Iterator[T]:
    """Every ``world_size``-th batch, starting at this rank's: a loader split over ranks for evaluation."""
    r, n = rank(), world_size()
    for index, batch in enumerate(loader):
        if index % n == r:
            yield batch


def evaluate_sharded(model: nn.Module, loader: Iterable, *, device: str | torch.device) -> dict[str, float]:
    """Accuracy and mean cross-entropy over ``loader``, split over ranks and summed exactly.

    Each rank evaluates its share of the batches; correct counts, sample totals and loss sums are
    all-reduced, so the accuracy equals a single-process evaluation of the whole loader.
    """
    import torch.nn.functional as F

    from netcompress.core.errors import DataError
    from netcompress.evaluation.metrics import top1_counts

    counts = top1_counts(model, shard_batches(loader), device=device, loss_fn=F.cross_entropy)
    sums = all_reduce_sums(
        {"correct": counts["correct"], "total": counts["total"], "loss": counts["loss_sum"]}
    )
    if sums["total"] == 0:
        raise DataError("evaluate: the validation loader yielded no samples")
    return {"accuracy": sums["correct"] / sums["total"], "loss": sums["loss"] / sums["total"]}


def autocast(device: str | torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed-precision forward for ``precision`` ``bf16``/``fp16``; a no-op context for ``fp32``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)
