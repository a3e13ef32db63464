"""Registered reference models: CIFAR VGG/ResNet, a MobileNet-style student, E3's food CNNs, SincNet, small nets.

Every model is an ordinary ``nn.Module`` built from module-level classes: traceable by
``torch.fx.symbolic_trace``, deep-copyable and picklable whole.

Example:
    >>> import netcompress as nc
    >>> model = nc.models.create("cifar_vgg", cfg="narrow", num_classes=10)
    >>> nc.models.input_shape("cifar_vgg")
    (3, 32, 32)
"""

from netcompress.models import food, mobilenet, resnet, sincnet, small, vgg, vit  # noqa: F401  (they register)
from netcompress.models.catalog import (
    MODELS,
    ModelSpec,
    create,
    describe,
    input_shape,
    list_models,
    register_model,
)
from netcompress.models.sincnet import SincConv1d
from netcompress.models.vgg import VGG_CFGS

list = list_models  # noqa: A001  (the contract's name: netcompress.models.list())

__all__ = [
    "MODELS",
    "VGG_CFGS",
    "ModelSpec",
    "SincConv1d",
    "create",
    "describe",
    "input_shape",
    "list",
    "list_models",
    "register_model",
]
