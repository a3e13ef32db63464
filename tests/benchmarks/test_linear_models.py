"""benchmarks/linear_models.py: its split, size accounting and verdicts; the --quick run end to end (slow)."""

from __future__ import annotations

import argparse

import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime")
lm = pytest.importorskip("linear_models")


def test_split_is_disjoint_and_labels_the_largest_topics():
    pairs = lm.topic_sentences()
    task = lm.split_task(pairs, classes=4, calib=32, seed=0)
    counts = {}
    for _, topic in pairs:
        counts[topic] = counts.get(topic, 0) + 1
    assert task["topics"] == sorted(counts, key=lambda t: -counts[t])[:4]
    train, test = set(task["train"][0]), set(task["test"][0])
    assert (
        not train & test
        and not train & set(task["heldout"])
        and not set(task["calib"]) & set(task["heldout"])
    )
    assert set(task["test"][0]) <= set(task["heldout"]) and len(task["calib"]) == 32
    assert int(task["train"][1].max()) == 3 and len(task["train"][0]) + len(task["test"][0]) == sum(
        counts[t] for t in task["topics"]
    )
    topic_of = dict(pairs)
    assert all(task["topics"][int(y)] == topic_of[s] for s, y in zip(*task["train"]))


def test_vocab_bytes_counts_the_tables_with_the_vocabulary_as_first_dim(tmp_path):
    from netcompress.export import export_onnx

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(50, 8)
            self.fc = nn.Linear(8, 3)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.fc(self.emb(ids).mean(1))

    export_onnx(Tiny().eval(), tmp_path / "t.onnx", torch.randint(0, 50, (2, 5)))
    assert lm.vocab_bytes(tmp_path / "t.onnx", 50) == 50 * 8 * 4
    assert lm.vocab_bytes(tmp_path / "t.onnx", 51) == 0


def test_targets_pass_and_fail_on_the_stated_bounds():
    dyn = {"b1_rel": 0.5, "b32_rel": 0.76, "agreement": 0.99, "bytes": 1000, "bytes_wo_vocab": 500}
    rows = {
        "netcompress dynamic int8": dyn,
        "netcompress 4-bit gptq (MatMulNBits, block 64)": {"bytes": 600, "bytes_wo_vocab": 290},
    }
    verdicts = [ok for _, _, ok in lm.targets(rows)]
    assert verdicts == [False, True, True, True]  # b32 at 76% fails; 0.600x and 0.580x pass
    dyn["b32_rel"], dyn["agreement"] = 0.75, 0.989
    rows["netcompress 4-bit gptq (MatMulNBits, block 64)"]["bytes"] = 601
    assert [ok for _, _, ok in lm.targets(rows)] == [True, False, False, True]


@pytest.mark.slow
def test_quick_run_has_every_row_with_its_integer_kernels():
    pytest.importorskip("transformers")
    args = argparse.Namespace(
        quick=True, classes=4, calib=16, length=16, heldout=0, block_size="32", rounding="nearest", variants="",
        rounds=1, threads=1, seed=0,
    )  # fmt: skip
    rows = lm.run(args)["rows"]
    assert list(rows) == [
        "ORT float",
        "netcompress dynamic int8",
        "ORT quantize_dynamic",
        "netcompress 4-bit nearest (MatMulNBits, block 32)",
    ]
    # 2 layers x 6 Linears + the head
    assert rows["netcompress 4-bit nearest (MatMulNBits, block 32)"]["int_ops"] == {"MatMulNBits": 13}
    dyn = rows["netcompress dynamic int8"]["int_ops"]
    assert dyn.get("DynamicQuantizeMatMul", 0) + dyn.get("MatMulIntegerToFloat", 0) == 13
    assert rows["ORT float"]["agreement"] == 1.0 and rows["netcompress dynamic int8"]["check"] < 0.05
