"""benchmarks/minilm_compressed.py (and the helpers it takes from transformers_distill.py): corpus, chunked length-bucketed sampling, trimming, the time budget,
and the prune -> distill (interrupted and resumed) -> final stages on a tiny BERT."""

from __future__ import annotations

import importlib
import textwrap

import pytest
import torch

bench = importlib.import_module("benchmarks.minilm_compressed")  # on sys.path: see conftest.py
td = importlib.import_module("benchmarks.transformers_distill")  # the corpus, sampler and hooks it uses


def test_docstring_sentences_reads_prose_without_importing(tmp_path):
    (tmp_path / "mod.py").write_text(
        textwrap.dedent(
            '''
            """This module docstring has one long enough sentence for the corpus. Short one.

            Another sentence that is long enough to be kept here. This has `markup` so it goes away.
            """
            raise SystemExit("never imported")

            def f():
                """This module docstring has one long enough sentence for the corpus."""

            class C:
                """lower-case starts are dropped even when they are long enough."""
            '''
        )
    )
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "t.py").write_text(
        '"""A sentence in a test folder that is long enough to count."""\n'
    )
    assert td.docstring_sentences(tmp_path) == [
        "This module docstring has one long enough sentence for the corpus.",
        "Another sentence that is long enough to be kept here.",
    ]


def test_corpus_training_part_never_holds_a_held_out_sentence(monkeypatch):
    plain = td.split_sentences(td.python_doc_sentences(), val=256, test=512, seed=0)
    extra = [
        "A docstring sentence that appears nowhere in the documentation topics.",
        plain["test"][3],
        plain["val"][0],
    ]
    monkeypatch.setattr(td, "docstring_sentences", lambda: extra)
    parts = td.corpus()
    assert {k: parts[k] for k in ("test", "val")} == {
        k: plain[k] for k in ("test", "val")
    }  # minilm_int8.py's split
    assert parts["train"] == plain["train"] + extra[:1]


def test_chunk_sampler_covers_a_pass_once_in_length_sorted_batches():
    lengths = [int(x) for x in torch.randint(3, 60, (100,), generator=torch.Generator().manual_seed(1))]
    sampler = td.ChunkSampler(lengths, chunk=40, batch_size=8, seed=3)
    assert (sampler.chunks, len(sampler)) == (2, 40)
    seen = []
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert order == list(sampler)  # the same epoch draws the same batches (resume)
        batches = [order[i : i + 8] for i in range(0, 40, 8)]
        spans = sorted((min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in batches)
        assert all(hi <= lo for (_, hi), (lo, _) in zip(spans, spans[1:]))  # non-overlapping length ranges
        seen += order
    assert len(set(seen)) == 80  # two chunks of one pass are disjoint
    sampler.set_epoch(2)  # the next pass re-draws the permutation
    assert list(sampler) != seen[:40]


def test_neighbour_sampler_groups_teacher_neighbours_within_the_chunk_sampler_chunks():
    # 4 well separated clusters of 10 points; 100 sentences
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=g) * 5
    labels = torch.arange(100) % 4
    emb = centres[labels] + 0.1 * torch.randn(100, 16, generator=g)
    lengths = [int(x) for x in torch.randint(3, 60, (100,), generator=g)]
    plain = td.ChunkSampler(lengths, chunk=40, batch_size=8, seed=3)
    near = td.NeighbourChunkSampler(lengths, emb, chunk=40, batch_size=8, group=4, seed=3)
    for epoch in (0, 1, 2):
        plain.set_epoch(epoch)
        near.set_epoch(epoch)
        order = list(near)
        assert order == list(near) and sorted(order) == sorted(plain)  # same sentences, resumable
        groups = [order[i : i + 4] for i in range(0, 40, 4)]
        # greedy grouping inside 40 random points of 4 clusters: at most 4 groups (one per cluster) mix
        mixed = sum(len({int(labels[i]) for i in grp}) > 1 for grp in groups)
        assert mixed <= 4
        random_groups = [sorted(plain)[i : i + 4] for i in range(0, 40, 4)]
        assert mixed < sum(len({int(labels[i]) for i in grp}) > 1 for grp in random_groups)
    # the first sentence's group holds its 3 most similar sentences of the chunk
    picked = list(range(40))
    first = near.groups(picked)[0]
    sims = torch.nn.functional.normalize(emb[:40], dim=1) @ torch.nn.functional.normalize(emb[0], dim=0)
    assert set(first[1:]) == set(sims[1:].topk(3).indices.add(1).tolist())
    with pytest.raises(ValueError, match="divide"):
        td.NeighbourChunkSampler(lengths, emb, chunk=40, batch_size=8, group=3)
    with pytest.raises(ValueError, match="embeddings"):
        td.NeighbourChunkSampler(lengths, emb[:50], chunk=40, batch_size=8, group=4)


def test_trim_batch_cuts_padding_and_keeps_embeddings():
    transformers = pytest.importorskip("transformers")
    model = _tiny_bert(transformers)
    ids = torch.randint(5, 99, (3, 16))
    mask = torch.zeros(3, 16, dtype=torch.long)
    mask[0, :5], mask[1, :9], mask[2, :2] = 1, 1, 1
    batch = {"input_ids": ids * mask, "attention_mask": mask}
    trimmed = td.trim_batch(batch)
    assert trimmed["input_ids"].shape == (3, 9)
    full = td.embed(model, [batch])
    assert torch.allclose(td.embed(model, [trimmed]), full, atol=1e-5)


def test_time_budget_stops_before_a_chunk_that_would_overrun():
    clock = iter([0.0, 10.0, 40.0, 75.0, 100.0])
    budget = td.TimeBudget(2.0, clock=lambda: next(clock))  # deadline 120 s
    budget.epoch_start(None, 0)  # t 10
    budget.epoch_start(None, 1)  # t 40: longest 30, 70 <= 120
    budget.epoch_start(None, 2)  # t 75: longest 35, 110 <= 120
    with pytest.raises(td.BudgetReached, match="chunk 3"):
        budget.epoch_start(None, 3)  # t 100: 135 > 120
    probe = td.TimeBudget(60.0, stop_at=2)
    probe.epoch_start(None, 0)
    probe.epoch_start(None, 1)
    with pytest.raises(td.BudgetReached, match="chunk 2"):
        probe.epoch_start(None, 2)


class _Tokenizer:
    """Words -> ids 5..98, [CLS]=2 ... [SEP]=3, padded with 0: what TokenizedSentences calls."""

    def __call__(self, sentences, *, padding, truncation, max_length, return_tensors):
        ids = torch.zeros(len(sentences), max_length, dtype=torch.long)
        for row, text in enumerate(sentences):
            words = [2] + [5 + sum(map(ord, w)) % 94 for w in text.split()][: max_length - 2] + [3]
            ids[row, : len(words)] = torch.tensor(words)
        return {"input_ids": ids, "attention_mask": (ids > 0).long()}


def _tiny_bert(transformers):
    torch.manual_seed(0)
    config = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40, vocab_size=99
    )
    return transformers.BertModel(config, add_pooling_layer=False).eval()


def _parts():
    g = torch.Generator().manual_seed(0)
    words = [f"w{i}" for i in range(300)]

    def sentence():
        n = int(torch.randint(3, 14, (1,), generator=g))
        return " ".join(words[int(i)] for i in torch.randint(0, 300, (n,), generator=g))

    return {
        "train": [sentence() for _ in range(192)],
        "val": [sentence() for _ in range(32)],
        "test": [sentence() for _ in range(32)],
    }


def test_stages_prune_distill_resume_final_on_a_tiny_bert(tmp_path, monkeypatch, capsys):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("onnxruntime")
    teacher, tok, parts = _tiny_bert(transformers), _Tokenizer(), _parts()

    def args(stage, out, *extra):
        return bench.build_parser().parse_args([stage, "--out", str(out), "--threads", "1", *extra])

    common = ["--chunk", "64", "--chunks", "3", "--lr", "1e-3", "--warmup", "0"]
    bench.stage_prune(
        args(
            "prune", tmp_path, "--calib", "64", "--candidates", "magnitude,wanda+rec", "--max-params", "0.7"
        ),
        teacher,
        tok,
        parts,
    )
    chosen = __import__("json").loads((tmp_path / "prune.json").read_text())
    assert [r["candidate"] for r in chosen["rows"]] == ["magnitude", "wanda+rec"]
    assert all(0.5 < r["encoder_params_ratio"] <= 0.7 for r in chosen["rows"])
    best = max(chosen["rows"], key=lambda r: r["cosine_mean"])
    assert chosen["chosen"]["candidate"] == best["candidate"]

    # uninterrupted vs stopped after one chunk (a fake clock: 60 s a call, budget 1.5 min) then resumed
    once = tmp_path / "once"
    once.mkdir()
    (once / "pruned.nc").write_bytes((tmp_path / "pruned.nc").read_bytes())
    bench.stage_distill(args("distill", once, *common), teacher, tok, parts)
    ticks = iter(range(0, 10**6, 60))
    real_budget = bench.TimeBudget
    monkeypatch.setattr(
        bench,
        "TimeBudget",
        lambda minutes, stop_at: real_budget(minutes, clock=lambda: float(next(ticks)), stop_at=stop_at),
    )
    bench.stage_distill(args("distill", tmp_path, *common, "--max-minutes", "1.5"), teacher, tok, parts)
    assert "1/3 chunks" in capsys.readouterr().out
    monkeypatch.setattr(bench, "TimeBudget", real_budget)
    bench.stage_distill(args("distill", tmp_path, *common), teacher, tok, parts)
    assert "3/3 chunks" in capsys.readouterr().out
    run = bench.run_name(args("distill", tmp_path, *common))
    resumed = bench.nc.load(
        tmp_path / run / "student.nc", allow_modules=bench.allowed_modules(teacher)
    ).state_dict()
    straight = bench.nc.load(
        once / run / "student.nc", allow_modules=bench.allowed_modules(teacher)
    ).state_dict()
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)
    pruned = bench.nc.load(tmp_path / "pruned.nc", allow_modules=bench.allowed_modules(teacher)).state_dict()
    assert not torch.equal(
        resumed["encoder.layer.0.output.dense.weight"], pruned["encoder.layer.0.output.dense.weight"]
    )
    assert torch.equal(
        resumed["embeddings.word_embeddings.weight"], pruned["embeddings.word_embeddings.weight"]
    )

    split = [
        "--split-layers",
        r"re:encoder\.layer\.0\.output\.dense",
        "--outlier-channels",
        "2",
        "--calib",
        "64",
        "--ffn-split",
        r"2:re:encoder\.layer\.1\.output\.dense",
        "--outlier-scale",
        r"2:re:encoder\.layer\.\d+\.intermediate\.dense",
    ]
    bench.stage_final(
        args("final", tmp_path, *common, "--rounds", "1", "--json", str(tmp_path / "f.json"), *split),
        teacher,
        tok,
        parts,
    )
    rows = __import__("json").loads((tmp_path / "f.json").read_text())["rows"]
    assert rows["ORT float"]["cosine_mean"] > 0.999 and rows["ORT float"]["speedup"] == 1.0
    int8 = rows["student int8 (ORT)"]
    assert int8["int_ops"] and int8["bytes"] < rows["student float (ORT)"]["bytes"]
    assert abs(int8["cosine_mean"] - rows["PyTorch pruned + distilled"]["cosine_mean"]) < 0.05
    split_row = rows["student int8, outlier split k=2 on 1 layers (ORT)"]
    assert split_row["int_ops"] and split_row["speedup"] > 0
    ffn_row = rows["student int8, FFN split k=2 on 1 FFNs, 2 outlier channels scaled on 2 Linears (ORT)"]
    assert ffn_row["int_ops"] and ffn_row["speedup"] > 0
    assert abs(ffn_row["cosine_mean"] - rows["PyTorch pruned + distilled"]["cosine_mean"]) < 0.05


def test_site_corpus_drops_held_out_and_training_sentences_and_caches(tmp_path, monkeypatch):
    import netcompress.data.text_corpus as tc

    parts = {"train": ["Train sentence one."], "val": ["Val sentence."], "test": ["Test sentence."]}
    found = ["Val sentence.", "New one.", "Test sentence.", "Train sentence one.", "New two.", "New three."]
    calls = []
    monkeypatch.setattr(tc, "source_sentences", lambda roots: calls.append(roots) or list(found))
    cache = tmp_path / "cache" / "site.json"
    got = bench.site_corpus(parts, 2, cache, seed=0)
    assert len(got) == 2 and set(got) <= {"New one.", "New two.", "New three."}
    assert bench.site_corpus(parts, 10, cache, seed=0)[:2] == got  # seeded; the cache is read, not rebuilt
    assert len(calls) == 1 and cache.exists()
    assert sorted(bench.site_corpus(parts, 10, cache, seed=0)) == ["New one.", "New three.", "New two."]


def test_parse_candidate_head_dims():
    assert bench.parse_candidate("wanda+rec@0:0.5:0.5") == {
        "importance": "wanda", "reconstruct": True, "global": False, "heads": 0.0, "ffn": 0.5, "qk": 0.5, "v": 0.0,
    }  # fmt: skip
    assert bench.parse_candidate("wanda@0.25:0.5")["qk"] == 0.0
    with pytest.raises(SystemExit, match="head-dim shares"):
        bench.parse_candidate("wanda+global@0:0.5:0.5")


def test_distill_with_the_tail_term_and_neighbour_batches_on_a_tiny_bert(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    teacher, tok, parts = _tiny_bert(transformers), _Tokenizer(), _parts()

    def args(stage, *extra):
        return bench.build_parser().parse_args([stage, "--out", str(tmp_path), "--threads", "1", *extra])

    bench.stage_prune(args("prune", "--calib", "64", "--candidates", "magnitude", "--max-params", "0.7"), teacher, tok, parts)
    flags = ["--chunk", "64", "--chunks", "2", "--lr", "1e-3", "--warmup", "0", "--tail-weight", "2",
             "--tail-power", "3", "--tail-top-k", "8", "--neighbour-groups", "4", "--bank-weight", "1.5",
             "--bank-size", "16"]  # fmt: skip
    bench.stage_distill(args("distill", *flags), teacher, tok, parts)
    run = bench.run_name(args("distill", *flags))
    assert run.endswith("-tail2p3k8-nb4-bank1.5m16")
    rows = __import__("json").loads((tmp_path / run / "history.json").read_text())["rows"]
    assert len(rows) == 2 and all(r["tail_loss"] > 0 and r["bank_loss"] > 0 for r in rows)
    assert "2/2 chunks" in capsys.readouterr().out
    # the teacher's training embeddings are cached beside the runs and reused
    (cached,) = tmp_path.glob("teacher-train-*.pt")
    found = torch.load(cached, weights_only=True)
    # computed length-sorted and trimmed, returned in the sentences' order: the plain padded embeddings
    assert torch.allclose(found, td.embed(teacher, bench.loader(parts["train"], tok)), atol=1e-5)
