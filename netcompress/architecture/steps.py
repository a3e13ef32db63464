"""Recipe step ``architecture/depthwise_separable``.

::

    - op: architecture
      method: depthwise_separable
      activation: relu6
      skip_first: true
"""

from __future__ import annotations

import dataclasses

from torch import nn

from netcompress.architecture.depthwise_separable import ACTIVATIONS, INITS, to_depthwise_separable
from netcompress.core.config import Config, check_choice
from netcompress.core.methods import MethodData, Result, register_method


@dataclasses.dataclass
class DepthwiseSeparableConfig(Config):
    """Which convolutions become depthwise-separable, and what goes between the two parts.

    Example:
        >>> DepthwiseSeparableConfig(activation="relu6", exclude=["features.0"])
    """

    include: list[str] | None = None
    exclude: list[str] = dataclasses.field(default_factory=list)
    skip_first: bool = True
    activation: str | None = "relu6"
    bn: bool = True
    init: str = "default"

    def __post_init__(self) -> None:
        check_choice("activation", self.activation, [*ACTIVATIONS.names(), None])
        check_choice("init", self.init, INITS)


@register_method("architecture", "depthwise_separable", config=DepthwiseSeparableConfig)
def _depthwise_separable_step(model: nn.Module, config: DepthwiseSeparableConfig, ctx: MethodData) -> Result:
    """Replace k x k convolutions by depthwise k x k + BN + activation + pointwise 1 x 1."""
    new_model, summary = to_depthwise_separable(
        model,
        include=config.include,
        exclude=config.exclude,
        skip_first=config.skip_first,
        activation=config.activation,
        bn=config.bn,
        init=config.init,
        example_inputs=ctx.example_inputs,
    )
    return Result(model=new_model, summary=summary)
