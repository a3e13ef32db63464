"""Folding BatchNorm into the convolution or Linear layer before it.

In inference a BatchNorm is an affine map per channel, so ``Conv -> BN`` equals one conv with
``w' = w * gamma / sqrt(var + eps)`` and ``b' = (b - mean) * gamma / sqrt(var + eps) + beta``.
Quantizing the folded weight is what an int8 runtime executes, so PTQ folds first.

A model without BatchNorm has nothing to fold: it comes back as an eval-mode copy of its own class (no
trace, so models torch.fx cannot trace pass), with ``summary["nothing_to_fold"]`` saying so. A folded model
is a ``torch.fx.GraphModule`` (class name of the original, same state-dict keys less the folded BNs).

Example:
    >>> folded, summary = fold_bn_and_report(model)   # model is untouched
    >>> summary["folded"]
    [['features.0', 'features.1'], ...]
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from netcompress.quantization.kernel_calls import has_own_forward, probe_input
from netcompress.quantization.tracing import module_of, trace_for_quantization

_FOLDABLE = {
    nn.Conv1d: nn.BatchNorm1d,
    nn.Conv2d: nn.BatchNorm2d,
    nn.Conv3d: nn.BatchNorm3d,
    nn.Linear: nn.BatchNorm1d,
}


def fold_bn_into(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Fold ``bn``'s running statistics and affine parameters into ``layer`` (in place).

    Example:
        >>> fold_bn_into(conv, bn)   # conv now computes bn(conv(x)) in eval mode
    """
    with torch.no_grad():
        var = bn.running_var if bn.running_var is not None else torch.ones(bn.num_features)
        mean = bn.running_mean if bn.running_mean is not None else torch.zeros(bn.num_features)
        gamma = bn.weight if bn.weight is not None else torch.ones_like(var)
        beta = bn.bias if bn.bias is not None else torch.zeros_like(var)
        factor = gamma / torch.sqrt(var + bn.eps)
        shape = [-1] + [1] * (layer.weight.dim() - 1)
        layer.weight.mul_(factor.reshape(shape))
        bias = layer.bias if layer.bias is not None else torch.zeros_like(mean)
        new_bias = (bias - mean) * factor + beta
        if layer.bias is None:
            layer.bias = nn.Parameter(new_bias.detach().clone())
        else:
            layer.bias.copy_(new_bias)


def _foldable(layer: nn.Module | None, bn: nn.Module | None) -> bool:
    if layer is None or bn is None or getattr(layer, "weight", None) is None:
        return False
    return (
        any(isinstance(layer, c) and isinstance(bn, b) for c, b in _FOLDABLE.items())
        and (bn.track_running_stats or bn.running_mean is not None)
        and bn.num_features == layer.weight.shape[0]
    )


def _fold_checked(layer: nn.Module, bn: nn.Module) -> str | None:
    """Fold ``bn`` into ``layer``; for a layer with its own forward, verify on a probe input.

    A forward that pads its input is still affine in (weight, bias), so folding holds; one that
    normalises its weight (weight standardisation) undoes the fold. Then the layer is restored
    and the reason returned (``None`` when folded).
    """
    if not has_own_forward(layer):
        fold_bn_into(layer, bn)
        return None
    x = probe_input(layer)
    saved = {k: v.detach().clone() for k, v in layer.state_dict().items()}
    had_bias = layer.bias is not None
    try:
        with torch.no_grad():
            expected = bn(layer(x))
            fold_bn_into(layer, bn)
            got = layer(x)
        tol = 1e-4 * float(expected.abs().max()) + 1e-5
        if got.shape == expected.shape and float((got - expected).abs().max()) <= tol:
            return None
        reason = "its own forward is not affine in (weight, bias): folding changes its output"
    except Exception as exc:  # a forward that needs other inputs: keep the BN, say why
        reason = f"its own forward failed on a probe input ({type(exc).__name__}: {exc})"
    if not had_bias:
        layer.bias = None
        saved.pop("bias", None)
    layer.load_state_dict(saved, strict=False)
    return reason


def _recluster(layer: nn.Module) -> bool:
    """A clustered layer's folded weights (scaled per channel) are clustered again with the same k,
    so the sharing survives; its old codebook no longer fits them. Fold BN before clustering
    (``cluster_weights_(model, fold_bn=True)``) to keep the function exactly."""
    from netcompress.clustering.weight_sharing import CODEBOOK, KEEP_ZERO, cluster_module

    codebook = getattr(layer, CODEBOOK, None)
    if codebook is None:
        return False
    cluster_module(layer, clusters=codebook.numel(), preserve_zeros=getattr(layer, KEEP_ZERO, False))
    return True


NOTHING_TO_FOLD = "the model has no BatchNorm layer: returned an eval-mode copy of it, its own class, not traced"


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def fold_bn_and_report(
    model: nn.Module, *, example_inputs: Any = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Copy ``model``, fold every ``Conv/Linear -> BatchNorm`` pair, return ``(folded, summary)``.

    ``folded`` is a ``torch.fx.GraphModule`` when the model holds BatchNorm (traced to find the pairs), and
    an eval-mode copy of the model itself when it holds none (``summary["nothing_to_fold"]``; never traced).
    A pair folds only when the BN is the conv's sole user and the conv module is called once. A
    clustered layer folded into is re-clustered with its k (summary ``reclustered``).
    Folding uses running statistics, i.e. eval-mode behaviour; the result is put in eval mode.
    ``example_inputs`` lets models with shape checks trace (see :func:`trace_for_quantization`).

    Example:
        >>> folded, summary = fold_bn_and_report(model); summary["num_folded"]
        7
    """
    if not has_batchnorm(model):
        empty: dict[str, Any] = {"folded": [], "num_folded": 0, "bn_left": [], "not_folded": []}
        return copy.deepcopy(model).eval(), {**empty, "nothing_to_fold": NOTHING_TO_FOLD}
    gm = trace_for_quantization(copy.deepcopy(model).eval(), example_inputs=example_inputs)
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    folded: list[list[str]] = []
    not_folded: list[list[str]] = []
    reclustered: list[str] = []
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or len(node.users) != 1:
            continue
        user = next(iter(node.users))
        if user.op != "call_module" or calls.get(node.target, 0) != 1 or calls.get(user.target, 0) != 1:
            continue
        layer, bn = module_of(gm, node), module_of(gm, user)
        if not _foldable(layer, bn) or user.args[0] is not node:
            continue
        reason = _fold_checked(layer, bn)
        if reason is not None:
            not_folded.append([str(node.target), str(user.target), reason])
            continue
        if _recluster(layer):
            reclustered.append(str(node.target))
        user.replace_all_uses_with(node)
        gm.graph.erase_node(user)
        gm.delete_submodule(user.target)
        folded.append([str(node.target), str(user.target)])
    gm.graph.lint()
    gm.recompile()
    remaining = [n for n, m in gm.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    summary = {"folded": folded, "num_folded": len(folded), "bn_left": remaining, "not_folded": not_folded}
    if reclustered:
        summary["reclustered"] = reclustered
    return gm.eval(), summary


def fold_bn(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with BatchNorm folded into preceding Conv/Linear layers (model untouched): a
    ``torch.fx.GraphModule``, or a plain eval-mode copy when the model has no BatchNorm (nothing to fold).

    Example:
        >>> folded = fold_bn(model.eval())
        >>> torch.allclose(folded(x), model(x), atol=1e-5)
        True
    """
    return fold_bn_and_report(model)[0]
