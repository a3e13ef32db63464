"""``sys.path`` for a benchmark script that imports the real Hugging Face ``transformers``.

Run as ``python benchmarks/<script>.py``, the script's folder comes first on ``sys.path``, and a script
there named like a package would shadow it; imported by a test, several scripts share one path. So:
import ``transformers`` with the folder off the path, put the path back as it was, and add the repo
root (for ``benchmarks.<name>`` imports).

Example (at the top of a script, before importing ``transformers`` users)::

    from script_path import import_real_transformers
    import_real_transformers(__file__)
"""

from __future__ import annotations

import sys
from pathlib import Path


def import_real_transformers(script: str) -> None:
    folder = Path(script).resolve().parent
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != folder]
    try:
        import transformers  # noqa: F401
    finally:
        sys.path[:] = saved + [str(folder.parent)]
