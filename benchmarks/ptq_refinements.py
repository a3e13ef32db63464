"""PTQ refinements on a trained depthwise CNN: nearest rounding vs AdaRound vs + activation range
search vs + cross-layer equalisation (and bias correction), W8A8 and W4A8.

``mobilenet_student`` is trained briefly on a CIFAR-10 subset (the cached protocol baseline when
/work/shared/data holds CIFAR-10), calibrated on held-out training images (never the test set), and
each PTQ variant is scored on the test images: top-1 accuracy, top-1 agreement with float, and the
logits' SQNR against float (dB).

    python benchmarks/ptq_refinements.py                      # ~10 min on 2 shared cores
    python benchmarks/ptq_refinements.py --train-subset 2000 --epochs 2 --test-images 500   # smoke
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch

from netcompress.core.methods import MethodData, apply
from netcompress.quantization import PTQStaticConfig

try:
    from benchmarks import cifar_protocol as cp
except ModuleNotFoundError:  # run as `python benchmarks/ptq_refinements.py`
    import cifar_protocol as cp

cp.PROTOCOL_MODELS.setdefault("mobilenet_student", {"model": "mobilenet_student", "kwargs": {}, "lr": 0.05})

VARIANTS: dict[str, dict[str, Any]] = {
    "nearest": {},
    "adaround": {"rounding": "adaround"},
    "adaround+search": {"rounding": "adaround", "act_range": "search"},
    "adaround+search+cle": {"rounding": "adaround", "act_range": "search", "equalize": True},
    "search+cle+bias_corr": {"act_range": "search", "equalize": True, "bias_correction": True},
}


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    noise = (reference - approx).pow(2).sum().clamp(min=1e-20)
    return float(10 * torch.log10(reference.pow(2).sum() / noise))


def logits(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(images[i : i + 250]) for i in range(0, len(images), 250)])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-subset", type=int, default=10000)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--calib-images", type=int, default=512)
    p.add_argument("--test-images", type=int, default=2000)
    p.add_argument("--bits", type=int, nargs="+", default=[8, 4])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    protocol = cp.ProtocolConfig(name="ptq_refinements", train_subset=args.train_subset, epochs=args.epochs)
    bundle = cp.load_data(protocol)
    model, info = cp.train_baseline("mobilenet_student", protocol=protocol, bundle=bundle)
    held = cp.heldout_loader(protocol, size=args.calib_images)
    calib = [(x[i : i + 64], y[i : i + 64]) for x, y in held for i in range(0, len(x), 64)]
    test = [bundle.test[i] for i in range(0, len(bundle.test), max(1, len(bundle.test) // args.test_images))]
    images = torch.stack([x for x, _ in test])[: args.test_images]
    labels = torch.tensor([y for _, y in test])[: args.test_images]
    ref = logits(model, images)
    rows = [{"variant": "float", "bits": 32, "accuracy": float((ref.argmax(1) == labels).float().mean())}]
    print(json.dumps({**rows[0], "train_cache_hit": info.get("cache_hit")}), flush=True)
    for bits in args.bits:
        for name in args.variants:
            cfg = PTQStaticConfig(bits=bits, act_bits=8, num_calib_batches=8, **VARIANTS[name])
            started = time.perf_counter()
            result = apply(model, cfg, MethodData(calib_loader=calib))
            q, summary = result.model, result.summary
            out = logits(q, images)
            row = {
                "variant": name,
                "bits": bits,
                "accuracy": float((out.argmax(1) == labels).float().mean()),
                "agreement": float((out.argmax(1) == ref.argmax(1)).float().mean()),
                "sqnr_db": round(sqnr_db(ref, out), 2),
                "ptq_s": round(time.perf_counter() - started, 1),
            }
            if "adaround" in summary:
                a = summary["adaround"]
                row["adaround_kept"] = f"{a['kept']}/{a['layers']}"
                row["adaround_calib_mse_ratio"] = round(a["output_mse_ratio"], 3)
            if "range_search" in summary:
                row["ranges_changed"] = (
                    f"{summary['range_search']['changed']}/{summary['range_search']['quantizers']}"
                )
            if "equalize" in summary:
                row["cle_pairs"] = summary["equalize"]["num_pairs"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    return {"rows": rows, "args": vars(args)}


if __name__ == "__main__":
    main(sys.argv[1:])
