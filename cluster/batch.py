"""The batch systems specdenoise talks to: one small table each.

A :class:`BatchSystem` holds what the code needs to know about one batch system, in the shape
of dask-jobqueue's few-line cluster class per system: the dask-jobqueue class that runs Dask
workers as jobs (``--cluster PROFILE``), the directive prefix of a job script, how a job is
submitted and cancelled and how the job id is read from the submit command's answer, and, for
the systems ``--submit`` supports, the directives of a one-job script made from a profile
(:func:`specdenoise.submit.job_script`).

Nothing here starts a cluster or runs a command: :mod:`.profiles` and :mod:`.connect` do, and
``pipeline/submit.py`` writes and submits the one-job scripts.
"""

from __future__ import annotations

import math
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class JobRequest:
    """What a one-job script asks for, already written the way directives need it."""

    name: str  # job name
    log: str  # where the job's output goes (one directive argument, quoted if need be)
    cores: int
    memory: str | None  # e.g. "15G" (:func:`memory_size`), None: the system's default
    walltime: str | None
    queue: str | None
    account: str | None
    resource_spec: str | None  # PBS: a site's own ``-l`` resource line


def _slurm_directives(job: JobRequest) -> list[str]:
    lines = [f"-J {job.name}", f"-o {job.log}", "-n 1", f"--cpus-per-task={job.cores}"]
    if job.memory:
        lines.append(f"--mem={job.memory}")
    if job.walltime:
        lines.append(f"-t {job.walltime}")
    if job.queue:
        lines.append(f"-p {job.queue}")
    if job.account:
        lines.append(f"-A {job.account}")
    return lines


def _pbs_directives(job: JobRequest) -> list[str]:
    spec = job.resource_spec
    if not spec:
        spec = f"select=1:ncpus={job.cores}"
        if job.memory:
            spec += f":mem={job.memory}B"
    lines = [f"-N {job.name}", f"-o {job.log}", "-j oe", f"-l {spec}"]
    if job.walltime:
        lines.append(f"-l walltime={job.walltime}")
    if job.queue:
        lines.append(f"-q {job.queue}")
    if job.account:
        lines.append(f"-A {job.account}")
    return lines


@dataclass(frozen=True)
class BatchSystem:
    """One batch system: its commands, its job-script directives, its dask-jobqueue class."""

    kind: str  # the profile's ``kind``
    jobqueue_class: str  # the dask-jobqueue cluster class that runs Dask workers as jobs
    prefix: str  # of a directive line in a job script
    submit: tuple[str, ...]  # submits a job script (the script's path is appended)
    cancel: str  # cancels a job (its id is appended)
    job_id_pattern: str  # the job id in the submit command's answer (group 1)
    #: what ``--submit`` needs; None where it does not support the system
    directives: Callable[[JobRequest], list[str]] | None = None
    script_suffix: str = ""  # of the one-job script ``--submit`` writes
    log: str = ""  # the job's output file in the run folder (``%j``: the job id)
    threads: str = "{cores}"  # shell expression for the cores the job got
    status: str | None = None  # command that shows a job's state (its id is appended)
    label: str = "batch job"  # what the submit message calls a job
    note: str = ""  # said after "submitted <label> ID"

    def job_id(self, answer: str) -> str:
        """The job id in the submit command's output (the whole answer when it has none)."""
        m = re.search(self.job_id_pattern, answer)
        return m.group(1) if m else answer.strip()

    def log_of(self, job_id: str) -> str:
        """The output file name of job ``job_id``."""
        return self.log.replace("%j", job_id)

    def missing_command(self) -> str | None:
        """The submit command when it is not on PATH (so not on a login node), else None."""
        return None if shutil.which(self.submit[0]) else self.submit[0]


SLURM = BatchSystem(
    kind="slurm", jobqueue_class="SLURMCluster", prefix="#SBATCH",
    submit=("sbatch", "--parsable"), cancel="scancel", job_id_pattern=r"^\s*([^;\s]+)",
    directives=_slurm_directives, script_suffix="sbatch", log="slurm-%j.out",
    threads="${{SLURM_CPUS_PER_TASK:-{cores}}}", status="squeue -j",
)
PBS = BatchSystem(
    kind="pbs", jobqueue_class="PBSCluster", prefix="#PBS",
    submit=("qsub",), cancel="qdel", job_id_pattern=r"^\s*(\S+)",
    directives=_pbs_directives, script_suffix="pbs", log="pbs.out", label="PBS job",
    note=" (the PBS script is untested by specdenoise's suite)",
)
SGE = BatchSystem(
    kind="sge", jobqueue_class="SGECluster", prefix="#$",
    submit=("qsub",), cancel="qdel", job_id_pattern=r"Your job (\d+)",
)
LSF = BatchSystem(
    kind="lsf", jobqueue_class="LSFCluster", prefix="#BSUB",
    submit=("bsub",), cancel="bkill", job_id_pattern=r"Job <(\d+)>",
)

#: profile ``kind`` -> its batch system
SYSTEMS = {s.kind: s for s in (SLURM, PBS, SGE, LSF)}


def memory_size(value) -> str:
    """A memory size as SLURM/PBS read it (KiB..GiB, rounded up), e.g. 2GB -> 2G."""
    from dask.utils import parse_bytes

    n = parse_bytes(str(value))
    for unit, size in (("G", 1024**3), ("M", 1024**2)):
        if n >= size:
            return f"{math.ceil(n / size)}{unit}"
    return f"{max(1, math.ceil(n / 1024))}K"
