"""Early exit on ResNet-20 or the narrow VGG (``--model``), CIFAR-10, CPU protocol: accuracy, MACs, batch latency.

The protocol baseline (``cifar_protocol.train_baseline``, cached) gets exit heads after ``--exits``
(default: after each of the first seven of ResNet-20's nine residual blocks) of kind ``--head``
(default ``pool_grid_linear``: mixed max/avg pooling to 4 x 4, then a Linear, the Shallow-Deep
Networks head), trained for ``--head-epochs`` with the backbone frozen (``--train heads``: the final
exit IS the unmodified model) or jointly (``--train joint``, optionally distilled from the unmodified
model into every exit, ``--kd-alpha``). Trained weights and every quarter epoch are cached under
``benchmarks/.cache/ee-<model>-<settings hash>/`` (a killed run resumes). The thresholds are then
chosen on a held-out VALIDATION split (training images outside the protocol subset): one for each
accuracy bound (``--drops``: accuracy at least the UNMODIFIED model's validation accuracy minus the
drop) and each MAC budget (``--mac-fractions`` of the unmodified model's MACs), beside a fixed grid
(``--thresholds``). Every row reports test accuracy, per-exit shares, average MACs per sample and the
measured wall clock per batch of ``--batch`` random test images (classes mixed, so samples leave at
different exits), against the unmodified model, all timed interleaved round by round (order rotated
each round) on ``--threads`` torch threads with the heap kept warm.

    python benchmarks/early_exit.py --quick            # smoke run, under two minutes
    python benchmarks/early_exit.py                    # CPU protocol, heads only (trains the cached baseline once)
    python benchmarks/early_exit.py --train joint --head-epochs 4 --lr 0.02 --kd-alpha 0.5 \
        --exit-weights 0.15 0.275 0.4 0.525 0.65 0.775 0.9 1.0     # jointly, every exit distilled

``--per-exit`` adds, for the same bounds, one threshold per exit chosen on the validation split
(``choose_exit_thresholds``) and the validation oracle (``oracle_exit_macs``: the fewest average MACs any
routing over these exits reaches within each bound, knowing the labels); cached beside the other choices.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cifar_protocol as cp  # noqa: E402
from deep_compression import ChunkedLoader  # noqa: E402

from netcompress.core import atomic_torch_save, atomic_write_text  # noqa: E402
from netcompress.core.io import load_checkpoint  # noqa: E402
from netcompress.dynamic import (  # noqa: E402
    add_early_exits,
    choose_exit_thresholds,
    choose_threshold,
    collect_exit_logits,
    evaluate_early_exit,
    exit_path_macs,
    oracle_exit_macs,
    train_early_exit,
)
from netcompress.evaluation import count_macs, evaluate, keep_heap_warm, torch_threads  # noqa: E402


def time_batches(models: dict[str, Any], batches: list[torch.Tensor], *, rounds: int) -> dict[str, float]:
    """Median ms per batch of each model: every round runs each model over every batch, in rotated order."""
    keep_heap_warm()
    names = list(models)
    per_round: dict[str, list[float]] = {n: [] for n in names}
    with torch.inference_mode():
        for name in names:  # warm-up
            models[name](batches[0])
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                started = time.perf_counter()
                for batch in batches:
                    models[name](batch)
                per_round[name].append((time.perf_counter() - started) * 1000 / len(batches))
    return {n: statistics.median(v) for n, v in per_round.items()}


RESNET20_EXITS = ["layer1.0", "layer1.1", "layer1.2", "layer2.0", "layer2.1", "layer2.2", "layer3.0"]
# narrow VGG: after the first two max-pools and after the ReLUs between them (MAC shares .24 .35 .57 .68); the
# maps stay >= 8 x 8, so every head kind (pool_conv_grid_linear pools to 8 x 8) exports to ONNX
DEFAULT_EXITS = {"resnet20": RESNET20_EXITS, "narrow_vgg": ["features.6", "features.9", "features.13", "features.16"]}


def model_name(args: argparse.Namespace) -> str:
    """The protocol model the exits go into (``--model``; resnet20 when not given)."""
    return getattr(args, "model", None) or "resnet20"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--model", choices=sorted(DEFAULT_EXITS), default=None, help="protocol baseline (default resnet20)"
    )
    parser.add_argument("--exits", nargs="+", default=None, help="default: DEFAULT_EXITS of the model")
    parser.add_argument(
        "--head", nargs="+", default=["pool_grid_linear"],
        help="exit head (netcompress.dynamic.HEADS): one for every exit, or one per --exits entry",
    )  # fmt: skip
    parser.add_argument(
        "--train", choices=("heads", "joint"), default="heads",
        help="heads: backbone frozen (the final exit IS the unmodified model); joint: backbone trained too",
    )  # fmt: skip
    parser.add_argument("--head-epochs", type=int, default=None, help="default: 1 quick, 5 otherwise")
    parser.add_argument(
        "--head-seed", type=int, default=None, help="another seed for the heads' init and shuffle (default: 0)"
    )
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument(
        "--kd-alpha", type=float, default=0.0, help="distil every exit from the unmodified model"
    )
    parser.add_argument("--kd-temperature", type=float, default=4.0)
    parser.add_argument(
        "--exit-weights", type=float, nargs="+", default=None,
        help="loss weight per exit, the final classifier last (default: 1 each)",
    )  # fmt: skip
    parser.add_argument(
        "--cascade", action="store_const", const=True, default=None,
        help="Zero Time Waste cascade heads: each head also reads the previous head's logits",
    )  # fmt: skip
    parser.add_argument(
        "--baseline-epochs", type=int, default=None,
        help="a SHORTER baseline than the protocol's (trained on 1 thread, cached under its own key): "
        "for a machine too loaded to retrain the protocol baseline; not the protocol",
    )  # fmt: skip
    parser.add_argument("--chunks", type=int, default=4, help="checkpoint every 1/N epoch (resumable)")
    parser.add_argument("--val-size", type=int, default=5000)
    parser.add_argument("--drops", type=float, nargs="+", default=[0.0, 0.005, 0.01, 0.02])
    parser.add_argument("--mac-fractions", type=float, nargs="+", default=[0.5])
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.9, 0.99])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=8, help="real test batches timed per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-timing", action="store_true", help="accuracy and MACs only")
    parser.add_argument(
        "--per-exit", action="store_true", help="also one threshold per exit, and the validation oracle"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.exits is None:
        args.exits = DEFAULT_EXITS[model_name(args)]
    if len(args.head) == 1:
        args.head = args.head[0]  # one kind for all exits: a string, as in the cache keys before per-exit heads
    elif len(args.head) != len(args.exits):
        parser.error(f"--head names {len(args.head)} kinds for {len(args.exits)} exits: give one, or one per exit")
    return args


def protocol_of(args: argparse.Namespace) -> Any:
    """The CPU (or quick) protocol; with ``--baseline-epochs`` its baseline is shorter and trained on 1 thread."""
    protocol = cp.protocol_from_flags(quick=args.quick, full=False)
    if getattr(args, "baseline_epochs", None) is not None:
        protocol = dataclasses.replace(protocol, epochs=args.baseline_epochs, train_threads=1)
    return protocol


def train_settings(args: argparse.Namespace, protocol: Any) -> dict[str, Any]:
    """What the trained exits depend on (their cache key); a flag added later enters it only when given."""
    settings = {k: v for k, v in vars(args).items() if k in TRAIN_FLAGS}
    settings.update({k: v for k, v in vars(args).items() if k in TRAIN_FLAGS_SINCE and v is not None})
    return {**settings, "protocol": protocol.name}


def train_exits(model, args, protocol, train_loader, example) -> tuple[Any, float, Path]:
    """The early-exit model, trained (heads or jointly) and cached, its training seconds and its cache
    folder; resumes a killed run."""
    settings = train_settings(args, protocol)
    folder = cp.CACHE_DIR / f"ee-{model_name(args)}-{cp.cache_key(settings)}"
    folder.mkdir(parents=True, exist_ok=True)
    seed = getattr(args, "head_seed", None) or 0
    torch.manual_seed(seed)
    ee = add_early_exits(
        model, exits=args.exits, example_inputs=example, head=args.head, cascade=bool(getattr(args, "cascade", None))
    )
    done = folder / "trained.pt"
    if done.exists():
        ee.load_state_dict(load_checkpoint(done))
        return ee, json.loads((folder / "time.json").read_text())["seconds"], folder
    epochs = args.head_epochs if args.head_epochs is not None else (1 if args.quick else 5)
    config = cp.train_config(protocol, epochs=epochs * args.chunks, lr=args.lr)
    config = dataclasses.replace(config, seed=protocol.seed + seed)
    started = time.perf_counter()
    train_early_exit(
        ee, ChunkedLoader(train_loader, args.chunks, seed=protocol.seed + seed), config=config,
        freeze_backbone=args.train == "heads", checkpoint_dir=folder / "fit", resume=True,
        teacher=copy.deepcopy(model).eval() if args.kd_alpha > 0 else None,
        temperature=args.kd_temperature, alpha=args.kd_alpha, weights=args.exit_weights,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    atomic_torch_save(ee.state_dict(), done)
    atomic_write_text(folder / "time.json", json.dumps({"seconds": seconds}))
    return ee, seconds, folder


TRAIN_FLAGS = {"exits", "head", "train", "head_epochs", "lr", "kd_alpha", "kd_temperature", "chunks", "quick"}
EVAL_FLAGS = ("val_size", "drops", "mac_fractions", "thresholds")
TRAIN_FLAGS_SINCE = {"exit_weights", "cascade", "baseline_epochs", "model", "head_seed"}  # in the cache key only when given (older caches stay valid)


def choose(ee, model, val, full_macs: int, args) -> dict[str, float]:
    """Thresholds chosen on the validation split, bounds measured against the UNMODIFIED model."""
    exit_logits, labels = collect_exit_logits(ee, val)
    exit_macs = exit_path_macs(ee, next(iter(val))[0][:1])
    base_val = evaluate(model, val)["accuracy"]
    final_val = float((exit_logits[-1].argmax(dim=1) == labels).float().mean())
    chosen: dict[str, float] = {}
    for drop in args.drops:
        # accuracy >= base_val - drop  <=>  drop from the final exit <= drop + final_val - base_val
        allowed = drop + final_val - base_val
        if allowed < 0:
            print(f"val drop <= {drop:g}: the final exit alone is already {base_val - final_val:.4f} below")
            continue
        pick = choose_threshold(exit_logits, labels, exit_macs=exit_macs, max_accuracy_drop=allowed)
        chosen[f"val drop <= {drop:g}"] = pick["threshold"]
    for fraction in args.mac_fractions:
        pick = choose_threshold(exit_logits, labels, exit_macs=exit_macs, max_macs=fraction * full_macs)
        chosen[f"val MACs <= {fraction:g}x"] = pick["threshold"]
    for t in args.thresholds:
        chosen[f"fixed {t:g}"] = t
    print(f"validation ({len(labels)} images): unmodified {base_val:.4f}, exits "
          f"{[round(float((lg.argmax(1) == labels).float().mean()), 4) for lg in exit_logits]}")  # fmt: skip
    return chosen


def choose_per_exit(ee, model, val, full_macs: int, args) -> dict[str, Any]:
    """One threshold per exit for each bound, and the oracle, all on the validation split."""
    exit_logits, labels = collect_exit_logits(ee, val)
    exit_macs = exit_path_macs(ee, next(iter(val))[0][:1])
    base_val = evaluate(model, val)["accuracy"]
    final_val = float((exit_logits[-1].argmax(dim=1) == labels).float().mean())
    chosen, val_rows, oracle = {}, {}, {}
    bounds = [
        (f"per-exit val drop <= {d:g}", {"max_accuracy_drop": d + final_val - base_val}) for d in args.drops
    ]
    bounds += [(f"per-exit val MACs <= {f:g}x", {"max_macs": f * full_macs}) for f in args.mac_fractions]
    for name, bound in bounds:
        if bound.get("max_accuracy_drop", 0.0) < 0:
            continue
        pick = choose_exit_thresholds(exit_logits, labels, exit_macs=exit_macs, **bound)
        chosen[name] = pick["thresholds"]
        val_rows[name] = {
            "val_acc": round(pick["accuracy"], 4), "val_macs_x": round(full_macs / pick["expected_macs"], 3),
            "single_val_acc": round(pick["single"]["accuracy"], 4),
            "single_val_macs_x": round(full_macs / pick["single"]["expected_macs"], 3),
        }  # fmt: skip
        if "max_accuracy_drop" in bound:
            o = oracle_exit_macs(exit_logits, labels, exit_macs=exit_macs, **bound)
            oracle[name.replace("per-exit ", "oracle ")] = {
                "val_acc": round(o["accuracy"], 4), "macs_x": round(full_macs / o["macs"], 3),
                "agree_macs_x": round(full_macs / o["agree_macs"], 3),
                "correct_anywhere": round(o["correct_anywhere"], 4),
            }  # fmt: skip
    return {
        "chosen": chosen,
        "val_rows": val_rows,
        "oracle": oracle,
        "base_val": base_val,
        "final_val": final_val,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    protocol = protocol_of(args)
    bundle = cp.load_data(protocol)
    model, info = cp.train_baseline(model_name(args), protocol=protocol, bundle=bundle)
    model.eval()
    val = cp.heldout_loader(protocol, size=1000 if args.quick else args.val_size)
    train, test = cp.loaders(bundle, protocol)
    example = cp.example_input(bundle)
    with torch_threads(args.threads):
        ee, head_time, folder = train_exits(model, args, protocol, train, example)
        ee.eval()
        full_macs = count_macs(model, example)[0]
        # the choice and the test rows are cached too: a killed run resumes after what it finished
        key = cp.cache_key({k: vars(args)[k] for k in EVAL_FLAGS})
        chosen_path, evaluated = folder / f"chosen-{key}.json", folder / f"evaluated-{key}.json"
        if chosen_path.exists():
            chosen = json.loads(chosen_path.read_text())
        else:
            chosen = choose(ee, model, val, full_macs, args)
            atomic_write_text(chosen_path, json.dumps(chosen))
        if evaluated.exists():
            rows, base_acc = json.loads(evaluated.read_text())
        else:
            rows = evaluate_early_exit(ee, test, thresholds=list(chosen.values()), example_inputs=example)
            # heads only: the final exit is the unmodified model itself (its segments, frozen)
            frozen = args.train == "heads"
            base_acc = rows[0]["exit_accuracies"][-1] if frozen else evaluate(model, test)["accuracy"]
            atomic_write_text(evaluated, json.dumps([rows, base_acc]))
        per_exit_path = folder / f"per-exit-{key}.json"
        per_exit: dict[str, Any] = {}
        if args.per_exit and per_exit_path.exists():
            per_exit = json.loads(per_exit_path.read_text())
        elif args.per_exit:
            per_exit = choose_per_exit(ee, model, val, full_macs, args)
            per_exit["rows"] = evaluate_early_exit(
                ee, test, thresholds=list(per_exit["chosen"].values()), example_inputs=example
            )
            atomic_write_text(per_exit_path, json.dumps(per_exit))
        if per_exit:
            chosen = {**chosen, **per_exit["chosen"]}
            rows = [*rows, *per_exit["rows"]]
            print(json.dumps({"validation": per_exit["val_rows"], "oracle": per_exit["oracle"]}))
    ms: dict[str, float] = {}
    if not args.no_timing:
        images = torch.stack([bundle.test[i][0] for i in range(len(bundle.test))])
        pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[
            : args.batch * args.batches
        ]
        batches = list(images[pick].split(args.batch))  # random test images: classes mixed in every batch
        runners: dict[str, Any] = {"full model": model}
        for name, t in chosen.items():
            runners[name] = copy.deepcopy(ee).set_policy(threshold=t).eval()
        with torch_threads(args.threads):
            ms = time_batches(runners, batches, rounds=args.rounds)
    table = []
    for (name, t), row in zip(chosen.items(), rows):
        table.append(
            {
                "rule": name,
                "threshold": round(t, 4) if isinstance(t, float) else [round(x, 4) for x in t],
                "test_acc": round(row["accuracy"], 4),
                "drop_pts": round(100 * (base_acc - row["accuracy"]), 2),
                "exit_shares": [round(s, 3) for s in row["exit_shares"]],
                "avg_macs_M": round(row["expected_macs"] / 1e6, 2),
                "macs_x": round(full_macs / row["expected_macs"], 2),
                "ms_per_batch": round(ms[name], 1) if ms else None,
                "latency_x": round(ms["full model"] / ms[name], 2) if ms else None,
            }
        )
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    head = {
        "protocol": protocol.name, "baseline": Path(info["path"] or "").name, "unmodified_test_acc": base_acc,
        "exit_test_accs": [round(a, 4) for a in rows[0]["exit_accuracies"]], "exits": ee.exit_names,
        "exit_macs_M": [round(m / 1e6, 2) for m in rows[0]["exit_macs"]], "full_macs_M": round(full_macs / 1e6, 2),
        "full_ms": round(ms["full model"], 1) if ms else None, "train_s": round(head_time),
        "loadavg_before": load_before, "loadavg_after": load_after, "args": {k: str(v) for k, v in vars(args).items()},
    }  # fmt: skip
    print(json.dumps(head))
    for row in table:
        print(json.dumps(row))
    if args.json is not None:
        args.json.write_text(json.dumps({**head, "rows": table}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
