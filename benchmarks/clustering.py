"""E5 weight clustering on the CIFAR-10 CPU protocol: accuracy vs clusters per layer, file bytes.

From the protocol's narrow-VGG baseline (``cifar_protocol.train_baseline``, cached), for every
``--clusters`` k, one row per variant:

- ``snap``: k-means per layer, no training: accuracy and file only;
- ``ft``: k-means per layer (every Conv/Linear), accuracy right after snapping, then
  ``--finetune-epochs`` of cluster-preserving fine-tuning (``ClusterPreserving``: per-cluster mean
  gradients); the file is ``nc.save_compressed`` (indices + codebooks, entropy coded);
- ``loss``: first ``--loss-epochs`` with the cluster loss ``sum_w min_c (w - c)^2`` (weight
  ``--cluster-loss``), then the same as ``ft``;
- ``qat``: BN folded before clustering, then ``--finetune-epochs`` of 8-bit QAT (W8A8) with
  centroids on the integer grid (``GridClusterPreserving``);
- ``control`` / ``control_qat``: the unclustered model fine-tuned / QAT-trained the same epochs at the
  same rate, the reference for "within 0.5 points".

Rows merge into ``benchmarks/.cache/e5-clustering-<protocol>.json`` (one run may measure a part:
``--variants ft --clusters 4,8``); ``--report`` prints the table (for RESULTS.md) and draws the figure.

    python benchmarks/clustering.py --quick                          # smoke run, about a minute
    python benchmarks/clustering.py --variants ft --clusters 4,8,16  # part of the CPU protocol
    python benchmarks/clustering.py --report                         # table + figure from the rows
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cifar_protocol as cp  # noqa: E402
from e5_rows import FirstBatches, RowStore, add_shortening_flags, max_distinct, shortened  # noqa: E402

import netcompress as nc  # noqa: E402
from netcompress.clustering import ClusterLoss, ClusterPreserving  # noqa: E402
from netcompress.core.methods import MethodData, apply  # noqa: E402
from netcompress.evaluation import evaluate, torch_threads  # noqa: E402
from netcompress.quantization.qat import QATConfig  # noqa: E402

VARIANTS = ("control", "control_qat", "snap", "ft", "loss", "qat")
HEADING = "## E5: weight clustering, accuracy vs clusters per layer (CIFAR-10 CPU protocol, shortened)"


def _file_bytes(model, bundle) -> dict:
    folder = Path(tempfile.mkdtemp())
    summary = nc.save_compressed(model, folder / "clustered.ncz", example_inputs=cp.example_input(bundle))
    return {"file_bytes": summary["size_bytes"], "float32_bytes": summary["float32_bytes"]}


def run_variant(variant: str, k: int | None, base, ctx: dict, args) -> dict:
    """Measure one (variant, k) row from a copy of the baseline ``base``."""
    model = copy.deepcopy(base)
    train_loader, test_loader, protocol = ctx["train"], ctx["test"], ctx["protocol"]
    tune = cp.train_config(protocol, epochs=args.finetune_epochs, lr=args.lr)
    row: dict = {
        "variant": variant,
        "clusters": k,
        "epochs": args.finetune_epochs,
        "lr": args.lr,
        "init": args.init,
        "centroid_grad": args.centroid_grad,
    }
    started = time.perf_counter()
    if variant == "control":  # the unclustered model, fine-tuned the same way
        nc.fit(model.train(), train_loader, config=tune)
        row["acc_after"] = evaluate(model.eval(), test_loader)["accuracy"]
    elif variant == "control_qat":  # the unclustered model, QAT-trained the same way
        row["acc_qat"] = evaluate(_qat(model, ctx, args), test_loader)["accuracy"]
    elif variant == "snap":  # clustered, no training: accuracy and file only
        nc.cluster_weights_(model.eval(), clusters=k, init=args.init)
        row["acc_clustered"] = evaluate(model, test_loader)["accuracy"]
        row["max_distinct"] = max_distinct(model)
        row.update(_file_bytes(model, ctx["bundle"]))
    elif variant in ("ft", "loss"):
        if variant == "loss":
            hook = ClusterLoss(args.cluster_loss, clusters=k)
            loss_cfg = cp.train_config(protocol, epochs=args.loss_epochs, lr=args.lr)
            nc.fit(model.train(), train_loader, config=loss_cfg, hooks=[hook])
            row.update(cluster_loss=args.cluster_loss, loss_epochs=args.loss_epochs)
            row["final_cluster_penalty"] = float(hook.last_penalty)
        summary = nc.cluster_weights_(model.eval(), clusters=k, init=args.init)
        row["weight_mse"] = sum(r["weight_mse"] * r["weights"] for r in summary["layers"]) / sum(
            r["weights"] for r in summary["layers"]
        )
        row["acc_clustered"] = evaluate(model, test_loader)["accuracy"]
        nc.fit(model.train(), train_loader, config=tune, hooks=[ClusterPreserving(args.centroid_grad)])
        row["acc_after"] = evaluate(model.eval(), test_loader)["accuracy"]
        row["max_distinct"] = max_distinct(model)
        row.update(_file_bytes(model, ctx["bundle"]))
    elif variant == "qat":
        nc.cluster_weights_(model.eval(), clusters=k, init=args.init, fold_bn=True)
        row["acc_clustered"] = evaluate(model, test_loader)["accuracy"]
        qmodel = _qat(model, ctx, args)
        row["acc_after"] = evaluate(qmodel, test_loader)["accuracy"]
        row["max_distinct"] = max_distinct(qmodel)
    row["time_s"] = round(time.perf_counter() - started, 1)
    return row


def _qat(model, ctx: dict, args):
    cfg = QATConfig(
        bits=8, act_bits=8, epochs=args.finetune_epochs, lr=args.lr, progress=False,
        momentum=ctx["protocol"].momentum, weight_decay=ctx["protocol"].weight_decay, seed=ctx["protocol"].seed,
    )  # fmt: skip
    data = MethodData(train_loader=ctx["train"], calib_loader=ctx["train"])
    return apply(model, cfg, data).model.eval()


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--clusters", default="4,8,16,32,64")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--loss-epochs", type=int, default=1)
    parser.add_argument("--cluster-loss", type=float, default=1.0, help="weight of sum_w min_c (w - c)^2")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--init", default="linear")
    parser.add_argument(
        "--centroid-grad",
        choices=ClusterPreserving.REDUCTIONS,
        default="mean",
        help="ClusterPreserving's reduction",
    )
    parser.add_argument("--redo", action="store_true", help="measure rows already in the store again")
    parser.add_argument("--report", action="store_true", help="write the table and figure, measure nothing")
    add_shortening_flags(parser)
    args = parser.parse_args(argv)
    protocol = shortened(cp.protocol_from_flags(quick=args.quick, full=args.full), args)
    store = RowStore("clustering", protocol.name)
    if args.report:
        return report(store, protocol.name)
    bundle = cp.load_data(protocol)
    train_loader, test_loader = cp.loaders(bundle, protocol)
    base, info = cp.train_baseline("narrow_vgg", protocol=protocol, bundle=bundle)
    train_loader = FirstBatches(train_loader, args.train_batches)
    ctx = {"train": train_loader, "test": test_loader, "protocol": protocol, "bundle": bundle}
    rows = []
    with torch_threads(protocol.train_threads):
        if store.get(("baseline",)) is None or args.redo:
            acc = evaluate(base, test_loader)["accuracy"]
            store.put(("baseline",), {"acc": acc, "cache_hit": info.get("cache_hit")})
        for variant in args.variants.split(","):
            if variant not in VARIANTS:
                raise SystemExit(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
            for k in [None] if variant.startswith("control") else [int(c) for c in args.clusters.split(",")]:
                key = (variant, k, args.finetune_epochs) + ((args.init,) if args.init != "linear" else ())
                key += (
                    (args.centroid_grad,)
                    if args.centroid_grad != "mean" and variant in ("ft", "loss")
                    else ()
                )
                key += (f"lr{args.lr}",) if args.lr != 0.01 else ()
                if store.get(key) is not None and not args.redo:
                    continue
                row = run_variant(variant, k, base, ctx, args)
                store.put(key, row)
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def report(store: RowStore, protocol: str, *, figures: Path = cp.BENCH_DIR / "figures") -> list[dict]:
    """The Markdown table and the accuracy-vs-clusters figure from the stored rows."""
    base = store.get(("baseline",))["acc"]
    rows = [  # the main table: linear init, mean gradients (the other rows are the search for why)
        r
        for k, r in sorted(store.rows.items())
        if k != "baseline"
        and r.get("init", "linear") == "linear"
        and r.get("centroid_grad", "mean") == "mean"
    ]
    control = {k: v for r in rows if r["variant"].startswith("control") for k, v in r.items()}
    table = []
    for k in sorted({r["clusters"] for r in rows if r["clusters"] is not None}):
        by = {r["variant"]: r for r in rows if r["clusters"] == k}
        ft, loss, qat, snap = by.get("ft", {}), by.get("loss", {}), by.get("qat", {}), by.get("snap", {})
        ft = {**snap, **ft}  # a snap-only row gives the clustered accuracy and the file
        table.append(
            {
                "k": k,
                "bits": max(1, (k - 1).bit_length()),
                "snap": ft.get("acc_clustered"),
                "ft": ft.get("acc_after"),
                "delta": None if ft.get("acc_after") is None else 100 * (ft["acc_after"] - base),
                "delta_ft": None
                if ft.get("acc_after") is None or control.get("acc_after") is None
                else 100 * (ft["acc_after"] - control["acc_after"]),
                "loss_snap": loss.get("acc_clustered"),
                "loss_ft": loss.get("acc_after"),
                "qat": qat.get("acc_after"),
                "distinct": max(ft.get("max_distinct", 0), qat.get("max_distinct", 0)) or None,
                "kb": None if "file_bytes" not in ft else ft["file_bytes"] / 1000,
                "ratio": None if "file_bytes" not in ft else ft["float32_bytes"] / ft["file_bytes"],
            }
        )
    columns = [
        ("clusters/layer", "k", cp.fmt_number()),
        ("index bits", "bits", cp.fmt_number()),
        ("acc clustered %", "snap", cp.fmt_percent),
        ("+ cluster-preserving FT %", "ft", cp.fmt_percent),
        ("vs unclustered (points)", "delta", cp.fmt_number(2)),
        ("vs unclustered fine-tuned alike (points)", "delta_ft", cp.fmt_number(2)),
        ("cluster loss, clustered %", "loss_snap", cp.fmt_percent),
        ("cluster loss + FT %", "loss_ft", cp.fmt_percent),
        ("clustered + 8-bit QAT %", "qat", cp.fmt_percent),
        ("max distinct values/layer", "distinct", cp.fmt_number()),
        ("file KB (.ncz)", "kb", cp.fmt_number(1)),
        ("x vs float32", "ratio", cp.fmt_number(1)),
    ]
    text = cp.markdown_table(table, columns)
    lines = [
        f"Unclustered baseline {100 * base:.2f} %; fine-tuned unclustered the same epochs "
        f"{cp.fmt_percent(control.get('acc_after'))} %, 8-bit QAT unclustered {cp.fmt_percent(control.get('acc_qat'))} %.",
        "",
        text,
    ]
    figure = _figure(table, base, protocol, figures)
    if figure:
        lines += ["", f"Figure: [accuracy vs clusters per layer]({figure})"]
    body = "\n".join(lines)
    print(body)
    return table


def _figure(table: list[dict], base: float, protocol: str, folder: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    ks = [r["k"] for r in table]
    for key, label in (
        ("snap", "clustered"),
        ("ft", "+ cluster-preserving FT"),
        ("loss_snap", "cluster loss, clustered"),
        ("loss_ft", "cluster loss + FT"),
        ("qat", "clustered + 8-bit QAT"),
    ):
        pts = [(k, 100 * r[key]) for k, r in zip(ks, table, strict=True) if r[key] is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=label)
    ax.axhline(100 * base, color="k", linestyle="--", label="unclustered")
    ax.axhline(100 * base - 0.5, color="grey", linestyle=":", label="unclustered - 0.5")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("clusters per layer")
    ax.set_ylabel("test accuracy %")
    ax.set_title(f"E5 clustering, narrow VGG, CIFAR-10 ({protocol})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = folder / f"e5_{protocol}_clustering_accuracy_vs_clusters.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"figures/{path.name}"


if __name__ == "__main__":
    main()
