"""Dynamic computation: early-exit heads (confidence/entropy thresholds) and slimmable width.

Example::

    from netcompress.dynamic import add_early_exits, evaluate_early_exit, make_slimmable, extract_width
    ee = add_early_exits(model, exits=["features.5"], example_inputs=torch.randn(1, 1, 8, 8))
    rows = evaluate_early_exit(ee, test_loader, criterion="confidence", thresholds=[0.5, 0.9])
    slim = make_slimmable(model, widths=(0.25, 0.5, 1.0), example_inputs=torch.randn(1, 1, 8, 8))
    small = extract_width(slim, 0.5)
    ee, summary = with_early_exits(model, train, val_loader=val, example_inputs=x, exits=["features.5"])
    calibrate_early_exit(ee, val_loader, max_accuracy_drop=0.01)     # threshold chosen on validation
    calibrate_exit_thresholds(ee, val_loader, max_accuracy_drop=0.01)  # one per exit, on validation
    ztw = add_early_exits(model, exits=["features.5"], example_inputs=x, cascade=True)  # Zero Time Waste
    attach_exit_ensemble(ztw, train_loader)          # exits decide by a geometric ensemble
    export_early_exit_onnx(ee, "ee_onnx", x[:1]); OrtEarlyExit("ee_onnx")(images)
    folded, _ = fold_early_exit_bn(ee, x[:1])        # BN folded into the convs: the deployed form
"""

from netcompress.dynamic.early_exit import EarlyExitModel
from netcompress.dynamic.exit_calibration import calibrate_early_exit, candidate_thresholds, choose_threshold
from netcompress.dynamic.exit_criteria import DEFAULT_THRESHOLDS, EXIT_CRITERIA, route_exits
from netcompress.dynamic.exit_ensemble import (
    CascadeHead,
    ExitEnsemble,
    attach_exit_ensemble,
    fit_exit_ensemble,
)
from netcompress.dynamic.exit_evaluation import (
    collect_exit_logits,
    evaluate_early_exit,
    exit_path_macs,
    trade_off_rows,
)
from netcompress.dynamic.exit_folding import fold_early_exit_bn
from netcompress.dynamic.exit_gates import (
    ExitGates,
    choose_gate_thresholds,
    fit_exit_gates,
    gate_features,
    gate_trade_off,
    route_by_scores,
)
from netcompress.dynamic.exit_heads import HEADS, PoolLinearHead, PoolMLPHead
from netcompress.dynamic.exit_onnx import OrtEarlyExit, check_early_exit_onnx, export_early_exit_onnx
from netcompress.dynamic.exit_points import add_early_exits
from netcompress.dynamic.exit_thresholds import (
    calibrate_exit_thresholds,
    choose_exit_thresholds,
    oracle_exit_macs,
)
from netcompress.dynamic.exit_training import (
    EarlyExitConfig,
    EarlyExitHook,
    MultiExitLoss,
    train_early_exit,
    with_early_exits,
)
from netcompress.dynamic.feature_gates import (
    FeatureExitGates,
    collect_exit_features,
    fit_feature_gates,
    gated_exit_macs,
)
from netcompress.dynamic.slim_layers import SwitchableBatchNorm, active_channels
from netcompress.dynamic.slimmable import (
    SlimmableModel,
    at_width,
    extract_width,
    make_slimmable,
    recalibrate_widths_,
    set_width,
)
from netcompress.dynamic.slimmable_training import (
    SlimmableConfig,
    SlimmableHook,
    evaluate_widths,
    train_slimmable,
    with_slimmable_width,
)

__all__ = [
    "DEFAULT_THRESHOLDS",
    "EXIT_CRITERIA",
    "HEADS",
    "CascadeHead",
    "EarlyExitHook",
    "ExitEnsemble",
    "attach_exit_ensemble",
    "fit_exit_ensemble",
    "ExitGates",
    "FeatureExitGates",
    "collect_exit_features",
    "fit_feature_gates",
    "gated_exit_macs",
    "choose_gate_thresholds",
    "fit_exit_gates",
    "gate_features",
    "gate_trade_off",
    "route_by_scores",
    "EarlyExitModel",
    "EarlyExitConfig",
    "MultiExitLoss",
    "OrtEarlyExit",
    "PoolLinearHead",
    "PoolMLPHead",
    "SlimmableHook",
    "SlimmableModel",
    "SlimmableConfig",
    "SwitchableBatchNorm",
    "active_channels",
    "add_early_exits",
    "at_width",
    "calibrate_early_exit",
    "calibrate_exit_thresholds",
    "candidate_thresholds",
    "check_early_exit_onnx",
    "choose_exit_thresholds",
    "choose_threshold",
    "collect_exit_logits",
    "evaluate_early_exit",
    "evaluate_widths",
    "exit_path_macs",
    "export_early_exit_onnx",
    "fold_early_exit_bn",
    "extract_width",
    "make_slimmable",
    "oracle_exit_macs",
    "recalibrate_widths_",
    "route_exits",
    "set_width",
    "trade_off_rows",
    "train_early_exit",
    "train_early_exit_",
    "train_slimmable",
    "train_slimmable_",
    "with_early_exits",
    "with_slimmable_width",
]

# the in-place names (they train the model they are given); the old names stay for existing code
train_early_exit_ = train_early_exit
train_slimmable_ = train_slimmable
