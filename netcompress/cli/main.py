"""The ``netcompress`` command line: one module per subcommand, each adding its own parser."""

from __future__ import annotations

import argparse
import importlib
import sys

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
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
