"""The command line: one command, help on every level, one-line errors."""

import os
import signal
import subprocess
import sys

import pytest
from conftest import sigint_default

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


def test_mistyped_option_prints_the_subcommand_usage(capsys):
    for argv, usage in ((["simulate", "--nn", "5"], "usage: specdenoise simulate"),
                        (["grid", "build", "builtin", "--outt", "x"],
                         "usage: specdenoise grid build")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(usage), err
        assert "unrecognized arguments: " + argv[-2] in err


def test_etc_plot_says_where_the_png_went(tmp_path, capsys):
    png = tmp_path / "etc.png"
    assert main(["etc", "--mag", "21", "--out", str(tmp_path / "etc.npz"), "--plot",
                 str(png)]) == 0
    out = capsys.readouterr().out
    assert png.stat().st_size > 0 and str(png) in out


def test_denoise_spectrum_help_names_the_file_formats(capsys):
    with pytest.raises(SystemExit):
        main(["denoise", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for word in ("FITS", ".fits.gz", "CSV", "'flux'", "wavelength", "4096", "image"):
        assert word in text, word


def test_unreachable_scheduler_leaves_no_store(tmp_path, small_grid):
    """Connecting comes before creating the output: a rerun needs no --resume."""
    import socket

    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "sim.zarr"
    r = run("simulate", "--n", "20", "--chunk-size", "10", "--grid", str(small_grid), "--out",
            str(out), "--cluster", f"tcp://127.0.0.1:{port}", "--no-progress")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"cannot reach the Dask scheduler at tcp://127.0.0.1:{port}" in r.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_every_command_is_registered_and_a_missing_one_is_an_error(monkeypatch):
    """Each stage's cli_* module registers its command; a missing one is a broken install,
    raised when the parser is built, never a command silently left out."""
    from specdenoise import cli

    assert set(dict(_subparsers(build_parser()))) == set(cli.STAGES)
    monkeypatch.setattr(cli, "STAGES", (*cli.STAGES, "nosuchstage"))
    with pytest.raises(ModuleNotFoundError, match="cli_nosuchstage"):
        build_parser()


def test_grid_info_describes_a_store(small_grid, capsys):
    from specdenoise.simulate.grids import grid_axes, open_grid

    assert main(["grid", "info", str(small_grid)]) == 0
    out = capsys.readouterr().out.splitlines()
    ds = open_grid(small_grid)
    assert out[0] == f"{small_grid}: source={ds.attrs.get('source')} " \
                     f"medium={ds.attrs.get('wave_medium')}"
    for name, values in grid_axes(ds).items():
        assert any(line.split()[:1] == [name] and f"({values.size} nodes)" in line
                   for line in out), name
    assert out[-2] == f"  nodes present: {int(ds['exists'].values.sum())} of {ds['exists'].size}"
    assert out[-1] == f"  content hash: {ds.attrs.get('content_hash')}"


INTERRUPT_IN_GC = """
import gc, os, signal, sys, time
from specdenoise.cli import sigterm_as_interrupt

def callback(phase, info):  # as distributed's GC diagnosis does: Python code run by the GC
    if phase == "start" and not fired:
        fired.append(1)
        os.kill(os.getpid(), getattr(signal, sys.argv[1]))
        sum(range(1000))  # the signal's handler runs here, inside the callback

fired = []
with sigterm_as_interrupt():
    gc.callbacks.append(callback)
    try:
        gc.collect()
        gc.callbacks.remove(callback)
        deadline = time.time() + 5
        while time.time() < deadline:
            time.sleep(0.01)
        print("lost")
    except KeyboardInterrupt as exc:
        print("caught", type(exc).__name__)
"""


@pytest.mark.parametrize("sig, name", [("SIGINT", "KeyboardInterrupt"),
                                       ("SIGTERM", "Terminated")])
def test_an_interrupt_inside_a_gc_callback_is_not_lost(sig, name):
    """Raised inside a GC callback, KeyboardInterrupt is printed as "Exception ignored" and
    dropped: CI saw a Ctrl-C vanish so inside distributed's callback, and simulate ran on to
    exit 0. The signal is delivered again once the callback is left."""
    r = subprocess.run([sys.executable, "-c", INTERRUPT_IN_GC, sig], capture_output=True,
                       text=True, timeout=60, preexec_fn=sigint_default)
    assert r.stdout.strip() == f"caught {name}", (r.stdout, r.stderr)
    assert "Exception ignored" not in r.stderr, r.stderr


SIGNAL_IN_A_FORKED_CHILD = """
import multiprocessing as mp, os, signal, sys
from specdenoise.cli import sigterm_as_interrupt

def child():  # the window between fork and a loader worker replacing the inherited handler
    os.kill(os.getpid(), getattr(signal, sys.argv[1]))
    print("child carried on")

with sigterm_as_interrupt():
    p = mp.get_context("fork").Process(target=child)
    p.start()
    p.join()
print("exitcode", p.exitcode)
"""


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_child_forked_under_the_handler_dies_of_the_signal_quietly(sig):
    """CI saw a PyTorch loader worker forked just as scancel's SIGTERM arrived: the worker
    still had the command's handler, raised Terminated and printed a 20-line traceback under
    the one interrupted line. A child dies of the signal, as it would without the handler."""
    r = subprocess.run([sys.executable, "-c", SIGNAL_IN_A_FORKED_CHILD, sig],
                       capture_output=True, text=True, timeout=60, preexec_fn=sigint_default)
    assert r.stdout.strip() == f"exitcode {-getattr(signal, sig)}", (r.stdout, r.stderr)
    assert r.stderr == "", r.stderr


LOADER_WORKERS_DIE_WHILE_UNWINDING = """
import os, signal, time
import torch
from torch.utils.data import DataLoader
from specdenoise.cli import sigterm_as_interrupt

with sigterm_as_interrupt():
    it = iter(DataLoader(torch.arange(64.0), batch_size=4, num_workers=2))
    next(it)  # workers started, PyTorch's SIGCHLD handler installed
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        print("lost")
    except KeyboardInterrupt as exc:
        for w in it._workers:  # the batch system's signal reaches the workers too
            os.kill(w.pid, signal.SIGKILL)
        time.sleep(1)  # PyTorch's SIGCHLD handler would raise here
        print("caught", type(exc).__name__)
del it  # the iterator's __del__ finds its workers dead
"""


def test_loader_workers_dying_while_a_sigterm_unwinds_print_nothing():
    """The other half of that CI failure: PyTorch's SIGCHLD handler raised a RuntimeError for
    each dead worker, and the loader iterator's ``__del__`` printed it as "Exception ignored"."""
    pytest.importorskip("torch")
    r = subprocess.run([sys.executable, "-c", LOADER_WORKERS_DIE_WHILE_UNWINDING],
                       capture_output=True, text=True, timeout=120, preexec_fn=sigint_default)
    assert r.stdout.strip() == "caught Terminated", (r.stdout, r.stderr)
    assert r.stderr == "", r.stderr
