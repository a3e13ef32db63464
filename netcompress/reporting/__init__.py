"""Reporting: plots written to PNG files, Rich tables, Markdown and self-contained HTML reports.

Example::

    from netcompress.reporting import plot_history, print_stage_table, write_report
    plot_history(history.rows, "run/history.png", metrics=["train_acc"], secondary=["bn_sparsity"])
    print_stage_table(stages)
    write_report("run", title="Slimming", stages=stages, plots={"Accuracy and sparsity": "run/history.png"})
"""

from netcompress.reporting.markdown_html import markdown_to_html
from netcompress.reporting.plots import (
    plot_accuracy_vs_params,
    plot_histograms,
    plot_history,
    plot_layer_sparsity,
    plot_lr,
)
from netcompress.reporting.report import write_report
from netcompress.reporting.stage_plots import plot_stage_bars
from netcompress.reporting.tables import (
    baseline_stage,
    compare_runs,
    format_cell,
    print_stage_table,
    print_table,
    read_run_metrics,
    run_baseline,
    run_labels,
    stage_table_rows,
)

__all__ = [
    "baseline_stage",
    "compare_runs",
    "format_cell",
    "markdown_to_html",
    "plot_accuracy_vs_params",
    "plot_histograms",
    "plot_history",
    "plot_layer_sparsity",
    "plot_lr",
    "plot_stage_bars",
    "print_stage_table",
    "print_table",
    "read_run_metrics",
    "run_baseline",
    "run_labels",
    "stage_table_rows",
    "write_report",
]
