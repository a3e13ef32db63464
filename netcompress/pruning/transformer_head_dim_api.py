"""``prune_head_dims``: the verb for head-dim pruning (``prune/transformer`` with ``head_dim_qk``/``head_dim_v``).

Every attention head stays and keeps ``1 - qk`` of its query/key and ``1 - v`` of its value channels, FFN neurons
go too, optionally scaled to a MAC target (``transformer_head_dim_search``).

Example:
    >>> small = prune_head_dims(vit, x, qk=0.25, v=0.25, ffn=0.75, mac_target=2.0, calib=loader)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from netcompress.core.errors import ConfigError
from netcompress.pruning.transformer_pruning import TransformerPruneConfig, transformer_prune


def prune_head_dims(
    model: nn.Module,
    example_inputs: Any,
    *,
    qk: float,
    v: float,
    ffn: float = 0.0,
    mac_target: float = 0.0,
    calib: Any = None,
    calib_batches: int = 4,
    head_dim_importance: str | None = None,
    importance: str = "magnitude",
    reconstruct: bool = False,
    ignore: Iterable[str] = (),
) -> nn.Module:
    """A verified copy of ``model`` whose attention heads keep ``1 - qk`` of their query/key and ``1 - v`` of
    their value channels (every head stays), with ``ffn`` of the FFN neurons removed.

    ``mac_target`` (e.g. 2.0): ``qk``/``v``/``ffn`` set the split and are scaled to the smallest factor
    reaching it. ``head_dim_importance``: ``activation`` (on ``calib``, the default when ``calib`` is given) or
    ``magnitude`` (the default without data); ``importance``/``reconstruct`` apply to the FFN neurons as in
    :func:`~netcompress.pruning.prune_transformer`. ``model`` is left untouched. The summary comes from
    ``nc.apply(model, TransformerPruneConfig(heads=0, head_dim_qk=..., ...), MethodData(...))``.
    """
    if head_dim_importance is None:
        head_dim_importance = "activation" if calib is not None else "magnitude"
    config = TransformerPruneConfig.from_dict(
        {
            "heads": 0.0, "ffn": ffn, "head_dim_qk": qk, "head_dim_v": v, "mac_target": mac_target,
            "calib_batches": calib_batches, "head_dim_importance": head_dim_importance, "importance": importance,
            "reconstruct": reconstruct, "ignore": list(ignore),
        },
        where="prune_head_dims",
    )  # fmt: skip
    if not (qk or v):
        raise ConfigError("prune_head_dims: qk and v are both 0, nothing to prune inside the heads")
    return transformer_prune(model, example_inputs, config, loader=calib)[0]
