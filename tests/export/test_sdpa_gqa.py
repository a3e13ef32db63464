"""``F.scaled_dot_product_attention(..., enable_gqa=True)``: torch's ONNX exporter asserts ("conversion of
scaled_dot_product_attention not implemented if enable_gqa is True"), a raw AssertionError from every export verb.
transformers calls it so for Llama-family models with fewer key/value heads than query heads when no attention mask
is passed (Llama, Qwen2, Cohere, Jamba with ``input_ids`` only). While tracing, the key/value heads are repeated
(as transformers' own ``repeat_kv`` does) and the call made without ``enable_gqa``: the same attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import netcompress as nc


class GroupedAttention(nn.Module):
    def __init__(self, heads: int = 4, kv_heads: int = 2, dim: int = 8) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.dim = heads, kv_heads, dim
        self.q = nn.Linear(16, heads * dim)
        self.kv = nn.Linear(16, 2 * kv_heads * dim)

    def forward(self, x):
        b, n, _ = x.shape
        q = self.q(x).view(b, n, self.heads, self.dim).transpose(1, 2)
        k, v = self.kv(x).view(b, n, 2, self.kv_heads, self.dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return out.transpose(1, 2).reshape(b, n, -1)


def test_grouped_query_attention_exports(tmp_path):
    torch.manual_seed(0)
    model, x = GroupedAttention().eval(), torch.randn(2, 5, 16)
    summary = nc.export_onnx(model, tmp_path / "m.onnx", x, int8=False, check=True)
    assert summary["check"]["max_rel_diff"] < 1e-5
    assert F.scaled_dot_product_attention.__name__ == "scaled_dot_product_attention"  # restored after export


def test_llama_with_fewer_kv_heads_and_no_mask_exports(tmp_path):
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=48, max_position_embeddings=32)  # fmt: skip
    model, ids = transformers.LlamaForCausalLM(config).eval(), torch.randint(0, 50, (2, 7))
    summary = nc.export_onnx(model, tmp_path / "llama.onnx", ids, int8=False, check=True)
    assert summary["check"]["max_rel_diff"] < 1e-4
