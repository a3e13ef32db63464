"""A compact file for clustered models: indices packed at ``ceil(log2 k)`` bits plus codebooks.

A float32 weight takes 32 bits; a clustered one takes ``ceil(log2 k)`` bits of index (4 for
k = 16) plus its layer's share of a ``k``-entry codebook. The file holds the model's
structure and its other tensors as usual, with each clustered weight replaced by its packed
indices and codebook, and loads back into a working, still-clustered model, bit for bit.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from netcompress.clustering.weight_sharing import (
    CODEBOOK,
    INDICES,
    _index_dtype,
    clustered_modules,
    index_bits,
    snap_module,
)
from netcompress.core.errors import CheckpointError, ConfigError
from netcompress.core.io import atomic_torch_save, load_checkpoint

FORMAT = "netcompress.clustered"
VERSION = 1


def pack_indices(indices: torch.Tensor, *, bits: int) -> torch.Tensor:
    """Pack non-negative integers below ``2**bits`` into a uint8 tensor, ``bits`` each (LSB first).

    Example:
        >>> pack_indices(torch.tensor([1, 2, 3, 0]), bits=2)  # 0b00111001
        tensor([57], dtype=torch.uint8)
    """
    idx = indices.detach().flatten().cpu().to(torch.int64).numpy()
    if idx.size and (idx.min() < 0 or idx.max() >= 2**bits):
        raise ConfigError(f"indices must lie in [0, {2**bits}) to pack at {bits} bits")
    bit_matrix = ((idx[:, None] >> np.arange(bits)) & 1).astype(np.uint8)
    return torch.from_numpy(np.packbits(bit_matrix.reshape(-1), bitorder="little"))


def unpack_indices(packed: torch.Tensor, *, bits: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_indices`: ``count`` int64 indices.

    Example:
        >>> unpack_indices(torch.tensor([57], dtype=torch.uint8), bits=2, count=4)
        tensor([1, 2, 3, 0])
    """
    flat = np.unpackbits(packed.cpu().numpy(), count=count * bits, bitorder="little")
    weights = (1 << np.arange(bits)).astype(np.int64)
    return torch.from_numpy(flat.reshape(count, bits).astype(np.int64) @ weights)


def save_clustered(model: nn.Module, path: str | os.PathLike) -> dict[str, Any]:
    """Write ``model`` with its clustered weights as packed indices + codebooks; return a summary
    (``size_bytes`` of the file, bits per layer). ``model`` is not modified.

    Example:
        >>> cluster_weights_(model, clusters=16)
        >>> save_clustered(model, "model.clustered.pt")["size_bytes"]
    """
    skeleton = copy.deepcopy(model).cpu()
    layers: dict[str, dict[str, Any]] = {}
    for name, module in clustered_modules(skeleton):
        snap_module(module)  # the file must hold codebook[indices], not weights one step away
        codebook, idx = getattr(module, CODEBOOK), getattr(module, INDICES)
        bits = index_bits(codebook.numel())
        layers[name] = {
            "shape": list(module.weight.shape),
            "dtype": str(module.weight.dtype).removeprefix("torch."),
            "bits": bits,
            "packed": pack_indices(idx, bits=bits),
            "codebook": codebook.clone(),
        }
        # the structure travels without the dense copies of what the packed form holds
        module.weight.data = torch.empty(0, dtype=module.weight.dtype)
        setattr(module, INDICES, torch.empty(0, dtype=idx.dtype))
        setattr(module, CODEBOOK, torch.empty(0, dtype=codebook.dtype))
    if not layers:
        raise ConfigError("save_clustered: the model has no clustered layer; run cluster_weights_ first")
    # the skeleton is a pickled module: signed, so this machine loads it back without an opt-in
    blob = {"format": FORMAT, "version": VERSION, "model": skeleton, "layers": layers}
    written = atomic_torch_save(blob, path, sign=True)
    return {
        "path": str(written),
        "size_bytes": written.stat().st_size,
        "layers": {n: {"bits": v["bits"], "clusters": v["codebook"].numel()} for n, v in layers.items()},
    }


def load_clustered(path: str | os.PathLike, *, trust: bool = False) -> nn.Module:
    """Load a file written by :func:`save_clustered` into a working (still clustered) model.

    The file pickles the model's structure: it loads where it was written (signed), elsewhere only
    with ``trust=True``.

    Example:
        >>> model = load_clustered("model.clustered.pt")
    """
    blob = load_checkpoint(Path(path), trust=trust)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a clustered-model file (format {FORMAT!r})")
    if blob.get("version") != VERSION:
        raise CheckpointError(f"{path} has clustered-file version {blob.get('version')}, expected {VERSION}")
    model = blob["model"]
    for name, entry in blob["layers"].items():
        module = model.get_submodule(name)
        count = int(np.prod(entry["shape"]))
        idx = unpack_indices(entry["packed"], bits=entry["bits"], count=count).view(entry["shape"])
        codebook = entry["codebook"]
        setattr(module, CODEBOOK, codebook)
        setattr(module, INDICES, idx.to(_index_dtype(codebook.numel())))
        module.weight.data = codebook[idx].to(getattr(torch, entry["dtype"]))
    return model
