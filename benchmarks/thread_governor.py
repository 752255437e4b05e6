"""A thread governor for training on shared CPU cores, measured by bench_shared_cores.py.

Not used by ``specdenoise train``: it changes the thread count with the machine's load, and
the thread count changes the floating-point results, so runs would stop being reproducible;
on this machine it also cost 9 % idle (``results/shared_cores/``).

Training on CPU cores that other processes share: pick the thread count by measuring.

PyTorch's CPU kernels run on an OpenMP team with one thread per core it may use. Every
convolution ends in a barrier, so the step goes at the pace of the slowest thread. When another
process is busy on one of those cores, the kernel scheduler deschedules one of our threads for a
whole time slice at a time, and every barrier waits for it: on two cores the best U-Net fell from
about 90 to 7-17 spectra/s beside one busy process (README). One thread fewer than the cores
that are really free avoids the barrier stalls entirely.

Which count is best depends on what else runs, and that changes during a run, so
:class:`ThreadGovernor` measures it: it times the training steps in windows, now and then runs
one window at a neighbouring thread count (half or double), and keeps whichever delivered more
spectra per second. It only touches ``torch.set_num_threads`` and never exceeds the threads the
process started with (``OMP_NUM_THREADS``, ``--cpus-per-task``/affinity), so on an idle machine
it costs one short probe window every few minutes.
"""

from __future__ import annotations

import time

import torch

from specdenoise.train.distributed import usable_cores


class ThreadGovernor:
    """Adapts ``torch.set_num_threads`` to the throughput measured during training.

    Call :meth:`step` after every training step with the number of spectra it processed.
    Windows last at least ``window_s`` seconds and ``min_steps`` steps; after ``settle``
    windows at the current count (or at once, when a window is ``drop`` times slower than the
    last one) the next window is a probe at a neighbouring count, kept when it is at least
    ``gain`` faster. ``max_threads`` defaults to the threads torch has now, capped at the
    usable cores.
    """

    def __init__(self, max_threads: int | None = None, *, window_s: float = 5.0,
                 min_steps: int = 5, settle: int = 12, gain: float = 1.05,
                 drop: float = 0.7, clock=time.perf_counter):
        start = torch.get_num_threads()
        self.max_threads = max(1, min(max_threads or start, usable_cores()))
        self.threads = min(start, self.max_threads)
        self.window_s, self.min_steps, self.settle = window_s, min_steps, settle
        self.gain, self.drop, self.clock = gain, drop, clock
        self.history: list[tuple[int, float]] = []  # (threads, spectra/s) of every window
        self._baseline: float | None = None  # rate of the last window at self.threads
        self._probe: int | None = None  # thread count being probed
        self._since_probe = max(0, settle - 3)  # the first probe comes after three windows
        self._next_up = False  # alternate probing down and up
        self._reset_window()
        if self.threads != start:
            torch.set_num_threads(self.threads)

    @property
    def enabled(self) -> bool:
        return self.max_threads > 1

    def _reset_window(self) -> None:
        self._t0 = self.clock()
        self._n = 0
        self._steps = 0

    def _neighbour(self) -> int | None:
        down = max(1, self.threads // 2) if self.threads > 1 else None
        up = min(self.max_threads, self.threads * 2) if self.threads < self.max_threads else None
        first, second = (up, down) if self._next_up else (down, up)
        self._next_up = not self._next_up
        return first if first is not None else second

    def step(self, n_spectra: int) -> None:
        """Record one training step of ``n_spectra`` spectra; may change the thread count."""
        if not self.enabled:
            return
        self._n += n_spectra
        self._steps += 1
        elapsed = self.clock() - self._t0
        if self._steps < self.min_steps or elapsed < self.window_s:
            return
        rate = self._n / elapsed
        current = self._probe if self._probe is not None else self.threads
        self.history.append((current, rate))
        if self._probe is not None:  # a probe window ended: keep the faster count
            if self._baseline is None or rate >= self.gain * self._baseline:
                self.threads, self._baseline = self._probe, rate
            self._probe = None
            self._since_probe = 0
        else:
            slowed = self._baseline is not None and rate < self.drop * self._baseline
            self._baseline = rate
            self._since_probe += 1
            if self._since_probe >= self.settle or slowed:
                self._probe = self._neighbour()
        torch.set_num_threads(self._probe if self._probe is not None else self.threads)
        self._reset_window()

    def restore(self) -> None:
        """Leave torch at the best count found (validation and inference run after training)."""
        if self.enabled:
            torch.set_num_threads(self.threads)
