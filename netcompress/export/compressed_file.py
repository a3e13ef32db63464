"""``nc.save_compressed`` / ``nc.load_compressed``: a Deep-Compression file (Han et al., 2016).

One file holds a pruned, clustered and/or quantized model, each tensor coded the smallest exact way
(:mod:`netcompress.export.tensor_coding`): pruned positions as Huffman-coded relative gaps with
filler entries, cluster indices Huffman-coded against their codebook, quantized weights as integer
codes plus their layer's scales, everything else raw. Redundant tensors are not stored twice: a
clustered weight is rebuilt as ``codebook[indices]``, a pruning mask as ``weight != 0`` (each only when
that is exactly true when saving). The model's structure is the same pickle-free description
``nc.save`` writes (:mod:`netcompress.export.object_codec`).

Layout (:mod:`netcompress.export.compressed_container`): ``magic | version | sizes | table + structure
(one LZMA2 stream of JSON) | body | BLAKE2b``; the digest covers every byte before it, so a changed,
truncated or foreign file is a clear error. Files of formats 1 and 2 (zlib metadata) still load.

``dense_dtype="float16"`` is the one lossy option: the tensors stored raw (biases, BatchNorm, per-channel
scales: everything not pruned, clustered or quantized, other than codebooks and quantization
parameters) are rounded to float16, half their bytes; the file then reproduces exactly the model with
those tensors rounded (``round_dense_``), which the write-time check compares against.

Example:
    >>> summary = nc.save_compressed(model, "model.ncz", example_inputs=x)
    >>> summary["compression_ratio"], summary["parts"]
    >>> same = nc.load_compressed("model.ncz")   # in any process; outputs equal model's
"""

from __future__ import annotations

import copy
import json
import lzma
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netcompress.core.errors import CheckpointError, ConfigError
from netcompress.core.io import atomic_write_bytes
from netcompress.export.allowlist import TRUSTED_CLASS_ROOTS
from netcompress.export.compressed_container import FORMAT_FILTERS, MAGIC, meta_bytes, pack, unpack
from netcompress.export.model_file import _class_modules, _decode, _user_modules
from netcompress.export.object_codec import Encoder
from netcompress.export.tensor_coding import SegmentWriter, decode_tensor, encode_tensor

__all__ = ["MAGIC", "float32_bytes", "load_compressed", "round_dense_", "save_compressed"]
DENSE_DTYPES = {"float32": None, "float16": torch.float16}
_NOT_STATE = ("_mask", "weight_codebook", "weight_indices")  # bookkeeping, not part of a float model


def save_compressed(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    example_inputs: Any = None,
    allow_modules: tuple[str, ...] = (),
    dense_dtype: str = "float32",
) -> dict[str, Any]:
    """Write ``model`` as one Deep-Compression file; return sizes by part and the compression ratio.

    The summary's ``parts`` splits the bytes into ``header`` (fixed header, tensor table, digest),
    ``structure`` (the structure's JSON, compressed alone), ``positions``,
    ``indices``, ``codebooks`` (codebooks, fill values, Huffman tables) and ``dense`` (raw tensors);
    ``compression_ratio`` is the float32 state dict's bytes (masks, codebooks and indices left out)
    over the file's. Before writing, the bytes are decoded again and compared with ``model`` (every
    tensor; with ``example_inputs`` also the outputs, which must be equal): anything that would not
    come back is an error, never a file. Pruned and clustered weights come back bit for bit;
    a frozen quantized layer's weight comes back as its dequantized integer codes, whose fake-quantized
    value (what the layer computes with) is identical, so its outputs are too. ``allow_modules`` in the
    summary names the modules outside torch/netcompress whose classes the file holds (a transformers model's
    and its config's): pass them to :func:`load_compressed`, as with ``nc.save``.
    ``dense_dtype="float16"`` stores the raw tensors (biases, BatchNorm, per-channel scales; not
    codebooks or quantization parameters) rounded to float16; the file then holds, exactly, the model
    :func:`round_dense_` makes, and ``summary["rounded"]`` names those tensors.

    Example:
        >>> nc.save_compressed(model, "vgg.ncz")["compression_ratio"]
    """
    if dense_dtype not in DENSE_DTYPES:
        raise ConfigError(
            f"save_compressed: dense_dtype must be one of {sorted(DENSE_DTYPES)}, not {dense_dtype!r}"
        )
    encoder = Encoder()
    root = encoder.encode(model, "model")
    description = json.dumps({"root": root, "objects": encoder.objects}, separators=(",", ":"))
    derived = _derived_entries(model, encoder)
    exact = _referenced(derived)  # codebooks, scales, zero points: never rounded
    writer = SegmentWriter()
    table: dict[str, Any] = {}
    for key, tensor in encoder.tensors.items():
        if key in derived:
            table[key] = derived[key]
        else:
            small = None if key in exact else DENSE_DTYPES[dense_dtype]
            table[key] = encode_tensor(tensor, writer, raw_dtype=small)
    for entry in derived.values():
        if entry["enc"] == "dequant":
            entry["q"] = encode_tensor(entry.pop("codes"), writer)
    data = pack(table, description, bytes(writer.body))
    # as nc.save: the write-time check may import the modules of every class written (the model's, its
    # config's: a transformers model's config class is no nn.Module); the summary names them for the load
    needed = tuple(sorted(_class_modules(encoder.objects)))
    rebuilt = _rebuild(data, "the file being written", allow_modules + _user_modules(model) + needed)
    keys = encoder._tensor_keys
    requantized = {k for k, e in derived.items() if e["enc"] == "dequant"}
    state = model.state_dict(keep_vars=True)
    skip = {n for n, t in state.items() if keys.get(id(t)) in requantized}
    names = sorted(n for n, t in state.items() if "stored" in table.get(keys.get(id(t), ""), {}))
    reference = model
    if names:  # dense_dtype rounded these: the file must hold exactly the rounded model
        reference = round_dense_(copy.deepcopy(model), names, DENSE_DTYPES[dense_dtype])
    _check_same(reference, rebuilt, example_inputs, skip_names=skip)
    written = atomic_write_bytes(path, data)
    parts = dict(writer.parts)
    meta = meta_bytes(data)
    alone = len(lzma.compress(description.encode("utf-8"), format=lzma.FORMAT_RAW, filters=FORMAT_FILTERS))
    parts["structure"] = min(alone, meta)
    parts["header"] = meta - parts["structure"]
    baseline = float32_bytes(model)
    return {
        "path": str(written),
        "size_bytes": len(data),
        "parts": parts,
        "float32_bytes": baseline,
        "compression_ratio": baseline / len(data),
        "tensors": len(table),
        "encodings": _encoding_counts(table),
        "allow_modules": sorted({m for m in needed if not m.startswith(TRUSTED_CLASS_ROOTS)}),
        "dense_dtype": dense_dtype,
        "rounded": names,
    }


def load_compressed(path: str | os.PathLike, *, allow_modules: tuple[str, ...] | list[str] = ()) -> nn.Module:
    """Rebuild the model :func:`save_compressed` wrote, in eval mode, without pickle.

    A missing, foreign, truncated or altered file, or one of another format version, is a
    :class:`CheckpointError` naming the file and the problem.

    Example:
        >>> model = nc.load_compressed("vgg.ncz")
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"compressed model not found: {path}")
    return _rebuild(path.read_bytes(), str(path), tuple(allow_modules)).eval()


def float32_bytes(model: nn.Module) -> int:
    """Bytes of ``model``'s state dict with every floating tensor as float32 (the dense baseline).

    Example:
        >>> float32_bytes(nn.Linear(10, 2))
        88
    """
    total = 0
    for name, tensor in model.state_dict().items():
        if name.endswith(_NOT_STATE):
            continue
        total += tensor.numel() * (4 if tensor.is_floating_point() else tensor.element_size())
    return total


def _derived_entries(model: nn.Module, encoder: Encoder) -> dict[str, dict[str, Any]]:
    """Tensors rebuilt from others instead of stored: clustered weights, masks, quantized weights."""
    from netcompress.clustering.weight_sharing import CODEBOOK, INDICES

    keys = encoder._tensor_keys  # id(tensor) -> key, filled by encode()
    derived: dict[str, dict[str, Any]] = {}
    with torch.no_grad():
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if not isinstance(weight, torch.Tensor) or id(weight) not in keys:
                continue
            wkey = keys[id(weight)]
            codebook, indices = module._buffers.get(CODEBOOK), module._buffers.get(INDICES)
            stored = codebook is not None and indices is not None and id(codebook) in keys
            if stored and id(indices) in keys and _is_gather(weight, codebook, indices):
                derived[wkey] = {
                    "enc": "gather",
                    "codebook": keys[id(codebook)],
                    "indices": keys[id(indices)],
                }
            mask = module._buffers.get("weight_mask")
            if mask is not None and id(mask) in keys and torch.equal(mask.bool(), weight != 0):
                derived[keys[id(mask)]] = {"enc": "nonzero", "source": wkey, "dtype": str(mask.dtype)[6:]}
        for module in model.modules():
            entry = _quantized_entry(module, keys)
            if entry is not None and entry["weight"] not in derived:
                derived[entry.pop("weight")] = entry
    return derived


def _is_gather(weight: torch.Tensor, codebook: torch.Tensor, indices: torch.Tensor) -> bool:
    rebuilt = codebook[indices.long()]
    return rebuilt.shape == weight.shape and rebuilt.dtype == weight.dtype and torch.equal(rebuilt, weight)


def _quantized_entry(module: nn.Module, keys: dict[int, str]) -> dict[str, Any] | None:
    """A frozen fake-quantized layer's weight as integer codes + its quantizer's scale/zero point."""
    from netcompress.quantization.affine import dequantize_tensor, quantize_tensor
    from netcompress.quantization.fake_quant import FakeQuantize

    fq, layer = getattr(module, "weight_fq", None), getattr(module, "layer", None)
    if not isinstance(fq, FakeQuantize) or fq.dynamic or fq.observing or not fq.quantizing:
        return None
    weight = getattr(layer, "weight", None)
    if not isinstance(weight, torch.Tensor) or id(weight) not in keys:
        return None
    if id(fq.scale) not in keys or id(fq.zero_point) not in keys:
        return None
    scale, zero_point = fq.scale.detach(), fq.zero_point.detach()
    codes = quantize_tensor(weight.detach(), scale, zero_point, fq.spec)
    rebuilt = dequantize_tensor(codes, scale, zero_point, fq.spec).to(weight.dtype)
    if not torch.equal(fq(rebuilt), fq(weight.detach())):
        return None  # the codes would not reproduce what the layer computes with: store the float
    small = codes.to(torch.int16) if fq.spec.bits <= 15 else codes
    return {
        "enc": "dequant",
        "weight": keys[id(weight)],
        "codes": small,
        "scale": keys[id(fq.scale)],
        "zero_point": keys[id(fq.zero_point)],
        "granularity": fq.spec.granularity,
        "axis": fq.spec.axis,
        "dtype": str(weight.dtype)[6:],
    }


def _rebuild(data: bytes, where: str, allow_modules: tuple[str, ...]) -> nn.Module:
    table, description, body = unpack(data, where)
    try:
        tensors = _decode_tensors(table, body)
    except CheckpointError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError, AttributeError) as exc:
        raise CheckpointError(f"{where}: a tensor cannot be decoded: {type(exc).__name__}: {exc}") from None
    return _decode(description, tensors, allow_modules=allow_modules, where=where)


def _decode_tensors(table: dict[str, Any], body: bytes) -> dict[str, torch.Tensor]:
    from netcompress.quantization.affine import dequantize_tensor
    from netcompress.quantization.qparams import QuantSpec

    out: dict[str, torch.Tensor] = {}

    def get(key: str, stack: tuple[str, ...] = ()) -> torch.Tensor:
        if key in out:
            return out[key]
        if key not in table or key in stack:
            raise CheckpointError(f"tensor {key!r} is missing or defined through itself")
        entry, inner = table[key], (*stack, key)
        if entry["enc"] == "coded":
            value = decode_tensor(entry, body)
        elif entry["enc"] == "gather":
            value = get(entry["codebook"], inner)[get(entry["indices"], inner).long()].contiguous()
        elif entry["enc"] == "nonzero":
            value = (get(entry["source"], inner) != 0).to(getattr(torch, entry["dtype"]))
        elif entry["enc"] == "dequant":
            spec = QuantSpec(granularity=entry["granularity"], axis=int(entry["axis"]))
            codes = decode_tensor(entry["q"], body).to(torch.int32)
            value = dequantize_tensor(
                codes, get(entry["scale"], inner), get(entry["zero_point"], inner), spec
            )
            value = value.to(getattr(torch, entry["dtype"])).contiguous()
        else:
            raise CheckpointError(f"tensor {key!r} has unknown encoding {entry['enc']!r}")
        out[key] = value
        return value

    for key in table:
        get(key)
    return out


def _encoding_counts(table: dict[str, Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for entry in table.values():
        kind = entry["enc"]
        if kind == "coded":
            kind = "raw" if "raw" in entry else "sparse" if "fill" in entry else "codebook"
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def round_dense_(model: nn.Module, names: list[str], dtype: torch.dtype = torch.float16) -> nn.Module:
    """Round ``model``'s state tensors ``names`` to ``dtype`` and back IN PLACE; return ``model``.

    ``save_compressed(dense_dtype="float16")`` stores its raw tensors so (``summary["rounded"]``):
    this gives the float model the file reproduces, e.g. to evaluate it before loading.

    Example:
        >>> summary = nc.save_compressed(model, "m.ncz", dense_dtype="float16")
        >>> round_dense_(model, summary["rounded"])   # model now equals nc.load_compressed("m.ncz")
    """
    state = model.state_dict(keep_vars=True)
    missing = [n for n in names if n not in state]
    if missing:
        raise ConfigError(f"round_dense_: the model has no state tensors {missing}")
    with torch.no_grad():
        for name in names:
            tensor = state[name]
            if tensor.is_floating_point():
                tensor.copy_(tensor.to(dtype).to(tensor.dtype))
    return model


def _referenced(derived: dict[str, dict[str, Any]]) -> set[str]:
    """Tensors that define other tensors (codebooks, quantization scales and zero points)."""
    fields = ("codebook", "scale", "zero_point")
    return {entry[f] for entry in derived.values() for f in fields if f in entry}


def _check_same(model: nn.Module, rebuilt: nn.Module, example_inputs: Any, *, skip_names: set[str]) -> None:
    from netcompress.core.inputs import call_model, output_tensor
    from netcompress.evaluation.harness import eval_mode

    a, b = model.state_dict(keep_vars=True), rebuilt.state_dict(keep_vars=True)
    requantized = skip_names  # compared through the outputs
    if set(a) != set(b) or any(not torch.equal(a[k], b[k]) for k in a if k not in requantized):
        raise ConfigError(
            "save_compressed: the model did not come back the same from the file; nothing was written"
        )
    if example_inputs is None:
        return
    with torch.no_grad(), eval_mode(model), eval_mode(rebuilt):
        out_a = output_tensor(call_model(model, example_inputs))
        out_b = output_tensor(call_model(rebuilt, example_inputs))
    if not torch.equal(out_a, out_b):
        raise ConfigError("save_compressed: the rebuilt model computes other outputs; nothing was written")
