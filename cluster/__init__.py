"""Dask clusters for specdenoise: ``connect`` turns a cluster spec into a ``distributed.Client``.

- :mod:`.connect` -- ``"local"``, a scheduler address or a YAML profile -> a connected client,
  with Dask's housekeeping turned down for the clusters started here;
- :mod:`.profiles` -- batch-system profiles (YAML): reading, checking, the dask-jobqueue
  cluster they describe, replacing lost jobs;
- :mod:`.batch` -- one small table per batch system (SLURM, PBS, SGE, LSF): directives,
  submit and cancel commands, job ids.

``slurm.yaml`` and ``pbs.yaml`` beside this file are example profiles.
"""

# ``specdenoise.cluster.connect`` is the function (what users import); the module of the same
# name stays reachable as ``sys.modules["specdenoise.cluster.connect"]``.
from specdenoise.cluster.batch import SYSTEMS, BatchSystem
from specdenoise.cluster.connect import (
    LOW_OVERHEAD,
    check_local_options,
    connect,
    low_overhead_settings,
    worker_job_script,
)
from specdenoise.cluster.profiles import load_profile

__all__ = [
    "LOW_OVERHEAD",
    "SYSTEMS",
    "BatchSystem",
    "check_local_options",
    "connect",
    "load_profile",
    "low_overhead_settings",
    "worker_job_script",
]
