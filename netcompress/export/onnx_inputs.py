"""How ONNX export and ONNX Runtime see a model's inputs and outputs.

A model may take one tensor, a tuple of tensors (positional) or a dict (keyword arguments, e.g.
``input_ids`` and ``attention_mask``), and may return a tensor, a tuple or a Hugging Face
``ModelOutput``. Export calls it through :class:`ExportCall` (positional tensors in, a tuple of
tensors out) so every input gets an ONNX name (the dict's keys, ``input`` for one tensor,
``input_0, input_1, ...`` for a tuple) and its own dtype (int64 token ids stay int64).

Dynamic axes: dim 0 of every input and output is ``batch``; dim 1 of a 2-D integer input (token
ids, masks) is ``sequence``, and so is dim 1 of an output with 3+ dims as long as that sequence.

Example:
    >>> spec = input_spec({"input_ids": ids, "attention_mask": mask})
    >>> spec.names, infer_dynamic_axes(spec, ["output"], [torch.zeros(2, 16, 32)])["output"]
    (['input_ids', 'attention_mask'], {0: 'batch', 1: 'sequence'})
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from netcompress.core.errors import ConfigError, UnsupportedModelError
from netcompress.core.inputs import check_inputs, output_tensor

# ONNX Runtime's input type strings -> the numpy dtype fed to them
ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


@dataclasses.dataclass
class InputSpec:
    """The form of a model's inputs (``tensor``, ``tuple`` or ``dict``), their names and tensors."""

    form: str
    names: list[str]
    tensors: list[torch.Tensor]

    def rebuild(self, tensors: Sequence[torch.Tensor]) -> Any:
        """``tensors`` (in :attr:`names` order) back in this form, ready for ``call_model``."""
        if self.form == "tensor":
            return tensors[0]
        if self.form == "dict":
            return dict(zip(self.names, tensors))
        return tuple(tensors)


def input_spec(example_inputs: Any, input_names: Sequence[str] | None = None) -> InputSpec:
    """Names and tensors of ``example_inputs`` (a tensor, a tuple, or a dict whose keys name them)."""
    inputs = check_inputs(example_inputs)
    if isinstance(inputs, torch.Tensor):
        form, default, tensors = "tensor", ["input"], [inputs]
    elif isinstance(inputs, Mapping):
        if input_names is not None and list(input_names) != list(inputs):
            raise ConfigError("input_names: a dict's keys name its inputs; leave input_names unset")
        form, default, tensors = "dict", list(inputs), list(inputs.values())
    else:
        form, default, tensors = "tuple", [f"input_{i}" for i in range(len(inputs))], list(inputs)
    names = list(input_names) if input_names is not None else default
    if len(names) != len(tensors) or len(set(names)) != len(names):
        raise ConfigError(f"input_names {names} must name each of the {len(tensors)} inputs once")
    return InputSpec(form, names, tensors)


def select_outputs(output: Any, output_names: Sequence[str] | None) -> tuple[torch.Tensor, ...]:
    """The tensors exported: the main one (:func:`output_tensor`) or the named fields/items."""
    if output_names is None:
        return (output_tensor(output),)
    if isinstance(output, torch.Tensor):
        output = (output,)
    if isinstance(output, (tuple, list)) and not hasattr(output, "keys"):
        if len(output) != len(output_names):
            raise ConfigError(
                f"output_names {list(output_names)} name {len(output_names)} outputs; the model returns {len(output)}"
            )
        return tuple(output_tensor(o) for o in output)
    picked = []
    for name in output_names:
        value = output.get(name) if isinstance(output, Mapping) else getattr(output, name, None)
        if not isinstance(value, torch.Tensor):
            raise ConfigError(f"output_names: the model's {type(output).__name__} has no tensor {name!r}")
        picked.append(value)
    return tuple(picked)


class ExportCall(nn.Module):
    """``model`` called with positional tensors in ``spec`` order, returning a tuple of tensors."""

    def __init__(self, model: nn.Module, spec: InputSpec, output_names: Sequence[str] | None) -> None:
        super().__init__()
        self.model = model
        self.spec = spec
        self.output_names = None if output_names is None else list(output_names)

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        inputs = self.spec.rebuild(tensors)
        if isinstance(inputs, dict):
            out = self.model(**inputs)
        elif isinstance(inputs, tuple):
            out = self.model(*inputs)
        else:
            out = self.model(inputs)
        return select_outputs(out, self.output_names)


def _sequence_groups(spec: InputSpec) -> dict[tuple[bool, int], str]:
    """A label per (decoder?, length) of the 2-D integer inputs: ``sequence`` for the first encoder length,
    ``decoder_sequence`` for the first ``decoder_*`` length, ``<label>_<input name>`` for another length.

    Token ids of an encoder-decoder (``input_ids`` 9 long, ``decoder_input_ids`` 5 long) must not share
    one symbolic dim: ONNX Runtime takes equal names for equal sizes and fails on the example.
    """
    groups: dict[tuple[bool, int], str] = {}
    for name, tensor in zip(spec.names, spec.tensors):
        if tensor.dim() == 2 and not tensor.is_floating_point():
            key = (name.startswith("decoder"), int(tensor.shape[1]))
            if key not in groups:
                base = "decoder_sequence" if key[0] else "sequence"
                groups[key] = base if base not in groups.values() else f"{base}_{name}"
    return groups


def infer_dynamic_axes(
    spec: InputSpec,
    output_names: Sequence[str],
    outputs: Sequence[torch.Tensor],
    *,
    dynamic_batch: bool = True,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
) -> dict[str, dict[int, str]]:
    """``{name: {dim: label}}`` for ``torch.onnx.export`` (see the module docstring).

    ``dynamic_axes`` given by the user replaces the inference (``batch`` is still added to dim 0
    when ``dynamic_batch``); a name that is neither an input nor an output is an error.
    """
    known = [*spec.names, *output_names]
    axes: dict[str, dict[int, str]] = {}
    if dynamic_axes is not None:
        unknown = sorted(set(dynamic_axes) - set(known))
        if unknown:
            raise ConfigError(f"dynamic_axes names {unknown}, which are not among inputs/outputs {known}")
        axes = {name: {int(d): str(lb) for d, lb in dims.items()} for name, dims in dynamic_axes.items()}
    else:
        groups = _sequence_groups(spec)
        for name, tensor in zip(spec.names, spec.tensors):
            if tensor.dim() == 2 and not tensor.is_floating_point():
                axes[name] = {1: groups[(name.startswith("decoder"), int(tensor.shape[1]))]}
        encoder_first = {}  # length -> label: a float mask follows the encoder's ids, an output the decoder's
        decoder_first = {}
        for (decoder, length), label in groups.items():
            (decoder_first if decoder else encoder_first)[length] = label
        encoder_first, decoder_first = {**decoder_first, **encoder_first}, {**encoder_first, **decoder_first}
        for name, tensor in zip(spec.names, spec.tensors):  # a float mask as long as the token ids
            if name not in axes and tensor.dim() >= 2 and int(tensor.shape[1]) in encoder_first:
                axes[name] = {1: encoder_first[int(tensor.shape[1])]}
        for name, out in zip(output_names, outputs):
            if out.dim() >= 3 and int(out.shape[1]) in decoder_first:
                axes[name] = {1: decoder_first[int(out.shape[1])]}
    if dynamic_batch:
        # dim 0 of the first input is the batch; a tensor whose dim 0 differs (a graph's (2, edges) edge_index,
        # one row per graph out of a node batch) keeps that dim fixed rather than tying it to the batch
        batch = next((int(t.shape[0]) for t in spec.tensors if t.dim() >= 1), None)
        for name, tensor in [*zip(spec.names, spec.tensors), *zip(output_names, outputs)]:
            if tensor.dim() >= 1 and int(tensor.shape[0]) == batch:
                axes.setdefault(name, {}).setdefault(0, "batch")
    return {name: dict(sorted(dims.items())) for name, dims in axes.items() if dims}


def check_input_sets(
    spec: InputSpec, axes: Mapping[str, Mapping[int, str]], batch_size: int, seed: int = 0
) -> list[tuple[str, list[torch.Tensor]]]:
    """The input sets a check runs: the example, a random batch, and a shorter sequence.

    The random batch (when ``batch_size`` > 0 and dim 0 is dynamic) draws float inputs from a
    normal distribution, token ids / category indices uniformly between the example's smallest and largest
    value at each position (a column of categories keeps its cardinality), and
    other integer inputs (masks) as rows of the example. The shorter sequence (when an input has
    a dynamic dim other than 0) cuts the example to half its length along those dims.
    """
    gen = torch.Generator().manual_seed(seed)
    sets: list[tuple[str, list[torch.Tensor]]] = [("example", list(spec.tensors))]
    batched = all(0 in axes.get(n, {}) for n, t in zip(spec.names, spec.tensors) if t.dim())
    if batch_size > 0 and batched:
        row_gen = torch.Generator().manual_seed(seed + 1)
        batch = []
        for t in spec.tensors:
            if t.is_floating_point():
                batch.append(torch.randn((batch_size, *t.shape[1:]), generator=gen).to(t.dtype))
            elif t.dtype != torch.bool and t.numel() and int(t.max()) > 1:
                # each position within its own range: columns of categories each have their own cardinality
                lo, hi = t.amin(0, keepdim=True).double(), t.amax(0, keepdim=True).double()
                u = torch.rand((batch_size, *t.shape[1:]), generator=gen, dtype=torch.float64)
                batch.append((lo + (u * (hi - lo + 1)).floor().clamp(max=hi - lo)).to(t.dtype))
            else:
                batch.append(t[torch.randint(0, t.shape[0], (batch_size,), generator=row_gen)])
        sets.append((f"random batch of {batch_size}", batch))
    cut = []
    for name, t in zip(spec.names, spec.tensors):
        for dim in (d for d in axes.get(name, {}) if d > 0 and d < t.dim() and t.shape[d] >= 2):
            t = t.narrow(dim, 0, t.shape[dim] // 2)
        cut.append(t)
    if any(c.shape != t.shape for c, t in zip(cut, spec.tensors)):
        sets.append(("shorter sequence", cut))
    return sets


def ort_feed(session: Any, names: Sequence[str], tensors: Sequence[torch.Tensor]) -> dict[str, np.ndarray]:
    """``{input name: array}`` for ``session.run``, each in the dtype the file declares.

    Inputs the exported graph does not use (and so dropped) are left out.
    """
    declared = {i.name: i.type for i in session.get_inputs()}
    feed = {}
    for name, tensor in zip(names, tensors):
        if name not in declared:
            continue
        dtype = ORT_DTYPES.get(declared[name])
        if dtype is None:
            raise ConfigError(f"ONNX input {name!r} has type {declared[name]}, which netcompress cannot feed")
        feed[name] = np.ascontiguousarray(tensor.detach().cpu().numpy(), dtype=dtype)
    return feed


def run_on_inputs(
    session: Any, names: Sequence[str], tensors: Sequence[torch.Tensor], path: Any, label: str
) -> list:
    """``session.run`` on ``tensors``; a failure of ONNX Runtime itself is an UnsupportedModelError.

    A graph that runs on the example but fails on another input set (a random batch, a shorter
    sequence) was traced through Python branches on the example's shapes (e.g. Funnel's pooling):
    the message names the input set and the failing node, and says to export at fixed shapes.
    """
    try:
        return session.run(None, ort_feed(session, names, tensors))
    except Exception as exc:  # onnxruntime's own exception classes live in its pybind module
        if "onnxruntime" not in type(exc).__module__:
            raise
        first = " ".join(str(exc).split())[:300]
        if label == "example" and (wrong := _wrong_node(str(exc))) is not None:
            raise UnsupportedModelError(f"{path}: {wrong}") from exc
        fixed = {
            "example": "",
            "shorter sequence": "dynamic_axes with the batch dim only (e.g. {'input_ids': {0: 'batch'}} per input)",
        }.get(label, "dynamic_batch=False")
        hint = f"; the traced graph holds the example's shapes (the forward branches on them): export with {fixed}"
        hint = hint if fixed else ""
        raise UnsupportedModelError(f"{path}: ONNX Runtime fails on the {label}: {first}{hint}") from exc


_NODE = re.compile(r"running (\w+) node\. Name:'([^']*)'")
_SHAPES = re.compile(r"(Input shape:\{[^}]*\}, requested shape:\{[^}]*\}|broadcast an axis by a dimension other than 1\. \d+ by \d+)")


def _wrong_node(message: str) -> str | None:
    """What ONNX Runtime failing on the very example the exporter traced means (the PyTorch model ran it): a node
    the exporter wrote with a shape that does not fit (Cohere: a ``view(*shape, -1, head_dim)`` written as a fixed
    ``Reshape`` to the key/value head count). Named by node, op and module scope instead of the runtime's text."""
    node = _NODE.search(message)
    if node is None:
        return None
    op, name = node.groups()
    parts = name.strip("/").split("/")[:-1]
    parts = parts[1:] if parts[:1] == ["model"] else parts  # ExportCall holds the user's model as ``model``
    scope = ".".join(parts) or "the top level"
    shapes = _SHAPES.search(message)
    what = f" ({shapes.group(1)})" if shapes else ""
    return (
        f"the exported graph is wrong at its {op} node {name!r} (module scope {scope!r}): ONNX Runtime cannot run "
        f"it on the example the graph was traced from{what}, which the PyTorch model runs; torch's ONNX exporter "
        f"wrote a shape there that does not fit the tensor it receives, so this forward cannot be exported as is "
        f"(keep the {op} of that module out of the exported forward, e.g. export a part of the model)"
    )


def mask_padding(
    names: Sequence[str],
    tensors: Sequence[torch.Tensor],
    reference: Sequence[torch.Tensor],
    candidate: Sequence[torch.Tensor],
) -> tuple[list[torch.Tensor], list[torch.Tensor], int]:
    """Both output lists with padding positions zeroed, and how many positions that was.

    With an input named ``attention_mask`` (2-D), every output whose first two dims are the mask's
    (batch, sequence) is multiplied by it: the model's result at a padding position is never used
    (pooling and attention mask it out), so a check compares real tokens only. Other outputs
    (pooled embeddings, logits) pass unchanged.

    Example:
        >>> ref, got, n = mask_padding(["input_ids", "attention_mask"], [ids, mask], [h], [h_ort])
    """
    if "attention_mask" not in names:
        return list(reference), list(candidate), 0
    mask = tensors[list(names).index("attention_mask")]
    if mask.dim() != 2:
        return list(reference), list(candidate), 0
    masked, count = ([], []), 0
    for ref, got in zip(reference, candidate):
        if ref.dim() >= 2 and tuple(ref.shape[:2]) == tuple(mask.shape) and ref.shape == got.shape:
            keep = (mask != 0).reshape(*mask.shape, *[1] * (ref.dim() - 2))
            ref, got = torch.where(keep, ref, 0.0), torch.where(keep, got, 0.0)  # NaN at padding too
            count += int((mask == 0).sum())
        masked[0].append(ref)
        masked[1].append(got)
    return masked[0], masked[1], count


def axes_the_model_takes(
    call: Any, spec: InputSpec, axes: dict[str, dict[int, str]]
) -> dict[str, dict[int, str]]:
    """``axes`` less the inferred ones beyond dim 0 when the model fails on the example cut along them.

    A 2-D integer input is read as token ids with a sequence axis; columns of categories (rtdl's FT-Transformer:
    one column per categorical feature) are no sequence, and the graph must keep their count fixed.
    """
    cut = [tensors for label, tensors in check_input_sets(spec, axes, 0) if label == "shorter sequence"]
    if not cut:
        return axes
    try:
        with torch.no_grad():
            call(*cut[0])
        return axes
    except Exception:  # noqa: BLE001 - whatever the model raises, the cut input is not one it takes
        return {name: {0: dims[0]} for name, dims in axes.items() if 0 in dims}

