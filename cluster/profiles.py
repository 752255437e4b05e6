"""Batch-system cluster profiles (YAML) for dask-jobqueue.

A profile is a small YAML mapping; ``kind`` picks the batch system and every other key maps
onto a dask-jobqueue argument of the same name. ``jobs`` (a fixed number of jobs) or
``adaptive: {minimum, maximum}`` (scale with the work) say how many jobs to run.
See ``cluster/slurm.yaml`` and ``cluster/pbs.yaml`` for commented examples.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from specdenoise.simulate.errors import SpecdenoiseError

KINDS = {
    "slurm": "SLURMCluster",
    "pbs": "PBSCluster",
    "sge": "SGECluster",
    "lsf": "LSFCluster",
}
#: profile keys passed to the dask-jobqueue constructor unchanged
JOBQUEUE_KEYS = (
    "cores",
    "processes",
    "memory",
    "walltime",
    "queue",
    "account",
    "project",
    "resource_spec",
    "job_name",
    "job_extra_directives",
    "job_script_prologue",
    "job_directives_skip",
    "worker_extra_args",
    "local_directory",
    "log_directory",
    "python",
    "interface",
    "death_timeout",
    "scheduler_options",
    "shebang",
)
CONTROL_KEYS = ("kind", "jobs", "adaptive")


def load_profile(path: Path) -> dict:
    """Read and check a profile; one error line lists every problem."""
    path = Path(path)
    if not path.exists():
        raise SpecdenoiseError(f"cluster profile {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SpecdenoiseError(f"cluster profile {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise SpecdenoiseError(f"cluster profile {path} must be a mapping of keys to values")
    problems = []
    if data.get("kind") not in KINDS:
        problems.append(f"'kind' must be one of {', '.join(KINDS)}")
    unknown = sorted(set(data) - set(JOBQUEUE_KEYS) - set(CONTROL_KEYS))
    if unknown:
        problems.append(f"unknown key(s) {', '.join(unknown)}")
    for key in ("cores", "memory"):
        if key not in data:
            problems.append(f"'{key}' is required")
    if "adaptive" in data:
        ad = data["adaptive"]
        if not (isinstance(ad, dict) and set(ad) <= {"minimum", "maximum"}):
            problems.append("'adaptive' must be {minimum: N, maximum: M}")
    if "jobs" in data and (not isinstance(data["jobs"], int) or data["jobs"] < 0):
        problems.append("'jobs' must be a non-negative integer")
    if problems:
        raise SpecdenoiseError(f"cluster profile {path}: " + "; ".join(problems))
    data["_path"] = str(path)
    return data


def build_cluster(profile: dict):
    """The dask-jobqueue cluster object of a profile (starts its scheduler, no jobs yet)."""
    try:
        import dask_jobqueue
    except ImportError:
        raise SpecdenoiseError(
            "batch-system profiles need dask-jobqueue: pip install 'specdenoise[hpc]'"
        ) from None
    cls = getattr(dask_jobqueue, KINDS[profile["kind"]])
    kwargs = {k: profile[k] for k in JOBQUEUE_KEYS if profile.get(k) is not None}
    kwargs.setdefault("scheduler_options", {"dashboard_address": ":0"})
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise SpecdenoiseError(f"cluster profile {profile['_path']}: {exc}") from None


def scale(cluster, profile: dict, workers: int | None = None) -> None:
    """Start jobs: adaptive when the profile says so, else ``workers`` or ``jobs`` jobs."""
    if "adaptive" in profile and workers is None:
        ad = profile["adaptive"]
        cluster.adapt(minimum_jobs=ad.get("minimum", 0), maximum_jobs=ad.get("maximum", 1))
    else:
        cluster.scale(jobs=workers if workers is not None else profile.get("jobs", 1))


def job_script(profile: dict) -> str:
    """The batch script the profile's jobs run (what ``specdenoise cluster show`` prints)."""
    cluster = build_cluster(profile)
    try:
        return cluster.job_script()
    finally:
        cluster.close()
