"""Deep Compression on the CIFAR-10 CPU protocol: prune + cluster + one entropy-coded file.

From the protocol baseline (``cifar_protocol.train_baseline``, cached), in stages:

0. ``channels`` (only with ``--channel-ratio R``): structured L1 channel pruning first (``prune_channels``,
   ``R`` of every group's channels removed: no position bits for them), ``--channel-epochs`` of distilled
   fine-tuning; the per-layer rates below then apply to the smaller layers;
1. ``prune-r<i>``: ``--rounds`` rounds of per-layer L1 unstructured pruning to the layer's rate
   (``--rates first/middle/big``: the first conv, the others, the layers >= ``--big-size`` weights;
   geometric steps, the same share each round; with ``--kernel-rates first/middle/big`` each conv with a
   spatial kernel first loses that share of its whole kxk kernels, ``nc.prune_kernels_``, on the same steps,
   so the kept weights sit in fewer kernels and their positions cost fewer bits), each followed by ``--prune-epochs`` of fine-tuning
   with the masks kept, distilled from the unpruned model (``--kd-alpha``, ``--kd-temperature``;
   ``--kd-alpha 0`` is plain cross entropy), then ``--extra-epochs`` more as a stage of its own;
2. ``cluster``: BatchNorm folded into the convs when ``--fold-bn`` (after the pruning fine-tuning, which
   trains with BN), or with ``--channel-scale`` each BN replaced by a float per-channel scale + bias and
   the conv's channels normalised to unit RMS (``bn_to_channel_scale_``: the shared values are scale-free,
   the scales train in float), sparsity-preserving k-means per layer (``--clusters``, ``--big-clusters``;
   zero its own centroid), then ``--cluster-epochs`` of cluster-preserving fine-tuning at ``--cluster-lr`` with the
   centroid gradient ``--centroid-grad`` (mean / sqrt / sum, see ``ClusterPreserving``), distilled too;
3. ``nc.save_compressed`` without the pruning masks (zero is a pinned centroid), raw tensors (scales) in
   ``--dense-dtype``, reloaded with ``nc.load_compressed`` and evaluated again.

Every choice is read on the validation split (``cp.heldout_loader``: ``--val-size`` training images outside
the protocol's subset; ``--select-size 5000`` also scores the pruned and clustered models on a larger held-out
split, for choices between close variants, and ``--no-test`` leaves the test set unread until the choice is made);
the test set is read once, at the end (and for the baseline, cached). Each stage's
weights, and each fine-tuning epoch (``fit``'s resumable checkpoint), are cached under
``benchmarks/.cache/dc-<settings hash>/``: a run killed by ``timeout 900`` resumes where it stopped.

    python benchmarks/deep_compression.py --quick            # smoke run
    python benchmarks/deep_compression.py --rates 0.5/0.9/0.93 --rounds 2 --prune-epochs 2 --extra-epochs 8 \\
        --cluster-epochs 1 --cluster-lr 0.01 --centroid-grad mean    # CPU protocol, 72.07 % at 36.5x (RESULTS.md)
    python benchmarks/deep_compression.py --channel-ratio 0.375 --rates 0.5/0.6/0.7 --rounds 6 --prune-epochs 1 \
        --extra-epochs 20 --channel-scale --dense-dtype float16 --clusters 16 --big-clusters 8 --cluster-epochs 1 \
        --cluster-lr 0.001 --centroid-grad mean    # narrow VGG, 72.94 % (-0.72) at 36.9x (RESULTS.md, session 15)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cifar_protocol as cp  # noqa: E402
import torch  # noqa: E402
from dc_run import ChunkedLoader, Run  # noqa: E402, F401  (ChunkedLoader: early_exit.py imports it from here)
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Subset  # noqa: E402

import netcompress as nc  # noqa: E402
from netcompress.clustering import ClusterPreserving, bn_to_channel_scale_  # noqa: E402
from netcompress.clustering.model_clustering import fold_bn_  # noqa: E402
from netcompress.core import atomic_write_text  # noqa: E402
from netcompress.data import balanced_subset  # noqa: E402
from netcompress.distillation.hooks import SoftTargetDistillation  # noqa: E402
from netcompress.evaluation import evaluate, torch_threads  # noqa: E402
from netcompress.export.compressed_file import float32_bytes  # noqa: E402
from netcompress.pruning.masks import remove_masks  # noqa: E402

# flags that do not change the result (where it runs, what it prints): left out of the cache key
NOT_IN_KEY = {"quick", "full", "out", "report", "threads", "select_size", "no_test"}
# flags of the clustering stage: its cache file is keyed by them, so variants share the pruning stages
# (and --extra-epochs: the pruning rounds are shared by every length of the extra fine-tuning)
CLUSTER_FLAGS = {
    "clusters",
    "big_clusters",
    "fold_bn",
    "cluster_epochs",
    "cluster_lr",
    "centroid_grad",
    "extra_epochs",
    "channel_scale",
    "dense_dtype",
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--model", default="narrow_vgg", choices=sorted(cp.PROTOCOL_MODELS))
    parser.add_argument(
        "--rates", default="0.5/0.9/0.93", help="pruning rate: first conv / others / big layers"
    )
    parser.add_argument(
        "--kernel-rates", default=None, help="share of whole kxk kernels pruned first: first/others/big (off)"
    )
    parser.add_argument("--big-size", type=int, default=100_000, help="weights from which a layer is big")
    parser.add_argument("--rounds", type=int, default=2, help="prune to the rates in this many rounds")
    parser.add_argument("--prune-epochs", type=int, default=2, help="fine-tuning epochs after each round")
    parser.add_argument("--prune-lr", type=float, default=0.01)
    parser.add_argument(
        "--extra-epochs",
        type=int,
        default=0,
        help="more pruned fine-tuning after the last round (its own stage)",
    )
    parser.add_argument("--kd-alpha", type=float, default=0.9, help="weight of the teacher's soft targets")
    parser.add_argument("--kd-temperature", type=float, default=4.0)
    parser.add_argument("--clusters", type=int, default=16, help="shared values per layer (zero included)")
    parser.add_argument("--big-clusters", type=int, default=None, help="clusters of the big layers")
    parser.add_argument("--fold-bn", action="store_true", help="fold BN into the convs before clustering")
    parser.add_argument("--channel-scale", action="store_true", help="BN -> float per-channel scales first")
    parser.add_argument(
        "--dense-dtype", choices=("float32", "float16"), default="float32", help="raw tensors in the file"
    )
    parser.add_argument("--cluster-epochs", type=int, default=2)
    parser.add_argument("--cluster-lr", type=float, default=0.002)
    parser.add_argument("--centroid-grad", choices=("mean", "sqrt", "sum"), default="sqrt")
    parser.add_argument(
        "--channel-ratio", type=float, default=0.0, help="structured channel pruning first (0: off)"
    )
    parser.add_argument("--channel-epochs", type=int, default=2, help="fine-tuning after the channel pruning")
    parser.add_argument("--val-size", type=int, default=2000, help="held-out validation images")
    parser.add_argument(
        "--select-size",
        type=int,
        default=None,
        help="also score the pruned and the clustered model on this many held-out images, for the choice "
        "between runs (not in the cache key: a cached run is scored without training again)",
    )
    parser.add_argument(
        "--no-test", action="store_true", help="write the file but do not read the test set (choose first)"
    )
    parser.add_argument("--test-subset", type=int, default=None, help="SHORTENED: N balanced test images")
    parser.add_argument("--baseline-epochs", type=int, default=None, help="SHORTENED baseline (cached)")
    parser.add_argument(
        "--chunks", type=int, default=4, help="checkpoint every 1/N epoch (a killed run loses at most that)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: two threads spin against each other under load)",
    )
    parser.add_argument("--out", default=None, help="copy the .ncz file here too")
    parser.add_argument("--report", action="store_true", help="print the rows of every cached run")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    if args.report:
        return report()
    protocol = cp.protocol_from_flags(quick=args.quick, full=args.full)
    bundle = cp.load_data(protocol)
    train_loader, test_loader = cp.loaders(bundle, protocol)
    if args.test_subset is not None:
        keep = balanced_subset(bundle.test.labels.numpy(), size=args.test_subset, num_classes=10, seed=0)
        test_loader = DataLoader(Subset(bundle.test, keep.tolist()), batch_size=protocol.eval_batch_size)
    base, info = cp.train_baseline(args.model, protocol=protocol, bundle=bundle, epochs=args.baseline_epochs)
    val_size = min(args.val_size, 1000) if args.quick else args.val_size
    val_loader = cp.heldout_loader(protocol, size=val_size)
    select = f"acc_sel{args.select_size}" if args.select_size else None
    select_loader = cp.heldout_loader(protocol, size=args.select_size) if select else None
    settings = {k: v for k, v in vars(args).items() if k not in NOT_IN_KEY | CLUSTER_FLAGS}
    settings.update(protocol=protocol.name, baseline=Path(info["path"] or "").name)
    if not args.channel_ratio:  # off: the settings (and the cache keys) of the runs before the flag
        settings.pop("channel_ratio"), settings.pop("channel_epochs")
    if not args.kernel_rates:  # off: the cache keys of the runs before the flag
        settings.pop("kernel_rates")
    clustering = {k: v for k, v in vars(args).items() if k in CLUSTER_FLAGS}
    run = Run(cp.CACHE_DIR / f"dc-{args.model}-{cp.cache_key(settings)}", settings)
    variant = f"cluster-{cp.cache_key(clustering)}"
    run.note_invocation("start")
    shared = run.rows["summary"]
    row = run.rows.setdefault(variant, {"clustering": clustering})
    teacher = copy.deepcopy(base).eval()
    kd = args.kd_alpha > 0
    train_loader = ChunkedLoader(train_loader, args.chunks, seed=protocol.seed)
    model = copy.deepcopy(base)
    if args.channel_ratio:
        model = channel_pruned(base, args.channel_ratio, cp.example_input(bundle))
    rates = layer_rates(model, args)
    row["rates"] = rates
    with torch_threads(args.threads):
        if "acc_val_baseline" not in shared:
            shared["acc_val_baseline"] = evaluate(base, val_loader)["accuracy"]
            run.write()
        if "acc_test_baseline" not in shared:
            shared["acc_test_baseline"] = baseline_test_acc(info, base, test_loader, args.test_subset)
            run.write()
        if args.channel_ratio and not run.load("channels", model):
            if "acc_val_channels_before_ft" not in shared:
                shared["acc_val_channels_before_ft"] = evaluate(model.eval(), val_loader)["accuracy"]
                shared["channels_weights"] = nonzero_weights(model)
                run.write()
            hooks = [SoftTargetDistillation(teacher, temperature=args.kd_temperature, alpha=args.kd_alpha)]
            tune = cp.train_config(protocol, epochs=args.channel_epochs * args.chunks, lr=args.prune_lr)
            run.fit("channels", model, train_loader, tune, hooks if kd else [])
            shared["acc_val_channels"] = evaluate(model.eval(), val_loader)["accuracy"]
            run.save("channels", model)
        for step in range(1, args.rounds + 1):
            stage = f"prune-r{step}"
            structure(model, rates, step, args)
            if run.load(stage, model):
                continue
            hooks = [SoftTargetDistillation(teacher, temperature=args.kd_temperature, alpha=args.kd_alpha)]
            if f"acc_val_{stage}_before_ft" not in shared:  # not again when a killed run resumes
                shared[f"acc_val_{stage}_before_ft"] = evaluate(model.eval(), val_loader)["accuracy"]
                run.write()
            tune = cp.train_config(protocol, epochs=args.prune_epochs * args.chunks, lr=args.prune_lr)
            run.fit(stage, model, train_loader, tune, hooks if kd else [])
            shared[f"acc_val_{stage}"] = evaluate(model.eval(), val_loader)["accuracy"]
            run.save(stage, model)
        if args.extra_epochs:
            stage = f"extra{args.extra_epochs}"
            if not run.load(stage, model):
                hooks = [
                    SoftTargetDistillation(teacher, temperature=args.kd_temperature, alpha=args.kd_alpha)
                ]
                tune = cp.train_config(protocol, epochs=args.extra_epochs * args.chunks, lr=args.prune_lr)
                run.fit(stage, model, train_loader, tune, hooks if kd else [])
                shared[f"acc_val_{stage}"] = evaluate(model.eval(), val_loader)["accuracy"]
                run.save(stage, model)
        last = f"extra{args.extra_epochs}" if args.extra_epochs else f"prune-r{args.rounds}"
        if select and f"{select}_{last}" not in shared:
            shared[f"{select}_{last}"] = evaluate(model.eval(), select_loader)["accuracy"]
            shared[f"{select}_baseline"] = evaluate(base.eval(), select_loader)["accuracy"]
            run.write()
        cluster(model, rates, args)
        if not run.load(variant, model):
            if "acc_val_clustered_before_ft" not in row:
                row["acc_val_clustered_before_ft"] = evaluate(model.eval(), val_loader)["accuracy"]
                run.write()
            hooks = [ClusterPreserving(args.centroid_grad)]
            if kd:
                hooks.append(
                    SoftTargetDistillation(teacher, temperature=args.kd_temperature, alpha=args.kd_alpha)
                )
            tune = cp.train_config(protocol, epochs=args.cluster_epochs * args.chunks, lr=args.cluster_lr)
            run.fit(variant, model, train_loader, tune, hooks)
            row["acc_val_clustered"] = evaluate(model.eval(), val_loader)["accuracy"]
            run.save(variant, model)
        if select and f"{select}_clustered" not in row:
            row[f"{select}_clustered"] = evaluate(model.eval(), select_loader)["accuracy"]
            run.write()
        if "acc_test_reloaded" not in row and not (args.no_test and "file_bytes" in row):
            row.update(
                finish(model.eval(), base, bundle, None if args.no_test else test_loader, run, args, variant)
            )
            run.write()
    run.note_invocation("end")
    print(json.dumps({**shared, **row}, indent=1))
    return {**shared, **row}


def structure(model: nn.Module, rates: dict[str, float], step: int, args) -> None:
    """Prune ``model`` IN PLACE to round ``step``'s rates (geometric: the same share each round); with
    ``--kernel-rates`` each Conv2d with a spatial kernel first loses that round's share of whole kernels."""
    kernels = layer_rates(model, args, args.kernel_rates) if args.kernel_rates else {}
    for name, rate in rates.items():
        module = model.get_submodule(name)
        if kernels.get(name) and isinstance(module, nn.Conv2d) and module.weight[0, 0].numel() > 1:
            kfrac = 1 - (1 - kernels[name]) ** (step / args.rounds)
            nc.prune_kernels_(model, amount=kfrac, include=[name])
        frac = 1 - (1 - rate) ** (step / args.rounds)
        nc.prune_unstructured_(model, amount=frac, scope="layer", include=[name])


def channel_pruned(base: nn.Module, ratio: float, example: torch.Tensor) -> nn.Module:
    """A smaller copy of ``base`` with ``ratio`` of every channel group removed by L1 norm (deterministic:
    a resumed run rebuilds the same shapes before loading the cached weights)."""
    return nc.prune_channels(base.eval(), example, ratio=ratio, importance="l1", round_to=1)


def cluster(model: nn.Module, rates: dict[str, float], args) -> None:
    """Fold BN (``--fold-bn``) and cluster every pruned layer IN PLACE, zero kept as its own centroid."""
    if args.fold_bn and args.channel_scale:
        raise SystemExit("--fold-bn and --channel-scale exclude each other")
    if args.fold_bn:
        fold_bn_(model.eval())
    if args.channel_scale:
        bn_to_channel_scale_(model.eval())
    big = [n for n in rates if model.get_submodule(n).weight.numel() >= args.big_size]
    if args.big_clusters is None or not big:
        nc.cluster_weights_(model.eval(), clusters=args.clusters, preserve_zeros=True)
    else:
        nc.cluster_weights_(model.eval(), clusters=args.clusters, preserve_zeros=True, exclude=big)
        nc.cluster_weights_(model.eval(), clusters=args.big_clusters, preserve_zeros=True, include=big)


def finish(model, base, bundle, test_loader, run: Run, args, variant: str) -> dict:
    """Test accuracy, the file (bytes by part, ratio to the dense float32 file) and the reloaded model's accuracy
    (``test_loader`` None: the file and its bytes only; ``save_compressed`` has checked it decodes to the model)."""
    path = run.folder / f"{variant}.ncz"
    shipped = copy.deepcopy(model)
    remove_masks(shipped)  # the pruned zeros stay: zero is a pinned centroid of every clustered layer
    summary = nc.save_compressed(
        shipped, path, example_inputs=cp.example_input(bundle), dense_dtype=args.dense_dtype
    )
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / f"{args.model}.ncz").write_bytes(path.read_bytes())
    reloaded = nc.load_compressed(summary["path"])
    dense = float32_bytes(base)  # the unpruned, unfolded model's float file
    kept = nonzero_weights(model)
    tested = (
        {}
        if test_loader is None
        else {
            "acc_test": evaluate(model, test_loader)["accuracy"],
            "acc_test_reloaded": evaluate(reloaded, test_loader)["accuracy"],
        }
    )
    return {
        **tested,
        "file_bytes": summary["size_bytes"],
        "float32_bytes": dense,
        "ratio_vs_float32": round(dense / summary["size_bytes"], 2),
        "parts": summary["parts"],
        "kept_weights": kept,
        "bits_per_kept_weight": {k: round(8 * summary["parts"][k] / max(1, kept), 2) for k in ("positions", "indices")},
    }  # fmt: skip


def baseline_test_acc(info: dict, base: nn.Module, test_loader, test_subset: int | None) -> float:
    """The baseline's test accuracy, cached beside its checkpoint (the full test set takes minutes under load)."""
    path = cp.CACHE_DIR / "dc-baseline-test-acc.json"
    known = json.loads(path.read_text()) if path.exists() else {}
    key = f"{Path(info['path'] or '').name}/test{test_subset}"
    if key not in known:
        known[key] = evaluate(base, test_loader)["accuracy"]
        atomic_write_text(path, json.dumps(known, indent=1))
    return known[key]


def layer_rates(model: nn.Module, args, spec: str | None = None) -> dict[str, float]:
    """Pruning rate per Conv/Linear from ``--rates first/middle/big`` (or ``spec``, same form).

    Example:
        >>> layer_rates(vgg, parse(["--rates", "0.5/0.9/0.93"]))["features.0"]
        0.5
    """
    first, middle, big = parse_rates(spec or args.rates)
    layers = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    rates = {}
    for i, name in enumerate(layers):
        size = model.get_submodule(name).weight.numel()
        rates[name] = first if i == 0 else big if size >= args.big_size else middle
    return rates


def parse_rates(spec: str) -> tuple[float, float, float]:
    parts = spec.split("/")
    try:
        rates = tuple(float(r) for r in parts)
    except ValueError:
        rates = ()
    if len(rates) != 3 or not all(0 <= r < 1 for r in rates):
        raise SystemExit(f"rates {spec!r}: expected first/others/big, three numbers in [0, 1)")
    return rates


def nonzero_weights(model: nn.Module) -> int:
    return sum(int((m.weight != 0).sum()) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear))


def report() -> dict:
    """Every cached run's settings and figures, one JSON line each."""
    out = {}
    for folder in sorted(cp.CACHE_DIR.glob("dc-*/")):
        path = folder / "rows.json"
        if path.exists():
            rows = json.loads(path.read_text())
            out[folder.name] = {k: v for k, v in rows.items() if not k.startswith(("history", "invocations"))}
            print(folder.name, json.dumps(out[folder.name]))
    return out


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
