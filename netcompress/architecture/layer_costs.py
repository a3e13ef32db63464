"""Parameter and MAC counts of layers before and after a rewrite, for op summaries.

Rewrites (depthwise-separable convolutions, low-rank factorisation) report, per replaced
layer, what it cost before and after. MACs come from :func:`netcompress.evaluation.count_macs`
(PyTorch's FLOP counter), summed over a layer and everything inside it, so a layer that
became a small Sequential is compared as a whole.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn


def param_count(module: nn.Module) -> int:
    """Number of parameters of ``module`` (all of them, trainable or not).

    Example:
        >>> param_count(nn.Linear(4, 3))
        15
    """
    return sum(p.numel() for p in module.parameters())


def macs_by_layer(model: nn.Module, example_inputs: Any, names: Iterable[str]) -> tuple[int, dict[str, int]]:
    """Total MACs of ``model`` and, for each name in ``names``, the MACs of that submodule
    including its children (one forward of ``example_inputs``).

    Example:
        >>> total, per = macs_by_layer(model, torch.randn(1, 3, 32, 32), ["features.3"])
    """
    from netcompress.evaluation import count_macs

    total, per_layer = count_macs(model, example_inputs)
    result = {}
    for name in names:
        prefix = name + "."
        result[name] = sum(m for layer, m in per_layer.items() if layer == name or layer.startswith(prefix))
    return total, result


def add_layer_macs(
    summary: dict[str, Any],
    rows: list[dict[str, Any]],
    model: nn.Module,
    new_model: nn.Module,
    example_inputs: Any,
) -> None:
    """Fill ``macs_before``/``macs_after`` in ``summary`` and in each changed layer's row (keyed by ``name``)."""
    names = [row["name"] for row in rows]
    summary["macs_before"], before = macs_by_layer(model, example_inputs, names)
    summary["macs_after"], after = macs_by_layer(new_model, example_inputs, names)
    for row in rows:
        row["macs_before"], row["macs_after"] = before[row["name"]], after[row["name"]]
