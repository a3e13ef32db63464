"""Mixture-of-experts FFNs the transformer pruner does not prune: experts fused into 3-D weights.

Mixtral / OLMoE / Qwen2-MoE (transformers 5) hold all experts of a layer in one module with parameters
``gate_up_proj (experts, 2 * width, hidden)`` and ``down_proj (experts, hidden, width)``; the forward
slices expert ``e`` and chunks gate | up. Neuron pruning would have to keep the SAME count in every expert
(one 3-D tensor) with per-expert choices, scores and a per-expert masked check; that is not built. So
``ffn > 0`` on a model whose only FFNs are fused experts is a refusal naming them, and where ordinary FFN
blocks exist too (Qwen2-MoE's shared expert) the summary names the fused experts left dense
(``ffn_not_pruned``) instead of letting ``ffn=0.5`` read as if every FFN was halved.

Example:
    >>> fused_experts(mixtral)
    {'model.layers.0.mlp.experts': 'MixtralExperts: 4 experts fused in 3-D weights gate_up_proj, down_proj'}
"""

from __future__ import annotations

from torch import nn

from netcompress.core.errors import UnsupportedModelError


def is_expert_module(module: nn.Module) -> bool:
    """An expert collection or a router (class name holding "expert"/"router", or ``num_experts``): its
    parameters index experts, never heads, even where there are as many experts as heads."""
    kind = type(module).__name__.lower()
    return "expert" in kind or "router" in kind or hasattr(module, "num_experts")


def fused_experts(model: nn.Module) -> dict[str, str]:
    """``{name: what}`` of expert modules (class name holding "expert" or a ``num_experts`` attribute; ViT's
    3-D position embeddings are none) with 3-D+ weights: fused expert FFNs."""
    found: dict[str, str] = {}
    for name, module in model.named_modules():
        if "router" in type(module).__name__.lower() or not is_expert_module(module):
            continue
        stacked = [p for p, w in module.named_parameters(recurse=False) if w.dim() >= 3]
        if stacked:
            count = getattr(module, "num_experts", None) or module.get_parameter(stacked[0]).shape[0]
            found[name] = (
                f"{type(module).__name__}: {count} experts fused in 3-D weights {', '.join(stacked)}"
            )
    return found


def check_fused_experts(model: nn.Module, has_ffn_blocks: bool, ffn: float) -> dict[str, str]:
    """Raise when ``ffn > 0`` finds only fused experts; else the fused experts ``ffn > 0`` leaves dense."""
    if ffn <= 0:
        return {}
    fused = fused_experts(model)
    if fused and not has_ffn_blocks:
        listed = "; ".join(f"{n!r} ({w})" for n, w in fused.items())
        raise UnsupportedModelError(
            f"ffn > 0: the model's FFNs are fused mixture-of-experts weights, which the transformer pruner does "
            f"not prune per expert: {listed}; prune heads / hidden width with ffn=0"
        )
    return fused
