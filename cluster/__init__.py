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
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from specdenoise.simulate.errors import SpecdenoiseError


def _is_address(spec: str) -> bool:
    return "://" in spec


@contextlib.contextmanager
def connect(
    spec: str = "local",
    *,
    workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | None = None,
    quiet: bool = False,
) -> Iterator:
    """Context manager yielding a connected ``distributed.Client``; closes what it started."""
    from distributed import Client, LocalCluster

    spec = str(spec or "local")
    if spec == "local":
        n_cpu = os.cpu_count() or 1
        threads = threads_per_worker or 1
        n_workers = workers or max(1, n_cpu // threads)
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads,
            processes=True,
            memory_limit=memory_limit or "auto",
            dashboard_address=":0",
        )
        client = Client(cluster)
        try:
            yield client
        finally:
            client.close()
            cluster.close()
    elif _is_address(spec):
        try:
            client = Client(spec, timeout="20s")
        except OSError as exc:
            raise SpecdenoiseError(f"cannot reach the Dask scheduler at {spec}: {exc}") from None
        try:
            yield client
        finally:
            client.close()
    elif spec.endswith((".yaml", ".yml")):
        from specdenoise.cluster.profiles import (
            JobKeeper,
            build_cluster,
            check_submit_command,
            load_profile,
            scale,
        )

        profile = load_profile(Path(spec))
        check_submit_command(profile)
        cluster = build_cluster(profile)
        keeper = None
        try:
            scale(cluster, profile, workers=workers)
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
        raise SpecdenoiseError(
            f"--cluster {spec!r}: expected 'local', a scheduler address like tcp://HOST:8786, "
            "or a YAML profile such as cluster/slurm.yaml"
        )
