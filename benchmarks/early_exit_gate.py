"""Early exit on ResNet-20 routed by a LEARNED gate per exit, against confidence thresholds of the same run.

Takes the same flags as ``early_exit.py`` (which trains / caches the exits and the confidence rows: run it
first with ``--per-exit``), plus ``--hidden`` (gate variants: 0 = logistic regression, N = 2-layer MLP) and ``--auc-only`` (only how well
confidence and each gate rank "agrees with the final exit" on validation, ROC AUC per exit).
Per exit a gate (``netcompress.dynamic.fit_exit_gates``) is fitted on the protocol's 10k TRAINING images
(unaugmented, one pass of the backbone) to predict "this exit's argmax equals the final exit's"; one gate
threshold per exit is chosen on the VALIDATION split (``choose_gate_thresholds``) for each accuracy bound
(accuracy >= the UNMODIFIED model's validation accuracy minus ``--drops``) and each MAC budget; the test split
is read once per chosen setting. Timing: the gated model (``EarlyExitModel.set_gate``, batched) interleaved
with the unmodified model and the cached confidence rows (single and per-exit thresholds).

    python benchmarks/early_exit_gate.py                                   # H (heads only)
    python benchmarks/early_exit_gate.py --train joint --head-epochs 4 --lr 0.02 --kd-alpha 0.5 \
        --exit-weights 0.15 0.275 0.4 0.525 0.65 0.775 0.9 1.0              # J
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cifar_protocol as cp  # noqa: E402
import early_exit as eeb  # noqa: E402

import netcompress  # noqa: E402
from netcompress.core import atomic_torch_save, atomic_write_text  # noqa: E402
from netcompress.core.io import load_checkpoint  # noqa: E402
from netcompress.dynamic import (  # noqa: E402
    choose_gate_thresholds,
    collect_exit_logits,
    exit_path_macs,
    fit_exit_gates,
    gate_trade_off,
    route_by_scores,
)
from netcompress.evaluation import count_macs, evaluate, torch_threads  # noqa: E402


def exit_logits_cached(ee, loaders: dict[str, DataLoader], folder: Path) -> dict[str, Any]:
    path = folder / "gate-logits.pt"
    if path.exists():
        return load_checkpoint(path)
    out = {}
    for name, loader in loaders.items():
        logits, labels = collect_exit_logits(ee, loader)
        out[name] = {"logits": logits, "labels": labels}
    atomic_torch_save(out, path)
    return out


def gate_setup(args: Any, collect: Any) -> SimpleNamespace:
    """What both gate benchmarks start from: the protocol baseline (``--model``, default resnet20), its trained exits (``args``: the early-exit
    flags), their MACs and the exit outputs ``collect(ee, model, loaders, folder)`` reads (cached in the exits'
    folder) for the un-augmented train split, the held-out val split and the test split."""
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    protocol = eeb.protocol_of(args)
    bundle = cp.load_data(protocol)
    model, _ = cp.train_baseline(eeb.model_name(args), protocol=protocol, bundle=bundle)
    model.eval()
    val = cp.heldout_loader(protocol, size=args.val_size)
    train, test = cp.loaders(bundle, protocol)
    plain = netcompress.data.load(
        "cifar10", root=cp._data_root(None), train_subset=protocol.train_subset, val_fraction=0, augment=False
    )
    train_plain = DataLoader(plain.train, batch_size=protocol.eval_batch_size, shuffle=False)
    example = cp.example_input(bundle)
    with torch_threads(args.threads):
        ee, _, folder = eeb.train_exits(model, args, protocol, train, example)
        ee.eval()
        full_macs = count_macs(model, example)[0]
        exit_macs = exit_path_macs(ee, example)
        data = collect(ee, model, {"train": train_plain, "val": val, "test": test}, folder)
    return SimpleNamespace(
        load_before=load_before, bundle=bundle, model=model, val=val, test=test, ee=ee, folder=folder,
        full_macs=full_macs, exit_macs=exit_macs, data=data,
    )  # fmt: skip


def add_confidence_rules(
    table: list[dict[str, Any]],
    runners: dict[str, Any],
    chosen: dict[str, Any],
    ee: Any,
    *,
    base_test: float,
    full_macs: int,
) -> None:
    """A table row and a runner for each confidence rule in ``chosen`` (``{name: (threshold, test row)}``)."""
    for name, (t, row) in chosen.items():
        table.append(
            {
                "rule": f"confidence {name}", "test_acc": round(row["accuracy"], 4),
                "drop_pts": round(100 * (base_test - row["accuracy"]), 2), "macs_x": round(full_macs / row["expected_macs"], 3),
            }
        )  # fmt: skip
        runners[f"confidence {name}"] = copy.deepcopy(ee).set_policy(threshold=t).eval()


def time_rules(
    args: Any, bundle: Any, model: Any, runners: dict[str, Any], table: list[dict[str, Any]], check_route: Any
) -> dict[str, float]:
    """Latency (ms per batch) of the full model and every runner on ``args.batches`` test batches of
    ``args.batch``, in interleaved rounds; each table row gains ``latency_x``. First, on one batch, every
    gated runner must route exactly as the offline rows say: ``check_route(name, runner, batch)`` asserts it.
    ``{}`` with ``--no-timing``."""
    if args.no_timing:
        return {}
    images = torch.stack([bundle.test[i][0] for i in range(len(bundle.test))])
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[
        : args.batch * args.batches
    ]
    batches = list(images[order].split(args.batch))
    for name, runner in runners.items():
        if runner.exit_gate is not None:
            with torch.inference_mode():
                check_route(name, runner, batches[0])
    with torch_threads(args.threads):
        ms = eeb.time_batches({"full model": model, **runners}, batches, rounds=args.rounds)
    for row in table:
        row["latency_x"] = round(ms["full model"] / ms[row["rule"]], 2)
    return ms


def print_and_save(head: dict[str, Any], table: list[dict[str, Any]], path: Any) -> None:
    """The run's head line and one JSON line per rule; with ``--json PATH`` both written there too."""
    print(json.dumps(head))
    for row in table:
        print(json.dumps(row))
    if path is not None:
        atomic_write_text(path, json.dumps({**head, "rows": table}, indent=1))


def roc_auc(score: torch.Tensor, positive: torch.Tensor) -> float:
    """Probability that a random positive scores above a random negative (ties ignored)."""
    order = score.argsort()
    ranks = torch.empty(len(score), dtype=torch.float64)
    ranks[order] = torch.arange(1, len(score) + 1, dtype=torch.float64)
    p = int(positive.sum())
    return float((ranks[positive].sum() - p * (p + 1) / 2) / (p * (len(score) - p)))


def agreement_auc(gates, logits: list[torch.Tensor]) -> dict[str, list[float]]:
    """Per head: share agreeing with the final exit, and how well confidence / the gate rank it (ROC AUC)."""
    final, scores = logits[-1].argmax(1), gates.scores(logits)
    out: dict[str, list[float]] = {"agree": [], "auc_confidence": [], "auc_gate": []}
    for i in range(len(logits) - 1):
        agree = logits[i].argmax(1) == final
        out["agree"].append(round(float(agree.double().mean()), 3))
        out["auc_confidence"].append(round(roc_auc(logits[i].float().softmax(1).amax(1), agree), 3))
        out["auc_gate"].append(round(roc_auc(scores[i], agree), 3))
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    hidden = [0, 16]
    auc_only = "--auc-only" in argv
    if auc_only:
        argv.remove("--auc-only")
    if "--hidden" in argv:
        at = argv.index("--hidden")
        hidden = []
        while at + 1 < len(argv) and not argv[at + 1].startswith("--"):
            hidden.append(int(argv.pop(at + 1)))
        argv.pop(at)
    args = eeb.parse(argv)
    s = gate_setup(args, lambda ee, model, loaders, folder: exit_logits_cached(ee, loaders, folder))
    load_before, bundle, model, val, test = s.load_before, s.bundle, s.model, s.val, s.test
    ee, folder, full_macs, exit_macs, data = s.ee, s.folder, s.full_macs, s.exit_macs, s.data
    with torch_threads(args.threads):
        base_val = evaluate(model, val)["accuracy"]
    key = cp.cache_key({k: vars(args)[k] for k in eeb.EVAL_FLAGS})
    per_exit = json.loads((folder / f"per-exit-{key}.json").read_text())
    single = json.loads((folder / f"chosen-{key}.json").read_text())
    single_rows = json.loads((folder / f"evaluated-{key}.json").read_text())[0]
    tr, va, te = data["train"], data["val"], data["test"]
    final_val = float((va["logits"][-1].argmax(1) == va["labels"]).double().mean())
    base_test = float((te["logits"][-1].argmax(1) == te["labels"]).double().mean())
    if args.train == "joint":
        base_test = evaluate(model, test)["accuracy"]
    agree_train = [float((lg.argmax(1) == tr["logits"][-1].argmax(1)).double().mean()) for lg in tr["logits"]]
    print(
        json.dumps({"train_agree_with_final": [round(a, 4) for a in agree_train], "val_unmodified": base_val})
    )
    table, runners = [], {}
    for h in hidden:
        with torch_threads(args.threads):  # tiny ops: more threads only spin under load
            gates = fit_exit_gates(tr["logits"], hidden=h)
        print(json.dumps({f"h{h} validation": agreement_auc(gates, va["logits"])}), flush=True)
        if auc_only:
            continue
        bounds = [
            (f"gate h{h} val drop <= {d:g}", {"max_accuracy_drop": d + final_val - base_val})
            for d in args.drops
        ]
        bounds += [(f"gate h{h} val MACs <= {f:g}x", {"max_macs": f * full_macs}) for f in args.mac_fractions]
        for name, bound in bounds:
            if bound.get("max_accuracy_drop", 0.0) < 0:
                continue
            with torch_threads(args.threads):
                pick = choose_gate_thresholds(gates, va["logits"], va["labels"], exit_macs=exit_macs, **bound)
            row = gate_trade_off(
                gates, te["logits"], te["labels"], exit_macs=exit_macs, thresholds=pick["thresholds"]
            )
            table.append(
                {
                    "rule": name, "val_acc": round(pick["accuracy"], 4), "val_macs_x": round(full_macs / pick["expected_macs"], 3),
                    "test_acc": round(row["accuracy"], 4), "drop_pts": round(100 * (base_test - row["accuracy"]), 2),
                    "macs_x": round(full_macs / row["expected_macs"], 3), "exit_shares": [round(s, 3) for s in row["exit_shares"]],
                    "thresholds": [round(t, 4) for t in pick["thresholds"]],
                }
            )  # fmt: skip
            print(json.dumps(table[-1]), flush=True)
            runners[name] = copy.deepcopy(ee).set_gate(gates, pick["thresholds"]).eval()
    if auc_only:
        return 0
    conf_rows = {}
    for (name, t), row in zip(single.items(), single_rows):
        conf_rows[name] = (t, row)
    for (name, t), row in zip(per_exit["chosen"].items(), per_exit["rows"]):
        conf_rows[name] = (t, row)
    conf_rows = {name: tr for name, tr in conf_rows.items() if not name.startswith("fixed")}
    add_confidence_rules(table, runners, conf_rows, ee, base_test=base_test, full_macs=full_macs)

    def routes_as_offline(name: str, runner: Any, batch: torch.Tensor) -> None:
        runner(batch)
        want = route_by_scores(runner.exit_gate.scores(ee.forward_all(batch)), runner.threshold)
        assert runner.last_exit_index.tolist() == want.tolist(), name

    ms = time_rules(args, bundle, model, runners, table, routes_as_offline)
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    head = {
        "run": "joint" if args.train == "joint" else "heads", "unmodified_test_acc": base_test, "val_unmodified": base_val,
        "final_val": final_val, "exit_macs_M": [round(m / 1e6, 2) for m in exit_macs], "full_ms": round(ms["full model"], 1) if ms else None,
        "loadavg_before": load_before, "loadavg_after": load_after, "hidden": hidden,
    }  # fmt: skip
    print_and_save(head, table, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
