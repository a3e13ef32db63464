"""An ONNX file run by ONNX Runtime as an ``nn.Module`` (:class:`OrtModel`), and the session it uses.

Example:
    >>> logits = OrtModel("model_int8.onnx")(torch.randn(4, 3, 32, 32))
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netcompress.core.errors import CheckpointError, ConfigError
from netcompress.export.onnx_inputs import ort_feed

# metadata key of an int8 file that holds float layers ONNX Runtime would quantize at load (onnx_kept_float.py)
KEPT_FLOAT_KEY = "netcompress.kept_float"
# the ONNX Runtime graph transformer that would quantize a kept-float layer again at load (onnx_kept_float.py)
KEPT_FLOAT_DISABLES = "WeightBiasQuantization"


def ort_session(
    path: str | os.PathLike,
    *,
    threads: int = 1,
    optimized_path: str | None = None,
    spinning: bool = True,
    disabled_optimizers: list[str] | None = None,
) -> Any:
    """An ONNX Runtime CPU session (``threads`` intra-op); with ``optimized_path`` it also writes the
    extended-level optimised graph there. ``spinning=False`` makes the intra-op threads sleep between
    runs instead of spinning (ORT's ``session.intra_op.allow_spinning``; see :class:`OrtModel`).
    ``disabled_optimizers``: graph transformers by name that ONNX Runtime must not apply. A file whose
    metadata names layers kept float (:data:`KEPT_FLOAT_KEY`, written by ``export_onnx(int8=True)``) is run
    with ONNX Runtime's ``WeightBiasQuantization`` off: it would quantize those float layers again at load."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if optimized_path is not None:
        # extended level: QDQ fusion and constant folding of weight QDQ into int8 initializers,
        # but no hardware-specific layout transforms, so the saved file stays portable
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = optimized_path
    extra = {"disabled_optimizers": list(disabled_optimizers)} if disabled_optimizers else {}
    session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"], **extra)
    if optimized_path is None and KEPT_FLOAT_KEY in session.get_modelmeta().custom_metadata_map:
        disabled = sorted({*(disabled_optimizers or ()), KEPT_FLOAT_DISABLES})
        if disabled != sorted(disabled_optimizers or ()):
            session = ort.InferenceSession(
                str(path), sess_options=opts, providers=["CPUExecutionProvider"], disabled_optimizers=disabled
            )
    return session


class OrtModel(nn.Module):
    """An ONNX file run by ONNX Runtime, callable like a model: ``tensor -> tensor``.

    Being an ``nn.Module`` (without parameters) it plugs into ``netcompress.evaluation`` for
    accuracy and latency. The session is rebuilt after unpickling or deepcopy.

    ``spinning`` (default True, ONNX Runtime's default) lets the intra-op threads spin for work after
    a run. Several sessions in one process timed in turn should not spin: each session's spinning
    pool then steals the cores of the next one (EfficientNet-Lite0 at batch 16 on 2 cores: 9.4 ms
    interleaved with two other sessions vs 5.6 ms alone; 6.5 ms interleaved without spinning, the
    int8 / float ratio then as measured alone). :func:`~netcompress.evaluation.time_rounds` asks for
    :meth:`without_spinning` copies when it times more than one model.

    Example:
        >>> ort_model = OrtModel("model_int8.onnx"); logits = ort_model(torch.randn(4, 3, 32, 32))
    """

    def __init__(self, path: str | os.PathLike, *, threads: int = 1, spinning: bool = True) -> None:
        super().__init__()
        self.path = str(path)
        self.threads = threads
        self.spinning = spinning
        if not Path(self.path).is_file():
            raise CheckpointError(f"ONNX file not found: {self.path}")
        self._session = None

    @property
    def session(self) -> Any:
        if self._session is None:
            try:
                self._session = ort_session(self.path, threads=self.threads, spinning=self.spinning)
            except Exception as exc:  # onnxruntime raises its own exception types
                raise CheckpointError(f"ONNX Runtime cannot load {self.path}: {exc}") from exc
        return self._session

    @property
    def size_bytes(self) -> int:
        return Path(self.path).stat().st_size

    def forward(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> Any:
        """Positional tensors feed the file's inputs in order, keyword tensors by name; each is
        cast to the dtype the file declares. One output comes back as a tensor, several as a tuple."""
        session = self.session
        names = [i.name for i in session.get_inputs()]
        if len(args) > len(names):
            raise ConfigError(f"{self.path} takes {len(names)} inputs {names}; got {len(args)} positional")
        feed = ort_feed(session, [*names[: len(args)], *kwargs], [*args, *kwargs.values()])
        outs = [torch.from_numpy(o) for o in session.run(None, feed)]
        return outs[0] if len(outs) == 1 else tuple(outs)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_session"] = None
        return state

    def __deepcopy__(self, memo: dict[int, Any]) -> OrtModel:
        return OrtModel(self.path, threads=self.threads, spinning=self.spinning)

    def without_spinning(self) -> OrtModel:
        """The same file in a session whose threads sleep between runs (for timing beside others)."""
        return OrtModel(self.path, threads=self.threads, spinning=False)

    def extra_repr(self) -> str:
        return f"path={self.path!r}, threads={self.threads}, spinning={self.spinning}"
