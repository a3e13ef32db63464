"""The replicas' half of the distributed contract: every rank holds rank 0's model, and proves it.

Parameters, buffers (pruning masks, quantizer scales and zero points, BN statistics) and tensors kept
in plain attributes (observer ranges, which peers lose) are named by :func:`named_state`, hashed per
tensor by :func:`model_checksums`, compared across ranks by :func:`check_consistent` (which raises
:class:`~netcompress.training.distributed.ReplicaDivergenceError` naming the first differing tensor),
and made equal by :func:`sync_model_` (structure check, broadcast from rank 0, check). Outside a
process group every function works on the one process and nothing is communicated.

Example:
    >>> model_checksums(nn.Linear(2, 1))        # {'weight': '9c1f...', 'bias': '03aa...'}
    >>> resynced = sync_model_(model, where="after step 2 (prune/channel)")   # under torchrun
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from netcompress.training.distributed import (
    ReplicaDivergenceError,
    _coll_device,
    broadcast_object,
    is_distributed,
    is_main,
    world_size,
)


def _holds_tensors(value: Any) -> bool:
    if not hasattr(value, "__dict__") or isinstance(value, type) or callable(value):
        return False
    return any(isinstance(v, torch.Tensor) for v in vars(value).values())


def _loose_state(model: nn.Module) -> dict[str, Any]:
    """Attributes outside ``state_dict`` that hold tensors: a tensor attribute of a module, or a
    plain object (an observer's range) with tensors in its ``__dict__``, by dotted name."""
    found: dict[str, Any] = {}
    for prefix, module in model.named_modules():
        for attr, value in vars(module).items():
            if attr.startswith("_") or isinstance(value, nn.Module):
                continue
            name = f"{prefix}.{attr}" if prefix else attr
            if isinstance(value, torch.Tensor) or _holds_tensors(value):
                found[name] = value
    return found


def named_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor a replica must hold identically: parameters, buffers (masks, quantizer scales,
    BN statistics) and tensors kept in attributes (``conv.act_quant.observer.lo``), by name."""
    state: dict[str, torch.Tensor] = {}
    state.update((n, p.detach()) for n, p in model.named_parameters())
    state.update((n, b) for n, b in model.named_buffers() if b is not None)
    for name, value in _loose_state(model).items():
        if isinstance(value, torch.Tensor):
            state[name] = value.detach()
        else:
            state.update(
                (f"{name}.{k}", v.detach()) for k, v in vars(value).items() if isinstance(v, torch.Tensor)
            )
    return state


def tensor_digest(tensor: torch.Tensor) -> str:
    """A 16-hex-digit hash of a tensor's dtype, shape and exact bytes."""
    t = tensor.detach().cpu().contiguous()
    h = hashlib.blake2b(digest_size=8)
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_checksums(model: nn.Module) -> dict[str, str]:
    """Per-tensor digests of :func:`named_state`, in a fixed order (this rank only, no collective).

    Example:
        >>> model_checksums(nn.Linear(2, 1))
        {'weight': '...', 'bias': '...'}
    """
    return {name: tensor_digest(t) for name, t in named_state(model).items()}


def model_digest(model: nn.Module) -> str:
    """One hash over :func:`model_checksums` (what a step summary records)."""
    body = "".join(f"{k}={v};" for k, v in model_checksums(model).items())
    return hashlib.blake2b(body.encode(), digest_size=8).hexdigest()


def first_difference(reference: dict[str, str], other: dict[str, str]) -> str | None:
    """The first tensor name whose digest differs (or that only one side has); None if equal."""
    for name, digest in reference.items():
        if other.get(name) != digest:
            return name
    extra = [n for n in other if n not in reference]
    return extra[0] if extra else None


def check_consistent(model: nn.Module, *, where: str = "model") -> dict[str, str]:
    """Compare every rank's :func:`model_checksums` with rank 0's; raise naming the first differing
    tensor. Returns this rank's checksums. Every rank raises, so none hangs in a later collective.

    Example:
        >>> check_consistent(model, where="after step 2 (prune/channel)")
    """
    mine = model_checksums(model)
    if not is_distributed():
        return mine
    everyone: list[Any] = [None] * world_size()
    dist.all_gather_object(everyone, mine)
    for other_rank, theirs in enumerate(everyone[1:], start=1):
        name = first_difference(everyone[0], theirs)
        if name is not None:
            raise ReplicaDivergenceError(
                f"{where}: rank {other_rank} differs from rank 0 in tensor {name!r} "
                f"(first of {sum(1 for k in everyone[0] if theirs.get(k) != everyone[0][k])} differing)"
            )
    return mine


def _structure(model: nn.Module) -> list[tuple[str, ...]]:
    modules = [(n, type(m).__name__) for n, m in model.named_modules()]
    tensors = [(n, str(t.dtype), str(tuple(t.shape))) for n, t in model.state_dict(keep_vars=True).items()]
    return [*modules, *((n, *rest) for n, *rest in tensors)]


@torch.no_grad()
def sync_model_(model: nn.Module, *, where: str = "model") -> list[str]:
    """Make every rank hold rank 0's model, IN PLACE, and prove it; return the tensors that had differed
    on any rank (the same list on every rank).

    Structure first (module names and types, state names, shapes, dtypes): a mismatch means the
    ranks made different decisions (surgery) and raises :class:`ReplicaDivergenceError`. Then every
    parameter and buffer is broadcast from rank 0, tensor-holding attributes (observers) are sent
    pickled, and :func:`check_consistent` compares checksums. A no-op returning ``[]`` outside a group.

    Example:
        >>> resynced = sync_model_(model, where="after step 3")   # e.g. ['bn1.running_mean', ...]
    """
    if not is_distributed():
        return []
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, (_structure(model), model_checksums(model)))
    (shape0, reference), resynced = gathered[0], []
    for other_rank, (shape, checksums) in enumerate(gathered[1:], start=1):
        if shape != shape0:
            diff = next((a, b) for a, b in zip(shape0 + [None], shape + [None]) if a != b)
            raise ReplicaDivergenceError(
                f"{where}: rank {other_rank} has a different model structure from rank 0 at {diff[1]!r} "
                f"(rank 0: {diff[0]!r}); a step made a different choice on this rank"
            )
        resynced += [n for n, d in checksums.items() if reference.get(n) != d and n not in resynced]
    device = _coll_device()
    for tensor in [*(p.data for p in model.parameters()), *(b for b in model.buffers() if b is not None)]:
        staged = tensor if tensor.device == device else tensor.to(device)
        dist.broadcast(staged, src=0)
        if staged is not tensor:
            tensor.copy_(staged)
    loose = broadcast_object({k: v for k, v in _loose_state(model).items()} if is_main() else None)
    for name, value in loose.items():
        owner, _, attr = name.rpartition(".")
        module = model.get_submodule(owner) if owner else model
        setattr(module, attr, value)
    check_consistent(model, where=where)
    return resynced
