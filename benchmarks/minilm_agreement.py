"""What nearest-neighbour agreement needs: agreement against mean cosine along two kinds of embedding error.

On the VALIDATION sentences of ``minilm_compressed.py`` (never the test sentences), the teacher's (unit)
embeddings ``t`` are moved towards a candidate and the agreement measured at each mean cosine:

- ``isotropic``: ``t + s * noise`` (Gaussian, fresh per seed), ``s`` set by bisection to reach the cosine;
- ``student``: ``t + a * (u - t)`` with ``u`` a distilled student's unit embeddings, ``a`` in (0, 1]: the
  student's own error shrunk uniformly (what a student ``a`` times closer in every direction would give).

And where each student's error sits (``error_shape``): the quantiles of its per-sentence gaps ``1 - cos``,
the share of the total gap held by the 10 worst sentences, and whether the sentences whose nearest neighbour
changed are the far ones (their mean gap) or the ones whose teacher neighbour was barely the nearest (the
teacher's margin between its first and second neighbour); and which directions the error takes
(``direction_share``: the share of its energy in the top-k principal directions of the teacher's embeddings,
against isotropic noise at the same mean cosine).

    python benchmarks/minilm_agreement.py --student benchmarks/.cache/m13/<run>/student.nc
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.append(str(Path(__file__).resolve().parent))
from script_path import import_real_transformers  # noqa: E402

import_real_transformers(__file__)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import netcompress as nc  # noqa: E402
from benchmarks.minilm_student import allowed_modules, load_minilm, loader  # noqa: E402
from netcompress.data.sentences import python_doc_sentences, split_sentences  # noqa: E402
from netcompress.evaluation.embeddings import compare_embeddings, embed  # noqa: E402

COSINES = (0.95, 0.96, 0.97, 0.98, 0.99, 0.995)


def isotropic_at(t: torch.Tensor, cosine: float, seed: int) -> torch.Tensor:
    """``t`` plus Gaussian noise scaled (bisection) so that the mean cosine to ``t`` is ``cosine``."""
    noise = torch.randn(t.shape, generator=torch.Generator().manual_seed(seed), dtype=t.dtype)
    lo, hi = 0.0, 10.0
    for _ in range(50):
        mid = (lo + hi) / 2
        c = float(F.cosine_similarity(t + mid * noise, t, dim=1).mean())
        lo, hi = (mid, hi) if c > cosine else (lo, mid)
    return t + lo * noise


def along_student(t: torch.Tensor, u: torch.Tensor, cosine: float) -> torch.Tensor | None:
    """``t + a (u - t)`` with ``a`` (bisection) giving mean cosine ``cosine``; None if the student is closer."""
    if float(F.cosine_similarity(u, t, dim=1).mean()) >= cosine:
        return None
    lo, hi = 0.0, 1.0
    for _ in range(50):
        mid = (lo + hi) / 2
        c = float(F.cosine_similarity(t + mid * (u - t), t, dim=1).mean())
        lo, hi = (mid, hi) if c > cosine else (lo, mid)
    return t + lo * (u - t)


def error_shape(t: torch.Tensor, u: torch.Tensor, worst: int = 10) -> dict[str, float]:
    """Where a student's error sits, on unit embeddings ``t`` (teacher) and ``u`` (student), (N, D)."""
    gaps = 1.0 - (t * u).sum(1)
    off = ~torch.eye(len(t), dtype=torch.bool)
    teacher_sims, student_sims = (t @ t.T).masked_fill(~off, -2.0), (u @ u.T).masked_fill(~off, -2.0)
    same = teacher_sims.argmax(1) == student_sims.argmax(1)
    top2 = teacher_sims.topk(2, dim=1).values
    margin = top2[:, 0] - top2[:, 1]
    nan = float("nan")
    return {
        "gap_mean": float(gaps.mean()),
        **{f"gap_q{q}": float(gaps.quantile(q / 100)) for q in (50, 90, 99)},
        "gap_max": float(gaps.max()),
        "worst_share": float(gaps.topk(min(worst, len(gaps))).values.sum() / gaps.sum().clamp_min(1e-12)),
        "changed": int((~same).sum()),
        "gap_kept": float(gaps[same].mean()) if same.any() else nan,
        "gap_changed": float(gaps[~same].mean()) if (~same).any() else nan,
        "margin_kept": float(margin[same].median()) if same.any() else nan,
        "margin_changed": float(margin[~same].median()) if (~same).any() else nan,
    }


def direction_share(t: torch.Tensor, u: torch.Tensor, ks: tuple[int, ...] = (8, 32, 64)) -> dict[str, float]:
    """Share of the error ``|u - t|^2`` in the top-k principal directions of the teacher's (centred)
    embeddings ``t``, for each k; ``teacher_k``: the teacher's own variance there."""
    centred = t - t.mean(0)
    _, sv, vt = torch.linalg.svd(centred, full_matrices=False)
    error = u - t
    total = (error**2).sum().clamp_min(1e-30)
    out = {}
    for k in ks:
        out[f"teacher_{k}"] = float((sv[:k] ** 2).sum() / (sv**2).sum())
        out[f"error_{k}"] = float(((error @ vt[:k].T) ** 2).sum() / total)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--student", type=Path, action="append", default=[], help="nc.save'd students")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    teacher, tokenizer = load_minilm()
    val = loader(split_sentences(python_doc_sentences(), val=256, test=512, seed=0)["val"], tokenizer)
    t = F.normalize(embed(teacher, val).double(), dim=1)
    out: dict[str, list[dict[str, float]]] = {"isotropic": []}
    shapes: dict[str, dict[str, float]] = {}
    for c in COSINES:
        runs = [compare_embeddings(t, isotropic_at(t, c, seed)) for seed in range(args.seeds)]
        out["isotropic"].append(
            {
                "cosine_mean": c,
                "cosine_min": sum(r["cosine_min"] for r in runs) / len(runs),
                "nn_agreement": sum(r["nn_agreement"] for r in runs) / len(runs),
            }
        )
    for path in args.student:
        student = nc.load(path, allow_modules=allowed_modules(teacher))
        u = F.normalize(embed(student, val).double(), dim=1)
        rows = [{"a": 1.0, **compare_embeddings(t, u)}]
        shapes[str(path)] = error_shape(t, u)
        noise = F.normalize(isotropic_at(t, float((t * u).sum(1).mean()), 0), dim=1)
        shapes[str(path)].update(direction_share(t, u))
        shapes[str(path)].update({f"isotropic_{k}": v for k, v in direction_share(t, noise).items()})
        for c in COSINES:
            moved = along_student(t, u, c)
            if moved is not None:
                rows.append({"a": round(float((moved - t).norm() / (u - t).norm()), 4), **compare_embeddings(t, moved)})
        out[str(path)] = rows
    print("| error | a | cosine mean | cosine min | NN agreement (val) |\n|---|---:|---:|---:|---:|")
    for name, rows in out.items():
        for r in rows:
            a = f"{r['a']:.3f}" if "a" in r else ""
            label = "isotropic (mean of seeds)" if name == "isotropic" else f"student {Path(name).parent.name}"
            print(f"| {label} | {a} | {r['cosine_mean']:.4f} | {r['cosine_min']:.4f} | {r['nn_agreement']:.1%} |")
    print(
        "\n| student | gap mean | q50 | q90 | q99 | max | 10 worst share | NN changed | gap kept / changed "
        "| teacher margin kept / changed |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    for name, e in shapes.items():
        print(
            f"| {Path(name).parent.name} | {e['gap_mean']:.4f} | {e['gap_q50']:.4f} | {e['gap_q90']:.4f} | "
            f"{e['gap_q99']:.4f} | {e['gap_max']:.4f} | {e['worst_share']:.3f} | {e['changed']} | "
            f"{e['gap_kept']:.4f} / {e['gap_changed']:.4f} | {e['margin_kept']:.4f} / {e['margin_changed']:.4f} |"
        )
    if shapes:
        first = next(iter(shapes.values()))
        print(
            "\n| student | error energy in the teacher's top 8 / 32 / 64 directions | isotropic noise at its cosine |"
            f"\n|---|---:|---:|\n| (teacher variance there) | {first['teacher_8']:.3f} / {first['teacher_32']:.3f} / "
            f"{first['teacher_64']:.3f} | |"
        )
    for name, e in shapes.items():
        print(
            f"| {Path(name).parent.name} | {e['error_8']:.3f} / {e['error_32']:.3f} / {e['error_64']:.3f} | "
            f"{e['isotropic_error_8']:.3f} / {e['isotropic_error_32']:.3f} / {e['isotropic_error_64']:.3f} |"
        )
    if args.json:
        args.json.write_text(json.dumps({**out, "error_shape": shapes}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
