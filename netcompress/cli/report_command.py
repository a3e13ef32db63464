"""``netcompress report``: rebuild a run's report, or compare several runs in one table."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="print a run's stage table, or compare several runs (a table over their final stages)",
        description="Read metrics.json from each run folder. One folder: print its stages. Several: compare them.",
    )
    p.add_argument("runs", nargs="+", type=Path, help="run folders (holding metrics.json)")
    p.add_argument(
        "--out", type=Path, default=None, help="also write the comparison as Markdown + HTML into this folder"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from netcompress.core.errors import ConfigError
    from netcompress.recipes.run_folder import is_run_folder
    from netcompress.reporting import compare_runs, print_stage_table, write_report
    from netcompress.reporting.tables import read_run_metrics, run_baseline

    for folder in args.runs:
        if not folder.exists():
            raise ConfigError(f"run folder {folder} not found")
        if is_run_folder(folder) and not (folder / "metrics.json").exists():
            raise ConfigError(
                f"{folder} is a run that has not finished (no metrics.json yet); continue it with "
                f"netcompress run RECIPE --resume --out {folder}"
            )
        if not (folder / "metrics.json").exists():
            raise ConfigError(f"{folder} is not a run folder: it has no metrics.json")
    if len(args.runs) == 1:  # ratios against the stage `netcompress run` took them against
        metrics = read_run_metrics(args.runs[0])
        stages, baseline = metrics["stages"], run_baseline(metrics)
        title = f"netcompress run: {metrics.get('name') or args.runs[0].name}"
    else:  # each run's final stage, the ratio columns against the first run's
        stages, baseline, title = compare_runs(args.runs), 0, "netcompress comparison"
    print_stage_table(stages, baseline=baseline)
    if args.out:
        md, html = write_report(args.out, title=title, stages=stages, plots={}, baseline=baseline)
        print(f"wrote {md} and {html}")
    return 0
