"""Why is one int8 ONNX file slower than another? Per-node ONNX Runtime profiles and a graph diff (issue 13).

A diagnostic, not a benchmark: it runs two ONNX files at one batch size with ONNX Runtime's profiler
(``SessionOptions.enable_profiling``; the threads, inter-op setting and graph optimisation level of
``OrtModel``), sums kernel time per op type and per node, side by side, and diffs the two
ORT-optimised graphs (``optimized_model_filepath``) node by node: op type, attributes, input dtypes,
zero points and whether scales are per-tensor or per-channel, the first and last nodes.

    python benchmarks/ort_node_profile.py A.onnx B.onnx --batch 1 --runs 200
    python benchmarks/ort_node_profile.py --build /tmp/b1   # writes the EfficientNet-Lite0 int8 files
        # of benchmarks/real_models.py (netcompress W8A8 and ORT quantize_static + pre_process) there

Example:
    >>> prof = profile_file("nc_int8.onnx", torch.randn(1, 3, 64, 64), runs=100)
    >>> prof["by_op"]["QLinearConv"]["us"]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch


def session(
    path: Path, *, threads: int, profile_prefix: str | None = None, optimized: str | None = None
) -> Any:
    """An ORT session configured like ``OrtModel`` (ORT_ENABLE_ALL, intra ``threads``, inter 1)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    if optimized is not None:
        opts.optimized_model_filepath = optimized
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def profile_files(
    paths: list[Path], x: np.ndarray, *, threads: int = 2, runs: int = 200, warmup: int = 20
) -> list[dict]:
    """Profile several files at once, their runs interleaved one by one (load drift on a shared machine
    hits them alike); one :func:`summarize_profile` each."""
    with tempfile.TemporaryDirectory() as tmp:
        sessions = [
            session(p, threads=threads, profile_prefix=str(Path(tmp) / f"prof{i}"))
            for i, p in enumerate(paths)
        ]
        feeds = [{s.get_inputs()[0].name: x} for s in sessions]
        for i in range(warmup + runs):
            order = range(len(sessions)) if i % 2 == 0 else reversed(range(len(sessions)))
            for k in order:
                sessions[k].run(None, feeds[k])
        events = [json.loads(Path(s.end_profiling()).read_text()) for s in sessions]
    return [summarize_profile(ev, runs) for ev in events]


def profile_file(path: Path, x: np.ndarray, *, threads: int = 2, runs: int = 200, warmup: int = 20) -> dict:
    """Kernel microseconds per run of one file from ORT's profiler (see :func:`summarize_profile`)."""
    return profile_files([path], x, threads=threads, runs=runs, warmup=warmup)[0]


def summarize_profile(events: list[dict], runs: int) -> dict:
    """By node and by op type: the MEDIAN over the last ``runs`` of each node's kernel time (robust to
    the load of a shared machine) and the mean; the model_run median and 10th percentile."""
    per_node: dict[str, list[float]] = defaultdict(list)
    op_of: dict[str, str] = {}
    run_us: list[float] = []
    for ev in events:
        if ev.get("cat") == "Node" and ev["name"].endswith("_kernel_time"):
            node = ev["name"][: -len("_kernel_time")]
            per_node[node].append(ev["dur"])
            op_of[node] = ev["args"].get("op_name", "?")
        elif ev.get("cat") == "Session" and ev["name"] == "model_run":
            run_us.append(ev["dur"])
    by_node = {n: float(np.median(d[-runs:])) for n, d in per_node.items()}
    mean_of = {n: float(np.mean(d[-runs:])) for n, d in per_node.items()}
    by_op: dict[str, dict[str, float]] = defaultdict(lambda: {"us": 0.0, "mean_us": 0.0, "nodes": 0})
    for node, us in by_node.items():
        by_op[op_of[node]]["us"] += us
        by_op[op_of[node]]["mean_us"] += mean_of[node]
        by_op[op_of[node]]["nodes"] += 1
    measured = run_us[-runs:]
    return {
        "by_node": by_node,
        "op_of": op_of,
        "by_op": dict(by_op),
        "kernel_us": sum(by_node.values()),
        "kernel_mean_us": sum(mean_of.values()),
        "run_us_median": float(np.median(measured)),
        "run_us_p10": float(np.percentile(measured, 10)),
    }


def _attrs(node: Any) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def describe_graph(path: Path, *, threads: int = 2) -> list[dict[str, Any]]:
    """The ORT-optimised graph of ``path`` (as a session runs it): per node op type, attributes,
    zero point dtypes and values (per-tensor or per-channel), weight shape."""
    import onnx
    from onnx import numpy_helper

    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "opt.onnx")
        session(path, threads=threads, optimized=out)
        model = onnx.load(out)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    rows = []
    for node in model.graph.node:
        ins = []
        for name in node.input:
            if name in inits:
                arr = inits[name]
                if arr.size == 1:
                    value = arr.reshape(-1)[0]
                    ins.append(
                        f"{arr.dtype}={value:.6g}" if arr.dtype.kind == "f" else f"{arr.dtype}={value}"
                    )
                elif arr.dtype.kind in "iu" and arr.dtype.itemsize == 1:  # weights or zero-point arrays
                    zeros = " zero" if not arr.any() else (" nonzero" if arr.ndim == 1 else "")
                    ins.append(f"{arr.dtype}{list(arr.shape)} {arr.min()}..{arr.max()}{zeros}")
                else:
                    ins.append(f"{arr.dtype}{list(arr.shape)}")
            else:
                ins.append("<act>" if name else "")
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in _attrs(node).items()}
        rows.append(
            {"name": node.name, "op": node.op_type, "domain": node.domain, "attrs": attrs, "inputs": ins}
        )
    return rows


SKIP = ("QuantizeLinear", "DequantizeLinear", "Transpose")
# ops that only relabel a tensor's shape (no copy in ORT): compared as one kind, attributes aside
RESHAPES = {"Flatten": "Reshape", "Reshape": "Reshape"}


def _op(row: dict) -> str:
    return RESHAPES.get(row["op"], row["op"])


def _kind(text: str) -> str:
    """``int8[32, 3, 3, 3] -128..127`` -> ``int8[4d]``; ``uint8=131`` -> ``uint8``: dtype and rank only."""
    if "[" in text:
        dtype, shape = text.split("[", 1)
        return f"{dtype}[{shape.split(']')[0].count(',') + 1}d]"
    return text.split("=")[0]


def graph_differences(a: list[dict], b: list[dict]) -> list[str]:
    """Where two :func:`describe_graph` listings differ structurally: op counts, the op sequence (Q/DQ and
    Transpose aside; Flatten and Reshape alike), attributes (pads, strides, group, channels_last...), the dtype and rank of every
    input (s8 vs u8 activations, per-channel vs per-tensor scales and zero points), zero-point arrays
    that are not all zero. Empty when the graphs are the same up to the quantization values."""
    out = []
    ca, cb = Counter(_op(r) for r in a), Counter(_op(r) for r in b)
    if ca != cb:
        out.append(f"op counts {dict(ca)} vs {dict(cb)}")
    ops_a, ops_b = [r for r in a if r["op"] not in SKIP], [r for r in b if r["op"] not in SKIP]
    for i, (x, y) in enumerate(zip(ops_a, ops_b, strict=False)):
        if _op(x) != _op(y):
            out.append(f"#{i} op {x['op']} vs {y['op']}")
            continue
        if _op(x) == "Reshape":
            continue
        if x["attrs"] != y["attrs"]:
            keys = sorted(set(x["attrs"]) | set(y["attrs"]))
            diff = {
                k: (x["attrs"].get(k), y["attrs"].get(k))
                for k in keys
                if x["attrs"].get(k) != y["attrs"].get(k)
            }
            out.append(f"#{i} {x['op']} attrs {diff}")
        if [_kind(t) for t in x["inputs"]] != [_kind(t) for t in y["inputs"]]:
            out.append(f"#{i} {x['op']} inputs {x['inputs']} vs {y['inputs']}")
        nonzero = [t for t in x["inputs"] + y["inputs"] if t.endswith("nonzero")]
        if nonzero:
            out.append(f"#{i} {x['op']} zero-point arrays not all zero: {nonzero}")
    return out


def graph_notes(a: list[dict], b: list[dict]) -> list[str]:
    """What is worth seeing even when the structure is equal: first/last ops, scalar zero points, the
    value range of the int8 weights."""
    lines = [
        f"first {[r['op'] for r in a[:4]]} / {[r['op'] for r in b[:4]]}",
        f"last  {[r['op'] for r in a[-4:]]} / {[r['op'] for r in b[-4:]]}",
    ]
    for r in (a, b):
        zps = Counter(t for n in r for t in n["inputs"] if t.startswith(("uint8=", "int8=")))
        ranges = [
            t.split("] ")[1] for n in r if n["op"] == "QLinearConv" for t in n["inputs"][3:4] if "] " in t
        ]
        lo, hi = min(int(t.split("..")[0]) for t in ranges), max(int(t.split("..")[1]) for t in ranges)
        lines.append(f"scalar zero points {dict(zps.most_common(5))}; QLinearConv weights {lo}..{hi}")
    return lines


def side_by_side(pa: dict, pb: dict, names: tuple[str, str]) -> list[str]:
    """Per-op-type table: nodes and mean microseconds per run in each file."""
    ops = sorted(set(pa["by_op"]) | set(pb["by_op"]), key=lambda o: -(pa["by_op"].get(o, {}).get("us", 0)))
    a, b = names
    lines = [
        f"| op | nodes {a} | median us {a} | mean us {a} | nodes {b} | median us {b} | mean us {b} | {a}/{b} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    empty = {"us": 0.0, "mean_us": 0.0, "nodes": 0}
    for op in ops:
        ra, rb = pa["by_op"].get(op, empty), pb["by_op"].get(op, empty)
        ratio = f"{ra['us'] / rb['us']:.3f}" if rb["us"] else "-"
        lines.append(
            f"| {op} | {ra['nodes']} | {ra['us']:.1f} | {ra['mean_us']:.1f} | {rb['nodes']} | {rb['us']:.1f} | "
            f"{rb['mean_us']:.1f} | {ratio} |"
        )
    ka, kb = pa["kernel_us"], pb["kernel_us"]
    lines.append(
        f"| all kernels | | {ka:.1f} | {pa['kernel_mean_us']:.1f} | | {kb:.1f} | {pb['kernel_mean_us']:.1f} | {ka / kb:.3f} |"
    )
    for key in ("run_us_p10", "run_us_median"):
        ra, rb = pa[key], pb[key]
        lines.append(f"| model_run {key[7:]} | | {ra:.1f} | | | {rb:.1f} | | {ra / rb:.3f} |")
    return lines


def conv_pairs(pa: dict, pb: dict) -> list[str]:
    """QLinearConv nodes of both files in execution order with their times (the same convs, in order)."""
    ca = [n for n in pa["by_node"] if pa["op_of"][n] == "QLinearConv"]
    cb = [n for n in pb["by_node"] if pb["op_of"][n] == "QLinearConv"]
    lines = ["| # | A us | B us | A node | B node |", "|---:|---:|---:|---|---|"]
    for i, (x, y) in enumerate(zip(ca, cb, strict=False)):
        lines.append(f"| {i} | {pa['by_node'][x]:.1f} | {pb['by_node'][y]:.1f} | {x} | {y} |")
    return lines


def ort_quantize_pre_processed(float_path: Path, out: Path, calib: list[np.ndarray]) -> None:
    """ONNX Runtime's quantizer as the benchmark's peer row runs it (``benchmarks/ort_peers.py``:
    ``quant_pre_process``, then QDQ per-channel ``quantize_static``) on the images ``calib``."""
    try:
        from benchmarks.ort_peers import ort_quantize_static
    except ModuleNotFoundError:
        from ort_peers import ort_quantize_static
    ort_quantize_static(float_path, out, [{"input": x} for x in calib], pre_process=True)


def build(folder: Path, argv: list[str]) -> None:
    """The netcompress W8A8 and ORT quantize_static + pre_process files of benchmarks/real_models.py
    (same flags, same cached head, same calibration images) in ``folder``, with ``example.npy``."""
    try:
        from benchmarks import real_models as rm
        from benchmarks.real_model_helpers import batches, prepare
    except ModuleNotFoundError:
        import real_models as rm
        from real_model_helpers import batches, prepare
    from netcompress.export.onnx import export_onnx

    args = rm.parse(argv)
    torch.set_num_threads(args.torch_threads)
    data = rm.load_task(args)
    model, _ = rm.fine_tuned_model(args, data)
    calib = list(batches(data["calib_x"], args.resolution, size=32))
    example = prepare(data["test_x"][:1], args.resolution)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "example.npy", example.numpy())
    export_onnx(model, folder / "float.onnx", example, check=False)
    qmodel, _ = rm.netcompress_int8(model, calib, args)
    export_onnx(qmodel, folder / "nc_int8.onnx", example, int8=True, check=False)
    ort_quantize_pre_processed(folder / "float.onnx", folder / "ort_pre.onnx", [x.numpy() for x in calib])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--build"]:  # --build DIR [real_models.py flags]
        build(Path(argv[1]), argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs=2, type=Path)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--input", type=Path, default=None, help=".npy batch-1 input (--build writes example.npy)")
    args = p.parse_args(argv)
    a, b = args.files
    if args.input is not None:
        x = np.load(args.input).repeat(args.batch, 0)
    else:
        x = np.random.default_rng(0).standard_normal((args.batch, 3, args.resolution, args.resolution))
        x = x.astype(np.float32)
    names = (a.stem, b.stem)
    pa, pb = profile_files([a, b], x, threads=args.threads, runs=args.runs)
    print("\n".join(side_by_side(pa, pb, names)))
    print()
    print("\n".join(conv_pairs(pa, pb)))
    print()
    ga, gb = describe_graph(a, threads=args.threads), describe_graph(b, threads=args.threads)
    print("\n".join(graph_differences(ga, gb) or ["optimised graphs: no structural difference"]))
    print("\n".join(graph_notes(ga, gb)))


if __name__ == "__main__":
    main(sys.argv[1:])
