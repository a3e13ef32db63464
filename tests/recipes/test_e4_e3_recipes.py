"""E3/E4 recipes say what the experiments need: held-out speakers, per-layer QAT bits, the byte budget."""

from __future__ import annotations

from pathlib import Path

import torch

from netcompress.data.fsdd import FsddConfig
from netcompress.models.sincnet import sincnet
from netcompress.quantization.qat import QATConfig, build_qat_model, qat_summary
from netcompress.recipes import load_recipe_file

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
DATA_ONLY = ("name", "batch_size", "calib_batches")


def _recipe(name: str) -> dict:
    return load_recipe_file(RECIPES / name)


def test_e4_recipes_hold_out_a_speaker() -> None:
    for name in ("e4_sincnet_pruning.yaml", "e4_sincnet_qat.yaml"):
        data = _recipe(name)["data"]
        config = FsddConfig.from_dict({k: v for k, v in data.items() if k not in DATA_ONLY}, where=name)
        assert config.split == "speakers" and config.test_speakers == ["george"], name


def test_e4_qat_recipe_bits_per_layer() -> None:
    step = _recipe("e4_sincnet_qat.yaml")["steps"][1]
    config = QATConfig.from_dict(
        {k: v for k, v in step.items() if k not in ("op", "method", "label")}, where="steps[1]"
    )
    torch.manual_seed(0)
    model = sincnet(num_filters=8, channels=(16, 16, 16), kernel_sizes=(5, 3, 3))
    batch = (torch.randn(4, 1, 800), torch.zeros(4, dtype=torch.long))
    qmodel = build_qat_model(model, config, calib_loader=[batch])
    layers = qat_summary(qmodel)["layers"]
    weight_bits = {name: entry["weight_bits"] for name, entry in layers.items()}
    assert weight_bits == {
        "frontend.sinc": 7,
        **{f"blocks.{i}.{part}": 4 for i in range(3) for part in ("depthwise", "pointwise")},
        "fc": 8,
    }
    acts = {name: q.bits for name, q in qmodel.act_quant.named_children()}
    assert acts == {
        # after the front end (input of the first block) and the first depthwise output: 8 bits
        "blocks_0_depthwise_in": 8,
        "blocks_0_depthwise_out": 8,
        "blocks_0_pointwise_out": 4,
        **{f"blocks_{i}_{part}_out": 4 for i in (1, 2) for part in ("depthwise", "pointwise")},
        **{f"blocks_{i}_depthwise_in": 4 for i in (1, 2)},
        "fc_in": 8,  # before the classifier
        "fc_out": 8,
    }


def test_e3_budget_recipe_asks_for_300000_bytes() -> None:
    step = _recipe("e3_quantize_under_budget.yaml")["steps"][1]
    assert (step["op"], step["method"], step["budget_bytes"]) == ("quantize", "mixed_precision", 300000)
