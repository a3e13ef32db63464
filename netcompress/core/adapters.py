"""Adapter layers ``peft`` wraps around a model's Linears / convs (LoRA, IA3, LoHa, LoKr ...): what a refusal
says about them. A LoRA-wrapped query is a ``lora.Linear`` holding ``base_layer`` plus the low-rank ``lora_A`` /
``lora_B``, not an ``nn.Linear``, so structured pruning and distillation taps do not see the attention they
know; merging the adapters into the weights first gives the plain model back.

Example:
    >>> adapter_hint(peft_model)
    " ('bert.encoder.layer.0.attention.self.query' is a peft adapter layer (lora Linear, 4 such): merge ..."
"""

from __future__ import annotations

from torch import nn


def adapter_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every outermost peft adapter layer (a ``BaseTunerLayer``, found by class name so
    that peft need not be imported)."""
    found: list[tuple[str, nn.Module]] = []
    for name, m in model.named_modules():
        tuner = any(c.__name__ == "BaseTunerLayer" for c in type(m).__mro__)
        if tuner and not any(name.startswith(f"{n}.") for n, _ in found):
            found.append((name, m))
    return found


def adapter_hint(model: nn.Module) -> str:
    """A sentence naming the first adapter layer and how to merge, or "" when ``model`` has none."""
    found = adapter_layers(model)
    if not found:
        return ""
    name, m = found[0]
    kind = type(m).__module__.split(".")[2]  # peft.tuners.<lora>.layer
    return (
        f" ({name!r} is a peft adapter layer ({kind} {type(m).__name__}, {len(found)} such): merge the adapters "
        "into the weights first, model = model.merge_and_unload(), and compress the merged model)"
    )
