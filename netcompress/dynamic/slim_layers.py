"""The layers of a slimmable model: Conv/Linear/PReLU/GroupNorm layers that run on a per-width
selection of their channels, and switchable BatchNorm.

A slimmable layer holds, per width, which output channels it computes and which input channels
it reads (:class:`Selection`); :mod:`netcompress.dynamic.slimmable` fills those in from the channel
dependency graph, so coupled channels (both sides of a residual add, the parts of a concatenation,
the ``C*H*W`` features after a flatten) are selected together. Selections that are a prefix are
stored as slices (views, no copy). Every BatchNorm keeps private statistics and affine parameters
per width ("switchable BN", Yu et al., *Slimmable Neural Networks*, 2019).

Example::

    conv = slim_copy(nn.Conv2d(4, 8, 3))
    conv.selections = {0.5: Selection(out_sel=slice(0, 4), in_sel=slice(0, 2), groups=1), 1.0: ...}
    conv.width = 0.5          # now (N, 2, H, W) -> (N, 4, H', W')
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

Index = slice | list[int]


def active_channels(full: int, width: float) -> int:
    """Channels (or pruning units) used at ``width``: ``ceil(width * full)``, at least 1.

    Example:
        >>> active_channels(30, 0.1), active_channels(64, 0.25)
        (3, 16)
    """
    return max(1, math.ceil(width * full - 1e-6))


def as_index(keep: Sequence[int]) -> Index:
    """A kept-index list as a slice when it is ``0..n-1`` (a view), else the list itself.

    Example:
        >>> as_index([0, 1, 2]), as_index([0, 2])
        (slice(0, 3, None), [0, 2])
    """
    keep = list(keep)
    return slice(0, len(keep)) if keep == list(range(len(keep))) else keep


@dataclasses.dataclass(frozen=True)
class Selection:
    """One layer at one width: output channels computed, input channels read (positions within a
    group for grouped convs; None: all), and the conv ``groups`` to run with."""

    out_sel: Index
    in_sel: Index | None = None
    groups: int = 1


class SlimLayer:
    """Shared state of slimmable layers: ``selections`` per width and the current ``width``."""

    width: float = 1.0
    selections: Mapping[float, Selection] = {}

    def selection(self) -> Selection:
        return self.selections[self.width]


def _pick(t: torch.Tensor | None, sel: Index | None, dim: int = 0) -> torch.Tensor | None:
    if t is None or sel is None:
        return t
    if isinstance(sel, slice):
        return t[(slice(None),) * dim + (sel,)]
    return t.index_select(dim, torch.as_tensor(sel, device=t.device))


class SlimConv(SlimLayer):
    """Body of slimmable Conv1d/2d/3d: the selected filters on the channels that arrive."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.selection()
        weight = _pick(_pick(self.weight, s.out_sel), s.in_sel, 1)
        bias = _pick(self.bias, s.out_sel)
        conv = (F.conv1d, F.conv2d, F.conv3d)[len(self.kernel_size) - 1]
        padding = self.padding
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        return conv(x, weight, bias, self.stride, padding, self.dilation, s.groups)


class SlimConv1d(SlimConv, nn.Conv1d):
    """Slimmable Conv1d (dense, depthwise or grouped)."""


class SlimConv2d(SlimConv, nn.Conv2d):
    """Slimmable Conv2d (dense, depthwise or grouped)."""


class SlimConv3d(SlimConv, nn.Conv3d):
    """Slimmable Conv3d (dense, depthwise or grouped)."""


class SlimLinear(SlimLayer, nn.Linear):
    """Linear using the selected rows on the selected input features (the last dim)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.selection()
        return F.linear(x, _pick(_pick(self.weight, s.out_sel), s.in_sel, 1), _pick(self.bias, s.out_sel))


class SlimPReLU(SlimLayer, nn.PReLU):
    """PReLU with one slope per channel, the selected slopes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.prelu(x, _pick(self.weight, self.selection().out_sel))


class SlimGroupNorm(SlimLayer, nn.GroupNorm):
    """GroupNorm on whole kept groups (the channel graph keeps each group whole): fewer groups."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.selection()
        return F.group_norm(x, s.groups, _pick(self.weight, s.out_sel), _pick(self.bias, s.out_sel), self.eps)


class SlimConvTranspose(SlimLayer):
    """Body of slimmable ConvTranspose1d/2d/3d, weight ``(in, out / groups, *kernel)``: the inputs that arrive
    (``in_sel``, along dim 0) and each group's selected output positions (dim 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.selection()
        weight = _pick(self.weight, s.in_sel)
        per_in, per_out = self.in_channels // self.groups, self.out_channels // self.groups
        if self.groups == 1:
            weight = _pick(weight, s.out_sel, 1)
        elif per_in > 1:  # grouped: the kept positions of the first group, the same in every group
            outs = range(self.out_channels)[s.out_sel] if isinstance(s.out_sel, slice) else s.out_sel
            weight = _pick(weight, [o for o in outs if o < per_out], 1)
        conv = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[len(self.kernel_size) - 1]
        return conv(x, weight, _pick(self.bias, s.out_sel), self.stride, self.padding, self.output_padding,
                    s.groups, self.dilation)  # fmt: skip


class SlimConvTranspose1d(SlimConvTranspose, nn.ConvTranspose1d):
    """Slimmable ConvTranspose1d."""


class SlimConvTranspose2d(SlimConvTranspose, nn.ConvTranspose2d):
    """Slimmable ConvTranspose2d."""


class SlimConvTranspose3d(SlimConvTranspose, nn.ConvTranspose3d):
    """Slimmable ConvTranspose3d."""


class SlimInstanceNorm(SlimLayer):
    """InstanceNorm normalises each channel of each sample alone: the selected channels' affine parameters.
    Running statistics are refused when the layer is made slimmable (a selection would update a copy)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.selection()
        return F.instance_norm(x, None, None, _pick(self.weight, s.out_sel), _pick(self.bias, s.out_sel),
                               True, self.momentum or 0.0, self.eps)  # fmt: skip


class SlimInstanceNorm1d(SlimInstanceNorm, nn.InstanceNorm1d):
    """Slimmable InstanceNorm1d."""


class SlimInstanceNorm2d(SlimInstanceNorm, nn.InstanceNorm2d):
    """Slimmable InstanceNorm2d."""


class SlimInstanceNorm3d(SlimInstanceNorm, nn.InstanceNorm3d):
    """Slimmable InstanceNorm3d."""


# exact layer type -> slimmable class (a subclass may compute something else, so it is refused)
SLIM_CLASSES: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv1d: SlimConv1d,
    nn.Conv2d: SlimConv2d,
    nn.Conv3d: SlimConv3d,
    nn.Linear: SlimLinear,
    nn.PReLU: SlimPReLU,
    nn.GroupNorm: SlimGroupNorm,
    nn.ConvTranspose1d: SlimConvTranspose1d,
    nn.ConvTranspose2d: SlimConvTranspose2d,
    nn.ConvTranspose3d: SlimConvTranspose3d,
    nn.InstanceNorm1d: SlimInstanceNorm1d,
    nn.InstanceNorm2d: SlimInstanceNorm2d,
    nn.InstanceNorm3d: SlimInstanceNorm3d,
}
PLAIN_CLASSES = {slim: plain for plain, slim in SLIM_CLASSES.items()}
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def slim_copy(module: nn.Module) -> nn.Module:
    """A slimmable copy of a Conv/ConvTranspose/Linear/PReLU/GroupNorm/InstanceNorm: same tensors, the slim class."""
    new = copy.deepcopy(module)
    new.__class__ = SLIM_CLASSES[type(module)]  # the slim classes add no tensors of their own
    return new


class SwitchableBatchNorm(nn.Module):
    """One BatchNorm per width (private statistics and affine parameters); ``width`` picks it.

    ``channels`` maps each width to the source channels its BN starts from (default: the first
    ``ceil(width * C)``).

    Example:
        >>> sbn = SwitchableBatchNorm(nn.BatchNorm2d(8), widths=(0.5, 1.0))
        >>> [bn.num_features for bn in sbn.bns]
        [4, 8]
    """

    def __init__(
        self,
        source: nn.modules.batchnorm._BatchNorm,
        widths: Sequence[float],
        channels: Mapping[float, Sequence[int]] | None = None,
    ) -> None:
        super().__init__()
        self.widths = tuple(float(w) for w in widths)
        self.width = max(self.widths)
        self.num_features = source.num_features
        bns = []
        for w in self.widths:
            keep = (
                list(channels[w])
                if channels is not None
                else list(range(active_channels(source.num_features, w)))
            )
            bn = type(source)(len(keep), eps=source.eps, momentum=source.momentum, affine=source.affine,
                              track_running_stats=source.track_running_stats)  # fmt: skip
            _copy_bn(source, bn, keep)
            bns.append(bn.to(next(iter(source.state_dict().values())).device))
        self.bns = nn.ModuleList(bns)

    def current(self) -> nn.Module:
        return self.bns[self.widths.index(self.width)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.current()(x)


def _copy_bn(source: nn.Module, target: nn.Module, keep: list[int]) -> None:
    index = torch.as_tensor(keep, dtype=torch.long)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            src, dst = getattr(source, name, None), getattr(target, name, None)
            if src is not None and dst is not None:
                dst.copy_(src.index_select(0, index.to(src.device)))
        if (
            getattr(source, "num_batches_tracked", None) is not None
            and target.num_batches_tracked is not None
        ):
            target.num_batches_tracked.copy_(source.num_batches_tracked)
