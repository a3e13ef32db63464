"""Cheaper exit heads (issue 16's 1.5x measured latency, ResNet-20): several head configurations on the same exits,
timed TOGETHER against the one unmodified model in each form, in the same interleaved rounds.

Each ``--config NAME=KIND[,KIND...]`` (one head kind for every exit, or one per ``--exits`` entry) is trained and its
rows chosen exactly as ``early_exit_ztw.py`` does (``choose_rows``: cascade heads on the frozen protocol baseline,
ZTW ensemble fitted on the training split, per-exit thresholds on the 5,000-image VALIDATION split, test read once
per row); a configuration already in ``benchmarks/.cache`` is not retrained. Then every chosen row of every
configuration is built in each ``--forms`` (``early_exit_latency.build_forms``: eager, BN folded, ORT segment
files), read on the whole test split (its batched routing asserted equal to its own offline routing first) and timed
at each ``--batch-sizes`` in one interleaved call with the unmodified model of the same form: the ratios of
different configurations come from the same rounds under the same load.

``--head-costs``: each head kind of ``--cost-kinds`` at each exit's map (the segment output of real test images,
batch 64, untrained head in eval mode) timed with the unmodified model in interleaved rounds (eager, 1 thread): the
share of the model each exit's head costs every sample that reaches it.

    python benchmarks/early_exit_heads.py --config conv=pool_conv_grid_linear --config gridconv=pool_grid_conv_linear \\
        --cascade --head-epochs 5 --drops 0.01 --mac-fractions 0.5 --variants ensemble \\
        --exits layer1.1 layer2.0 layer2.1 layer3.0 --forms eager ort --batch-sizes 64 --rounds 11 --chosen-only
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import early_exit as eeb  # noqa: E402
import early_exit_gate as egate  # noqa: E402
import early_exit_latency as lat  # noqa: E402
import early_exit_ztw as ztw  # noqa: E402

from netcompress.dynamic.exit_heads import HEADS  # noqa: E402
from netcompress.evaluation import torch_threads  # noqa: E402

COST_KINDS = ["pool_linear", "pool_grid_linear", "pool_grid_conv_linear", "pool_conv_grid_linear"]


def parse_config(text: str) -> tuple[str, str | list[str]]:
    """``NAME=KIND[,KIND...]`` -> ``(NAME, KIND or [KIND, ...])``; unknown kinds refused by name."""
    name, sep, kinds = text.partition("=")
    if not sep or not name or not kinds:
        raise argparse.ArgumentTypeError(f"--config {text!r}: expected NAME=KIND or NAME=KIND1,KIND2,...")
    listed = kinds.split(",")
    unknown = [k for k in listed if k not in HEADS.names()]
    if unknown:
        raise argparse.ArgumentTypeError(f"--config {text!r}: unknown head kind(s) {unknown}; known: {HEADS.names()}")
    return name, listed[0] if len(listed) == 1 else listed


class HeadOnState:
    """A head on a fixed exit map (the segment output of one real batch), ignoring the batch it is called with."""

    def __init__(self, head: torch.nn.Module, state: torch.Tensor) -> None:
        self.head, self.state = head, state

    def __call__(self, _batch: torch.Tensor) -> torch.Tensor:
        return self.head(self.state)


def head_costs(
    ee: Any, model: Any, batch: torch.Tensor, kinds: list[str], rounds: int, repeats: int = 8
) -> dict[str, Any]:
    """ms per batch of each head kind at each exit's map, and as a share of the unmodified model's batch."""
    classes = int(model(batch[:1]).shape[1])
    fns: dict[str, Any] = {"full model": model}
    state: tuple[torch.Tensor, ...] = (batch,)
    with torch.inference_mode():
        for index, exit_name in enumerate(ee.exit_names):
            state = ee.run_segment(index, state)
            for kind in kinds:
                torch.manual_seed(0)
                head = HEADS.get(kind)(in_channels=int(state[0].shape[1]), num_classes=classes).eval()
                fns[f"{exit_name} {kind}"] = HeadOnState(head, state[0].clone())
    ms = eeb.time_batches(fns, [batch] * repeats, rounds=rounds)  # several calls per round: a steadier median
    full = ms["full model"]
    return {
        "full_ms": round(full, 3),
        "heads": {k: {"ms": round(v, 3), "share": round(v / full, 4)} for k, v in ms.items() if k != "full model"},
    }


def main(argv: list[str] | None = None) -> int:
    own = ztw.own_parser()
    own.add_argument("--config", type=parse_config, action="append", required=True)
    own.add_argument("--forms", nargs="+", default=["eager", "ort"], choices=lat.FORMS)
    own.add_argument("--batch-sizes", type=int, nargs="+", default=[64])
    own.add_argument("--images", type=int, default=512, help="test images timed per round per model")
    own.add_argument("--chosen-only", action="store_true", help="time only each bound's validation choice")
    own.add_argument("--head-costs", action="store_true")
    own.add_argument("--cost-kinds", nargs="+", default=COST_KINDS)
    mine, rest = own.parse_known_args(argv)
    base = eeb.parse(rest)
    torch.set_num_threads(base.threads)
    runners: dict[str, Any] = {}
    val_rows: list[dict[str, Any]] = []
    setup, base_acc = None, 0.0
    for name, kinds in mine.config:
        args = copy.copy(base)
        args.head = kinds
        if isinstance(kinds, list) and len(kinds) != len(args.exits):
            raise SystemExit(f"--config {name}: {len(kinds)} head kinds for {len(args.exits)} exits")
        chosen = ztw.choose_rows(args, mine)
        if setup is None:
            setup, base_acc = chosen.setup, chosen.base_test  # the same protocol baseline for every config
        for row in chosen.table:
            if row["chosen_on_val"] or not mine.chosen_only:
                runners[f"{name} | {row['rule']}"] = chosen.runners[row["rule"]]
                val_rows.append({"config": name, "head": kinds, "exit_accs": chosen.exit_accs, **row})
    assert setup is not None
    test = setup.bundle.test
    images = torch.stack([test[i][0] for i in range(len(test))])
    labels = torch.tensor([int(test[i][1]) for i in range(len(test))])
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    costs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, torch_threads(base.threads):
        if mine.head_costs:
            costs = head_costs(setup.ee, setup.model, images[order[:64]], mine.cost_kinds, base.rounds)
            print("head costs:", json.dumps(costs), flush=True)
        forms = lat.build_forms(setup.model, runners, images[:1], mine.forms, Path(tmp))
        reads = {}
        for form, models in forms.items():
            for rule in runners:
                lat.check_routing(models[rule], images[order[:64]], f"{form} | {rule}")
                reads[f"{form} | {rule}"] = lat.read_test(models[rule], images, labels, setup.ee.num_exits)
        ms, load = {}, {}
        for size in mine.batch_sizes:
            batches = list(images[order[: mine.images]].split(size))
            flat = {f"{form} | {name}": m for form, models in forms.items() for name, m in models.items()}
            before = Path("/proc/loadavg").read_text().split()[:3]
            ms[size] = eeb.time_batches(flat, batches, rounds=base.rounds)
            load[size] = [before, Path("/proc/loadavg").read_text().split()[:3]]
            print(f"batch {size}: load {load[size]}", {k: round(v, 3) for k, v in ms[size].items()}, flush=True)
    rows = []
    for row in val_rows:
        rule = f"{row['config']} | {row['rule']}"
        for form in forms:
            read = reads[f"{form} | {rule}"]
            out = {
                "config": row["config"], "rule": row["rule"], "form": form, "val_acc": row["val_acc"],
                "val_macs_x": row["val_macs_x"], "test_acc": round(read["acc"], 4),
                "drop_pts": round(100 * (base_acc - read["acc"]), 2), "macs_x": row["macs_x"],
                "exit_shares": [round(s, 3) for s in read["shares"]],
            }  # fmt: skip
            for size in mine.batch_sizes:
                full, routed = ms[size][f"{form} | full model"], ms[size][f"{form} | {rule}"]
                out[f"b{size}_full_ms_per_sample"] = round(full / size, 4)
                out[f"b{size}_latency_x"] = round(full / routed, 3)
            rows.append(out)
    head = {
        "baseline_test": round(base_acc, 4), "exits": setup.ee.exit_names, "configs": dict(mine.config),
        "val_rows": val_rows, "head_costs": costs, "load_per_batch_size": load, "loadavg_before": setup.load_before,
        "loadavg_after": Path("/proc/loadavg").read_text().split()[:3],
        "args": {k: str(v) for k, v in {**vars(base), **vars(mine)}.items() if k != "head"},
    }  # fmt: skip
    egate.print_and_save(head, rows, base.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
