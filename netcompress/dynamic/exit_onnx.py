"""Early-exit models in ONNX Runtime: one ONNX file per segment, routed by a small Python wrapper.

One traced ONNX graph cannot hold per-sample routing (the batch shrinks by data-dependent
amounts), so :func:`export_early_exit_onnx` writes ``segment<k>.onnx`` for each segment, each
computing its exit's logits and the state the next segment needs (batch axis dynamic), plus
``early_exit.json`` (criterion, threshold, exit names, each file's inputs and outputs).
:class:`OrtEarlyExit` loads that folder into ONNX Runtime sessions and routes like the PyTorch
model: after each segment the confident samples leave and only the rest run the next file.

Example::

    summary = export_early_exit_onnx(ee, "ee_onnx", torch.randn(1, 3, 32, 32))
    ort_ee = OrtEarlyExit("ee_onnx")                 # threshold and criterion from the export
    logits = ort_ee(images); ort_ee.last_exit_counts
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from netcompress.core.errors import ConfigError, ExportMismatchError, UnsupportedModelError
from netcompress.core.io import atomic_write_json
from netcompress.dynamic.early_exit import EarlyExitModel, as_early_exit
from netcompress.dynamic.exit_criteria import EXIT_CRITERIA, per_exit_thresholds
from netcompress.export.onnx import compare_outputs, op_counts
from netcompress.export.ort_model import ort_session

MANIFEST = "early_exit.json"
FORMAT = "netcompress-early-exit-onnx"
FORMAT_VERSION = 1


class _SegmentWithExit(nn.Module):
    """Segment ``index`` and its exit: ``(*state, *carry) -> (logits, *next state, *next carry)`` (the
    last: logits). The carry (earlier heads' raw logits, for cascade heads or an exit ensemble) follows
    the state, so the runtime wrapper hands every output but the logits to the next file as it is."""

    def __init__(self, model: EarlyExitModel, index: int, state_size: int) -> None:
        super().__init__()
        self.model, self.index, self.state_size = model, index, state_size

    def forward(self, *inputs: torch.Tensor) -> Any:
        state, carry = inputs[: self.state_size], inputs[self.state_size :]
        logits, _, out, carry = self.model.step(self.index, state, carry)
        return logits if self.index == len(self.model.heads) else (logits, *out, *carry)


def _state_sizes(model: EarlyExitModel, example: torch.Tensor) -> list[int]:
    sizes, state = [], (example,)
    with torch.no_grad():
        for index in range(model.num_exits):
            state = model.run_segment(index, state)
            sizes.append(len(state))
    return sizes


def _carry_size(model: EarlyExitModel, index: int) -> int:
    """How many raw-logit tensors segment ``index`` receives (every earlier head's, when carried)."""
    return index if model.carries_logits else 0


def export_early_exit_onnx(
    model: EarlyExitModel,
    folder: str | os.PathLike,
    example_inputs: torch.Tensor,
    *,
    opset: int = 17,
    check: bool = True,
    check_batch_size: int = 8,
    tolerance: float = 1e-4,
) -> dict[str, Any]:
    """Write one ONNX file per segment and ``early_exit.json`` into ``folder``; return a summary.

    The manifest keeps the model's criterion and threshold (None: everything runs to the last
    exit). ``check`` runs every exit's logits in ONNX Runtime against PyTorch on the example and a
    random batch and raises :class:`ExportMismatchError` (naming the exit) above ``tolerance``
    relative to the largest output. A segment the exporter cannot trace is refused by name.

    Example:
        >>> export_early_exit_onnx(ee, "ee_onnx", torch.randn(1, 1, 8, 8))["check"][0]["max_abs_diff"]
    """
    model = as_early_exit(model)
    if getattr(model, "exit_gate", None) is not None:
        raise UnsupportedModelError(
            "export_early_exit_onnx: this model routes by a learned exit gate, which OrtEarlyExit cannot "
            "run; route it in PyTorch, or set_gate(None, None) and export a criterion policy"
        )
    if not isinstance(example_inputs, torch.Tensor):
        raise ConfigError(f"example_inputs must be one tensor, got {type(example_inputs).__name__}")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"export folder is a file: {folder}")
    folder.mkdir(parents=True, exist_ok=True)
    work = copy.deepcopy(model).eval()
    example = example_inputs[:1]
    sizes = _state_sizes(work, example)
    files, state, carry = [], (example,), ()
    for index in range(work.num_exits):
        last = index == len(work.heads)
        inputs = ["input"] if index == 0 else [f"in{i}" for i in range(sizes[index - 1])]
        inputs += [f"carry_in{i}" for i in range(_carry_size(work, index))]
        outputs = ["logits"] + ([] if last else [f"out{i}" for i in range(sizes[index])])
        outputs += [] if last else [f"carry_out{i}" for i in range(_carry_size(work, index + 1))]
        name = f"segment{index}.onnx"
        where = f"segment {index} (up to exit {work.exit_names[index]!r})" if not last else "the last segment"
        segment = _SegmentWithExit(work, index, len(state)).eval()
        _export_one(segment, (*state, *carry), folder / name, inputs, outputs, opset, where)
        files.append(
            {"file": name, "inputs": inputs, "outputs": outputs, "op_counts": op_counts(folder / name)}
        )
        with torch.no_grad():
            _, _, state, carry = work.step(index, state, carry)
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "criterion": work.criterion,
        "threshold": work.threshold,
        "exit_names": list(work.exit_names),
        "segments": files,
    }
    atomic_write_json(folder / MANIFEST, manifest)
    summary: dict[str, Any] = {"folder": str(folder), **manifest}
    summary["size_bytes"] = sum((folder / f["file"]).stat().st_size for f in files)
    if check:
        summary["check"] = check_early_exit_onnx(
            work, folder, example, batch_size=check_batch_size, tolerance=tolerance
        )
    return summary


def _export_one(module, state, path: Path, inputs, outputs, opset: int, where: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp.onnx")
    os.close(fd)
    try:
        with torch.no_grad():
            torch.onnx.export(
                module,
                tuple(state),
                tmp,
                dynamo=False,
                opset_version=opset,
                input_names=inputs,
                output_names=outputs,
                dynamic_axes={n: {0: "batch"} for n in [*inputs, *outputs]},
            )
        os.replace(tmp, path)
    except Exception as exc:
        raise UnsupportedModelError(
            f"cannot export {where} to ONNX ({type(exc).__name__}: {str(exc).splitlines()[0][:300]})"
        ) from exc
    finally:
        Path(tmp).unlink(missing_ok=True)


def check_early_exit_onnx(
    model: EarlyExitModel,
    folder: str | os.PathLike,
    example_inputs: torch.Tensor,
    *,
    batch_size: int = 8,
    tolerance: float = 1e-4,
) -> list[dict[str, Any]]:
    """Every exit's logits from ONNX Runtime against PyTorch's: one comparison row per exit."""
    model = as_early_exit(model)
    runner = OrtEarlyExit(folder)
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([example_inputs[:1], torch.randn((batch_size, *example_inputs.shape[1:]), generator=gen)])
    with torch.no_grad():
        reference = model.eval().forward_all(x)
    rows = []
    for index, (ref, got) in enumerate(zip(reference, runner.forward_all(x))):
        row = compare_outputs(ref, got)
        peak = float(ref.abs().max()) if ref.numel() else 0.0
        row["max_rel_diff"] = row["max_abs_diff"] / max(peak, 1e-12)
        if row["max_rel_diff"] > tolerance:
            raise ExportMismatchError(
                f"{folder}: exit {index} in ONNX Runtime differs from PyTorch by {row['max_abs_diff']:.4g} "
                f"({row['max_rel_diff']:.2%} of the largest logit; tolerance {tolerance:.2%})"
            )
        rows.append(row)
    return rows


class OrtEarlyExit:
    """An exported early-exit folder run by ONNX Runtime, routing samples like the PyTorch model.

    ``criterion``/``threshold`` default to the exported ones (``threshold=None`` runs every sample
    to the last exit). Calling it returns the logits in input order and sets
    ``last_exit_counts`` / ``last_exit_index``.

    Example:
        >>> ort_ee = OrtEarlyExit("ee_onnx", threshold=0.9)
        >>> ort_ee(torch.randn(16, 1, 8, 8)).shape, ort_ee.last_exit_counts
    """

    _UNSET: Any = object()

    def __init__(
        self,
        folder: str | os.PathLike,
        *,
        criterion: str | None = None,
        threshold: Any = _UNSET,
        threads: int = 1,
    ) -> None:
        self.folder = Path(folder)
        manifest = _read_manifest(self.folder)
        self.exit_names = list(manifest["exit_names"])
        self.criterion = criterion or manifest["criterion"]
        if self.criterion not in EXIT_CRITERIA.names():
            raise ConfigError(f"criterion {self.criterion!r} is not one of {EXIT_CRITERIA.names()}")
        self.threshold = manifest["threshold"] if threshold is self._UNSET else threshold
        self.segments = manifest["segments"]
        # ort_session: a segment whose int8 file keeps layers float is run with them float
        self.sessions = [ort_session(self.folder / s["file"], threads=threads) for s in self.segments]
        # a state a segment reads only for its dtype or device is no input of its graph: it is not fed
        self._declared = [{i.name for i in session.get_inputs()} for session in self.sessions]
        self.last_exit_counts: list[int] = []
        self.last_exit_index: torch.Tensor | None = None

    @property
    def num_exits(self) -> int:
        return len(self.sessions)

    def _run(self, index: int, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        spec = self.segments[index]
        feed = {name: value for name, value in zip(spec["inputs"], state) if name in self._declared[index]}
        out = self.sessions[index].run(spec["outputs"], feed)
        return out[0], list(out[1:])

    def forward_all(self, x: torch.Tensor | np.ndarray) -> list[torch.Tensor]:
        """Every exit's logits for every sample."""
        state, outputs = [_numpy(x)], []
        for index in range(self.num_exits):
            logits, state = self._run(index, state)
            outputs.append(torch.from_numpy(logits))
        return outputs

    def __call__(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        state = [_numpy(x)]
        count = state[0].shape[0]
        remaining = np.arange(count)
        exit_index = np.full(count, self.num_exits - 1, dtype=np.int64)
        result: np.ndarray | None = None
        confident = EXIT_CRITERIA.get(self.criterion)
        for index in range(self.num_exits):
            logits, state = self._run(index, state)
            if result is None:
                result = np.empty((count, *logits.shape[1:]), dtype=logits.dtype)
            if index == self.num_exits - 1 or self.threshold is None:
                if index == self.num_exits - 1:
                    result[remaining] = logits
                continue
            limit = per_exit_thresholds(self.threshold, self.num_exits - 1)[index]
            done = confident(torch.from_numpy(logits), limit).numpy()
            result[remaining[done]] = logits[done]
            exit_index[remaining[done]] = index
            if done.all():
                break
            if done.any():  # only the undecided samples run the next file
                state = [s[~done] for s in state]
                remaining = remaining[~done]
        self.last_exit_index = torch.from_numpy(exit_index)
        self.last_exit_counts = np.bincount(exit_index, minlength=self.num_exits).tolist()
        assert result is not None
        return torch.from_numpy(result)


def _numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(
        x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float32
    )


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        raise ConfigError(f"{folder} holds no {MANIFEST}: not an export_early_exit_onnx folder")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from exc
    if manifest.get("format") != FORMAT or manifest.get("version") != FORMAT_VERSION:
        raise ConfigError(
            f"{path}: format {manifest.get('format')!r} version {manifest.get('version')!r}; "
            f"expected {FORMAT!r} version {FORMAT_VERSION}"
        )
    for spec in manifest["segments"]:
        if not (folder / spec["file"]).is_file():
            raise ConfigError(f"{folder}: segment file {spec['file']!r} is missing")
    return manifest
