"""save_compressed on a Hugging Face model: its config class is no nn.Module, the write-time check must allow it."""

from __future__ import annotations

import pytest
import torch

import netcompress as nc
from netcompress.core.errors import CheckpointError
from tests.tiny_hf import DECODER, tiny


def test_a_transformers_model_writes_names_its_packages_and_reloads_equal(tmp_path):
    model = tiny("BertForSequenceClassification", "BertConfig", **{**DECODER, "num_labels": 3})
    nc.cluster_weights_(model, clusters=8)
    ids = torch.randint(1, 50, (2, 7), generator=torch.Generator().manual_seed(0))
    s = nc.save_compressed(model, tmp_path / "bert.ncz", example_inputs=ids)  # before: CheckpointError
    assert "transformers.models.bert.configuration_bert" in s["allow_modules"]
    assert all(not m.startswith(("torch", "netcompress")) for m in s["allow_modules"])
    with pytest.raises(CheckpointError, match="allow_modules"):
        nc.load_compressed(tmp_path / "bert.ncz")  # loading still needs the user's word
    back = nc.load_compressed(tmp_path / "bert.ncz", allow_modules=["transformers"])
    with torch.no_grad():
        assert torch.equal(back(ids).logits, model(ids).logits)
