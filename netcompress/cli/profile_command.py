"""``netcompress profile``: parameters, MACs, bytes, latency and a per-layer table of a model."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "profile",
        help="measure a model: parameters, non-zeros, MACs, bytes on disk, CPU latency, per-layer table",
        description=(
            "Profile a registry model (by name, with KEY=VALUE model arguments), optionally with a state dict "
            "(--checkpoint), or a whole pickled model (.pt) when you trust it (--trust-checkpoint)."
        ),
    )
    p.add_argument(
        "model",
        help="a model name (see `netcompress list models`), a factory (mymodel.py:build or package.module:build, "
        "with KEY=VALUE arguments), or a .pt file holding a pickled model (needs --trust-checkpoint)",
    )
    p.add_argument(
        "kwargs", nargs="*", metavar="KEY=VALUE", help="model arguments, e.g. num_classes=11 width=0.5"
    )
    p.add_argument(
        "--input-shape",
        default=None,
        help="input shape with batch, e.g. 1,3,32,32 (default: the model's usual input)",
    )
    p.add_argument(
        "--input",
        action="append",
        default=None,
        metavar="NAME=SHAPE[:DTYPE]",
        help="one named model input (passed as a keyword argument), repeatable, e.g. "
        "--input input_ids=1,16:int64 --input attention_mask=1,16:int64; integer inputs are ones, "
        "float inputs random normal",
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        help="a state dict (.pt) or .safetensors file to load into the named model",
    )
    p.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow loading a pickled model; unpickling runs any code stored in the file, so only for files you trust",
    )
    p.add_argument("--no-latency", action="store_true", help="skip timing (fast)")
    p.add_argument("--layers", action="store_true", help="also print the per-layer table")
    p.set_defaults(func=run)


DEFAULT_SHAPES = {
    "digits_cnn": (1, 1, 8, 8),
    "mlp": (1, 64),
    "sincnet": (1, 1, 8000),
    "lenet": (1, 1, 28, 28),
}


INPUT_DTYPES = ("float32", "float16", "int64", "int32", "bool")


def parse_named_inputs(specs: list[str]) -> dict:
    """``--input NAME=SHAPE[:DTYPE]`` flags as ``{name: tensor}`` (ints are ones, floats random normal).

    Example:
        >>> parse_named_inputs(["input_ids=1,16:int64"])["input_ids"].dtype
        torch.int64
    """
    import torch

    from netcompress.core.errors import ConfigError

    inputs = {}
    for spec in specs:
        name, sep, rest = spec.partition("=")
        shape_text, _, dtype_name = rest.partition(":")
        dtype_name = dtype_name or "float32"
        try:
            shape = tuple(int(s) for s in shape_text.split(","))
        except ValueError:
            shape = ()
        if not sep or not name.isidentifier() or not shape or dtype_name not in INPUT_DTYPES:
            raise ConfigError(
                f"--input {spec!r} must look like NAME=SHAPE[:DTYPE], e.g. input_ids=1,16:int64 "
                f"(DTYPE one of {', '.join(INPUT_DTYPES)})"
            )
        if name in inputs:
            raise ConfigError(f"--input {name} is given twice")
        dtype = getattr(torch, dtype_name)
        inputs[name] = (
            torch.randn(*shape).to(dtype) if dtype.is_floating_point else torch.ones(shape, dtype=dtype)
        )
    return inputs


def run(args: argparse.Namespace) -> int:
    import torch
    import yaml
    from rich.console import Console
    from rich.table import Table

    from netcompress import models
    from netcompress.core.errors import ConfigError
    from netcompress.core.io import load_checkpoint, load_state_dict_file
    from netcompress.evaluation import layer_table, profile

    kwargs = {}
    for item in args.kwargs:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"model argument {item!r} must look like key=value")
        kwargs[key] = yaml.safe_load(value)
    path = Path(args.model)
    default_shape = None
    if ":" in args.model and not path.exists():  # a factory: mymodel.py:build or package.module:build
        from netcompress.core.factory import call_factory

        model = call_factory(args.model, kwargs, where="profile")
        if not isinstance(model, torch.nn.Module):
            raise ConfigError(f"{args.model} returned a {type(model).__name__}, not an nn.Module")
        name = args.model
        if args.checkpoint:
            load_state_dict_file(model, args.checkpoint, trust=args.trust_checkpoint)
    elif path.suffix in (".pt", ".pth") or path.exists():
        model = load_checkpoint(path, trust=args.trust_checkpoint)
        if not isinstance(model, torch.nn.Module):
            raise ConfigError(
                f"{path} holds a {type(model).__name__}, not a whole model; give the model's name and "
                f"--checkpoint {path} to load a state dict into it"
            )
        name = path.stem
    else:
        model = models.create(args.model, **kwargs)
        name = args.model
        default_shape = (1, *models.input_shape(args.model, **kwargs))
        if args.checkpoint:
            load_state_dict_file(model, args.checkpoint, trust=args.trust_checkpoint)
    if args.input and args.input_shape:
        raise ConfigError("give either --input-shape or --input NAME=SHAPE flags, not both")
    if args.input:
        x = parse_named_inputs(args.input)
        shape = {k: tuple(v.shape) for k, v in x.items()}
    elif args.input_shape:
        try:
            shape = tuple(int(s) for s in args.input_shape.split(","))
        except ValueError:
            raise ConfigError(
                f"--input-shape {args.input_shape!r} must be integers separated by commas"
            ) from None
    elif default_shape is not None:
        shape = default_shape
    else:
        kind = "the model built by" if ":" in args.model and not path.exists() else "the saved model"
        raise ConfigError(
            f"give --input-shape for {kind} {args.model} (e.g. 1,3,32,32), or --input NAME=SHAPE[:DTYPE] per input"
        )
    if not args.input:
        x = torch.randn(*shape)
    try:
        stats = profile(model, x, latency=not args.no_latency)
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        raise ConfigError(
            f"the model does not accept input of shape {shape}: {exc}; pass --input-shape or --input"
        ) from None
    console = Console()
    table = Table(title=f"profile: {name}, input {shape}", title_justify="left")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in stats.items():
        table.add_row(
            key,
            f"{value:,.3f}"
            if isinstance(value, float)
            else f"{value:,}"
            if isinstance(value, int)
            else str(value),
        )
    console.print(table)
    if args.layers:
        rows = layer_table(model, x)
        lt = Table(title="per layer", title_justify="left")
        cols = list(rows[0]) if rows else []
        for c in cols:
            lt.add_column(c)
        for row in rows:
            lt.add_row(*(f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c]) for c in cols))
        console.print(lt)
    return 0
