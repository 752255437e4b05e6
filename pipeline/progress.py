"""Progress bars for every stage: live on a terminal, a plain line every 10 % in a log file.

A live bar redraws itself with carriage returns; written to a file (a batch job's log, ``tee``)
every redraw stays in it (206 of them made 17 KB of a 20 KB log). So :func:`bar` draws a tqdm
bar only where someone watches -- a terminal or a Jupyter kernel -- and otherwise prints one
time-stamped line (local time, :func:`stamp`) per tenth of the work::

    simulate: 30 % (900/3000 spec, 12 s, 75 spec/s) [2026-12-06 06:30:12]

The lines go to standard output, beside the command's other log lines, so that standard error
holds nothing but a failure's one-line message; a live bar draws on standard error.

``enabled``: False draws nothing; True draws the live bar or the lines; None draws the live
bar on a terminal and nothing elsewhere (for stages that log their own progress).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Iterable, Iterator

#: the time stamp closing every progress and log line written to a file (local time)
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def stamp() -> str:
    """The time stamp of a log line: ``[2026-12-06 06:30:12]`` (local time)."""
    return time.strftime(f"[{TIME_FORMAT}]")


def log_to_stdout() -> None:
    """Send log records (INFO and up) to standard output, time-stamped like the progress lines,
    unless logging is configured already: standard error holds only a failure's line."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s [%(asctime)s]",
                            datefmt=TIME_FORMAT, stream=sys.stdout)


def is_live(stream=None) -> bool:
    """Whether ``stream`` (default stderr) is watched live: a terminal or a Jupyter kernel."""
    stream = sys.stderr if stream is None else stream
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
    return "ipykernel" in sys.modules


class LineProgress:
    """The tqdm methods the stages use (update, set_postfix, close, n, disable), as lines."""

    def __init__(self, total: int | None, desc: str, unit: str, stream=None, step: float = 0.1,
                 disable: bool = False):
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = sys.stdout if stream is None else stream
        self.step = step
        self.disable = disable
        self.n = 0
        self._t0 = time.perf_counter()
        self._printed = 0  # tenths already reported
        self._postfix = ""

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self._postfix = ", ".join(f"{k} {v}" for k, v in items.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.disable or not self.total:
            return
        tenth = math.floor(self.n / self.total / self.step + 1e-9)
        if tenth > self._printed:
            self._printed = tenth
            self._line()

    def _line(self) -> None:
        elapsed = time.perf_counter() - self._t0
        rate = self.n / elapsed if elapsed > 0 else float("nan")
        pct = f"{100 * self.n / self.total:.0f} % " if self.total else ""
        of = f"/{self.total}" if self.total else ""
        extra = f", {self._postfix}" if self._postfix else ""
        print(f"{self.desc}: {pct}({self.n}{of} {self.unit}, {elapsed:.0f} s, {rate:.3g} "
              f"{self.unit}/s{extra}) {stamp()}", file=self.stream, flush=True)

    def close(self) -> None:
        """Report a last line when the work stopped between two tenths (or had no total)."""
        if self.disable:
            return
        if self.n and (not self.total or self.n < self.total) and self._printed < 1 / self.step:
            self._line()
        self.disable = True


def bar(total: int | None, desc: str, unit: str = "it", *, enabled: bool | None = True,
        leave: bool = True, stream=None):
    """A progress bar for ``total`` units of work (see the module docstring for ``enabled``)."""
    if enabled is not False and is_live(stream):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, leave=leave, file=stream)
    return LineProgress(total, desc, unit, stream, disable=not enabled)


def iterate(items: Iterable, desc: str, unit: str = "it", *, total: int | None = None,
            enabled: bool | None = True) -> Iterator:
    """Iterate over ``items`` with a :func:`bar` (``total`` defaults to ``len(items)``)."""
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    with bar(total, desc, unit, enabled=enabled) as b:
        for item in items:
            yield item
            b.update(1)
