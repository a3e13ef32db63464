"""Early-exit latency in the deployed forms and at several batch sizes (issue 16's 1.5x target, ResNet-20).

``early_exit_ztw.py`` chooses the rows (ZTW heads trained and cached, thresholds per exit on the VALIDATION
split, test read once per row; same flags); this script then measures each chosen row's routed model against
the unmodified model in the SAME form, at every ``--batch-sizes`` (batch 1 = streaming: each test sample
routed alone, per-sample latency), all (form, model) pairs of one batch size timed in interleaved rounds
(order rotated each round, 1 thread). Forms (``--forms``):

- ``eager``: PyTorch eager, BatchNorm a separate pass (what sessions 9-13 timed);
- ``folded``: PyTorch with every BatchNorm folded into its convolution (``fold_early_exit_bn``, the unmodified
  model by ``quantization.fold_bn``): what every deployment runs;
- ``ort``: ONNX Runtime, one file per segment (``export_early_exit_onnx``, checked per exit against PyTorch),
  routed by ``OrtEarlyExit``; the unmodified model as one ONNX file (ORT folds BN itself).

Every form's routed model is read on the whole test split (accuracy, exit shares; the same routing as the
eager row, up to float rounding at a threshold), and its batched routing on one batch is asserted equal to
the offline routing of its own exit logits.

    python benchmarks/early_exit_latency.py --cascade --head pool_conv_grid_linear --head-epochs 5 \\
        --drops 0.01 --mac-fractions 0.5 --variants ensemble --rounds 11
"""

from __future__ import annotations

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
import early_exit_paths as paths  # noqa: E402
import early_exit_ztw as ztw  # noqa: E402

from netcompress.dynamic import OrtEarlyExit, choose_exit_thresholds, export_early_exit_onnx, route_exits  # noqa: E402
from netcompress.dynamic.exit_folding import fold_early_exit_bn  # noqa: E402
from netcompress.evaluation import torch_threads  # noqa: E402
from netcompress.export.onnx import export_onnx  # noqa: E402
from netcompress.export.ort_model import OrtModel  # noqa: E402
from netcompress.quantization import fold_bn  # noqa: E402

FORMS = ("eager", "folded", "ort")


def build_forms(model, runners: dict[str, Any], example: torch.Tensor, forms, folder: Path) -> dict[str, Any]:
    """``{form: {"full model": callable, rule: routed callable}}``."""
    out: dict[str, Any] = {}
    if "eager" in forms:
        out["eager"] = {"full model": model, **runners}
    if "folded" in forms:
        out["folded"] = {"full model": fold_bn(model)}
        for rule, runner in runners.items():
            folded, summary = fold_early_exit_bn(runner, example)
            assert not summary["bn_left"], summary["bn_left"]
            out["folded"][rule] = folded
    if "ort" in forms:
        export_onnx(model, folder / "full.onnx", example)
        out["ort"] = {"full model": OrtModel(folder / "full.onnx", threads=1)}
        for k, (rule, runner) in enumerate(runners.items()):
            export_early_exit_onnx(runner, folder / f"rule{k}", example)  # checks every exit against PyTorch
            out["ort"][rule] = OrtEarlyExit(folder / f"rule{k}", threads=1)
    return out


def read_test(routed: Any, images: torch.Tensor, labels: torch.Tensor, exits: int) -> dict[str, Any]:
    """Accuracy, exit shares and exit index of a routed model (torch or ORT) on the whole test split."""
    preds, index = [], []
    with torch.inference_mode():
        for batch in images.split(500):
            preds.append(routed(batch).argmax(dim=1))
            index.append(routed.last_exit_index.clone())
    exit_index = torch.cat(index)
    shares = torch.bincount(exit_index, minlength=exits).float() / len(labels)
    return {"acc": float((torch.cat(preds) == labels).float().mean()), "shares": shares.tolist(), "index": exit_index}


def check_routing(routed: Any, batch: torch.Tensor, name: str) -> None:
    """Batched routing == offline routing of the same model's own exit logits (first batch)."""
    with torch.inference_mode():
        offline = routed.forward_all(batch)
        threshold = routed.threshold
        expected = route_exits(offline, threshold=threshold)
        out = routed(batch)
    assert routed.last_exit_index.tolist() == expected.tolist(), name
    picked = torch.stack(offline)[expected, torch.arange(len(batch))]
    assert torch.allclose(out, picked, atol=1e-4), name


def time_paths(forms, runners, images, size: int, setup, mine) -> dict[str, Any]:
    """Per form: each exit's path time and (torch forms) the backbone cut there, ms per SAMPLE, with the
    unmodified model of the form, in interleaved rounds at batch ``size``."""
    routed = next(iter(runners))
    exits = setup.ee.num_exits
    flat = {}
    for form, models in forms.items():
        flat[f"{form} | full model"] = models["full model"]
        for name, fn in paths.path_models(form, models[routed], exits).items():
            flat[f"{form} | {name}"] = fn
    before = Path("/proc/loadavg").read_text().split()[:3]
    ms = eeb.time_batches(flat, list(images.split(size)), rounds=mine.path_rounds)
    out: dict[str, Any] = {"load": [before, Path("/proc/loadavg").read_text().split()[:3]]}
    for form in forms:
        out[form] = {
            "full": round(ms[f"{form} | full model"] / size, 4),
            "path": [round(ms[f"{form} | path {k}"] / size, 4) for k in range(exits)],
            "backbone": [round(ms[f"{form} | backbone {k}"] / size, 4) for k in range(exits) if form != "ort"],
        }
    print(f"batch {size} paths:", out, flush=True)
    return out


def time_cost_rows(forms, runners, chosen, images, labels, order, size: int, path_ms, args, mine) -> list[dict[str, Any]]:
    """Per form, for each ``--drops`` bound: thresholds chosen on VALIDATION with this form's measured path
    times at this batch size as the exit costs (the chosen rows' variant), read once on test, timed against
    the unmodified model and the MAC-chosen row of the same bound in interleaved rounds."""
    out = []
    for drop in args.drops:
        mac_rule = next(r["rule"] for r in chosen.table if r["chosen_on_val"] and r["rule"].endswith(f"drop <= {drop:g}"))
        variant = mac_rule.split(" | ")[0]
        val = chosen.decided[variant]["val"]
        final_val = float((val[-1].argmax(1) == chosen.labels["val"]).float().mean())
        models, picks = {}, {}
        for form, form_models in forms.items():
            costs = path_ms[form]["path"]
            pick = choose_exit_thresholds(
                val, chosen.labels["val"], exit_macs=costs, max_accuracy_drop=drop + final_val - chosen.base_val
            )
            picks[form] = pick
            if form == "ort":
                routed = OrtEarlyExit(form_models[mac_rule].folder, threshold=pick["thresholds"], threads=1)
            else:
                routed = copy.deepcopy(form_models[mac_rule]).set_policy(threshold=pick["thresholds"])
            models[f"{form} | full model"] = form_models["full model"]
            models[f"{form} | MAC-chosen"] = form_models[mac_rule]
            models[f"{form} | time-chosen"] = routed
        batches = list(images[order[: (mine.single_images if size == 1 else mine.images)]].split(size))
        before = Path("/proc/loadavg").read_text().split()[:3]
        ms = eeb.time_batches(models, batches, rounds=args.rounds)
        after = Path("/proc/loadavg").read_text().split()[:3]
        for form in forms:
            routed = models[f"{form} | time-chosen"]
            costs = path_ms[form]["path"]
            read = read_test(routed, images, labels, len(costs))
            full = ms[f"{form} | full model"]
            out.append(
                {
                    "rule": f"{variant} | val drop <= {drop:g}, time costs b{size}", "form": form, "batch": size,
                    "thresholds": [round(t, 4) for t in picks[form]["thresholds"]], "val_acc": round(picks[form]["accuracy"], 4),
                    "val_time_x": round(path_ms[form]["full"] / picks[form]["expected_macs"], 3), "test_acc": round(read["acc"], 4),
                    "drop_pts": round(100 * (chosen.base_test - read["acc"]), 2),
                    "macs_x": round(chosen.setup.full_macs / paths.predicted_ms(read["shares"], chosen.macs[variant]), 3),
                    "exit_shares": [round(s, 3) for s in read["shares"]],
                    "latency_x": round(full / ms[f"{form} | time-chosen"], 3),
                    "mac_chosen_latency_x": round(full / ms[f"{form} | MAC-chosen"], 3),
                    "predicted_latency_x": round(path_ms[form]["full"] / paths.predicted_ms(read["shares"], costs), 3),
                    "load": [before, after],
                }
            )  # fmt: skip
            print(json.dumps(out[-1]), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    own = ztw.own_parser()
    own.add_argument("--forms", nargs="+", default=list(FORMS), choices=FORMS)
    own.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16, 64])
    own.add_argument("--images", type=int, default=512, help="test images timed per round per model")
    own.add_argument("--single-images", type=int, default=256, help="images per round at batch 1 (streaming)")
    own.add_argument("--chosen-only", action="store_true", help="time only each bound's validation choice")
    own.add_argument("--paths", action="store_true", help="also time each exit's path (early_exit_paths.py)")
    own.add_argument("--path-rounds", type=int, default=5)
    own.add_argument("--path-images", type=int, default=256)
    own.add_argument(
        "--time-costs", action="store_true",
        help="with --paths: thresholds chosen on validation with the measured path times as exit costs",
    )  # fmt: skip
    mine, rest = own.parse_known_args(argv)
    args = eeb.parse(rest)
    torch.set_num_threads(args.threads)
    chosen = ztw.choose_rows(args, mine)
    setup, table = chosen.setup, chosen.table
    runners = {r["rule"]: chosen.runners[r["rule"]] for r in table if r["chosen_on_val"] or not mine.chosen_only}
    test = setup.bundle.test
    images = torch.stack([test[i][0] for i in range(len(test))])
    labels = torch.tensor([int(test[i][1]) for i in range(len(test))])
    example = images[:1]
    with tempfile.TemporaryDirectory() as tmp, torch_threads(args.threads):
        forms = build_forms(setup.model, runners, example, mine.forms, Path(tmp))
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
        reads: dict[str, dict[str, Any]] = {}
        for form, models in forms.items():
            for rule in runners:
                check_routing(models[rule], images[order[:64]], f"{form} | {rule}")
                reads[f"{form} | {rule}"] = read_test(models[rule], images, labels, setup.ee.num_exits)
        ms: dict[int, dict[str, float]] = {}
        load: dict[int, list[list[str]]] = {}
        path_ms: dict[int, dict[str, Any]] = {}
        timed_rows: list[dict[str, Any]] = []
        for size in mine.batch_sizes:
            count = mine.single_images if size == 1 else mine.images
            batches = list(images[order[:count]].split(size))
            flat = {f"{form} | {name}": m for form, models in forms.items() for name, m in models.items()}
            before = Path("/proc/loadavg").read_text().split()[:3]
            ms[size] = eeb.time_batches(flat, batches, rounds=args.rounds)
            load[size] = [before, Path("/proc/loadavg").read_text().split()[:3]]
            print(f"batch {size}: load {load[size]}", {k: round(v, 3) for k, v in ms[size].items()}, flush=True)
            if mine.paths:
                path_ms[size] = time_paths(forms, runners, images[order[: mine.path_images]], size, setup, mine)
            if mine.time_costs:
                timed_rows += time_cost_rows(forms, runners, chosen, images, labels, order, size, path_ms[size], args, mine)
    rows = []
    for row in table:
        rule = row["rule"]
        if rule not in runners:
            continue
        for form in forms:
            read = reads[f"{form} | {rule}"]
            agree = float((read["index"] == reads[f"{next(iter(forms))} | {rule}"]["index"]).float().mean())
            out = {
                "rule": rule, "form": form, "chosen_on_val": row["chosen_on_val"], "test_acc": round(read["acc"], 4),
                "drop_pts": round(100 * (chosen.base_test - read["acc"]), 2), "macs_x": row["macs_x"],
                "exit_agreement_with_first_form": round(agree, 4), "exit_shares": [round(s, 3) for s in read["shares"]],
            }  # fmt: skip
            for size in mine.batch_sizes:
                full, routed = ms[size][f"{form} | full model"], ms[size][f"{form} | {rule}"]
                out[f"b{size}_full_ms_per_sample"] = round(full / size, 4)
                out[f"b{size}_ms_per_sample"] = round(routed / size, 4)
                out[f"b{size}_latency_x"] = round(full / routed, 3)
                if size in path_ms:
                    predicted = paths.predicted_ms(read["shares"], path_ms[size][form]["path"])
                    out[f"b{size}_predicted_latency_x"] = round(path_ms[size][form]["full"] / predicted, 3)
            rows.append(out)
    rows += timed_rows
    head = {
        "baseline_val": round(chosen.base_val, 4), "baseline_test": round(chosen.base_test, 4),
        "exits": setup.ee.exit_names, "full_macs_M": round(setup.full_macs / 1e6, 3),
        "full_ms_per_sample": {f"b{s}": {f: round(ms[s][f"{f} | full model"] / s, 4) for f in forms} for s in ms},
        "val_rows": [{k: r[k] for k in ("rule", "chosen_on_val", "val_acc", "val_macs_x", "thresholds")} for r in table],
        "path_ms_per_sample": path_ms, "load_per_batch_size": load, "loadavg_before": setup.load_before,
        "loadavg_after": Path("/proc/loadavg").read_text().split()[:3],
        "args": {k: str(v) for k, v in {**vars(args), **vars(mine)}.items()},
    }  # fmt: skip
    egate.print_and_save(head, rows, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
