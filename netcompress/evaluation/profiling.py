"""One call that measures what compression changes: parameters, zeros, MACs, bytes, latency, memory.

Every number is measured, not estimated from a formula: ``size_bytes`` is the length of the
file ``torch.save(model.state_dict())`` writes, MACs come from the ops the model really runs,
latency from timed forwards. ``profile`` never changes the model: eval mode is restored and
the hooks it attaches are removed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netcompress.core.errors import ConfigError
from netcompress.core.inputs import input_tensors, move_inputs
from netcompress.core.model_check import check_model_call
from netcompress.evaluation.harness import expand_batch, model_device, model_inputs
from netcompress.evaluation.latency import keep_heap_warm, time_rounds, torch_threads
from netcompress.evaluation.macs import count_macs
from netcompress.evaluation.memory import peak_activation_bytes, tensor_bytes

# torch.nn.utils.prune-style masking keeps ``<name>_orig`` as the parameter and ``<name>_mask``
# as a buffer; the effective weight is their product, so zeros must be counted on that.
_ORIG_SUFFIX = "_orig"


def parameter_counts(module: nn.Module, *, recurse: bool = True) -> dict[str, int]:
    """Count parameters and the non-zero ones, seeing through ``<name>_orig``/``<name>_mask`` pruning.

    Shared parameters are counted once. ``recurse=False`` counts only the module's own.

    Example:
        >>> layer = nn.Linear(4, 3)
        >>> with torch.no_grad():
        ...     layer.weight[0].zero_()
        >>> parameter_counts(layer)
        {'params': 15, 'nonzero_params': 11}
    """
    seen: set[int] = set()
    params = nonzero = 0
    modules = module.modules() if recurse else [module]
    for owner in modules:
        buffers = dict(owner.named_buffers(recurse=False))
        for name, param in owner.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            values = param.detach()
            if name.endswith(_ORIG_SUFFIX):
                mask = buffers.get(name[: -len(_ORIG_SUFFIX)] + "_mask")
                if mask is not None:
                    values = values * mask
            params += param.numel()
            nonzero += int(torch.count_nonzero(values))
    return {"params": params, "nonzero_params": nonzero}


def state_dict_size_bytes(model: nn.Module) -> int:
    """Bytes of the file ``torch.save(model.state_dict(), f)`` writes (the size on disk).

    Example:
        >>> state_dict_size_bytes(nn.Linear(1000, 100)) > 400_000
        True
    """
    with tempfile.TemporaryDirectory(prefix="netcompress-size-") as folder:
        path = Path(folder) / "state_dict.pt"
        torch.save(model.state_dict(), path)
        return os.path.getsize(path)


def profile(
    model: nn.Module,
    example_inputs: Any,
    *,
    latency: bool = True,
    batch_sizes: tuple[int, ...] | list[int] = (1, 64),
    warmup: int = 5,
    repeats: int = 30,
    threads: int | None = None,
    max_seconds: float | None = 10.0,
    memory: bool = True,
    rounds: int = 3,
) -> dict[str, Any]:
    """Measure a model; returns a JSON-able dict.

    Keys: ``params``, ``nonzero_params``, ``sparsity`` (share of parameters that are zero),
    ``macs`` (per sample: one forward on the first sample of ``example_inputs``; on the whole example when
    its inputs do not share dim 0, e.g. a graph batch, as ``profiled_on`` says),
    ``size_bytes`` (bytes of the saved state dict), ``latency_ms`` / ``latency_p95_ms``
    (batch 1, p50 and p95), ``latency_b<N>_ms`` / ``latency_b<N>_p95_ms`` for every other
    batch size (the batch repeats the first sample), ``latency_repeats``,
    ``peak_memory_bytes`` (parameter and buffer bytes plus the peak bytes of tensors alive at
    once during a batch-1 forward, see :mod:`netcompress.evaluation.memory`),
    ``peak_activation_bytes`` (that peak alone), ``threads`` (``torch.get_num_threads()``
    during timing). With ``latency=False`` timing is skipped and the latency keys are None;
    ``memory=False`` likewise skips the memory trace. ``max_seconds`` caps each batch size's
    timed forwards; ``threads`` sets torch's thread count for the timing and restores it after.

    Latency is taken the way the benchmarks take it (:mod:`netcompress.evaluation.latency`): the
    heap kept warm, ``warmup`` untimed forwards before each round, and the ``repeats`` timed
    forwards of each batch size split over ``rounds`` interleaved rounds (batch 1, batch 64, batch
    1, ...) so load drift hits every batch size alike. Also reported: ``latency_spread`` /
    ``latency_b<N>_spread`` (``(p95 - p5) / p50`` of the timed forwards: how noisy the timing
    was), ``latency_rounds``, ``heap_kept_warm`` and ``latency_device`` (where the forwards were
    timed: ``"cpu, 2 threads"`` or ``"cuda:0 <GPU name>"``; CUDA forwards are synchronised).

    Example:
        >>> stats = profile(model, torch.randn(1, 3, 32, 32), latency=False)
        >>> stats["params"], stats["macs"], stats["size_bytes"]
    """
    check_model_call(model, example_inputs, where="profile")
    device = model_device(model)
    inputs = model_inputs(example_inputs)
    rows = [int(t.shape[0]) if t.dim() else 0 for t in input_tensors(inputs)]
    # inputs whose dim 0 differ (a graph batch: (nodes, F) features, a (2, edges) edge_index) have no first
    # sample to cut: everything is measured on the example as given (``profiled_on``)
    whole = len(set(rows)) > 1 and 0 not in rows
    sample = move_inputs(inputs if whole else expand_batch(inputs, 1), device)
    sizes = sorted({int(b) for b in batch_sizes})
    if any(b < 1 for b in sizes):
        raise ConfigError(f"batch_sizes={list(batch_sizes)} must all be >= 1")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads={threads} must be >= 1")
    if repeats < 1 or rounds < 1:
        raise ConfigError(f"repeats={repeats} and rounds={rounds} must be >= 1")

    counts = parameter_counts(model)
    macs, _ = count_macs(model, sample)
    stats: dict[str, Any] = {
        **counts,
        "sparsity": 1.0 - counts["nonzero_params"] / counts["params"] if counts["params"] else 0.0,
        "macs": int(macs),
        "size_bytes": state_dict_size_bytes(model),
        "latency_ms": None,
        "latency_p95_ms": None,
        "profiled_on": f"the example as given (inputs' dim 0: {rows})" if whole else "one sample",
    }
    for batch in sizes:
        if batch != 1:
            stats[f"latency_b{batch}_ms"] = None
            stats[f"latency_b{batch}_p95_ms"] = None
    if 64 not in sizes:  # the contract always names the batch-64 keys
        stats["latency_b64_ms"] = stats["latency_b64_p95_ms"] = None
    stats["latency_repeats"] = {}
    stats["latency_rounds"] = stats["heap_kept_warm"] = stats["latency_device"] = None
    for batch in sizes:
        stats["latency_spread" if batch == 1 else f"latency_b{batch}_spread"] = None

    with torch_threads(threads):
        stats["threads"] = torch.get_num_threads()
        if latency:
            timing = time_rounds(
                {"model": model},
                sample,
                batch_sizes=None if whole else sizes,
                rounds=rounds,
                repeats=repeats,
                warmup=warmup,
                max_seconds=max_seconds,
            )["model"]
            for batch, summary in timing.items():
                prefix = "latency" if batch == 1 or whole else f"latency_b{batch}"
                stats[f"{prefix}_ms"] = summary["p50_ms"]
                stats[f"{prefix}_p95_ms"] = summary["p95_ms"]
                stats[f"{prefix}_spread"] = summary["spread"]
                stats["latency_repeats"][str(batch)] = summary["repeats"]
            stats["latency_rounds"] = min(rounds, repeats)
            stats["latency_device"] = next(iter(timing.values()))["device"]
            stats["heap_kept_warm"] = keep_heap_warm()

    if memory:
        activation = peak_activation_bytes(model, sample)
        stats["peak_activation_bytes"] = activation
        stats["peak_memory_bytes"] = tensor_bytes(model) + activation
    else:
        stats["peak_activation_bytes"] = stats["peak_memory_bytes"] = None
    return stats
