"""Training-loop overhead: images/s of ``netcompress.training.fit`` vs a bare PyTorch loop.

Both loops train the same narrow CIFAR VGG (32-32-M-64-64-M-128-128-M-256-M with BN, the
CPU-protocol model of ``cifar_protocol``) on the same in-memory synthetic 32x32 batches, with the
same optimiser (SGD, momentum 0.9, weight decay 5e-4) and a per-batch cosine schedule, in one
process. Runs alternate (bare, fit, fit, bare, ...) after one warm-up each, so drift in a shared
machine's load hits both; the median of the runs is reported. Target: fit within 5% of bare.

The machine's 2 cores are shared with other jobs, so wall-clock figures swing by 2-10x from run
to run. Two things keep the comparison honest: one torch thread by default (two threads spin
against each other under contention), and throughput per CPU-second of this process
(``time.process_time``) reported beside wall-clock throughput; it counts the work the loop
does and barely moves when other jobs take the cores.

    python benchmarks/train_loop.py            # ~1 minute on an idle 2-core machine
    python benchmarks/train_loop.py --repeats 3 --images 256 --no-write
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import re
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from netcompress.core.io import atomic_write_text
from netcompress.training import TrainConfig, fit

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTION = "## Training loop overhead"
VGG_CFG = (32, 32, "M", 64, 64, "M", 128, 128, "M", 256, "M")
LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 5e-4


def narrow_vgg(num_classes: int = 10) -> nn.Module:
    layers: list[nn.Module] = []
    channels = 3
    for item in VGG_CFG:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(channels, item, 3, padding=1, bias=False), nn.BatchNorm2d(item), nn.ReLU()]
            channels = item
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


def make_loader(data: TensorDataset, *, batch_size: int, seed: int) -> DataLoader:
    return DataLoader(
        data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )


def bare_loop(model: nn.Module, loader: DataLoader, *, epochs: int) -> None:
    """The loop a user writes by hand: same optimiser, same per-batch cosine schedule."""
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * len(loader))
    criterion = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        for inputs, targets in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(inputs), targets)
            loss.backward()
            optimizer.step()
            scheduler.step()


def fit_loop(model: nn.Module, loader: DataLoader, *, epochs: int) -> None:
    config = TrainConfig(
        epochs=epochs, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, schedule="cosine",
        progress=False, keep_best=False,
    )  # fmt: skip
    fit(model, loader, config=config)


def measure(args: argparse.Namespace) -> dict[str, object]:
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(args.images, 3, 32, 32), torch.randint(0, 10, (args.images,)))
    initial = narrow_vgg()
    loops = {"bare PyTorch loop": bare_loop, "netcompress fit": fit_loop}
    times: dict[str, list[float]] = {name: [] for name in loops}
    cpu_times: dict[str, list[float]] = {name: [] for name in loops}

    def one_run(name: str) -> None:
        model = copy.deepcopy(initial)
        loader = make_loader(data, batch_size=args.batch_size, seed=0)
        started, cpu_started = time.perf_counter(), time.process_time()
        loops[name](model, loader, epochs=args.epochs)
        times[name].append(time.perf_counter() - started)
        cpu_times[name].append(time.process_time() - cpu_started)

    for name in loops:  # warm-up: allocator, thread pool, first-call dispatch
        one_run(name)
        times[name].clear()
        cpu_times[name].clear()
    names = list(loops)
    for r in range(args.repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            one_run(name)
            print(
                f"  run {r + 1}/{args.repeats} {name}: {times[name][-1]:.2f} s wall, "
                f"{cpu_times[name][-1]:.2f} s CPU",
                flush=True,
            )
    images = args.images * args.epochs
    rows = {
        name: {
            "median_images_per_s": images / statistics.median(ts),
            "min_images_per_s": images / max(ts),
            "max_images_per_s": images / min(ts),
            "median_s": statistics.median(ts),
            "median_images_per_cpu_s": images / statistics.median(cpu_times[name]),
        }
        for name, ts in times.items()
    }
    fit_row, bare_row = rows["netcompress fit"], rows["bare PyTorch loop"]
    ratio = fit_row["median_images_per_s"] / bare_row["median_images_per_s"]
    cpu_ratio = fit_row["median_images_per_cpu_s"] / bare_row["median_images_per_cpu_s"]
    params = sum(p.numel() for p in initial.parameters())
    return {"rows": rows, "ratio": ratio, "cpu_ratio": cpu_ratio, "params": params}


def markdown(result: dict[str, object], args: argparse.Namespace) -> str:
    rows = result["rows"]
    lines = [
        "| loop | median images/s (wall) | min | max | median s/run | median images per CPU-second |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['median_images_per_s']:.0f} | {r['min_images_per_s']:.0f} | "
            f"{r['max_images_per_s']:.0f} | {r['median_s']:.2f} | {r['median_images_per_cpu_s']:.0f} |"
        )

    def verdict(ratio: float) -> str:
        return "within" if ratio >= 0.95 else "NOT within"

    lines.append("")
    lines.append(
        f"fit / bare throughput ratio: wall-clock **{result['ratio']:.3f}** ({verdict(result['ratio'])} "
        f"the 5% target), per CPU-second **{result['cpu_ratio']:.3f}** ({verdict(result['cpu_ratio'])})."
    )
    return "\n".join(lines)


def section(table: str, result: dict[str, object], args: argparse.Namespace) -> str:
    command = "python benchmarks/train_loop.py" + (
        f" --images {args.images} --epochs {args.epochs} --repeats {args.repeats}"
        f" --batch-size {args.batch_size} --threads {args.threads}"
    )
    return (
        f"{SECTION}\n\n"
        f"Command: `{command}` ({datetime.date.today().isoformat()}).\n"
        f"Machine: {os.cpu_count()} CPUs (shared with other jobs), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads.\n"
        f"Setup: narrow CIFAR VGG {list(VGG_CFG)} with BN ({result['params']:,} params), {args.images} synthetic "
        f"3x32x32 images in memory, batch {args.batch_size}, {args.epochs} epochs per run, SGD + per-batch cosine, "
        f"{args.repeats} alternating runs of each after one warm-up each; figures are medians.\n\n"
        f"{table}\n"
    )


def write_section(text: str) -> None:
    """Replace this benchmark's section of RESULTS.md (or append it), leaving other sections alone."""
    old = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(old):
        new = pattern.sub(lambda _: text + "\n", old, count=1)
    else:
        new = old.rstrip("\n") + "\n\n" + text
    atomic_write_text(RESULTS, new.rstrip("\n") + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steady on shared cores)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = measure(args)
    table = markdown(result, args)
    print(table)
    if not args.no_write:
        write_section(section(table, result, args))
        print(f"wrote section {SECTION!r} of {RESULTS}")


if __name__ == "__main__":
    main()
