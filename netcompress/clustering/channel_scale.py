"""BatchNorm as a float per-channel scale + bias, so the layer before it can be clustered scale-free.

Folding BN into a conv (``fold_bn_``) multiplies every output channel's weights by its own factor
``gamma / sqrt(var + eps)``; the layer's ``k`` shared values must then serve channels of very different
magnitudes, and nothing in float is left to absorb the clustering error. ``bn_to_channel_scale_``
instead replaces each ``Conv/Linear -> BatchNorm`` pair's BN by a :class:`ChannelScale`
(``y = x * scale[c] + bias[c]``, the BN's inference map) and, with ``normalize``, divides each output
channel of the layer by the RMS of its non-zero weights, multiplying that into the scale: the model
computes the same function (up to float rounding), every channel's weights are of one magnitude, and
clustering them per layer keeps at most ``k`` distinct values in the weight, while fine-tuning trains
the float scales (the per-channel "quantization parameters" of the Deep-Compression file).

Example:
    >>> pairs = bn_to_channel_scale_(model.eval())
    >>> nc.cluster_weights_(model, clusters=8, preserve_zeros=True)   # weights scale-free, scales float
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class ChannelScale(nn.Module):
    """``x * weight[c] + bias[c]`` over dimension 1 (channels), e.g. a BatchNorm in inference.

    Example:
        >>> ChannelScale(torch.tensor([2.0]), torch.tensor([1.0]))(torch.ones(1, 1, 2, 2))[0, 0, 0, 0]
        tensor(3.)
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        if weight.dim() != 1 or weight.shape != bias.shape:
            raise ValueError(
                f"ChannelScale needs two vectors of one length, got {weight.shape} and {bias.shape}"
            )
        self.weight = nn.Parameter(weight.detach().clone())
        self.bias = nn.Parameter(bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = [1, -1] + [1] * (x.dim() - 2)
        return x * self.weight.view(shape) + self.bias.view(shape)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}"


def bn_to_channel_scale_(
    model: nn.Module, example_inputs: Any = None, *, normalize: bool = True
) -> list[list[str]]:
    """Replace every ``Conv/Linear -> BatchNorm`` pair's BN by a :class:`ChannelScale` IN PLACE.

    The layer's bias (if any) moves into the scale's bias; with ``normalize`` each output channel of
    the layer's weight is divided by the RMS of its non-zero weights (pruned zeros stay zero), that RMS
    multiplied into the channel's scale. Returns the ``[layer, bn]`` pairs replaced (the same pairs
    ``fold_bn_`` folds; ``example_inputs`` lets a model with shape checks trace). Call it in eval
    mode: the BN's running statistics are what it keeps.

    Example:
        >>> bn_to_channel_scale_(model.eval())
        [['conv1', 'bn1'], ...]
    """
    from netcompress.clustering.model_clustering import _bn_pairs
    from netcompress.core.selection import set_submodule

    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return []
    pairs = _bn_pairs(model, example_inputs)
    with torch.no_grad():
        for layer_name, bn_name in pairs:
            layer, bn = model.get_submodule(layer_name), model.get_submodule(bn_name)
            var = bn.running_var if bn.running_var is not None else torch.ones(bn.num_features)
            mean = bn.running_mean if bn.running_mean is not None else torch.zeros(bn.num_features)
            factor = torch.rsqrt(var + bn.eps)
            if bn.weight is not None:
                factor = factor * bn.weight
            shift = -mean * factor + (bn.bias if bn.bias is not None else 0.0)
            if layer.bias is not None:
                shift = shift + layer.bias * factor
                layer.register_parameter("bias", None)
            if normalize:
                rms = channel_rms(layer.weight)
                layer.weight.div_(rms.view([-1] + [1] * (layer.weight.dim() - 1)))
                factor = factor * rms
            set_submodule(model, bn_name, ChannelScale(factor, shift).to(layer.weight.device))
    return pairs


def channel_rms(weight: torch.Tensor) -> torch.Tensor:
    """RMS of each output channel's non-zero weights (1.0 for a channel with none).

    Example:
        >>> channel_rms(torch.tensor([[3.0, 0.0, 4.0], [0.0, 0.0, 0.0]]))
        tensor([3.5355, 1.0000])
    """
    flat = weight.detach().reshape(weight.shape[0], -1)
    count = (flat != 0).sum(dim=1)
    rms = (flat.pow(2).sum(dim=1) / count.clamp_min(1)).sqrt()
    return torch.where(count > 0, rms, torch.ones_like(rms))
