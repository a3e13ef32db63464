"""Early exit on ResNet-20 routed by gates on the exits' FEATURES (issue 16, session 11).

Same flags as ``early_exit.py`` (which trains / caches the exits and the confidence rows: run it first with
``--per-exit``), plus:

- ``--hidden 0 32``: feature-gate variants (0 = logistic regression, N = 2-layer MLP);
- ``--weight-decay``: L2 of the gate fit (default 0.1);
- ``--fit-on train|val-half``: fit the gates on the protocol's 10k TRAINING images (unaugmented; the heads
  and, for J, the backbone saw them) with thresholds on the whole 5,000-image validation split, or on one
  seeded half of the validation split with thresholds on the other half;
- ``--auc-only``: only the ROC AUC table ("this exit agrees with the final exit", on validation half B, which
  neither fit reads): max-softmax confidence, the session-10 logit gate (fitted on train) and the feature gates
  fitted on train and on validation half A.

Per chosen setting the test split is read once (offline, from cached features); the gates' own MACs are added
to every exit's cost (``gated_exit_macs``). Timing: the gated models (``EarlyExitModel.set_gate``, batched,
the routing asserted equal to the offline routing on the first batch) interleaved with the unmodified model
and the cached per-exit confidence rows.

    python benchmarks/early_exit_feature_gate.py --auc-only                  # H (heads only)
    python benchmarks/early_exit_feature_gate.py --train joint --head-epochs 4 --lr 0.02 --kd-alpha 0.5 \
        --exit-weights 0.15 0.275 0.4 0.525 0.65 0.775 0.9 1.0 --auc-only   # J
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cifar_protocol as cp  # noqa: E402
import early_exit as eeb  # noqa: E402
from early_exit_gate import add_confidence_rules, gate_setup, print_and_save, roc_auc, time_rules  # noqa: E402

from netcompress.core import atomic_torch_save  # noqa: E402
from netcompress.core.io import load_checkpoint  # noqa: E402
from netcompress.dynamic import (  # noqa: E402
    choose_gate_thresholds,
    collect_exit_features,
    fit_exit_gates,
    fit_feature_gates,
    gate_trade_off,
    gated_exit_macs,
    route_by_scores,
)
from netcompress.evaluation import torch_threads  # noqa: E402


def pop_flag(argv: list[str], flag: str, default: list[str] | None) -> list[str] | None:
    """Remove ``flag`` and its values from argv; return the values (``[]`` for a bare flag)."""
    if flag not in argv:
        return default
    at, values = argv.index(flag), []
    while at + 1 < len(argv) and not argv[at + 1].startswith("--"):
        values.append(argv.pop(at + 1))
    argv.pop(at)
    return values


def features_cached(ee, model, loaders: dict[str, DataLoader], folder: Path) -> dict[str, Any]:
    """Per split: each head's pooled features, every exit's logits, labels, and the UNMODIFIED model's
    per-sample correctness (float32, cached as ``gate-features.pt``)."""
    path = folder / "gate-features.pt"
    if path.exists():
        return load_checkpoint(path)
    out = {}
    for name, loader in loaders.items():
        feats, logits, labels = collect_exit_features(ee, loader)
        with torch.inference_mode():
            unmodified = torch.cat([model(x).argmax(1) for x, _ in loader])
        out[name] = {
            "features": feats,
            "logits": logits,
            "labels": labels,
            "unmodified_right": unmodified == labels,
        }
        print(f"features of {name}: {len(labels)} images", flush=True)
    atomic_torch_save(out, path)
    return out


def pick(split: dict[str, Any], index: torch.Tensor) -> dict[str, Any]:
    return {
        "features": [f[index] for f in split["features"]],
        "logits": [lg[index] for lg in split["logits"]],
        "labels": split["labels"][index],
        "unmodified_right": split["unmodified_right"][index],
    }


def auc_row(scores: list[torch.Tensor], logits: list[torch.Tensor]) -> list[float]:
    final = logits[-1].argmax(1)
    return [round(roc_auc(s.double(), lg.argmax(1) == final), 3) for s, lg in zip(scores, logits[:-1])]


def auc_table(tr, va_a, va_b, hidden: list[int], wd: float) -> dict[str, list[float]]:
    """ROC AUC on validation half B per exit for confidence, the logit gate and the feature gates."""
    b_logits = va_b["logits"]
    final = b_logits[-1].argmax(1)
    table = {
        "agree share (B)": [round(float((lg.argmax(1) == final).double().mean()), 3) for lg in b_logits[:-1]]
    }
    table["confidence"] = auc_row([lg.float().softmax(1).amax(1) for lg in b_logits[:-1]], b_logits)
    table["logit gate h16 (train)"] = auc_row(
        fit_exit_gates(tr["logits"], hidden=16).scores(b_logits), b_logits
    )
    for h in hidden:
        for fit_name, src in (("train", tr), ("val A", va_a)):
            for lf in (True, False):
                g = fit_feature_gates(
                    src["features"], src["logits"], hidden=h, weight_decay=wd, logit_features=lf
                )
                name = f"features{'+logit' if lf else ' only'} h{h} ({fit_name})"
                table[name] = auc_row(g.scores(b_logits, va_b["features"]), b_logits)
                print(json.dumps({name: table[name]}), flush=True)
    return table


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    auc_only = pop_flag(argv, "--auc-only", None) is not None
    hidden = [int(h) for h in pop_flag(argv, "--hidden", ["0", "32"])]
    wd = float(pop_flag(argv, "--weight-decay", ["0.1"])[0])
    fit_on = pop_flag(argv, "--fit-on", ["train"])[0]
    args = eeb.parse(argv)
    s = gate_setup(args, features_cached)
    load_before, bundle, model, ee, folder = s.load_before, s.bundle, s.model, s.ee, s.folder
    full_macs, exit_macs, data = s.full_macs, s.exit_macs, s.data
    tr, va, te = data["train"], data["val"], data["test"]
    half = torch.randperm(len(va["labels"]), generator=torch.Generator().manual_seed(0))
    va_a, va_b = pick(va, half[: len(half) // 2]), pick(va, half[len(half) // 2 :])
    base_test = float(te["unmodified_right"].double().mean())
    agree = {
        name: [round(float((lg.argmax(1) == s["logits"][-1].argmax(1)).double().mean()), 3) for lg in s["logits"][:-1]]
        for name, s in (("train", tr), ("val", va))
    }  # fmt: skip
    print(json.dumps({"agree_with_final": agree, "unmodified_test": base_test}), flush=True)
    if auc_only:
        with torch_threads(args.threads):
            table = auc_table(tr, va_a, va_b, hidden, wd)
        print(json.dumps({"auc_on_val_B": table, "weight_decay": wd}, indent=1))
        return 0
    fit_src, choose_on = (tr, va) if fit_on == "train" else (va_a, va_b)
    base_val = float(choose_on["unmodified_right"].double().mean())
    final_val = float((choose_on["logits"][-1].argmax(1) == choose_on["labels"]).double().mean())
    table, runners = [], {}
    for h in hidden:
        with torch_threads(args.threads):
            gates = fit_feature_gates(fit_src["features"], fit_src["logits"], hidden=h, weight_decay=wd)
        macs = gated_exit_macs(exit_macs, gates)
        bounds = [
            (f"fgate h{h} val drop <= {d:g}", {"max_accuracy_drop": d + final_val - base_val})
            for d in args.drops
        ]
        bounds += [
            (f"fgate h{h} val MACs <= {f:g}x", {"max_macs": f * full_macs}) for f in args.mac_fractions
        ]
        for name, bound in bounds:
            if bound.get("max_accuracy_drop", 0.0) < 0:
                continue
            with torch_threads(args.threads):
                choice = choose_gate_thresholds(
                    gates, choose_on["logits"], choose_on["labels"], exit_macs=macs,
                    exit_features=choose_on["features"], **bound,
                )  # fmt: skip
            row = gate_trade_off(
                gates, te["logits"], te["labels"], exit_macs=macs, thresholds=choice["thresholds"],
                exit_features=te["features"],
            )  # fmt: skip
            table.append(
                {
                    "rule": name, "val_acc": round(choice["accuracy"], 4), "val_macs_x": round(full_macs / choice["expected_macs"], 3),
                    "test_acc": round(row["accuracy"], 4), "drop_pts": round(100 * (base_test - row["accuracy"]), 2),
                    "macs_x": round(full_macs / row["expected_macs"], 3), "avg_MMACs": round(row["expected_macs"] / 1e6, 2),
                    "exit_shares": [round(s, 3) for s in row["exit_shares"]], "thresholds": [round(t, 4) for t in choice["thresholds"]],
                    "gate_macs": gates.macs(),
                }
            )  # fmt: skip
            print(json.dumps(table[-1]), flush=True)
            runners[name] = copy.deepcopy(ee).set_gate(gates, choice["thresholds"]).eval()
    key = cp.cache_key({k: vars(args)[k] for k in eeb.EVAL_FLAGS})
    per_exit = json.loads((folder / f"per-exit-{key}.json").read_text())
    chosen = {name: (t, row) for (name, t), row in zip(per_exit["chosen"].items(), per_exit["rows"])}
    add_confidence_rules(table, runners, chosen, ee, base_test=base_test, full_macs=full_macs)

    def routes_as_offline(name: str, runner: Any, batch: torch.Tensor) -> None:
        out = runner(batch)
        feats, logits, _ = collect_exit_features(ee, [(batch, torch.zeros(len(batch)))])
        want = route_by_scores(runner.exit_gate.scores(logits, feats), runner.threshold)
        assert runner.last_exit_index.tolist() == want.tolist(), name
        torch.testing.assert_close(
            out, torch.stack(logits)[want, torch.arange(len(want))], rtol=1e-4, atol=1e-4
        )

    ms = time_rules(args, bundle, model, runners, table, routes_as_offline)
    head = {
        "run": args.train, "fit_on": fit_on, "weight_decay": wd, "unmodified_test_acc": base_test,
        "choice_split_unmodified": base_val, "choice_split_final": final_val, "choice_size": len(choose_on["labels"]),
        "exit_macs_M": [round(m / 1e6, 2) for m in exit_macs], "full_ms": round(ms["full model"], 1) if ms else None,
        "loadavg_before": load_before, "loadavg_after": Path("/proc/loadavg").read_text().split()[:3],
    }  # fmt: skip
    print_and_save(head, table, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
