"""End to end: a recipe trains and compresses a model on an image folder of mixed sizes, no split folders."""

from __future__ import annotations

import json

import torch

from netcompress.core.io import load_checkpoint
from netcompress.recipes import run_recipe


def test_image_folder_recipe_trains_prunes_and_quantizes(tmp_path, image_folder_writer):
    image_folder_writer(tmp_path / "photos", {"cat": 12, "dog": 12, "emu": 12})
    recipe = {
        "name": "own_images",
        "seed": 0,
        "model": {"name": "cifar_vgg", "cfg": [8, "M", 16, "M"], "in_channels": 3},
        "data": {
            "name": "image_folder",
            "root": str(tmp_path / "photos"),
            "image_size": 16,
            "test_fraction": 0.25,
            "cache_dir": str(tmp_path / "cache"),
            "batch_size": 8,
            "calib_batches": 2,
        },
        "steps": [
            {"op": "train", "method": "supervised", "epochs": 1, "lr": 0.05, "progress": False},
            {"op": "prune", "method": "channel", "ratio": 0.5},
            {"op": "quantize", "method": "ptq_static", "bits": 8},
        ],
        "evaluate": {"latency": False},
        "report": {"plots": False},
    }
    result = run_recipe(recipe, out_dir=tmp_path / "run", progress=False)
    names = [stage["name"] for stage in result.stages]
    assert names == ["initial", "train/supervised", "prune/channel", "quantize/ptq_static"]
    params = [stage["params"] for stage in result.stages]
    assert params[2] < params[1] == params[0]  # channel pruning removed parameters physically
    # 3 classes, 27 training images after a 25% test split (3 per class), 3 of them held out for validation
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["splits"]["sizes"] == {"train": 24, "val": 3, "test": 9}
    assert all(0.0 <= stage["accuracy"] <= 1.0 for stage in result.stages)
    model = load_checkpoint(
        result.run_dir / "steps" / "03-quantize-ptq_static" / "model.pt"
    )  # signed by the run
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 3)
