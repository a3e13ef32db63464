"""Find the attention and FFN blocks of a transformer by their structure (fused q|k|v: and its traced forward).

Three attention layouts are recognised:

- ``"mha"``: ``nn.MultiheadAttention`` (packed ``in_proj_weight``, ``out_proj``; self-attention widths only,
  no ``bias_k``/``add_zero_attn``) and :class:`~netcompress.pruning.transformer_mha.PrunedMultiheadAttention`;
- ``"linear"``: separate query/key/value ``nn.Linear`` children (``q_proj``/``query``/``q``/``wq``/...) and
  an output ``nn.Linear`` (a child ``o_proj``/``out_proj``/``out``/``proj``/..., the first item of such a
  ModuleList (diffusers' ``to_out[0]``) or, BERT-style, the parent's ``output.dense``), with a head count
  attribute (``num_heads``/``num_attention_heads``/``n_heads``/``heads``/...) and optionally
  ``head_dim``/``attention_head_size`` and a key/value head count (grouped-query attention, Llama). This covers
  Hugging Face BERT, ViT, Llama, diffusers' ``Attention`` and hand-written blocks;
- ``"packed"``: one layer holding q|k|v one after the other (key/value heads may be fewer) and an output
  layer: GPT-2's ``c_attn``/``c_proj`` (transformers ``Conv1D``), ``qkv_proj``/``o_proj`` or ``out_proj``,
  ``Wqkv``/``Wo`` (ModernBERT) or ``out_proj`` (MPT), ``qkv``/``proj`` (Hiera);
- ``"packed_heads"``: ``query_key_value``/``dense`` holding q_h|k_h|v_h head after head (GPT-NeoX, BLOOM);
- a fused q|k|v Linear under any name (vit-pytorch's ``to_qkv``, timm's ``qkv``, MONAI's ``SABlock``) whose split
  ``"packed"`` or ``"packed_heads"`` and head count are read from the traced forward
  (:mod:`~netcompress.pruning.transformer_qkv_graph`);
- ``"q_kv"``: a query Linear and one k|v Linear split in forward (vit-pytorch's ``to_q`` + ``to_kv(...).chunk(2)``);
- ``"packed_mp"``: CodeGen's ``qkv_proj`` with ``mp_num`` shards, each q|v|k of ``inner / mp_num`` channels;
- ``"packed_groups"``: Falcon's ``query_key_value`` (new decoder architecture or multi-query): per key/value head g,
  its query heads then k_g then v_g.

FFN blocks are a module's children ``(gate_proj, up_proj) -> down_proj``, ``up_proj -> down_proj`` (MPT), ``(w1, w3) -> w2``,
an ``nn.Sequential(Linear, activation, Linear)`` beside an attention block (PatchTST's ``ff``),
``fc1 -> fc2``, ``c_fc -> c_proj``, ``linear1 -> linear2``, ``lin1 -> lin2``, ``wi -> wo``,
``dense_h_to_4h -> dense_4h_to_h``, ``ffn -> ffn_output`` (ALBERT), ``dense1 -> dense2`` (PVT), ``fc_in -> fc_out``
(GPT-J), ``intermediate_dense -> output_dense`` (wav2vec 2.0), BERT's ``intermediate.dense -> output.dense``, or a
packed gated FFN ``gate_up_proj -> down_proj`` (Phi-3), ``Wi -> Wo`` (ModernBERT) whose up layer is twice as wide.

Recognising a block is a claim about how its forward uses the weights; every prune checks that claim
numerically (pruned model == masked original, ``transformer_verify``), so a block whose forward does
something else is reported by name instead of being pruned wrongly. Attention-like modules (class name
holding "attention"/"attn") that match no layout are listed in ``Blocks.unknown`` with the reason.

Example:
    >>> blocks = find_blocks(nn.TransformerEncoderLayer(32, 4, 64))
    >>> [(u.name, u.layout, u.num_heads) for u in blocks.attention], [u.down for u in blocks.ffn]
    ([('self_attn', 'mha', 4)], ['linear2'])
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from netcompress.pruning.transformer_ffn_forms import beside_attention, depthwise_between, sequential_ffn
from netcompress.pruning.transformer_mha import PrunedMultiheadAttention
from netcompress.pruning.transformer_qkv_graph import checked_by_graph, fused_qkv_layout

Q_NAMES = ("q_proj", "query", "q", "wq", "to_q", "q_lin", "query_proj", "W_q")
K_NAMES = ("k_proj", "key", "k", "wk", "to_k", "k_lin", "key_proj", "W_k")
V_NAMES = ("v_proj", "value", "v", "wv", "to_v", "v_lin", "value_proj", "W_v")
O_NAMES = ("o_proj", "out_proj", "out", "o", "proj", "wo", "to_out", "out_lin", "dense", "W_out")
HEAD_ATTRS = ("num_heads", "num_attention_heads", "n_heads", "n_head", "heads", "_n_heads")
HEAD_DIM_ATTRS = ("head_dim", "attention_head_size", "head_size", "d_head")
KV_ATTRS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "kv_heads")
FFN_PATTERNS = (
    (("gate_proj", "up_proj"), "down_proj"),
    (("w1", "w3"), "w2"),
    (("up_proj",), "down_proj"),  # MPT (ungated; after the gated form above)
    (("fc1",), "fc2"),
    (("c_fc",), "c_proj"),
    (("linear1",), "linear2"),
    (("lin1",), "lin2"),
    (("wi",), "wo"),
    (("dense_h_to_4h",), "dense_4h_to_h"),
    (("ffn",), "ffn_output"),  # ALBERT
    (("dense1",), "dense2"),  # PVT
    (("fc_in",), "fc_out"),  # GPT-J, CodeGen
    (("intermediate_dense",), "output_dense"),  # wav2vec 2.0, HuBERT, WavLM
)
# Phi-3, ModernBERT, rtdl's ReGLU: up = gate | up, chunked
PACKED_GLU = (("gate_up_proj", "down_proj"), ("Wi", "Wo"), ("linear1", "linear2"))


def is_conv1d(module: nn.Module) -> bool:
    """transformers' ``Conv1D`` (GPT-2): a linear layer whose weight is stored ``(in, out)``."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "weight")


def is_dense(module: nn.Module) -> bool:
    """An ``nn.Linear`` or a transformers ``Conv1D``."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def in_out(module: nn.Module) -> tuple[int, int]:
    """(input features, output features) of a Linear or Conv1D, read from its weight."""
    rows, cols = module.weight.shape
    return (int(rows), int(cols)) if is_conv1d(module) else (int(cols), int(rows))


@dataclasses.dataclass
class AttentionUnit:
    """One attention block: where its projections are and how its heads are laid out.

    ``q``, ``k``, ``v``, ``o`` are qualified layer names (for ``"mha"`` all are the module itself; for
    ``"packed"`` q, k and v are the one ``c_attn``). Query head ``h`` uses key/value head ``h // groups``.
    """

    name: str
    layout: str
    num_heads: int
    head_dim: int
    num_kv_heads: int
    q: str
    k: str
    v: str
    o: str
    shards: int = 1  # "packed_mp" (CodeGen): q|v|k interleaved over this many shards (``mp_num``)

    @property
    def groups(self) -> int:
        """Query heads per key/value head (1 without grouped-query attention)."""
        return self.num_heads // self.num_kv_heads

    def layers(self) -> set[str]:
        return {self.q, self.k, self.v, self.o}


@dataclasses.dataclass
class FFNUnit:
    """One feed-forward block: ``up`` layers (all produce the ``width`` neurons) and the ``down`` layer."""

    name: str
    up: list[str]
    down: str
    width: int
    # depthwise convs between up and down, one channel per neuron (SegFormer's / PVTv2's Mix-FFN)
    mid: list[str] = dataclasses.field(default_factory=list)
    # 2: one up layer holds gate | up (a packed GLU, chunked in forward): neuron i is its rows i and width + i
    halves: int = 1

    def up_rows(self, keep: torch.Tensor) -> torch.Tensor:
        """The up layers' output rows of the kept neurons ``keep``."""
        return torch.cat([keep + j * self.width for j in range(self.halves)])

    def layers(self) -> set[str]:
        return {*self.up, self.down}


@dataclasses.dataclass
class Blocks:
    """What :func:`find_blocks` found: attention units, FFN units, and unrecognised attention modules."""

    attention: list[AttentionUnit]
    ffn: list[FFNUnit]
    unknown: dict[str, str]
    outputs_only: set[str] = dataclasses.field(default_factory=set)  # layers no module reads (model outputs)

    def layer_names(self) -> set[str]:
        names: set[str] = set()
        for unit in [*self.attention, *self.ffn]:
            names |= unit.layers()
        return names


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _attr(module: nn.Module, names: tuple[str, ...]) -> int | None:
    for name in names:
        value = getattr(module, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _child(module: nn.Module, names: tuple[str, ...]) -> tuple[str, nn.Module] | None:
    children = dict(module.named_children())
    for name in names:
        if name in children and is_dense(children[name]):
            return name, children[name]
    return None


def _listed_child(module: nn.Module, names: tuple[str, ...]) -> tuple[str, nn.Module] | None:
    """A child ModuleList/Sequential whose first item is the layer (diffusers' ``to_out = [Linear, Dropout]``)."""
    children = dict(module.named_children())
    for name in names:
        seq = children.get(name)
        if isinstance(seq, (nn.ModuleList, nn.Sequential)) and len(seq) and is_dense(seq[0]):
            return f"{name}.0", seq[0]
    return None


def _mha_unit(name: str, module: nn.Module) -> AttentionUnit | str:
    if isinstance(module, nn.MultiheadAttention):
        if not module._qkv_same_embed_dim:
            return "nn.MultiheadAttention with kdim/vdim != embed_dim (separate q/k/v weights)"
        if module.bias_k is not None or module.add_zero_attn:
            return "nn.MultiheadAttention with add_bias_kv or add_zero_attn"
    return AttentionUnit(
        name, "mha", module.num_heads, module.head_dim, module.num_heads, name, name, name, name
    )


# (packed q|k|v layer, output layer, layout)
PACKED = (
    ("c_attn", "c_proj", "packed"),
    ("qkv_proj", "o_proj", "packed"),
    ("qkv_proj", "out_proj", "packed"),
    ("Wqkv", "Wo", "packed"),
    ("Wqkv", "out_proj", "packed"),  # MPT
    ("qkv", "proj", "packed"),
    ("query_key_value", "dense", "packed_heads"),
)


def _packed_pair(module: nn.Module) -> tuple[str, str, str] | None:
    return next((p for p in PACKED if hasattr(module, p[0]) and hasattr(module, p[1])), None)


def _packed_unit(name: str, module: nn.Module, pair: tuple[str, str, str]) -> AttentionUnit | str:
    qkv_name, o_name, layout = pair
    qkv, out = getattr(module, qkv_name), getattr(module, o_name)
    heads, head_dim = _attr(module, HEAD_ATTRS), _attr(module, HEAD_DIM_ATTRS)
    if getattr(module, "is_cross_attention", False) or hasattr(module, "q_attn"):
        return "packed cross-attention (q_attn + c_attn holding k|v) is not supported"
    if not (isinstance(qkv, nn.Module) and is_dense(qkv) and isinstance(out, nn.Module) and is_dense(out)):
        return f"packed {qkv_name}/{o_name} are not Linear/Conv1D layers"
    if head_dim is None and heads is None:
        return f"packed {qkv_name}/{o_name} without a head-count or head-size attribute"
    inner = in_out(out)[0]
    heads, head_dim = heads or inner // head_dim, head_dim or inner // heads
    if layout == "packed_heads" and (
        getattr(module, "new_decoder_architecture", False) or getattr(module, "multi_query", False)
    ):
        layout = "packed_groups"  # Falcon
    shards = _attr(module, ("mp_num",)) or 1
    if layout == "packed" and hasattr(module, "mp_num"):
        layout = "packed_mp"  # CodeGen
        if (heads * head_dim) % shards:
            return f"{qkv_name} width {heads * head_dim} is not split evenly over mp_num={shards} shards"
    kv = (_attr(module, KV_ATTRS) if layout != "packed_heads" else None) or (
        1 if layout == "packed_groups" else heads
    )
    if (
        in_out(qkv)[1] != (heads + 2 * kv) * head_dim
        or inner != heads * head_dim
        or getattr(module, "split_size", inner) != inner
        or heads % kv
    ):
        return f"{qkv_name}/{o_name} widths do not match {heads} heads x {head_dim} ({kv} key/value heads)"
    c, p = _join(name, qkv_name), _join(name, o_name)
    return AttentionUnit(name, layout, heads, head_dim, kv, c, c, c, p, shards)


def _fused_unit(name: str, q: str, kv: str, out: str, layout: str, heads: int, head_dim: int) -> AttentionUnit:
    q, kv = _join(name, q), _join(name, kv)
    return AttentionUnit(name, layout, heads, head_dim, heads, q, kv, kv, _join(name, out))


NORM_PAIRS = (("q_norm", "q_layernorm"), ("k_norm", "k_layernorm"))


def kept_heads_norm(module: nn.Module, names: tuple[str, ...]) -> nn.Module | None:
    """A child norm over all heads that hands on only the kept heads' channels (``KeptHeadsNorm``, after
    OLMo-2 head pruning: its projection still computes every head for the norm's statistic)."""
    found = (getattr(module, n, None) for n in names)
    return next(
        (m for m in found if isinstance(m, nn.Module) and isinstance(getattr(m, "keep", None), torch.Tensor)),
        None,
    )


def _handed_on(module: nn.Module, names: tuple[str, ...], layer: nn.Linear) -> int:
    norm = kept_heads_norm(module, names)
    return len(norm.keep) if norm is not None else layer.out_features


LONGFORMER = (
    "Longformer-style sliding-window attention (query/key/value and query_global/key_global/value_global): its "
    "forward reshapes the heads' output to its input's width, so heads and stream channels cannot be removed; "
    "prune its FFNs only (heads=0, hidden=0) or leave it whole (ignore=[its name])"
)


def _linear_unit(
    name: str, module: nn.Module, parent: nn.Module | None, parent_name: str
) -> AttentionUnit | str:
    found = [_child(module, names) for names in (Q_NAMES, K_NAMES, V_NAMES)]
    if found[0] is None and _child(module, ("query_key",)) is not None:
        return "LSH attention (Reformer): one shared query_key projection whose heads are hashed into buckets"
    if any(f is None for f in found):
        return "no separate query/key/value Linear children, nor one fused q|k|v Linear and an output Linear"
    (qn, q), (kn, k), (vn, v) = found  # type: ignore[misc]
    if not all(isinstance(m, nn.Linear) for m in (q, k, v)):
        return "query/key/value must be nn.Linear"
    heads, head_dim = _attr(module, HEAD_ATTRS), _attr(module, HEAD_DIM_ATTRS)
    if heads is None and head_dim is None:
        return f"no head-count or head-size attribute (one of {', '.join(HEAD_ATTRS + HEAD_DIM_ATTRS)})"
    q_width, k_width = (_handed_on(module, names, layer) for names, layer in zip(NORM_PAIRS, (q, k)))
    heads = heads or q_width // head_dim
    head_dim = head_dim or q_width // heads
    inner = heads * head_dim
    kv = _attr(module, KV_ATTRS)
    groups = _attr(module, ("num_key_value_groups",))
    kv = kv or (heads // groups if groups else k_width // head_dim)
    if q_width != inner or k_width != kv * head_dim or v.out_features != kv * head_dim:
        return f"query/key/value widths do not match {heads} heads x {head_dim} ({kv} key/value heads)"
    if heads % kv:
        return f"{heads} query heads cannot share {kv} key/value heads evenly"
    out = _child(module, O_NAMES) or _listed_child(module, O_NAMES)
    o_name = _join(name, out[0]) if out else ""
    if out is None and parent is not None:  # BERT: BertAttention.output.dense
        dense = getattr(getattr(parent, "output", None), "dense", None)
        if dense is not None and is_dense(dense):
            out, o_name = ("dense", dense), _join(parent_name, "output.dense")
    if out is None and all(is_dense(getattr(module, f"{n}_global", None)) for n in ("query", "key", "value")):
        return LONGFORMER  # LED's encoder: the output Linear is the parent's ``output``
    if out is None or not isinstance(out[1], nn.Linear) or out[1].in_features != inner:
        return "no output projection Linear (o_proj/out_proj/out/proj or the parent's output.dense) of matching width"
    return AttentionUnit(name, "linear", heads, head_dim, kv, *(_join(name, n) for n in (qn, kn, vn)), o_name)


def _ffn_unit(name: str, module: nn.Module) -> FFNUnit | None:
    children = dict(module.named_children())
    for ups, down in FFN_PATTERNS:
        if all(u in children and is_dense(children[u]) for u in ups) and down in children:
            layers = [children[u] for u in ups]
            if not is_dense(children[down]):
                continue
            width = in_out(layers[0])[1]
            if all(in_out(m)[1] == width for m in layers) and in_out(children[down])[0] == width:
                mid = depthwise_between(name, width, module)
                return FFNUnit(name, [_join(name, u) for u in ups], _join(name, down), width, mid)
    for up, down in PACKED_GLU:
        if up in children and down in children and is_dense(children[up]) and is_dense(children[down]):
            width = in_out(children[down])[0]
            if in_out(children[up])[1] == 2 * width:
                return FFNUnit(name, [_join(name, up)], _join(name, down), width, halves=2)
    inter, out = getattr(module, "intermediate", None), getattr(module, "output", None)
    up, down = getattr(inter, "dense", None), getattr(out, "dense", None)
    found = up is not None and down is not None and is_dense(up) and is_dense(down)
    if found and in_out(up)[1] == in_out(down)[0]:
        return FFNUnit(name, [_join(name, "intermediate.dense")], _join(name, "output.dense"), in_out(up)[1])
    return None


def _looks_like_attention(module: nn.Module) -> bool:
    kind = type(module).__name__.lower()
    return "attention" in kind or "attn" in kind


def find_blocks(model: nn.Module) -> Blocks:
    """All attention and FFN units of ``model`` (see the module docstring for the layouts)."""
    modules = dict(model.named_modules())
    attention: list[AttentionUnit] = []
    ffn: list[FFNUnit] = []
    reasons: dict[str, str] = {}
    sequential: list[tuple[str, FFNUnit]] = []
    for name, module in modules.items():
        parent_name = name.rsplit(".", 1)[0] if "." in name else ""
        parent = modules.get(parent_name) if name else None
        unit: AttentionUnit | str | None = None
        if isinstance(module, (nn.MultiheadAttention, PrunedMultiheadAttention)):
            unit = _mha_unit(name, module)
        elif (pair := _packed_pair(module)) is not None:
            unit = _packed_unit(name, module, pair)
            unit = checked_by_graph(unit, module, HEAD_ATTRS) if isinstance(unit, AttentionUnit) else unit
        # separate q/k/v named children are read as such; otherwise a fused form, its split read from forward
        elif not all(named := [_child(module, n) for n in (Q_NAMES, K_NAMES, V_NAMES)]) and (
            fused := fused_qkv_layout(module, HEAD_ATTRS)
        ) is not None:
            unit = fused if isinstance(fused, str) else _fused_unit(name, *fused) if fused else None
        elif any(named) or _looks_like_attention(module):
            unit = _linear_unit(name, module, parent, parent_name)
        if isinstance(unit, AttentionUnit):
            attention.append(unit)
        elif isinstance(unit, str):
            reasons[name] = unit
        found = _ffn_unit(name, module)
        if found is not None:
            ffn.append(found)
        elif name and (seq := sequential_ffn(name, module)) is not None:
            sequential.append((parent_name, FFNUnit(name, [seq[0]], seq[1], seq[2], halves=seq[3])))
    # a Sequential MLP is an FFN only beside an attention block of the same layer (not a model's head)
    one_block = type(model).__name__.lower().endswith(("block", "layer"))
    ffn += [f for p, f in sequential if beside_attention(f.name, p, [u.name for u in attention], one_block)]
    claimed = {u.name for u in attention}
    attn_layers = set().union(*(u.layers() for u in attention)) if attention else set()
    ffn = [f for f in ffn if not (f.layers() & attn_layers)]  # GPT-2's attention has a c_proj too
    unknown = {}
    for name, reason in reasons.items():
        related = any(c == name or c.startswith(name + ".") or name.startswith(c + ".") for c in claimed)
        own_weights = any(is_dense(m) for m in modules[name].children()) or any(
            True for _ in modules[name].parameters(recurse=False)
        )
        if not related and own_weights and _looks_like_attention(modules[name]):
            unknown[name] = f"{type(modules[name]).__name__}: {reason}"
    # a wrapper is not listed beside the module holding q/k/v that is (LED's LEDEncoderAttention)
    unknown = {n: r for n, r in unknown.items() if not any(c.startswith(n + ".") for c in unknown)}
    return Blocks(attention, ffn, unknown)
