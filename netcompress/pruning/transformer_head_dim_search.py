"""``prune/transformer`` with head dims: FFN neurons and channels inside every head, to a MAC target.

With ``head_dim_qk``/``head_dim_v`` above 0 (``heads=0``, ``hidden=0``), :func:`head_dim_prune` builds a
candidate in two steps: FFN neurons go first (``prune/transformer`` itself, every head kept, with its
importance and optional ``reconstruct``), then :mod:`~netcompress.pruning.transformer_head_dim` scores the
channels of that model's heads and keeps the best ``1 - share`` of each head's q/k and value channels.
Without ``mac_target`` the shares are used as given. With it, the three shares (they set the split) are scaled
by the smallest factor that reaches the target (bisection), then the FFN share alone is lowered to the fewest
neurons that still reach it (head dims move in whole channels, so the first factor overshoots).

The calibration batches (``calib_batches`` of the loader) are read once and reused by every candidate, so
the search is deterministic. The result is checked against the FFN-pruned model with the removed ``in_proj``
rows zeroed on the example inputs: a mismatch is an error, never a wrong model.

Example (through :func:`~netcompress.pruning.transformer_head_dim_api.prune_head_dims`):
    >>> small = prune_head_dims(vit, x, qk=0.25, v=0.25, ffn=0.75, mac_target=2.0, calib=loader)
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from netcompress.core.errors import ConfigError, UnsupportedModelError
from netcompress.core.inputs import call_model, output_tensor
from netcompress.pruning.transformer_allocation import smallest_reaching
from netcompress.pruning.transformer_blocks import find_blocks
from netcompress.pruning.transformer_head_dim import (
    HeadDimAttention,
    apply_head_dims_,
    head_dim_scores,
    masked_reference,
)

MAX_SHARE = 0.99


def check_head_dim_config(config: Any) -> None:
    """Errors for settings head dims do not combine with (called by ``TransformerPruneConfig``)."""
    if not (config.head_dim_qk or config.head_dim_v):
        return
    clashes = [f"{n}={getattr(config, n)!r}" for n in ("heads", "hidden") if getattr(config, n)]
    if config.allocation != "uniform":
        clashes.append(f"allocation={config.allocation!r}")
    if clashes:
        raise ConfigError(
            f"head_dim_qk/head_dim_v prune inside every head and combine with ffn only: set heads=0, hidden=0, "
            f"allocation='uniform' (got {', '.join(clashes)})"
        )


def head_dim_prune(
    model: nn.Module, example_inputs: Any, config: Any, *, loader: Any, transformer_prune: Callable[..., Any],
    count_macs: Callable[[nn.Module, Any], int],
) -> tuple[nn.Module, dict[str, Any]]:  # fmt: skip
    """(verified pruned copy, summary) for a ``TransformerPruneConfig`` with head-dim shares; ``transformer_prune``
    and ``count_macs`` are ``transformer_pruning``'s (passed in: that module calls this one)."""
    activation = config.head_dim_importance == "activation"
    needs_data = activation or config.importance != "magnitude" or config.reconstruct
    if needs_data and loader is None:
        raise ConfigError(
            "prune/transformer with head dims: head_dim_importance='activation' (or a data-driven importance, "
            "reconstruct) needs calibration batches (a loader); head_dim_importance='magnitude' needs none"
        )
    batches = list(itertools.islice(iter(loader), config.calib_batches)) if loader is not None else None
    if batches is not None and not batches:
        raise ConfigError("prune/transformer with head dims: the calibration loader gave no batches")
    base = count_macs(model, example_inputs)
    qk, v, ffn = config.head_dim_qk, config.head_dim_v, config.ffn

    def build(t: float, t_ffn: float | None = None) -> dict[str, Any]:
        share = min(ffn * (t if t_ffn is None else t_ffn), MAX_SHARE)
        small, summary = copy.deepcopy(model), None
        if share > 0:
            ffn_config = dataclasses.replace(
                config, ffn=share, mac_target=0.0, head_dim_qk=0.0, head_dim_v=0.0
            )
            try:
                small, summary = transformer_prune(model, example_inputs, ffn_config, loader=batches)
            except ConfigError as err:
                if "removes no neuron" not in str(err):
                    raise
        before = copy.deepcopy(small)
        scores = head_dim_scores(small, batches if activation else None, ignore=config.ignore)
        kept = apply_head_dims_(small, scores, min(qk * t, MAX_SHARE), min(v * t, MAX_SHARE))
        macs = count_macs(small, example_inputs)
        return {"model": small, "ffn_summary": summary, "before": before, "kept": kept, "macs": macs,
                "mac_reduction": base / max(macs, 1), "factor": t, "ffn_share": share}  # fmt: skip

    if not config.mac_target:
        best = build(1.0)
    else:
        hi = 1.0 / max(qk, v, ffn)
        best = build(hi)
        if best["mac_reduction"] < config.mac_target:
            raise ConfigError(
                f"mac_target={config.mac_target} is out of reach: removing up to {MAX_SHARE:.0%} of the head dims "
                f"(q/k {qk}, v {v}) and FFN neurons ({ffn}) leaves {best['mac_reduction']:.2f}x fewer MACs"
            )

        def reached(found: dict[str, Any]) -> bool:
            return found["mac_reduction"] >= config.mac_target

        hi, best = smallest_reaching(build, reached, hi, best, rounds=12)
        if ffn > 0:  # head dims step in whole channels: the fewest FFN neurons that still reach the target
            _, best = smallest_reaching(lambda f: build(hi, f), reached, hi, best, rounds=10)
    small = best["model"].train(model.training)
    _verify(masked_reference(best["before"], best["kept"]), small, example_inputs)
    return small, _summary(model, small, config, best, base)


def _verify(reference: nn.Module, small: nn.Module, example_inputs: Any) -> None:
    with torch.no_grad():
        was = reference.training, small.training
        reference.eval(), small.eval()
        expected = output_tensor(call_model(reference, example_inputs))
        got = output_tensor(call_model(small, example_inputs))
        reference.train(was[0]), small.train(was[1])
    if got.shape != expected.shape or not torch.allclose(
        got, expected, rtol=1e-3, atol=1e-4 * (1 + expected.abs().max().item())
    ):
        raise UnsupportedModelError(
            "head-dim pruning: the pruned model differs from the original with the removed channels zeroed "
            f"(max difference {(got - expected).abs().max().item():.3g}); a forward was not followed"
        )


def _summary(model: nn.Module, small: nn.Module, config: Any, best: dict, base: int) -> dict[str, Any]:
    before = best["before"]
    units = {u.name: u.head_dim for u in find_blocks(before).attention}  # a fused q|k|v module may store none
    dims = {
        n: getattr(before.get_submodule(n), "head_dim", None)
        or getattr(before.get_submodule(n), "attention_head_size", None)
        or units[n]
        for n in best["kept"]
    }
    heads = {n: len(qk) for n, (qk, _) in best["kept"].items()}
    ffn = (best["ffn_summary"] or {}).get("ffn", [])
    widths = [getattr(m, "embed_dim", None) for m in small.modules() if isinstance(m, HeadDimAttention)]
    width = widths[0] if widths else getattr(getattr(model, "config", None), "hidden_size", 0)
    params = (sum(p.numel() for p in model.parameters()), sum(p.numel() for p in small.parameters()))
    return {
        "method": "transformer", **config.to_dict(),
        "heads": [
            {"name": n, "before": h, "after": h, "kv_before": h, "kv_after": h, "kept": list(range(h))}
            for n, h in heads.items()
        ],
        "hidden_before": width, "hidden_after": width,
        "head_dims": [
            {"name": n, "head_dim": dims[n], "qk_after": len(qk[0]), "v_after": len(v[0]), "qk_kept": qk, "v_kept": v}
            for n, (qk, v) in best["kept"].items()
        ],
        "ffn": ffn, "factor": round(best["factor"], 6), "ffn_share_used": best["ffn_share"],
        "params_before": params[0], "params_after": params[1], "param_reduction": params[0] / max(params[1], 1),
        "macs_before": base, "macs_after": best["macs"], "mac_reduction": best["mac_reduction"],
        **({"reconstruction": best["ffn_summary"]["reconstruction"]}
           if best["ffn_summary"] and "reconstruction" in best["ffn_summary"] else {}),
    }  # fmt: skip
