"""Head-dim pruning of Hugging Face BERT/ViT-style self-attention: separate query/key/value ``Linear`` layers.

Such a module reshapes q, k and v with one ``attention_head_size`` (ViT in transformers 5: ``head_dim``) and scales the scores by its ``scaling``
attribute (set from the original head size at construction). Head-dim pruning keeps, per head, the same number
of query/key and value channels (``head_dim_qk`` and ``head_dim_v`` must keep equal counts; the channels may
differ), slices the q/k/v rows and the output projection's columns, sets ``attention_head_size`` and
``all_head_size`` and leaves ``scaling`` alone, so the result equals the original with the removed rows zeroed
(checked afterwards by ``transformer_head_dim_search``). Refused with an error naming the class: grouped-query
attention, relative position embeddings (``position_embedding_type`` other than ``absolute``), modules without
``attention_head_size``/``scaling`` (RoPE decoders such as Llama, GPT-2's packed ``Conv1D``). A fused q|k|v
``Linear`` (vit-pytorch, timm, MONAI) or a fused k|v one (``"q_kv"``) is handed to
:mod:`~netcompress.pruning.transformer_head_dim_fused`.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from netcompress.core.errors import ConfigError, UnsupportedModelError
from netcompress.pruning.transformer_blocks import AttentionUnit
from netcompress.pruning.transformer_head_dim_fused import (
    FUSED,
    apply_fused_,
    check_fused_unit,
    fused_sums,
    masked_fused_,
)


def check_hf_unit(module: nn.Module, unit: AttentionUnit) -> None:
    """Raise an error naming ``module`` unless its head dims can be pruned exactly."""
    where = f"head-dim pruning {unit.name!r} ({type(module).__name__})"
    if unit.layout in FUSED:
        check_fused_unit(module, unit)
        return
    if unit.layout != "linear":
        raise UnsupportedModelError(
            f"{where}: {unit.layout} q/k/v layout (e.g. GPT-2 Conv1D) is not supported"
        )
    if unit.num_kv_heads != unit.num_heads:
        raise UnsupportedModelError(f"{where}: grouped-query attention is not supported")
    if "position_embeddings" in inspect.signature(module.forward).parameters:
        raise UnsupportedModelError(f"{where}: rotary position embeddings (RoPE) are not supported")
    if getattr(module, _size_attr(module), None) != unit.head_dim or not isinstance(
        getattr(module, "scaling", None), float
    ):
        raise UnsupportedModelError(
            f"{where}: needs BERT/ViT-style attention_head_size (or head_dim) and scaling attributes "
            "(other attention classes are not supported)"
        )
    position = getattr(module, "position_embedding_type", "absolute")
    if position not in (None, "absolute"):
        raise UnsupportedModelError(f"{where}: position_embedding_type={position!r} is not supported")


def _size_attr(module: nn.Module) -> str:
    return "attention_head_size" if hasattr(module, "attention_head_size") else "head_dim"


def _linear(model: nn.Module, name: str) -> nn.Linear:
    layer = model.get_submodule(name)
    if not isinstance(layer, nn.Linear):
        raise UnsupportedModelError(f"head-dim pruning: {name!r} is {type(layer).__name__}, not nn.Linear")
    return layer


def hf_sums(
    model: nn.Module, units: dict[str, AttentionUnit], batches: Any, run: Any
) -> dict[str, list[torch.Tensor]]:
    """Per unit: [q, k, v] channel scores before the products, ``(num_heads, head_dim)`` each: mean
    ``|activation|`` over the batches' tokens (``run(batches)`` calls the model) or, without batches, row norms."""
    sums: dict[str, list[torch.Tensor]] = {}
    # per layer: its rows' scores (one fused q|k|v layer serves all three)
    layers = {name: list(dict.fromkeys((u.q, u.k, u.v))) for name, u in units.items()}
    if batches is None:
        got = {(name, n): _linear(model, n).weight.detach().norm(dim=1) for name in units for n in layers[name]}
    else:
        got = {}

        def hook(key: tuple[str, str]) -> Any:
            def post(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
                flat = out.detach().abs().reshape(-1, out.shape[-1]).mean(0)
                got[key] = flat if key not in got else got[key] + flat

            return post

        handles = [
            _linear(model, n).register_forward_hook(hook((name, n))) for name in units for n in layers[name]
        ]
        try:
            run(batches)
        finally:
            for handle in handles:
                handle.remove()
    for name, u in units.items():
        if not all((name, n) in got for n in layers[name]):
            continue
        if u.layout in FUSED:
            sums[name] = fused_sums({n: got[(name, n)] for n in layers[name]}, u)
        else:
            sums[name] = [got[(name, n)].view(u.num_heads, u.head_dim) for n in (u.q, u.k, u.v)]
    return sums


def out_norms(model: nn.Module, unit: AttentionUnit) -> torch.Tensor:
    """The output projection's column norms, ``(num_heads, head_dim)``."""
    return _linear(model, unit.o).weight.detach().norm(dim=0).view(unit.num_heads, unit.head_dim)


def _rows(layer: nn.Linear, idx: torch.Tensor) -> None:
    layer.weight = nn.Parameter(layer.weight.detach()[idx].clone(), requires_grad=layer.weight.requires_grad)
    if layer.bias is not None:
        layer.bias = nn.Parameter(layer.bias.detach()[idx].clone(), requires_grad=layer.bias.requires_grad)
    layer.out_features = len(idx)


def apply_hf_(model: nn.Module, unit: AttentionUnit, qk_idx: list[list[int]], v_idx: list[list[int]]) -> None:
    """Keep ``qk_idx[h]``/``v_idx[h]`` (indices inside head ``h``) of ``unit``'s q/k and v rows, in place."""
    if unit.layout in FUSED:
        apply_fused_(model, unit, qk_idx, v_idx)
        return
    module = model.get_submodule(unit.name)
    check_hf_unit(module, unit)
    if len(qk_idx[0]) != len(v_idx[0]):
        raise ConfigError(
            f"head-dim pruning {unit.name!r} ({type(module).__name__}) reshapes q, k and v with one "
            f"attention_head_size: head_dim_qk and head_dim_v must keep the same number of channels "
            f"({len(qk_idx[0])} vs {len(v_idx[0])})"
        )
    d = unit.head_dim
    qk = torch.tensor([h * d + i for h, kept in enumerate(qk_idx) for i in kept], dtype=torch.long)
    v = torch.tensor([h * d + i for h, kept in enumerate(v_idx) for i in kept], dtype=torch.long)
    for name, idx in ((unit.q, qk), (unit.k, qk), (unit.v, v)):
        _rows(_linear(model, name), idx)
    out = _linear(model, unit.o)
    out.weight = nn.Parameter(out.weight.detach()[:, v].clone(), requires_grad=out.weight.requires_grad)
    out.in_features = len(v)
    setattr(module, _size_attr(module), len(qk_idx[0]))  # scaling keeps the original head size
    if hasattr(module, "all_head_size"):
        module.all_head_size = unit.num_heads * len(qk_idx[0])


def mask_hf_(model: nn.Module, unit: AttentionUnit, qk_idx: list[list[int]], v_idx: list[list[int]]) -> None:
    """Zero the q/k/v rows (and biases) head-dim pruning removes, in place (the reference it must equal)."""
    if unit.layout in FUSED:
        masked_fused_(model, unit, qk_idx, v_idx)
        return
    d = unit.head_dim
    gone_qk = [h * d + i for h, kept in enumerate(qk_idx) for i in range(d) if i not in kept]
    gone_v = [h * d + i for h, kept in enumerate(v_idx) for i in range(d) if i not in kept]
    with torch.no_grad():
        for name, rows in ((unit.q, gone_qk), (unit.k, gone_qk), (unit.v, gone_v)):
            layer = _linear(model, name)
            layer.weight[rows] = 0
            if layer.bias is not None:
                layer.bias[rows] = 0
