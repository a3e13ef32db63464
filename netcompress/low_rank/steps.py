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

from netcompress.low_rank.factorize import FactorizeConfig, factorize
from netcompress.recipes.steps import StepContext, StepResult, register_step


@register_step("low_rank", "svd", config=FactorizeConfig)
def _svd_step(model: nn.Module, config: FactorizeConfig, ctx: StepContext) -> StepResult:
    """Truncated-SVD factorisation of Linear and conv layers (rank by energy, budget or fixed)."""
    new_model, summary = factorize(model, **config.to_dict(), example_inputs=ctx.example_inputs)
    return StepResult(model=new_model, summary=summary)
