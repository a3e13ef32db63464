"""Structured transformer pruning: heads, FFN neurons and hidden width on every supported family.

Each pruned model is compared with a masked copy of the original built here (the removed heads' output-
projection columns and the removed neurons' down columns zeroed), parameter counts are computed by hand,
and the importances are checked on a case built so each picks a different, known unit.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

from netcompress.core.errors import ConfigError, UnsupportedModelError
from netcompress.core.inputs import call_model, output_tensor
from netcompress.pruning import PrunedMultiheadAttention, TransformerPruneConfig, prune_transformer
from netcompress.pruning.transformer_blocks import find_blocks
from netcompress.pruning.transformer_pruning import transformer_prune
from netcompress.pruning.transformer_verify import KeptChannelNorm
from tests.tiny_hf import hf_family as _hf

H = 32


class HandAttention(nn.Module):
    """A hand-written attention block: q/k/v/out Linear layers and num_heads/head_dim attributes."""

    def __init__(
        self, dim: int = H, num_heads: int = 4, interleaved: bool = False, fixed_width: bool = False
    ):
        super().__init__()
        self.num_heads, self.head_dim, self.dim = num_heads, dim // num_heads, dim
        self.interleaved, self.fixed_width = interleaved, fixed_width
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        if self.interleaved:  # channel c belongs to head c % num_heads: not the layout the pruner assumes
            return t.view(b, n, self.head_dim, self.num_heads).permute(0, 3, 1, 2)
        return t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        att = (q @ k.transpose(-1, -2) * self.head_dim**-0.5).softmax(-1)
        out = (att @ v).transpose(1, 2)
        width = self.dim if self.fixed_width else self.num_heads * self.head_dim
        return self.out(out.reshape(b, n, width))


class MLP(nn.Module):
    def __init__(self, dim: int = H, width: int = 48):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, width), nn.GELU(), nn.Linear(width, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class HandModel(nn.Module):
    """Token embedding, one pre-norm block (hand-written attention + MLP), mean pooling, classifier."""

    def __init__(self, norm: bool = True, **attn):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(50, H)
        self.norm1, self.norm2 = (nn.LayerNorm(H) if norm else nn.Identity() for _ in range(2))
        self.attn, self.mlp, self.head = HandAttention(**attn), MLP(), nn.Linear(H, 5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids)
        h = h + self.attn(self.norm1(h))
        h = h + self.mlp(self.norm2(h))
        return self.head(h.mean(1))


class MHAModel(nn.Module):
    """Embedding + two nn.TransformerEncoderLayer (batch_first) + LayerNorm + classifier."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(50, H)
        layer = nn.TransformerEncoderLayer(H, 4, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.norm, self.head = nn.LayerNorm(H), nn.Linear(H, 5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.encoder(self.emb(ids))).mean(1))


IDS = torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(1))


def _family(name: str):
    if name == "hand":
        return HandModel().eval(), IDS
    if name == "mha":
        return MHAModel().eval(), IDS
    return _hf(name)


FAMILIES = ["hand", "mha", "bert", "vit", "gpt2", "llama"]


def _masked(model: nn.Module, summary: dict) -> nn.Module:
    """The original with removed heads' output columns and removed neurons' down columns set to zero."""
    ref = copy.deepcopy(model)
    blocks = {u.name: u for u in find_blocks(ref).attention}
    ffn = {u.name: u for u in find_blocks(ref).ffn}
    with torch.no_grad():
        for row in summary["heads"]:
            unit = blocks[row["name"]]
            cols = [
                h * unit.head_dim + i
                for h in range(unit.num_heads)
                if h not in row["kept"]
                for i in range(unit.head_dim)
            ]
            if unit.layout == "mha":
                ref.get_submodule(unit.name).out_proj.weight[:, cols] = 0
            elif unit.layout == "packed":  # Conv1D stores (in, out)
                ref.get_submodule(unit.o).weight[cols] = 0
            else:
                ref.get_submodule(unit.o).weight[:, cols] = 0
        for row in summary["ffn"]:
            unit, down = ffn[row["name"]], None
            down = ref.get_submodule(unit.down)
            dropped = [n for n in range(unit.width) if n not in row["kept"]]
            if type(down).__name__ == "Conv1D":
                down.weight[dropped] = 0
            else:
                down.weight[:, dropped] = 0
    return ref


def _out(model: nn.Module, inputs) -> torch.Tensor:
    with torch.no_grad():
        return output_tensor(call_model(model.eval(), inputs))


@pytest.mark.parametrize("family", FAMILIES)
def test_heads_and_ffn_pruning_equals_the_masked_model(family):
    model, inputs = _family(family)
    before = copy.deepcopy(model.state_dict())
    small, summary = transformer_prune(model, inputs, TransformerPruneConfig(heads=0.5, ffn=0.5))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the argument is untouched
    assert [(r["before"], r["after"]) for r in summary["heads"]] == [(4, 2)] * len(summary["heads"])
    assert all(r["after"] == r["before"] - r["before"] // 2 for r in summary["ffn"])
    expected, got = _out(_masked(model, summary), inputs), _out(small, inputs)
    assert got.shape == expected.shape == _out(model, inputs).shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    original = _out(model, inputs)
    assert (got - original).abs().max() > 1e-3 * original.abs().max()  # something was really removed
    assert summary["params_after"] == sum(p.numel() for p in small.parameters()) < summary["params_before"]
    assert summary["macs_after"] < summary["macs_before"]
    pickle.loads(pickle.dumps(small))


def test_bert_parameter_count_is_exact():
    model, inputs = _hf("bert")
    small, summary = transformer_prune(model, inputs, TransformerPruneConfig(heads=0.5, ffn=0.5))
    d, layers = 8, 2
    heads_removed = 2 * d * (3 * (H + 1) + H)  # q/k/v rows with bias, output-projection columns
    ffn_removed = 18 * ((H + 1) + H)  # 37 -> 19 neurons: intermediate rows with bias, output columns
    assert summary["params_before"] - summary["params_after"] == layers * (heads_removed + ffn_removed)
    attn = small.bert.encoder.layer[0].attention.self
    assert (attn.num_attention_heads, attn.all_head_size, attn.query.out_features) == (2, 16, 16)
    assert small.bert.encoder.layer[0].intermediate.dense.out_features == 19


def test_mha_heads_become_a_pruned_multihead_attention_that_pickles():
    model = MHAModel().eval()
    small = prune_transformer(model, IDS, heads=0.25, ffn=0.0)
    attn = small.encoder.layers[0].self_attn
    assert isinstance(attn, PrunedMultiheadAttention)
    assert (attn.num_heads, attn.head_dim, attn.embed_dim, attn.out_proj.in_features) == (3, 8, H, 24)
    assert sum(p.numel() for p in model.parameters()) - sum(
        p.numel() for p in small.parameters()
    ) == 2 * 8 * (3 * (H + 1) + H)
    loaded = pickle.loads(pickle.dumps(small))
    torch.testing.assert_close(_out(loaded, IDS), _out(small, IDS))


@pytest.mark.parametrize("gqa", ["groups", "queries"])
def test_llama_grouped_query_attention_keeps_groups_consistent(gqa):
    model, inputs = _hf("llama")
    small, summary = transformer_prune(model, inputs, TransformerPruneConfig(heads=0.5, ffn=0.0, gqa=gqa))
    for row, layer in zip(summary["heads"], small.model.layers, strict=True):
        attn = layer.self_attn
        q_heads, kv_heads = attn.q_proj.out_features // 8, attn.k_proj.out_features // 8
        assert q_heads == kv_heads * attn.num_key_value_groups == 2
        if gqa == "groups":  # one whole group: query heads 2g and 2g+1 with key/value head g
            assert kv_heads == 1 and row["kept"] in ([0, 1], [2, 3])
        else:  # one query head from each of the two groups
            assert kv_heads == 2 and row["kept"][0] in (0, 1) and row["kept"][1] in (2, 3)
    torch.testing.assert_close(
        _out(small, inputs), _out(_masked(model, summary), inputs), atol=1e-5, rtol=1e-5
    )
    # 2 layers x (2 query heads x 8 x 32 q rows + 2 x 8 x 32 o columns) + key/value heads removed
    kv_removed = {"groups": 1, "queries": 0}[gqa] * 2 * 8 * H
    assert summary["params_before"] - summary["params_after"] == 2 * (2 * 8 * H * 2 + kv_removed)


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_pruned_hf_model_runs_with_an_attention_mask(family):
    model, inputs = _hf(family)
    small = prune_transformer(model, inputs, heads=0.5, ffn=0.5, hidden=0.25)
    with torch.no_grad():
        out = small(**inputs)
        shorter = small(input_ids=inputs["input_ids"][:, :5], attention_mask=inputs["attention_mask"][:, :5])
    assert out.logits.shape == _out(model, inputs).shape
    assert shorter.logits.shape[:2] == (2, 3) if family == "bert" else shorter.logits.shape[:2] == (2, 5)
    assert small.config.hidden_size == 24 and model.config.hidden_size == H


@pytest.mark.parametrize("family", ["hand", "mha", "bert", "vit", "gpt2", "llama"])
def test_hidden_width_is_one_channel_set_everywhere(family):
    model, inputs = _family(family)
    small, summary = transformer_prune(model, inputs, TransformerPruneConfig(heads=0.0, ffn=0.0, hidden=0.25))
    assert (summary["hidden_before"], summary["hidden_after"]) == (H, 24)
    widths = {m.normalized_shape[0] for m in small.modules() if isinstance(m, nn.LayerNorm)}
    widths |= {
        m.embedding_dim for m in small.modules() if isinstance(m, nn.Embedding) and m.num_embeddings != 16
    }
    assert widths == {24} or family == "llama"
    assert _out(small, inputs).shape == _out(model, inputs).shape


def test_hidden_pruning_of_dead_channels_is_lossless_without_norms():
    """Nothing normalises the stream: channels no layer writes can go without changing the output."""
    model = HandModel(norm=False).eval()
    dead = [3, 10, 20, 31, 5, 7, 11, 13]
    with torch.no_grad():
        model.emb.weight[:, dead] = 0
        for layer in (model.attn.out, model.mlp.fc2):
            layer.weight[dead] = 0
            layer.bias[dead] = 0
    small, summary = transformer_prune(model, IDS, TransformerPruneConfig(heads=0.0, ffn=0.0, hidden=0.25))
    assert summary["hidden_after"] == 24
    assert small.emb.embedding_dim == 24 and small.head.in_features == 24 and small.attn.q.in_features == 24
    torch.testing.assert_close(_out(small, IDS), _out(model, IDS), atol=1e-6, rtol=1e-6)


def test_kept_channel_norm_normalises_over_the_kept_channels_only():
    norm = nn.LayerNorm(6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2)
        norm.bias.uniform_(-1, 1)
    keep = [0, 2, 3, 5]
    x = torch.randn(2, 3, 6)
    out = KeptChannelNorm(norm, keep)(x)
    expected = torch.nn.functional.layer_norm(
        x[..., keep], (4,), norm.weight[keep], norm.bias[keep], norm.eps
    )
    torch.testing.assert_close(out[..., keep], expected)
    assert torch.equal(out[..., [1, 4]], torch.zeros(2, 3, 2))


def _importance_case():
    """fc1/fc2 FFN with 4 neurons built so that magnitude, Wanda and Taylor each find a different weakest one.

    Neuron 0: tiny weights but a huge input (lowest magnitude); neuron 1: big weights on an input that is
    almost always 1e-3 (lowest activation x weight); neuron 2: big and active, but it adds the same amount to
    both logits, which cross-entropy cannot see (zero Taylor score); neuron 3: ordinary.
    """
    model = nn.Sequential()
    model.add_module("mlp", MLP(dim=4, width=4))
    model.mlp.act = nn.ReLU()
    model.mlp.fc2 = nn.Linear(4, 2)
    with torch.no_grad():
        model.mlp.fc1.weight.copy_(torch.diag(torch.tensor([0.1, 3.0, 2.0, 2.0])))
        model.mlp.fc1.bias.zero_()
        model.mlp.fc2.weight.copy_(torch.tensor([[0.1, 2.0, 1.5, 2.0], [-0.1, -2.0, 1.5, -1.0]]))
        model.mlp.fc2.bias.zero_()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 4, generator=g) + 0.5
    x[:, 0] *= 100
    x[:, 1] = 1e-3
    y = torch.randint(0, 2, (64,), generator=g)
    return model.eval(), [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]


@pytest.mark.parametrize(("importance", "removed"), [("magnitude", 0), ("wanda", 1), ("taylor", 2)])
def test_each_importance_removes_the_unit_it_should(importance, removed):
    model, loader = _importance_case()
    config = TransformerPruneConfig(heads=0.0, ffn=0.25, importance=importance)
    small, summary = transformer_prune(model, loader[0][0], config, loader=loader)
    assert summary["ffn"][0]["kept"] == [n for n in range(4) if n != removed]
    assert small.mlp.fc1.out_features == 3


def test_magnitude_removes_a_zero_head_first():
    model = HandModel().eval()
    with torch.no_grad():
        for layer in (model.attn.q, model.attn.k, model.attn.v):
            layer.weight[16:24] = 0
            layer.bias[16:24] = 0
        model.attn.out.weight[:, 16:24] = 0
    _, summary = transformer_prune(model, IDS, TransformerPruneConfig(heads=0.25, ffn=0.0))
    assert summary["heads"][0]["kept"] == [0, 1, 3]


def test_taylor_and_wanda_read_dict_batches_with_labels():
    model, inputs = _hf("bert")
    batches = [{**inputs, "labels": torch.tensor([0, 2])}, {**inputs, "labels": torch.tensor([1, 1])}]
    for importance in ("taylor", "wanda"):
        small, summary = transformer_prune(
            model,
            inputs,
            TransformerPruneConfig(heads=0.5, ffn=0.5, hidden=0.25, importance=importance),
            loader=batches,
        )
        assert summary["hidden_after"] == 24 and [r["after"] for r in summary["heads"]] == [2, 2]
    with pytest.raises(ConfigError, match="labelled batches"):
        transformer_prune(model, inputs, TransformerPruneConfig(importance="taylor"), loader=[inputs])


def test_ratios_that_would_remove_every_head_are_refused():
    with pytest.raises(ConfigError, match="heads=1.0 would remove everything"):
        TransformerPruneConfig(heads=1.0)
    with pytest.raises(ConfigError, match="min_heads"):
        prune_transformer(HandModel(), IDS, min_heads=0)
    small, summary = transformer_prune(
        HandModel().eval(), IDS, TransformerPruneConfig(heads=0.99, ffn=0.0, min_heads=1)
    )
    assert summary["heads"][0]["after"] == 1 and small.attn.num_heads == 1


def test_unknown_attention_structure_is_reported_by_name():
    class PackedAttention(nn.Module):
        def __init__(self):
            super().__init__()
            # named qkv/proj it would be a "packed" layout
            self.num_heads, self.fused, self.proj = 4, nn.Linear(H, 3 * H), nn.Linear(H, H)

        def forward(self, x):
            return self.proj(self.fused(x)[..., :H])

    model = nn.Sequential(nn.Embedding(50, H))
    model.add_module("blk", PackedAttention())
    assert "blk" in find_blocks(model).unknown
    with pytest.raises(UnsupportedModelError, match=r"'blk' \(PackedAttention: fused q\|k\|v layer 'fused' .*getitem"):
        prune_transformer(model, IDS, heads=0.5, ffn=0.0)


@pytest.mark.parametrize(
    ("kind", "message"), [("interleaved", "differs from the masked original"), ("fixed_width", "fails there")]
)
def test_a_hand_written_block_the_pruner_cannot_follow_is_an_error_naming_it(kind, message):
    model = HandModel(**{kind: True}).eval()
    with pytest.raises(UnsupportedModelError, match=rf"'attn' \(HandAttention\).*{message}"):
        prune_transformer(model, IDS, heads=0.5, ffn=0.0)
    prune_transformer(model, IDS, heads=0.0, ffn=0.5)  # its FFN alone is fine


def test_hidden_pruning_of_a_model_whose_input_is_the_stream_is_refused():
    layer = nn.TransformerEncoderLayer(H, 4, 64, dropout=0.0, batch_first=True).eval()
    with pytest.raises(UnsupportedModelError, match="residual stream.*model's input"):
        prune_transformer(layer, torch.randn(2, 5, H), heads=0.0, ffn=0.0, hidden=0.25)
    assert prune_transformer(layer, torch.randn(2, 5, H), heads=0.5).self_attn.num_heads == 2


def test_no_attention_block_with_heads_requested_is_an_error():
    with pytest.raises(UnsupportedModelError, match="no attention block"):
        prune_transformer(nn.Sequential(MLP()), torch.randn(2, H), heads=0.5)


class DecoderModel(nn.Module):
    """nn.TransformerDecoderLayer: causal self-attention, cross-attention on a memory, FFN."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(50, H)
        self.dec = nn.TransformerDecoderLayer(H, 4, 64, dropout=0.0, batch_first=True)
        self.head = nn.Linear(H, 5)

    def forward(self, ids: torch.Tensor, memory_ids: torch.Tensor) -> torch.Tensor:
        causal = nn.Transformer.generate_square_subsequent_mask(ids.shape[1])
        return self.head(self.dec(self.emb(ids), self.emb(memory_ids), tgt_mask=causal, tgt_is_causal=True))


def test_decoder_cross_attention_and_ignore_patterns():
    import netcompress as nc

    model = DecoderModel().eval()
    inputs = (IDS[:, :6], IDS[:, 2:])  # two positional inputs
    small, summary = transformer_prune(model, inputs, TransformerPruneConfig(heads=0.5, ffn=0.5, hidden=0.25))
    assert [(r["name"], r["after"]) for r in summary["heads"]] == [
        ("dec.self_attn", 2),
        ("dec.multihead_attn", 2),
    ]
    assert (summary["ffn"][0]["after"], summary["hidden_after"]) == (32, 24)
    kept = nc.prune_transformer(model, inputs, heads=0.5, ffn=0.0, ignore=["dec.multihead_attn"])
    assert kept.dec.self_attn.num_heads == 2 and isinstance(kept.dec.multihead_attn, nn.MultiheadAttention)
    with pytest.raises(ConfigError, match="ignore pattern 'dec.nothing' matches no attention or FFN block"):
        prune_transformer(model, inputs, ignore=["dec.nothing"])
