"""E3's byte budget, checked on the file: size of model.ncq, per-layer bits, test accuracy of the model read back.

Reads a finished run of ``recipes/e3_quantize_under_budget.yaml``: the quantize step's ``model.ncq`` is
loaded into a template whose weights were zeroed first (so every weight the model computes with comes
from the file), then evaluated on the run's test split.

    python benchmarks/e3_budget_file.py runs/e3_quantize_under_budget
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import yaml

import netcompress.data as ncd
from netcompress.core.io import load_checkpoint
from netcompress.evaluation.metrics import evaluate
from netcompress.quantization.storage import load_quantized
from netcompress.recipes.schema import LOADER_KEYS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="run folder of recipes/e3_quantize_under_budget.yaml")
    parser.add_argument("--budget", type=int, default=300_000)
    args = parser.parse_args()
    step = next(p for p in sorted((args.run / "steps").iterdir()) if "mixed_precision" in p.name)
    ncq = step / "model.ncq"
    size = ncq.stat().st_size
    template = load_checkpoint(step / "model.pt")
    with torch.no_grad():
        for name, p in template.named_parameters():
            if name.endswith("weight"):
                p.zero_()
    model = load_quantized(ncq, template).eval()
    recipe = yaml.safe_load((args.run / "recipe.yaml").read_text())
    data = {k: v for k, v in recipe["data"].items() if k not in (*LOADER_KEYS, "name")}
    bundle = ncd.load(recipe["data"]["name"], **data)
    _, test = bundle.loaders(batch_size=256, eval_batch_size=256)
    result = evaluate(model, test)
    bits = json.loads((step / "summary.json").read_text())["bits"]
    print(json.dumps({"file": str(ncq), "file_bytes": size, "under_budget": size <= args.budget}))
    print(json.dumps({"test_accuracy_from_file": result["accuracy"], "num_samples": result["num_samples"]}))
    print(json.dumps({"bits": bits}))


if __name__ == "__main__":
    main()
