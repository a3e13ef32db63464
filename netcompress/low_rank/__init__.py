"""Low-rank factorisation: truncated SVD of Linear layers and convolutions.

Example::

    from netcompress.low_rank import factorize
    small, summary = factorize(model, energy=0.9, conv_mode="channel")
"""

from netcompress.low_rank.factorize import CONV_MODES, FactorizeConfig, factorize
from netcompress.low_rank.layers import FACTORIZATIONS, Factorization, LowRank, factorize_layer, svd_factors
from netcompress.low_rank.rank import energy_kept, rank_for_budget, rank_for_energy

__all__ = [
    "CONV_MODES",
    "FACTORIZATIONS",
    "FactorizeConfig",
    "Factorization",
    "LowRank",
    "energy_kept",
    "factorize",
    "factorize_layer",
    "rank_for_budget",
    "rank_for_energy",
    "svd_factors",
]
