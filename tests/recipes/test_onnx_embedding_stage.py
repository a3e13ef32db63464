"""The ONNX stage of a sentence-encoder run (``export: {onnx: true}`` with embedding data) is scored like its
PyTorch stages, by embedding cosine and nearest-neighbour agreement against the references; it used to end the
run, after every step had finished, with "top-1 accuracy needs a model returning (batch, classes) logits"."""

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import netcompress as nc
from netcompress.evaluation.embeddings import embedding_metrics
from netcompress.recipes.stages import measure_onnx_stage


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.proj = nn.Linear(16, 16)

    def forward(self, input_ids, attention_mask):
        return self.proj(self.emb(input_ids)) * attention_mask.unsqueeze(-1)  # (N, L, H) token states


class Referenced(Dataset):
    task = "embedding"

    def __init__(self, ids, mask, reference):
        self.ids, self.mask, self.reference = ids, mask, reference

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i]}, self.reference[i]


def test_onnx_stage_of_an_encoder_reports_embedding_scores(tmp_path):
    torch.manual_seed(0)
    model = Encoder().eval()
    ids = torch.randint(1, 50, (12, 6))
    mask = torch.ones(12, 6, dtype=torch.long)
    mask[::2, 4:] = 0
    reference = torch.randn(12, 16)  # not the model's embeddings: cosine well below 1
    loader = DataLoader(Referenced(ids, mask, reference), batch_size=4)
    example = {"input_ids": ids[:2], "attention_mask": mask[:2]}
    path = tmp_path / "enc.onnx"
    nc.export_onnx(model, str(path), example)
    row = measure_onnx_stage(path, loader, example, {"latency": False}, int8=False)
    expected = embedding_metrics(model, loader)
    assert row["accuracy_metric"] == "nn_agreement" and row["accuracy"] == row["nn_agreement"]
    assert abs(row["cosine_mean"] - expected["cosine_mean"]) < 1e-4
    assert abs(row["cosine_min"] - expected["cosine_min"]) < 1e-4
    assert row["nn_agreement"] == expected["nn_agreement"]
    assert row["cosine_mean"] < 0.5
