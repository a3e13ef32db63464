"""A peft LoRA / IA3 wrapped transformer or LoHa-wrapped CNN (what users bring after fine-tuning): the pruners and the
distillation taps do not see its attention (the query is a ``lora.Linear``, not an ``nn.Linear``); the refusal
names the adapter layer and says to merge first, and the merged model then prunes (zoo round 7). Skipped where
peft is absent."""

from __future__ import annotations

import pytest
import torch

import netcompress as nc
from netcompress.core.errors import UnsupportedModelError

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")


def _lora_bert() -> torch.nn.Module:
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=4,
                                  intermediate_size=24, max_position_embeddings=32, num_labels=3)  # fmt: skip
    model = transformers.BertForSequenceClassification(cfg).eval()
    lora = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"], task_type="SEQ_CLS")
    wrapped = peft.get_peft_model(model, lora)
    for name, p in wrapped.named_parameters():
        if "lora_B" in name:  # B starts at zero: make the adapters change the outputs
            torch.nn.init.normal_(p, std=0.1)
    return wrapped.eval()


def test_prune_and_distill_name_the_adapter_and_the_merged_model_prunes():
    model = _lora_bert()
    x = {"input_ids": torch.randint(2, 50, (2, 7)), "attention_mask": torch.ones(2, 7, dtype=torch.long)}
    hint = r"'base_model\.model\.bert\.encoder\.layer\.0\.attention\.self\.query' is a peft adapter layer " \
           r"\(lora Linear, 2 such\): merge the adapters into the weights first, model = model\.merge_and_unload\(\)"
    with pytest.raises(UnsupportedModelError, match=hint):
        nc.prune_transformer(model, x, heads=0.5, ffn=0.5)
    with pytest.raises(UnsupportedModelError, match=hint):
        nc.distill_transformer_(_lora_bert(), model, [(x, torch.zeros(2, dtype=torch.long))], example_inputs=x, epochs=1,
                                progress=False)  # fmt: skip
    with torch.no_grad():
        want = model(**x).logits
    merged = model.merge_and_unload()
    with torch.no_grad():
        assert torch.allclose(merged(**x).logits, want, atol=1e-5)  # the hint keeps the outputs
    small = nc.prune_transformer(merged, x, heads=0.5, ffn=0.5)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in merged.parameters())


class SmallCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv2(torch.relu(self.conv1(x)))).mean((2, 3)))


def test_channel_pruning_names_a_loha_conv_and_the_merged_model_prunes():
    torch.manual_seed(0)
    model = peft.get_peft_model(SmallCNN(), peft.LoHaConfig(r=2, target_modules=["conv2"])).eval()
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(UnsupportedModelError, match=r"'base_model\.model\.conv2' is a peft adapter layer \(loha Conv2d"):
        nc.prune_channels(model, x, ratio=0.5)
    small = nc.prune_channels(model.merge_and_unload(), x, ratio=0.5)
    assert small.conv1.out_channels == 4
