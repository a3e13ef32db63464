"""Dynamic int8 on a Linear-heavy model: ORT float vs netcompress dynamic int8 vs ORT ``quantize_dynamic``.

netcompress's ``quantize(mode="dynamic")`` (per-channel symmetric int8 weights, activations uint8
asymmetric per batch) exported with ``export_onnx(int8=True)`` runs ONNX Runtime's integer kernels
(``DynamicQuantizeMatMul`` after ORT's fusion). The peer is ``onnxruntime.quantization.quantize_dynamic``
(int8 weights, per-tensor by default) on the same float ONNX file. All three run in ONNX Runtime,
one thread, timed in interleaved rounds (``time_alternating``) at batch 1 and 32.

Agreement is measured against ORT float on 512 random inputs: top-1 agreement of the outputs
(``argmax`` over the last dimension) and mean cosine similarity; ``vs PyTorch`` is the max abs
difference between our ONNX file and the PyTorch dynamic-quant model over the largest output.

    python benchmarks/dynamic_int8.py                 # 4-layer MLP 512-2048-2048-2048-1000
    python benchmarks/dynamic_int8.py --model bert    # transformers BertModel, small config (if installed)
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from netcompress.evaluation import time_alternating
from netcompress.export.onnx import OrtModel, export_onnx, op_counts
from netcompress.quantization import quantize


def mlp() -> tuple[nn.Module, torch.Tensor]:
    layers = [nn.Linear(512, 2048), nn.ReLU(), nn.Linear(2048, 2048), nn.ReLU()]
    layers += [nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 1000)]
    return nn.Sequential(*layers).eval(), torch.randn(1, 512)


class BertEmbeddingsIn(nn.Module):
    """BertModel on float token embeddings (so the ONNX input is one float tensor); mean-pooled output."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        cfg = BertConfig(
            hidden_size=256,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=1024,
            vocab_size=1000,
        )
        self.bert = BertModel(cfg, add_pooling_layer=False).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bert(inputs_embeds=x).last_hidden_state.mean(dim=1)


def agreement(ref: torch.Tensor, got: torch.Tensor) -> dict[str, float]:
    return {
        "top1": float((ref.argmax(-1) == got.argmax(-1)).float().mean()),
        "cosine": float(F.cosine_similarity(ref.flatten(1), got.flatten(1)).mean()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("mlp", "bert"), default="mlp")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model, example = mlp() if args.model == "mlp" else (BertEmbeddingsIn(), torch.randn(1, 64, 256))
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        float_path, ours_path, ort_path = (
            folder / "float.onnx",
            folder / "nc_int8.onnx",
            folder / "ort_int8.onnx",
        )
        export_onnx(model, float_path, example)
        qmodel = quantize(model, mode="dynamic")
        summary = export_onnx(qmodel, ours_path, example, int8=True)
        quantize_dynamic(str(float_path), str(ort_path), weight_type=QuantType.QInt8)
        runners = {
            "ORT float": OrtModel(float_path, threads=args.threads),
            "netcompress dynamic int8": OrtModel(ours_path, threads=args.threads),
            "ORT quantize_dynamic": OrtModel(ort_path, threads=args.threads),
        }
        gen = torch.Generator().manual_seed(1)
        data = torch.randn((512, *example.shape[1:]), generator=gen)
        outs = {name: torch.cat([r(x) for x in data.split(64)]) for name, r in runners.items()}
        with torch.no_grad():
            ref_pt = torch.cat([qmodel(x) for x in data.split(64)])
        vs_pt = float((outs["netcompress dynamic int8"] - ref_pt).abs().max() / ref_pt.abs().max())
        timing = time_alternating(
            runners, example, batch_sizes=(1, 32), rounds=args.rounds, threads=args.threads
        )
        sizes = {
            "ORT float": float_path,
            "netcompress dynamic int8": ours_path,
            "ORT quantize_dynamic": ort_path,
        }
        print(
            f"model: {args.model}, input {tuple(example.shape[1:])}, threads {args.threads}, rounds {args.rounds}"
        )
        print(
            f"machine: {platform.processor() or platform.machine()}, {platform.platform()}, python {sys.version.split()[0]}"
        )
        print(
            f"netcompress int8 ops: {summary['int8_op_counts']}; ORT quantize_dynamic ops: "
            f"{ {k: v for k, v in op_counts(ort_path).items() if 'Integer' in k or 'Dynamic' in k} }"
        )
        print(
            f"netcompress file vs PyTorch dynamic-quant model: max |diff| = {vs_pt:.2e} of the largest output"
        )
        f32 = timing["ORT float"]
        print(
            "\n| runtime | file KB | x float | b1 ms | b1 vs float | b32 ms | b32 vs float | top-1 agr. | cosine |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name in runners:
            size = sizes[name].stat().st_size
            t = timing[name]
            agr = agreement(outs["ORT float"], outs[name])
            print(
                f"| {name} | {size / 1024:,.0f} | {size / sizes['ORT float'].stat().st_size:.2f} "
                f"| {t['latency_ms']:.3f} | {t['latency_ms'] / f32['latency_ms']:.0%} "
                f"| {t['latency_b32_ms']:.2f} | {t['latency_b32_ms'] / f32['latency_b32_ms']:.0%} "
                f"| {agr['top1']:.1%} | {agr['cosine']:.4f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
