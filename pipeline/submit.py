"""Run a stage as one batch job: ``specdenoise train ... --submit cluster/slurm.yaml``.

The job script is written to ``RUN_DIR/train.sbatch`` (SLURM) or ``RUN_DIR/train.pbs`` (PBS)
from the same YAML profile the Dask stages use: ``cores`` become ``--cpus-per-task``,
``memory`` ``--mem``, ``walltime`` ``-t``, ``queue`` ``-p``, ``account`` ``-A``, then
``job_extra_directives`` and ``job_script_prologue`` as given. The job runs this interpreter on
``-m specdenoise.cli train`` with the same options, and adds ``--resume`` by itself whenever
``RUN_DIR/checkpoint.pt`` exists, so the one script both starts the run and continues it after a
``scancel``, a walltime limit or a node failure: submit it again with ``sbatch``.

What differs between batch systems (directives, submit and cancel commands, the job id in the
submit command's answer, the log file) comes from their tables in :mod:`specdenoise.cluster.batch`,
the same tables the Dask stages use. The PBS script is written the same way but has not been run
on a PBS cluster by our tests.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

from specdenoise.cluster.batch import SYSTEMS, BatchSystem, JobRequest, memory_size
from specdenoise.cluster.profiles import load_profile, resolve_profile, value_problems
from specdenoise.errors import SpecdenoiseError
from specdenoise.stores import CHECKPOINT_NAME as CHECKPOINT
from specdenoise.stores import write_file


def rebuild_argv(parser: argparse.ArgumentParser, args: argparse.Namespace,
                 skip: tuple[str, ...] = ()) -> list[str]:
    """The options of ``args`` that differ from ``parser``'s defaults, as command-line words.

    ``skip`` names destinations to leave out (e.g. ``submit`` and ``resume``).
    """
    words: list[str] = []
    for action in parser._actions:
        if not action.option_strings or action.dest in skip or action.dest in ("help", "debug"):
            continue
        if getattr(action, "deprecated_alias", False):  # the new spelling passes it on
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
    system = _system(profile)
    run_dir = Path(run_dir).resolve()
    cwd = Path(cwd or os.getcwd()).resolve()
    q = shlex.quote
    problems = value_problems(profile)
    if problems:
        raise SpecdenoiseError(f"cluster profile {profile.get('_path', '')}: "
                               + "; ".join(problems))
    cores = int(profile.get("cores") or 1)
    job = JobRequest(
        name=name,
        log=_directive_path(f"{run_dir}/{system.log}"),
        cores=cores,
        memory=memory_size(profile["memory"]) if profile.get("memory") else None,
        walltime=profile.get("walltime"),
        queue=profile.get("queue"),
        account=profile.get("account"),
        resource_spec=profile.get("resource_spec"),
    )
    directives = system.directives(job)
    directives += [str(d) for d in profile.get("job_extra_directives") or []]
    lines = [profile.get("shebang") or "#!/usr/bin/env bash", ""]
    lines += [f"{system.prefix} {d}" for d in _skip(directives, profile)]
    lines += ["", "# written by specdenoise --submit; submit this file again to continue the run"]
    lines += [str(p) for p in profile.get("job_script_prologue") or []]
    lines += [
        f"export OMP_NUM_THREADS={system.threads.format(cores=cores)}",
        f"cd {q(str(cwd))}",
        "RESUME=",
        f"if [ -f {q(str(run_dir / CHECKPOINT))} ]; then RESUME=--resume; fi",
        "exec " + " ".join(q(w) for w in command) + " $RESUME",
        "",
    ]
    return "\n".join(lines)


def _system(profile: dict) -> BatchSystem:
    """The batch system of a profile that ``--submit`` can write a script for."""
    system = SYSTEMS.get(profile.get("kind"))
    if system is None or system.directives is None:
        supported = " and ".join(s.kind.upper() for s in SYSTEMS.values() if s.directives)
        raise SpecdenoiseError(f"--submit supports {supported} profiles; "
                               f"{profile.get('_path') or 'this profile'} is "
                               f"{profile.get('kind')!r}")
    return system


def submit(profile_path: Path, stage: str, stage_argv: list[str], run_dir: Path, *,
           overwrite: bool = False) -> int:
    """Write RUN_DIR/<stage>.sbatch (or .pbs) and submit it; prints what to do next.

    An existing script is replaced only when it is the one this command would write, or
    with ``overwrite`` (a user's edited script is never lost silently)."""
    profile = load_profile(resolve_profile(profile_path) or Path(profile_path))
    system = _system(profile)
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "specdenoise.cli", stage, *stage_argv]
    script = run_dir / f"{stage}.{system.script_suffix}"
    text = job_script(profile, command, run_dir, name=f"specdenoise-{stage}")
    if not overwrite and os.path.lexists(script):
        try:
            same = script.read_text() == text
        except (OSError, UnicodeDecodeError):
            same = False
        if not same:
            raise SpecdenoiseError(f"{script} exists and differs from the script this command "
                                   f"writes; submit it yourself ('{system.submit[0]} {script}'), "
                                   "or pass --overwrite to replace it")
    write_file(script, lambda tmp: tmp.write_text(text), overwrite=True)
    submit_cmd = system.submit[0]
    if system.missing_command():
        raise SpecdenoiseError(f"{submit_cmd} not found on PATH; wrote {script}: submit it "
                               f"from a login node with '{submit_cmd} {script}'")
    r = subprocess.run([*system.submit, str(script)], capture_output=True, text=True)
    if r.returncode != 0:
        msg = (r.stderr or r.stdout).strip().replace("\n", " ")
        raise SpecdenoiseError(f"{submit_cmd} {script} failed: {msg}")
    job_id = system.job_id(r.stdout)
    lines = [f"submitted {system.label} {job_id}{system.note}",
             f"  log:      {run_dir}/{system.log_of(job_id)}"]
    if system.status:
        lines.append(f"  progress: {run_dir}/metrics.csv (one row per epoch), "
                     f"{system.status} {job_id}")
    lines += [f"  cancel:   {system.cancel} {job_id}",
              f"  continue: {submit_cmd} {script}   (resumes from {run_dir / CHECKPOINT})"]
    print("\n".join(lines))
    return 0
