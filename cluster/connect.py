"""Turn a cluster spec into a ``distributed.Client``.

A spec is one of

- ``"local"``: a ``LocalCluster`` of worker processes sized to this machine
  (``workers``, ``threads_per_worker``, ``memory_limit`` override the sizing);
- ``"tcp://HOST:PORT"`` (or any scheduler address): connect to a running ``dask scheduler``;
- a path to a YAML profile (``cluster/slurm.yaml``, ``cluster/pbs.yaml``): a dask-jobqueue
  cluster for SLURM, PBS, SGE or LSF, see :mod:`specdenoise.cluster.profiles`. The scheduler
  runs in this process; each batch job runs Dask workers that connect back to it. A job that
  ends early (``scancel``, walltime, preemption) is replaced by a new submission, and its
  unfinished tasks move to the other workers meanwhile.

Clusters started here (local and batch) run with :data:`LOW_OVERHEAD` settings wherever the
Dask configuration still holds Dask's own default: a simulation keeps every core busy with
long numerical tasks, and Dask's per-process housekeeping (an event-loop watchdog every 20 ms,
a stack-sampling profiler every 10 ms, memory polls every 100 ms) cost about 7 % of a 2-core
machine, measured with a LocalCluster of 2 workers at rest. Set any of these keys in your own
Dask configuration to keep your value (e.g. ``distributed.worker.profile.enabled: true`` for
the dashboard's Profile page).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from specdenoise.cluster.profiles import (
    SPEC_HELP,
    JobKeeper,
    build_cluster,
    check_submit_command,
    job_script,
    load_profile,
    resolve_profile,
    scale,
    wait_for_workers,
)
from specdenoise.errors import SpecdenoiseError

#: Dask setting -> (Dask's default, the value used for the clusters started here)
LOW_OVERHEAD = {
    "distributed.admin.tick.interval": ("20ms", "200ms"),
    "distributed.worker.profile.enabled": (True, False),
    "distributed.worker.memory.monitor-interval": ("100ms", "500ms"),
    "distributed.admin.system-monitor.interval": ("500ms", "1s"),
}


#: the least ``--memory-limit`` accepted (bytes): an idle Dask worker process holds about
#: 150 MB, so a smaller limit has the nanny restart it every half second, for ever
MIN_WORKER_MEMORY = 256 * 2**20


def low_overhead_settings() -> dict:
    """The :data:`LOW_OVERHEAD` values for the keys the user's Dask config leaves at default."""
    import dask
    import distributed  # noqa: F401  (registers distributed's defaults with dask.config)

    return {key: ours for key, (default, ours) in LOW_OVERHEAD.items()
            if dask.config.get(key, default) in (default, ours)}


def _is_address(spec: str) -> bool:
    return "://" in spec


def check_local_options(spec, workers=None, threads_per_worker=None, memory_limit=None) -> None:
    """One-line errors for execution options that would hang or crash the cluster start.

    ``workers`` (processes, or jobs for a profile) and ``threads_per_worker`` must be at least
    1 when given; ``memory_limit`` must be a size such as ``4GB``, or ``auto``.
    """
    if workers is not None and workers < 1:
        raise SpecdenoiseError(f"--workers must be at least 1, got {workers}")
    if threads_per_worker is not None and threads_per_worker < 1:
        raise SpecdenoiseError(f"--threads-per-worker must be at least 1, got "
                               f"{threads_per_worker}")
    if memory_limit is not None and str(memory_limit) != "auto":
        from dask.utils import parse_bytes

        try:
            size = parse_bytes(str(memory_limit))
        except (ValueError, TypeError):
            size = 0
        if not size > 0:
            raise SpecdenoiseError(f"--memory-limit {memory_limit!r} is not a size; give "
                                   "e.g. 4GB or 500MiB (or auto)")
        if size < MIN_WORKER_MEMORY:
            raise SpecdenoiseError(
                f"--memory-limit {memory_limit} is less than a Dask worker needs to start "
                f"({MIN_WORKER_MEMORY // 2**20} MiB; a simulation worker keeps ~1.3 GB at "
                "1000 spectra per chunk): it would be restarted for ever")


@contextlib.contextmanager
def connect(
    spec: str = "local",
    *,
    workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | None = None,
) -> Iterator:
    """Context manager yielding a connected ``distributed.Client``; closes what it started."""
    import dask

    spec = str(spec or "local")
    check_local_options(spec, workers, threads_per_worker, memory_limit)
    # a cluster reached by address is someone else's: its settings are theirs
    settings = {} if _is_address(spec) else low_overhead_settings()
    with dask.config.set(settings), \
            _connect(spec, workers, threads_per_worker, memory_limit, settings) as client:
        yield client


def worker_job_script(profile_path: str | Path) -> tuple[str, list[str]]:
    """(the batch script a profile's worker jobs run, as :func:`connect` submits it, with
    ``tcp://HOST:PORT`` for the scheduler; notes on what cannot be checked offline): what
    ``specdenoise cluster show`` prints. Starts no scheduler."""
    path = resolve_profile(profile_path) or Path(profile_path)
    return job_script(load_profile(path), low_overhead_settings())


def _restore_environ(saved: dict[str, str]) -> None:
    """Put this process's environment back as ``saved``.

    Dask's nanny writes its workers' settings (``OMP_NUM_THREADS=1``, ``MKL_NUM_THREADS=1``,
    ``MALLOC_TRIM_THRESHOLD_``) into the parent's environment before each spawn and leaves
    them there (it sets them again before every later spawn). A library initialised later in
    this process would obey them: torch in ``specdenoise run``'s training stage trained the
    paper U-Net on one thread of two.
    """
    for key in set(os.environ) - set(saved):
        del os.environ[key]
    for key, value in saved.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


@contextlib.contextmanager
def _connect(spec, workers, threads_per_worker, memory_limit, settings) -> Iterator:
    from distributed import Client, LocalCluster

    if spec == "local":
        n_cpu = os.cpu_count() or 1
        threads = threads_per_worker or 1
        n_workers = workers or max(1, n_cpu // threads)
        saved = dict(os.environ)
        # the worker processes log only errors (they share this terminal: closing them on
        # Ctrl-C printed a warning per cancelled task before the one-line message)
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")
        with _workers_ignore_sigint():
            cluster = LocalCluster(
                n_workers=n_workers,
                threads_per_worker=threads,
                processes=True,
                memory_limit=memory_limit or "auto",
                dashboard_address=":0",
            )
        _restore_environ(saved)
        client = Client(cluster)
        try:
            yield client
        finally:
            client.close()
            cluster.close()
            _restore_environ(saved)
    elif _is_address(spec):
        try:
            client = Client(spec, timeout="20s")
        except Exception as exc:  # OSError, ValueError: a garbage address; TimeoutError
            why = " ".join(str(exc).split()) or type(exc).__name__
            raise SpecdenoiseError(f"cannot reach the Dask scheduler at {spec}: {why}") from None
        try:
            yield client
        finally:
            client.close()
    elif resolve_profile(spec) is not None:
        profile = load_profile(resolve_profile(spec))
        check_submit_command(profile)
        cluster = build_cluster(profile, settings)
        keeper = None
        try:
            n_jobs = scale(cluster, profile, workers=workers)
            wait_for_workers(cluster, profile, n_jobs)
            keeper = JobKeeper(cluster)
            client = Client(cluster)
            try:
                yield client
            finally:
                keeper.stop()
                client.close()
        finally:
            if keeper is not None:
                keeper.stop()
            cluster.close()
    else:
        raise SpecdenoiseError(f"--cluster {spec!r}: expected {SPEC_HELP}")


@contextlib.contextmanager
def _workers_ignore_sigint() -> Iterator[None]:
    """Start local worker processes with SIGINT ignored: Ctrl-C reaches every process of the
    terminal's process group, and each worker printed its own traceback before this
    process's one line. The workers end when this process closes the cluster (its clean-up
    on KeyboardInterrupt), and Python keeps an inherited "ignore" for SIGINT."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
