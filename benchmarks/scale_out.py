"""Images per second of ``fit`` in one process and under ``torchrun`` (DDP), on this machine's CPUs.

    python benchmarks/scale_out.py                       # 1 process, then 2 processes (gloo), prints a table
    python benchmarks/scale_out.py --nproc 1 2 4 --threads 1

Every configuration trains the same model on the same synthetic CIFAR-shaped data with the same global
batch (each of N processes reads batch/N images); a process uses ``--threads`` intra-op threads, so
``--threads 1`` with 1 and 2 processes compares one core with two. The first epoch (warm-up, allocator)
is not timed. The GPU command recorded in benchmarks/RESULTS.md is::

    torchrun --nproc_per_node=8 benchmarks/scale_out.py --worker --device cuda --model cifar_resnet20 \\
        --samples 50000 --batch 1024 --precision bf16 --channels-last
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def worker(args: argparse.Namespace) -> None:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from netcompress import models
    from netcompress.training import Runtime, TrainConfig, fit

    torch.set_num_threads(args.threads)
    runtime = Runtime.from_env(device=args.device)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.samples, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (args.samples,), generator=gen)
    loader = DataLoader(TensorDataset(x, y), batch_size=args.batch, shuffle=True, generator=gen)
    kwargs = {"cfg": [16, "M", 32, "M", 64, "M"]} if args.model == "cifar_vgg" else {}
    model = models.create(args.model, num_classes=10, **kwargs)
    config = dict(lr=0.01, progress=False, device=args.device, precision=args.precision)
    fit(
        model,
        loader,
        config=TrainConfig(epochs=1, channels_last=args.channels_last, **config),
        runtime=runtime,
    )
    started = time.perf_counter()
    fit(
        model,
        loader,
        config=TrainConfig(epochs=args.epochs, channels_last=args.channels_last, **config),
        runtime=runtime,
    )
    elapsed = time.perf_counter() - started
    if runtime.is_main:
        images = args.samples * args.epochs
        print(
            json.dumps(
                {
                    "processes": runtime.world_size,
                    "seconds": round(elapsed, 2),
                    "images_per_s": round(images / elapsed, 1),
                }
            )
        )


def launch(args: argparse.Namespace, nproc: int) -> dict:
    me = [str(Path(__file__).resolve()), "--worker", *_forward(args)]
    cmd = [
        sys.executable,
        *(["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else []),
        *me,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(args.threads)}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800, check=True).stdout
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


def _forward(args: argparse.Namespace) -> list[str]:
    flags = ["--samples", str(args.samples), "--batch", str(args.batch), "--epochs", str(args.epochs)]
    flags += [
        "--threads",
        str(args.threads),
        "--model",
        args.model,
        "--device",
        args.device,
        "--precision",
        args.precision,
    ]
    return [*flags, *(["--channels-last"] if args.channels_last else [])]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--worker", action="store_true", help="run one measurement in this process (torchrun runs this)"
    )
    p.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    p.add_argument("--samples", type=int, default=2048)
    p.add_argument("--batch", type=int, default=64, help="global batch")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    p.add_argument("--model", default="cifar_vgg")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--channels-last", action="store_true")
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; model {args.model}, "
        f"{args.samples} images/epoch x {args.epochs} epochs, global batch {args.batch}, {args.threads} thread(s)/process"
    )
    print("| processes | seconds | images/s | speed-up |\n| ---: | ---: | ---: | ---: |")
    base = None
    for n in args.nproc:
        row = launch(args, n)
        base = base or row["images_per_s"]
        print(
            f"| {n} | {row['seconds']} | {row['images_per_s']} | {row['images_per_s'] / base:.2f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
