"""``netcompress demo``: the main job, on the embedded digits data set (no download)."""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path


def demo_recipe_path() -> Path:
    return Path(str(resources.files("netcompress.recipes") / "builtin" / "demo.yaml"))


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="train a small CNN on embedded digits, compress it with every method, print a table, write a report",
        description=(
            "Train a small CNN on scikit-learn's bundled handwritten digits (no download), compress it step by step "
            "(pruning, fine-tuning, quantization, ONNX int8 export), print accuracy/params/MACs/bytes/latency for every "
            "stage and write a Markdown + HTML report with plots into ./netcompress-demo. About 15 s on 2 idle CPU cores."
        ),
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="run folder (default: ./netcompress-demo, or -2, -3... if taken)",
    )
    p.add_argument("--quick", action="store_true", help="a few epochs only, for a smoke test (about 30 s)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides, e.g. seed=1")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from netcompress.recipes import run_recipe

    overrides = list(args.overrides)
    if args.quick:
        overrides += ["steps.0.epochs=3", "evaluate.repeats=5"]
    out = args.out
    if out is None:
        out, n = Path("netcompress-demo"), 2
        while out.exists():
            out, n = Path(f"netcompress-demo-{n}"), n + 1
    result = run_recipe(demo_recipe_path(), overrides=overrides, out_dir=out)
    print(f"\nrun folder: {result.run_dir}")
    return 0
