"""The ``netcompress`` command line: one module per subcommand, each adding its own parser."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from netcompress import __version__

SUBCOMMANDS = ("demo", "run", "profile", "report", "list")

DESCRIPTION = """\
netcompress: make PyTorch models smaller and faster, and measure what was gained.

Start here:
  netcompress demo                       train, compress and measure a small CNN (about 15 s on 2 idle cores)
  netcompress list recipes               shipped recipes (the reference experiments)
  netcompress run RECIPE.yaml            run a recipe; add key=value to override (e.g. seed=1 steps.0.epochs=3)
  netcompress run RECIPE.yaml --resume   continue a run that was stopped
  netcompress profile cifar_vgg          parameters, MACs, bytes and CPU latency of a model
  netcompress report netcompress-demo    print a run's stage table (the demo writes ./netcompress-demo), or compare runs
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="netcompress", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"netcompress {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"netcompress.cli.{name}_command")
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # KEY=VALUE after an option (`run r.yaml --quiet seed=1`) is an override like any other
        loose = [a for a in extra if not a.startswith("-") and "=" in a]
        if len(loose) < len(extra) or not hasattr(args, "overrides") and not hasattr(args, "kwargs"):
            parser.error(
                f"unrecognized arguments: {' '.join(a for a in extra if a not in loose) or extra[0]}"
            )
        getattr(args, "overrides" if hasattr(args, "overrides") else "kwargs").extend(loose)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    from netcompress.core.errors import NetcompressError

    try:
        return int(args.func(args) or 0)
    except NetcompressError as exc:
        print(f"netcompress {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; a recipe run continues where it stopped with --resume", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - not a user error we know: one line here, the traceback in a file
        return _unexpected(args.command, exc)


def _unexpected(command: str, exc: Exception) -> int:
    """Report an error netcompress did not foresee in one line naming where it happened; the full
    traceback goes to a log file (NETCOMPRESS_TRACEBACK=1 prints it instead)."""
    import os
    import tempfile
    import traceback

    text = "".join(traceback.format_exception(exc))
    if os.environ.get("NETCOMPRESS_TRACEBACK"):
        print(text, file=sys.stderr, end="")
        return 1
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    try:
        fd, log = tempfile.mkstemp(prefix="netcompress-error-", suffix=".log")
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
    except OSError:  # no writable temp folder: the traceback goes to the terminal after all
        print(text, file=sys.stderr, end="")
        return 1
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    print(
        f"netcompress {command}: unexpected error{where}: {type(exc).__name__}: {message}\n"
        f"  (a bug in netcompress or a model it cannot handle; full traceback in {log})",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
