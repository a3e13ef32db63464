"""recipes/minilm_sentence_encoder.yaml: validated as shipped, and run end to end on a tiny BERT folder
(random weights, a small WordPiece vocabulary) in place of the real MiniLM."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import netcompress as nc
from netcompress.core.errors import ConfigError
from netcompress.data.sentences import python_doc_sentences
from netcompress.recipes.schema import apply_overrides, load_recipe_file, resolve_recipe

transformers = pytest.importorskip("transformers")

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "minilm_sentence_encoder.yaml"


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A BERT with a 300-word vocabulary taken from the corpus, saved with its tokenizer."""
    folder = tmp_path_factory.mktemp("tiny_encoder")
    words: dict[str, None] = {}
    for sentence in python_doc_sentences()[:400]:
        for word in sentence.lower().replace(".", " ").replace(",", " ").split():
            words.setdefault(word, None)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *list(words)[:295]]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    transformers.BertTokenizer(str(folder / "vocab.txt")).save_pretrained(str(folder))
    torch.manual_seed(0)
    config = transformers.BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=len(vocab),
        max_position_embeddings=64,
    )
    transformers.BertModel(config).save_pretrained(str(folder))
    return folder


def _tiny(raw: dict, folder: Path, out: Path) -> list[str]:
    path = str(folder)
    return [
        f"model.kwargs={{path: {path}}}",
        "data.package=null",
        f"data.path={path}",
        "data.max_length=16",
        "data.val=16",
        "data.test=24",
        "data.train_subset=64",
        "data.batch_size=16",
        "data.calib_batches=2",
        "steps.1.epochs=1",
        f"steps.1.teacher.kwargs={{path: {path}}}",
        "evaluate.latency=false",
        f"output={out}",
    ]


def test_the_shipped_recipe_validates():
    raw = load_recipe_file(RECIPE)
    resolved = resolve_recipe({k: v for k, v in raw.items() if k != "profiles"})
    assert resolved["model"]["factory"] == "netcompress.models.hugging_face:pretrained"
    assert resolved["data"]["name"] == "sentences" and resolved["data"]["test"] == 512
    assert [(s["op"], s["method"]) for s in resolved["steps"]] == [
        ("prune", "transformer"),
        ("distill", "embedding"),
        ("quantize", "ptq_dynamic"),
    ]
    assert resolved["steps"][2]["embeddings"] == "int8"
    quick = resolve_recipe(
        apply_overrides({k: v for k, v in raw.items() if k != "profiles"}, raw["profiles"]["quick"])
    )
    assert quick["data"]["train_subset"] == 320 and quick["steps"][1]["epochs"] == 1
    with pytest.raises(ConfigError, match="exactly one of 'path'"):
        resolve_recipe({**{k: v for k, v in raw.items() if k != "profiles"}, "data": {"name": "sentences"}})


@pytest.mark.slow
def test_the_recipe_runs_on_a_tiny_encoder_and_measures_embeddings(tiny_folder, tmp_path):
    raw = load_recipe_file(RECIPE)
    result = nc.run_recipe(
        RECIPE, overrides=_tiny(raw, tiny_folder, tmp_path), out_dir=tmp_path / "run", progress=False
    )
    names = [s["name"] for s in result.stages]
    assert len(names) == 4  # initial + the three steps
    initial, pruned, distilled, quantized = result.stages
    # the initial model is the reference itself
    assert initial["cosine_mean"] == pytest.approx(1.0, abs=1e-5) and initial["nn_agreement"] == 1.0
    assert initial["accuracy_metric"] == "nn_agreement" and initial["accuracy"] == initial["nn_agreement"]
    # a random tiny BERT's pooled embeddings are nearly collinear, so the figures stay close to 1; what is
    # checked is that each stage is measured against the original's embeddings of the test sentences
    for stage in (pruned, distilled, quantized):
        assert 0.9 < stage["cosine_min"] <= stage["cosine_mean"] < 1.0
        assert stage["accuracy"] == stage["nn_agreement"] and stage["split"] == "test"
    assert pruned["params"] < initial["params"] and quantized["stored_bytes"] < pruned["size_bytes"]
    steps = result.steps
    assert steps[0]["summary"]["mac_reduction"] > 1.3
    assert "val_cosine_mean_after" in steps[1]["summary"]
    assert steps[2]["summary"]["embeddings"]["layers"][0] == "embeddings.word_embeddings"


def test_the_test_split_carries_the_original_encoders_embeddings(tiny_folder):
    from netcompress.evaluation.embeddings import embed
    from netcompress.models.hugging_face import pretrained

    bundle = nc.data.load("sentences", path=str(tiny_folder), max_length=16, val=8, test=12, train_subset=20)
    assert bundle.split_sizes() == {"train": 20, "val": 8, "test": 12} and bundle.info["task"] == "embedding"
    inputs, reference = bundle.test[3]
    assert set(inputs) == {"input_ids", "attention_mask"} and reference.shape == (32,)
    assert set(bundle.train[0]) == {"input_ids", "attention_mask"}  # unlabelled: distillation trains on it
    batch = {k: v.unsqueeze(0) for k, v in inputs.items()}
    assert torch.allclose(embed(pretrained(path=str(tiny_folder)), [batch])[0], reference, atol=1e-5)
