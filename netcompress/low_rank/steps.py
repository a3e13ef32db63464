"""Recipe step ``low_rank/svd``: truncated-SVD factorisation of the current model.

In a recipe::

    - op: low_rank
      method: svd
      energy: 0.95
      conv_mode: channel
      exclude: [classifier]
"""

from __future__ import annotations

from torch import nn

from netcompress.core.methods import MethodData, Result, register_method
from netcompress.low_rank.factorize import FactorizeConfig, factorize


@register_method("low_rank", "svd", config=FactorizeConfig)
def _svd_step(model: nn.Module, config: FactorizeConfig, ctx: MethodData) -> Result:
    """Truncated-SVD factorisation of Linear and conv layers (rank by energy, budget or fixed)."""
    new_model, summary = factorize(model, **config.to_dict(), example_inputs=ctx.example_inputs)
    return Result(model=new_model, summary=summary)
