"""Pruning: weight masks, unstructured and neuron pruning, schedules, sparse storage, channel pruning.

Example:
    >>> from netcompress.pruning import prune_unstructured, save_sparse
    >>> prune_unstructured(model, amount=0.9, scope="global")
    >>> save_sparse(model, "model.ncz")["size_bytes"]
"""

# structured channel pruning, network slimming, automatic rates
from netcompress.pruning.auto import STRATEGIES as AUTO_STRATEGIES
from netcompress.pruning.auto import prune_to_target
from netcompress.pruning.bn_recalibration import recalibrate_bn
from netcompress.pruning.channel import (
    ChannelPlan,
    apply_channel_plan,
    plan_channel_pruning,
    prune_channels,
    prune_channels_with_summary,
)
from netcompress.pruning.graph import ChannelGraph, ChannelGroup, build_channel_graph
from netcompress.pruning.importance import IMPORTANCES
from netcompress.pruning.masks import (
    MaskKeeper,
    apply_mask,
    load_masked_state_dict,
    masked_parameters,
    remove_masks,
    sparsity_report,
)
from netcompress.pruning.neuron import CRITERIA as NEURON_CRITERIA
from netcompress.pruning.neuron import NeuronPruneConfig, neuron_statistics, prune_neurons
from netcompress.pruning.reconstruction import reconstruct_weights
from netcompress.pruning.schedules import (
    GradualConfig,
    GradualPruner,
    IterativeConfig,
    polynomial_sparsity,
    prune_gradual,
    prune_iterative,
    prune_neurons_iterative,
    prune_one_shot,
)
from netcompress.pruning.slimming import BNL1Penalty, bn_gammas, bn_sparsity, slim
from netcompress.pruning.sparse_storage import (
    dense_size_bytes,
    load_sparse,
    read_sparse_state_dict,
    save_sparse,
)
from netcompress.pruning.unstructured import SCORES as UNSTRUCTURED_METHODS
from netcompress.pruning.unstructured import UnstructuredConfig, prune_unstructured

__all__ = [
    # structured channel pruning, network slimming, automatic rates
    "AUTO_STRATEGIES",
    "IMPORTANCES",
    "BNL1Penalty",
    "ChannelGraph",
    "ChannelGroup",
    "ChannelPlan",
    "apply_channel_plan",
    "bn_gammas",
    "bn_sparsity",
    "build_channel_graph",
    "plan_channel_pruning",
    "prune_channels",
    "prune_channels_with_summary",
    "prune_to_target",
    "recalibrate_bn",
    "reconstruct_weights",
    "slim",
    # unstructured and neuron pruning, schedules, sparse storage
    "NEURON_CRITERIA",
    "UNSTRUCTURED_METHODS",
    "GradualConfig",
    "GradualPruner",
    "IterativeConfig",
    "MaskKeeper",
    "NeuronPruneConfig",
    "UnstructuredConfig",
    "apply_mask",
    "dense_size_bytes",
    "load_masked_state_dict",
    "load_sparse",
    "masked_parameters",
    "neuron_statistics",
    "polynomial_sparsity",
    "prune_gradual",
    "prune_iterative",
    "prune_neurons",
    "prune_neurons_iterative",
    "prune_one_shot",
    "prune_unstructured",
    "read_sparse_state_dict",
    "remove_masks",
    "save_sparse",
    "sparsity_report",
]
