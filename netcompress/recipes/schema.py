"""The recipe schema: loading YAML, applying ``key=value`` overrides, validating every key.

A recipe is a mapping with these top-level keys::

    name: quickstart            # names the run folder
    seed: 0
    model: {name: digits_cnn, num_classes: 10}     # or {checkpoint: path/to/model.pt}
    data: {name: digits, batch_size: 64}
    steps:                      # ordered; each is op + method + that method's config fields
      - {op: train, method: supervised, epochs: 5}
      - {op: prune, method: l1_unstructured, amount: 0.5}
    evaluate: {latency: true}
    export: {onnx: true, int8: false}
    report: {title: "Quickstart"}

Every mapping is checked against the fields it may hold, and an unknown key is a
:class:`~netcompress.core.ConfigError` naming the key and where it was found.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import yaml

from netcompress.core.config import Config, check_range
from netcompress.core.errors import ConfigError
from netcompress.core.output_select import check_output_choice

TOP_LEVEL_KEYS = (
    "name",
    "description",
    "seed",
    "model",
    "data",
    "steps",
    "evaluate",
    "export",
    "report",
    "output",
    "device",
)
LOADER_KEYS = ("batch_size", "eval_batch_size", "num_workers", "calib_batches")


@dataclasses.dataclass
class LoaderConfig(Config):
    """How the ``data`` block's loaders are sized: batches to train on and to measure with, worker
    processes, and how many training batches calibrate a quantizer."""

    batch_size: int = 128
    eval_batch_size: int = 256
    num_workers: int = 0
    calib_batches: int = 16

    def __post_init__(self) -> None:
        check_range("batch_size", self.batch_size, 1)
        check_range("eval_batch_size", self.eval_batch_size, 1)
        check_range("num_workers", self.num_workers, 0)
        check_range("calib_batches", self.calib_batches, 1)


@dataclasses.dataclass
class EvaluateConfig(Config):
    """What to measure after every step, on the test split: accuracy, sizes, and latency (when
    ``latency``) at each of ``batch_sizes``, the median of ``repeats`` timed calls.

    ``accuracy`` follows the targets (:mod:`netcompress.core.targets`): top-1, or for class maps pixel
    accuracy (and ``miou``) skipping ``ignore_index`` (255 for VOC-style masks; the training step names the
    same value), or for multi-label rows the exact-match rate (and ``label_f1``); ``accuracy_metric`` names
    the latter two."""

    latency: bool = True
    batch_sizes: list[int] = dataclasses.field(default_factory=lambda: [1, 64])
    repeats: int = 20
    max_batches: int | None = None  # limit the test batches measured (None = all of them)
    ignore_index: int = -100

    def __post_init__(self) -> None:
        if not self.batch_sizes:
            check_range("len(batch_sizes)", 0, 1)
        for size in self.batch_sizes:
            check_range("every batch size of batch_sizes", size, 1)
        check_range("repeats", self.repeats, 1)
        if self.max_batches is not None:
            check_range("max_batches", self.max_batches, 1)


@dataclasses.dataclass
class ExportConfig(Config):
    """What to export at the end of the run."""

    onnx: bool = False
    int8: bool = False
    sparse: bool = False
    compressed: bool = False  # the Deep-Compression file (nc.save_compressed): export/model.dc


@dataclasses.dataclass
class ReportConfig(Config):
    title: str | None = None
    plots: bool = True


def load_recipe_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe; a missing file or bad YAML is a ConfigError naming the path."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"recipe not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe {path} is not valid YAML: {yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path} must be a mapping with keys such as model, data, steps")
    return data


def yaml_problem(exc: yaml.YAMLError) -> str:
    """One line for a YAML error: what is wrong and where (``line 3, column 1``, counted from 1)."""
    problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else problem


def apply_overrides(recipe: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides (values parsed as YAML); ``steps.1.amount=0.7`` indexes lists.

    Example:
        >>> apply_overrides({"seed": 0}, ["seed=3"])["seed"]
        3
    """
    recipe = copy.deepcopy(recipe)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. seed=1 or steps.0.epochs=3)")
        try:
            value = yaml.safe_load(raw) if raw else None
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"override {item!r}: the value is not valid YAML ({str(exc).splitlines()[0]})"
            ) from None
        parts = key.split(".")
        node: Any = recipe
        for depth, part in enumerate(parts[:-1]):
            node = _child(node, part, ".".join(parts[: depth + 1]), item)
        last = parts[-1]
        if isinstance(node, list):
            node[_index(node, last, key)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(f"override {item!r}: {'.'.join(parts[:-1])} is not a mapping or list")
    return recipe


def apply_profile(recipe: dict[str, Any], profile: str | None) -> dict[str, Any]:
    """Apply a named set of overrides from the recipe's ``profiles:`` (e.g. ``full`` for full scale).

    Example (in a recipe)::

        profiles:
          full: [data.train_subset=null, steps.0.epochs=160]
    """
    profiles = recipe.get("profiles") or {}
    if profile is None:
        return recipe
    if profile not in profiles:
        raise ConfigError(f"unknown profile {profile!r}; this recipe has: {', '.join(profiles) or '(none)'}")
    overrides = profiles[profile]
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise ConfigError(f"profile {profile!r} must be a list of key=value strings")
    return apply_overrides(recipe, overrides)


def _index(node: list, part: str, where: str) -> int:
    try:
        idx = int(part)
        node[idx]
    except (ValueError, IndexError):
        raise ConfigError(
            f"override path {where!r}: {part!r} is not an index of a list of {len(node)}"
        ) from None
    return idx


def _child(node: Any, part: str, where: str, item: str) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, where)]
    if isinstance(node, dict):
        if part not in node or node[part] is None:
            node[part] = {}
        return node[part]
    raise ConfigError(f"override {item!r}: {where} is not a mapping or list")


def _check_keys(mapping: Any, allowed: tuple[str, ...] | list[str], where: str) -> dict[str, Any]:
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(mapping).__name__}")
    for key in mapping:
        if key not in allowed:
            raise ConfigError(f"unknown key {key!r} in {where}; allowed: {', '.join(allowed)}")
    return dict(mapping)


MODEL_SPEC_KEYS = ("name", "factory", "kwargs", "checkpoint", "trust", "output")


def _seed(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"seed={value!r} must be a non-negative integer")
    return value


def resolve_recipe(recipe: dict[str, Any]) -> dict[str, Any]:
    """Validate a recipe and fill every default, returning the fully resolved mapping.

    The result is what the run folder records as ``recipe.yaml``: every step lists every
    config field, so a run can be reproduced from that file alone.
    """
    from netcompress import data as data_mod
    from netcompress import models as models_mod
    from netcompress.recipes.steps import find_method
    from netcompress.training.config import TrainConfig

    recipe = _check_keys(recipe, TOP_LEVEL_KEYS, "the recipe")
    recipe.pop("profiles", None)  # applied by apply_profile before resolving
    if recipe.get("sweep") is not None:
        raise ConfigError("resolve_recipe takes one point of a sweep: remove 'sweep' (run_recipe expands it)")
    for key, kind in (("name", str), ("description", str), ("seed", int), ("output", str)):
        value = recipe.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise ConfigError(
                f"{key}={value!r} in the recipe: expected {kind.__name__}, got {type(value).__name__}"
            )
    out: dict[str, Any] = {
        "name": recipe.get("name") or "run",
        "description": recipe.get("description") or "",
        "seed": _seed(0 if recipe.get("seed") is None else recipe["seed"]),
    }
    model = recipe.get("model")
    if not isinstance(model, dict) or not (
        model.get("name") or model.get("factory") or model.get("checkpoint")
    ):
        raise ConfigError(
            "the recipe needs 'model' with a 'name' (see `netcompress list models`), a 'factory' "
            "('file.py:function' or 'package.module:function') or a 'checkpoint'"
        )
    if model.get("name") and model.get("factory"):
        raise ConfigError("model: give either 'name' or 'factory', not both")
    if model.get("name"):
        models_mod.MODELS.get(model["name"]).resolve(
            {**{k: v for k, v in model.items() if k not in MODEL_SPEC_KEYS}, **(model.get("kwargs") or {})}
        )
    elif model.get("factory"):
        extra = sorted(set(model) - set(MODEL_SPEC_KEYS) - {"name"})
        if extra:
            raise ConfigError(
                f"unknown key {extra[0]!r} in model; a factory model takes factory, kwargs, checkpoint, trust, output"
            )
        if not isinstance(model.get("kwargs") or {}, dict):
            raise ConfigError("model.kwargs must be a mapping of keyword arguments")
    if model.get("output") is not None:  # a tuple/dict output: which item is scored (default the first / logits)
        check_output_choice(model["output"], where="model.output")
    if "trust" in model and not isinstance(model["trust"], bool):
        raise ConfigError(f"model.trust must be true or false, got {model['trust']!r}")
    out["model"] = dict(model)

    data = recipe.get("data")
    if isinstance(data, dict) and data.get("factory") and not data.get("name"):
        data = {"name": "factory", **data}  # a user's own Dataset: data: {factory: "mydata.py:build"}
    if not isinstance(data, dict) or not data.get("name"):
        raise ConfigError("the recipe needs 'data' with a 'name' (see `netcompress list data`)")
    data_mod.config_for(
        data["name"], **{k: v for k, v in data.items() if k != "name" and k not in LOADER_KEYS}
    )
    loaders = LoaderConfig.from_dict({k: v for k, v in data.items() if k in LOADER_KEYS}, where="data")
    out["data"] = {**data, **loaders.to_dict()}

    steps = recipe.get("steps")
    if steps is not None and not isinstance(steps, list):
        raise ConfigError("'steps' must be a list of mappings, each with an 'op'")
    if not steps:
        raise ConfigError(
            "the recipe needs at least one step in 'steps' (e.g. - {op: train, method: supervised, epochs: 5})"
        )
    resolved_steps = []
    for i, step in enumerate(steps):
        where = f"step {i + 1}"
        if not isinstance(step, dict) or "op" not in step:
            raise ConfigError(f"{where} must be a mapping with an 'op' (and usually a 'method')")
        spec = find_method(step["op"], step.get("method"), where=where)
        where = f"step {i + 1} ({spec.op}/{spec.name})"
        fields = {k: v for k, v in step.items() if k not in ("op", "method", "label")}
        cfg = spec.config.from_dict(fields, where=where)
        # 0 epochs makes a training step do nothing; TrainConfig allows 0 (schedules use it inside a
        # method), and the dynamic steps take 0 to mean "build the heads/widths, train nothing"
        if isinstance(cfg, TrainConfig) and spec.op != "dynamic" and cfg.epochs < 1:
            raise ConfigError(f"epochs={cfg.epochs!r} in {where}: a training step needs at least 1 epoch")
        teacher = getattr(cfg, "teacher", None)
        if isinstance(teacher, dict) and "step" in teacher and not 1 <= teacher["step"] <= i:
            raise ConfigError(
                f"teacher: {{step: {teacher['step']}}} in {where}: a teacher step is an earlier step of this "
                f"recipe, counted from 1 (1 to {i})"
                if i
                else f"teacher: {{step: {teacher['step']}}} in "
                f"{where}: the first step has no earlier step to learn from; give the teacher as "
                "teacher: {model: {factory: ..., checkpoint: ...}}"
            )
        resolved_steps.append(
            {"op": spec.op, "method": spec.name, "label": step.get("label"), **cfg.to_dict()}
        )
    out["steps"] = resolved_steps
    out["evaluate"] = EvaluateConfig.from_dict(recipe.get("evaluate"), where="evaluate").to_dict()
    out["export"] = ExportConfig.from_dict(recipe.get("export"), where="export").to_dict()
    out["report"] = ReportConfig.from_dict(recipe.get("report"), where="report").to_dict()
    if recipe.get("output") is not None:
        out["output"] = str(recipe["output"])
    out["device"] = _device(recipe.get("device") or "cpu")
    return out


def _device(value: Any) -> str:
    """The run's device (``cpu``, ``cuda``, ``cuda:1``): where every step without its own runs."""
    import torch

    try:
        device = torch.device(str(value))
    except (RuntimeError, TypeError):
        raise ConfigError(f"device={value!r} in the recipe is not a torch device (e.g. cpu, cuda)") from None
    if device.type == "cuda" and not torch.cuda.is_available():  # else a bare AssertionError mid-run
        raise ConfigError(f"device={value!r}: this torch has no CUDA device here; run with --device cpu")
    return str(device)
