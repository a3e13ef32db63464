"""Layer-by-layer calibration for one-shot pruning (Wanda, SparseGPT, N:M with Wanda scores).

:func:`prune_layerwise` walks the selected Conv/Linear layers in the order the model calls them. For each
group of layers it runs the calibration batches through the model with forward hooks on the group, adds
the layers' inputs into :class:`InputStats` (per-feature squared norms, and the Gram matrix ``X^T X``
when asked: never the inputs themselves, so memory is ``in_features^2`` per layer, whatever the amount
of data), stops the forward once the group has seen its inputs, and hands each layer with its statistics
to a ``prune`` callback. The next group's inputs then come from the model already pruned upstream.

Layers that receive the very same input tensor (the query, key and value projections of an attention
block) form one group: pruning one cannot change the input of the others, so they share a pass.
Models are called with tensors, tuples or dicts (:func:`netcompress.core.inputs.call_model`).

Example:
    >>> batches = calibration_batches(loader, 8, method="prune/wanda")
    >>> def prune(name, layer, stats):
    ...     return {"rows": stats.rows}
    >>> layers, _ = select_layers(model, config, method="prune/wanda")
    >>> done, skipped = prune_layerwise(model, layers, batches, prune=prune)
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from netcompress.core.config import Config, check_fraction, check_range
from netcompress.core.errors import ConfigError
from netcompress.core.inputs import batch_inputs, call_model, move_inputs
from netcompress.core.selection import select_modules
from netcompress.evaluation.harness import eval_mode
from netcompress.pruning.masks import PRUNABLE_TYPES, enforce_masks, sparsity_report


@dataclasses.dataclass
class LayerSelection(Config):
    """Which layers a one-shot method prunes and how much calibration data it reads (shared fields).

    ``include`` (None = every Conv1d/Conv2d/Linear) and ``exclude`` hold layer names or ``re:`` patterns;
    ``calib_batches`` batches of the calibration loader are used; a recipe step given a folder writes the
    masked weights there as ``sparse.ncz`` when ``save_sparse``.
    """

    include: list[str] | None = None
    exclude: list[str] = dataclasses.field(default_factory=list)
    calib_batches: int = 8
    save_sparse: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.include, str) or isinstance(self.exclude, str):
            raise ConfigError("include/exclude must be lists of layer names or 're:' patterns, not a string")
        self.exclude = list(self.exclude)
        self.include = None if self.include is None else list(self.include)
        check_range("calib_batches", self.calib_batches, 1)


def check_amount(amount: Any) -> None:
    """Raise a ConfigError naming ``amount`` unless it is a number in [0, 1)."""
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        raise ConfigError(f"amount={amount!r} must be a number in [0, 1)")
    check_fraction("amount", amount)


def select_layers(
    model: nn.Module, config: LayerSelection, *, method: str
) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """The selected Conv1d/Conv2d/Linear layers with a weight, and those set aside with the reason.

    An ``nn.MultiheadAttention``'s ``out_proj`` is set aside: the attention uses its weight without
    calling it, so a mask's forward hook would never run and training would bring the pruned weights back.
    Selecting nothing is an error naming ``method``.

    Example:
        >>> layers, skipped = select_layers(model, NMConfig(), method="prune/n_m")
    """
    layers = select_modules(model, types=PRUNABLE_TYPES, include=config.include, exclude=config.exclude)
    layers = {n: m for n, m in layers.items() if m._parameters.get("weight") is not None}
    if not layers:
        raise ConfigError(
            f"{method}: no Conv1d/Conv2d/Linear weight selected "
            f"(include={config.include}, exclude={config.exclude})"
        )
    modules = dict(model.named_modules())
    skipped = {
        name: "nn.MultiheadAttention uses its out_proj weight without calling it (a mask would not hold)"
        for name in layers
        if isinstance(modules.get(name.rpartition(".")[0]), nn.MultiheadAttention)
    }
    return {n: m for n, m in layers.items() if n not in skipped}, skipped


def calibration_batches(loader: Iterable | None, calib_batches: int, *, method: str) -> list[Any]:
    """The model inputs of the first ``calib_batches`` batches of ``loader`` (an error naming the key if none).

    Example:
        >>> len(calibration_batches(loader, 4, method="prune/wanda"))
        4
    """
    if loader is None:
        raise ConfigError(
            f"{method} needs calibration data: calib_loader (or train_loader) is None; "
            "pass a loader of model inputs (calib_batches of them are used)"
        )
    batches = []
    for batch in loader:
        if len(batches) >= calib_batches:
            break
        batches.append(batch_inputs(batch))
    if not batches:
        raise ConfigError(f"{method}: calib_loader yielded no batches (calib_batches={calib_batches})")
    return batches


def weight_matrix(layer: nn.Module) -> torch.Tensor:
    """The weight as (out, in * kernel): the matrix the layer multiplies its input rows with."""
    return layer.weight.detach().reshape(layer.weight.shape[0], -1)


def why_not_calibrated(layer: nn.Module) -> str | None:
    """Why a layer's inputs cannot be turned into rows of its weight matrix (None when they can)."""
    if isinstance(layer, (nn.Conv1d, nn.Conv2d)):
        if layer.groups != 1:
            return "grouped/depthwise convolution: its input rows are not one matrix"
        if isinstance(layer.padding, str) or layer.padding_mode != "zeros":
            return "convolution padding other than zeros with explicit sizes"
    return None


def input_rows(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as rows matching :func:`weight_matrix` columns: (positions, in * kernel)."""
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if isinstance(layer, nn.Conv1d):  # as a 1 x k 2-D convolution
        x = x.unsqueeze(2)
        kernel, dilation = (1, layer.kernel_size[0]), (1, layer.dilation[0])
        padding, stride = (0, layer.padding[0]), (1, layer.stride[0])
    else:
        kernel, dilation, padding, stride = layer.kernel_size, layer.dilation, layer.padding, layer.stride
    if x.dim() == 3:  # an unbatched call
        x = x.unsqueeze(0)
    columns = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
    return columns.transpose(1, 2).reshape(-1, columns.shape[1])


class InputStats:
    """Running statistics of a layer's input rows: count, per-feature sum of squares, Gram matrix.

    Example:
        >>> stats = InputStats(3, gram=True); stats.add(torch.ones(5, 3))
        >>> stats.norms.tolist(), stats.hessian[0, 0].item()
        ([2.236..., 2.236..., 2.236...], 5.0)
    """

    def __init__(self, features: int, *, gram: bool, device: torch.device | str = "cpu") -> None:
        self.rows = 0
        self.squares = torch.zeros(features, dtype=torch.float64, device=device)
        self.gram = torch.zeros(features, features, dtype=torch.float64, device=device) if gram else None

    def add(self, rows: torch.Tensor) -> None:
        self.add_sums(*self.sums(rows, gram=self.gram is not None))

    @staticmethod
    def sums(rows: torch.Tensor, *, gram: bool) -> tuple[int, torch.Tensor, torch.Tensor | None]:
        """What ``rows`` add: their count, per-feature sum of squares and (with ``gram``) ``rows^T rows``."""
        rows = rows.detach().to(torch.float64)
        return rows.shape[0], rows.square().sum(0), (rows.T @ rows) if gram else None

    def add_sums(self, count: int, squares: torch.Tensor, gram: torch.Tensor | None) -> None:
        self.rows += count
        self.squares += squares
        if self.gram is not None and gram is not None:
            self.gram += gram

    @property
    def norms(self) -> torch.Tensor:
        """||X_j||_2 of every input feature j over all calibration rows (Wanda's activation norm)."""
        return self.squares.sqrt()

    @property
    def hessian(self) -> torch.Tensor:
        """``X^T X`` over all calibration rows (the layer-wise reconstruction Hessian, up to a factor 2)."""
        if self.gram is None:
            raise RuntimeError("InputStats was built without gram=True")
        return self.gram


class _GroupDone(Exception):
    """Raised by a hook once every layer of the group has seen its input: the rest of the forward is skipped."""


def _probe(
    model: nn.Module, layers: dict[str, nn.Module], inputs: Any
) -> tuple[list[list[str]], dict[str, int]]:
    """Groups of layers in call order (layers sharing one input tensor together) and calls per forward."""
    calls: dict[str, int] = {}
    first_input: dict[str, torch.Tensor] = {}
    order: list[str] = []

    def hook(name: str) -> Callable[..., None]:
        def record(module: nn.Module, args: tuple[Any, ...]) -> None:
            calls[name] = calls.get(name, 0) + 1
            if name not in first_input and args:
                first_input[name] = args[0]
                order.append(name)

        return record

    handles = [layer.register_forward_pre_hook(hook(name)) for name, layer in layers.items()]
    try:
        with torch.no_grad():
            call_model(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    groups: list[list[str]] = []
    for name in order:
        shared = [g for g in groups if first_input[g[0]] is first_input[name]]
        if shared:
            shared[0].append(name)
        else:
            groups.append([name])
    return groups, calls


def _collect(
    model: nn.Module, group: dict[str, nn.Module], calls: dict[str, int], batches: list[Any], gram: bool
) -> dict[str, InputStats]:
    """Run the batches with hooks on ``group``; each layer's input statistics (one pass, stopped early)."""
    stats = {
        name: InputStats(weight_matrix(layer).shape[1], gram=gram, device=layer.weight.device)
        for name, layer in group.items()
    }
    seen: dict[str, int] = {}
    # layers called on the same tensor (q/k/v) with the same geometry share its sums: computed once
    cache: list[tuple[torch.Tensor, Any, tuple[int, torch.Tensor, torch.Tensor | None]]] = []

    def hook(name: str, layer: nn.Module) -> Callable[..., None]:
        geometry = _geometry(layer)

        def record(module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            hit = [sums for tensor, key, sums in cache if tensor is x and key == geometry]
            if hit:
                sums = hit[0]
            else:
                sums = InputStats.sums(input_rows(layer, x), gram=gram)
                cache.append((x, geometry, sums))
            stats[name].add_sums(*sums)
            seen[name] = seen.get(name, 0) + 1
            if all(seen.get(n, 0) >= calls[n] for n in group):
                raise _GroupDone

        return record

    handles = [layer.register_forward_pre_hook(hook(name, layer)) for name, layer in group.items()]
    try:
        with torch.no_grad():
            for inputs in batches:
                seen.clear()
                cache.clear()
                with contextlib.suppress(_GroupDone):
                    call_model(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return stats


def _geometry(layer: nn.Module) -> tuple[Any, ...]:
    """What decides a layer's input rows besides the input: its type and convolution settings."""
    if isinstance(layer, nn.Linear):
        return ("linear",)
    return (type(layer).__name__, layer.kernel_size, layer.stride, layer.padding, layer.dilation)


PruneFn = Callable[[str, nn.Module, InputStats], dict[str, Any]]


def prune_layerwise(
    model: nn.Module, layers: dict[str, nn.Module], batches: list[Any], *, prune: PruneFn, gram: bool = False
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Prune ``layers`` one group at a time, each on inputs from the model already pruned upstream.

    ``prune(name, layer, stats)`` masks (and may update) one layer and returns its summary entry.
    Returns ``(entries by layer name, skipped layers with the reason)``. The mask hooks re-apply every
    mask before each forward, so upstream pruning is in force when later groups collect their inputs.

    Example:
        >>> done, skipped = prune_layerwise(model, layers, batches, prune=my_prune, gram=True)
    """
    skipped: dict[str, str] = {}
    usable = {}
    for name, layer in layers.items():
        reason = why_not_calibrated(layer)
        if reason is None:
            usable[name] = layer
        else:
            skipped[name] = reason
    done: dict[str, dict[str, Any]] = {}
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    batches = [move_inputs(inputs, device) for inputs in batches]
    with eval_mode(model):
        groups, calls = _probe(model, usable, batches[0])
        for name in usable:
            if name not in calls:
                skipped[name] = "never called as a module during calibration (its weight is used directly)"
        for group in groups:
            members = {name: usable[name] for name in group}
            stats = _collect(model, members, calls, batches, gram)
            for name, layer in members.items():
                done[name] = prune(name, layer, stats[name])
    return done, skipped


@torch.no_grad()
def sparsity_summary(
    model: nn.Module, pruned: dict[str, nn.Module], skipped: dict[str, str], **fields: Any
) -> dict[str, Any]:
    """The one-shot methods' summary: sparsity per pruned layer, skipped layers with the reason, totals.

    Example:
        >>> sparsity_summary(model, {"fc": model.fc}, {"conv": "..."}, method="n_m")["per_layer"]
        {'fc': 0.5}
    """
    for module in model.modules():
        enforce_masks(module)
    report = sparsity_report(model)
    selected = sum(layer.weight.numel() for layer in pruned.values())
    zeros = sum(int(layer.weight.numel() - torch.count_nonzero(layer.weight)) for layer in pruned.values())
    params = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    return {
        **fields,
        "per_layer": {name: report["per_layer"][name] for name in pruned},
        "skipped": dict(skipped),
        "global_sparsity": zeros / max(1, selected),
        "selected_params": selected,
        "zero_params": zeros,
        "params": params,
        "nonzero_params": nonzero,
        "model_sparsity": report["global"],
    }
