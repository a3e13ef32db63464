"""E5 combinations on the CIFAR-10 CPU protocol, each against its parts alone (shortened schedule).

From the protocol's narrow-VGG baseline (cached), every part trained ``--epochs`` (fine-tuning, KD, QAT):

- ``pkd`` pruning + KD: L1 channel pruning (``--ratio`` of every layer's channels) then fine-tuning with
  cross entropy ("pruning alone") or with soft targets from the unpruned baseline ("pruning + KD"); "KD
  alone": the pruned architecture re-initialised and distilled as long as the baseline trained;
- ``qpc`` QAT + PTQ (+ clustering in ``qpcc``): W8A8 static PTQ alone; 8-bit QAT alone; PTQ then QAT
  with PTQ's scales frozen; ``qpcc``: clustering alone (16 per layer, BN folded first,
  cluster-preserving fine-tuning); clustering then PTQ; clustering then PTQ then QAT (frozen scales,
  centroids on the grid);
- ``ppk`` pruning + PTQ + KD: PTQ of the pruned models of ``pkd`` (with and without KD).

Rows merge into ``benchmarks/.cache/e5-combinations-<protocol>.json``; ``--report`` prints the table.

    python benchmarks/combinations.py --quick                 # smoke run
    python benchmarks/combinations.py --parts pkd,ppk         # part of the CPU protocol
    python benchmarks/combinations.py --report
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
from apoz import reinitialised  # noqa: E402
from e5_rows import FirstBatches, RowStore, add_shortening_flags, max_distinct, shortened  # noqa: E402

import netcompress as nc  # noqa: E402
from netcompress.clustering import ClusterPreserving  # noqa: E402
from netcompress.core.methods import MethodData, apply  # noqa: E402
from netcompress.evaluation import evaluate, torch_threads  # noqa: E402
from netcompress.quantization.ptq import PTQStaticConfig  # noqa: E402
from netcompress.quantization.qat import QATConfig  # noqa: E402

PARTS = ("pkd", "ppk", "qpc", "qpcc")


def _ptq(model, ctx):
    cfg = PTQStaticConfig(bits=8, act_bits=8, num_calib_batches=8)
    return apply(model, cfg, MethodData(calib_loader=ctx["train"])).model.eval()


def _qat(model, ctx, args, *, freeze_scales: bool):
    p = ctx["protocol"]
    cfg = QATConfig(
        bits=8, act_bits=8, epochs=args.epochs, lr=args.qat_lr, freeze_scales=freeze_scales, progress=False,
        momentum=p.momentum, weight_decay=p.weight_decay, seed=p.seed,
    )  # fmt: skip
    return apply(model, cfg, MethodData(train_loader=ctx["train"], calib_loader=ctx["train"])).model.eval()


def _distill(student, teacher, ctx, args, *, epochs: int, lr: float, loader=None):
    p = ctx["protocol"]
    nc.distill_(
        student.train(), teacher.eval(), ctx["train"] if loader is None else loader, epochs=epochs, lr=lr, temperature=4.0, alpha=0.9,
        momentum=p.momentum, weight_decay=p.weight_decay, seed=p.seed, schedule="cosine", progress=False,
    )  # fmt: skip
    return student.eval()


def _row(name: str, model, ctx, started: float, **extra) -> dict:
    return {
        "combination": name,
        "acc": evaluate(model, ctx["test"])["accuracy"],
        "params": sum(p.numel() for n, p in model.named_parameters() if "fq" not in n and "quant" not in n),
        "max_distinct": max_distinct(model),
        "time_s": round(time.perf_counter() - started, 1),
        **extra,
    }


def part_pkd(base, ctx, args, emit) -> None:
    t = time.perf_counter()
    pruned = nc.prune_channels(base, cp.example_input(ctx["bundle"]), ratio=args.ratio, importance="l1")
    emit("pkd", "pruned, no fine-tuning", _row("pruning, no fine-tuning", pruned, ctx, t))
    t = time.perf_counter()
    ft = copy.deepcopy(pruned)
    nc.fit(ft.train(), ctx["train"], config=cp.train_config(ctx["protocol"], epochs=args.epochs, lr=args.lr))
    emit("pkd", "pruning alone", _row("pruning + fine-tuning (CE)", ft.eval(), ctx, t))
    nc.save(ft, ctx["store"].path.with_name("e5-combinations-pruned-ft.nc"))
    t = time.perf_counter()
    kd = _distill(copy.deepcopy(pruned), base, ctx, args, epochs=args.epochs, lr=args.lr)
    emit("pkd", "pruning + KD", _row("pruning + KD", kd, ctx, t))
    nc.save(kd, ctx["store"].path.with_name("e5-combinations-pruned-kd.nc"))
    if args.kd_alone:
        t = time.perf_counter()
        epochs = ctx["protocol"].epochs
        alone = _distill(
            reinitialised(pruned, 0), base, ctx, args, epochs=epochs, lr=0.05, loader=ctx["full_train"]
        )
        emit(
            "pkd",
            "KD alone",
            _row(f"KD alone (pruned architecture from scratch, {epochs} epochs)", alone, ctx, t),
        )


def part_ppk(base, ctx, args, emit) -> None:
    for label, file in (("pruning + PTQ", "pruned-ft"), ("pruning + PTQ + KD", "pruned-kd")):
        t = time.perf_counter()
        model = nc.load(ctx["store"].path.with_name(f"e5-combinations-{file}.nc")).eval()
        emit("ppk", label, _row(label, _ptq(model, ctx), ctx, t))


def part_qpc(base, ctx, args, emit) -> None:
    t = time.perf_counter()
    emit("qpc", "PTQ alone", _row("PTQ alone (W8A8)", _ptq(base, ctx), ctx, t))
    t = time.perf_counter()
    emit("qpc", "QAT alone", _row("QAT alone (W8A8)", _qat(base, ctx, args, freeze_scales=False), ctx, t))
    t = time.perf_counter()
    ptq = _ptq(base, ctx)
    emit(
        "qpc",
        "PTQ + QAT",
        _row("PTQ then QAT, scales frozen", _qat(ptq, ctx, args, freeze_scales=True), ctx, t),
    )


def part_qpc_clustered(base, ctx, args, emit) -> None:
    t = time.perf_counter()
    clustered = copy.deepcopy(base)
    nc.cluster_weights_(clustered, clusters=args.clusters, fold_bn=True)
    tune = cp.train_config(ctx["protocol"], epochs=args.epochs, lr=args.lr)
    nc.fit(clustered.train(), ctx["train"], config=tune, hooks=[ClusterPreserving()])
    emit(
        "qpcc",
        "clustering alone",
        _row(f"clustering alone ({args.clusters}/layer) + FT", clustered.eval(), ctx, t),
    )
    t = time.perf_counter()
    cptq = _ptq(clustered, ctx)
    emit("qpcc", "clustering + PTQ", _row("clustering + PTQ", cptq, ctx, t))
    t = time.perf_counter()
    emit(
        "qpcc", "clustering + PTQ + QAT",
        _row("clustering + PTQ + QAT (frozen scales)", _qat(cptq, ctx, args, freeze_scales=True), ctx, t),
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--epochs", type=int, default=1, help="fine-tuning / KD / QAT epochs of every part")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--qat-lr", type=float, default=0.001)
    parser.add_argument("--ratio", type=float, default=0.5, help="share of channels pruned per layer")
    parser.add_argument("--clusters", type=int, default=16)
    parser.add_argument(
        "--kd-alone", action="store_true", help="also distil the pruned architecture from scratch"
    )
    parser.add_argument("--report", action="store_true")
    add_shortening_flags(parser)
    args = parser.parse_args(argv)
    protocol = shortened(cp.protocol_from_flags(quick=args.quick, full=False), args)
    store = RowStore("combinations", protocol.name)
    if args.report:
        report(store)
        return
    bundle = cp.load_data(protocol)
    train_loader, test_loader = cp.loaders(bundle, protocol)
    base, info = cp.train_baseline("narrow_vgg", protocol=protocol, bundle=bundle)
    full_loader, train_loader = train_loader, FirstBatches(train_loader, args.train_batches)
    ctx = {
        "full_train": full_loader,
        "train": train_loader,
        "test": test_loader,
        "protocol": protocol,
        "bundle": bundle,
        "store": store,
    }

    def emit(part: str, key: str, row: dict) -> None:
        row = {"part": part, "epochs": args.epochs, **row}
        store.put((part, key), row)
        print(json.dumps(row), flush=True)

    with torch_threads(protocol.train_threads):
        if store.get(("base", "baseline")) is None:
            emit("base", "baseline", _row("baseline (float)", base, ctx, time.perf_counter()))
        for part in args.parts.split(","):
            {"pkd": part_pkd, "qpc": part_qpc, "qpcc": part_qpc_clustered, "ppk": part_ppk}[part](
                base, ctx, args, emit
            )


def report(store: RowStore) -> None:
    order = ["base", "pkd", "ppk", "qpc", "qpcc"]
    rows = sorted(store.rows.values(), key=lambda r: order.index(r["part"]))
    columns = [
        ("combination", "combination", cp.fmt_text),
        ("test acc %", "acc", cp.fmt_percent),
        ("params", "params", cp.fmt_number()),
        ("max distinct weight values/layer", "max_distinct", cp.fmt_number()),
    ]
    print(cp.markdown_table(rows, columns))


if __name__ == "__main__":
    main()
