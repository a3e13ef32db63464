"""Models with several inputs (token ids + attention mask) as a tuple or a dict, everywhere."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.core.errors import ConfigError
from netcompress.evaluation import count_macs, layer_table, peak_activation_bytes, top1_accuracy
from netcompress.evaluation.latency import time_forward
from netcompress.export import OrtModel, export_onnx
from netcompress.pruning import recalibrate_bn, reconstruct_weights
from netcompress.pruning.channel import plan_channel_pruning
from netcompress.quantization.mixed_precision import layer_sensitivity

VOCAB, DIM, HIDDEN, CLASSES, SEQ = 50, 16, 32, 3, 12


class MaskedBag(nn.Module):
    """Mean of the unmasked token embeddings -> MLP; ``forward(ids, mask)``."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, DIM)
        self.fc1 = nn.Linear(DIM, HIDDEN)
        self.bn = nn.BatchNorm1d(HIDDEN)
        self.fc2 = nn.Linear(HIDDEN, CLASSES)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).float()
        h = (self.emb(ids) * m).sum(1) / m.sum(1).clamp(min=1.0)
        return self.fc2(torch.relu(self.bn(self.fc1(h))))


def _tokens(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (n, SEQ), generator=gen)
    mask = torch.ones(n, SEQ, dtype=torch.long)
    for i in range(n):
        mask[i, 4 + i % (SEQ - 4) :] = 0
    labels = ids[:, 0] % CLASSES  # learnable: the class is the first token's id mod 3
    return ids, mask, labels


def _loaders(form: str, batches: int = 4, batch: int = 16):
    out = []
    for b in range(batches):
        ids, mask, labels = _tokens(batch, seed=b)
        if form == "tuple":
            out.append(((ids, mask), labels))
        elif form == "dict":
            out.append(({"ids": ids, "mask": mask}, labels))
        else:  # Hugging Face style: one dict holding the labels
            out.append({"ids": ids, "mask": mask, "labels": labels})
    return out


def _example(form: str, n: int = 2):
    ids, mask, _ = _tokens(n, seed=99)
    return (ids, mask) if form == "tuple" else {"ids": ids, "mask": mask}


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    m = MaskedBag()
    nc.fit(m, _loaders("tuple"), config={"epochs": 2, "lr": 0.1, "progress": False})
    return m.eval()


FORMS = ["tuple", "dict", "hf"]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_quantize_calibrates_on_several_inputs(model, form, mode):
    loader = _loaders(form)
    q = nc.quantize(model, loader, mode=mode)
    ids, mask, _ = _tokens(8, seed=7)
    with torch.no_grad():
        ref, got = model(ids, mask), q(ids, mask)
    assert (ref - got).abs().max() < 0.25 * ref.abs().max()
    assert (ref.argmax(1) == got.argmax(1)).float().mean() >= 0.75
    assert not torch.equal(ref, got)  # it really is quantized


def test_static_calibration_results_agree_across_forms(model):
    ids, mask, _ = _tokens(8, seed=7)
    outs = [nc.quantize(model, _loaders(form))(ids, mask) for form in FORMS]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_mixed_precision_sensitivity_on_dict_batches(model):
    sens = layer_sensitivity(model, _loaders("hf"), bits_options=(2, 8), num_batches=2)
    assert set(sens) == {"fc1", "fc2"}  # BatchNorm folded into fc1
    assert all(s[2] > s[8] for s in sens.values())


@pytest.mark.parametrize("form", ["tuple", "dict"])
def test_measurements_take_several_inputs(model, form):
    x = _example(form, n=2)
    total, per_layer = count_macs(model, x)
    assert total == 2 * (DIM * HIDDEN + HIDDEN * CLASSES)
    assert per_layer == {"fc1": 2 * DIM * HIDDEN, "fc2": 2 * HIDDEN * CLASSES}
    rows = {r["name"]: r for r in layer_table(model, x)}
    assert rows["fc1"]["in_shape"] == [[2, DIM]] and rows["emb"]["in_shape"] == [[2, SEQ]]
    assert peak_activation_bytes(model, x) > 0
    stats = nc.profile(model, x, batch_sizes=(1, 4), repeats=2, rounds=1, warmup=0)
    assert stats["macs"] == DIM * HIDDEN + HIDDEN * CLASSES  # per sample
    assert time_forward(model, x, repeats=2, warmup=0)["repeats"] == 2


@pytest.mark.parametrize("form", FORMS)
def test_fit_evaluate_and_distill_on_several_inputs(model, form):
    student = MaskedBag()
    torch.manual_seed(1)
    history = nc.fit(student, _loaders(form), config={"epochs": 3, "lr": 0.1, "progress": False})
    assert history.rows[-1]["train_loss"] < history.rows[0]["train_loss"]
    assert nc.evaluate(student, _loaders(form))["num_samples"] == 64
    distilled = nc.distill(MaskedBag(), model, _loaders(form), epochs=1, lr=0.05, progress=False)
    assert 0.0 <= top1_accuracy(distilled, _loaders(form)) <= 1.0


def test_feature_distillation_probes_dict_inputs(model):
    from torch.utils.data import Dataset

    class Tokens(Dataset):
        def __init__(self) -> None:
            self.ids, self.mask, self.labels = _tokens(32, seed=5)

        def __len__(self) -> int:
            return 32

        def __getitem__(self, i: int):
            return {"ids": self.ids[i], "mask": self.mask[i], "labels": self.labels[i]}

    loader = torch.utils.data.DataLoader(Tokens(), batch_size=8)
    summary = nc.distill_(
        MaskedBag(),
        model,
        loader,
        epochs=1,
        lr=0.05,
        progress=False,
        feature_pairs={"fc1": "fc1"},
        feature_adapter="linear",
    )
    assert summary["epochs"] == 1


class GatedMLP(nn.Module):
    """``forward(x, gate)``: an MLP on ``x * gate`` (two float inputs; channel-prunable)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(DIM, HIDDEN)
        self.bn = nn.BatchNorm1d(HIDDEN)
        self.fc2 = nn.Linear(HIDDEN, CLASSES)

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.bn(self.fc1(x * gate))))


def _gated_batches(n: int = 3) -> list:
    gen = torch.Generator().manual_seed(3)
    return [
        (
            {"x": torch.randn(16, DIM, generator=gen), "gate": torch.rand(16, DIM, generator=gen)},
            torch.zeros(16),
        )
        for _ in range(n)
    ]


def test_pruning_helpers_run_several_inputs(model):
    pruned = nc.prune_unstructured(copy.deepcopy(model), amount=0.5)
    assert pruned["global_sparsity"] == pytest.approx(0.5, abs=0.02)
    summary = recalibrate_bn(copy.deepcopy(model), _loaders("hf"), num_batches=2)
    assert (summary["bn_layers"], summary["batches"], summary["samples"]) == (1, 2, 32)
    torch.manual_seed(0)
    gated = GatedMLP().eval()
    example = (torch.randn(4, DIM), torch.rand(4, DIM))
    small, info = nc.prune_to_target(gated, example, target="params", reduction=1.5)
    report = reconstruct_weights(
        small, gated, _gated_batches(), kept_indices=info["kept_indices"], num_batches=2
    )
    assert [row["name"] for row in report["layers"]] == ["fc1", "fc2"]
    assert report["layers"][-1]["error_after"] < report["layers"][-1]["error_before"]


def test_channel_tracer_refuses_dict_inputs_by_name():
    gated = GatedMLP().eval()
    with pytest.raises(ConfigError, match="channel tracer"):
        plan_channel_pruning(gated, {"x": torch.randn(2, DIM), "gate": torch.rand(2, DIM)}, ratio=0.25)
    plan = plan_channel_pruning(
        gated, (torch.randn(2, DIM), torch.rand(2, DIM)), ratio=0.25
    )  # a tuple traces
    assert plan.keep_indices()["fc1"] is not None


@pytest.mark.parametrize("form", ["tuple", "dict"])
def test_export_names_inputs_and_checks_dtypes(model, form, tmp_path):
    x = _example(form, n=2)
    summary = export_onnx(model, tmp_path / "m.onnx", x)
    names = ["input_0", "input_1"] if form == "tuple" else ["ids", "mask"]
    assert summary["input_names"] == names
    assert summary["dynamic_axes"][names[0]] == {"0": "batch", "1": "sequence"}
    assert summary["check"]["input_sets"] == ["example", "random batch of 8", "shorter sequence"]
    assert summary["check"]["max_rel_diff"] < 1e-4
    ids, mask, _ = _tokens(3, seed=11)
    ort = OrtModel(tmp_path / "m.onnx")
    got = ort(ids[:, :7], mask[:, :7]) if form == "tuple" else ort(ids=ids[:, :7], mask=mask[:, :7])
    with torch.no_grad():
        assert torch.allclose(got, model(ids[:, :7], mask[:, :7]), atol=1e-5)


def test_export_refuses_unknown_dynamic_axes_names(model, tmp_path):
    with pytest.raises(ConfigError, match="dynamic_axes names"):
        export_onnx(model, tmp_path / "m.onnx", _example("dict"), dynamic_axes={"tokens": {1: "sequence"}})
    summary = export_onnx(
        model, tmp_path / "fixed.onnx", _example("dict"), dynamic_axes={"ids": {}, "mask": {}}
    )
    assert summary["dynamic_axes"]["ids"] == {"0": "batch"}  # the user's axes: no sequence axis
    assert summary["check"]["input_sets"] == ["example", "random batch of 8"]


def test_profile_command_takes_named_inputs(tmp_path, capsys):
    from netcompress.cli.main import main

    factory = tmp_path / "bag.py"
    factory.write_text(
        "import torch\n\n"
        "class Bag(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.emb, self.fc = torch.nn.Embedding(50, 16), torch.nn.Linear(16, 3)\n\n"
        "    def forward(self, ids, mask):\n"
        "        return self.fc((self.emb(ids) * mask.unsqueeze(-1)).mean(1))\n\n"
        "def build():\n    return Bag()\n"
    )
    args = ["profile", f"{factory}:build", "--no-latency", "--input", f"ids=2,{SEQ}:int64"]
    assert main([*args, "--input", f"mask=2,{SEQ}:int64"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"│ macs\s+│\s+48 │", out)  # 16 x 3 MACs per sample
    assert main([*args, "--input", "mask=2,x"]) == 2
    assert "NAME=SHAPE" in capsys.readouterr().err


class KeywordMLP(nn.Module):
    """A chain called by keyword: ``model(features=x)`` (a dict batch ``{"features": x}``)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(DIM, HIDDEN)
        self.fc2 = nn.Linear(HIDDEN, CLASSES)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(features)))


def test_neuron_statistics_refuse_dict_inputs_naming_the_tracer():
    """Neuron pruning runs on the fx channel graph, which takes positional inputs only: a dict is refused by name."""
    from netcompress.pruning.neuron import neuron_statistics

    batches = [({"features": torch.randn(16, DIM)}, torch.zeros(16)) for _ in range(2)]
    with pytest.raises(
        ConfigError, match="torch.fx channel tracer .* not a dict \\(keys \\['features'\\]\\)"
    ):
        neuron_statistics(KeywordMLP(), batches)
    groups, stats = neuron_statistics(KeywordMLP(), [(b[0]["features"], b[1]) for b in batches])
    assert len(stats) == 1 and float(next(iter(stats.values())).count.max()) == 32
