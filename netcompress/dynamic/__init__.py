"""Dynamic computation: early-exit heads (confidence/entropy thresholds) and slimmable width.

Example::

    from netcompress.dynamic import add_early_exits, evaluate_early_exit, make_slimmable, extract_width
    ee = add_early_exits(model, exits=["features.5"], example_inputs=torch.randn(1, 1, 8, 8))
    rows = evaluate_early_exit(ee, test_loader, criterion="confidence", thresholds=[0.5, 0.9])
    slim = make_slimmable(model, widths=(0.25, 0.5, 1.0), example_inputs=torch.randn(1, 1, 8, 8))
    small = extract_width(slim, 0.5)
"""

from netcompress.dynamic import steps as _steps  # noqa: F401  (registers dynamic/early_exit, dynamic/slimmable)
from netcompress.dynamic.early_exit import (
    DEFAULT_THRESHOLDS,
    EXIT_CRITERIA,
    HEADS,
    EarlyExitModel,
    PoolLinearHead,
    PoolMLPHead,
    add_early_exits,
    route_exits,
)
from netcompress.dynamic.exit_training import (
    EarlyExitHook,
    MultiExitLoss,
    collect_exit_logits,
    evaluate_early_exit,
    exit_path_macs,
    trade_off_rows,
    train_early_exit,
)
from netcompress.dynamic.slimmable import (
    SlimmableModel,
    SwitchableBatchNorm,
    active_channels,
    extract_width,
    make_slimmable,
    set_width,
)
from netcompress.dynamic.slimmable_training import SlimmableHook, evaluate_widths, train_slimmable
from netcompress.dynamic.steps import EarlyExitStepConfig, SlimmableStepConfig

__all__ = [
    "DEFAULT_THRESHOLDS",
    "EXIT_CRITERIA",
    "HEADS",
    "EarlyExitHook",
    "EarlyExitModel",
    "EarlyExitStepConfig",
    "MultiExitLoss",
    "PoolLinearHead",
    "PoolMLPHead",
    "SlimmableHook",
    "SlimmableModel",
    "SlimmableStepConfig",
    "SwitchableBatchNorm",
    "active_channels",
    "add_early_exits",
    "collect_exit_logits",
    "evaluate_early_exit",
    "evaluate_widths",
    "exit_path_macs",
    "extract_width",
    "make_slimmable",
    "route_exits",
    "set_width",
    "trade_off_rows",
    "train_early_exit",
    "train_slimmable",
]
