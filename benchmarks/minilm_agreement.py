"""What nearest-neighbour agreement needs: agreement against mean cosine along two kinds of embedding error.

On the VALIDATION sentences of ``minilm_compressed.py`` (never the test sentences), the teacher's (unit)
embeddings ``t`` are moved towards a candidate and the agreement measured at each mean cosine:

- ``isotropic``: ``t + s * noise`` (Gaussian, fresh per seed), ``s`` set by bisection to reach the cosine;
- ``student``: ``t + a * (u - t)`` with ``u`` a distilled student's unit embeddings, ``a`` in (0, 1]: the
  student's own error shrunk uniformly (what a student ``a`` times closer in every direction would give).

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
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
