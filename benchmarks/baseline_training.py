"""How the CPU protocol's baseline training settings were checked: one narrow VGG per variant.

Trains the protocol model (15 epochs on the 10k CIFAR-10 subset, same seed and init) once per
variant of the baseline recipe - learning rate, batch size, augmentation, optimizer - and prints
test accuracy and final training accuracy, one JSON line per variant. The cached protocol
baselines are not touched. Run variants in parallel processes, one thread each::

    OMP_NUM_THREADS=1 python benchmarks/baseline_training.py --model narrow_vgg --variant lr=0.02
    OMP_NUM_THREADS=1 python benchmarks/baseline_training.py --variant optimizer=adam lr=0.002 weight_decay=0
    OMP_NUM_THREADS=1 python benchmarks/baseline_training.py --variant augment=false

A variant is ``key=value`` pairs: ``batch_size``, ``augment``, ``crop_padding``, ``flip`` (data)
or any ``TrainConfig`` field (``lr``, ``optimizer``, ``weight_decay``, ...); values are YAML.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cifar_protocol as cp  # noqa: E402

import netcompress  # noqa: E402
from netcompress.core import ConfigError  # noqa: E402
from netcompress.evaluation import evaluate  # noqa: E402
from netcompress.training import TrainConfig, fit, seed_everything  # noqa: E402

DATA_KEYS = ("augment", "crop_padding", "flip")


def parse_variant(pairs: list[str]) -> dict:
    """``["lr=0.02", "augment=false"]`` -> ``{"lr": 0.02, "augment": False}``."""
    variant = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"variant item {pair!r} is not key=value")
        variant[key] = yaml.safe_load(value)
    return variant


def run(model_name: str, variant: dict, *, epochs: int) -> dict:
    protocol = cp.PROTOCOLS["cpu"]
    data = {k: variant.pop(k) for k in DATA_KEYS if k in variant}
    batch_size = variant.pop("batch_size", protocol.batch_size)
    base = cp.train_config(protocol, epochs=epochs, lr=cp.model_spec(model_name)["lr"])
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(variant) - known)
    if unknown:
        raise ConfigError(f"unknown variant keys {unknown}; known: batch_size, {', '.join(DATA_KEYS)}, "
                          f"{', '.join(sorted(known))}")  # fmt: skip
    config = dataclasses.replace(base, **variant)
    bundle = netcompress.data.load(  # the protocol trains on its whole subset: no validation split
        "cifar10", root=cp._data_root(None), train_subset=protocol.train_subset, **{"val_fraction": 0, **data}
    )
    seed_everything(protocol.seed)
    model = cp.create_model(model_name, num_classes=bundle.num_classes)
    train_loader, test_loader = bundle.loaders(
        batch_size=batch_size, eval_batch_size=protocol.eval_batch_size, seed=protocol.seed
    )
    started = time.perf_counter()
    history = fit(model, train_loader, config=config)
    return {
        "model": model_name,
        "variant": {**data, "batch_size": batch_size, **variant},
        "test_acc": evaluate(model, test_loader)["accuracy"],
        "train_acc": history.rows[-1]["train_acc"],
        "train_s": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="narrow_vgg", choices=list(cp.PROTOCOL_MODELS))
    parser.add_argument("--epochs", type=int, default=cp.PROTOCOLS["cpu"].epochs)
    parser.add_argument("--variant", nargs="*", default=[], help="key=value pairs (none: the protocol's own)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(json.dumps(run(args.model, parse_variant(args.variant), epochs=args.epochs)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
