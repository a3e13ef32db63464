"""Check a pruned transformer against the masked original; name the block that was not followed.

The reference (:func:`masked_reference`) is a copy of the ORIGINAL model in which

- each removed head's output-projection columns are zero (so the head contributes nothing),
- each removed FFN neuron's down-projection column is zero,
- each removed residual-stream channel is zero everywhere it is written (embeddings, extra parameters such
  as ViT's ``cls_token`` and buffers such as DiT's position table, the rows and biases of every layer writing the stream, the channel's row in every
  chunk of an adaLN modulation layer) and every
  LayerNorm/RMSNorm computes its statistics over the kept channels only (and outputs zero on the others).

Heads and neurons: the reference computes exactly the original model with those units masked, and the
pruned model must equal it. Hidden width: pruning the stream changes LayerNorm statistics, so the pruned
model is NOT the original with channels masked; what is guaranteed is equality with this reference (the
masked stream with kept-channel norm statistics), on the kept channels of every output.

:func:`verify_pruned` runs both models on the example inputs with hooks on every unit's output layer and
module, compares them in call order, and raises :class:`UnsupportedModelError` naming the first module whose
output differs by more than ``rtol`` (relative to the largest reference value), or the module that failed
to run.

Example:
    >>> verify_pruned(original, pruned, blocks, plan, example_inputs)  # raises on a mismatch
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from netcompress.core.errors import UnsupportedModelError
from netcompress.core.inputs import call_model
from netcompress.evaluation.harness import eval_mode
from netcompress.pruning.transformer_blocks import Blocks, is_conv1d
from netcompress.pruning.transformer_stream import StreamLayers
from netcompress.pruning.transformer_surgery import (
    TransformerPlan,
    get_module,
    head_rows,
    set_module,
)
from netcompress.quantization.value_tracing import module_state_kept

RTOL = 1e-5


class KeptChannelNorm(nn.Module):
    """A LayerNorm/RMSNorm whose statistics cover only the ``keep`` channels; zero on the others.

    The norm's own forward runs on the kept channels with its per-channel parameters sliced, so whatever
    it computes (LayerNorm, RMSNorm, T5's RMS-style ``T5LayerNorm``, Gemma's ``1 + weight``) is followed.
    """

    def __init__(self, norm: nn.Module, keep: list[int]) -> None:
        super().__init__()
        self.norm = norm
        self.register_buffer("keep", torch.tensor(keep, dtype=torch.long))
        self.kept = _sliced_norm(norm, self.keep)

    @property
    def weight(self) -> torch.Tensor | None:
        return self.norm.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.norm, "bias", None)

    @property
    def eps(self) -> float | None:  # nn.TransformerEncoderLayer reads its norms' eps
        return getattr(self.norm, "eps", None) or getattr(self.norm, "variance_epsilon", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        out[..., self.keep] = self.kept(x[..., self.keep]).to(x.dtype)
        return out


def _sliced_norm(norm: nn.Module, keep: torch.Tensor) -> nn.Module:
    """A copy of ``norm`` over the ``keep`` channels: every per-channel parameter and buffer sliced."""
    weight = getattr(norm, "weight", None)  # OLMo's LayerNorm / LayerNorm(elementwise_affine=False): none
    width = weight.shape[-1] if isinstance(weight, torch.Tensor) else norm.normalized_shape[-1]
    kept = copy.deepcopy(norm)
    for module in kept.modules():
        for name, value in list(module.named_parameters(recurse=False)) + list(
            module.named_buffers(recurse=False)
        ):
            if value is not None and value.shape == (width,):
                sliced = value.detach()[keep].clone()
                setattr(module, name, nn.Parameter(sliced) if isinstance(value, nn.Parameter) else sliced)
        if isinstance(module, nn.LayerNorm) or isinstance(getattr(module, "normalized_shape", None), tuple):
            module.normalized_shape = (len(keep),)
    return kept


def _zero_in(layer: nn.Module, cols: torch.Tensor) -> None:
    if is_conv1d(layer):
        layer.weight[cols] = 0
    else:
        layer.weight[:, cols] = 0


def _zero_out(layer: nn.Module, rows: torch.Tensor) -> None:
    if is_conv1d(layer):
        layer.weight[:, rows] = 0
    else:
        layer.weight[rows] = 0
    if getattr(layer, "bias", None) is not None:
        layer.bias[rows] = 0


@torch.no_grad()
def masked_reference(
    model: nn.Module, blocks: Blocks, plan: TransformerPlan, stream: StreamLayers | None
) -> nn.Module:
    """A copy of ``model`` with the removed units zeroed (see the module docstring)."""
    ref = copy.deepcopy(model)
    for unit in blocks.attention:
        kept = set(plan.heads.get(unit.name, range(unit.num_heads)))
        dropped = [h for h in range(unit.num_heads) if h not in kept]
        if dropped:
            module = get_module(ref, unit.name)
            _zero_in(
                module.out_proj if unit.layout == "mha" else get_module(ref, unit.o),
                head_rows(dropped, unit.head_dim),
            )
    for unit in blocks.ffn:
        kept = set(plan.neurons.get(unit.name, range(unit.width)))
        dropped = [n for n in range(unit.width) if n not in kept]
        if dropped:
            _zero_in(get_module(ref, unit.down), torch.tensor(dropped, dtype=torch.long))
    if plan.hidden is None or stream is None:
        return ref
    gone = torch.tensor([c for c in range(stream.width) if c not in set(plan.hidden)], dtype=torch.long)
    for name in stream.writers:
        _zero_out(get_module(ref, name), gone)
    for name, chunks in stream.modulations:  # adaLN shift / scale / gate of a removed channel: zero
        _zero_out(get_module(ref, name), stream.modulation_rows(chunks, gone))
    for name in stream.attention:
        _zero_out(get_module(ref, name).out_proj, gone)
    for name in stream.convs:
        _zero_out(get_module(ref, name), gone)
    for name in stream.embeddings:
        get_module(ref, name).weight[:, gone] = 0
    for name, pname in stream.params:
        getattr(get_module(ref, name), pname)[..., gone] = 0
    for name, bname in stream.buffers:
        getattr(get_module(ref, name), bname)[..., gone] = 0
    for name in stream.norms:
        set_module(ref, name, KeptChannelNorm(get_module(ref, name), plan.hidden))
    return ref


def _tensor(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return None


class _Recorder:
    """Forward hooks recording the outputs of named modules in call order, and which were running."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        self.outputs: list[tuple[str, torch.Tensor]] = []
        self.running: list[str] = []
        self.handles = []
        for name in names:
            module = get_module(model, name)
            self.handles.append(module.register_forward_pre_hook(lambda m, a, n=name: self.running.append(n)))
            self.handles.append(module.register_forward_hook(lambda m, a, o, n=name: self._post(n, o)))

    def _post(self, name: str, out: Any) -> None:
        self.running.pop()
        tensor = _tensor(out)
        if tensor is not None:
            self.outputs.append((name, tensor.detach()))

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def _flat(out: Any) -> list[torch.Tensor]:
    flat: list[torch.Tensor] = []
    torch.utils._pytree.tree_map(lambda t: flat.append(t) if isinstance(t, torch.Tensor) else None, out)
    if not flat and hasattr(out, "to_tuple"):
        return _flat(out.to_tuple())
    return flat


def _mismatch(ref: torch.Tensor, got: torch.Tensor, plan: TransformerPlan, width: int) -> float | None:
    """Relative max difference, or None when they agree (ref cut to the kept stream channels if needed)."""
    ref, got = ref.detach(), got.detach()
    if ref.shape != got.shape and plan.hidden is not None and ref.shape[-1] == width:
        ref = ref[..., torch.tensor(plan.hidden, dtype=torch.long)]
    if ref.shape != got.shape:
        return float("inf")
    if not ref.is_floating_point():
        return None if torch.equal(ref, got) else float("inf")
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    diff = float((ref - got).abs().max()) if ref.numel() else 0.0
    if diff != diff or diff > RTOL * max(scale, 1e-6):
        return diff / max(scale, 1e-12)
    return None


def verify_pruned(
    original: nn.Module, pruned: nn.Module, blocks: Blocks, plan: TransformerPlan, example_inputs: Any,
    stream: StreamLayers | None = None,
) -> None:  # fmt: skip
    """Raise :class:`UnsupportedModelError` unless ``pruned`` equals the masked ``original`` on ``example_inputs``."""
    ref_model = masked_reference(original, blocks, plan, stream)
    owner: dict[str, str] = {}  # checkpoint -> the unit it belongs to
    for unit in blocks.attention:  # the unit's own output only where the output projection is inside it
        owner[unit.o] = unit.name
        if unit.o.startswith(unit.name + "."):
            owner[unit.name] = unit.name
    for unit in blocks.ffn:
        owner[unit.down] = owner[unit.name] = unit.name
    names = list(owner)
    width = stream.width if stream is not None else -1
    kinds = {u.name: "attention" for u in blocks.attention} | {u.name: "FFN" for u in blocks.ffn}
    ref_rec, got_rec = _Recorder(ref_model, names), _Recorder(pruned, names)
    try:
        # grad mode keeps nn.TransformerEncoderLayer off its fused fast path (which FLOP counters and
        # forward hooks on the attention cannot see)
        # both under one seed: a forward that samples (ViLT's image patches) draws the same for both
        with eval_mode(ref_model), eval_mode(pruned), module_state_kept(pruned), torch.enable_grad(), \
                torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            ref_out = call_model(ref_model, example_inputs)
            torch.manual_seed(0)
            try:
                got_out = call_model(pruned, example_inputs)
            except Exception as exc:
                where = owner[got_rec.running[-1]] if got_rec.running else ""
                what = (
                    f"module {where!r} ({type(get_module(original, where)).__name__})"
                    if where
                    else "a layer outside the attention/FFN blocks"
                )
                raise UnsupportedModelError(
                    f"{what} was not followed by the transformer pruner: the pruned "
                    f"{type(original).__name__} fails there with {type(exc).__name__}: {exc}"
                ) from exc
    finally:
        ref_rec.close()
        got_rec.close()
    got_by_call = {}
    for name, tensor in got_rec.outputs:
        got_by_call.setdefault(name, []).append(tensor)
    for name, ref in ref_rec.outputs:
        got = got_by_call.get(name, [])
        rel = _mismatch(ref, got.pop(0), plan, width) if got else float("inf")
        if rel is not None:
            unit = owner[name]
            where = "" if unit == name else f" at its layer {name!r}"
            raise UnsupportedModelError(
                f"{kinds[unit]} module {unit!r} ({type(get_module(original, unit)).__name__}) was not followed by the "
                f"transformer pruner: the pruned model differs from the masked original{where} by {rel:.2e} (relative)"
            )
    for i, (ref, got) in enumerate(zip(_flat(ref_out), _flat(got_out), strict=False)):
        rel = _mismatch(ref, got, plan, width)
        if rel is not None:
            raise UnsupportedModelError(
                f"output {i} of {type(original).__name__} differs from the masked original by {rel:.2e} "
                "(relative) although every attention/FFN block matched: a layer outside them was not followed"
            )
