"""How fast can a ResNet-20 with 3.5x fewer MACs run here? Batch-64 latency of every stage-width allocation.

The pruning benchmark's speed target asks for a batch-64 speed-up of at least 0.7x the MAC reduction.
ResNet-20 misses it with every method, so this script asks whether any channel allocation could meet
it on this machine, independent of which channels a criterion keeps and of accuracy: it builds
ResNet-20 (random weights) at every combination of residual-stream widths ``s`` and block-internal
widths ``i`` per stage (multiples of 4 and 8, as ``round_to`` makes them) whose MAC reduction lies in
``--min-reduction`` .. ``--max-reduction``, prunes it with ``prune_channels`` (the shapes the benchmark
ships), and times batch 64 with BatchNorm folded and in ONNX Runtime, all models interleaved round by
round on one thread (``time_alternating``, heap kept warm). Random weights time like trained ones
(the unpruned ResNet-20 with BN folded, both interleaved in one process: within 3 %). It prints the
allocations sorted by speed-up / MAC reduction and, with ``--write-results``, records the table in
RESULTS.md.

    python benchmarks/resnet_widths.py --write-results      # ~3 minutes on one idle core
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cifar_protocol as cp  # noqa: E402
from pruning import DEPLOY_FORMS, deployed_forms  # noqa: E402

from netcompress.evaluation import count_macs, time_alternating  # noqa: E402
from netcompress.pruning import prune_channels  # noqa: E402

SECTION = "## ResNet-20 stage widths vs batch-64 latency (CPU)"
FULL = (16, 32, 64)
# timed beside the allocations in range, whatever their MAC reduction
REFERENCES = {"unpruned": (FULL, FULL), "uniform 1/2": ((8, 16, 32), (8, 16, 32))}
# stage 1 streams of 16 cannot shrink below 8 in blocks of 8; internal widths of 4 are allowed there
CHOICES = {
    "s": [(8, 16), (16, 24, 32), (32, 40, 48, 56, 64)],
    "i": [(4, 8, 12), (8, 16, 24), (16, 24, 32, 40, 48, 56, 64)],
}


def stage_ratios(stream: tuple[int, ...], internal: tuple[int, ...]) -> dict[str, float]:
    """``prune_channels`` ratios that give ResNet-20 these stream / block-internal widths per stage.

    Example:
        >>> stage_ratios((8, 16, 32), (8, 16, 32))["conv1"]
        0.5
    """
    ratios = {"conv1": 1 - stream[0] / FULL[0]}
    for stage, (s, i, full) in enumerate(zip(stream, internal, FULL), start=1):
        ratios[rf"re:^layer{stage}\.\d\.conv2$"] = 1 - s / full
        ratios[rf"re:^layer{stage}\.\d\.conv1$"] = 1 - i / full
        if stage > 1:
            ratios[rf"re:^layer{stage}\.0\.downsample\.0$"] = 1 - s / full
    return ratios


def build(stream: tuple[int, ...], internal: tuple[int, ...], example: torch.Tensor) -> nn.Module:
    torch.manual_seed(0)
    model = cp.create_model("resnet20").eval()
    if (stream, internal) == (FULL, FULL):
        return model
    ratios = stage_ratios(stream, internal)
    return prune_channels(model, example, ratio=0.0, ratios=ratios, importance="l1", round_to=1).eval()


def conv_macs(stream: tuple[int, ...], internal: tuple[int, ...]) -> int:
    """MACs of ResNet-20's convolutions at these widths on a 32x32 image (a pre-filter; rows use count_macs).

    Example:
        >>> conv_macs(FULL, FULL)
        40812544
    """
    total, before = 3 * stream[0] * 9 * 32 * 32, stream[0]
    for stage, (s, i) in enumerate(zip(stream, internal)):
        pixels = (32 >> stage) ** 2
        total += 3 * (before * i + i * s) * 9 * pixels - (before - s) * i * 9 * pixels * 2
        total += before * s * pixels if stage else 0  # the 1x1 downsample shortcut
        before = s
    return total


def allocations(lo: float, hi: float, example: torch.Tensor) -> dict[str, dict[str, Any]]:
    """Every allocation whose MAC reduction is in [lo, hi], plus the unpruned and uniform references."""
    dense_macs = int(count_macs(build(FULL, FULL, example), example)[0])
    named = dict(REFERENCES)
    for s in itertools.product(*CHOICES["s"]):
        for i in itertools.product(*CHOICES["i"]):
            # 1 % margin: the filter leaves out the classifier
            if lo * 0.99 <= conv_macs(FULL, FULL) / conv_macs(s, i) <= hi * 1.01:
                named.setdefault(f"s{s} i{i}", (s, i))
    out = {}
    for name, (s, i) in named.items():
        model = build(s, i, example)
        reduction = dense_macs / int(count_macs(model, example)[0])
        if name in REFERENCES or lo <= reduction <= hi:
            out[name] = {"stream": s, "internal": i, "model": model, "mac_reduction": reduction}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--min-reduction", type=float, default=3.5)
    parser.add_argument("--max-reduction", type=float, default=3.8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--top", type=int, default=12, help="rows in the table (best ratio first)")
    parser.add_argument("--write-results", action="store_true", help=f"replace {SECTION!r} in RESULTS.md")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    example = torch.randn(1, 3, 32, 32)
    found = allocations(args.min_reduction, args.max_reduction, example)
    # the pruning benchmark's deployed forms (BN folded, ONNX Runtime checked against PyTorch), keyed by
    # index: the allocation names are no file names
    keys = {name: f"m{index}" for index, name in enumerate(found)}
    forms = deployed_forms(
        {keys[name]: entry["model"] for name, entry in found.items()}, example,
        cp.CACHE_DIR / "resnet_widths", threads=1,
    )  # fmt: skip
    timings = time_alternating(forms, example, batch_sizes=(64,), rounds=args.rounds, threads=1)
    rows = []
    for name, entry in found.items():
        row = {"name": name, "mac_reduction": entry["mac_reduction"]}
        for form in DEPLOY_FORMS:
            ms = timings[f"{keys[name]}|{form}"]["latency_b64_ms"]
            row[f"{form}_ms"] = ms
            row[f"{form}_speedup"] = timings[f"{keys['unpruned']}|{form}"]["latency_b64_ms"] / ms
            row[f"{form}_ratio"] = row[f"{form}_speedup"] / entry["mac_reduction"]
        rows.append(row)
    refs = [r for r in rows if r["name"] in REFERENCES]
    ranked = sorted((r for r in rows if r not in refs), key=lambda r: -r["folded_ratio"])
    columns: list[cp.Column] = [
        ("allocation (stream s, internal i per stage)", "name", cp.fmt_text),
        ("MAC red. x", "mac_reduction", cp.fmt_number(2)),
        ("BN folded b64 ms", "folded_ms", cp.fmt_number(1)),
        ("BN folded speed-up", "folded_speedup", cp.fmt_number(2)),
        ("speed-up / MAC red.", "folded_ratio", cp.fmt_number(2)),
        ("ONNX Runtime b64 ms", "ort_ms", cp.fmt_number(1)),
        ("ONNX Runtime speed-up", "ort_speedup", cp.fmt_number(2)),
        ("speed-up / MAC red. (ORT)", "ort_ratio", cp.fmt_number(2)),
    ]
    best = {form: max(r[f"{form}_ratio"] for r in ranked) for form in DEPLOY_FORMS}
    machine = cp.machine_description()
    command = "python benchmarks/resnet_widths.py " + " ".join(sys.argv[1:] if argv is None else argv)
    body = "\n\n".join([
        f"Command: `{command.strip()}` ({time.strftime('%Y-%m-%d')}), {time.perf_counter() - started:.0f} s.",
        cp.describe_machine(machine, timing_threads=1),
        f"{len(ranked)} allocations with {args.min_reduction}-{args.max_reduction}x fewer MACs, random weights, "
        f"the {args.top} best by speed-up / MAC reduction with BN folded, then the references:",
        cp.markdown_table(ranked[: args.top] + refs, columns),
        f"Best speed-up / MAC reduction of any allocation: {best['folded']:.2f} with BN folded, "
        f"{best['ort']:.2f} in ONNX Runtime (the pruning target asks for 0.70).",
    ])  # fmt: skip
    print(body)
    if args.write_results:
        cp.write_results_section(SECTION, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
