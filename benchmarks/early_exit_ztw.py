"""Zero Time Waste on ResNet-20 (CIFAR-10, CPU protocol): cascade heads and a geometric exit ensemble against
per-exit confidence on the same heads; accuracy vs average MACs and vs measured batch latency.

Takes ``early_exit.py``'s flags (they train and cache the exits; ``--cascade`` makes each head also read the
previous head's logits) plus:

- ``--fit-steps N``: Adam steps per exit for the ensemble weights (``fit_exit_ensemble``).
- ``--profile``: where the routed model's time goes (torch.profiler, one chosen row, ops by self CPU time).

Decision variants, all on the same trained heads: ``confidence`` (each exit's own softmax), ``ensemble``
(ZTW: exit m decides by ``log b_m + sum_{i<=m} w_mi log_softmax(logits_i)``, the final exit too) and
``ensemble, final alone`` (the final exit answers with the model's own logits). The ensemble weights are
fitted on the protocol's 10k TRAINING images (unaugmented, one backbone pass). For each bound (accuracy >= the
UNMODIFIED model's validation accuracy minus ``--drops``; average MACs <= ``--mac-fractions``) one threshold per
exit is chosen on the VALIDATION split for every variant (``choose_exit_thresholds``), and the variant with the
fewest validation MACs (MAC budgets: the most accurate) is the bound's choice, made before the test split is
read; the test split is then read once per (variant, bound) row. Timing: the unmodified model and every row's
routed model (``EarlyExitModel`` with its ensemble and thresholds, batched), ``--rounds`` interleaved rounds of
``--batches`` random test batches; before timing, each routed model's batched routing on one batch is asserted
equal to the offline routing of its decision logits.

    python benchmarks/early_exit_ztw.py --cascade --rounds 11            # H (backbone frozen, as in ZTW)
    python benchmarks/early_exit_ztw.py --rounds 11                      # the same without cascade heads
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import early_exit as eeb  # noqa: E402
import early_exit_gate as egate  # noqa: E402

from netcompress.core import atomic_torch_save  # noqa: E402
from netcompress.core.io import load_checkpoint  # noqa: E402
from netcompress.dynamic import (  # noqa: E402
    choose_exit_thresholds,
    collect_exit_logits,
    fit_exit_ensemble,
    route_exits,
)
from netcompress.evaluation import evaluate, torch_threads  # noqa: E402

VARIANTS = {"confidence": "each exit's own softmax", "ensemble": "ZTW ensemble, final exit included",
            "ensemble, final alone": "ZTW ensemble, the final exit answers alone"}


def raw_logits_cached(ee, model, loaders, folder: Path) -> dict[str, Any]:
    path = folder / "ztw-raw-logits.pt"
    if path.exists():
        return load_checkpoint(path)
    out = {}
    for name, loader in loaders.items():
        logits, labels = collect_exit_logits(ee, loader, raw=True)
        out[name] = {"logits": logits, "labels": labels}
    atomic_torch_save(out, path)
    return out


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(dim=1) == labels).float().mean())


def ensemble_macs(exit_macs: list[int], classes: int, ensemble: Any) -> list[float]:
    """Path MACs plus the ensemble's multiply-adds (exit k weighs k + 1 log-probability rows; the profiler's
    count has no element-wise ops), cumulated along the path as every earlier exit decided too."""
    if ensemble is None:
        return [float(m) for m in exit_macs]
    extra, out = 0, []
    for k, m in enumerate(exit_macs):
        if k < len(exit_macs) - 1 or ensemble.include_final:
            extra += (k + 1) * classes
        out.append(float(m + extra))
    return out


def routed_rows(
    decided: dict[str, list[torch.Tensor]], labels: torch.Tensor, thresholds: list[float], macs: list[float]
) -> dict[str, Any]:
    chosen = route_exits(decided, threshold=thresholds)
    stacked = torch.stack(list(decided))
    acc = accuracy(stacked[chosen, torch.arange(len(labels))], labels)
    shares = (torch.bincount(chosen, minlength=len(decided)).float() / len(labels)).tolist()
    return {"accuracy": acc, "shares": shares, "macs": sum(s * m for s, m in zip(shares, macs))}


def choose_rows(args: argparse.Namespace, mine: argparse.Namespace) -> SimpleNamespace:
    """The trained exits (``egate.gate_setup``), the fitted ensembles and, per (variant, bound), the thresholds
    chosen on the validation split and the test row (read once): ``table`` (rows, ``chosen_on_val`` marks each
    bound's choice) and ``runners`` (``{rule: EarlyExitModel routed by that row}``)."""
    setup = egate.gate_setup(args, raw_logits_cached)
    ee, model, data, full_macs = setup.ee, setup.model, setup.data, setup.full_macs
    tr, va, te = data["train"], data["val"], data["test"]
    frozen = args.train == "heads"  # the final exit IS the unmodified model
    base_val = accuracy(va["logits"][-1], va["labels"]) if frozen else evaluate(model, setup.val)["accuracy"]
    base_test = accuracy(te["logits"][-1], te["labels"]) if frozen else evaluate(model, setup.test)["accuracy"]
    classes = tr["logits"][0].shape[1]
    variants: dict[str, Any] = {"confidence": None} if "confidence" in mine.variants else {}
    for name, final in (("ensemble", True), ("ensemble, final alone", False)):
        if name not in mine.variants:
            continue
        torch.manual_seed(0)
        variants[name] = fit_exit_ensemble(tr["logits"], tr["labels"], include_final=final, steps=mine.fit_steps)
    decided, macs = {}, {}
    for name, ens in variants.items():
        decided[name] = {
            split: (d["logits"] if ens is None else [x.detach() for x in ens.combine(d["logits"])])
            for split, d in (("val", va), ("test", te))
        }
        macs[name] = ensemble_macs(setup.exit_macs, classes, ens)
    exit_accs = {
        name: {
            "val": [round(accuracy(lg, va["labels"]), 4) for lg in decided[name]["val"]],
            "test": [round(accuracy(lg, te["labels"]), 4) for lg in decided[name]["test"]],
        }
        for name in variants
    }
    bounds = [(f"val drop <= {d:g}", {"drop": d}) for d in args.drops]
    bounds += [(f"val MACs <= {f:g}x", {"fraction": f}) for f in args.mac_fractions]
    table: list[dict[str, Any]] = []
    runners: dict[str, Any] = {}
    for bound_name, bound in bounds:
        picks = {}
        for name in variants:
            final_val = accuracy(decided[name]["val"][-1], va["labels"])
            kwargs: dict[str, Any] = {"exit_macs": macs[name]}
            if "drop" in bound:
                kwargs["max_accuracy_drop"] = bound["drop"] + final_val - base_val
                if kwargs["max_accuracy_drop"] < 0:
                    continue
            else:
                kwargs["max_macs"] = bound["fraction"] * full_macs
            pick = choose_exit_thresholds(decided[name]["val"], va["labels"], **kwargs)
            picks[name] = pick
        if not picks:
            continue
        if "drop" in bound:
            best = min(picks, key=lambda n: picks[n]["expected_macs"])
        else:
            best = max(picks, key=lambda n: picks[n]["accuracy"])
        for name, pick in picks.items():
            test = routed_rows(decided[name]["test"], te["labels"], pick["thresholds"], macs[name])
            rule = f"{name} | {bound_name}"
            table.append(
                {
                    "rule": rule, "chosen_on_val": name == best, "thresholds": [round(t, 4) for t in pick["thresholds"]],
                    "val_acc": round(pick["accuracy"], 4), "val_macs_x": round(full_macs / pick["expected_macs"], 3),
                    "test_acc": round(test["accuracy"], 4), "drop_pts": round(100 * (base_test - test["accuracy"]), 2),
                    "avg_macs_M": round(test["macs"] / 1e6, 2), "macs_x": round(full_macs / test["macs"], 3),
                    "exit_shares": [round(s, 3) for s in test["shares"]],
                }
            )  # fmt: skip
            runner = copy.deepcopy(ee).eval()
            runner.exit_ensemble = copy.deepcopy(variants[name])
            runners[rule] = runner.set_policy(threshold=pick["thresholds"])
    return SimpleNamespace(
        setup=setup, table=table, runners=runners, variants=variants, exit_accs=exit_accs,
        base_val=base_val, base_test=base_test, decided=decided, macs=macs,
        labels={"val": va["labels"], "test": te["labels"]},
    )  # fmt: skip


def own_parser() -> argparse.ArgumentParser:
    """This script's flags beyond ``early_exit.py``'s (``early_exit_latency.py`` adds its own)."""
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--fit-steps", type=int, default=300)
    own.add_argument("--profile", action="store_true")
    own.add_argument(
        "--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
        help="decision variants to choose and time (each bound's threshold search takes minutes on a loaded CPU)",
    )  # fmt: skip
    return own


def main(argv: list[str] | None = None) -> int:
    mine, rest = own_parser().parse_known_args(argv)
    args = eeb.parse(rest)
    torch.set_num_threads(args.threads)  # fitting and choosing too: spinning thread pools under load cost minutes
    chosen = choose_rows(args, mine)
    setup, table, runners, variants = chosen.setup, chosen.table, chosen.runners, chosen.variants
    model, ee, full_macs, exit_accs = setup.model, setup.ee, setup.full_macs, chosen.exit_accs
    base_val, base_test = chosen.base_val, chosen.base_test

    def check_route(name: str, runner: Any, batch: torch.Tensor) -> None:
        offline = runner.forward_all(batch)
        expected = route_exits(offline, threshold=runner.threshold)
        out = runner(batch)
        assert runner.last_exit_index.tolist() == expected.tolist(), name
        picked = torch.stack(offline)[expected, torch.arange(len(batch))]
        assert torch.allclose(out, picked, atol=1e-5), name

    ms: dict[str, float] = {}
    if not args.no_timing:
        images = torch.stack([setup.bundle.test[i][0] for i in range(len(setup.bundle.test))])
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[: args.batch * args.batches]
        batches = list(images[order].split(args.batch))
        with torch.inference_mode():
            for name, runner in runners.items():
                check_route(name, runner, batches[0])
        with torch_threads(args.threads):
            ms = eeb.time_batches({"full model": model, **runners}, batches, rounds=args.rounds)
            if mine.profile:
                profile(runners, table, batches)
        for row in table:
            row["ms_per_batch"] = round(ms[row["rule"]], 1)
            row["latency_x"] = round(ms["full model"] / ms[row["rule"]], 3)
    weights = {
        name: [[round(float(w), 3) for w in ens.weight[m, : m + 1]] for m in range(ens.num_exits)]
        for name, ens in variants.items() if ens is not None
    }  # fmt: skip
    head = {
        "baseline_val": round(base_val, 4), "baseline_test": round(base_test, 4), "exits": ee.exit_names,
        "exit_accs": exit_accs, "exit_macs_M": [round(m / 1e6, 3) for m in setup.exit_macs],
        "full_macs_M": round(full_macs / 1e6, 3), "full_ms": round(ms["full model"], 1) if ms else None,
        "ensemble_weights": weights, "loadavg_before": setup.load_before,
        "loadavg_after": Path("/proc/loadavg").read_text().split()[:3],
        "args": {k: str(v) for k, v in {**vars(args), **vars(mine)}.items()},
    }  # fmt: skip
    egate.print_and_save(head, table, args.json)
    return 0


def profile(runners: dict[str, Any], table: list[dict[str, Any]], batches: list[torch.Tensor]) -> None:
    """Self CPU time by op for the chosen row with the most MACs saved within the first bound."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    chosen = [r["rule"] for r in table if r["chosen_on_val"]]
    for rule in chosen[:2]:
        runner = runners[rule]
        with torch.inference_mode(), torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for batch in batches:
                runner(batch)
        print(f"profile: {rule}")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))


if __name__ == "__main__":
    raise SystemExit(main())
