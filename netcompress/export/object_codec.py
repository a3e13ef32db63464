"""A model as data: every module, its attributes and its hooks written as JSON, tensors kept apart.

This is what lets ``nc.save`` avoid pickle. Encoding walks the objects a model is made of and writes
each as plain data; decoding rebuilds them without running any code from the file:

- classes are looked up only in ``torch.nn``, ``netcompress`` and the modules the caller names
  (``allow_modules``, e.g. the user's own ``mymodel``); an object is made with ``cls.__new__`` and its
  attributes restored (``__init__`` is not called, so pruned shapes come back as they were);
- functions (activation attributes, graph calls) only from ``torch``, ``torch.nn.functional``,
  ``operator`` and ``math``, never a name that starts with ``_`` or reads or writes files; a module's own
  method bound to it (a hook such as Mamba's ``self.load_hook``) by its name on the module's class; a custom
  autograd op's ``Function.apply`` by its class (looked up as classes are);
- tensors are references into the safetensors part of the file, shared tensors and modules stay shared;
  numpy number scalars (``np.int64``) are written as their value and dtype.

Anything else (a lambda, an open file, a class from elsewhere) is an error that names where it sits.
"""

from __future__ import annotations

import collections
import enum
import functools
import importlib
import inspect
import math
import types
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from netcompress.core.errors import CheckpointError, ConfigError
from netcompress.export.allowlist import (
    TRUSTED_CLASS_ROOTS,
    class_name,
    find_function,
    function_name,
    is_function,
)
from netcompress.export.graph_codec import decode_graph_module, encode_graph_module

_AUTOGRAD_APPLY = torch.autograd.Function.apply.__func__


class Encoder:
    """Turns a module into JSON-able data; ``tensors`` collects what goes into safetensors."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self._tensor_keys: dict[int, str] = {}
        self._objects: dict[int, int] = {}
        self.objects: list[Any] = []  # each module / object once; references by index keep sharing

    def encode(self, value: Any, where: str) -> Any:
        if value is None or isinstance(value, (bool, int, str)):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else {"__float__": repr(value)}
        if isinstance(value, torch.Tensor):
            return self._tensor(value, where)
        if isinstance(value, (np.bool_, np.integer, np.floating)):  # MONAI's ``n_patches = np.prod(...)``
            return {"__numpy__": value.dtype.str, "value": self.encode(value.item(), where)}
        if isinstance(value, (torch.dtype, torch.device, torch.memory_format, torch.layout)):
            return {"__torch__": str(value).removeprefix("torch.")}
        if isinstance(value, torch.Size):
            return {"__size__": list(value)}
        if isinstance(value, dict) and type(value) not in (dict, collections.OrderedDict) and hasattr(value, "__dict__"):
            # a Python dict subclass (diffusers' FrozenDict config) is rebuilt as its class: items and attributes
            return self._object(value, where)
        if isinstance(value, collections.OrderedDict):
            return {
                "__odict__": [
                    [self.encode(k, where), self.encode(v, f"{where}[{k!r}]")] for k, v in value.items()
                ]
            }
        if isinstance(value, dict):
            return {
                "__dict__": [
                    [self.encode(k, where), self.encode(v, f"{where}[{k!r}]")] for k, v in value.items()
                ]
            }
        if isinstance(value, tuple) and hasattr(type(value), "_fields"):  # a namedtuple keeps its class
            items = [self.encode(v, f"{where}.{f}") for f, v in zip(type(value)._fields, value, strict=True)]
            return {"__namedtuple__": class_name(type(value)), "items": items}
        if isinstance(value, (tuple, dict)) and type(value) not in (tuple, dict, collections.OrderedDict):
            # written as its base type it would come back as another type: a wrong model, not a file
            raise ConfigError(f"cannot save {where}: a {type(value).__name__} (a {type(value).__base__.__name__} "
                              "subclass) would load back as its base type")  # fmt: skip
        if isinstance(value, tuple):
            return {"__tuple__": [self.encode(v, f"{where}[{i}]") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [self.encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, (set, frozenset)):
            return {"__set__": sorted((self.encode(v, where) for v in value), key=repr)}
        if isinstance(value, slice):
            return {"__slice__": [self.encode(v, where) for v in (value.start, value.stop, value.step)]}
        if value is Ellipsis:
            return {"__ellipsis__": True}
        if isinstance(value, enum.Enum):
            return {"__enum__": class_name(type(value)), "name": value.name}
        if isinstance(value, type):
            return {"__class__": class_name(value)}
        if isinstance(value, functools.partial) and type(value) is functools.partial:
            # an allowed function with bound arguments (transformers' GELU: partial(F.gelu, approximate="tanh"))
            return {
                "__partial__": function_name(value.func, where),
                "args": [self.encode(v, f"{where}.args[{i}]") for i, v in enumerate(value.args)],
                "keywords": {
                    k: self.encode(v, f"{where}.keywords[{k!r}]") for k, v in value.keywords.items()
                },
            }
        if isinstance(value, types.MethodType) and isinstance(value.__self__, nn.Module):
            # a module's own method as a hook (Mamba's load_state_dict pre-hook ``self.load_hook``)
            name = value.__func__.__name__
            if name.startswith("__") or getattr(type(value.__self__), name, None) is not value.__func__:
                raise ConfigError(f"cannot save {where}: method {name!r} is not one of its module's class")
            return {"__method__": self.encode(value.__self__, f"{where}.__self__"), "name": name}
        if isinstance(value, types.MethodType) and isinstance(value.__self__, type):
            # a custom autograd op kept as an attribute (pytorchcv's ``self.shake_shake = ShakeShake.apply``)
            if issubclass(value.__self__, torch.autograd.Function) and value.__func__ is _AUTOGRAD_APPLY:
                return {"__autograd_apply__": class_name(value.__self__)}
            raise ConfigError(f"cannot save {where}: {value.__self__.__qualname__}.{value.__func__.__name__} is a "
                              "method bound to a class, not a function a saved model may name")  # fmt: skip
        if is_function(value) or (callable(value) and not hasattr(value, "__dict__")):
            return {"__function__": function_name(value, where)}
        return self._object(value, where)

    def _tensor(self, tensor: torch.Tensor, where: str) -> dict[str, Any]:
        key = self._tensor_keys.get(id(tensor))
        if key is None:
            key = f"t{len(self.tensors)}"
            self._tensor_keys[id(tensor)] = key
            self.tensors[key] = tensor.detach().cpu().contiguous().clone()
        out: dict[str, Any] = {"__tensor__": key}
        if isinstance(tensor, nn.Parameter):
            out["parameter"] = True
            out["requires_grad"] = tensor.requires_grad
        return out

    def _object(self, obj: Any, where: str) -> dict[str, Any]:
        if id(obj) in self._objects:
            return {"__ref__": self._objects[id(obj)]}
        if isinstance(obj, fx.GraphModule):
            index = self._reserve(obj)
            self.objects[index] = encode_graph_module(obj, self, where)
            return {"__ref__": index}
        cls = type(obj)
        if not hasattr(obj, "__dict__") or getattr(cls, "__slots__", None):
            raise ConfigError(f"cannot save {where}: a {cls.__name__} has no attribute dict to write as data")
        index = self._reserve(obj)
        state = {k: self.encode(v, f"{where}.{k}") for k, v in _saved_vars(obj).items()}
        self.objects[index] = {"class": class_name(cls), "state": state}
        if isinstance(obj, dict):
            items = [[self.encode(k, where), self.encode(v, f"{where}[{k!r}]")] for k, v in obj.items()]
            self.objects[index]["items"] = items
        return {"__ref__": index}

    def _reserve(self, obj: Any) -> int:
        self._objects[id(obj)] = len(self.objects)
        self.objects.append(None)
        return len(self.objects) - 1


def _saved_vars(obj: Any) -> dict[str, Any]:
    """``vars(obj)`` without transformers' output-capturing hooks (and the flag saying they are installed).

    transformers 5 installs them on first ``output_hidden_states=True`` (a distillation's teacher and student);
    they are inert closures, and the loaded model installs them again when asked for hidden states.
    """
    state = vars(obj)
    if not isinstance(obj, nn.Module):
        return state
    if isinstance(obj, nn.RNNBase):  # weak references to its own parameters: rebuilt on load (_init_flat_weights)
        state = {k: v for k, v in state.items() if k not in ("_flat_weights", "_flat_weight_refs")}
    drop = {k for k, h in obj._forward_hooks.items() if getattr(h, "__module__", "") == _CAPTURING}
    if not drop and "_output_capturing_hooks_installed" not in state:
        return state
    state = {k: v for k, v in state.items() if k != "_output_capturing_hooks_installed"}
    for name in ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called"):
        if name in state:
            state[name] = type(state[name])((k, v) for k, v in state[name].items() if k not in drop)
    return state


_CAPTURING = "transformers.utils.output_capturing"


class Decoder:
    """Rebuilds what :class:`Encoder` wrote; ``allow_modules`` adds the user's own module names."""

    def __init__(
        self, objects: list[Any], tensors: dict[str, torch.Tensor], *, allow_modules: tuple[str, ...] = ()
    ):
        self.objects, self.tensors, self.allow_modules = objects, tensors, allow_modules
        self._built: dict[int, Any] = {}
        self._tensor_objects: dict[str, torch.Tensor] = {}

    def decode(self, value: Any) -> Any:
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, list):
            return [self.decode(v) for v in value]
        if not isinstance(value, dict) or len(value) == 0:
            raise CheckpointError(f"unexpected value in the model description: {value!r:.80}")
        tag = next(iter(value))
        if tag == "__ref__":
            return self.build(value["__ref__"])
        if tag == "__tensor__":
            return self._tensor(value)
        if tag == "__tuple__":
            return tuple(self.decode(v) for v in value[tag])
        if tag == "__partial__":
            args = [self.decode(v) for v in value["args"]]
            return functools.partial(
                find_function(value[tag]), *args, **{k: self.decode(v) for k, v in value["keywords"].items()}
            )
        if tag == "__namedtuple__":
            return self.find_class(value[tag])(*(self.decode(v) for v in value["items"]))
        if tag == "__odict__":
            return collections.OrderedDict((self.decode(k), self.decode(v)) for k, v in value[tag])
        if tag == "__dict__":
            return {self.decode(k): self.decode(v) for k, v in value[tag]}
        if tag == "__set__":
            return {self.decode(v) for v in value[tag]}
        if tag == "__slice__":
            return slice(*(self.decode(v) for v in value[tag]))
        if tag == "__ellipsis__":
            return Ellipsis
        if tag == "__float__":
            return float(value[tag])
        if tag == "__numpy__":  # a numpy scalar keeps its type (np.int64 stays np.int64)
            dtype = np.dtype(value[tag])
            if dtype.kind not in "biuf":
                raise CheckpointError(f"the model description holds a numpy {dtype} scalar, which is not a number")
            return dtype.type(self.decode(value["value"]))
        if tag == "__size__":
            return torch.Size(value[tag])
        if tag == "__torch__":
            return _torch_constant(value[tag])
        if tag == "__enum__":
            return self.find_class(value[tag])[value["name"]]
        if tag == "__class__":
            return self.find_class(value[tag])
        if tag == "__function__":
            return find_function(value[tag])
        if tag == "__autograd_apply__":  # ``Function.apply`` of an autograd op whose class was allowed
            cls = self.find_class(value[tag])
            if not issubclass(cls, torch.autograd.Function):
                raise CheckpointError(f"the model description applies {value[tag]}, which is no autograd Function")
            return cls.apply
        if tag == "__method__":  # a method of a module (whose class was allowed) bound to it
            owner, name = self.decode(value[tag]), value.get("name")
            func = (
                getattr(type(owner), name, None)
                if isinstance(name, str) and not name.startswith("__")
                else None
            )
            if not isinstance(owner, nn.Module) or not inspect.isfunction(func):
                raise CheckpointError(
                    f"the model description binds {name!r}, which is not a method of its module"
                )
            return types.MethodType(func, owner)
        raise CheckpointError(f"unknown entry {tag!r} in the model description")

    def _tensor(self, value: dict[str, Any]) -> torch.Tensor:
        key = value["__tensor__"]
        if key not in self.tensors:
            raise CheckpointError(f"the model description names tensor {key!r}, which the file does not hold")
        if key not in self._tensor_objects:
            tensor = self.tensors[key]
            if value.get("parameter"):
                tensor = nn.Parameter(tensor, requires_grad=bool(value.get("requires_grad", True)))
            self._tensor_objects[key] = tensor
        return self._tensor_objects[key]

    def build(self, index: int) -> Any:
        if index in self._built:
            return self._built[index]
        if not isinstance(index, int) or not 0 <= index < len(self.objects):
            raise CheckpointError(f"the model description refers to object {index!r}, which it does not hold")
        entry = self.objects[index]
        if "graph" in entry:
            self._built[index] = module = decode_graph_module(entry, self)
            return module
        cls = self.find_class(entry["class"])
        obj = cls.__new__(cls)
        self._built[index] = obj  # before the attributes: a child may refer back to its parent
        if "items" in entry:  # a dict subclass: the base class's setter (a frozen dict's own refuses)
            if not isinstance(obj, dict):
                raise CheckpointError(f"the model description gives items to {entry['class']}, which is no dict")
            setitem = collections.OrderedDict.__setitem__ if isinstance(obj, collections.OrderedDict) else dict.__setitem__
            for k, v in entry["items"]:
                setitem(obj, self.decode(k), self.decode(v))
        obj.__dict__.update({k: self.decode(v) for k, v in entry["state"].items()})
        if isinstance(obj, nn.RNNBase) and "_flat_weights" not in obj.__dict__:
            obj._init_flat_weights()  # nn.LSTM/GRU/RNN: the flat list and weak references to its parameters
        return obj

    def find_class(self, name: str) -> type:
        module_name, _, qualname = name.rpartition(":")
        # an allowed name is a module or a package: "transformers" allows "transformers.models.vit.modeling_vit"
        users = any(module_name == a or module_name.startswith(a + ".") for a in self.allow_modules)
        if not (module_name.startswith(TRUSTED_CLASS_ROOTS) or users):
            raise CheckpointError(
                f"the file's model uses class {qualname} from module {module_name!r}; netcompress rebuilds only "
                f"torch.nn and netcompress classes unless you name your module or its package: "
                f"nc.load(path, allow_modules=[{module_name.partition('.')[0]!r}])"
            )
        if users:
            import sys
            from pathlib import Path

            if str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))  # the user's own modules live where they run netcompress
        try:
            obj: Any = importlib.import_module(module_name)
            for part in qualname.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as exc:
            raise CheckpointError(f"cannot find class {qualname} in {module_name}: {exc}") from None
        if not isinstance(obj, type):
            raise CheckpointError(f"{name} is not a class")
        return obj


def _torch_constant(name: str) -> Any:
    if name.startswith(("cpu", "cuda", "mps", "meta")):
        return torch.device(name)
    value = getattr(torch, name, None)
    if not isinstance(value, (torch.dtype, torch.memory_format, torch.layout)):
        raise CheckpointError(f"unknown torch constant {name!r} in the model description")
    return value
