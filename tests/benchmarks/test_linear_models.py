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
    dyn = {
        "b1_rel": 0.5, "b32_rel": 0.76, "agreement": 0.99, "bytes": 1000, "bytes_wo_vocab": 500,
        "embeddings": "float",
    }  # fmt: skip
    four = "netcompress 4-bit gptq (MatMulNBits, block 64), float embeddings"
    rows = {
        "netcompress dynamic int8, float embeddings": dyn,
        four: {"bytes": 600, "bytes_wo_vocab": 290, "embeddings": "float"},
    }
    verdicts = [ok for _, _, ok in lm.targets(rows)]
    assert verdicts == [False, True, True, True]  # b32 at 76% fails; 0.600x and 0.580x pass
    dyn["b32_rel"], dyn["agreement"] = 0.75, 0.989
    rows[four]["bytes"] = 601
    assert [ok for _, _, ok in lm.targets(rows)] == [True, False, False, True]


def test_targets_compare_quantized_tables_with_the_int8_table_file():
    float_dyn = {"b1_rel": 0.5, "b32_rel": 0.5, "agreement": 1.0, "bytes": 1000, "bytes_wo_vocab": 500}
    rows = {
        "netcompress dynamic int8, float embeddings": {**float_dyn, "embeddings": "float"},
        "netcompress dynamic int8, int8 embeddings": {**float_dyn, "bytes": 700, "embeddings": "int8"},
        "ORT quantize_dynamic": {"bytes": 10, "bytes_wo_vocab": 10, "embeddings": "int8"},
        "netcompress 4-bit gptq, float embeddings": {
            "bytes": 650,
            "bytes_wo_vocab": 300,
            "embeddings": "float",
        },
        "netcompress 4-bit gptq, int4 embeddings": {
            "bytes": 420,
            "bytes_wo_vocab": 301,
            "embeddings": "int4",
        },
    }
    measured = {t: (m, ok) for t, m, ok in lm.targets(rows)}
    versus_float, versus_int8 = "the int8 file with float tables", "the int8 file with int8 (Gather) tables"
    assert measured[f"netcompress 4-bit gptq, float embeddings: whole file <= 0.6x {versus_float}"] == (
        "0.650x",
        False,
    )
    assert measured[f"netcompress 4-bit gptq, int4 embeddings: whole file <= 0.6x {versus_int8}"] == (
        "0.600x",
        True,
    )
    assert measured[
        f"netcompress 4-bit gptq, int4 embeddings: file w/o the vocab table <= 0.6x {versus_int8}"
    ] == (
        "0.602x",
        False,
    )
    assert len(measured) == 6  # ORT's row is a peer, never a 4-bit row's reference


def test_variants_name_the_embedding_tables():
    assert lm.parse_variant("gptq:64") == ("gptq", 64, "float", None)
    assert lm.parse_variant("nearest:32:int4:64") == ("nearest", 32, "int4", 64)
    assert lm.table_label("int4", None) == "int4 (GatherBlockQuantized, block 32) embeddings"
    assert lm.table_label("int8", None) == "int8 (Gather) embeddings"


@pytest.mark.slow
def test_quick_run_has_every_row_with_its_integer_kernels():
    pytest.importorskip("transformers")
    args = argparse.Namespace(
        quick=True, classes=4, calib=16, length=16, heldout=0, block_size="32", rounding="nearest",
        rounds=1, threads=1, seed=0, variants="nearest:32,nearest:32:int4", dynamic_embeddings="float,int8",
    )  # fmt: skip
    rows = lm.run(args)["rows"]
    four = "netcompress 4-bit nearest (MatMulNBits, block 32)"
    assert list(rows) == [
        "ORT float",
        "netcompress dynamic int8, float embeddings",
        "netcompress dynamic int8, int8 (Gather) embeddings",
        "ORT quantize_dynamic",
        f"{four}, float embeddings",
        f"{four}, int4 (GatherBlockQuantized, block 32) embeddings",
    ]
    # 2 layers x 6 Linears + the head; word, position and token-type tables
    assert rows[f"{four}, float embeddings"]["int_ops"] == {"MatMulNBits": 13}
    assert rows[f"{four}, int4 (GatherBlockQuantized, block 32) embeddings"]["int_ops"] == {
        "MatMulNBits": 13,
        "GatherBlockQuantized": 3,
    }
    for tables in ("float embeddings", "int8 (Gather) embeddings"):
        dyn = rows[f"netcompress dynamic int8, {tables}"]
        assert (
            dyn["int_ops"].get("DynamicQuantizeMatMul", 0) + dyn["int_ops"].get("MatMulIntegerToFloat", 0)
            == 13
        )
        assert dyn["check"] < 0.05
    assert rows["netcompress dynamic int8, int8 (Gather) embeddings"]["int_ops"]["int8 Gather"] == 3
    assert rows["ORT float"]["agreement"] == 1.0
