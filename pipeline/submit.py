"""Run a stage as one batch job: ``specdenoise train ... --submit cluster/slurm.yaml``.

The job script is written to ``RUN_DIR/train.sbatch`` (SLURM) or ``RUN_DIR/train.pbs`` (PBS)
from the same YAML profile the Dask stages use: ``cores`` become ``--cpus-per-task``,
``memory`` ``--mem``, ``walltime`` ``-t``, ``queue`` ``-p``, ``account`` ``-A``, then
``job_extra_directives`` and ``job_script_prologue`` as given. The job runs this interpreter on
``-m specdenoise.cli train`` with the same options, and adds ``--resume`` by itself whenever
``RUN_DIR/checkpoint.pt`` exists, so the one script both starts the run and continues it after a
``scancel``, a walltime limit or a node failure: submit it again with ``sbatch``.

The PBS script is written the same way but has not been run on a PBS cluster by our tests.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from specdenoise.errors import SpecdenoiseError
from specdenoise.stores import CHECKPOINT_NAME as CHECKPOINT


def rebuild_argv(parser: argparse.ArgumentParser, args: argparse.Namespace,
                 skip: tuple[str, ...] = ()) -> list[str]:
    """The options of ``args`` that differ from ``parser``'s defaults, as command-line words.

    ``skip`` names destinations to leave out (e.g. ``submit`` and ``resume``).
    """
    words: list[str] = []
    for action in parser._actions:
        if not action.option_strings or action.dest in skip or action.dest in ("help", "debug"):
            continue
        value = getattr(args, action.dest, action.default)
        if value == action.default:
            continue
        opt = max(action.option_strings, key=len)  # the long form
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            words.append(opt)
        elif isinstance(action, argparse._StoreAction) and action.nargs is None:
            words += [opt, str(value)]
        else:
            raise SpecdenoiseError(f"--submit cannot pass on option {opt}")
    return words


def _mem(value) -> str:
    """A memory size as SLURM/PBS read it (KiB..GiB, rounded up), e.g. 2GB -> 2G."""
    from dask.utils import parse_bytes

    n = parse_bytes(str(value))
    for unit, size in (("G", 1024**3), ("M", 1024**2)):
        if n >= size:
            return f"{math.ceil(n / size)}{unit}"
    return f"{max(1, math.ceil(n / 1024))}K"


def _skip(directives: list[str], profile: dict) -> list[str]:
    """Leave out directives containing any string of the profile's ``job_directives_skip``."""
    skips = profile.get("job_directives_skip") or []
    return [d for d in directives if not any(s in d for s in skips)]


def _directive_path(path: str) -> str:
    """A path as one argument of an ``#SBATCH``/``#PBS`` line: as it is when it is one plain
    word, else double-quoted (the batch systems' directive parsers strip double quotes, not
    single ones)."""
    if any(c in path for c in '"\n\r\0'):
        raise SpecdenoiseError(f"the run directory {path!r} holds a quote or a line break; "
                               "choose a plainer --out")
    return path if shlex.quote(path) == path else f'"{path}"'


def job_script(profile: dict, command: list[str], run_dir: Path, *, name: str = "specdenoise",
               cwd: Path | None = None) -> str:
    """The batch script that runs ``command`` (plus ``--resume`` once a checkpoint exists)."""
    kind = profile["kind"]
    run_dir = Path(run_dir).resolve()
    cwd = Path(cwd or os.getcwd()).resolve()
    q = shlex.quote
    from specdenoise.cluster.profiles import value_problems

    problems = value_problems(profile)
    if problems:
        raise SpecdenoiseError(f"cluster profile {profile.get('_path', '')}: "
                               + "; ".join(problems))
    cores = int(profile.get("cores") or 1)
    if kind == "slurm":
        prefix = "#SBATCH"
        directives = [f"-J {name}", f"-o {_directive_path(f'{run_dir}/slurm-%j.out')}", "-n 1",
                      f"--cpus-per-task={cores}"]
        if profile.get("memory"):
            directives.append(f"--mem={_mem(profile['memory'])}")
        if profile.get("walltime"):
            directives.append(f"-t {profile['walltime']}")
        if profile.get("queue"):
            directives.append(f"-p {profile['queue']}")
        if profile.get("account"):
            directives.append(f"-A {profile['account']}")
        threads = f"${{SLURM_CPUS_PER_TASK:-{cores}}}"
    elif kind == "pbs":
        prefix = "#PBS"
        directives = [f"-N {name}", f"-o {_directive_path(f'{run_dir}/pbs.out')}", "-j oe"]
        spec = profile.get("resource_spec")
        if not spec:
            spec = f"select=1:ncpus={cores}"
            if profile.get("memory"):
                spec += f":mem={_mem(profile['memory'])}B"
        directives.append(f"-l {spec}")
        if profile.get("walltime"):
            directives.append(f"-l walltime={profile['walltime']}")
        if profile.get("queue"):
            directives.append(f"-q {profile['queue']}")
        if profile.get("account"):
            directives.append(f"-A {profile['account']}")
        threads = str(cores)
    else:
        raise SpecdenoiseError(f"--submit supports SLURM and PBS profiles, not {kind!r}")
    directives += [str(d) for d in profile.get("job_extra_directives") or []]
    lines = [profile.get("shebang") or "#!/usr/bin/env bash", ""]
    lines += [f"{prefix} {d}" for d in _skip(directives, profile)]
    lines += ["", "# written by specdenoise --submit; submit this file again to continue the run"]
    lines += [str(p) for p in profile.get("job_script_prologue") or []]
    lines += [
        f"export OMP_NUM_THREADS={threads}",
        f"cd {q(str(cwd))}",
        "RESUME=",
        f"if [ -f {q(str(run_dir / CHECKPOINT))} ]; then RESUME=--resume; fi",
        "exec " + " ".join(q(w) for w in command) + " $RESUME",
        "",
    ]
    return "\n".join(lines)


def submit(profile_path: Path, stage: str, stage_argv: list[str], run_dir: Path) -> int:
    """Write RUN_DIR/<stage>.sbatch (or .pbs) and submit it; prints what to do next."""
    from specdenoise.cluster.profiles import load_profile

    profile = load_profile(Path(profile_path))
    kind = profile["kind"]
    if kind not in ("slurm", "pbs"):
        raise SpecdenoiseError(f"--submit supports SLURM and PBS profiles; {profile_path} is "
                               f"{kind!r}")
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "specdenoise.cli", stage, *stage_argv]
    script = run_dir / f"{stage}.{'sbatch' if kind == 'slurm' else 'pbs'}"
    script.write_text(job_script(profile, command, run_dir, name=f"specdenoise-{stage}"))
    submit_cmd = "sbatch" if kind == "slurm" else "qsub"
    if shutil.which(submit_cmd) is None:
        raise SpecdenoiseError(f"{submit_cmd} not found on PATH; wrote {script}: submit it "
                               f"from a login node with '{submit_cmd} {script}'")
    argv = ["sbatch", "--parsable", str(script)] if kind == "slurm" else ["qsub", str(script)]
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        msg = (r.stderr or r.stdout).strip().replace("\n", " ")
        raise SpecdenoiseError(f"{submit_cmd} {script} failed: {msg}")
    job_id = r.stdout.strip().split(";")[0]
    if kind == "slurm":
        print(f"submitted batch job {job_id}\n"
              f"  log:      {run_dir}/slurm-{job_id}.out\n"
              f"  progress: {run_dir}/metrics.csv (one row per epoch), squeue -j {job_id}\n"
              f"  cancel:   scancel {job_id}\n"
              f"  continue: sbatch {script}   (resumes from {run_dir / CHECKPOINT})")
    else:
        print(f"submitted PBS job {job_id} (the PBS script is untested by specdenoise's suite)\n"
              f"  log:      {run_dir}/pbs.out\n"
              f"  cancel:   qdel {job_id}\n"
              f"  continue: qsub {script}   (resumes from {run_dir / CHECKPOINT})")
    return 0
