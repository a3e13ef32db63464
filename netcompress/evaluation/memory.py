"""Peak memory of a forward pass: the bytes of tensors alive at once while the model runs.

Why not the usual tools: ``tracemalloc`` does not see torch's allocator, and the process
high-water mark (``resource.getrusage``) only ever grows, so after the first large model in
a process it reads zero. Instead a dispatch mode watches every tensor an op creates during
one forward, adds the bytes of each new storage when it appears and subtracts them when the
last tensor using that storage is freed; the peak of that running sum is the activation
peak. Outputs that alias an input (views, in-place ops) add nothing. Scratch space a kernel
allocates and frees inside itself (e.g. an im2col buffer) is not visible at this level.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from netcompress.core.inputs import call_model
from netcompress.evaluation.harness import eval_mode, model_inputs


def _has_storage(value: Any) -> bool:
    # sparse, quantized-packed and meta tensors have no plain storage to count; they are skipped
    return isinstance(value, torch.Tensor) and value.layout == torch.strided and value.device.type != "meta"


def _storage(tensor: torch.Tensor) -> tuple[int, int]:
    storage = tensor.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


class _LiveStorageTracker(TorchDispatchMode):
    """Running total of bytes held by storages created inside the mode, and its peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, list[int]] = {}  # storage data_ptr -> [nbytes, live tensor count]
        self.current_bytes = 0
        self.peak_bytes = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        input_ptrs = {_storage(t)[0] for t in tree_flatten((args, kwargs))[0] if _has_storage(t)}
        for tensor in tree_flatten(out)[0]:
            if _has_storage(tensor):
                self._track(tensor, input_ptrs)
        return out

    def _track(self, tensor: torch.Tensor, input_ptrs: set[int]) -> None:
        ptr, nbytes = _storage(tensor)
        if ptr == 0:
            return
        entry = self.live.get(ptr)
        if entry is None:
            if ptr in input_ptrs:
                return  # a view or in-place result of a tensor made before the forward
            entry = self.live[ptr] = [nbytes, 0]
            self.current_bytes += entry[0]
            self.peak_bytes = max(self.peak_bytes, self.current_bytes)
        entry[1] += 1
        weakref.finalize(tensor, self._release, ptr)

    def _release(self, ptr: int) -> None:
        entry = self.live.get(ptr)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current_bytes -= entry[0]
            del self.live[ptr]


def peak_activation_bytes(model: nn.Module, example_inputs: Any) -> int:
    """Peak bytes of tensors alive at once during one forward on ``example_inputs`` (eval mode).

    Weights and the inputs themselves are not included; the model's output is (it is alive
    when the forward ends).

    Example:
        >>> peak_activation_bytes(nn.Linear(1000, 10), torch.randn(1, 1000))  # one 1x10 float output
        40
    """
    inputs = model_inputs(example_inputs)
    tracker = _LiveStorageTracker()
    with eval_mode(model), torch.no_grad(), tracker:
        output = call_model(model, inputs)
    del output
    return int(tracker.peak_bytes)


def tensor_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers in memory (shared tensors once).

    Example:
        >>> tensor_bytes(nn.Linear(10, 4))  # (40 + 4) float32 values
        176
    """
    seen: set[int] = set()
    total = 0
    for tensor in list(model.parameters()) + list(model.buffers()):
        if id(tensor) not in seen:
            seen.add(id(tensor))
            total += _held_bytes(tensor)
    return total


def _held_bytes(tensor: torch.Tensor) -> int:
    # a sparse tensor holds its values and indices, not numel() dense elements
    if tensor.layout == torch.sparse_csr:
        parts = (tensor.values(), tensor.crow_indices(), tensor.col_indices())
    elif tensor.layout == torch.sparse_coo:
        parts = (tensor._values(), tensor._indices())
    else:
        return tensor.numel() * tensor.element_size()
    return sum(p.numel() * p.element_size() for p in parts)
