"""Issue 15, session 8: choose the ViT pruning + fine-tune recipe on the VALIDATION split (never the test set).

Same trained ``vit_tiny`` (8x8 patches, 15 epochs) and the same fine-tune budget as ``vit_pruning.py``; every
variant is pruned to 2x fewer MACs, fine-tuned for ``--finetune-epochs`` and scored on ``--val-size``
class-balanced CIFAR-10 *training* images outside the 10,000-image training subset
(``cifar_protocol.heldout_loader``). A variant is ``prune|finetune``:

- prune: ``h<heads>f<ffn>[d<hidden>]-<importance>`` (the split that ``mac_target`` scales; e.g.
  ``h.5f.5-taylor``, ``h.25f.75-wanda``, ``h.3f.6d.1-taylor``) or ``q<qk>v<v>f<ffn>-<importance>[+rec]`` (head
  dims inside every head + FFN neurons, ``prune/transformer`` ``head_dim_qk``/``head_dim_v``; e.g. ``q.5v.25f.5-taylor+rec``) or ``tp`` (Torch-Pruning at >= 2x,
  ``vit_pruning.prune_torch_pruning``) or ``none`` (the unpruned model);
- finetune: ``ce`` | ``kd<alpha>t<T>`` | ``...+hs<w>`` (TinyBERT-style hidden-state MSE to the teacher per
  layer, weight w) | ``...+at<w>`` (attention-map KL) | ``kd...+x<N>`` (KD on N extra *unlabelled* training
  images outside the subset and the validation split, ``vit_extra_data``), optionally ``@<lr>``; e.g.
  ``kd.5t2+hs1@1e-3``, ``kd.5t2+x10000@1e-3``.

    nice -n 10 timeout 900 python benchmarks/vit_variants.py --variants "h.5f.5-taylor|ce" "h.25f.75-taylor|ce"
    python benchmarks/vit_variants.py --quick      # synthetic data, seconds
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
import time
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from netcompress.distillation.hooks import SoftTargetDistillation, TeacherForward
from netcompress.distillation.transformer_hooks import TransformerDistillation
from netcompress.evaluation import evaluate
from netcompress.training import fit, seed_everything

try:
    from benchmarks import cifar_protocol as cp
    from benchmarks import vit_extra_data as xd
    from benchmarks import vit_pruning as vp
except ModuleNotFoundError:  # run as `python benchmarks/vit_variants.py`
    import cifar_protocol as cp
    import vit_extra_data as xd
    import vit_pruning as vp

PRUNE = re.compile(
    r"^(?:(?P<glob>global)|h(?P<h>[\d.]+)f(?P<f>[\d.]+)(?:d(?P<d>[\d.]+))?)-(?P<imp>[a-z]+)(?P<rec>\+rec(?:all)?)?$"
)
HEAD_DIM = re.compile(r"^q(?P<q>[\d.]+)v(?P<v>[\d.]+)f(?P<f>[\d.]+)-(?P<imp>[a-z]+)(?P<rec>\+rec)?$")
FT = re.compile(
    r"^(?P<base>ce|kd(?P<a>[\d.]+)t(?P<t>[\d.]+))(?P<extra>(?:\+(?:hs|at|x)[\d.]+)*)(?:@(?P<lr>[\d.e-]+))?$"
)


def prune(
    args: argparse.Namespace, spec: str, model: nn.Module, train: Any, x: torch.Tensor
) -> tuple[nn.Module, dict]:
    """The pruned model of ``spec`` (see the module docstring) and a short summary."""
    from netcompress.pruning.transformer_pruning import TransformerPruneConfig, transformer_prune

    if spec == "none":
        return model, {}
    if spec == "tp":
        return vp.prune_torch_pruning(args, model, x)
    m = HEAD_DIM.match(spec)
    if m is not None:  # head dims inside every head + FFN neurons (session 12)
        small, s = vp.prune_head_dims(
            args, model, train, x, qk=float(m["q"]), v=float(m["v"]), ffn=float(m["f"]), importance=m["imp"],
            reconstruct=bool(m["rec"]),
        )  # fmt: skip
        return small, {
            "ffn": [u["after"] for u in s["ffn"]], "mac_reduction": s["mac_reduction"], "factor": s["factor"],
            "qk_dim": s["qk_dim"], "v_dim": s["v_dim"],
        }  # fmt: skip
    m = PRUNE.match(spec)
    if m is None:
        raise SystemExit(f"bad prune spec {spec!r}")
    config = TransformerPruneConfig(
        heads=float(m["h"] or 0.5), ffn=float(m["f"] or 0.5), hidden=float(m["d"] or 0), importance=m["imp"],
        allocation="global" if m["glob"] else "uniform",
        mac_target=args.mac_reduction, calib_batches=8, reconstruct=m["rec"] == "+rec",
    )  # fmt: skip
    seed_everything(args.seed)  # the loader's augmentation draws from the global RNG: same batches every run
    small, s = transformer_prune(model, x, config, loader=vp.train_loader(args, train))
    rec = s.get("reconstruction")
    if m["rec"] == "+recall":  # every Linear layer refitted, 10 batches (the first measurement)
        rec = reconstruct(model, small, s, vp.train_loader(args, train), 10)
    if rec:
        print(
            "  reconstruction:",
            [(r["name"], round(r["error_before"], 3), round(r["error_after"], 3)) for r in rec["layers"]],
        )
    return small, {
        "heads": [u["after"] for u in s["heads"]], "ffn": [u["after"] for u in s["ffn"]],
        "hidden": s["hidden_after"], "mac_reduction": round(s["mac_reduction"], 3),
    }  # fmt: skip


def reconstruct(model: nn.Module, small: nn.Module, summary: dict, loader: Any, batches: int) -> dict:
    """Least-squares refit of the pruned model's Linear layers to the original's outputs (in place)."""
    from netcompress.pruning.reconstruction import reconstruct_weights_
    from netcompress.pruning.transformer_mha import PrunedMultiheadAttention

    original = copy.deepcopy(model)  # same modules as the pruned model: out_proj called as a module
    for layer in original.encoder.layers:
        mha = layer.self_attn
        if isinstance(mha, nn.MultiheadAttention):
            layer.self_attn = PrunedMultiheadAttention.from_attention(
                mha, keep_heads=list(range(mha.num_heads))
            )
    kept = {}
    for unit in summary["ffn"]:
        kept[unit["name"] + ".linear1"] = {"out": unit["kept"]}
    return reconstruct_weights_(small, original, loader, kept_indices=kept, num_batches=batches)


_UNLABELLED: dict[int, Any] = {}  # extra unlabelled images by count, loaded once per run


def finetune(
    args: argparse.Namespace, spec: str, model: nn.Module, teacher: nn.Module, train: Any, x: torch.Tensor
) -> nn.Module:
    """A copy of ``model`` fine-tuned as ``spec`` says, for ``--finetune-epochs`` (the same budget everywhere)."""
    m = FT.match(spec)
    if m is None:
        raise SystemExit(f"bad finetune spec {spec!r}")
    model = copy.deepcopy(model).train()
    lr = float(m["lr"]) if m["lr"] else args.finetune_lr
    config = vp.train_config(args, epochs=args.finetune_epochs, lr=lr)
    forward = TeacherForward(teacher)
    hooks: list[Any] = []
    if m["a"] is not None:
        hooks.append(SoftTargetDistillation(forward, temperature=float(m["t"]), alpha=float(m["a"])))
    extra = dict(re.findall(r"\+(hs|at|x)([\d.]+)", m["extra"] or ""))
    if "x" in extra:  # KD on labelled + unlabelled images (soft targets only on the unlabelled ones)
        if m["a"] is None or len(extra) > 1:
            raise SystemExit(f"bad finetune spec {spec!r}: +x<N> goes with kd<alpha>t<T> alone")
        n = int(extra["x"])
        if n not in _UNLABELLED:
            _UNLABELLED[n] = xd.unlabelled_images(args, n)
        return xd.kd_finetune_extra(
            model, teacher, train, _UNLABELLED[n], lambda d: vp.train_loader(args, d), config,
            temperature=float(m["t"]), alpha=float(m["a"]),
        )  # fmt: skip
    layer = None
    if extra:
        layer = TransformerDistillation(
            forward, model, example_inputs=x, hidden_weight=float(extra.get("hs", 0)),
            attention_weight=float(extra.get("at", 0)),
        )  # fmt: skip
        hooks.append(layer)
    try:
        fit(
            model, vp.train_loader(args, train), config=config, hooks=hooks,
            extra_parameters=list(layer.parameters()) if layer else [],
        )  # fmt: skip
    finally:
        if layer is not None:
            layer.close()
    return model.eval()


def iterative(
    args: argparse.Namespace,
    spec: str,
    steps: int,
    ft_spec: str,
    model: nn.Module,
    train: Any,
    x: torch.Tensor,
) -> tuple[nn.Module, dict]:
    """Prune in ``steps`` steps (MACs reduced geometrically: 2x as sqrt(2)x twice for 2 steps), the
    fine-tune epochs shared between the steps (same total budget); the teacher stays the original."""
    from netcompress.pruning.transformer_pruning import count_macs

    base, current = count_macs(model, x), model
    epochs = [args.finetune_epochs // steps + (i < args.finetune_epochs % steps) for i in range(steps)]
    for k in range(1, steps + 1):
        target = args.mac_reduction ** (k / steps)
        small, summary = prune(
            argparse.Namespace(**{**vars(args), "mac_reduction": target * count_macs(current, x) / base}),
            spec, current, train, x,
        )  # fmt: skip
        step_args = argparse.Namespace(**{**vars(args), "finetune_epochs": epochs[k - 1]})
        current = finetune(step_args, ft_spec, small, model, train, x) if epochs[k - 1] else small
    return current, summary


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", required=True, help="'prune|finetune' specs")
    p.add_argument("--val-size", type=int, default=5000)
    p.add_argument("--out", default=None, help="append one JSON line per variant here")
    p.add_argument(
        "--run-seed", type=int, default=None, help="seed after the baseline (pruning data, fine-tune)"
    )
    own, rest = p.parse_known_args(argv)
    args = vp.parse_args(rest)
    torch.set_num_threads(args.threads)
    vit = (
        dict(vp.QUICK_VIT)
        if args.quick
        else ({"patch_size": args.patch_size} if args.patch_size != 4 else {})
    )
    train, test = vp.data(args)
    model, info = vp.trained_baseline(args, vit, train)
    if own.run_seed is not None:  # the baseline (cached under --seed) stays; everything after it re-seeded
        args.seed = own.run_seed
    print(f"baseline: {info['path']} (cache hit: {info['cache_hit']}), load {os.getloadavg()}", flush=True)
    if args.synthetic:
        val = DataLoader(test, batch_size=250)  # synthetic: no held-out training images
    else:
        protocol = cp.ProtocolConfig(name="vit", train_subset=args.train_subset)
        val = cp.heldout_loader(protocol, size=own.val_size)
    from netcompress.pruning.transformer_pruning import count_macs

    x = train[0][0].unsqueeze(0)
    base = count_macs(model, x)
    pruned: dict[str, tuple[nn.Module, dict]] = {}
    rows = []
    for variant in own.variants:
        started = time.perf_counter()
        prune_spec, ft_spec = variant.split("|")
        if "*" in prune_spec:  # iterative: prune and fine-tune in steps, same total budget
            spec, steps = prune_spec.split("*")
            tuned, summary = iterative(args, spec, int(steps), ft_spec, model, train, x)
            before = None
        else:
            if prune_spec not in pruned:
                pruned[prune_spec] = prune(args, prune_spec, model, train, x)
            small, summary = pruned[prune_spec]
            before = evaluate(small, val)["accuracy"]
            tuned = finetune(args, ft_spec, small, model, train, x)
        r = {
            "variant": variant, "val_before_ft": before, "val_acc": evaluate(tuned, val)["accuracy"],
            "mac_reduction": round(base / count_macs(tuned, x), 3), "prune": summary,
            "wall_s": round(time.perf_counter() - started), "load": os.getloadavg(),
            "finetune_epochs": args.finetune_epochs, "val_size": own.val_size, "seed": args.seed,
        }  # fmt: skip
        print(json.dumps(r), flush=True)
        rows.append(r)
        if own.out:
            with open(own.out, "a") as f:
                f.write(json.dumps(r) + "\n")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
