"""Prune more or keep int8 vs float, layer by layer, against the measured latency of the int8 ONNX Runtime graph.

``prune_to_target(target="latency", runtime="onnxruntime", quantize="joint" | "int8")`` runs the search of
:mod:`netcompress.pruning.latency_search` on an int8 cost model:

- the **width table** is measured on the int8 file: every candidate group at every width in the model with
  every layer int8 (static PTQ exported to ONNX, ONNX Runtime's ``QLinearConv``/``QGemm`` graph);
- the **precision table** (``"joint"``): the all-int8 model with one layer kept float, for every quantizable
  layer (what keeping it float adds, negative where int8 was slower), and the unpruned float model, the
  reference the requested reduction is measured against. Both are cost tables
  (:func:`~netcompress.pruning.latency_table.cost_table`): cached, keyed as those are;
- the **precision proxy** of each layer: its int8 sensitivity on the validation batches, only that layer
  int8: ``noise = 10 ** (-SQNR / 10)`` of the logits (their relative squared error), plus the top-1 drop
  with ``strategy="sensitivity"``. Losing all of a group's importance costs about its share of the
  importance proxy; a layer whose int8 logits are pure noise (0 dB) costs 1.

The predicted cost of widths ``w`` with layers ``F`` float is ``int8_table(w) + sum_{L in F} (delta_L + c) *
share_L(w)`` where ``share_L`` is the share of ``L``'s MACs its groups keep and ``c`` spreads the
difference between the all-float model and the sum of one-float-layer deltas (the quantize/dequantize
boundaries a float island pays) evenly, so that all-float at full width predicts the float model. Each
layer is one more move of the greedy search (``"int8:<layer>"``: float to int8): taken where it saves the
most time per proxy lost, never where it saves nothing (int8 slower); the end-to-end confirmations time
the int8 file of the candidate. ``"int8"`` quantizes every layer and searches widths only.

The search returns the float pruned model and ``summary["precision"]``: which layers are int8, which
float and why. :func:`quantize_plan` makes the int8 model of it (after any fine-tuning), checked against
PyTorch in ONNX Runtime.

Example:
    >>> small, summary = prune_to_target(model, x, target="latency", reduction=3.0, batch_size=64,
    ...                                  quantize="joint", loader=val_batches)
    >>> summary["precision"]["float"], summary["precision"]["reasons"]
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netcompress.core.errors import NetcompressError
from netcompress.core.inputs import call_model, output_tensor, split_batch
from netcompress.evaluation.metrics import top1_accuracy
from netcompress.pruning.latency_priors import interaction_terms, layer_weights, smooth_savings
from netcompress.pruning.latency_table import CostTable, MeasureSpec, cost_table, measure

PREFIX = "int8:"  # the search's precision moves: "int8:<layer>" at index 0 = float, above = int8
ALL_FLOAT = "<float model>"  # the precision table's entry for the unpruned float model
CALIB_BATCHES = 8  # calibration batches of the int8 models the search builds and returns


def int8_model(
    model: nn.Module, calib: Iterable[Any], float_layers: Iterable[str] = (), *, fast: bool = False
) -> nn.Module:
    """Static int8 PTQ of ``model`` with ``float_layers`` left float; ``fast``: min/max ranges on one batch
    (what a timing needs: the ranges do not change the graph).

    Example:
        >>> int8_model(model, [x], float_layers=["features.0"], fast=True)
    """
    from netcompress.quantization.ptq import quantize

    fields: dict[str, Any] = {"layers": {name: {"enabled": False} for name in float_layers}}
    if fast:
        fields.update(act_observer="minmax", num_calib_batches=1)
    return quantize(model, list(calib), mode="static", **fields)


def int8_layers(model: nn.Module, example_inputs: Any) -> list[str]:
    """The layers static PTQ quantizes (the precision choices), by name."""
    from netcompress.quantization.modules import quant_layers

    return list(quant_layers(int8_model(model, [example_inputs], fast=True)))


def precision_sensitivity(
    model: nn.Module, layers: Sequence[str], calib: Sequence[Any], batches: Sequence[Any], *, accuracy: bool
) -> dict[str, dict[str, float]]:
    """Per layer, with only that layer int8: SQNR (dB) of the outputs on ``batches``, the top-1 drop
    (``accuracy``) and the proxy, ``10 ** (-SQNR / 10)`` plus the drop (never below 0)."""
    model = model.eval()
    with torch.no_grad():
        reference = [output_tensor(call_model(model, split_batch(b)[0])).float() for b in batches]
    base = top1_accuracy(model, batches) if accuracy else None
    out = {}
    for name in layers:
        q = int8_model(model, calib, [n for n in layers if n != name]).eval()
        signal = noise = 0.0
        with torch.no_grad():
            for batch, ref in zip(batches, reference):
                got = output_tensor(call_model(q, split_batch(batch)[0])).float()
                signal, noise = signal + float(ref.pow(2).sum()), noise + float((got - ref).pow(2).sum())
        sqnr = 10 * math.log10(max(signal, 1e-30) / max(noise, 1e-30))
        row = {"sqnr_db": sqnr, "proxy": 10 ** (-sqnr / 10)}
        if base is not None:
            row["accuracy_drop"] = base - float(top1_accuracy(q, batches) or 0.0)
            row["proxy"] += max(row["accuracy_drop"], 0.0)
        out[name] = row
    return out


@dataclasses.dataclass
class JointTable:
    """The int8 cost model (see the module docstring); the search uses it as it uses a :class:`CostTable`."""

    widths_table: CostTable  # the all-int8 model with one group narrowed
    float_delta: dict[str, float]  # ms keeping each layer float adds to the all-int8 model
    float_ms: float  # the unpruned float model, in the same units: the reference (``base``)
    layer_groups: dict[str, tuple[str | None, str | None]]  # layer -> its input and output candidate groups
    precision_table: CostTable | None = None
    scale: float = 1.0

    def __post_init__(self) -> None:
        t = self.widths_table
        self.widths, self.pairs = t.widths, t.pairs
        self.correction = (self.float_ms - t.base - sum(self.float_delta.values())) / max(
            len(self.float_delta), 1
        )
        self.costs = dict(t.costs)
        self.kept = dict(t.kept)
        n = len(self.widths)
        for name in self.float_delta:  # one layer int8, the rest float: its own entry in the plot
            self.costs[PREFIX + name] = [self.float_ms] + [self.raw({PREFIX + name: 1})] * (n - 1)
            self.kept[PREFIX + name] = [32] + [8] * (n - 1)

    @property
    def base(self) -> float:
        return self.float_ms

    @property
    def tables(self) -> list[CostTable]:
        return [t for t in (self.widths_table, self.precision_table) if t is not None]

    def share(self, layer: str, widths: Mapping[str, int]) -> float:
        """Share of ``layer``'s MACs its input and output groups keep at width indices ``widths``."""
        share = 1.0
        for label in self.layer_groups.get(layer, (None, None)):
            if label is not None and widths.get(label):
                share *= 1.0 - self.widths_table.removed(label, widths[label])
        return share

    def raw(self, state: Mapping[str, int], *, layers_int8: bool = False) -> float:
        """Predicted cost before ``scale``; precision keys absent from ``state`` are float (int8 if
        ``layers_int8``: the widths-only entries)."""
        widths = {k: v for k, v in state.items() if not k.startswith(PREFIX)}
        cost = self.widths_table.predict(widths)
        for name, delta in self.float_delta.items():
            if not state.get(PREFIX + name, int(layers_int8)):
                cost += (delta + self.correction) * self.share(name, widths)
        return cost

    def predict(self, state: Mapping[str, int]) -> float:
        return self.base - self.scale * (self.base - self.raw(state))

    @property
    def path(self) -> list[str | None]:
        return [t.path for t in self.tables]

    @property
    def cached(self) -> bool:
        return all(t.cached for t in self.tables)

    @property
    def measured_s(self) -> float:
        return sum(t.measured_s for t in self.tables)


@dataclasses.dataclass
class JointVariants:
    """The float search's variants plus one precision choice per layer; ``build`` makes the int8 model."""

    widths: Any  # latency_search.Variants
    calib: list[Any]
    layers: list[str]  # precision choices ("joint"); none with "int8"
    n_widths: int

    def __post_init__(self) -> None:
        self.model, self.graph, self.labels = self.widths.model, self.widths.graph, self.widths.labels
        self.pruned = self.widths.pruned
        self.kept = {
            **self.widths.kept,
            **{PREFIX + n: [32] + [8] * (self.n_widths - 1) for n in self.layers},
        }

    def units(self, state: Mapping[str, int]) -> set[int]:
        return self.widths.units({k: v for k, v in state.items() if k in self.pruned})

    def float_layers(self, state: Mapping[str, int]) -> list[str]:
        return [n for n in self.layers if not state.get(PREFIX + n)]

    def build(self, state: Mapping[str, int]) -> nn.Module:
        small = self.widths.build({k: v for k, v in state.items() if k in self.pruned})
        return int8_model(small, self.calib, self.float_layers(state))


def _layer_groups(variants: Any, layers: Sequence[str]) -> dict[str, tuple[str | None, str | None]]:
    graph = variants.graph
    label_of = {
        graph.uf.find(u): label for label, gid in variants.labels.items() for u in graph.groups[gid].unit_ids
    }
    out = {}
    for name in layers:
        layer = graph.layers.get(name)
        if layer is not None:
            ends = (layer.in_labels, layer.out_labels)
            out[name] = tuple(label_of.get(graph.uf.find(lb[0])) if lb else None for lb in ends)
    return out  # type: ignore[return-value]


def _batches(source: Any, count: int) -> list[Any]:
    return [] if source is None else list(itertools.islice(iter(source), count))


@dataclasses.dataclass
class JointSearch:
    """What :func:`~netcompress.pruning.latency_search.search_measured_target` needs for ``quantize``."""

    mode: str
    table: JointTable
    variants: JointVariants
    proxy: dict[str, list[float]]
    priors: int
    sensitivity: dict[str, dict[str, float]]
    spec: MeasureSpec
    model: nn.Module
    example_inputs: Any
    proxy_source: str

    @classmethod
    def setup(
        cls, model: nn.Module, example_inputs: Any, variants: Any, proxy: Mapping[str, Sequence[float]],
        spec: MeasureSpec, config: Any, *, loader: Any = None, calib: Any = None,
    ) -> JointSearch:  # fmt: skip
        """Measure (or read) both tables and the precision proxy; ``proxy`` is the width proxy."""
        calib_batches = _batches(calib if calib is not None else loader, CALIB_BATCHES) or [example_inputs]
        one = [example_inputs]  # timing-only int8 models: ranges from the example (the graph is the same)
        layers = int8_layers(model, example_inputs)
        q_all = int8_model(model, one, fast=True)
        widths = cost_table(
            q_all, example_inputs, lambda label, i: int8_model(variants.variant(label, i), one, fast=True), spec,
            kept=variants.kept, widths=config.widths, cache_dir=config.cache_dir,
        )  # fmt: skip
        weights = layer_weights(model, example_inputs, spec.target)
        priors = smooth_savings(variants, widths, weights)
        widths.pairs = interaction_terms(variants, widths, weights)
        choices = layers if config.quantize == "joint" else []

        def precision_variant(name: str, index: int) -> nn.Module:
            return model if name == ALL_FLOAT else int8_model(model, one, [name], fast=True)

        ptable = cost_table(
            q_all, example_inputs, precision_variant, spec, kept={**{n: [8, 32] for n in choices}, ALL_FLOAT: [8, 32]},
            widths=[8.0, 32.0], cache_dir=config.cache_dir,
        )  # fmt: skip
        to_widths = widths.base / ptable.base  # both tables' base is the all-int8 model: one unit
        delta = {n: (ptable.costs[n][1] - ptable.base) * to_widths for n in choices}
        table = JointTable(widths, delta, ptable.costs[ALL_FLOAT][1] * to_widths,
                           _layer_groups(variants, layers), precision_table=ptable)  # fmt: skip
        val = _batches(loader, config.max_batches) or [example_inputs]
        sensitivity = precision_sensitivity(
            model,
            choices,
            calib_batches,
            val,
            accuracy=config.strategy == "sensitivity" and loader is not None,
        )
        n = len(config.widths)
        full = {
            **proxy,
            **{PREFIX + name: [0.0] + [row["proxy"]] * (n - 1) for name, row in sensitivity.items()},
        }
        return cls(config.quantize, table, JointVariants(variants, calib_batches, choices, n), full, priors,
                   sensitivity, spec, model, example_inputs,
                   "validation batches" if loader is not None else "example_inputs")  # fmt: skip

    def reasons(self, state: Mapping[str, int]) -> dict[str, str]:
        """Why each float layer stayed float."""
        out = {}
        for name in self.variants.float_layers(state):
            saving = self.table.float_delta[name] + self.table.correction
            if saving <= 0:
                out[name] = (f"int8 measured slower (or no faster) here: the int8 graph with this layer float is "
                             f"{-self.table.float_delta[name]:.4g} ms faster ({saving:.4g} ms after the boundary share)")  # fmt: skip
            else:
                out[name] = (f"the target was met without it: int8 would save {saving:.4g} ms for a proxy loss "
                             f"of {self.proxy[PREFIX + name][-1]:.3g}")  # fmt: skip
        return out

    def finish(self, summary: dict[str, Any], state: Mapping[str, int], values: Mapping[str, float],
               small: nn.Module) -> None:  # fmt: skip
        """Add ``precision`` (the plan) and the measured forms to ``summary``; tidy its rows and trajectory."""
        float_layers = self.variants.float_layers(state)
        summary["quantize"] = self.mode
        summary["precision"] = {
            "mode": self.mode, "int8": [n for n in int8_layers(small, self.example_inputs) if n not in float_layers],
            "float": float_layers, "reasons": self.reasons(state), "proxy_source": self.proxy_source,
            "layers": {n: {**row, "float_delta_ms": self.table.float_delta[n]} for n, row in self.sensitivity.items()},
            "boundary_ms": self.table.correction,
        }  # fmt: skip
        for row in summary["candidates"]:
            picked = row["widths"]
            row["widths"] = {k: v for k, v in picked.items() if not k.startswith(PREFIX)}
            row["int8_layers"] = sorted(k[len(PREFIX) :] for k in picked if k.startswith(PREFIX))
        for move in summary["trajectory"]:
            if (move["group"] or "").startswith(PREFIX):
                move["width"] = "int8"
        summary["cost_table"]["precision_path"] = self.table.path[-1]
        forms = {"onnxruntime_int8": {"unpruned_ms": values["unpruned"], "pruned_ms": values["candidate"],
                                      "reduction": values["unpruned"] / max(values["candidate"], 1e-12)}}  # fmt: skip
        try:  # the float pruned model in the same runtime: what quantizing added
            ms = measure({"unpruned": self.model, "candidate": small}, self.example_inputs, self.spec)
            forms["onnxruntime"] = {"unpruned_ms": ms["unpruned"], "pruned_ms": ms["candidate"],
                                    "reduction": ms["unpruned"] / max(ms["candidate"], 1e-12)}  # fmt: skip
        except NetcompressError as exc:
            forms["onnxruntime"] = {"error": str(exc)}
        summary["by_form"] = forms


def quantize_plan(
    model: nn.Module, summary: dict[str, Any], calib: Any, example_inputs: Any, *, check: bool = True
) -> nn.Module:
    """The int8 model of a pruned float ``model`` as ``summary["precision"]`` plans it (its float layers kept
    float), calibrated on up to :data:`CALIB_BATCHES` of ``calib`` (else ``example_inputs``); ``check``
    exports it to int8 ONNX and compares ONNX Runtime with PyTorch (``summary["precision"]["export_check"]``;
    a mismatch raises :class:`~netcompress.core.errors.ExportMismatchError`).

    Example:
        >>> small, summary = prune_to_target(model, x, target="latency", quantize="joint", reduction=3.0)
        >>> qmodel = quantize_plan(finetuned(small), summary, calib_loader, x)
    """
    from netcompress.export.onnx import export_onnx

    plan = summary["precision"]
    qmodel = int8_model(model, _batches(calib, CALIB_BATCHES) or [example_inputs], plan["float"])
    if check:
        with tempfile.TemporaryDirectory(prefix="nc-joint-") as folder:
            report = export_onnx(qmodel, Path(folder) / "int8.onnx", example_inputs, int8=True, check=True)
        plan["export_check"] = {**report["check"], "int8_ops": report["int8_op_counts"],
                                "size_bytes": report["size_bytes"]}  # fmt: skip
    return qmodel
