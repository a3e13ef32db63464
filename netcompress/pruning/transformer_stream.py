"""Where a transformer's residual stream is read and written, and how its channels are removed.

:func:`stream_layers` lists every place the stream (``width`` channels) is read or written, by qualified name;
:func:`prune_hidden_` keeps one channel set in all of them. Besides readers, writers, embeddings, norms, patch
convolutions and stream-shaped parameters, a *modulation* layer (adaLN: DiT, PixArt) is a dense layer whose
output is ``k`` chunks of ``width`` values, each applied channel by channel to the stream (shift, scale, gate:
``norm(x) * (1 + scale) + shift``); its rows ``j * width + c`` follow stream channel ``c`` in every chunk ``j``.
It is recognised by name (a layer inside a module whose class or name says adaLN / ``AdaLayerNorm``); in a
model that has one, every other dense layer outside the blocks writing a whole multiple (2 or more) of the
width and read by some module is taken as one too (diffusers' DiT reads its final shift and scale from
``proj_out_1``; PixArt's ``proj_out``, two widths of patch pixels that no module reads, is not). A wrong guess
cannot pass silently: ``transformer_verify`` compares the pruned model with the masked original built from the
same lists. The conditioning vector such a layer reads, when it is as wide as the stream, is pruned like the
stream (PixArt adds it to the stream's shift / scale table, so its channels must follow the stream's).

Example:
    >>> stream = stream_layers(dit, find_blocks(dit))
    >>> stream.modulations[0]
    ('transformer_blocks.0.norm1.linear', 6)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from netcompress.core.errors import UnsupportedModelError
from netcompress.core.inputs import call_model
from netcompress.pruning.transformer_blocks import Blocks, in_out, is_dense
from netcompress.pruning.transformer_head_state import all_heads_norms
from netcompress.pruning.transformer_mha import PrunedMultiheadAttention
from netcompress.pruning.transformer_slicing import _Slicer, get_module, set_module, slice_dense


def is_norm(module: nn.Module, width: int) -> bool:
    """A LayerNorm/RMSNorm over the last dimension of size ``width``."""
    if isinstance(module, nn.LayerNorm):
        return tuple(module.normalized_shape) == (width,)
    kind = type(module).__name__
    weight = getattr(module, "weight", None)
    if kind.endswith(("RMSNorm", "LayerNorm")) and next(module.parameters(recurse=False), None) is None:
        return tuple(getattr(module, "normalized_shape", ())) == (width,)  # OLMo's LayerNorm has no weight
    return (
        kind.endswith(("RMSNorm", "LayerNorm"))
        and isinstance(weight, torch.Tensor)
        and weight.shape == (width,)
    )


@dataclasses.dataclass
class StreamLayers:
    """Every place the residual stream (``width`` channels) is read or written, by qualified name."""

    width: int
    embeddings: list[str]
    norms: list[str]
    readers: list[str]
    writers: list[str]
    convs: list[str]
    params: list[tuple[str, str]]
    attention: list[str]
    modulations: list[tuple[str, int]] = dataclasses.field(default_factory=list)  # (layer, chunks)
    buffers: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # DiT's sin-cos position table

    def modulation_rows(self, chunks: int, channels: torch.Tensor) -> torch.Tensor:
        """Rows of a modulation layer of ``chunks`` chunks that carry stream ``channels``."""
        return torch.cat([j * self.width + channels for j in range(chunks)])


def stream_layers(model: nn.Module, blocks: Blocks, *, require_source: bool = True) -> StreamLayers:
    """Where the residual stream is read and written: the units' input/output layers, every other Linear
    with ``width`` inputs (reader) or outputs (writer), embeddings, LayerNorm/RMSNorm, convolutions producing
    ``width`` channels (ViT's patch embedding) and other parameters whose last dimension is ``width``."""
    widths = {
        get_module(model, u.name).embed_dim if u.layout == "mha" else in_out(get_module(model, u.q))[0]
        for u in blocks.attention
    }
    widths |= {in_out(get_module(model, u.up[0]))[0] for u in blocks.ffn}
    if len(widths) != 1:
        raise UnsupportedModelError(
            f"hidden-width pruning needs one residual width; the blocks read widths {sorted(widths)}"
        )
    width = widths.pop()
    inside = {n for u in blocks.attention for n in (u.q, u.k, u.v, u.o)} | {
        n for u in blocks.ffn for n in u.layers()
    }
    mha = [u.name for u in blocks.attention if u.layout == "mha"]
    inside |= {  # a q/k norm over all heads (OLMo-2) may be as wide as the stream: it is not on it
        f"{u.name}.{c}{inner}"
        for u in blocks.attention
        for c in all_heads_norms(get_module(model, u.name), u).values()
        for inner in ("", ".norm")  # KeptHeadsNorm's own norm
    }
    layers = StreamLayers(width, [], [], [], [], [], [], mha)
    for u in blocks.attention:
        if u.layout != "mha":
            layers.readers += sorted({u.q, u.k, u.v})
            layers.writers.append(u.o)
    for u in blocks.ffn:
        layers.readers += u.up
        layers.writers.append(u.down)
    for name, side in [*((n, 0) for n in layers.readers), *((n, 1) for n in layers.writers)]:
        found = in_out(get_module(model, name))[side]
        if (
            found != width
        ):  # e.g. MobileBERT: value reads the 32-wide stream, query/key/FFN a 16-wide bottleneck
            raise UnsupportedModelError(
                f"hidden-width pruning: {name!r} {('reads', 'writes')[side]} {found} channels, not the {width}-wide "
                "stream its block's other layers use (a bottleneck block): prune heads and FFN neurons only"
            )
    for name, module in model.named_modules():
        if name in inside or name in mha or any(name.startswith(m + ".") for m in mha):
            continue
        if is_dense(module):
            n_in, n_out = in_out(module)
            if n_in == width:
                layers.readers.append(name)
            if n_out == width and name not in blocks.outputs_only:
                layers.writers.append(name)
            elif n_out % width == 0 and n_out > width and _says_adaln(model, name):
                layers.modulations.append((name, n_out // width))
        elif isinstance(module, nn.Embedding):
            if module.embedding_dim == width:
                layers.embeddings.append(name)
        elif is_norm(module, width):
            layers.norms.append(name)
        elif isinstance(module, nn.modules.conv._ConvNd):
            if module.in_channels == width != module.out_channels and module.groups == 1:
                raise UnsupportedModelError(  # Conformer's conv module: a pointwise conv on the stream
                    f"hidden-width pruning: convolution {name!r} reads the {width}-wide residual stream into "
                    f"{module.out_channels} channels; convolutions reading the stream are not followed: prune "
                    "heads and FFN neurons only"
                )
            if module.out_channels == width and module.groups == 1:
                layers.convs.append(name)
        else:
            for pname, param in module.named_parameters(recurse=False):
                if param.dim() >= 1 and param.shape[-1] == width:
                    layers.params.append((name, pname))
            for bname, buf in module.named_buffers(recurse=False):
                if _stream_buffer(buf, width):
                    layers.buffers.append((name, bname))
    if layers.modulations:
        known = {n for n, _ in layers.modulations} | blocks.outputs_only  # PixArt's proj_out: 2 widths, an output
        layers.modulations += _other_modulations(model, width, inside, known)
    inside_writers = {u.o for u in blocks.attention} | {u.down for u in blocks.ffn}
    if require_source and not (
        layers.embeddings or layers.convs or layers.params or layers.buffers or set(layers.writers) - inside_writers
    ):
        raise UnsupportedModelError(
            f"hidden-width pruning: nothing inside the model writes the {width}-wide residual stream (no embedding, "
            "input projection or patch convolution), so it is the model's input and cannot be narrowed"
        )
    return layers


def prune_hidden_(model: nn.Module, layers: StreamLayers, keep: list[int], slicer: _Slicer) -> None:
    """Keep residual-stream channels ``keep`` everywhere in ``layers``."""
    idx = torch.tensor(keep, dtype=torch.long)
    for name in layers.readers:
        slice_dense(get_module(model, name), slicer, inp=idx)
    for name in layers.writers:
        slice_dense(get_module(model, name), slicer, out=idx)
    for name, chunks in layers.modulations:
        slice_dense(get_module(model, name), slicer, out=layers.modulation_rows(chunks, idx))
    for name in layers.embeddings:
        emb = get_module(model, name)
        slicer(emb, "weight", {1: idx})
        emb.embedding_dim = len(keep)
    for name in layers.norms:
        norm = get_module(model, name)
        slicer(norm, "weight", {0: idx})
        if isinstance(getattr(norm, "bias", None), torch.Tensor):
            slicer(norm, "bias", {0: idx})
        if isinstance(getattr(norm, "normalized_shape", None), tuple):
            norm.normalized_shape = (len(keep),)
    for name in layers.convs:
        conv = get_module(model, name)
        slicer(conv, "weight", {0: idx})
        slicer(conv, "bias", {0: idx})
        conv.out_channels = len(keep)
    for name, bname in layers.buffers:
        module = get_module(model, name)
        module._buffers[bname] = getattr(module, bname).index_select(-1, idx).clone()
    for name, pname in layers.params:
        module = get_module(model, name)
        slicer(module, pname, {getattr(module, pname).dim() - 1: idx})
    for name in layers.attention:
        attn = get_module(model, name)
        if isinstance(attn, nn.MultiheadAttention):
            attn = PrunedMultiheadAttention.from_attention(attn, list(range(attn.num_heads)))
            set_module(model, name, attn)
        slicer(attn, "in_proj_weight", {1: idx})
        slice_dense(attn.out_proj, slicer, out=idx)
        attn.embed_dim = len(keep)




def _stream_buffer(buf: torch.Tensor | None, width: int) -> bool:
    """A floating buffer of stream vectors, ``(..., positions, width)`` (DiT's sin-cos table); not an additive
    mask (one holding -inf or a large negative fill)."""
    if buf is None or not buf.is_floating_point() or buf.dim() < 2 or buf.shape[-1] != width:
        return False
    return bool(torch.isfinite(buf).all()) and float(buf.min()) > -1e3


def _says_adaln(model: nn.Module, name: str) -> bool:
    """``name`` or a module holding it is an adaLN by name (``adaLN_modulation``, diffusers' ``AdaLayerNorm*``)."""
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        own = parts[i - 1].lower().replace("_", "")
        kind = type(get_module(model, ".".join(parts[:i]))).__name__.lower()
        if "adaln" in own or "adaln" in kind or "adalayernorm" in kind:
            return True
    return False


def _other_modulations(
    model: nn.Module, width: int, inside: set[str], known: set[str]
) -> list[tuple[str, int]]:
    """Dense layers outside the blocks writing 2 or more whole widths, in a model with an adaLN."""
    found = []
    for name, module in model.named_modules():
        if name in known or name in inside or not is_dense(module):
            continue
        n_out = in_out(module)[1]
        if n_out % width == 0 and n_out > width:
            found.append((name, n_out // width))
    return found


def find_outputs_only(model: nn.Module, example_inputs: Any) -> set[str]:
    """Dense layers whose output no module of ``model`` reads on ``example_inputs`` (a final projection such as
    DiT's ``proj_out_2``, whose output is reshaped into the image): as wide as the stream by chance, they do not
    write it. Found on the autograd graph of one forward: from every leaf module's inputs back to the nearest
    module outputs. A layer whose output carries no graph (a forward under ``no_grad``) is not listed."""
    produced: dict[Any, str] = {}  # grad_fn of a leaf module's output -> its name
    dense: dict[str, Any] = {}
    inputs: list[Any] = []
    handles = []

    def hook(name: str, module: nn.Module, args: tuple, out: Any) -> None:
        fns = [a.grad_fn for a in args if isinstance(a, torch.Tensor) and a.grad_fn is not None]
        if isinstance(out, torch.Tensor) and out.grad_fn in fns:
            return  # hands its input on (Dropout, Identity in eval): reads nothing itself
        inputs.extend(fns)
        if isinstance(out, torch.Tensor) and out.grad_fn is not None:
            produced.setdefault(out.grad_fn, name)
            if is_dense(module):
                dense[name] = out.grad_fn

    for name, module in model.named_modules():
        if name and next(module.children(), None) is None:
            handles.append(module.register_forward_hook(lambda m, a, o, n=name: hook(n, m, a, o)))
    try:
        with torch.enable_grad(), torch.random.fork_rng(devices=[]):
            call_model(model, example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    read: set[str] = set()
    seen: set[Any] = set()
    todo = list(inputs)
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if node in produced:
            read.add(produced[node])
            continue
        todo.extend(nxt for nxt, _ in node.next_functions)
    return {name for name in dense if name not in read}
