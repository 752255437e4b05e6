"""The command line: one command, help on every level, one-line errors."""

import os
import subprocess
import sys

import pytest

from specdenoise import __version__
from specdenoise.cli import build_parser, main


def run(*args):
    return subprocess.run([sys.executable, "-m", "specdenoise.cli", *args],
                          capture_output=True, text=True, timeout=120)


def test_version_and_help():
    r = run("--version")
    assert r.returncode == 0 and __version__ in r.stdout
    r = run("--help")
    assert r.returncode == 0 and "grid" in r.stdout and "simulate" in r.stdout


def _subparsers(parser):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            yield from action.choices.items()


@pytest.mark.parametrize("level", ["top", "nested"])
def test_help_on_every_level(level, capsys):
    parser = build_parser()
    stack = [((), parser)]
    seen = 0
    while stack:
        path, p = stack.pop()
        with pytest.raises(SystemExit) as e:
            main([*path, "--help"])
        assert e.value.code == 0
        assert "usage: specdenoise" in capsys.readouterr().out
        seen += 1
        if level == "nested" or not path:
            stack += [((*path, name), sp) for name, sp in _subparsers(p)]
    assert seen > 3


def test_user_error_is_one_line_without_traceback(tmp_path):
    r = run("grid", "info", str(tmp_path / "missing.zarr"))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0
    assert "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_cluster_show_prints_job_scripts():
    r = run("cluster", "show", "cluster/slurm.yaml")
    assert r.returncode == 0, r.stderr
    assert "#SBATCH --cpus-per-task=1" in r.stdout and "dask_worker" in r.stdout
    # batch workers get the low-overhead Dask settings unless the job's environment has its own
    assert 'export DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED="${DASK_DISTRIBUTED__WORKER__' \
           'PROFILE__ENABLED:-False}"' in r.stdout
    env = {**os.environ, "DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL": "100ms"}
    r = subprocess.run([sys.executable, "-m", "specdenoise.cli", "cluster", "show",
                        "cluster/slurm.yaml"], capture_output=True, text=True, env=env, timeout=120)
    assert "TICK__INTERVAL" not in r.stdout and "PROFILE__ENABLED" in r.stdout
    r = run("cluster", "show", "cluster/pbs.yaml")
    assert r.returncode == 0, r.stderr
    assert "#PBS -l walltime=02:00:00" in r.stdout


def test_cluster_profile_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: condor\ncores: 2\nbogus: 1\n")
    r = run("cluster", "show", str(bad))
    assert r.returncode == 2
    assert "'kind' must be one of" in r.stderr and "unknown key(s) bogus" in r.stderr
