"""The ``specdenoise`` command line: one command, one subcommand per stage.

Each stage lives in its own ``cli_<stage>`` module exposing ``register(subparsers)``, which adds
its parser and sets ``func`` (called with the parsed namespace; returns an exit status or None).
A :class:`~specdenoise.SpecdenoiseError` ends the program with its one-line message and status 2,
and so do the failures a user's environment or files cause (an unwritable or full disk, a
missing folder, too little memory, a chunk that cannot be decoded): see :func:`known_failure`.
``--debug`` (anywhere on the command line) shows the traceback instead, and lets Dask's and
PyTorch's own log messages through (:func:`specdenoise.options.quiet_libraries`). The options
several commands share are defined once, in :mod:`specdenoise.options`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import re
import signal
import sys
import threading

from specdenoise import __version__
from specdenoise.errors import SpecdenoiseError

#: stage modules, in the order they appear in ``--help``
STAGES = ("grid", "etc", "simulate", "train", "denoise", "calibrate", "evaluate", "run",
          "export", "info", "cluster")


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
    for stage in STAGES:  # every one is there: a missing module is a broken install, raised
        importlib.import_module(f"specdenoise.cli_{stage}").register(sub)
    _add_debug(parser, top=True)
    return parser


DEBUG_HELP = ("show the full traceback of an error instead of one line, and Dask's and "
              "PyTorch's own log messages and warnings")


def _add_debug(parser: argparse.ArgumentParser, top: bool = False) -> None:
    """``--debug`` on every (sub)command; only the top level sets its default."""
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP,
                        default=False if top else argparse.SUPPRESS)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _add_debug(child)


#: messages of decoder failures (zarr / numcodecs raise RuntimeError or ValueError for them)
_CORRUPT = re.compile(r"decompress|decod|codec|checksum|crc32c", re.IGNORECASE)


def known_failure(exc: BaseException) -> str | None:
    """One line for a failure the user's files or machine cause, or None for a bug."""
    if isinstance(exc, OSError):
        what = exc.strerror or type(exc).__name__
        where = exc.filename if exc.filename is not None else ""
        return f"{what}: {where}" if where else f"{what} ({exc})".splitlines()[0]
    if isinstance(exc, MemoryError):
        return "out of memory; use smaller chunks or batches, or a machine with more memory"
    if isinstance(exc, RuntimeError | ValueError):
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        if lines and _CORRUPT.search(lines[-1]):  # a DataLoader worker's error ends with it
            return (f"a data chunk cannot be decoded ({lines[-1]}); the store is corrupt: "
                    "re-create or re-copy it")
    return None


class Terminated(KeyboardInterrupt):
    """SIGTERM (what SLURM and PBS send before a walltime or preemption kill, and what ``kill``
    sends), raised in the main thread like Ctrl-C so that the same clean-ups run: temporaries
    removed, batch jobs cancelled, finished chunks kept."""


def _dropped_if_raised_at(frame) -> bool:
    """Whether an exception raised at ``frame`` would be printed and dropped rather than reach
    the command: inside a garbage-collection callback (distributed registers one) or a
    ``__del__``, where Python reports "Exception ignored" and carries on."""
    import gc

    callbacks = {getattr(getattr(cb, "__func__", cb), "__code__", None) for cb in gc.callbacks}
    while frame is not None:
        if frame.f_code in callbacks or frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


def _unwinding() -> None:
    """From here on the command is stopping: keep the one line it ends with the only output.
    A batch system's SIGTERM reaches the whole job, so PyTorch's loader workers die with it,
    and PyTorch's SIGCHLD handler would raise that as an error at whatever line the main
    process is unwinding; objects torn down on the way (a loader iterator's ``__del__``) would
    print "Exception ignored" reports. Neither tells the user anything the one line does not."""
    if hasattr(signal, "SIGCHLD"):
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    sys.unraisablehook = lambda unraisable: None


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Turn SIGTERM into :class:`Terminated` and SIGINT into KeyboardInterrupt while the block
    runs (main thread only). A signal that lands where the exception would be dropped (see
    :func:`_dropped_if_raised_at`; CI saw a Ctrl-C lost inside distributed's GC callback, and
    the simulation ran on to exit 0) is delivered again 50 ms later."""
    import _thread

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    owner = os.getpid()

    def handler(signum, frame):
        if os.getpid() != owner:
            # a forked child (a PyTorch loader worker, a multiprocessing helper) that got the
            # signal before replacing this handler: it dies of the signal, quietly, as it
            # would have without us; its parent reports the interrupt
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if _dropped_if_raised_at(frame):
            threading.Timer(0.05, _thread.interrupt_main, args=(signum,)).start()
            return
        _unwinding()
        if signum == signal.SIGTERM:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills at once
            raise Terminated()
        raise KeyboardInterrupt()

    # SIGINT ignored (a background job of a shell) stays ignored, as Python leaves it
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)
                if sig == signal.SIGTERM or signal.getsignal(sig) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _interrupt_behind(exc: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM that ``exc`` was raised while handling, if any: an error that
    happens only because the command is being stopped (a batch system's SIGTERM reaches the
    whole process group, so PyTorch's data-loader workers die too, and PyTorch reports that as
    a RuntimeError in the middle of the main process's unwinding)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        seen.add(id(exc))
        exc = exc.__context__
    return None


def _interrupted(args, exc: KeyboardInterrupt) -> int:
    """The one line an interrupted command ends with, and its exit status."""
    term = isinstance(exc, Terminated)
    hint = getattr(args, "on_interrupt", None)
    print(f"specdenoise {args.command}: {'terminated (SIGTERM)' if term else 'interrupted'}; "
          + (hint(args) if hint else "re-run the same command (with --overwrite if "
                              "it says an output exists)"),
          file=sys.stderr)
    return 143 if term else 130


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False)
    from specdenoise.options import quiet_libraries

    try:
        with sigterm_as_interrupt(), quiet_libraries(debug):
            status = args.func(args)
    except SpecdenoiseError as exc:
        if debug:
            raise
        behind = _interrupt_behind(exc)
        if behind is not None:
            return _interrupted(args, behind)
        print(f"specdenoise {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        return _interrupted(args, exc)
    except Exception as exc:
        behind = None if debug else _interrupt_behind(exc)
        if behind is not None:
            return _interrupted(args, behind)
        message = None if debug else known_failure(exc)
        if message is None:
            raise
        print(f"specdenoise {args.command}: error: {message} (--debug shows the traceback)",
              file=sys.stderr)
        return 2
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
