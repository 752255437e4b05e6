"""Batch-system cluster profiles (YAML) for dask-jobqueue.

A profile is a small YAML mapping; ``kind`` picks the batch system and every other key maps
onto a dask-jobqueue argument of the same name. ``jobs`` (a fixed number of jobs) or
``adaptive: {minimum, maximum}`` (scale with the work) say how many jobs to run.
See ``cluster/slurm.yaml`` and ``cluster/pbs.yaml`` for commented examples.

Jobs run this very interpreter (``sys.executable``) unless the profile names another
``python``: on a cluster whose nodes share the file system with the login node, the workers
import the same installation of specdenoise as the process that submits them.
"""

from __future__ import annotations

import logging
import shlex
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

import yaml

from specdenoise.cluster.batch import SYSTEMS
from specdenoise.errors import SpecdenoiseError

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

log = logging.getLogger("specdenoise.cluster")


def load_profile(path: Path) -> dict:
    """Read and check a profile; one error line lists every problem."""
    from specdenoise.stores import read_text

    path = Path(path)
    text = read_text(path, "cluster profile")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise SpecdenoiseError(f"cluster profile {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise SpecdenoiseError(f"cluster profile {path} must be a mapping of keys to values")
    problems = []
    if data.get("kind") not in SYSTEMS:
        problems.append(f"'kind' must be one of {', '.join(SYSTEMS)}")
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
    problems += value_problems(data)
    if problems:
        raise SpecdenoiseError(f"cluster profile {path}: " + "; ".join(problems))
    data["_path"] = str(path)
    return data


#: keys whose value is one word on a directive line (no spaces, quotes or shell characters)
WORD_KEYS = ("walltime", "queue", "account", "project", "job_name", "interface")
#: keys holding a list of lines (directives, shell lines, worker options)
LIST_KEYS = ("job_extra_directives", "job_script_prologue", "job_directives_skip",
             "worker_extra_args")
#: paths written into the job script, shell-quoted there
PATH_KEYS = ("local_directory", "python", "log_directory", "shebang")


def _is_positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def value_problems(data: dict) -> list[str]:
    """What is wrong with a profile's values (they end up in a batch script: every value is
    one line; words are words; counts are positive)."""
    problems = []

    def one_line(key, v) -> bool:
        if isinstance(v, str) and any(c in v for c in "\n\r\0"):
            problems.append(f"'{key}' must be one line (it would inject lines into the job "
                            "script)")
            return False
        return True

    for key, v in data.items():
        if isinstance(v, list):
            for item in v:
                if not one_line(key, item):
                    break
        elif isinstance(v, dict):
            for item in v.values():
                if not one_line(key, item):
                    break
        else:
            one_line(key, v)
    for key in ("cores", "processes"):
        if key in data and not _is_positive_int(data[key]):
            problems.append(f"'{key}' must be a positive integer, got {data[key]!r}")
    if "memory" in data:
        from dask.utils import parse_bytes

        try:
            ok = parse_bytes(str(data["memory"])) > 0
        except (ValueError, TypeError):
            ok = False
        if not ok:
            problems.append(f"'memory' must be a size such as 4GB, got {data['memory']!r}")
    for key in WORD_KEYS:
        v = data.get(key)
        if v is not None and (not isinstance(v, str | int) or
                              any(c.isspace() or c in "\"'`$;&|<>()\\" for c in str(v))):
            problems.append(f"'{key}' must be one word without spaces or shell characters, "
                            f"got {v!r}")
    for key in LIST_KEYS:
        v = data.get(key)
        if v is not None and not (isinstance(v, list) and all(isinstance(x, str | int | float)
                                                              for x in v)):
            problems.append(f"'{key}' must be a list of strings")
    for key in PATH_KEYS:
        v = data.get(key)
        if v is not None and not isinstance(v, str):
            problems.append(f"'{key}' must be a path (a string)")
    if "death_timeout" in data and not (isinstance(data["death_timeout"], int | float)
                                        and data["death_timeout"] > 0):
        problems.append("'death_timeout' must be a positive number of seconds")
    if "adaptive" in data and isinstance(data["adaptive"], dict):
        for k, v in data["adaptive"].items():
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
                problems.append(f"'adaptive.{k}' must be a non-negative integer")
    return problems


def env_exports(settings: Mapping) -> list[str]:
    """Shell lines that give batch-job workers Dask ``settings`` (a value the job has wins)."""
    lines = []
    for key, value in settings.items():
        var = "DASK_" + key.replace(".", "__").replace("-", "_").upper()
        lines.append(f'export {var}="${{{var}:-{value}}}"')
    return lines


def build_cluster(profile: dict, dask_settings: Mapping | None = None):
    """The dask-jobqueue cluster object of a profile (starts its scheduler, no jobs yet).

    ``dask_settings`` (Dask config key -> value) are exported at the top of every job script,
    before the profile's own ``job_script_prologue``.
    """
    try:
        import dask_jobqueue
    except ImportError:
        raise SpecdenoiseError(
            "batch-system profiles need dask-jobqueue: pip install 'specdenoise[hpc]'"
        ) from None
    cls = getattr(dask_jobqueue, SYSTEMS[profile["kind"]].jobqueue_class)
    kwargs = {k: profile[k] for k in JOBQUEUE_KEYS if profile.get(k) is not None}
    kwargs.setdefault("scheduler_options", {"dashboard_address": ":0"})
    kwargs.setdefault("python", sys.executable)
    # dask-jobqueue pastes these into the worker's command line: quote them for the shell
    for key in ("python", "local_directory"):
        if key in kwargs:
            kwargs[key] = shlex.quote(str(kwargs[key]))
    kwargs["job_script_prologue"] = [*env_exports(dask_settings or {}),
                                     *(kwargs.get("job_script_prologue") or [])]
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


def job_script(profile: dict, dask_settings: Mapping | None = None) -> str:
    """The batch script the profile's jobs run (what ``specdenoise cluster show`` prints)."""
    cluster = build_cluster(profile, dask_settings)
    try:
        return cluster.job_script()
    finally:
        cluster.close()


def check_submit_command(profile: dict) -> None:
    """One clear line when the batch system's submit command is not on PATH."""
    cmd = SYSTEMS[profile["kind"]].missing_command()
    if cmd is not None:
        raise SpecdenoiseError(
            f"cluster profile {profile['_path']} submits jobs with {cmd!r}, which is not on "
            f"PATH: run on a login node of your {profile['kind'].upper()} cluster (or use "
            "--cluster local)")


class JobKeeper:
    """Resubmit batch jobs that ended while the cluster is still in use.

    dask-jobqueue submits each job once. When one ends early (``scancel``, walltime,
    preemption) its workers leave the scheduler, their unfinished tasks move to the workers
    that remain, and after ``distributed.deploy.lost-worker-timeout`` (15 s) the cluster
    forgets the job. This thread notices the forgotten job and asks the cluster to bring its
    jobs back to the requested number, which submits a replacement. Results do not change:
    every task is a pure function of its key, whichever worker runs it.
    """

    def __init__(self, cluster, interval: float = 5.0):
        self.cluster = cluster
        self.interval = interval
        self.replaced = 0
        self._seen: set = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="specdenoise-job-keeper",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                running = set(self.cluster.workers)
                wanted = set(self.cluster.worker_spec)
            except RuntimeError:  # a dict changed size while we copied it; look again later
                continue
            lost = (wanted & self._seen) - running
            self._seen |= running
            if lost and not self._stop.is_set():
                self._seen -= lost
                self.replaced += len(lost)
                log.warning("batch job(s) of %s ended early; submitting replacement(s)",
                            ", ".join(sorted(map(str, lost))))
                # what SpecCluster.scale() does after changing the spec: open what is missing
                self.cluster.loop.add_callback(self.cluster._correct_state)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.interval + 1)
