"""E5 APoZ neuron pruning on CIFAR-10: the lecture's table, for a Linear layer and for conv channels.

Hu et al. (2016) prune the neurons with the highest Average Percentage of Zeros after the ReLU, in
rounds, and fine-tune the smaller network from its surviving weights. Two targets:

- ``--target linear``: the hidden FC ``classifier.0`` (120 neurons) of LeNet-5 on 32x32 RGB
  (LeNet's ``ip1`` in the paper), baseline trained here at the protocol's settings (cached);
- ``--target conv``: the last conv ``features.21`` (256 channels) of the protocol's narrow VGG (the
  paper's CONV5_3).

Each round removes ``--amount`` of the layer's remaining neurons by APoZ measured on a validation
split (training images outside the protocol's subset, never the test set), then fine-tunes
``--finetune-epochs`` starting from the survivors ("with init"); the same architecture, re-initialised
at random and trained as long in total (the baseline's epochs + the fine-tuning so far, at the
baseline's rate), is the "without init" column (``--scratch-rounds``: the rounds that get it).
Per round: neurons kept, params, test accuracy right after pruning / with / without init, and the
layer's APoZ after fine-tuning: mean and the count of neurons above 0.6, 0.7, 0.8, 0.9.

    python benchmarks/apoz.py --quick --target linear     # smoke run
    python benchmarks/apoz.py --target linear --rounds 4  # CPU protocol
    python benchmarks/apoz.py --report                    # the tables from the stored rows
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cifar_protocol as cp  # noqa: E402
from e5_rows import FirstBatches, RowStore, add_shortening_flags, shortened  # noqa: E402

import netcompress as nc  # noqa: E402
from netcompress.evaluation import evaluate, torch_threads  # noqa: E402
from netcompress.pruning.neuron import neuron_statistics, prune_neurons, reinitialise_  # noqa: E402

# LeNet-5 on 32x32 RGB (its hidden FC is E5's Linear layer); local to this script's process
cp.PROTOCOL_MODELS.setdefault(
    "lenet", {"model": "lenet", "kwargs": {"in_channels": 3, "input_size": 32}, "lr": 0.05}
)
TARGETS = {"linear": ("lenet", "classifier.0"), "conv": ("narrow_vgg", "features.21")}
THRESHOLDS = (0.6, 0.7, 0.8, 0.9)


def apoz_stats(model, layer: str, loader, max_batches: int) -> dict:
    """Mean APoZ of ``layer``'s neurons and how many lie above each threshold (on ``loader``)."""
    groups, stats = neuron_statistics(model, loader, layers=[layer], max_batches=max_batches)
    stat = stats[next(iter(groups))]
    apoz = stat.zeros / stat.count.clamp(min=1)
    out = {"neurons": int(apoz.numel()), "mean_apoz": float(apoz.mean())}
    out.update({f"above_{t}": int((apoz > t).sum()) for t in THRESHOLDS})
    return out


def reinitialised(model, seed: int):
    """A copy of ``model`` with every parameter drawn afresh (the "without init" control)."""
    fresh = copy.deepcopy(model)
    reinitialise_(fresh, seed=seed)
    return fresh


def run(args, protocol, store: RowStore) -> list[dict]:
    name, layer = TARGETS[args.target]
    bundle = cp.load_data(protocol)
    train_loader, test_loader = cp.loaders(bundle, protocol)
    full_loader, train_loader = train_loader, FirstBatches(train_loader, args.train_batches)
    if protocol.train_subset is None:
        raise SystemExit("the full protocol has no held-out split for APoZ; use --quick or the CPU protocol")
    val = cp.heldout_loader(protocol, size=args.val_images)
    base, info = cp.train_baseline(name, protocol=protocol, bundle=bundle)
    rows = []
    with torch_threads(protocol.train_threads):
        key0 = (args.target, 0)
        if store.get(key0) is None or args.redo:
            row = {"target": args.target, "model": name, "layer": layer, "round": 0}
            row["params"] = sum(p.numel() for p in base.parameters())
            row["acc_with_init"] = evaluate(base, test_loader)["accuracy"]
            row.update(apoz_stats(base, layer, val, args.max_batches))
            row["baseline_cache_hit"] = info.get("cache_hit")
            store.put(key0, row)
            rows.append(row)
            print(json.dumps(row), flush=True)
        current, epochs_so_far = base, args.finetune_epochs * (args.start_round - 1)
        if args.start_round > 1:  # continue from the model a previous run saved after that round
            current = nc.load(_round_file(store, args, args.start_round - 1)).eval()
        for r in range(args.start_round, args.rounds + 1):
            started = time.perf_counter()
            current, summary = prune_neurons(
                current,
                val,
                criterion="apoz",
                amount=args.amount,
                layers=[layer],
                max_batches=args.max_batches,
            )
            key = (args.target, r)
            epochs_so_far += args.finetune_epochs
            tune = cp.train_config(protocol, epochs=args.finetune_epochs, lr=args.lr)
            row = {"target": args.target, "model": name, "layer": layer, "round": r, "amount": args.amount}
            row["params"] = summary["params_after"]
            row["acc_pruned"] = evaluate(current, test_loader)["accuracy"]
            scratch = reinitialised(current, protocol.seed + r)
            nc.fit(current.train(), train_loader, config=tune)
            row["acc_with_init"] = evaluate(current.eval(), test_loader)["accuracy"]
            row.update(apoz_stats(current, layer, val, args.max_batches))
            if args.scratch_rounds is None or r in args.scratch_rounds:
                # the same total training as the "with init" model: the baseline's epochs + fine-tuning so far
                tuned = round(epochs_so_far * len(train_loader) / len(full_loader))  # in full epochs
                scratch_epochs = protocol.epochs + max(1, tuned)
                scratch_cfg = cp.train_config(protocol, epochs=scratch_epochs, lr=args.scratch_lr)
                nc.fit(scratch.train(), full_loader, config=scratch_cfg)
                row["acc_without_init"] = evaluate(scratch.eval(), test_loader)["accuracy"]
                row["scratch_epochs"] = scratch_epochs
            row["time_s"] = round(time.perf_counter() - started, 1)
            row["finetune_epochs"] = args.finetune_epochs
            nc.save(current, _round_file(store, args, r))
            store.put(key, row)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def _round_file(store: RowStore, args, r: int) -> Path:
    return store.path.with_name(f"{store.path.stem}-{args.target}-round{r}.nc")


def report(store: RowStore) -> None:
    columns = [
        ("round", "round", cp.fmt_number()),
        ("neurons kept", "neurons", cp.fmt_number()),
        ("params", "params", cp.fmt_number()),
        ("acc right after pruning %", "acc_pruned", cp.fmt_percent),
        ("acc, FT from survivors (with init) %", "acc_with_init", cp.fmt_percent),
        ("acc, re-initialised (without init) %", "acc_without_init", cp.fmt_percent),
        ("mean APoZ", "mean_apoz", cp.fmt_number(3)),
        *[(f"APoZ > {t}", f"above_{t}", cp.fmt_number()) for t in THRESHOLDS],
    ]
    for target in TARGETS:
        rows = sorted((r for r in store.rows.values() if r["target"] == target), key=lambda r: r["round"])
        if rows:
            print(f"\n{target}: {rows[0]['model']} {rows[0]['layer']}\n")
            print(cp.markdown_table(rows, columns))


def main(argv: list[str] | None = None) -> list[dict] | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--target", choices=sorted(TARGETS), default="linear")
    parser.add_argument("--amount", type=float, default=0.25, help="share of the remaining neurons per round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=0.01, help="fine-tuning from the survivors")
    parser.add_argument("--scratch-lr", type=float, default=0.05, help="the re-initialised control")
    parser.add_argument(
        "--scratch-rounds", type=lambda v: [int(x) for x in v.split(",") if x], default=None,
        help="rounds with the re-initialised control (default all; '' none)",
    )  # fmt: skip
    parser.add_argument("--val-images", type=int, default=2000)
    parser.add_argument("--max-batches", type=int, default=4)
    parser.add_argument("--start-round", type=int, default=1, help="continue a previous run's rounds")
    parser.add_argument("--redo", action="store_true", help="measure the baseline row again")
    parser.add_argument("--report", action="store_true")
    add_shortening_flags(parser)
    args = parser.parse_args(argv)
    protocol = shortened(cp.protocol_from_flags(quick=args.quick, full=False), args)
    store = RowStore("apoz", protocol.name)
    if args.report:
        report(store)
        return None
    return run(args, protocol, store)


if __name__ == "__main__":
    main()
