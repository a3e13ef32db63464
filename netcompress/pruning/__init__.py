"""Pruning: weight masks, unstructured and neuron pruning, schedules, sparse storage, channel pruning.

Example:
    >>> from netcompress.pruning import prune_unstructured_, save_sparse
    >>> prune_unstructured_(model, amount=0.9, scope="global")
    >>> save_sparse(model, "model.ncz")["size_bytes"]

In-place verbs end in ``_`` and return their summary (``prune_unstructured_``, ``reconstruct_weights_``,
``prune_gradual_``, ``prune_iterative_``, ``prune_one_shot_``); their old names are aliases. The others
(``prune_channels``, ``prune_to_target``, ``prune_neurons``, ``slim``) return a new model and leave
their argument untouched. Each method's config class sits next to its algorithm.
"""

# structured channel pruning, network slimming, automatic rates
from netcompress.pruning.auto import STRATEGIES as AUTO_STRATEGIES
from netcompress.pruning.auto import AutoPruneConfig, prune_to_target
from netcompress.pruning.bn_recalibration import recalibrate_bn
from netcompress.pruning.channel import (
    ChannelPlan,
    ChannelPruneConfig,
    ChannelSelection,
    apply_channel_plan,
    plan_channel_pruning,
    prune_channels,
)
from netcompress.pruning.graph import ChannelGraph, ChannelGroup
from netcompress.pruning.graph_tracing import build_channel_graph
from netcompress.pruning.importance import IMPORTANCES
from netcompress.pruning.iterative import (
    IterativeConfig,
    prune_iterative,
    prune_iterative_,
    prune_one_shot,
    prune_one_shot_,
)
from netcompress.pruning.iterative_channel import IterativeChannelConfig
from netcompress.pruning.kernels import prune_kernels_
from netcompress.pruning.latency_table import (
    CostTable,
    MeasuredTargetFields,
    MeasureSpec,
    cost_table,
    time_deployed,
)
from netcompress.pruning.masked_reference import masked_reference
from netcompress.pruning.masks import (
    MaskKeeper,
    apply_mask,
    load_masked_state_dict,
    masked_parameters,
    remove_masks,
    sparsity_report,
)
from netcompress.pruning.neuron import CRITERIA as NEURON_CRITERIA
from netcompress.pruning.neuron import (
    APoZConfig,
    MeanActivationConfig,
    NeuronPruneConfig,
    neuron_statistics,
    prune_neurons,
    prune_neurons_iterative,
)
from netcompress.pruning.one_shot import SparseGPTConfig, WandaConfig, prune_sparsegpt_, prune_wanda_
from netcompress.pruning.reconstruction import reconstruct_weights, reconstruct_weights_
from netcompress.pruning.recovery import RecoveryFields
from netcompress.pruning.schedules import (
    GradualConfig,
    GradualPruner,
    polynomial_sparsity,
    prune_gradual,
    prune_gradual_,
)
from netcompress.pruning.semi_structured import NMConfig, prune_n_m_
from netcompress.pruning.slimming import (
    BNL1Penalty,
    SlimmingConfig,
    SlimmingTrainConfig,
    bn_gammas,
    bn_sparsity,
    slim,
)
from netcompress.pruning.soft_shrink import ChannelShrink, ShrinkConfig, ShrinkSchedule, shrink_to_target
from netcompress.pruning.sparse_storage import (
    dense_size_bytes,
    load_sparse,
    read_sparse_state_dict,
    save_sparse,
)
from netcompress.pruning.transformer_head_dim import HeadDimAttention, head_dim_scores
from netcompress.pruning.transformer_head_dim_api import prune_head_dims
from netcompress.pruning.transformer_mha import PrunedMultiheadAttention
from netcompress.pruning.transformer_pruning import TransformerPruneConfig, prune_transformer
from netcompress.pruning.unstructured import SCORES as UNSTRUCTURED_METHODS
from netcompress.pruning.unstructured import (
    L1UnstructuredConfig,
    RandomUnstructuredConfig,
    UnstructuredConfig,
    WeightSelection,
    prune_unstructured,
    prune_unstructured_,
)

__all__ = [
    "masked_reference",
    # structured channel pruning, network slimming, automatic rates
    "AUTO_STRATEGIES",
    "IMPORTANCES",
    "AutoPruneConfig",
    "BNL1Penalty",
    "ChannelPruneConfig",
    "ChannelSelection",
    "IterativeChannelConfig",
    "RecoveryFields",
    "SlimmingConfig",
    "SlimmingTrainConfig",
    "ChannelGraph",
    "ChannelGroup",
    "ChannelPlan",
    "apply_channel_plan",
    "bn_gammas",
    "bn_sparsity",
    "build_channel_graph",
    "plan_channel_pruning",
    "prune_channels",
    "prune_to_target",
    "recalibrate_bn",
    "reconstruct_weights",
    "reconstruct_weights_",
    "slim",
    # unstructured and neuron pruning, schedules, sparse storage
    "NEURON_CRITERIA",
    "UNSTRUCTURED_METHODS",
    "APoZConfig",
    "GradualConfig",
    "L1UnstructuredConfig",
    "MeanActivationConfig",
    "RandomUnstructuredConfig",
    "WeightSelection",
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
    "prune_gradual_",
    "prune_iterative",
    "prune_iterative_",
    "prune_neurons",
    "prune_neurons_iterative",
    "prune_one_shot",
    "prune_one_shot_",
    "prune_unstructured",
    "prune_unstructured_",
    "read_sparse_state_dict",
    "remove_masks",
    "save_sparse",
    "sparsity_report",
    # transformers: attention heads, FFN neurons, residual-stream width
    "HeadDimAttention",
    "PrunedMultiheadAttention",
    "TransformerPruneConfig",
    "head_dim_scores",
    "prune_head_dims",
    "prune_transformer",
    # semi-structured N:M sparsity and one-shot (Wanda, SparseGPT) pruning
    "NMConfig",
    "SparseGPTConfig",
    "WandaConfig",
    "prune_n_m_",
    "prune_kernels_",
    "prune_sparsegpt_",
    "prune_wanda_",
    # soft progressive channel pruning: the channels to remove fade to zero while the network trains
    "ChannelShrink",
    "ShrinkConfig",
    "ShrinkSchedule",
    "shrink_to_target",
    # measured targets: latency of the deployed form, bytes of the shipped file
    "CostTable",
    "MeasureSpec",
    "MeasuredTargetFields",
    "cost_table",
    "time_deployed",
]
