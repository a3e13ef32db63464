"""What each channel group costs in the deployed form, measured once on this machine and cached.

MACs are the wrong budget on a CPU: a memory-bound 16-channel stage at full resolution saves a
third of the MACs and little time. A latency (or file-size) target is planned against measured costs:

- :func:`time_deployed` times models the way they ship: BatchNorm folded into the convolutions
  (``runtime="torch"``) or the exported ONNX file in an ONNX Runtime session (``runtime="onnxruntime"``),
  at ``batch_size``, on ``threads`` threads, all given models interleaved round by round
  (:func:`~netcompress.evaluation.latency.time_rounds`), so load drift hits them alike;
- :func:`shipped_bytes` is the size of the file that ships: the float ONNX file (``ship_form="onnx"``)
  or the int8 one ONNX Runtime optimises (``"onnx_int8"``);
- :func:`cost_table` prunes each group alone to every candidate width (the rest unpruned) and
  measures it, interleaved with the unpruned model (each entry is the unpruned latency times the
  ratio measured in the same rounds). The table is an additive model: the cost of a width assignment
  is predicted as ``base - sum(base - cost[group][width])``; the search confirms its choice end to end.

The table is cached as JSON (``~/.cache/netcompress/cost_tables`` or ``cache_dir``) under a key of
everything that changes it: the target, runtime, thread count, batch size, the CPU model string,
torch/onnx/onnxruntime versions, the model's structure hash and the kept channel counts per width.

Example:
    >>> spec = MeasureSpec(target="latency", runtime="onnxruntime", batch_size=64)
    >>> table = cost_table(model, x, variants, spec, cache_dir=None)
    >>> table.predict({"features.0": 2})   # ms with features.0 at its third width, the rest unpruned
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netcompress.core.config import Config, check_choice, check_range
from netcompress.core.errors import ConfigError
from netcompress.core.io import atomic_write_json
from netcompress.evaluation.harness import as_input_tuple
from netcompress.evaluation.latency import time_rounds

TARGET_KINDS = ("latency", "bytes")
RUNTIMES = ("onnxruntime", "torch")
SHIP_FORMS = ("onnx", "onnx_int8")
QUANTIZE_MODES = ("int8", "joint")
DEFAULT_WIDTHS = (1.0, 0.75, 0.5, 0.25)
# bump when what a table holds or how it is measured changes, so stale caches are not reused
TABLE_VERSION = 1


@dataclasses.dataclass
class MeasuredTargetFields(Config):
    """How a latency or bytes target is measured (``prune/auto`` with ``target: latency | bytes``).

    ``runtime``/``batch_size``/``threads``: the deployed form timed (``onnxruntime`` session or BN-folded
    ``torch``); ``widths``: the candidate widths of every group (fractions kept; 1.0 is always one);
    ``max_rounds``: end-to-end confirmations before giving up; ``tolerance``: a measured latency reduction
    this share short of the target still meets it (timing noise; a file size must meet it exactly), and a
    result faster or smaller than asked by more than it is widened again; ``timing_rounds``: interleaved rounds per
    timing; ``ship_form``: the file a bytes target counts; ``cache_dir``: where cost tables are kept;
    ``quantize``: ``"int8"`` (every layer int8) or ``"joint"`` (int8 or float per layer, chosen with the widths)
    against the int8 ONNX Runtime graph (:mod:`netcompress.pruning.latency_joint`; latency on onnxruntime only);
    ``remove_branches``: depth as well as width, every residual branch with an identity shortcut may also be
    removed whole (its inner group at width 0, :mod:`netcompress.pruning.branch_removal`), measured in the cost
    table and scored by the proxy like any width (float search only); ``confirm_rounds`` (> 1: every end-to-end
    check is that many interleaved rounds against the unpruned model, their median ratio decides), ``fill_up``
    (measured widening steps once the target is met; ``fill_up_slack`` s keeps one measured at (1 - s) x the target,
    at most the tolerance, 0: the target itself) and ``finalists`` (met candidates re-timed together at the
    end): :mod:`netcompress.pruning.latency_confirm` (latency only; 1 / 0 / 0: off; with ``quantize`` the checks
    time the int8 file and a fill-up step may also keep a layer float again).
    """

    runtime: str = "onnxruntime"
    batch_size: int = 1
    threads: int = 1
    widths: list[float] = dataclasses.field(default_factory=lambda: list(DEFAULT_WIDTHS))
    max_rounds: int = 4
    tolerance: float = 0.03
    timing_rounds: int = 5
    ship_form: str = "onnx"
    cache_dir: str | None = None
    quantize: str | None = None
    remove_branches: bool = False
    confirm_rounds: int = 1
    fill_up: int = 0
    fill_up_slack: float = 0.0
    finalists: int = 0

    def check_measured(self) -> None:
        """Validate the fields (called by the config that mixes them in); errors name the key."""
        check_choice("runtime", self.runtime, RUNTIMES)
        check_choice("ship_form", self.ship_form, SHIP_FORMS)
        if self.quantize is not None:
            check_choice("quantize", self.quantize, QUANTIZE_MODES)
            if getattr(self, "target", "latency") != "latency" or self.runtime != "onnxruntime":
                raise ConfigError(
                    "quantize needs target='latency' and runtime='onnxruntime' (the int8 ORT graph)"
                )
        for name in ("batch_size", "threads", "max_rounds", "timing_rounds", "confirm_rounds"):
            check_range(name, getattr(self, name), 1)
        for name in ("fill_up", "finalists"):
            check_range(name, getattr(self, name), 0)
        check_range("tolerance", self.tolerance, 0.0, 0.5)
        check_range("fill_up_slack", self.fill_up_slack, 0.0, self.tolerance)
        if not isinstance(self.remove_branches, bool):
            raise ConfigError(f"remove_branches must be true or false, got {self.remove_branches!r}")
        if not self.widths:
            raise ConfigError("widths must list at least one width (fractions of channels kept)")
        for width in self.widths:
            if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0.0 < width <= 1.0:
                raise ConfigError(f"widths entry {width!r} must be a fraction of channels kept in (0, 1]")
        self.widths = sorted({1.0, *(float(w) for w in self.widths)}, reverse=True)


@dataclasses.dataclass(frozen=True)
class MeasureSpec:
    """What one measurement is: a latency (ms) of a runtime at a batch size, or a file size (bytes)."""

    target: str = "latency"
    runtime: str = "onnxruntime"
    batch_size: int = 1
    threads: int = 1
    rounds: int = 5
    ship_form: str = "onnx"

    @property
    def unit(self) -> str:
        return "ms" if self.target == "latency" else "bytes"


def cpu_name() -> str:
    """The CPU model string (``/proc/cpuinfo`` "model name", else what ``platform`` knows).

    Example:
        >>> isinstance(cpu_name(), str)
        True
    """
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


@functools.cache
def _versions() -> dict[str, str]:
    versions = {"torch": torch.__version__}
    for name in ("onnx", "onnxruntime"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = "absent"
    return versions


def structure_hash(model: nn.Module, example_inputs: Any) -> str:
    """A hash of what a latency depends on: modules, parameter/buffer shapes and dtypes, input shapes.

    Weight values are left out: retraining a model keeps its table.

    Example:
        >>> structure_hash(nn.Linear(4, 2), torch.randn(1, 4)) == structure_hash(nn.Linear(4, 2), torch.randn(3, 4))
        True
    """
    digest = hashlib.sha256(repr(model).encode())
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
    for tensor in as_input_tuple(example_inputs):
        digest.update(f"input:{tuple(tensor.shape[1:])}:{tensor.dtype};".encode())
    return digest.hexdigest()[:16]


def _first_sample(example_inputs: Any) -> torch.Tensor:
    args = as_input_tuple(example_inputs)
    if len(args) != 1:
        raise ConfigError("runtime='onnxruntime' and target='bytes' export to ONNX: pass one input tensor")
    return args[0][:1]


def deployed_form(model: nn.Module, example_inputs: Any, spec: MeasureSpec, folder: Path) -> nn.Module:
    """``model`` as it runs when shipped: BN folded (torch) or its ONNX file in ONNX Runtime (a fake-quantized
    model: its int8 file, as ONNX Runtime optimises it)."""
    from netcompress.quantization.modules import quantizers

    int8 = bool(quantizers(model))
    if int8 and spec.runtime != "onnxruntime":
        raise ConfigError(f"runtime={spec.runtime!r} cannot time an int8 model: use runtime='onnxruntime'")
    if spec.runtime == "torch":
        from netcompress.quantization.bn_folding import fold_bn_and_report

        return fold_bn_and_report(model, example_inputs=example_inputs)[0]
    from netcompress.export.onnx import OrtModel, export_onnx

    fd, path = tempfile.mkstemp(dir=folder, suffix=".onnx")
    os.close(fd)
    export_onnx(model, path, _first_sample(example_inputs), int8=int8, check=False)
    return OrtModel(path, threads=spec.threads)


def time_deployed(
    models: Mapping[str, nn.Module], example_inputs: Any, spec: MeasureSpec
) -> dict[str, float]:
    """Latency (ms) of every model's deployed form at ``spec.batch_size``: the fastest timed forward.

    Each model gets ``spec.rounds`` interleaved rounds of 2 warm-up and a few timed forwards (10 at
    batch 1, 3 at batch 10 and more); the first sample of ``example_inputs`` is repeated to the batch
    size. The fastest forward, not the median, is kept: on a shared machine other processes only ever
    add time, and the medians of the same model moved by 35 % between calls at a load of 7 on 2 cores
    while the table's decisions need the ratios between models.

    Example:
        >>> time_deployed({"a": model, "b": small}, x, MeasureSpec(runtime="torch", batch_size=64))
        {'a': 41.2, 'b': 17.9}
    """
    timing = time_forms(models, example_inputs, spec)
    return {name: float(timing[name]["min_ms"]) for name in models}


def time_forms(models: Mapping[str, nn.Module], example_inputs: Any, spec: MeasureSpec) -> dict[str, dict]:
    """Every model's deployed form timed in ``spec.rounds`` interleaved rounds at ``spec.batch_size`` (3 timed
    forwards per round, 10 at batch 1, after 2 warm-ups): ``time_rounds``' statistics per model at that batch size."""
    per_round = max(3, 10 // spec.batch_size)
    with tempfile.TemporaryDirectory(prefix="nc-latency-") as folder:
        forms = {name: deployed_form(m, example_inputs, spec, Path(folder)) for name, m in models.items()}
        timing = time_rounds(
            forms, example_inputs, batch_sizes=(spec.batch_size,), rounds=spec.rounds,
            repeats=spec.rounds * per_round, warmup=2, threads=spec.threads,
        )  # fmt: skip
    return {name: timing[name][spec.batch_size] for name in models}


def shipped_bytes(model: nn.Module, example_inputs: Any, spec: MeasureSpec) -> int:
    """Size in bytes of the file that ships: float ONNX, or ONNX Runtime's optimised int8 file.

    The int8 file is calibrated on ``example_inputs`` (its size does not depend on the ranges).

    Example:
        >>> shipped_bytes(model, x, MeasureSpec(target="bytes"))
        1184632
    """
    from netcompress.export.onnx import export_onnx

    sample = _first_sample(example_inputs)
    if spec.ship_form == "onnx_int8":
        from netcompress.quantization.ptq import quantize

        model = quantize(model, [(sample, torch.zeros(1, dtype=torch.long))], mode="static")
    with tempfile.TemporaryDirectory(prefix="nc-bytes-") as folder:
        path = Path(folder) / "model.onnx"
        return int(
            export_onnx(model, path, sample, int8=spec.ship_form == "onnx_int8", check=False)["size_bytes"]
        )


def measure(models: Mapping[str, nn.Module], example_inputs: Any, spec: MeasureSpec) -> dict[str, float]:
    """``{name: ms}`` (:func:`time_deployed`) or ``{name: bytes}`` (:func:`shipped_bytes`) as ``spec`` asks."""
    if spec.target == "latency":
        return time_deployed(models, example_inputs, spec)
    return {name: float(shipped_bytes(m, example_inputs, spec)) for name, m in models.items()}


@dataclasses.dataclass
class CostTable:
    """Measured cost (ms or bytes) of the model with one group at each width, the rest unpruned.

    ``costs[label][i]`` is the cost with group ``label`` at ``widths[i]`` (index 0 = unpruned = ``base``);
    ``kept[label][i]`` the channels it keeps there. ``pairs`` (not cached: derived by the search) are
    the interactions of layers between two groups, ``(in_label, out_label, cost)``: such a layer's cost
    scales with the product of both widths, which the per-group savings count twice.
    """

    key: dict[str, Any]
    base: float
    widths: list[float]
    kept: dict[str, list[int]]
    costs: dict[str, list[float]]
    measured_s: float = 0.0
    cached: bool = False
    path: str | None = None
    pairs: list[tuple[str, str, float]] = dataclasses.field(default_factory=list)
    # what the end-to-end measurements say the table's savings are worth (1: as measured per group)
    scale: float = 1.0

    def saving(self, label: str, index: int) -> float:
        return self.base - self.costs[label][index]

    def removed(self, label: str, index: int) -> float:
        """Share of group ``label``'s channels removed at width index ``index``."""
        return 1.0 - self.kept[label][index] / self.kept[label][0]

    def predict(self, state: Mapping[str, int]) -> float:
        """The cost with groups at width indices ``state`` (absent groups unpruned): the unpruned cost minus
        every group's measured saving, plus what a layer between two pruned groups was counted twice for
        (``cost * removed_in * removed_out``); the net saving times ``scale``."""
        saved = sum(self.saving(label, index) for label, index in state.items())
        for a, b, cost in self.pairs:
            if state.get(a) and state.get(b):
                saved -= cost * self.removed(a, state[a]) * self.removed(b, state[b])
        return self.base - self.scale * saved

    def to_dict(self) -> dict[str, Any]:
        return {
            k: v for k, v in dataclasses.asdict(self).items() if k not in ("cached", "path", "pairs", "scale")
        }


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/netcompress/cost_tables`` (``~/.cache/netcompress/cost_tables``)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "netcompress" / "cost_tables"


def table_key(
    model: nn.Module, example_inputs: Any, spec: MeasureSpec, kept: Mapping[str, Sequence[int]]
) -> dict[str, Any]:
    """Everything a cost table depends on; its hash names the cache file."""
    key: dict[str, Any] = {"version": TABLE_VERSION, "target": spec.target, **_versions()}
    if spec.target == "latency":
        key.update(runtime=spec.runtime, threads=spec.threads, batch_size=spec.batch_size, cpu=cpu_name())
    else:
        key.update(ship_form=spec.ship_form)
    key.update(structure=structure_hash(model, example_inputs), kept={k: list(v) for k, v in kept.items()})
    return key


def cost_table(
    model: nn.Module,
    example_inputs: Any,
    variant: Callable[[str, int], nn.Module],
    spec: MeasureSpec,
    *,
    kept: Mapping[str, Sequence[int]],
    widths: Sequence[float],
    cache_dir: str | os.PathLike | None = None,
) -> CostTable:
    """The cost table of ``model`` (cached): ``variant(label, i)`` is the model with group ``label`` at
    ``widths[i]`` (keeping ``kept[label][i]`` channels); widths that keep the same count share a measurement.

    Example:
        >>> table = cost_table(model, x, variant, spec, kept={"conv1": [16, 12, 8, 4]}, widths=[1, .75, .5, .25])
        >>> table.cached, table.costs["conv1"]
    """
    key = table_key(model, example_inputs, spec, kept)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = path / f"{spec.target}-{digest}.json"
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
            if saved.get("key") == key:
                return CostTable(**saved, cached=True, path=str(path))
        except (OSError, ValueError, TypeError):
            pass  # unreadable or stale: measured again and overwritten
    started = time.perf_counter()
    timed: dict[str, tuple[float, list[float]]] = {}  # label -> (its own base timing, timing per width)
    for label, counts in kept.items():
        models = {"base": model}
        for index, count in enumerate(counts):
            if index and count not in counts[:index]:
                models[str(index)] = variant(label, index)
        values = measure(models, example_inputs, spec)
        first = {count: "base" if counts.index(count) == 0 else str(counts.index(count)) for count in counts}
        timed[label] = (values["base"], [values[first[c]] for c in counts])
    bases = [b for b, _ in timed.values()]
    base = (
        float(statistics.median(bases)) if bases else measure({"base": model}, example_inputs, spec)["base"]
    )
    # each entry is scaled by the unpruned timing of its own interleaved call (load drift cancels)
    costs = {
        label: [v if b == base else base * v / max(b, 1e-12) for v in vs] for label, (b, vs) in timed.items()
    }
    table = CostTable(
        key=key, base=base, widths=[float(w) for w in widths], kept={k: list(v) for k, v in kept.items()},
        costs=costs, measured_s=time.perf_counter() - started, path=str(path),
    )  # fmt: skip
    atomic_write_json(path, table.to_dict())
    return table
