"""Measuring models: accuracy, parameters, zeros, MACs, size on disk, latency, peak memory.

Example::

    from netcompress.evaluation import evaluate, profile, count_macs, layer_table
    stats = profile(model, torch.randn(1, 3, 32, 32))       # params, macs, size_bytes, latency_ms, ...
    metrics = evaluate(model, test_loader)                  # accuracy, loss, num_samples

One of each: top-1 accuracy (:func:`top1_counts`), eval mode (:func:`eval_mode`), MACs
(:func:`count_macs`), latency (:func:`time_rounds`: warm heap, warm-up, interleaved rounds,
p50/p95 and spread); ``profile``, the recipe steps, the reports and the benchmarks all use them.
"""

from netcompress.evaluation.harness import as_input_tuple, eval_mode, expand_batch
from netcompress.evaluation.latency import (
    keep_heap_warm,
    latency_summary,
    time_alternating,
    time_forward,
    time_rounds,
    torch_threads,
)
from netcompress.evaluation.layers import layer_table
from netcompress.evaluation.macs import count_macs, count_total_macs
from netcompress.evaluation.memory import peak_activation_bytes, tensor_bytes
from netcompress.evaluation.metrics import evaluate, top1_accuracy, top1_counts
from netcompress.evaluation.profiling import parameter_counts, profile, state_dict_size_bytes
from netcompress.evaluation.units import format_bytes, format_count, format_ms, format_percent

__all__ = [
    "as_input_tuple",
    "count_macs",
    "count_total_macs",
    "eval_mode",
    "evaluate",
    "expand_batch",
    "format_bytes",
    "format_count",
    "format_ms",
    "format_percent",
    "keep_heap_warm",
    "latency_summary",
    "layer_table",
    "parameter_counts",
    "peak_activation_bytes",
    "profile",
    "state_dict_size_bytes",
    "tensor_bytes",
    "time_alternating",
    "time_forward",
    "time_rounds",
    "top1_accuracy",
    "top1_counts",
    "torch_threads",
]
