"""Issue 18, session 15: probe fine-tune recipes on cached pruned models, scored on VALIDATION splits only.

Loads the rows' own pruned models (``<row>.pruned.pt`` in the pruning benchmark's work folder: pruned, not
fine-tuned), fine-tunes a copy with each recipe for ``--epochs`` epochs (the shuffle state each row saved,
as ``pruning.run_method`` would), and reports accuracy on the 1,000-image validation split every choice
reads (``pruning_recovery.validation_loader``) and on the 5,000-image held-out split (``cp.heldout_loader``).
The test set is never read here. Recipes are given as ``name:key=value,key=value`` (``Recipe`` fields), or a
registered name from ``finetune_recipes.RECIPES``.

    python benchmarks/finetune_probe.py --rows nc_latency_fill --epochs 2 \
        --recipes base lr05:lr=0.05 kd:kd_alpha=0.7,kd_temperature=4 --out probe.jsonl
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cifar_protocol as cp  # noqa: E402
from finetune_recipes import RECIPES, Recipe, close_hooks  # noqa: E402

from netcompress.core import ConfigError  # noqa: E402
from netcompress.core.io import load_checkpoint  # noqa: E402
from netcompress.evaluation import evaluate  # noqa: E402
from netcompress.training import fit, set_rng_state  # noqa: E402

WORK = "narrow_vgg-ed4812b54ab43c93"  # session 14's latency rows (the benchmark's default settings)
FINETUNE_LR = 0.02  # PruningBenchConfig.finetune_lr


def parse_recipe(spec: str) -> tuple[str, Recipe]:
    """``name`` (registered) or ``name:field=value,...`` -> (name, Recipe); a clear error for a bad field."""
    if ":" not in spec:
        if spec not in RECIPES:
            raise ConfigError(
                f"unknown recipe {spec!r}: give name:field=value,... or one of {RECIPES.names()}"
            )
        return spec, RECIPES.get(spec)
    name, body = spec.split(":", 1)
    fields = {f.name: f for f in dataclasses.fields(Recipe)}
    values: dict[str, Any] = {}
    for item in filter(None, body.split(",")):
        key, _, raw = item.partition("=")
        if key not in fields:
            raise ConfigError(f"recipe {name!r}: unknown field {key!r}; fields: {', '.join(fields)}")
        kind = str(fields[key].type)
        if "bool" in kind:
            values[key] = raw.lower() in ("1", "true", "yes")
        elif "int" in kind and "float" not in kind:
            values[key] = int(raw)
        elif "str" in kind:
            values[key] = raw
        else:
            values[key] = float(raw)
    return name, Recipe(**values)


def probe(
    row: str, recipe: Recipe, *, epochs: int, base: torch.nn.Module, work: Path, bundle: Any,
    protocol: cp.ProtocolConfig, val: Any, heldout: Any, seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    saved = load_checkpoint(work / f"{row}.pruned.pt")
    model = copy.deepcopy(saved["model"])
    train_loader, _ = cp.loaders(bundle, protocol)
    train_loader.generator.manual_seed(protocol.seed + seed)
    if seed == 0:  # the shuffle state the row's own fine-tune started from (pruning.run_method)
        set_rng_state(saved["rng"], train_loader)
    train_loader = recipe.loader(train_loader)
    config = cp.train_config(protocol, epochs=epochs, lr=FINETUNE_LR)
    config = recipe.train_config(dataclasses.replace(config, seed=protocol.seed + seed))
    started = time.perf_counter()
    hooks, params = recipe.prepare(base, model, train_loader, cp.example_input(bundle))
    try:
        history = fit(model, train_loader, config=config, hooks=hooks, extra_parameters=params)
    finally:
        close_hooks(hooks)
    seconds = time.perf_counter() - started
    model.eval()
    return {
        "row": row, "epochs": epochs, "seed": seed, "recipe": recipe.describe(), "fields": dataclasses.asdict(recipe),
        "acc_val1000": evaluate(model, val)["accuracy"], "acc_heldout5000": evaluate(model, heldout)["accuracy"],
        "train_loss_last": history.rows[-1].get("train_loss") if getattr(history, "rows", None) else None,
        "seconds": round(seconds, 1),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="+", default=["nc_latency_fill"])
    parser.add_argument("--recipes", nargs="+", default=["default"])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--work", default=WORK, help="work folder under benchmarks/.cache/pruning/cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--seed", type=int, default=0, help="fine-tune seed (pruning.py's --seeds: shuffle + init)"
    )
    parser.add_argument("--out", type=Path, required=True, help="JSON lines, appended")
    args = parser.parse_args(argv)
    recipes = [parse_recipe(s) for s in args.recipes]
    torch.set_num_threads(args.threads)
    protocol = cp.protocol_from_flags(quick=False, full=False)
    bundle = cp.load_data(protocol)
    base, _ = cp.train_baseline("narrow_vgg", protocol=protocol, bundle=bundle)
    work = cp.CACHE_DIR / "pruning" / protocol.name / args.work
    val, heldout = cp.heldout_loader(protocol, size=1000), cp.heldout_loader(protocol)
    for row in args.rows:
        if not (work / f"{row}.pruned.pt").exists():
            raise ConfigError(f"no pruned model for row {row!r} in {work}")
        for name, recipe in recipes:
            result = {"name": name, **probe(row, recipe, epochs=args.epochs, base=base, work=work, bundle=bundle,
                                            protocol=protocol, val=val, heldout=heldout, seed=args.seed)}  # fmt: skip
            print(json.dumps(result), flush=True)
            with args.out.open("a") as handle:
                handle.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
