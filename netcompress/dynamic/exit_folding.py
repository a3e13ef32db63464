"""BatchNorm folded into the convolutions of an early-exit model: the form it is deployed in.

Every runtime that serves a CNN (ONNX Runtime's graph optimiser, TensorRT, a mobile converter) folds each
inference-mode BatchNorm into the convolution or Linear before it; in PyTorch eager mode the BN stays a
separate pass over the activations, which costs most where the maps are largest (the first stage of a CIFAR
ResNet at batch 64). :func:`fold_early_exit_bn` gives the early-exit model that deployed form in PyTorch, its
routing (thresholds, criterion, exit ensemble, carried logits) unchanged, so its measured latency and the
unmodified model's (``netcompress.quantization.fold_bn``) compare like with like.

Example::

    folded, summary = fold_early_exit_bn(ee, torch.randn(1, 3, 32, 32))
    torch.allclose(folded.eval()(x), ee.eval()(x), atol=1e-4)    # the same function, fewer passes
    summary["bn_left"]                                          # [] when every BN had a conv to go into
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from netcompress.core.errors import ConfigError
from netcompress.dynamic.early_exit import EarlyExitModel, as_early_exit


def _is_bn(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def fold_early_exit_bn(
    model: EarlyExitModel, example_inputs: torch.Tensor
) -> tuple[EarlyExitModel, dict[str, Any]]:
    """A copy of ``model`` (eval mode) with every ``Conv/Linear -> BatchNorm`` pair folded, in the segments
    (each retraced by :func:`~netcompress.quantization.bn_folding.fold_bn_and_report`, the BN nodes gone)
    and in the heads (in place in the copy, the BN replaced by ``Identity``, so a head keeps its class and
    its ``features``/``classify``); ``model`` is untouched. Returns ``(folded, summary)``: ``folded`` lists
    the pairs (``segments.<k>.<conv>`` / ``heads.<k>.<conv>``), ``bn_left`` every BN that had no conv to go
    into (still computed, in eval mode). ``example_inputs``: one input batch (its first sample is used), to
    trace segments and heads whose forward branches on shapes.

    Example:
        >>> folded, summary = fold_early_exit_bn(ee, torch.randn(1, 3, 32, 32)); summary["num_folded"]
        21
    """
    from netcompress.clustering.model_clustering import fold_bn_
    from netcompress.quantization.bn_folding import fold_bn_and_report

    work = copy.deepcopy(as_early_exit(model)).eval()
    if not isinstance(example_inputs, torch.Tensor):
        raise ConfigError(f"example_inputs must be one tensor, got {type(example_inputs).__name__}")
    folded: list[list[str]] = []
    state: tuple[torch.Tensor, ...] = (example_inputs[:1],)
    carry: tuple[torch.Tensor, ...] = ()
    with torch.no_grad():
        for index in range(work.num_exits):
            segment, report = fold_bn_and_report(work.segments[index], example_inputs=state)
            work.segments[index] = segment
            folded += [[f"segments.{index}.{a}", f"segments.{index}.{b}"] for a, b in report["folded"]]
            if index < len(work.heads):
                out = work.run_segment(index, state)
                head = work.heads[index]
                takes_previous = getattr(head, "takes_previous", False) and carry
                head_inputs = (out[0], carry[-1]) if takes_previous else out[0]
                pairs = fold_bn_(head, example_inputs=head_inputs)
                folded += [[f"heads.{index}.{a}", f"heads.{index}.{b}"] for a, b in pairs]
            _, _, state, carry = work.step(index, state, carry)
    left = [name for name, m in work.named_modules() if _is_bn(m)]
    return work.eval(), {"folded": folded, "num_folded": len(folded), "bn_left": left}
