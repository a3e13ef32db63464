"""Tiny Hugging Face models built from configs (no download), shared by the tests that need them.

``tiny`` builds any class by name, seeded and in eval mode; ``tiny_decoder`` starts from one small
decoder config (1 layer, width 16, 4 heads, vocabulary 50); ``mobilebert`` is the bottleneck block the
zoo and distillation tests use; ``hf_family`` gives BERT, GPT-2, Llama (grouped-query) or ViT at width 32
with inputs, as the transformer pruning tests use them.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

WIDTH = 32
DECODER = dict(
    hidden_size=16, num_hidden_layers=1, num_attention_heads=4, intermediate_size=12, vocab_size=50,
    max_position_embeddings=16, pad_token_id=0, bos_token_id=0, eos_token_id=0,
)  # fmt: skip
MOBILEBERT = dict(
    hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=24, vocab_size=50,
    max_position_embeddings=16, embedding_size=16, intra_bottleneck_size=16, true_hidden_size=16, num_labels=3,
)  # fmt: skip


def tiny(model_class: str, config_class: str, **config: Any) -> nn.Module:
    """``transformers.<model_class>(transformers.<config_class>(**config))``, seeded with 0, in eval mode."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    return getattr(transformers, model_class)(getattr(transformers, config_class)(**config)).eval()


def tiny_decoder(model_class: str, config_class: str, **overrides: Any) -> nn.Module:
    """:func:`tiny` on :data:`DECODER` with ``overrides`` on top."""
    return tiny(model_class, config_class, **{**DECODER, **overrides})


def mobilebert(*, feedforward_networks: int) -> nn.Module:
    """MobileBERT for 3 classes: a 16-wide bottleneck in a 32-wide stream, ``feedforward_networks`` FFNs."""
    return tiny(
        "MobileBertForSequenceClassification", "MobileBertConfig",
        num_feedforward_networks=feedforward_networks, **MOBILEBERT,
    )  # fmt: skip


FAMILIES = {  # name: (model class, config class, config), each 2 layers, width 32, 4 heads
    "bert": ("BertForSequenceClassification", "BertConfig", dict(
        hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=99, num_labels=3,
    )),
    "gpt2": ("GPT2LMHeadModel", "GPT2Config", dict(
        n_embd=WIDTH, n_layer=2, n_head=4, vocab_size=99, n_positions=16, bos_token_id=0, eos_token_id=0,
    )),
    "llama": ("LlamaForCausalLM", "LlamaConfig", dict(
        hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=48,
        vocab_size=99,
    )),
    "vit": ("ViTForImageClassification", "ViTConfig", dict(
        hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, image_size=16,
        patch_size=8, num_labels=3,
    )),
}  # fmt: skip


def hf_family(name: str) -> tuple[nn.Module, Any]:
    """(model, example inputs) of a :data:`FAMILIES` entry (Llama: 4 query heads over 2 key/value groups);
    text inputs are 2 x 7 token ids with the second row padded from 4, ViT's 2 random 16 x 16 images."""
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    ids = torch.randint(0, 99, (2, 7), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 4:] = 0
    model = tiny(*FAMILIES[name][:2], **FAMILIES[name][2])
    return model, (torch.randn(2, 3, 16, 16) if name == "vit" else {"input_ids": ids, "attention_mask": mask})


def bert_encoder(seed: int = 0) -> nn.Module:
    """A 2-layer BertModel at width 32 without dropout, weights drawn wide (initializer_range 0.2) so that the
    layers matter: the sentence-embedding distillation tests' teacher / student."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=99,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=0.2,
    )  # fmt: skip
    return transformers.BertModel(config).eval()


def sentence_batches(count: int = 4, size: int = 16, length: int = 12, seed: int = 1) -> list[dict[str, Any]]:
    """``count`` batches of token ids (vocabulary 99) with padded attention masks of random lengths 4..length."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        ids = torch.randint(2, 99, (size, length), generator=g)
        lengths = torch.randint(4, length + 1, (size,), generator=g)
        mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
        out.append({"input_ids": ids * mask, "attention_mask": mask})
    return out
