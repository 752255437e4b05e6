"""The ``specdenoise`` command line: one command, one subcommand per stage.

Each stage lives in its own ``cli_<stage>`` module exposing ``register(subparsers)``, which adds
its parser and sets ``func`` (called with the parsed namespace; returns an exit status or None).
A :class:`~specdenoise.SpecdenoiseError` ends the program with its one-line message and status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from specdenoise import __version__
from specdenoise.simulate.errors import SpecdenoiseError

#: stage modules, in the order they appear in ``--help``
STAGES = ("grid", "etc", "simulate", "train", "denoise", "evaluate", "run", "cluster")


class _SubcommandParser(argparse.ArgumentParser):
    """A subcommand's parser: an option it does not know is reported with its own usage.

    argparse hands a subcommand's unknown arguments back to the top-level parser, which then
    printed the top-level usage for ``specdenoise simulate --nn``.
    """

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="specdenoise",
        description=(
            "Simulate Subaru PFS medium-resolution red-arm stellar spectra with Dask, train "
            "neural denoisers on them and measure what they recover."
        ),
    )
    parser.add_argument("--version", action="version", version=f"specdenoise {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND",
                                parser_class=_SubcommandParser)
    sub.required = True
    for stage in STAGES:
        try:
            module = importlib.import_module(f"specdenoise.cli_{stage}")
        except ModuleNotFoundError as exc:
            if exc.name != f"specdenoise.cli_{stage}":
                raise
            continue  # stage not built yet
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = args.func(args)
    except SpecdenoiseError as exc:
        print(f"specdenoise {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"specdenoise {args.command}: interrupted; finished work is kept, "
            "re-run the same command with --resume to continue",
            file=sys.stderr,
        )
        return 130
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
