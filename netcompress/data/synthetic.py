"""A learnable synthetic data set: Gaussian clusters around class-dependent means.

For tests and demos that must show a model learning without any files: each class has its own
random mean pattern, samples are that mean plus unit noise, so a linear model separates them.
"""

from __future__ import annotations

import dataclasses

import torch

from netcompress.core.config import check_range
from netcompress.data.bundle import DataBundle, ValidationSplit, hold_out_validation
from netcompress.data.catalog import register_dataset
from netcompress.data.in_memory import FloatTensorDataset


@dataclasses.dataclass
class SyntheticConfig(ValidationSplit):
    """Settings of the ``synthetic`` data set.

    ``num_samples`` training samples and ``num_test_samples`` (default a quarter of it, at least
    one per class) test samples, classes balanced. ``separation`` scales the class means
    relative to the unit noise: larger is easier. The validation split (``val_fraction``,
    ``val_size``, ``val_seed``) is held out of the ``num_samples`` training samples.

    Example:
        >>> SyntheticConfig(num_samples=64, input_shape=(4,), num_classes=2)
    """

    num_samples: int = 256
    input_shape: tuple[int, ...] = (3, 32, 32)
    num_classes: int = 10
    seed: int = 0
    num_test_samples: int | None = None
    separation: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        # YAML gives lists; a tuple keeps the config hashable and the shape immutable.
        self.input_shape = tuple(int(s) for s in self.input_shape)
        check_range("num_classes", self.num_classes, 2)
        check_range("num_samples", self.num_samples, self.num_classes)
        check_range("separation", self.separation, 0.0)
        if self.num_test_samples is not None:
            check_range("num_test_samples", self.num_test_samples, 1)
        if not self.input_shape or min(self.input_shape) < 1:
            check_range("input_shape (every size)", min(self.input_shape, default=0), 1)


def _draw(means: torch.Tensor, count: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.arange(count) % len(means)
    labels = labels[torch.randperm(count, generator=gen)]
    noise = torch.randn((count, *means.shape[1:]), generator=gen)
    return means[labels] + noise, labels


@register_dataset("synthetic", config=SyntheticConfig)
def load_synthetic(config: SyntheticConfig) -> DataBundle:
    """The synthetic bundle; the same seed gives the same tensors.

    Example:
        >>> bundle = load_synthetic(SyntheticConfig(num_samples=100, input_shape=(8,), num_classes=4))
        >>> len(bundle.train), len(bundle.val), len(bundle.test), bundle.input_shape
        (90, 10, 25, (8,))
    """
    gen = torch.Generator().manual_seed(config.seed)
    means = config.separation * torch.randn((config.num_classes, *config.input_shape), generator=gen)
    num_test = config.num_test_samples or max(config.num_samples // 4, config.num_classes)
    train_x, train_y = _draw(means, config.num_samples, gen)
    test_x, test_y = _draw(means, num_test, gen)
    train, val = hold_out_validation(FloatTensorDataset(train_x, train_y), config)
    return DataBundle(
        name="synthetic",
        train=train,
        test=FloatTensorDataset(test_x, test_y),
        val=val,
        num_classes=config.num_classes,
        input_shape=config.input_shape,
        class_names=[f"class_{i}" for i in range(config.num_classes)],
        info={
            "num_train": len(train),
            "num_val": 0 if val is None else len(val),
            "num_test": num_test,
            "config": config.to_dict(),
        },
    )
