"""Distillation for transformers (issue 15 item 4): embedding distillation on unlabelled text, TinyBERT/MiniLM
hidden-state and attention-map distillation on Hugging Face BERT and on nn.TransformerEncoderLayer (vit_tiny),
with the unpruned model as teacher."""

from __future__ import annotations

import collections
import copy

import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.core.errors import ConfigError, DataError, UnsupportedModelError
from netcompress.data.sentences import python_doc_sentences
from netcompress.distillation import (
    EmbeddingDistillation,
    TransformerDistillation,
    attention_kl,
    distill_embeddings_,
    distill_transformer_,
    uniform_layer_map,
)
from netcompress.distillation.transformer_taps import TransformerTaps, _SaveCall, _SaveOutput
from netcompress.training import TrainConfig, fit

transformers = pytest.importorskip("transformers")

QUIET = {"progress": False}


def _tokenizer(sentences: list[str]):
    """A word-level tokenizer over the 97 most common words (0 = padding, 1 = unknown): no download."""
    words = collections.Counter(w for s in sentences for w in s.lower().split())
    vocab = {w: i + 2 for i, (w, _) in enumerate(words.most_common(97))}

    def encode(batch: list[str], length: int = 16) -> dict[str, torch.Tensor]:
        ids = torch.zeros(len(batch), length, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, sentence in enumerate(batch):
            tokens = [vocab.get(w, 1) for w in sentence.lower().split()][:length]
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    return encode


@pytest.fixture(scope="module")
def sentences():
    """64 training sentences in 4 target-less dict batches, 32 held-out sentences in one."""
    text = python_doc_sentences()[:96]
    encode = _tokenizer(text)
    train = [encode(text[i : i + 16]) for i in range(0, 64, 16)]
    return train, [encode(text[64:96])]


def _bert(hidden: int = 32, layers: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=37,
        vocab_size=99, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=0.2,
    )  # fmt: skip
    return transformers.BertModel(config).eval()  # initializer_range 0.2: layers that matter


def test_uniform_layer_map_is_ceil_of_the_ratio():
    assert uniform_layer_map(3, 6) == [2, 4, 6]
    assert uniform_layer_map(4, 6) == [2, 3, 5, 6]
    assert uniform_layer_map(2, 2) == [1, 2]
    assert uniform_layer_map(1, 2) == [2]


def test_embedding_distillation_raises_the_held_out_cosine_to_the_teacher(sentences):
    train, held_out = sentences
    teacher = _bert()
    student = nc.prune_transformer(teacher, train[0], heads=0.5, ffn=0.5)
    summary = distill_embeddings_(student, teacher, train, val_loader=held_out, epochs=3, lr=3e-3, **QUIET)
    # measured: 0.722 -> 0.981 (min 0.686 -> 0.972)
    assert summary["val_cosine_mean_before"] < 0.8
    assert summary["val_cosine_mean_after"] > summary["val_cosine_mean_before"] + 0.15
    assert summary["val_cosine_min_after"] > summary["val_cosine_min_before"] + 0.15
    assert summary["epochs"] == 3 and summary["final_embedding_cosine"] > 0.95


def test_target_less_dict_batches_go_through_fit_with_a_loss_hook(sentences):
    train, _ = sentences
    teacher = _bert()
    student = nc.prune_transformer(teacher, train[0], heads=0.5, ffn=0.5)
    history = fit(student, train, config=TrainConfig(epochs=2, optimizer="adamw", lr=3e-3, **QUIET),
                  hooks=[EmbeddingDistillation(teacher)])  # fmt: skip
    rows = history.rows
    assert [r["train_acc"] for r in rows] == [None, None]
    assert rows[1]["embedding_cosine"] > rows[0]["embedding_cosine"]
    # the loss is the hook's alone: 1 - cosine, no cross-entropy term
    assert rows[1]["train_loss"] == pytest.approx(rows[1]["embedding_loss"], rel=1e-5)
    with pytest.raises(DataError, match="no targets and no hook supplies the loss"):
        fit(student, train, config=TrainConfig(epochs=1, **QUIET))


def test_attention_kl_is_zero_for_an_identical_student_and_positive_after_pruning(sentences):
    train, held_out = sentences
    teacher = _bert()
    twin = copy.deepcopy(teacher)
    same = TransformerDistillation(teacher, twin, example_inputs=train[0], value_weight=1.0)
    assert same.evaluate(twin, held_out) == {
        "hidden_loss": 0.0, "attention_loss": 0.0, "value_loss": 0.0,
    }  # fmt: skip
    same.close()
    student = nc.prune_transformer(teacher, train[0], heads=0.5, ffn=0.5)
    pruned = TransformerDistillation(teacher, student, example_inputs=train[0], value_weight=1.0)
    losses = pruned.evaluate(student, held_out)
    pruned.close()
    assert losses["attention_loss"] > 0.01 and losses["value_loss"] > 0.01 and losses["hidden_loss"] > 0.01
    assert attention_kl(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3), None) == 0


def test_attention_maps_read_from_query_key_equal_the_models_eager_attentions(sentences):
    train, _ = sentences
    model = _bert()
    taps = TransformerTaps(model, who="teacher")
    model.set_attn_implementation("eager")  # output_attentions needs eager in transformers 5
    with torch.no_grad():
        out = model(**train[0], output_attentions=True, output_hidden_states=True)
    for i in (1, 2):
        taps.verify_attention(i)
        probs = taps.attention_scores(i).softmax(-1)
        assert torch.allclose(probs, out.attentions[i - 1], atol=1e-6)
        assert torch.equal(taps.hidden(i), out.hidden_states[i])
    assert torch.equal(taps.hidden(0), out.hidden_states[0])
    taps.close()
    ours = (_SaveCall, _SaveOutput)
    hooks = [h for m in model.modules() for h in [*m._forward_hooks.values(), *m._forward_pre_hooks.values()]]
    assert not [h for h in hooks if isinstance(h, ours)]  # close() removed every hook it put


def test_hidden_distillation_through_a_projection_after_hidden_width_pruning_reduces_the_mse(sentences):
    train, held_out = sentences
    teacher = _bert()
    student = nc.prune_transformer(teacher, train[0], heads=0.25, ffn=0.5, hidden=0.25)
    probe = TransformerDistillation(teacher, student, example_inputs=train[0], include_embeddings=True)
    assert [(p.in_features, p.out_features) for p in probe.projections] == [(24, 32)] * 3
    probe.close()
    summary = distill_transformer_(student, teacher, train, val_loader=held_out, epochs=5, lr=3e-3,
                                   include_embeddings=True, **QUIET)  # fmt: skip
    # measured: hidden 0.0634 -> 0.0487 (the projection starts least-squares fitted), attention 0.0715 -> 0.0295
    assert summary["val_hidden_loss_after"] < 0.85 * summary["val_hidden_loss_before"]
    assert summary["val_attention_loss_after"] < 0.6 * summary["val_attention_loss_before"]
    assert summary["layer_map"] == [1, 2]


def _vit(seed: int):
    torch.manual_seed(seed)
    return nc.models.create("vit_tiny", image_size=8, patch_size=4, dim=32, depth=2, heads=4, mlp_dim=48)


def test_vit_tiny_layers_are_read_through_nn_transformer_encoder_layer_fast_path():
    teacher = _vit(0).eval()
    x = torch.randn(4, 3, 8, 8)
    taps = TransformerTaps(teacher, who="teacher")
    with torch.no_grad():  # eval + no_grad: the fused fast path, self_attn is never called
        teacher(x)
    layer = teacher.encoder.layers[0]
    with torch.no_grad():
        tokens = taps.hidden(0)
        ref = layer.self_attn(*(layer.norm1(tokens),) * 3, need_weights=True, average_attn_weights=False)[1]
    assert torch.allclose(taps.attention_scores(1).softmax(-1), ref, atol=1e-6)
    taps.close()


def test_vit_tiny_distillation_with_labels_after_head_pruning():
    teacher = _vit(0)
    gen = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(8, 3, 8, 8, generator=gen), torch.randint(0, 10, (8,), generator=gen)) for _ in range(3)
    ]
    student = nc.prune_transformer(teacher, batches[0][0], heads=0.5, ffn=0.5)
    summary = distill_transformer_(
        student, teacher, batches, val_loader=batches[:1], epochs=4, lr=3e-3, **QUIET
    )
    assert summary["val_attention_loss_before"] > 0.01
    assert summary["val_attention_loss_after"] < summary["val_attention_loss_before"]
    assert summary["final_val_acc"] is not None  # labelled batches: cross entropy too, validated by fit


def test_layer_map_errors_name_the_entry_and_the_teacher_depth(sentences):
    train, _ = sentences
    teacher, student = _bert(layers=2), _bert(layers=1, seed=1)
    hook = TransformerDistillation(teacher, student, example_inputs=train[0])
    assert hook.layer_map == [2]
    hook.close()
    with pytest.raises(ConfigError, match=r"layer_map\[0\]=3 is out of range: the teacher has 2 layers"):
        TransformerDistillation(teacher, student, example_inputs=train[0], layer_map=[3])
    with pytest.raises(ConfigError, match="layer_map has 2 entries but the student has 1 layers"):
        distill_transformer_(student, teacher, train, layer_map=[1, 2], epochs=1, **QUIET)
    hooks = [
        h for m in student.modules() for h in [*m._forward_hooks.values(), *m._forward_pre_hooks.values()]
    ]
    assert not [
        h for h in hooks if isinstance(h, (_SaveCall, _SaveOutput))
    ]  # a refused hook leaves none behind


def test_errors_name_the_missing_teacher_and_models_without_attention(sentences):
    train, _ = sentences
    student = _bert()
    with pytest.raises(ConfigError, match="distill/embedding needs a teacher"):
        nc.apply(
            student,
            nc.distillation.EmbeddingDistillConfig(epochs=1),
            nc.core.methods.MethodData(train_loader=train),
        )
    with pytest.raises(ConfigError, match="share parameters"):
        distill_embeddings_(student, student, train, epochs=1, **QUIET)
    mlp = nn.Sequential(nn.Embedding(99, 32), nn.Linear(32, 32))
    with pytest.raises(UnsupportedModelError, match="teacher Sequential: no transformer layer found"):
        TransformerDistillation(mlp, student, example_inputs=train[0]["input_ids"])
    gpt_config = transformers.GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=99, n_positions=32)
    gpt = transformers.GPT2Model(gpt_config)
    ids = train[0]["input_ids"]
    with pytest.raises(
        UnsupportedModelError, match=r"student GPT2Model: attention maps of 'h.0.attn' .* not available"
    ):
        TransformerDistillation(copy.deepcopy(gpt), gpt, example_inputs=ids)
    hidden_only = TransformerDistillation(copy.deepcopy(gpt), gpt, example_inputs=ids, attention_weight=0.0)
    hidden_only.close()


class _RotatedAttention(nn.Module):
    """q/k/v/out attention whose forward rotates the queries: maps cannot be read from q_proj/k_proj."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, _ = x.shape
        q, k, v = (
            p(x).view(n, length, self.num_heads, -1).transpose(1, 2)
            for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        q = q.flip(-1)  # stands in for a rotary embedding
        out = (q @ k.transpose(-2, -1) * self.head_dim**-0.5).softmax(-1) @ v
        return self.o_proj(out.transpose(1, 2).reshape(n, length, -1))


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = _RotatedAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attn(x)


class _Stack(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([_Block()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers[0](x)


def test_attention_read_out_is_verified_against_the_block_and_errors_name_it():
    torch.manual_seed(0)
    model, x = _Stack(), torch.randn(2, 5, 16)
    with pytest.raises(
        UnsupportedModelError, match=r"student _Stack: attention maps of 'layers.0.attn' cannot be read"
    ):
        TransformerDistillation(copy.deepcopy(model), model, example_inputs=x)
    hidden_only = TransformerDistillation(copy.deepcopy(model), model, example_inputs=x, attention_weight=0.0)
    assert hidden_only.evaluate(model, [x]) == {"hidden_loss": 0.0}
    hidden_only.close()
