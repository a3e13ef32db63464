"""netcompress: network compression for PyTorch.

Prune, quantize, distil, factorise and measure a model, then export it to ONNX Runtime::

    import netcompress as nc
    model = nc.models.create("cifar_vgg", cfg=[64, 64, "M", 128, "M"], num_classes=10)
    stats = nc.profile(model, torch.randn(1, 3, 32, 32))
    nc.prune_unstructured(model, amount=0.5, method="l1", scope="global")

Public verbs are imported lazily so ``netcompress --help`` starts fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "models": ("netcompress.models", None),
    "data": ("netcompress.data", None),
    "fit": ("netcompress.training", "fit"),
    "fit_": ("netcompress.training", "fit_"),
    "TrainConfig": ("netcompress.training", "TrainConfig"),
    "evaluate": ("netcompress.evaluation", "evaluate"),
    "select_output": ("netcompress.core.output_select", "select_output"),
    "profile": ("netcompress.evaluation", "profile"),
    "prune_unstructured": ("netcompress.pruning", "prune_unstructured"),
    "prune_unstructured_": ("netcompress.pruning", "prune_unstructured_"),
    "prune_channels": ("netcompress.pruning", "prune_channels"),
    "prune_neurons": ("netcompress.pruning", "prune_neurons"),
    "prune_to_target": ("netcompress.pruning", "prune_to_target"),
    "reconstruct_weights": ("netcompress.pruning", "reconstruct_weights"),
    "reconstruct_weights_": ("netcompress.pruning", "reconstruct_weights_"),
    "slim": ("netcompress.pruning", "slim"),
    "save_sparse": ("netcompress.pruning", "save_sparse"),
    "load_sparse": ("netcompress.pruning", "load_sparse"),
    "prepare_qat": ("netcompress.quantization", "prepare_qat"),
    "mixed_precision_quantize": ("netcompress.quantization", "mixed_precision_quantize"),
    "save_quantized": ("netcompress.quantization", "save_quantized"),
    "load_quantized": ("netcompress.quantization", "load_quantized"),
    "factorize": ("netcompress.low_rank", "factorize"),
    "to_depthwise_separable": ("netcompress.architecture", "to_depthwise_separable"),
    "cluster_weights": ("netcompress.clustering", "cluster_weights"),
    "cluster_weights_": ("netcompress.clustering", "cluster_weights_"),
    "quantize": ("netcompress.quantization", "quantize"),
    "export_onnx": ("netcompress.export", "export_onnx"),
    "save": ("netcompress.export.model_file", "save"),
    "load": ("netcompress.export.model_file", "load"),
    "save_compressed": ("netcompress.export.compressed_file", "save_compressed"),
    "load_compressed": ("netcompress.export.compressed_file", "load_compressed"),
    "apply": ("netcompress.core.methods", "apply"),
    "distill": ("netcompress.distillation", "distill"),
    "distill_": ("netcompress.distillation", "distill_"),
    "run_recipe": ("netcompress.recipes", "run_recipe"),
    "prune_transformer": ("netcompress.pruning", "prune_transformer"),
    "prune_head_dims": ("netcompress.pruning", "prune_head_dims"),
    "prune_n_m_": ("netcompress.pruning", "prune_n_m_"),
    "prune_kernels_": ("netcompress.pruning", "prune_kernels_"),
    "prune_wanda_": ("netcompress.pruning", "prune_wanda_"),
    "prune_sparsegpt_": ("netcompress.pruning", "prune_sparsegpt_"),
    "distill_embeddings_": ("netcompress.distillation", "distill_embeddings_"),
    "distill_transformer_": ("netcompress.distillation", "distill_transformer_"),
    "quantize_accuracy_aware": ("netcompress.quantization", "quantize_accuracy_aware"),
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'netcompress' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
