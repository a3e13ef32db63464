"""``nc.save`` / ``nc.load``: a compressed model in one file, without pickle.

The file is a safetensors file: the tensors, plus in its metadata the model as data (every module,
its attributes and hooks, a quantized model's graph; see :mod:`netcompress.export.object_codec`), a
format version and a BLAKE2b checksum over both. Loading runs no code from the file: classes come only
from ``torch.nn``, ``netcompress`` and the modules the caller allows, so a pruned, quantized, clustered
or factorised model reloads in a fresh process exactly as it was saved.

Example:
    >>> small = nc.prune_channels(model, x, ratio=0.5)
    >>> nc.save(small, "small.nc")
    >>> same = nc.load("small.nc")
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import zlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netcompress.core.errors import CheckpointError, ConfigError
from netcompress.core.io import atomic_write_bytes
from netcompress.export.allowlist import TRUSTED_CLASS_ROOTS
from netcompress.export.object_codec import Decoder, Encoder

FORMAT = "netcompress.model"
VERSION = 1


def save(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    example_inputs: Any = None,
    allow_modules: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Write ``model`` to ``path`` (architecture as data + safetensors weights); returns a summary.

    Before writing, the file's content is decoded again in memory and compared with ``model`` (every
    tensor, and the outputs on ``example_inputs`` when given): a model that would not come back exactly
    is an error, never a file. A parametrized weight (``weight_norm``: wav2vec 2.0's positional conv) is
    written as the weight it computes; the summary's ``parametrizations_removed`` names it. Classes of your own module load back with ``nc.load(path,
    allow_modules=["mymodel"])``; ``allow_modules`` here only checks that they will.

    Example:
        >>> nc.save(small, "small.nc", example_inputs=torch.randn(1, 3, 32, 32))["size_bytes"]
    """
    from safetensors.torch import save as to_bytes

    original = model
    model, removed = _without_parametrizations(model)
    encoder = Encoder()
    root = encoder.encode(model, "model")
    description = json.dumps({"root": root, "objects": encoder.objects}, separators=(",", ":"))
    tensors = encoder.tensors
    # the file needs at load exactly the modules of the classes written (the model's, its config's, ...)
    needed = tuple(sorted(_class_modules(encoder.objects)))
    rebuilt = _decode(description, tensors, allow_modules=allow_modules + needed, where="model")
    _check_same(model, rebuilt, example_inputs, reference=original)
    metadata = {
        "format": FORMAT,
        "version": str(VERSION),
        "model": base64.b64encode(zlib.compress(description.encode("utf-8"), 9)).decode("ascii"),
        "blake2b": _checksum(description, tensors),
    }
    data = to_bytes(tensors, metadata=metadata)
    written = atomic_write_bytes(path, data)
    outside = sorted({m for m in needed if not m.startswith(TRUSTED_CLASS_ROOTS)})
    summary = {
        "path": str(written),
        "size_bytes": len(data),
        "tensors": len(tensors),
        "allow_modules": outside,
    }
    return {**summary, "parametrizations_removed": removed} if removed else summary


def _without_parametrizations(model: nn.Module) -> tuple[nn.Module, dict[str, list[str]]]:
    """``model``, or a copy whose parametrized weights are plain tensors holding the value they compute.

    ``torch.nn.utils.parametrize`` makes a class at run time (``ParametrizedConv1d``) that a file cannot
    name, and ``weight_norm`` adds a state-dict hook for old checkpoints: both go, the outputs stay.
    """
    from torch.nn.utils.parametrize import is_parametrized

    names = [n for n, m in model.named_modules() if is_parametrized(m)]
    if not names:
        return model, {}
    model, removed = copy.deepcopy(model), {}
    for name in names:
        module = model.get_submodule(name)
        removed[name] = sorted(module.parametrizations)
        # not parametrize.remove_parametrizations: it deletes the property from the class the caller's
        # model shares with this copy
        with torch.no_grad():
            values = {a: getattr(module, a).detach().clone() for a in removed[name]}
        del module._modules["parametrizations"]
        module.__class__ = type(module).__bases__[0]
        for attr, value in values.items():
            module.register_parameter(attr, nn.Parameter(value))
        hooks = module._load_state_dict_pre_hooks
        for key in [k for k, h in hooks.items() if "_weight_norm_compat_hook" in repr(getattr(h, "hook", h))]:
            del hooks[key]
    return model, removed


def load(path: str | os.PathLike, *, allow_modules: tuple[str, ...] | list[str] = ()) -> nn.Module:
    """Rebuild the model ``nc.save`` wrote, in eval mode; an error names a damaged or foreign file.

    Example:
        >>> model = nc.load("small.nc")
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"saved model not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 - safe_open has no items()
    except Exception as exc:  # safetensors raises its own types for a bad file
        raise CheckpointError(
            f"{path} is not a readable netcompress model file: {type(exc).__name__}: {exc}"
        ) from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a netcompress model file (use nc.save to write one)")
    if metadata.get("version") != str(VERSION):
        raise CheckpointError(
            f"{path} has model-file version {metadata.get('version')}; this netcompress reads {VERSION}"
        )
    try:
        description = zlib.decompress(base64.b64decode(metadata.get("model", ""), validate=True)).decode(
            "utf-8"
        )
    except (ValueError, zlib.error) as exc:
        raise CheckpointError(f"{path}: the model description is damaged: {exc}") from None
    if metadata.get("blake2b") != _checksum(description, tensors):
        raise CheckpointError(
            f"{path}: checksum mismatch, the file was changed or damaged after it was written"
        )
    model = _decode(description, tensors, allow_modules=tuple(allow_modules), where=str(path))
    return model.eval()


def _decode(
    description: str, tensors: dict[str, torch.Tensor], *, allow_modules: tuple[str, ...], where: str
) -> nn.Module:
    try:
        data = json.loads(description)
        decoder = Decoder(data["objects"], tensors, allow_modules=allow_modules)
        model = decoder.decode(data["root"])
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"{where}: cannot rebuild the model: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise CheckpointError(f"{where} does not describe a model")
    return model


def _checksum(description: str, tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.blake2b(description.encode("utf-8"), digest_size=16)
    for key in sorted(tensors):
        tensor = tensors[key].contiguous()
        digest.update(key.encode())
        digest.update(str(tensor.dtype).encode() + str(list(tensor.shape)).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _user_modules(model: nn.Module) -> tuple[str, ...]:
    return tuple({type(m).__module__ for m in model.modules()})


_CLASS_KEYS = ("class", "__class__", "__enum__", "__namedtuple__")


def _class_modules(value: Any) -> set[str]:
    """The modules of the classes an encoded model refers to (what ``load`` must be allowed to import)."""
    found: set[str] = set()
    if isinstance(value, list):
        for v in value:
            found |= _class_modules(v)
    elif isinstance(value, dict):
        for k, v in value.items():
            if k in _CLASS_KEYS and isinstance(v, str):
                found.add(v.rpartition(":")[0])
            else:
                found |= _class_modules(v)
    return found


def _check_same(model: nn.Module, rebuilt: nn.Module, example_inputs: Any, *, reference: nn.Module) -> None:
    a, b = model.state_dict(), rebuilt.state_dict()
    if set(a) != set(b) or any(not torch.equal(a[k], b[k]) for k in a):
        raise ConfigError(
            "nc.save: the model did not come back the same from its description; nothing was written"
        )
    if example_inputs is None:
        return
    from netcompress.evaluation.harness import eval_mode

    def run(m: nn.Module) -> Any:
        x = example_inputs
        with torch.random.fork_rng(devices=[]):  # a forward that samples (ViLT's patches) draws the same numbers
            torch.manual_seed(0)
            return m(**x) if isinstance(x, dict) else m(*x) if isinstance(x, (tuple, list)) else m(x)

    with torch.no_grad(), eval_mode(reference), eval_mode(rebuilt):  # the caller's model computes the same
        out_a = run(reference)
        try:
            out_b = run(rebuilt)
        except Exception as exc:  # noqa: BLE001 - an attribute the description lost: named, nothing written
            raise ConfigError(
                f"nc.save: the model rebuilt from its description fails on the example ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); nothing was written"
            ) from exc
    # every tensor of the output, also inside a Hugging Face output object or a tuple
    flat_a, flat_b = (torch.utils._pytree.tree_leaves(o) for o in (out_a, out_b))
    same = len(flat_a) == len(flat_b) and all(
        type(a) is type(b)
        and (
            not isinstance(a, (torch.Tensor, int, float))
            or torch.equal(torch.as_tensor(a), torch.as_tensor(b))
        )
        for a, b in zip(flat_a, flat_b, strict=True)
    )  # a cache object (DynamicCache) is compared by type; the tensors it fed are compared
    if not same:
        raise ConfigError("nc.save: the rebuilt model computes other outputs; nothing was written")
