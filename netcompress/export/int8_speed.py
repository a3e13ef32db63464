"""Is the int8 file faster? Float and int8 timed in the same runtime, whole model and layer by layer.

Smaller is not faster: on a machine without VNNI, or for a tiny layer where quantizing the input and
dequantizing the output cost more than the integer kernel saves, the int8 form runs slower than
float. :func:`time_int8_vs_float` exports both models to ONNX and times them in ONNX Runtime, in
interleaved rounds (:func:`netcompress.evaluation.latency.time_alternating`), and states the speed-up.
:func:`layer_speeds` does the same for every quantized layer on its own (with the activation
quantizers around it, on the input it sees in the model), and :func:`slower_in_int8` names the layers
whose int8 form was measured slower: the ones a per-layer float fallback keeps float.

A layer timed alone misses what its neighbours pay (a float layer between int8 ones adds a
dequantize before it and a quantize after), so the whole-model speed-up is measured again after
the fallback.

Example:
    >>> speed = time_int8_vs_float(model, qmodel, example_inputs, threads=1)
    >>> speed["speedup"], speed["int8_ms"], speed["float_ms"]
    >>> slow = slower_in_int8(layer_speeds(qmodel, example_inputs)["layers"])
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from netcompress.core.inputs import batch_size_of, call_model, input_tensors
from netcompress.evaluation.latency import time_alternating
from netcompress.export.onnx import INT8_OPS, OrtModel, export_onnx

# timer(models, inputs, threads=..., rounds=...) -> {name: ms}; tests pass a fake one
Timer = Callable[..., dict[str, float]]


def ort_timer(
    models: Mapping[str, nn.Module], inputs: Any, *, threads: int = 1, rounds: int = 3
) -> dict[str, float]:
    """Median ms per forward of each model on a batch shaped like ``inputs`` (interleaved rounds)."""
    batch = batch_size_of(inputs)
    rows = time_alternating(dict(models), inputs, batch_sizes=(batch,), rounds=rounds, threads=threads)
    key = "latency_ms" if batch == 1 else f"latency_b{batch}_ms"
    return {name: float(row[key]) for name, row in rows.items()}


def _timer(timer: Timer | None) -> Timer:
    return timer if timer is not None else ort_timer


def time_int8_vs_float(
    float_model: nn.Module,
    int8_model: nn.Module,
    example_inputs: Any,
    *,
    folder: str | Path | None = None,
    threads: int = 1,
    rounds: int = 3,
    timer: Timer | None = None,
) -> dict[str, Any]:
    """Export ``float_model`` and the fake-quantized ``int8_model`` to ONNX and time both in ONNX Runtime.

    Returns ``float_ms``, ``int8_ms``, ``speedup`` (float / int8: above 1 the int8 file is faster),
    ``faster``, the two file sizes, the int8 kernels found, ``batch_size`` and ``threads``. Files go to
    ``folder`` (``float.onnx``, ``int8.onnx``) or a temporary folder.

    Example:
        >>> time_int8_vs_float(model, nc.quantize(model, loader), x)["speedup"]
    """
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(folder) if folder is not None else Path(tmp)
        fsum = export_onnx(float_model, where / "float.onnx", example_inputs, check=False)
        qsum = export_onnx(int8_model, where / "int8.onnx", example_inputs, int8=True, check=False)
        runners = {
            "float": OrtModel(fsum["path"], threads=threads),
            "int8": OrtModel(qsum["path"], threads=threads),
        }
        ms = _timer(timer)(runners, example_inputs, threads=threads, rounds=rounds)
    return {
        "float_ms": ms["float"],
        "int8_ms": ms["int8"],
        "speedup": ms["float"] / ms["int8"] if ms["int8"] > 0 else float("inf"),
        "faster": ms["int8"] < ms["float"],
        "float_bytes": fsum["size_bytes"],
        "int8_bytes": qsum["size_bytes"],
        "int8_ops": qsum["int8_op_counts"],
        "batch_size": batch_size_of(example_inputs),
        "threads": threads,
    }


def capture_layer_inputs(qmodel: nn.Module, example_inputs: Any) -> dict[str, torch.Tensor]:
    """The first positional input each quantized layer receives on ``example_inputs`` (by name)."""
    from netcompress.quantization.modules import quant_layers

    seen: dict[str, torch.Tensor] = {}

    def keeper(name: str) -> Callable[..., None]:
        def keep(module: nn.Module, args: tuple[Any, ...]) -> None:
            if name not in seen and args and isinstance(args[0], torch.Tensor):
                seen[name] = args[0].detach().clone()

        return keep

    hooks = [layer.register_forward_pre_hook(keeper(name)) for name, layer in quant_layers(qmodel).items()]
    try:
        with torch.no_grad():
            call_model(qmodel.eval(), example_inputs)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _graph_neighbours(gm: fx.GraphModule, name: str) -> tuple[list[nn.Module], list[nn.Module]]:
    """The activation quantizer feeding layer ``name`` and the ReLU/quantizer after it, in a traced model."""
    from netcompress.quantization.fake_quant import FakeQuantize
    from netcompress.quantization.tracing import is_pass_through, is_relu, module_of

    node = next((n for n in gm.graph.nodes if n.op == "call_module" and n.target == name), None)
    if node is None:
        return [], []
    before: list[nn.Module] = []
    cur = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
    while cur is not None:
        if isinstance(module_of(gm, cur), FakeQuantize):
            before.append(copy.deepcopy(module_of(gm, cur)))
            break
        if not (is_pass_through(gm, cur) and cur.args and isinstance(cur.args[0], fx.Node)):
            break
        cur = cur.args[0]
    after: list[nn.Module] = []
    end = node
    if len(end.users) == 1 and is_relu(gm, next(iter(end.users))):
        end = next(iter(end.users))
        after.append(nn.ReLU())
    if len(end.users) == 1 and isinstance(module_of(gm, next(iter(end.users))), FakeQuantize):
        after.append(copy.deepcopy(module_of(gm, next(iter(end.users)))))
    return before, after


def standalone_layer(qmodel: nn.Module, name: str) -> tuple[nn.Module, nn.Module]:
    """``(float_form, int8_form)`` of quantized layer ``name``, each runnable on the layer's input.

    The int8 form carries the activation quantizers that surround the layer in ``qmodel`` (its own
    input quantizer, or in a traced model the quantizer feeding it and the ReLU + quantizer after it),
    so ONNX Runtime fuses it as it would in the whole model; the float form is the original layer
    (and the ReLU).
    """
    qlayer = copy.deepcopy(qmodel.get_submodule(name)).eval()
    before, after = _graph_neighbours(qmodel, name) if isinstance(qmodel, fx.GraphModule) else ([], [])
    relu = [m for m in after if isinstance(m, nn.ReLU)]
    float_form = nn.Sequential(copy.deepcopy(qlayer.layer), *relu).eval()
    int8_form = nn.Sequential(*before, qlayer, *after).eval() if before or after else qlayer
    return float_form, int8_form


def layer_speeds(
    qmodel: nn.Module,
    example_inputs: Any,
    *,
    threads: int = 1,
    rounds: int = 3,
    timer: Timer | None = None,
) -> dict[str, Any]:
    """Every quantized layer's float and int8 forms timed in ONNX Runtime on the input it sees.

    Returns ``{"layers": {name: {"float_ms", "int8_ms", "speedup", "int8_ops"}}, "skipped": {name: reason}}``
    (a layer whose int8 form does not export is skipped with the error).

    Example:
        >>> layer_speeds(qmodel, x)["layers"]["features.0"]["speedup"]
    """
    from netcompress.quantization.modules import quant_layers

    inputs = capture_layer_inputs(qmodel, example_inputs)
    layers: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for index, name in enumerate(quant_layers(qmodel)):
            if name not in inputs:
                skipped[name] = "not reached by the example inputs"
                continue
            float_form, int8_form = standalone_layer(qmodel, name)
            x = inputs[name]
            try:
                fsum = export_onnx(float_form, Path(tmp) / f"{index}_float.onnx", x, check=False)
                qsum = export_onnx(int8_form, Path(tmp) / f"{index}_int8.onnx", x, int8=True, check=False)
            except Exception as exc:  # noqa: BLE001 -- any exporter failure: the layer is reported, not timed
                skipped[name] = f"{type(exc).__name__}: {exc}"
                continue
            runners = {
                "float": OrtModel(fsum["path"], threads=threads),
                "int8": OrtModel(qsum["path"], threads=threads),
            }
            ms = _timer(timer)(runners, x, threads=threads, rounds=rounds)
            layers[name] = {
                "float_ms": ms["float"],
                "int8_ms": ms["int8"],
                "speedup": ms["float"] / ms["int8"] if ms["int8"] > 0 else float("inf"),
                "int8_ops": {k: v for k, v in qsum["op_counts"].items() if k in INT8_OPS},
                "input_shape": list(input_tensors(x)[0].shape),
            }
    return {"layers": layers, "skipped": skipped}


def slower_in_int8(layers: Mapping[str, Mapping[str, float]], *, margin: float = 0.0) -> list[str]:
    """The layers whose int8 form took longer than ``(1 + margin)`` times their float form.

    Example:
        >>> slower_in_int8({"a": {"float_ms": 1.0, "int8_ms": 2.0}, "b": {"float_ms": 2.0, "int8_ms": 1.0}})
        ['a']
    """
    return [n for n, t in layers.items() if t["int8_ms"] > (1.0 + margin) * t["float_ms"]]
