"""Issue 15, session 12: distillation on extra *unlabelled* CIFAR-10 images for the ViT benchmarks.

The protocol trains on a 10,000-image class-balanced subset of CIFAR-10's 50,000 training images and chooses
settings on 5,000 held-out training images (``cifar_protocol.heldout_loader``). The remaining 35,000 are
unused; here ``n`` of them (a seeded random draw, chosen without looking at the labels) are given to the
knowledge-distillation fine-tune **with their labels dropped**: on them the student learns only the
teacher's soft targets, on the labelled subset soft targets + cross entropy (``alpha`` as usual).

Fair budget: the rows that cannot use unlabelled images (the unpruned reference, the CE rows) get the same
number of optimizer steps, i.e. ``epochs * (labelled + n) / labelled`` epochs on the labelled subset
(:func:`equal_step_epochs`).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import ConcatDataset, Dataset

UNLABELLED = -1  # the label an unlabelled image carries through the loader


class Unlabelled(Dataset):
    """``base[indices[i]]`` with its label replaced by :data:`UNLABELLED` (the image keeps its augmentation)."""

    def __init__(self, base: Any, indices: list[int]):
        self.base, self.indices = base, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[self.indices[i]][:2]
        # the same label type as the base data set's (collate stacks tensors and ints, not a mix)
        return image, torch.tensor(UNLABELLED, dtype=label.dtype) if torch.is_tensor(label) else UNLABELLED


def extra_indices(
    labels: np.ndarray,
    *,
    train_subset: int,
    val_size: int,
    n: int,
    num_classes: int,
    subset_seed: int,
    seed: int = 0,
) -> list[int]:
    """``n`` training-image indices outside the protocol's subset and outside ``heldout_loader``'s split.

    The subset and the validation split are drawn exactly as ``cifar_protocol.load_data`` /
    ``heldout_loader`` draw them (class-balanced, their seeds); the ``n`` extra images are a seeded random
    draw from the rest that does not read the labels. Too few left is an error naming the counts.
    """
    from netcompress.core.errors import ConfigError
    from netcompress.data import balanced_subset

    used = set(balanced_subset(labels, size=train_subset, num_classes=num_classes, seed=subset_seed).tolist())
    rest = [i for i in range(len(labels)) if i not in used]
    val = {
        rest[i]
        for i in balanced_subset(labels[rest], size=val_size, num_classes=num_classes, seed=1).tolist()
    }
    free = np.array([i for i in rest if i not in val])
    if n > len(free):
        raise ConfigError(
            f"--extra-unlabelled {n}: only {len(free)} training images lie outside the {train_subset}-image "
            f"subset and the {val_size}-image validation split"
        )
    return sorted(np.random.default_rng(seed).permutation(free)[:n].tolist())


def unlabelled_images(args: Any, n: int, *, val_size: int = 5000) -> Dataset:
    """``n`` augmented unlabelled images for the run ``args`` (vit_pruning's arguments).

    Real data: CIFAR-10 training images outside the subset and the validation split (:func:`extra_indices`);
    ``--synthetic``: fresh synthetic images (another seed), labels dropped.
    """
    if args.synthetic:
        try:
            from benchmarks.vit_pruning import synthetic_bundle
        except ModuleNotFoundError:
            from vit_pruning import synthetic_bundle
        base, _ = synthetic_bundle(n_train=n, n_test=1, seed=args.seed + 1000)
        return Unlabelled(base, list(range(n)))
    import netcompress

    try:
        from benchmarks import cifar_protocol as cp
    except ModuleNotFoundError:
        import cifar_protocol as cp
    full = netcompress.data.load("cifar10", root=cp._data_root(None), augment=True, val_fraction=0)
    indices = extra_indices(
        full.train.labels.numpy(), train_subset=args.train_subset, val_size=val_size, n=n,
        num_classes=full.num_classes, subset_seed=netcompress.data.config_for("cifar10").subset_seed,
    )  # fmt: skip
    return Unlabelled(full.train, indices)


def masked_cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross entropy over the labelled samples of the batch (label >= 0); 0 (still on the graph) when none."""
    labelled = targets >= 0
    if not bool(labelled.any()):
        return outputs.sum() * 0.0
    return F.cross_entropy(outputs[labelled], targets[labelled])


def equal_step_epochs(epochs: int, labelled: int, extra: int) -> int:
    """Epochs on the labelled set with as many optimizer steps as ``epochs`` over labelled + extra images.

    ``extra`` must be a multiple of ``labelled`` (whole epochs, so the budgets are exactly equal).
    """
    from netcompress.core.errors import ConfigError

    if extra % labelled:
        raise ConfigError(
            f"--extra-unlabelled {extra} must be a multiple of the {labelled} labelled images (equal budgets)"
        )
    return epochs * (labelled + extra) // labelled


def kd_finetune_extra(
    model: nn.Module, teacher: nn.Module, train: Any, extra: Dataset, loader: Any, config: Any, *,
    temperature: float, alpha: float,
) -> nn.Module:  # fmt: skip
    """A copy of ``model`` distilled from ``teacher`` on ``train`` + the unlabelled ``extra`` images.

    ``loader(dataset)`` builds the (seeded, shuffled) loader; the hard-label term reads only labelled samples.
    """
    from netcompress.distillation.hooks import SoftTargetDistillation, TeacherForward
    from netcompress.training import fit

    model = copy.deepcopy(model).train()
    hook = SoftTargetDistillation(TeacherForward(teacher), temperature=temperature, alpha=alpha)
    fit(
        model,
        loader(ConcatDataset([train, extra])),
        config=config,
        hooks=[hook],
        loss_fn=masked_cross_entropy,
    )
    return model.eval()


def budget_rows(epochs: int, labelled: int, extra: int, batch_size: int) -> dict[str, int]:
    """Optimizer steps of the KD-with-extra rows and of the equal-step labelled rows (for the report)."""
    steps = -(-(labelled + extra) // batch_size) * epochs
    ce_epochs = equal_step_epochs(epochs, labelled, extra)
    return {"kd_steps": steps, "ce_epochs": ce_epochs, "ce_steps": -(-labelled // batch_size) * ce_epochs}
