"""Measuring models: accuracy, parameters, zeros, MACs, size on disk, latency, peak memory.

Example::

    from netcompress.evaluation import evaluate, profile, count_macs, layer_table
    stats = profile(model, torch.randn(1, 3, 32, 32))       # params, macs, size_bytes, latency_ms, ...
    metrics = evaluate(model, test_loader)                  # accuracy, loss, num_samples
"""

from netcompress.evaluation.harness import as_input_tuple, eval_mode, expand_batch
from netcompress.evaluation.latency import time_forward
from netcompress.evaluation.layers import layer_table
from netcompress.evaluation.macs import count_macs
from netcompress.evaluation.memory import peak_activation_bytes, tensor_bytes
from netcompress.evaluation.metrics import evaluate
from netcompress.evaluation.profiling import parameter_counts, profile, state_dict_size_bytes
from netcompress.evaluation.units import format_bytes, format_count, format_ms, format_percent

__all__ = [
    "as_input_tuple",
    "count_macs",
    "eval_mode",
    "evaluate",
    "expand_batch",
    "format_bytes",
    "format_count",
    "format_ms",
    "format_percent",
    "layer_table",
    "parameter_counts",
    "peak_activation_bytes",
    "profile",
    "state_dict_size_bytes",
    "tensor_bytes",
    "time_forward",
]
