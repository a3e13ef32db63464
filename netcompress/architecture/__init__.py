"""Architecture design: depthwise-separable replacement of convolutions.

Example::

    from netcompress.architecture import to_depthwise_separable
    student, summary = to_depthwise_separable(model, activation="relu6", example_inputs=x)
"""

from netcompress.architecture.depthwise_separable import (
    ACTIVATIONS,
    DepthwiseSeparable,
    DepthwiseSeparableConfig,
    separable_from,
    to_depthwise_separable,
)
from netcompress.architecture.layer_costs import macs_by_layer, param_count

__all__ = [
    "ACTIVATIONS",
    "DepthwiseSeparable",
    "DepthwiseSeparableConfig",
    "macs_by_layer",
    "param_count",
    "separable_from",
    "to_depthwise_separable",
]
