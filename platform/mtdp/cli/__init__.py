"""The ``mtdp`` command line: one module per group of sub-commands, each adding its parser and
a ``func`` (parsed args → exit code); :func:`main` maps a user mistake to a one-line error."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from .. import __version__
from . import data, embed, model_commands, predict, search, store

#: Sub-command registrars, in help order.
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    embed.add, search.add, predict.add, predict.add_map, model_commands.add_teachers, model_commands.add_student, store.add,
    data.add,
]


def build_parser() -> argparse.ArgumentParser:
    """The full ``mtdp`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="mtdp", description="mtdp: fast protein embeddings by multi-teacher distillation")
    parser.add_argument("--version", action="version", version=f"mtdp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mtdp`` console script."""
    args = build_parser().parse_args(argv)
    from ..sequences import SequenceError

    try:
        return args.func(args) or 0
    except (SequenceError, ValueError, OSError) as exc:  # a user mistake: one line, no trace
        print(f"mtdp {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
