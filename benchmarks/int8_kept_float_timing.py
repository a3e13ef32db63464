"""Task Q (session 16): the narrow VGG joint plan's int8 file (float features.0 / .7 / .14 / classifier) before
the fix (ONNX Runtime's WeightBiasQuantization made .7 / .14 per-tensor int8: 6 QLinearConv) and after (4), with
the fp32 file as the peer: ORT batch 64, 1 thread, interleaved rounds. Random weights (non-zero biases): the
timing does not depend on them.

    PYTHONPATH=. nice -n 19 python benchmarks/int8_kept_float_timing.py --out /tmp/q16
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

import netcompress as nc
import netcompress.export.onnx as eo
from netcompress.evaluation.latency import time_rounds
from netcompress.export.ort_model import OrtModel
from netcompress.pruning.latency_joint import int8_model

PLAN_FLOAT = ["features.0", "features.7", "features.14", "classifier"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/int8_kept_float")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nc.models.create("cifar_vgg", cfg="narrow", num_classes=10).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.normal_(0, 0.1)
    x = torch.randn(64, 3, 32, 32)
    qmodel = int8_model(model, [x[:8]], PLAN_FLOAT)
    after = eo.export_onnx(qmodel, out / "after.onnx", x[:8], int8=True, check=True)
    keep = eo.keep_float_layers
    eo.keep_float_layers = lambda raw, final: {"kept_float": [], "warning": None}  # the path before the fix
    before = eo.export_onnx(qmodel, out / "before.onnx", x[:8], int8=True, check=True)
    eo.keep_float_layers = keep
    eo.export_onnx(model, out / "fp32.onnx", x[:8], check=True)
    print("after", after["int8_op_counts"], after["kept_float"], after["check"]["max_abs_diff"])
    print("before", before["int8_op_counts"], before["check"]["max_abs_diff"])
    models = {name: OrtModel(out / f"{name}.onnx") for name in ("before", "after", "fp32")}
    times = time_rounds(models, x, batch_sizes=(64,), rounds=args.rounds, repeats=10, warmup=3, threads=1)
    for name, by_batch in times.items():
        print(name, {k: v for k, v in by_batch[64].items() if k in ("p50_ms", "p95_ms", "spread", "rounds")})


if __name__ == "__main__":
    main()
