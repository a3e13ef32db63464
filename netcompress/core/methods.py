"""The one contract every compression method follows: a config class, a function, a registration.

A method is a :class:`~netcompress.core.config.Config` subclass (its fields, defaults and validation,
declared once, next to the algorithm) and a function ``fn(model, config, data) -> Result``. It is
registered under an ``op`` and a name::

    @dataclasses.dataclass
    class MyPruneConfig(Config):
        amount: float = 0.5

    @register_method("prune", "my_prune", config=MyPruneConfig)
    def my_prune(model, config, data):
        ...
        return Result(model=model, summary={"sparsity": ...})

Everything else dispatches through :func:`apply`, keyed by the config's type: the public verbs
(``nc.prune_unstructured_``, ``nc.quantize``, ...) build the config from their keywords and call it;
a recipe step ``{op: prune, method: my_prune, amount: 0.3}`` is the same config read from YAML.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from netcompress.core.config import Config, describe_fields
from netcompress.core.errors import ConfigError
from netcompress.core.registry import Registry

# keys a recipe step uses for itself; a config field of that name could never be set from a recipe
RESERVED_KEYS = ("op", "method", "label")


@dataclasses.dataclass
class MethodData:
    """What a method may use besides the model.

    ``val_loader`` is the validation split (held out of training): every choice a method makes
    (rates, thresholds, the best epoch, calibration settings) is made on it, never on the test split.
    ``out_dir`` is where a method may write files (a recipe step's folder); None writes nothing.
    ``extras`` carries run-level objects a method may use (``hooks`` for training, ``teacher``).
    """

    train_loader: Any = None
    val_loader: Any = None
    calib_loader: Any = None
    example_inputs: Any = None
    num_classes: int | None = None
    out_dir: Path | None = None
    seed: int = 0
    device: str = "cpu"
    progress: bool = True
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def calibration(self) -> Any:
        """The calibration batches: ``calib_loader`` when given, else the training loader."""
        return self.calib_loader if self.calib_loader is not None else self.train_loader

    def require(self, *names: str, method: str) -> None:
        """Raise a ConfigError naming ``method`` and each missing input."""
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise ConfigError(f"{method} needs {', '.join(missing)} in its data (MethodData)")


@dataclasses.dataclass
class Result:
    """What every method returns: the model to use next, a JSON-able summary, and per-epoch history
    (a list of dicts) when the method trained."""

    model: nn.Module
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)
    history: list[dict[str, Any]] | None = None


MethodFn = Callable[[nn.Module, Any, MethodData], Result]


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    op: str
    name: str
    config: type[Config]
    fn: MethodFn
    doc: str = ""

    @property
    def key(self) -> str:
        return f"{self.op}/{self.name}"


METHODS: Registry[MethodSpec] = Registry("method (op/method)")
_BY_CONFIG: dict[type, MethodSpec] = {}


def register_method(op: str, name: str, *, config: type[Config]) -> Callable[[MethodFn], MethodFn]:
    """Decorator registering ``fn`` as method ``op/name`` with its config class.

    Each config class belongs to exactly one method, so :func:`apply` can dispatch on it.
    """
    if not (isinstance(config, type) and issubclass(config, Config)):
        raise TypeError(f"method {op}/{name}: config must be a Config subclass, got {config!r}")
    reserved = set(RESERVED_KEYS) & set(config.field_names())
    if reserved:
        raise ValueError(
            f"method {op}/{name}: config {config.__name__} may not have fields named {sorted(reserved)}"
        )

    def _add(fn: MethodFn) -> MethodFn:
        doc = (fn.__doc__ or config.__doc__ or "").strip().splitlines()
        spec = MethodSpec(op, name, config, fn, doc[0] if doc else "")
        other = _BY_CONFIG.get(config)
        if other is not None and other.key != spec.key:
            raise ValueError(
                f"config {config.__name__} already belongs to method {other.key}; give {spec.key} its own"
            )
        METHODS.register(spec.key, spec)
        _BY_CONFIG[config] = spec
        return fn

    return _add


def method_for(config: Config | type[Config]) -> MethodSpec:
    """The registered method of a config (instance or class)."""
    cls = config if isinstance(config, type) else type(config)
    _ensure_registered()
    try:
        return _BY_CONFIG[cls]
    except KeyError:
        raise ConfigError(f"no method is registered for config {cls.__name__}") from None


def apply(model: nn.Module, config: Config, data: MethodData | None = None) -> Result:
    """Run the method that ``config`` belongs to on ``model``: the one call under every verb and step.

    Example:
        >>> from netcompress.pruning import L1UnstructuredConfig
        >>> result = nc.apply(model, L1UnstructuredConfig(amount=0.5))
        >>> result.summary["sparsity"]
    """
    spec = method_for(config)
    result = spec.fn(model, config, data if data is not None else MethodData())
    if not isinstance(result, Result):
        raise TypeError(f"method {spec.key} returned {type(result).__name__}, not a Result")
    return result


def find_method(op: str, name: str | None, *, where: str) -> MethodSpec:
    """Look up ``op``/``name`` with errors that list what exists (a recipe step's lookup)."""
    _ensure_registered()
    names = METHODS.names()
    of_op = [n.split("/", 1)[1] for n in names if n.startswith(f"{op}/")]
    if name is None:
        if len(of_op) == 1:
            return METHODS.get(f"{op}/{of_op[0]}")
        raise ConfigError(f"{where}: op {op!r} needs a 'method' (one of {of_op or 'none known'})")
    key = f"{op}/{name}"
    if key not in METHODS:
        ops = sorted({n.split("/", 1)[0] for n in names})
        if op not in ops:
            raise ConfigError(f"{where}: unknown op {op!r}; known ops: {', '.join(ops)}")
        raise ConfigError(f"{where}: unknown method {name!r} for op {op!r}; known: {', '.join(of_op)}")
    return METHODS.get(key)


def describe_method(spec: MethodSpec) -> list[dict[str, Any]]:
    """The method's fields: name, type and default, as ``netcompress list methods`` prints them."""
    return describe_fields(spec.config)


# The modules that define methods. Importing one registers its methods (and loads no runner).
METHOD_MODULES = (
    "netcompress.training.supervised",
    "netcompress.pruning.unstructured",
    "netcompress.pruning.schedules",
    "netcompress.pruning.iterative",
    "netcompress.pruning.neuron",
    "netcompress.pruning.channel",
    "netcompress.pruning.auto",
    "netcompress.pruning.slimming",
    "netcompress.pruning.iterative_channel",
    "netcompress.quantization",
    "netcompress.distillation.teacher_student",
    "netcompress.low_rank.factorize",
    "netcompress.architecture.depthwise_separable",
    "netcompress.clustering.model_clustering",
    "netcompress.dynamic.exit_training",
    "netcompress.dynamic.slimmable_training",
    "netcompress.pruning.transformer_pruning",
    "netcompress.pruning.semi_structured",
    "netcompress.pruning.one_shot",
    "netcompress.distillation.transformer_distillation",
)


def _ensure_registered() -> None:
    import importlib

    for name in METHOD_MODULES:
        importlib.import_module(name)


__all__ = [
    "METHODS",
    "MethodData",
    "MethodSpec",
    "Result",
    "apply",
    "describe_method",
    "find_method",
    "method_for",
    "register_method",
]
