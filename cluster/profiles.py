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

import inspect
import logging
import shlex
import socket
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
CONTROL_KEYS = ("kind", "jobs", "adaptive", "wait_hint_after")

#: profiles shipped with the package: ``--cluster slurm`` / ``--cluster pbs`` from any folder
SHIPPED = ("slurm", "pbs")

#: what ``--cluster`` accepts besides ``local`` and an address (for messages)
SPEC_HELP = ("'local', a scheduler address like tcp://HOST:8786, a shipped profile "
             f"({', '.join(SHIPPED)}) or a YAML profile such as my-site.yaml")


def resolve_profile(spec) -> Path | None:
    """The profile file a ``--cluster`` value names: a shipped profile by its name, or a
    path ending in .yaml/.yml; None when it names no profile."""
    spec = str(spec)
    if spec in SHIPPED:
        return Path(__file__).with_name(f"{spec}.yaml")
    if spec.endswith((".yaml", ".yml")):
        return Path(spec)
    return None

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


#: a path may use environment variables ($TMPDIR, ${SCRATCH}), expanded on the compute node;
#: nothing else a shell would run
_VAR = r"\$(?:[A-Za-z_][A-Za-z0-9_]*|\{[A-Za-z_][A-Za-z0-9_]*\})"


def shell_path(value: str) -> str:
    """``value`` as one shell word in which ``$VAR``/``${VAR}`` expand and nothing else does
    (plain words are single-quoted, words with variables double-quoted)."""
    import re

    value = str(value)
    if "$" not in value:
        return shlex.quote(value)
    if "`" in value or re.sub(_VAR, "", value).count("$"):
        raise SpecdenoiseError(f"path {value!r}: only $NAME or ${{NAME}} variables may appear "
                               "in a profile's paths")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _is_positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


#: what a profile's scheduler_options may set
SCHEDULER_KEYS = frozenset({"host", "interface", "port", "dashboard_address", "protocol"})


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
        elif v is not None and key != "shebang":
            try:
                shell_path(v)
            except SpecdenoiseError as exc:
                problems.append(f"'{key}': {exc}")
    so = data.get("scheduler_options")
    if so is not None and not (isinstance(so, dict) and set(so) <= SCHEDULER_KEYS):
        problems.append("'scheduler_options' may hold only "
                        f"{', '.join(sorted(SCHEDULER_KEYS))}")
    elif isinstance(so, dict):
        for key in ("host", "interface"):
            v = so.get(key)
            if v is not None and (not isinstance(v, str) or not v or
                                  any(c.isspace() or c in "\"'`$;&|<>()\\/" for c in v)):
                problems.append(f"'scheduler_options.{key}' must be one word, got {v!r}")
    if "wait_hint_after" in data and not (isinstance(data["wait_hint_after"], int | float)
                                          and not isinstance(data["wait_hint_after"], bool)
                                          and data["wait_hint_after"] > 0):
        problems.append("'wait_hint_after' must be a positive number of seconds")
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


def scheduler_host(profile: dict, *, offline: bool = False) -> tuple[str | None, str]:
    """(address the scheduler listens on, where it comes from) for a profile's jobs.

    ``scheduler_options.host`` as given; else the IPv4 address of the interface named by
    ``scheduler_options.interface`` or ``interface`` (the login node's side of the network
    the compute nodes share, e.g. ``ib0``); else this machine's address on its default route
    (what Dask picks). A missing interface is one error line, or with ``offline`` (``cluster
    show`` on a laptop) ``(None, why)``.
    """
    so = profile.get("scheduler_options") or {}
    if so.get("host"):
        return str(so["host"]), "scheduler_options.host"
    iface = so.get("interface") or profile.get("interface")
    if iface:
        import psutil

        addrs = psutil.net_if_addrs()
        ipv4 = [a.address for a in addrs.get(iface, ()) if a.family == socket.AF_INET]
        if ipv4:
            return ipv4[0], f"interface {iface}"
        why = (f"network interface {iface!r} is not on this machine (it has "
               f"{', '.join(sorted(addrs))})" if iface not in addrs else
               f"network interface {iface!r} has no IPv4 address here")
        if offline:
            return None, why
        raise SpecdenoiseError(f"cluster profile {profile.get('_path', '')}: {why}; run on "
                               "the login node that has it, or name another interface")
    from distributed.utils import get_ip

    return get_ip(), "this machine's address on its default route"


def is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def _job_kwargs(profile: dict, dask_settings: Mapping | None) -> dict:
    """The dask-jobqueue arguments of a profile's jobs (paths quoted for the shell)."""
    kwargs = {k: profile[k] for k in JOBQUEUE_KEYS if profile.get(k) is not None}
    kwargs.setdefault("python", sys.executable)
    # dask-jobqueue pastes these into the worker's command line: quote them for the shell
    # (a $TMPDIR in local_directory still expands on the compute node)
    for key in ("python", "local_directory"):
        if key in kwargs:
            kwargs[key] = shell_path(kwargs[key])
    # the batch system hands the job this process's environment; the CLI quiets Dask's logs
    # for its own terminal (options.quiet_libraries), but the job log is where a user looks
    # when workers fail to connect, so the workers log as usual
    kwargs["job_script_prologue"] = ["unset DASK_LOGGING__DISTRIBUTED",
                                     *env_exports(dask_settings or {}),
                                     *(kwargs.get("job_script_prologue") or [])]
    return kwargs


def _jobqueue_class(profile: dict):
    import signal

    # dask-jobqueue's runner module, imported with the package, replaces the SIGINT handler
    # with sys.exit(): Ctrl-C then ended a run with status 0 and no word, jobs cancelled and
    # the store incomplete (a 'simulate && train' script carried on). Keep ours.
    previous = signal.getsignal(signal.SIGINT)
    try:
        import dask_jobqueue
    except ImportError:
        raise SpecdenoiseError(
            "batch-system profiles need dask-jobqueue: pip install 'specdenoise[hpc]'"
        ) from None
    finally:
        if (previous is not None and signal.getsignal(signal.SIGINT) is not previous
                and threading.current_thread() is threading.main_thread()):
            signal.signal(signal.SIGINT, previous)
    return getattr(dask_jobqueue, SYSTEMS[profile["kind"]].jobqueue_class)


def _submit_error(text: str) -> str:
    """The useful line of dask-jobqueue's error for a failed submit command (the command's
    last stderr line, e.g. "sbatch: error: Batch job submission failed: Invalid partition
    name specified"), else the whole text on one line."""
    _, _, err = text.partition("stderr:")
    lines = [ln.strip() for ln in (err or text).splitlines() if ln.strip()]
    return "; ".join(lines[-2:]) if err and lines else " ".join(text.split())


def _recording(cls, failures: list[str]):
    """``cls`` whose jobs note why their submission failed in ``failures`` (dask-jobqueue
    only logs it, and the run would wait for ever for workers that never come)."""
    base = cls.job_cls

    class Job(base):
        async def start(self):
            try:
                await super().start()
            except Exception as exc:  # the submit command's error, as dask-jobqueue raised it
                # (noted for wait_for_workers' one line, not raised into the event loop,
                # which would print its traceback)
                failures.append(_submit_error(str(exc)))
                from distributed.core import Status

                self.status = Status.running  # what SpecCluster awaits; it has no job to cancel

    Job.__name__ = base.__name__
    return type(cls.__name__, (cls,), {"job_cls": Job})


def build_cluster(profile: dict, dask_settings: Mapping | None = None):
    """The dask-jobqueue cluster object of a profile (starts its scheduler, no jobs yet).

    ``dask_settings`` (Dask config key -> value) are exported at the top of every job script,
    before the profile's own ``job_script_prologue``. The scheduler listens on
    :func:`scheduler_host`. ``cluster.specdenoise_failures`` collects the submit command's
    errors.
    """
    cls = _jobqueue_class(profile)
    kwargs = _job_kwargs(profile, dask_settings)
    host, where = scheduler_host(profile)
    so = {"dashboard_address": ":0", **(profile.get("scheduler_options") or {}), "host": host}
    so.pop("interface", None)
    kwargs["scheduler_options"] = so
    if is_loopback(host):
        log.warning("the scheduler listens on %s (%s): only jobs on this machine can reach it; "
                    "set 'interface' or scheduler_options.host for a multi-node cluster",
                    host, where)
    failures: list[str] = []
    try:
        cluster = _recording(cls, failures)(**kwargs)
    except (TypeError, ValueError, OSError) as exc:
        raise SpecdenoiseError(f"cluster profile {profile['_path']}: "
                               f"{' '.join(str(exc).split())}") from None
    cluster.specdenoise_failures = failures
    return cluster


def scale(cluster, profile: dict, workers: int | None = None) -> int | None:
    """Start jobs: adaptive when the profile says so, else ``workers`` or ``jobs`` jobs.
    Returns the number of jobs asked for (None: adaptive)."""
    if "adaptive" in profile and workers is None:
        ad = profile["adaptive"]
        cluster.adapt(minimum_jobs=ad.get("minimum", 0), maximum_jobs=ad.get("maximum", 1))
        return None
    n = workers if workers is not None else profile.get("jobs", 1)
    cluster.scale(jobs=n)
    return n


#: the scheduler's port in ``cluster show`` (each run picks a free one)
PORT_WORD = "PORT"


def job_script(profile: dict, dask_settings: Mapping | None = None) -> str:
    """The batch script the profile's jobs run, with ``tcp://HOST:PORT`` for the scheduler
    (what ``specdenoise cluster show`` prints). Starts no scheduler and submits nothing."""
    return show(profile, dask_settings)[0]


def show(profile: dict, dask_settings: Mapping | None = None) -> tuple[str, list[str]]:
    """(:func:`job_script`, notes on what cannot be checked here)."""
    cls = _jobqueue_class(profile)
    from dask_jobqueue.core import Job

    kwargs = _job_kwargs(profile, dask_settings)
    host, where = scheduler_host(profile, offline=True)
    notes = []
    if host is None:
        notes.append(f"{where}: the scheduler would listen on its address on the login node; "
                     "cannot check that here")
        host = "SCHEDULER-HOST"
    else:
        notes.append(f"the scheduler would listen on {host} ({where}), port chosen at start")
        if is_loopback(host):
            notes.append(f"{host} is a loopback address: jobs on other nodes cannot reach "
                         "it; set 'interface' (e.g. ib0) or scheduler_options.host")
    if profile.get("interface"):
        notes.append(f"workers bind to interface {profile['interface']!r} on the compute "
                     "nodes (cannot be checked from here)")
    notes.append("not checked offline: the partition/queue, account and limits (the batch "
                 "system checks them at submission), and the python path on the nodes")
    job_args = set(inspect.signature(cls.job_cls.__init__).parameters)
    job_args |= set(inspect.signature(Job.__init__).parameters)
    job = cls.job_cls(scheduler=f"tcp://{host}:{PORT_WORD}", name=f"{cls.__name__}-0",
                      **{k: v for k, v in kwargs.items() if k in job_args})
    return job.job_script(), notes


#: seconds without any worker before the waiting hint (a profile's ``wait_hint_after``)
WAIT_HINT_AFTER = 120.0


def _job_ids(cluster) -> list[str]:
    return [str(j.job_id) for j in list(cluster.workers.values())
            if getattr(j, "job_id", None)]


def _connected(cluster) -> int:
    try:
        return len(cluster.scheduler.workers)
    except AttributeError:  # a scheduler elsewhere: ask it
        return len(cluster.scheduler_info.get("workers", {}))


def _listed(system, ids: list[str]) -> set[str] | None:
    """Which of ``ids`` the batch system still lists (None where we cannot ask)."""
    import subprocess

    if system.kind != "slurm" or not ids:
        return None
    try:
        r = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(ids)],
                           capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if r.returncode != 0 and "Invalid job id" not in r.stderr:
        return None
    return {line.strip() for line in r.stdout.splitlines() if line.strip()}


def _loopback_cause(cluster) -> str:
    """The likely cause, when the scheduler listens on a loopback address (a worker on
    another node reaches its own loopback there), for the end of an error line."""
    from urllib.parse import urlsplit

    try:
        host = urlsplit(cluster.scheduler_address).hostname
    except (AttributeError, ValueError):
        return ""
    if not host or not is_loopback(host):
        return ""
    return (f"; the scheduler listens on {host}, a loopback address that other nodes cannot "
            "reach: set 'interface' (e.g. ib0) or scheduler_options.host in the profile")


def wait_for_workers(cluster, profile: dict, n_jobs: int | None, *, say=print,
                     poll: float = 0.5) -> None:
    """Wait until the first worker connects, saying what happens: "submitted N jobs (ids)",
    then "M of N workers connected" as they arrive; a hint with what to check after
    ``wait_hint_after`` seconds without a worker (and again as often). One error line when
    the submit command refused a job, or when every job left the queue without a worker
    connecting. Ctrl-C / SIGTERM interrupt it (the caller's clean-up cancels the jobs)."""
    import time

    system = SYSTEMS[profile["kind"]]
    failures = getattr(cluster, "specdenoise_failures", [])
    if n_jobs is None:
        say("adaptive cluster: jobs are submitted as work arrives", flush=True)
        return
    expected = n_jobs * int(profile.get("processes") or 1)
    hint_every = float(profile.get("wait_hint_after") or WAIT_HINT_AFTER)
    logs = profile.get("log_directory") or str(Path.cwd())
    t0 = time.monotonic()
    next_hint = hint_every
    said_ids: list[str] = []
    last = -1
    gone_since = None
    while True:
        if failures:
            raise SpecdenoiseError(f"{system.submit[0]} refused the worker job: {failures[0]} "
                                   f"(check the profile {profile.get('_path', '')}: partition, "
                                   "account, limits)")
        ids = _job_ids(cluster)
        if len(ids) > len(said_ids):
            said_ids = ids
            say(f"submitted {len(ids)} {system.label}{'s' if len(ids) > 1 else ''} "
                f"({', '.join(ids)}); waiting for workers", flush=True)
        n = _connected(cluster)
        if n != last:
            last = n
            say(f"{n} of {expected} workers connected", flush=True)
        if n >= 1:
            return
        elapsed = time.monotonic() - t0
        if elapsed >= next_hint:
            next_hint += hint_every
            status = f"'{system.status} {','.join(ids)}'" if system.status else "the queue"
            say(f"no worker has connected after {elapsed:.0f} s: check {status} (pending? "
                f"why?) and the job logs in {logs}", flush=True)
        listed = _listed(system, said_ids)
        if listed is not None and said_ids and not listed:
            gone_since = gone_since or time.monotonic()
            if time.monotonic() - gone_since > 5:  # not a moment between two squeue views
                raise SpecdenoiseError(
                    f"the worker job(s) {', '.join(said_ids)} ended without a worker "
                    f"connecting; see their logs in {logs} (slurm-ID.out)"
                    + _loopback_cause(cluster))
        else:
            gone_since = None
        time.sleep(poll)


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

    A job is known to be lost only if the thread saw it before the cluster forgot it, so it
    looks every ``interval`` seconds, well inside the lost-worker timeout: at every 5 s, jobs
    killed soon after they started were forgotten unseen under a short timeout, and never
    replaced (the lost-jobs test hung so on an idle machine and passed on a loaded one).
    """

    def __init__(self, cluster, interval: float = 1.0):
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


#: ``cluster init``'s defaults per batch system: (cores, processes, memory, walltime, jobs,
#: local_directory)
_STARTER = {"slurm": (4, 2, "8GB", "01:00:00", 4, "$TMPDIR"),
            "pbs": (8, 4, "16GB", "02:00:00", 4, "$TMPDIR")}


def starter_profile(system: str, *, interface: str | None = None,
                    partition: str | None = None, account: str | None = None,
                    walltime: str | None = None) -> str:
    """The text of a commented starter profile for ``system`` (``specdenoise cluster init``)."""
    if system not in _STARTER:
        raise SpecdenoiseError(f"--system {system!r}: cluster init writes {', '.join(_STARTER)} "
                               "profiles (SGE and LSF profiles can be written by hand)")
    cores, processes, memory, default_wall, jobs, local = _STARTER[system]
    check = {"interface": interface, "queue": partition, "account": account,
             "walltime": walltime}
    problems = value_problems({k: v for k, v in check.items() if v is not None})
    if problems:
        raise SpecdenoiseError("; ".join(problems).replace("'queue'", "--partition"))
    queue_word = "partition (-p)" if system == "slurm" else "queue (-q)"

    def opt(key, value, comment):
        line = f"{key}: {value}" if value is not None else f"# {key}: CHANGE-ME"
        return f"{line:<28} # {comment}"

    lines = [
        f"# specdenoise cluster profile for {system.upper()}, written by 'specdenoise cluster "
        "init'.",
        "# Check it offline:   specdenoise cluster show THIS_FILE",
        "# Use it:             specdenoise simulate --cluster THIS_FILE ...",
        f"kind: {system}",
        f"cores: {cores:<22} # CPU cores per job",
        f"processes: {processes:<18} # Dask worker processes per job (threads = cores / "
        "processes)",
        f"memory: {memory:<21} # memory per job (a worker keeps ~1.3 GB at 1000 spectra per "
        "chunk)",
        f"walltime: \"{walltime or default_wall}\"{'':<9} # time limit per job; jobs that end "
        "are replaced",
        opt("queue", partition, queue_word),
        opt("account", account, "account to charge (-A)"),
        f"jobs: {jobs:<23} # jobs to start; or scale with the work instead:",
        "# adaptive: {minimum: 0, maximum: 20}",
        "job_extra_directives: []     # extra directive lines, e.g. [\"--constraint=cpu\"]",
        "job_script_prologue: []      # shell lines before the worker, e.g. [\"module load "
        "python\"]",
        f"local_directory: {local:<12} # worker scratch space on the node (expanded there)",
        "# python: /path/to/env/bin/python   # the jobs' interpreter (default: this one)",
        "death_timeout: 60            # seconds a worker waits for a lost scheduler",
        "wait_hint_after: 120         # seconds without a worker before saying what to check",
        "# The scheduler runs in the specdenoise process (on this login node); the worker jobs",
        "# connect to it from the compute nodes, so it must listen on an address they reach:",
    ]
    if interface:
        lines.append(f"interface: {interface:<18} # the network the nodes share (workers and "
                     "scheduler)")
    else:
        lines += ["# interface: ib0             # the network the nodes share (default: this "
                  "machine's",
                  "#                            # address on its default route)",
                  "# scheduler_options: {host: login1.example.org, dashboard_address: \":0\"}"]
    lines.append("scheduler_options: {dashboard_address: \":0\"}")
    return "\n".join(lines) + "\n"
