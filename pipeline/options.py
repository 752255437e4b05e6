"""The options several subcommands share, each spelled and explained in one place.

README's "Options" table lists them (option, meaning, commands) and ``tests/test_options.py``
checks that table against every parser's ``--help``. The ``cli_*`` modules call these helpers
instead of writing the same ``add_argument`` again, so one word keeps one meaning:

- ``--device``: where the networks run (:func:`add_device`; checked before any work by
  :func:`check_device`);
- ``--run``: a run folder of ``specdenoise train`` (:func:`add_run`);
- ``--arch``: the kind of network ``train`` builds;
- ``--workers``: Dask worker processes; ``--loader-workers``: PyTorch DataLoader processes;
- ``--no-progress`` (:func:`add_no_progress`), ``--overwrite`` (:func:`add_overwrite`),
  ``--preset`` (:func:`add_preset`: every choice with its cost, the default marked).

An old spelling stays as a deprecated alias (:func:`add_alias`): it works as before, is left
out of ``--help`` and prints one line to stderr naming its replacement.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator

from specdenoise.progress import TIME_FORMAT  # noqa: F401 (one time format for all)

DEVICE_HELP = ("where the networks run: auto (default: a CUDA GPU, else Apple MPS, else the "
               "CPU), cpu, cuda, cuda:N or mps; checked before any work starts")
NO_PROGRESS_HELP = ("no progress bar on a terminal and no time-stamped progress lines in a "
                    "log file")
RUN_HELP = "run folder written by 'specdenoise train' (or its checkpoint.pt)"


class DeprecatedAlias(argparse.Action):
    """An old option name: does what ``new`` does and says once, on stderr, to use ``new``."""

    deprecated_alias = True  # submit.rebuild_argv passes on the new spelling only

    def __init__(self, option_strings, dest, new: str, append: bool = False, **kwargs):
        self.new, self.append = new, append
        self._warned = False
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        if not self._warned:
            self._warned = True
            print(f"{parser.prog}: {option_string} is deprecated; use {self.new} "
                  "(it does the same)", file=sys.stderr)
        if self.append:
            items = list(getattr(namespace, self.dest, None) or [])
            setattr(namespace, self.dest, [*items, values])
        else:
            setattr(namespace, self.dest, values)


def add_alias(parser, old: str, new: str, dest: str, *, append: bool = False, **kwargs) -> None:
    """``old`` as a deprecated, hidden alias of ``new`` (same ``dest``; ``kwargs`` such as
    ``choices`` and ``metavar`` as for ``new``)."""
    parser.add_argument(old, dest=dest, action=DeprecatedAlias, new=new, append=append,
                        default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)


def add_config(parser, what: str, keys: str, *, type=None) -> None:
    """``--config FILE.toml`` (the command's configuration ``what``, keyed by ``keys``) and
    ``--print-config`` (the effective configuration as TOML, which ``--config`` reads back)."""
    parser.add_argument("--config", metavar="FILE.toml", type=type,
                        help=f"TOML file of {what}: {keys}; --print-config writes one; options "
                             "given here win over it")
    parser.add_argument("--print-config", action="store_true",
                        help="print the effective configuration as TOML (what --config reads "
                             "back) and exit")


def add_device(parser) -> None:
    parser.add_argument("--device", default=None, metavar="DEVICE", help=DEVICE_HELP)


def add_no_progress(parser) -> None:
    parser.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)


def add_overwrite(parser, what: str) -> None:
    """``--overwrite``: replace ``what`` (only what this command writes, never anything else)."""
    parser.add_argument("--overwrite", action="store_true", help=f"replace {what}")


def add_run(parser, *, several: bool = False) -> None:
    """``--run RUN_DIR`` (``several``: repeatable), with the old ``--model`` as an alias."""
    if several:
        parser.add_argument("--run", dest="runs", action="append", default=[],
                            metavar="RUN_DIR", help=RUN_HELP + "; repeat for several side by "
                                                               "side (formerly --model)")
        add_alias(parser, "--model", "--run", "runs", append=True, metavar="RUN_DIR")
    else:
        parser.add_argument("--run", dest="run_dir", metavar="RUN_DIR",
                            help=RUN_HELP + "; required (formerly --model)")
        add_alias(parser, "--model", "--run", "run_dir", metavar="RUN_DIR")


def run_dir(args) -> str:
    """The ``--run`` given (by its name or the alias): argparse cannot require an option
    that an alias may set, so this says so in one line."""
    value = getattr(args, "run_dir", None)
    if value is None:
        from specdenoise.errors import SpecdenoiseError

        raise SpecdenoiseError("give --run RUN_DIR (a run folder of 'specdenoise train')")
    return value


def add_preset(parser, presets: dict[str, str], default: str | None, *, extra: str = "",
               store_default: bool = True) -> None:
    """``--preset`` with each choice's meaning and cost in the help, the default marked.

    ``store_default=False``: the option stays None when not given (``train --resume`` keeps
    the preset the run started with; a new run gets ``default`` later)."""
    lines = "; ".join(f"{name}: {text}" + (" (default)" if name == default else "")
                      for name, text in presets.items())
    text = (extra + " " if extra else "") + lines
    parser.add_argument("--preset", choices=tuple(presets),
                        default=default if store_default else None,
                        help=text.replace("%", "%%"))  # argparse formats help with %


def check_device(device: str | None) -> None:
    """Refuse, in one line, a device this machine does not have (before any work starts)."""
    if device in (None, "auto"):
        return
    import torch

    from specdenoise.errors import SpecdenoiseError

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise SpecdenoiseError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or "
                               "mps") from None
    if dev.type == "cuda":  # no torch.cuda.set_device here: DDP ranks pick their own GPU
        if not torch.cuda.is_available():
            raise SpecdenoiseError(f"--device {device} asked for, but torch sees no CUDA GPU; "
                                   "use --device cpu or leave --device out")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise SpecdenoiseError(f"--device {device}: this machine has "
                                   f"{torch.cuda.device_count()} CUDA GPU(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise SpecdenoiseError(f"--device {device} asked for, but MPS is not available")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise SpecdenoiseError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps")


# --------------------------------------------------------------------------- logs

#: libraries whose own log records stay out of a user's log unless --debug
QUIET_LOGGERS = ("distributed", "tornado", "asyncio", "bokeh", "torch")
#: loggers that ``import distributed`` sets to a level of their own (``distributed.config``'s
#: defaults), undoing ours when the import comes later: they get a filter instead
DISTRIBUTED_OWN_LEVELS = ("distributed", "distributed.client", "distributed.gc", "bokeh",
                          "tornado", "tornado.application")


def _critical_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.CRITICAL


@contextlib.contextmanager
def quiet_libraries(debug: bool) -> Iterator[None]:
    """Keep Dask's and PyTorch's own warnings out of a user's log (``--debug`` keeps them).

    Dask's nanny, scheduler and workers log shutdown chatter such as ``Worker process still
    alive after 4.0 seconds, killing`` or a ``CancelledError`` after Ctrl-C; a real failure
    still reaches the user as the error the stage raises. Worker processes started meanwhile
    get the setting through the environment (``DASK_LOGGING__DISTRIBUTED``, and
    ``PYTHONWARNINGS`` for multiprocessing's resource tracker), which is put back afterwards,
    as are the warning filters (the command may run inside a test or a notebook).
    """
    if debug:
        yield
        return
    old = {k: os.environ.get(k) for k in ("DASK_LOGGING__DISTRIBUTED", "PYTHONWARNINGS")}
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "critical")
    # the resource tracker process that Dask's and PyTorch's worker processes share reports
    # their semaphores after a Ctrl-C ("There appear to be 1 leaked semaphore objects")
    os.environ["PYTHONWARNINGS"] = ",".join(
        w for w in (old["PYTHONWARNINGS"], "ignore:resource_tracker:UserWarning") if w)
    for name in [*logging.root.manager.loggerDict, *QUIET_LOGGERS]:
        if name.split(".")[0] in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.CRITICAL)
    # ``import distributed`` inside the block (a stage imports it lazily) sets these loggers'
    # levels back to its defaults (tornado.application: error), and a Ctrl-C that lands in
    # its event loop's callbacks is then logged with a traceback; a filter outlives that
    filtered = [logging.getLogger(name) for name in DISTRIBUTED_OWN_LEVELS]
    for logger in filtered:
        logger.addFilter(_critical_only)
    try:
        with warnings.catch_warnings():
            for module in (r"torch(\..*)?", r"distributed(\..*)?", r"dask(\..*)?"):
                warnings.filterwarnings("ignore", module=module)
            yield
    finally:
        for logger in filtered:
            logger.removeFilter(_critical_only)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
