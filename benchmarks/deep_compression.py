"""Deep Compression on the CIFAR-10 CPU protocol: prune + cluster + one entropy-coded file.

From the protocol baseline (``cifar_protocol.train_baseline``, cached): unstructured L1 pruning per
layer (``--amount``), fine-tuning with the masks kept, sparsity-preserving k-means weight sharing
(``--clusters``, zero its own centroid), cluster-preserving fine-tuning, then
``nc.save_compressed``. Reports test accuracy after each stage, the file's bytes by part and the
ratio against the float32 state dict, and checks that the file reloads to the same accuracy.

    python benchmarks/deep_compression.py --quick          # smoke run, about a minute
    python benchmarks/deep_compression.py                  # CPU protocol (15-epoch baseline)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cifar_protocol as cp  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Subset  # noqa: E402

import netcompress as nc  # noqa: E402
from netcompress.clustering import ClusterPreserving  # noqa: E402
from netcompress.clustering.model_clustering import fold_bn_  # noqa: E402
from netcompress.data import balanced_subset  # noqa: E402
from netcompress.evaluation import evaluate, torch_threads  # noqa: E402
from netcompress.export.compressed_file import float32_bytes  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--model", default="narrow_vgg", choices=sorted(cp.PROTOCOL_MODELS))
    parser.add_argument("--amount", type=float, default=0.9, help="fraction of weights pruned per layer")
    parser.add_argument(
        "--first-amount", type=float, default=None, help="the first conv's rate (default --amount)"
    )
    parser.add_argument("--big-amount", type=float, default=None, help="rate of layers >= --big-size weights")
    parser.add_argument("--big-size", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=1, help="prune to the rates in this many steps")
    parser.add_argument("--clusters", type=int, default=32, help="shared values per layer (zero included)")
    parser.add_argument("--big-clusters", type=int, default=None, help="clusters of the big layers")
    parser.add_argument(
        "--fold-bn", action="store_true", help="fold BatchNorm into the convs before clustering"
    )
    parser.add_argument("--cluster-lr", type=float, default=None, help="cluster fine-tuning lr")
    parser.add_argument("--finetune-subset", type=int, default=None, help="fine-tune on N train images")
    parser.add_argument("--test-subset", type=int, default=None, help="evaluate on N balanced test images")
    parser.add_argument("--skip-stage-evals", action="store_true", help="test accuracy only at the ends")
    parser.add_argument("--baseline-epochs", type=int, default=None, help="shortened baseline (cached)")
    parser.add_argument("--finetune-epochs", type=int, default=3, help="after pruning and after clustering")
    parser.add_argument("--finetune-lr", type=float, default=0.01)
    parser.add_argument("--out", default=None, help="where the .ncz file goes (default: a temp folder)")
    args = parser.parse_args(argv)
    protocol = cp.protocol_from_flags(quick=args.quick, full=args.full)
    bundle = cp.load_data(protocol)
    train_loader, test_loader = cp.loaders(bundle, protocol)
    train_loader, test_loader = shortened(bundle, protocol, args, train_loader, test_loader)
    model, info = cp.train_baseline(args.model, protocol=protocol, bundle=bundle, epochs=args.baseline_epochs)
    row: dict = {
        "model": args.model,
        "protocol": protocol.name,
        "amount": args.amount,
        "clusters": args.clusters,
        "baseline_epochs": info["settings"]["epochs"],
        "finetune_epochs": args.finetune_epochs,
        "fold_bn": args.fold_bn,
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
    }
    row["acc_baseline"] = evaluate(model, test_loader)["accuracy"]
    dense_float32 = float32_bytes(model)  # the unpruned, unfolded model's float file
    started = time.perf_counter()
    tune = cp.train_config(protocol, epochs=args.finetune_epochs, lr=args.finetune_lr)
    with torch_threads(protocol.train_threads):
        rates = layer_rates(model, args)
        row["rates"] = rates
        for step in range(1, args.rounds + 1):
            for name, rate in rates.items():
                frac = 1 - (1 - rate) ** (step / args.rounds)  # geometric: the same share each round
                nc.prune_unstructured_(model, amount=frac, scope="layer", include=[name])
            if not args.skip_stage_evals:
                row[f"acc_pruned_r{step}"] = evaluate(model, test_loader)["accuracy"]
            nc.fit(model.train(), train_loader, config=tune)
        row["acc_pruned_finetuned"] = evaluate(model.eval(), test_loader)["accuracy"]
        if args.fold_bn:  # after the BN-trained pruning fine-tuning: a BN-free VGG diverged at lr 0.01
            fold_bn_(model.eval())
        big = [n for n in rates if model.get_submodule(n).weight.numel() >= args.big_size]
        if args.big_clusters is None:
            nc.cluster_weights_(model, clusters=args.clusters, preserve_zeros=True)
        else:
            nc.cluster_weights_(model, clusters=args.clusters, preserve_zeros=True, exclude=big)
            nc.cluster_weights_(model, clusters=args.big_clusters, preserve_zeros=True, include=big)
        if not args.skip_stage_evals:
            row["acc_clustered"] = evaluate(model, test_loader)["accuracy"]
        tune = cp.train_config(protocol, epochs=args.finetune_epochs, lr=args.cluster_lr or args.finetune_lr)
        nc.fit(model.train(), train_loader, config=tune, hooks=[ClusterPreserving()])
        row["acc_clustered_finetuned"] = evaluate(model.eval(), test_loader)["accuracy"]
    row["compress_time_s"] = round(time.perf_counter() - started, 1)
    folder = Path(args.out) if args.out else Path(tempfile.mkdtemp())
    folder.mkdir(parents=True, exist_ok=True)
    dense = nc.save(model, folder / "dense.nc")[
        "size_bytes"
    ]  # nc.save: every tensor raw (masks, indices too)
    summary = nc.save_compressed(model, folder / f"{args.model}.ncz", example_inputs=cp.example_input(bundle))
    reloaded = nc.load_compressed(summary["path"])
    row["acc_reloaded"] = evaluate(reloaded, test_loader)["accuracy"]
    row.update(
        file_bytes=summary["size_bytes"],
        float32_bytes=dense_float32,
        ratio_vs_float32=round(dense_float32 / summary["size_bytes"], 1),
        nc_save_bytes=dense,
        parts=summary["parts"],
        encodings=summary["encodings"],
        baseline_cache_hit=info.get("cache_hit"),
    )
    row["bits_per_kept_weight"] = {
        k: round(8 * summary["parts"][k] / max(1, nonzero_weights(model)), 2)
        for k in ("positions", "indices")
    }
    print(json.dumps(row, indent=1))
    return row


def shortened(bundle, protocol, args, train_loader, test_loader):
    """Fine-tuning / test loaders on subsets (``--finetune-subset``, ``--test-subset``) for a loaded machine."""
    if args.finetune_subset is not None:
        keep = balanced_subset(
            bundle.train.labels.numpy(), size=args.finetune_subset, num_classes=bundle.num_classes, seed=0
        )
        train_loader = DataLoader(
            Subset(bundle.train, keep.tolist()),
            batch_size=protocol.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(protocol.seed),
        )
    if args.test_subset is not None:
        keep = balanced_subset(
            bundle.test.labels.numpy(), size=args.test_subset, num_classes=bundle.num_classes, seed=0
        )
        test_loader = DataLoader(Subset(bundle.test, keep.tolist()), batch_size=protocol.eval_batch_size)
    return train_loader, test_loader


def layer_rates(model, args) -> dict[str, float]:
    """Pruning rate per Conv/Linear: ``--first-amount`` for the first, ``--big-amount`` for the big ones."""
    layers = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    rates = {}
    for i, name in enumerate(layers):
        size = model.get_submodule(name).weight.numel()
        rate = args.amount
        if i == 0 and args.first_amount is not None:
            rate = args.first_amount
        elif size >= args.big_size and args.big_amount is not None:
            rate = args.big_amount
        rates[name] = rate
    return rates


def nonzero_weights(model) -> int:
    return sum(int((m.weight != 0).sum()) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear))


if __name__ == "__main__":
    main()
