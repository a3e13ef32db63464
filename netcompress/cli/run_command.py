"""``netcompress run``: run a YAML recipe (a file, or the name of a shipped one)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run a recipe (YAML) into a run folder; --resume continues a stopped run",
        description=(
            "Run a recipe: build the model and data, run every step (train, prune, quantize, distill, ...), measure "
            "after each, and write checkpoints, metrics.json, plots and a report into the run folder.\n"
            "Override any recipe value with KEY=VALUE (dotted paths; list items by index): "
            "seed=1  data.train_subset=5000  steps.0.epochs=3"
        ),
    )
    p.add_argument(
        "recipe",
        help="path to a recipe YAML, or the name of a shipped recipe (see `netcompress list recipes`)",
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides")
    p.add_argument(
        "--out", type=Path, default=None, help="run folder (default: runs/<recipe name>, never overwritten)"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the latest run of this recipe (or --out) from its last finished step",
    )
    p.add_argument(
        "--profile",
        default=None,
        help="apply a named set of overrides from the recipe's profiles (e.g. full)",
    )
    p.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow the recipe's model checkpoint to be a pickled model (same as model.trust=true); "
        "unpickling runs any code stored in the file",
    )
    p.add_argument(
        "--device",
        default=None,
        help="run every step on this device (cpu, cuda; same as device=...); under torchrun "
        "--nproc_per_node=N each process takes cuda:LOCAL_RANK",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars or tables")
    p.set_defaults(func=run)


def resolve_recipe_arg(value: str) -> Path:
    """A path that exists, else a shipped recipe by name (with or without .yaml)."""
    from netcompress.cli.list_command import shipped_recipes
    from netcompress.core.errors import ConfigError

    path = Path(value)
    if path.exists():
        return path
    shipped = shipped_recipes()
    stem = path.stem if path.suffix in (".yaml", ".yml") else value
    if stem in shipped:
        return shipped[stem]
    raise ConfigError(
        f"recipe not found: {value} (not a file, and not a shipped recipe: {', '.join(sorted(shipped))})"
    )


def run(args: argparse.Namespace) -> int:
    """Run the recipe; under torchrun every process runs this, rank 0 alone writes and prints."""
    from netcompress.recipes import run_recipe
    from netcompress.training import distributed

    flags = [
        *(["model.trust=true"] if args.trust_checkpoint else []),
        *([f"device={args.device}"] if args.device else []),
    ]
    joined = distributed.is_distributed()  # a caller that joined the group itself also leaves it
    try:
        result = run_recipe(
            resolve_recipe_arg(args.recipe),
            overrides=[*args.overrides, *flags],
            out_dir=args.out,
            resume=args.resume,
            profile=args.profile,
            progress=not args.quiet,
        )
        if distributed.is_main():
            print(f"run folder: {result.run_dir}")
    finally:
        if not joined:
            distributed.shutdown()
    return 0
