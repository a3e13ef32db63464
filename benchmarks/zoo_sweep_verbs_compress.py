"""The ``compress`` verb set of ``benchmarks/zoo_sweep.py`` (``--verb-set compress``): weight clustering,
its cluster-preserving fine-tune and cluster loss, the Deep-Compression file, QAT, low-rank factorisation
and BatchNorm folding, each run on a model nobody here wrote and checked independently of the library.

Checks: a clustered layer holds at most k distinct weights, before and after a fine-tune step that changed
them; the cluster loss is finite and positive; the compressed file reloads (same process) to equal outputs;
the QAT model trains a step, exports int8 with integer kernels and ORT agrees (``check=True``); the
factorisation at full energy reproduces the outputs and at half energy removes parameters; BN folding
keeps the outputs and leaves no BN after a Conv/Linear it reports as folded.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from zoo_sweep_verbs import Wrong, _changed, _close_all, _export, _int8_kernels, _out, _outs

import netcompress as nc
from netcompress.clustering import ClusterLoss, ClusterPreserving, clustered_modules
from netcompress.quantization import freeze_quantizers_
from netcompress.training import TrainConfig

CLUSTERS = 16


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _check_clusters(model: nn.Module, what: str) -> int:
    layers = list(clustered_modules(model))
    for name, m in layers:
        distinct = int(torch.unique(m.weight.detach()).numel())
        if distinct > CLUSTERS:
            raise Wrong(f"{what}: {name} holds {distinct} distinct weights > {CLUSTERS}")
    return len(layers)


def c_cluster(model: nn.Module, x: Any, ctx: dict) -> str:
    m = copy.deepcopy(model)
    s = nc.cluster_weights_(m, clusters=CLUSTERS)
    n = _check_clusters(m, "clustered")
    if n == 0 or n != len(s["layers"]):
        raise Wrong(f"{n} clustered modules, summary says {len(s['layers'])}")
    if not torch.isfinite(_out(m, x)).all():
        raise Wrong("non-finite outputs after clustering")
    ctx["clustered"] = m
    return f"{n} layers, ratio {s['compression_ratio']:.1f}x"


def c_cluster_ft(model: nn.Module, x: Any, ctx: dict) -> str:
    m = copy.deepcopy(ctx.get("clustered") or model)
    if "clustered" not in ctx:
        nc.cluster_weights_(m, clusters=CLUSTERS)
    before = copy.deepcopy(m.state_dict())
    cfg = TrainConfig(epochs=1, lr=0.01, progress=False, weight_decay=0)
    hist = nc.fit_(m, ctx["train"], config=cfg, hooks=[ClusterPreserving()])
    loss = hist.last["train_loss"]
    if not (loss == loss and abs(loss) < 1e6) or not _changed(before, m):
        raise Wrong(f"loss {loss}, weights changed: {_changed(before, m)}")
    n = _check_clusters(m, "after a cluster-preserving step")
    if not torch.isfinite(_out(m, x)).all():
        raise Wrong("non-finite outputs after a step")
    return f"loss {loss:.3f}, {n} layers still <= {CLUSTERS} values"


def c_cluster_loss(model: nn.Module, x: Any, ctx: dict) -> str:
    m = copy.deepcopy(model)
    hook = ClusterLoss(1e-3, clusters=CLUSTERS)
    cfg = TrainConfig(epochs=1, lr=0.01, progress=False, weight_decay=0)
    hist = nc.fit_(m, ctx["train"], config=cfg, hooks=[hook])
    loss, penalty = hist.last["train_loss"], float(hook.last_penalty)
    if not (loss == loss and abs(loss) < 1e6) or not (0 < penalty < 1e6) or not hook.codebooks:
        raise Wrong(f"loss {loss}, penalty {penalty}, {len(hook.codebooks)} codebooks")
    return f"penalty {penalty:.3g} over {len(hook.codebooks)} layers"


def c_compressed(model: nn.Module, x: Any, ctx: dict) -> str:
    m = ctx.get("clustered")
    if m is None:
        m = copy.deepcopy(model)
        nc.cluster_weights_(m, clusters=CLUSTERS)
    path = ctx["tmp"] / "m.ncz"
    s = nc.save_compressed(m, path, example_inputs=x)
    # the user's packages (transformers, efficientnet_pytorch), as save_compressed names them
    allow = sorted({n.partition(".")[0] for n in s["allow_modules"]})
    back = nc.load_compressed(path, allow_modules=allow)
    torch.manual_seed(0)
    a = _outs(m, x)
    torch.manual_seed(0)
    _close_all(a, _outs(back, x), 0.0, "reloaded vs saved")
    return f"{s['size_bytes']:,} B, ratio {s['compression_ratio']:.1f}x"


def c_qat(model: nn.Module, x: Any, ctx: dict) -> str:
    q = nc.prepare_qat(model, calib_loader=ctx["calib"])
    before = copy.deepcopy(q.state_dict())
    cfg = TrainConfig(epochs=1, lr=1e-3, progress=False, weight_decay=0)
    hist = nc.fit_(q, ctx["train"], config=cfg)
    loss = hist.last["train_loss"]
    if not (loss == loss and abs(loss) < 1e6) or not _changed(before, q):
        raise Wrong(f"loss {loss}, weights changed: {_changed(before, q)}")
    q.eval()  # exported as the user has it after training: observing (export freezes its copy)
    s = _export(q, x, ctx["tmp"], "qat", int8=True)
    freeze_quantizers_(q)  # convert, as the qat method ends: the frozen model exports the same graph
    _export(q, x, ctx["tmp"], "qat_frozen", int8=True)
    return _int8_kernels(s)


def c_low_rank(model: nn.Module, x: Any, ctx: dict) -> str:
    full, _ = nc.factorize(model, energy=1.0, example_inputs=x)
    _close_all(_outs(model, x), _outs(full, x), 1e-3, "full-rank factorisation vs original")
    small, s = nc.factorize(model, energy=0.5, example_inputs=x)
    before, after = _params(model), _params(small)
    if s["factorized"] == 0 and s["skipped"] and after == before:  # a named no-op: every layer says why
        return "none factorized: " + "; ".join(f"{k['name']}: {k['reason']}" for k in s["skipped"])[:200]
    if after >= before:
        raise Wrong(f"energy 0.5 removed nothing ({before} -> {after} params): {s.get('skipped', '')}")
    if not torch.isfinite(_out(small, x)).all():
        raise Wrong("non-finite outputs at energy 0.5")
    return f"{before}->{after} params"


def c_bn_fold(model: nn.Module, x: Any, ctx: dict) -> str:
    from netcompress.quantization.bn_folding import fold_bn_and_report

    bns = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    folded, s = fold_bn_and_report(model, example_inputs=x)
    _close_all(_outs(model, x), _outs(folded, x), 1e-4, "folded vs original")
    left = [n for n, m in folded.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if len(left) != len(bns) - s["num_folded"]:
        raise Wrong(f"{len(bns)} BN, {s['num_folded']} folded, {len(left)} left")
    return f"{s['num_folded']}/{len(bns)} BN folded, {len(s['not_folded'])} named not foldable"


def c_cluster_fold(model: nn.Module, x: Any, ctx: dict) -> str:
    """Clustering with ``fold_bn=True`` (fold first so PTQ/QAT keep the sharing): the public path."""
    m = copy.deepcopy(model)
    ref = _outs(m, x)
    # k large: the outputs stay close to the folded (= original) model
    s = nc.cluster_weights_(m, clusters=4096, fold_bn=True, example_inputs=x)
    _close_all(ref, _outs(m, x), 2e-2, "folded + 4096 clusters vs original")
    return f"{len(s['bn_folded'])} BN folded, {len(s['layers'])} layers"


VERBS = {
    "cluster": c_cluster, "cluster_ft": c_cluster_ft, "cluster_loss": c_cluster_loss,
    "cluster_fold": c_cluster_fold, "compressed": c_compressed, "qat": c_qat, "low_rank": c_low_rank,
    "bn_fold": c_bn_fold,
}  # fmt: skip
