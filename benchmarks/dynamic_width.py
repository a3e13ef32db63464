"""E5 dynamic width: one slimmable ResNet-20 (CIFAR-10), accuracy / MACs / params / batch latency per width.

ResNet-20 is made slimmable at ``--widths`` (per channel group of the dependency graph: both sides
of every residual add slice together; switchable BN per width) and trained from scratch with the
sandwich rule (widest + narrowest + ``--num-random`` random widths per step) and in-place
distillation (the narrower widths learn the widest width's soft predictions). Every width is then
extracted as a plain ResNet-20 of that width; the table reports the extracted model's test
accuracy, MACs and parameters, its largest output difference to the slimmable model at that width
on one test batch, and its median latency per batch of ``--batch`` (one thread, timed interleaved).
``--separate`` also trains each width alone for the same epochs, the reference slimmable training
is measured against.

The recorded run shortens the CPU protocol (10k-image training subset, full test set) to
``--epochs`` epochs:

    nice -n 10 timeout 900 python benchmarks/dynamic_width.py --epochs 6 --write
    python benchmarks/dynamic_width.py --quick           # smoke run (500 images, 1 epoch)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cifar_protocol as cp  # noqa: E402

from netcompress.dynamic import (  # noqa: E402
    SlimmableHook,
    at_width,
    extract_width,
    make_slimmable,
    train_slimmable,
)
from netcompress.evaluation import count_macs, evaluate, time_rounds, torch_threads  # noqa: E402
from netcompress.training import fit, seed_everything  # noqa: E402

HEADING = "## E5 dynamic width: slimmable ResNet-20 (CIFAR-10, shortened CPU protocol)"


def width_rows(slim, test, example, *, batch: int, rounds: int) -> list[dict[str, Any]]:
    """Per width: the extracted plain model's accuracy, MACs, params, max |diff| to the slimmable model, latency."""
    images = next(iter(test))[0][:64]
    rows, plain = [], {}
    for w in slim.widths:
        small = extract_width(slim, w).eval()
        with at_width(slim, w), torch.no_grad():
            diff = (small(images) - slim.eval()(images)).abs().max().item()
        metrics = evaluate(small, test)
        plain[f"w{w:g}"] = small
        rows.append(
            {
                "width": w,
                "accuracy": metrics["accuracy"],
                "macs": int(count_macs(small, example)[0]),
                "params": sum(p.numel() for p in small.parameters()),
                "max_abs_diff": diff,
                "channels": "-".join(
                    str(small.get_submodule(f"layer{s}.0.conv2").out_channels) for s in (1, 2, 3)
                ),
            }
        )
    timing = time_rounds(plain, example, batch_sizes=(batch,), rounds=rounds, repeats=4 * rounds, threads=1)
    for row in rows:
        row["latency_ms"] = timing[f"w{row['width']:g}"][batch]["p50_ms"]
    return rows


def train_separately(width: float, protocol, train, test, config) -> float:
    """Accuracy of a ResNet-20 of ``width`` trained alone with the same settings."""
    from netcompress import models

    seed_everything(protocol.seed)
    model = models.create("cifar_resnet20", num_classes=10, width=width)
    with torch_threads(protocol.train_threads):
        fit(model, train, config=config)
    return evaluate(model.eval(), test)["accuracy"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--epochs", type=int, default=None, help="default: 1 quick, 6 otherwise")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--widths", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--num-random", type=int, default=1)
    parser.add_argument("--no-distill", action="store_true", help="train the narrow widths on the labels")
    parser.add_argument("--separate", action="store_true", help="also train each width alone")
    parser.add_argument("--train-subset", type=int, default=None, help="default: the protocol's (10,000)")
    parser.add_argument("--test-subset", type=int, default=None, help="default: the protocol's (all 10,000)")
    parser.add_argument(
        "--threads", type=int, default=None, help="training threads (default: the protocol's)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="training batch (default: the protocol's)"
    )
    parser.add_argument("--batch", type=int, default=64, help="batch size of the latency timing")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--write", action="store_true", help="replace the E5 section of RESULTS.md")
    parser.add_argument("--render", type=Path, default=None, help="write the section from this --json file")
    args = parser.parse_args(argv)
    if args.render:  # re-render a finished run (pass the flags it ran with)
        cp.write_results_section(HEADING, report(json.loads(args.render.read_text()), args))
        return 0
    protocol = cp.protocol_from_flags(quick=args.quick, full=False)
    changes = {
        "train_subset": args.train_subset,
        "test_subset": args.test_subset,
        "train_threads": args.threads,
        "batch_size": args.batch_size,
    }
    protocol = dataclasses.replace(protocol, **{k: v for k, v in changes.items() if v is not None})
    epochs = args.epochs or (1 if args.quick else 6)
    bundle = cp.load_data(protocol)
    train, test = cp.loaders(bundle, protocol)
    example = cp.example_input(bundle)
    config = cp.train_config(protocol, epochs=epochs, lr=args.lr)

    from netcompress import models

    seed_everything(protocol.seed)
    slim = make_slimmable(
        models.create("cifar_resnet20", num_classes=10), widths=args.widths, example_inputs=example
    )
    hook = SlimmableHook(sandwich=True, num_random=args.num_random, inplace_distillation=not args.no_distill)
    started = time.perf_counter()
    with torch_threads(protocol.train_threads):
        train_slimmable(slim, train, config=config, hook=hook)
    train_s = time.perf_counter() - started
    rows = width_rows(slim, test, example, batch=args.batch, rounds=args.rounds)
    if args.separate:
        for row in rows:
            row["separate_accuracy"] = train_separately(row["width"], protocol, train, test, config)
    machine = cp.machine_description()
    result = {"epochs": epochs, "train_s": round(train_s, 1), "protocol": protocol.to_dict(), "rows": rows,
              "machine": machine, "argv": sys.argv[1:] if argv is None else argv}  # fmt: skip
    for row in rows:
        print(
            f"width {row['width']:<5g} channels {row['channels']:<9} acc {row['accuracy']:.4f} "
            f"MACs {row['macs']:>11,} params {row['params']:>8,} |diff| {row['max_abs_diff']:.1e} "
            f"b{args.batch} {row['latency_ms']:.1f} ms"
            + (f" alone {row['separate_accuracy']:.4f}" if "separate_accuracy" in row else "")
        )
    print(f"trained {epochs} epochs in {train_s:.0f} s; load average {machine['load_average']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if args.write:
        cp.write_results_section(HEADING, report(result, args))
    return 0


def report(result: dict[str, Any], args: argparse.Namespace) -> str:
    columns: list[cp.Column] = [
        ("width", "width", cp.fmt_number(2)),
        ("channels (stages)", "channels", cp.fmt_text),
        ("test accuracy", "accuracy", cp.fmt_percent),
        ("MACs", "macs", cp.fmt_number()),
        ("params", "params", cp.fmt_number()),
        ("max abs diff extracted vs slimmable", "max_abs_diff", lambda v: f"{v:.1e}"),
        (f"batch-{args.batch} latency ms (1 thread, under load)", "latency_ms", cp.fmt_number(1)),
    ]
    if any("separate_accuracy" in r for r in result["rows"]):
        columns.insert(3, ("trained alone", "separate_accuracy", cp.fmt_percent))
    argv, kept = list(result["argv"]), []
    while argv:  # the command as run, less the output flags
        arg = argv.pop(0)
        if arg in ("--json", "--render"):
            argv.pop(0)
        elif arg != "--write":
            kept.append(arg)
    flags = " ".join(kept)
    p = result["protocol"]
    return "\n\n".join(
        [
            f"Command: `nice -n 10 timeout 900 python benchmarks/dynamic_width.py {flags} --write` "
            f"(recipe: `recipes/e5_dynamic_width.yaml`). CPU protocol SHORTENED to fit one 15-minute run on a "
            f"loaded 2-core machine: {result['epochs']} epochs on a {p['train_subset'] or 50000:,}-image "
            f"class-balanced CIFAR-10 training subset, {p['test_subset'] or 10000:,} test images, batch "
            f"{p['batch_size']}, SGD lr {args.lr} cosine, wd 5e-4, {p['train_threads']} training thread(s); "
            f"ResNet-20 made slimmable at widths {args.widths}, trained from scratch with the sandwich rule "
            f"(widest + narrowest + {args.num_random} random per step) and "
            + ("labels for every width" if args.no_distill else "in-place distillation")
            + f", {result['train_s']:.0f} s of training.",
            cp.markdown_table(result["rows"], columns),
            cp.describe_machine({**result["machine"], "torch_threads": p["train_threads"]}, timing_threads=1),
            "Each row is the plain ResNet-20 extracted at that width (real smaller convolutions, that width's "
            f"BN statistics), evaluated on the {p['test_subset'] or 10000:,} test images; the diff column is its largest output difference "
            "to the slimmable model at the same width on 64 test images. Latencies were measured on a shared, "
            "loaded machine: compare them with each other, not with other tables.",
        ]
    )


if __name__ == "__main__":
    raise SystemExit(main())
