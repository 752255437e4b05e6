"""Issue 23's hostile cases: one test (or a few) per numbered case, each of which failed before
its fix. Real stores, real locks, real processes and signals; the CLI in this process or as a
subprocess (where a signal or another user is part of the case).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import sigint_default

from specdenoise import SpecdenoiseError, stores

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- case 5


def _hold_lock(out: Path) -> subprocess.Popen:
    """A real writer in another process: it takes the lock of ``out`` and waits."""
    code = ("import sys, time; from specdenoise import stores\n"
            f"with stores.locked({str(out)!r}):\n"
            "    print('held', flush=True); time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_stopped_writer_keeps_its_lock_however_old(tmp_path):
    out = tmp_path / "s.zarr"
    writer = _hold_lock(out)
    try:
        os.kill(writer.pid, signal.SIGSTOP)  # a suspended job: no heartbeat
        lock = stores.lock_path(out)
        old = time.time() - stores.STALE_AFTER_S - 60
        os.utime(lock, (old, old))
        with pytest.raises(SpecdenoiseError, match=f"process {writer.pid}"), stores.locked(out):
            pass
        assert json.loads(lock.read_text())["pid"] == writer.pid
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
    # once it is dead its lock is reclaimed at once, heartbeat or not
    with stores.locked(out) as held:
        assert json.loads(held.read_text())["pid"] == os.getpid()


def test_a_reused_pid_does_not_keep_a_dead_writers_lock(tmp_path):
    out = tmp_path / "s.zarr"
    lock = stores.lock_path(out)
    # this very process's pid, but a start time that is not ours: the writer is gone
    lock.write_text(json.dumps({"pid": os.getpid(), "pid_start": "1",
                                "host": socket.gethostname()}))
    with stores.locked(out):
        pass


# --------------------------------------------------------------------------- case 6


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as a second user")
def test_a_lock_another_user_cannot_read_is_never_stale():
    shared = Path(tempfile.mkdtemp(prefix="specdenoise-group-", dir="/tmp"))
    try:
        shared.chmod(0o777)  # a group folder both users write
        out = shared / "s.zarr"
        writer = _hold_lock(out)  # root's run, alive
        try:
            stores.lock_path(out).chmod(0o600)
            # the second user: a forked child that drops to 'nobody' (the interpreter and
            # the package are already loaded, so it needs no access to them)
            rfd, wfd = os.pipe()
            child = os.fork()
            if child == 0:  # pragma: no cover (the child)
                try:
                    os.close(rfd)
                    os.setgid(65534)
                    os.setuid(65534)
                    try:
                        with stores.locked(out):
                            msg = "WROTE"
                    except SpecdenoiseError as exc:
                        msg = str(exc)
                    os.write(wfd, msg.encode())
                finally:
                    os._exit(0)
            os.close(wfd)
            with os.fdopen(rfd) as fh:
                said = fh.read()
            os.waitpid(child, 0)
            assert "locked by another user" in said, said
            assert json.loads(stores.lock_path(out).read_text())["pid"] == writer.pid
        finally:
            writer.kill()
            writer.wait()
    finally:
        import shutil

        shutil.rmtree(shared, ignore_errors=True)


# --------------------------------------------------------------------------- cases 3-4


def _cli(*argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "specdenoise.cli", *map(str, argv)],
                          capture_output=True, text=True, timeout=600, **kw)


def _one_line_refusal(r: subprocess.CompletedProcess, *words: str) -> None:
    err = r.stderr.strip()
    assert r.returncode == 2 and "\n" not in err and "Traceback" not in err, r.stderr
    for w in words:
        assert w in err, err


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory):
    from conftest import make_dataset

    d = tmp_path_factory.mktemp("evaldata")
    return make_dataset(d / "data.zarr", n=24, chunk=8, params=True)


def test_evaluate_overwrite_replaces_only_what_evaluate_wrote(eval_data, tmp_path,
                                                              monkeypatch):
    work = tmp_path / "paper"
    (work / "figures").mkdir(parents=True)
    (work / "figures" / "fig1.png").write_bytes(b"\x89PNG my own figure")
    (work / "report.md").write_text("# my own report")
    (work / "summary.csv").write_text("my,own\n1,2\n")
    r = _cli("evaluate", "--data", eval_data, "--baselines", "savgol", "--out", ".",
             "--overwrite", "--no-progress", cwd=work)
    _one_line_refusal(r, "nothing was replaced")
    assert (work / "figures" / "fig1.png").read_bytes() == b"\x89PNG my own figure"
    assert (work / "report.md").read_text() == "# my own report"
    assert (work / "summary.csv").read_text() == "my,own\n1,2\n"

    # what evaluate wrote itself is replaced; an edited one is not
    out = tmp_path / "eval"
    assert _cli("evaluate", "--data", eval_data, "--baselines", "savgol", "--out", out,
                "--no-progress").returncode == 0
    r = _cli("evaluate", "--data", eval_data, "--baselines", "savgol", "--out", out,
             "--overwrite", "--no-progress")
    assert r.returncode == 0, r.stderr
    (out / "report.md").write_text("# edited by hand")
    r = _cli("evaluate", "--data", eval_data, "--baselines", "savgol", "--out", out,
             "--overwrite", "--no-progress")
    _one_line_refusal(r, "report.md")
    assert (out / "report.md").read_text() == "# edited by hand"


def test_sigterm_stops_evaluate_overwrite_cleanly(eval_data, tmp_path):
    out = tmp_path / "eval"
    argv = ["evaluate", "--data", eval_data, "--baselines", "savgol", "--out", out,
            "--no-progress"]
    assert _cli(*argv).returncode == 0
    before = {p.name: p.read_bytes() for p in (out / "figures").iterdir()}
    report = (out / "report.md").read_text()
    proc = subprocess.Popen([sys.executable, "-m", "specdenoise.cli", *map(str, argv),
                             "--overwrite"], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not list(out.glob(".cube.zarr.tmp-*")):  # the new cube is being written
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    # evaluate has no --resume: its hint is the same command again (it replaces its own outputs)
    assert proc.returncode == 143 and "re-run the same command" in err and "Traceback" not in err
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name or ".old" in p.name]
    assert {p.name: p.read_bytes() for p in (out / "figures").iterdir()} == before
    assert (out / "report.md").read_text() == report
    assert _cli(*argv, "--overwrite").returncode == 0


# --------------------------------------------------------------------------- case 1

TINY = ["--preset", "tiny", "--model-cfg", '{"depth": 2, "filters": 4}', "--batch-size", "8",
        "--loader-workers", "0", "--device", "cpu", "--epochs", "1", "--no-progress"]


@pytest.fixture(scope="module")
def train_data(tmp_path_factory):
    from conftest import make_dataset

    d = tmp_path_factory.mktemp("traindata")
    return make_dataset(d / "data.zarr", n=16, chunk=8)


def test_train_checks_its_output_folder(train_data, tmp_path, monkeypatch):
    from specdenoise import cli

    mine = tmp_path / "analysis"
    mine.mkdir()
    (mine / "config.json").write_text('{"my": "settings"}')
    (mine / "metrics.csv").write_text("my,metrics\n")
    monkeypatch.chdir(mine)
    for out in (".", mine):  # the working directory; a folder of the user's files
        assert cli.main(["train", "--data", str(train_data), "--out", str(out), *TINY]) == 2
        assert cli.main(["train", "--data", str(train_data), "--out", str(out), "--overwrite",
                         *TINY]) == 2
    assert (mine / "config.json").read_text() == '{"my": "settings"}'
    assert (mine / "metrics.csv").read_text() == "my,metrics\n"
    before = sorted(p.name for p in train_data.iterdir())
    assert cli.main(["train", "--data", str(train_data), "--out", str(train_data), *TINY]) == 2
    other = train_data.parent / "other.zarr"
    shutil_copy = __import__("shutil").copytree
    shutil_copy(train_data, other)
    assert cli.main(["train", "--data", str(train_data), "--out", str(other), "--overwrite",
                     *TINY]) == 2
    assert sorted(p.name for p in train_data.iterdir()) == before
    assert not (other / "checkpoint.pt").exists()


def test_train_overwrite_replaces_only_a_run(train_data, tmp_path):
    from specdenoise import cli

    run = tmp_path / "run"
    assert cli.main(["train", "--data", str(train_data), "--out", str(run), *TINY]) == 0
    first = (run / "checkpoint.pt").read_bytes()
    assert cli.main(["train", "--data", str(train_data), "--out", str(run), *TINY]) == 2
    assert cli.main(["train", "--data", str(train_data), "--out", str(run), "--overwrite",
                     "--seed", "5", *TINY]) == 0
    assert (run / "checkpoint.pt").read_bytes() != first
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run.")]
    (run / "thesis.tex").write_text("mine")
    assert cli.main(["train", "--data", str(train_data), "--out", str(run), "--overwrite",
                     *TINY]) == 2
    assert (run / "thesis.tex").exists() and (run / "checkpoint.pt").exists()


def test_train_overwrite_keeps_the_old_run_when_the_new_one_fails_first(train_data, tmp_path):
    from specdenoise import cli

    run = tmp_path / "run"
    assert cli.main(["train", "--data", str(train_data), "--out", str(run), *TINY]) == 0
    first = (run / "checkpoint.pt").read_bytes()
    # the new run stops before its first epoch (its data hold a NaN flux)
    from conftest import make_dataset

    bad = make_dataset(tmp_path / "bad.zarr", n=16, chunk=8, nan_at=3)
    assert cli.main(["train", "--data", str(bad), "--out", str(run), "--overwrite",
                     *TINY]) == 2
    assert (run / "checkpoint.pt").read_bytes() == first


def test_submit_never_overwrites_an_edited_job_script(train_data, tmp_path, monkeypatch):
    import shutil

    from specdenoise import cli

    if shutil.which("sbatch") is None:  # submitting is not what is tested: the refusal is
        pytest.skip("needs sbatch on PATH to get as far as the script")
    profile = tmp_path / "p.yaml"
    profile.write_text("kind: slurm\ncores: 1\nmemory: 1GB\n")
    run = tmp_path / "run"
    run.mkdir()
    script = run / "train.sbatch"
    script.write_text("#!/bin/bash\n#SBATCH -p my-edited-partition\n")
    assert cli.main(["train", "--data", str(train_data), "--out", str(run), "--submit",
                     str(profile), *TINY]) == 2
    assert "my-edited-partition" in script.read_text()


# --------------------------------------------------------------------------- case 2


def _simulate_argv(grid, out, *extra, n=4):
    return ["simulate", "--n", str(n), "--chunk-size", "2", "--grid", grid, "--out", out,
            "--workers", "1", "--no-progress", *extra]


def _wait_for(pred, proc, timeout=300.0):
    deadline = time.time() + timeout
    while not pred():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def test_a_late_chunk_write_does_not_bring_the_discarded_store_back(tmp_path):
    """A worker's write in flight when an interrupted --overwrite closes its cluster lands
    after the first removal of the unfinished store (zarr makes the folders it writes into):
    the removal is repeated until it holds."""
    import threading

    from specdenoise.stage_simulate import _discard

    tmp = tmp_path / ".s.zarr.tmp-1"
    (tmp / "flux" / "c").mkdir(parents=True)

    def late_write():
        time.sleep(0.4)
        (tmp / "flux" / "c").mkdir(parents=True, exist_ok=True)
        (tmp / "flux" / "c" / "3").write_bytes(b"chunk")

    writer = threading.Thread(target=late_write)
    writer.start()
    _discard([tmp], grace=1.0)
    writer.join()
    assert not tmp.exists()


def test_simulate_overwrite_keeps_the_old_store_until_the_new_one_is_complete(small_grid,
                                                                             tmp_path):
    from conftest import store_files

    out = tmp_path / "done.zarr"
    assert _cli(*_simulate_argv(small_grid, out)).returncode == 0
    before = store_files(out)
    proc = subprocess.Popen([sys.executable, "-m", "specdenoise.cli",
                             *map(str, _simulate_argv(small_grid, out, "--overwrite",
                                                      "--seed", "8", n=400))],
                            stderr=subprocess.PIPE, text=True, preexec_fn=sigint_default)
    _wait_for(lambda: list(tmp_path.glob(".done.zarr.tmp-*/flux")), proc)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=300)[1]
    assert proc.returncode == 130 and "--resume" in err, err
    assert store_files(out) == before  # the complete old store, whole
    assert not list(tmp_path.glob(".done.zarr*"))
    r = _cli(*_simulate_argv(small_grid, out, "--overwrite", "--seed", "8"))
    assert r.returncode == 0 and store_files(out) != before


# --------------------------------------------------------------------------- case 7


def test_resume_refuses_a_grid_replaced_at_the_same_path(small_grid, tmp_path):
    import shutil

    import numpy as np
    import zarr
    from conftest import store_files, toy_grid_flux

    from specdenoise import schema
    from specdenoise.simulate.grids import open_grid, write_grid

    grid = tmp_path / "grid.zarr"
    shutil.copytree(small_grid, grid)
    out = tmp_path / "s.zarr"
    assert _cli(*_simulate_argv(grid, out)).returncode == 0
    # as if interrupted before its last chunk was recorded: not complete, one chunk to do
    g = zarr.open_group(str(out), mode="r+")
    g.attrs["complete"] = False
    schema.done_dir(out).mkdir()
    for c in range(-(-g["flux"].shape[0] // g["flux"].chunks[0])):
        if c != 1:
            (schema.done_dir(out) / f"{c:08d}").touch()
    before = store_files(out)
    # another grid (deeper lines) written at the same path
    g = open_grid(small_grid)
    axes = {k: g[k].values for k in ("teff", "logg", "m_h", "a_m")}
    wave = g["wave"].values
    shutil.rmtree(grid)
    write_grid(grid, toy_grid_flux(axes, wave) * np.float32(0.5), axes, wave,
               attrs={"source": "test", "resolution": 20000})
    r = _cli(*_simulate_argv(grid, out, "--resume"))
    _one_line_refusal(r, "another grid", "--overwrite")
    assert store_files(out) == before


# --------------------------------------------------------------------------- case 8


def test_run_never_reuses_stores_made_with_other_settings(tmp_path):
    from conftest import make_dataset, store_files

    work = tmp_path / "work"
    make_dataset(work / "train.zarr", n=16, chunk=8)  # complete, but not what is asked
    before = store_files(work / "train.zarr")
    r = _cli("run", "--preset", "quick", "--seed", "9", "--workdir", work, "--no-progress")
    _one_line_refusal(r, "other settings", "--seed 9")
    assert store_files(work / "train.zarr") == before
    assert sorted(p.name for p in work.iterdir()) == ["train.zarr"]


# --------------------------------------------------------------------------- cases 9-10, 13


@pytest.fixture
def tiny_run(run):
    """A tiny trained U-Net and its training data (``conftest.run``, shared by the session)."""
    return run


def _with_wave(data: Path, out: Path, edit) -> Path:
    import shutil

    import zarr

    shutil.copytree(data, out)
    g = zarr.open_group(str(out), mode="r+")
    g["wave"][:] = edit(g["wave"][:])
    return out


@pytest.mark.parametrize("name, edit", [
    ("shifted", lambda w: w + 5.0),
    ("reversed", lambda w: w[::-1]),
    ("nan_x10", lambda w: __import__("numpy").where(__import__("numpy").arange(w.size) == 7,
                                                     float("nan"), w * 10)),
])
def test_denoise_data_checks_the_wavelengths(tiny_run, tmp_path, capsys, name, edit):
    from specdenoise import cli

    bad = _with_wave(tiny_run[1], tmp_path / f"{name}.zarr", edit)
    assert cli.main(["denoise", "--run", str(tiny_run[0]), "--data", str(bad), "--out",
                     str(tmp_path / "den.zarr")]) == 2
    err = capsys.readouterr().err.strip()
    assert "another wavelength grid" in err and "\n" not in err
    assert not (tmp_path / "den.zarr").exists()
    if name == "nan_x10":  # evaluate and train refused it too
        assert cli.main(["evaluate", "--run", str(tiny_run[0]), "--data", str(bad),
                         "--baselines", "none", "--out", str(tmp_path / "ev")]) == 2
        assert "another wavelength grid" in capsys.readouterr().err
        assert cli.main(["train", "--data", str(tiny_run[1]), "--val", str(bad), "--out",
                         str(tmp_path / "r"), *TINY]) == 2
        assert "another wavelength grid" in capsys.readouterr().err


def test_denoise_data_with_variables_named_like_its_outputs(tiny_run, tmp_path, capsys):
    """A dataset that already holds variables named as denoise's outputs (another shape, other
    dimensions): the output has denoise's own variables, no traceback (hostile round,
    "a conflicting extra variable")."""
    import shutil
    import warnings

    import xarray as xr
    import zarr

    from specdenoise import cli

    bad = tmp_path / "extra.zarr"
    shutil.copytree(tiny_run[1], bad)
    g = zarr.open_group(str(bad), mode="r+")
    n = g["flux"].shape[0]
    g.create_array("flux_denoised", shape=(n,), dtype="f4", dimension_names=["spectrum"])[:] = 1
    g.create_array("sigma_denoised", shape=(n, 7), dtype="f4",
                   dimension_names=["spectrum", "other"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(str(bad))
    out = tmp_path / "den.zarr"
    assert cli.main(["denoise", "--run", str(tiny_run[0]), "--data", str(bad), "--out",
                     str(out), "--no-progress"]) == 0, capsys.readouterr().err
    ds = xr.open_zarr(out)
    assert ds["flux_denoised"].dims == ("spectrum", "wave")
    assert ds["sigma_denoised"].dims == ("spectrum", "wave") and "other" not in ds.dims


def test_denoise_spectrum_honours_a_fits_wcs(tiny_run, tmp_path, capsys):
    import numpy as np
    import xarray as xr
    from astropy.io import fits
    from conftest import WAVE

    from specdenoise import cli

    flux = xr.open_zarr(tiny_run[1])["flux"].values[0]
    step_a = float(WAVE[1] - WAVE[0]) * 10
    wrong = tmp_path / "at8000.fits"  # a 1-D image whose WCS starts at 8000 Angstrom
    hdu = fits.PrimaryHDU(flux)
    hdu.header.update(CRVAL1=8000.0, CDELT1=step_a, CRPIX1=1.0, CTYPE1="WAVE",
                      CUNIT1="Angstrom")
    hdu.writeto(wrong)
    out = tmp_path / "o.csv"
    assert cli.main(["denoise", "--run", str(tiny_run[0]), "--spectrum", str(wrong),
                     "--out", str(out)]) == 2
    assert "wavelengths differ" in capsys.readouterr().err and not out.exists()
    right = tmp_path / "right.fits"  # the model's own grid, in Angstrom, without a unit
    hdu = fits.PrimaryHDU(flux)
    hdu.header.update(CRVAL1=float(WAVE[0]) * 10, CDELT1=step_a, CRPIX1=1.0)
    hdu.writeto(right)
    assert cli.main(["denoise", "--run", str(tiny_run[0]), "--spectrum", str(right),
                     "--out", str(out)]) == 0
    np.testing.assert_allclose(np.genfromtxt(out, delimiter=",", names=True)["wave"], WAVE,
                               atol=1e-5)


def test_denoise_spectrum_refuses_per_row_grids_and_absurd_noise(tiny_run, tmp_path, capsys):
    import numpy as np
    import xarray as xr
    from astropy.io import fits
    from conftest import WAVE

    from specdenoise import cli

    flux = xr.open_zarr(tiny_run[1])["flux"].values[:2].astype(np.float32)
    rows = tmp_path / "rows.fits"
    waves = np.stack([WAVE, WAVE + 3.0])
    fits.BinTableHDU.from_columns([
        fits.Column("WAVE", f"{WAVE.size}D", array=waves),
        fits.Column("FLUX", f"{WAVE.size}E", array=flux)]).writeto(rows)
    assert cli.main(["denoise", "--run", str(tiny_run[0]), "--spectrum", str(rows),
                     "--out", str(tmp_path / "o.csv")]) == 2
    assert "different wavelength grids" in capsys.readouterr().err
    for factor in (1e4, 1e10):
        noisy = tmp_path / f"sigma{factor:g}.csv"
        np.savetxt(noisy, np.c_[WAVE, flux[0], flux[0] * factor], delimiter=",",
                   header="wave,flux,sigma", comments="")
        assert cli.main(["denoise", "--run", str(tiny_run[0]), "--spectrum", str(noisy),
                         "--out", str(tmp_path / "o.csv")]) == 2
        err = capsys.readouterr().err.strip()
        assert "times its flux" in err and "\n" not in err


def _fifo(tmp_path: Path, name: str) -> Path:
    p = tmp_path / name
    os.mkfifo(p)
    return p


def test_devices_fifos_and_folders_are_refused_as_inputs(tiny_run, small_grid, tmp_path):
    profile_fifo, config_fifo = _fifo(tmp_path, "p.yaml"), _fifo(tmp_path, "c.toml")
    spec_fifo = _fifo(tmp_path, "s.csv")
    cases = [
        (["denoise", "--run", tiny_run[0], "--spectrum", "/dev/zero", "--out",
          tmp_path / "o.csv"], "not a regular file"),
        (["denoise", "--run", tiny_run[0], "--spectrum", spec_fifo, "--out",
          tmp_path / "o.csv"], "not a regular file"),
        (["denoise", "--run", tiny_run[0], "--spectrum", tmp_path, "--out",
          tmp_path / "o.csv"], "is a folder"),
        (["simulate", "--config", "/dev/zero", "--grid", small_grid, "--out",
          tmp_path / "s.zarr"], "not a regular file"),
        (["simulate", "--config", config_fifo, "--grid", small_grid, "--out",
          tmp_path / "s.zarr"], "not a regular file"),
        (["cluster", "show", "/dev/zero"], "not a regular file"),
        (["cluster", "show", profile_fifo], "not a regular file"),
    ]
    for argv, words in cases:
        r = _cli(*argv)  # a hang would end in subprocess's timeout
        _one_line_refusal(r, words)


# --------------------------------------------------------------------------- profiles


def test_shipped_profiles_work_from_any_folder_and_show_starts_no_scheduler(tmp_path):
    for name, word in (("slurm", "#SBATCH"), ("pbs", "#PBS")):
        r = _cli("cluster", "show", name, cwd=tmp_path)
        assert r.returncode == 0 and word in r.stdout, r.stderr
        # the address workers get is the scheduler's, never loopback in a shipped profile
        host = __import__("re").search(r"dask_worker tcp://([^:\s]+):PORT", r.stdout).group(1)
        assert not host.startswith("127."), host
    pbs = _cli("cluster", "show", "pbs", cwd=tmp_path).stdout
    assert '--local-directory "$TMPDIR"' in pbs  # expanded on the node, not a literal


def test_cluster_init_writes_a_profile_that_show_reads(tmp_path):
    r = _cli("cluster", "init", "--system", "slurm", "--interface", "ib0", "--partition",
             "long", "--account", "pfs", "--walltime", "04:00:00", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "slurm.yaml").read_text()
    assert "interface: ib0" in text and "queue: long" in text and "# " in text
    r = _cli("cluster", "show", "slurm.yaml", cwd=tmp_path)  # ib0 is not on this machine
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "#SBATCH -p long" in r.stdout and "#SBATCH -A pfs" in r.stdout
    assert "#SBATCH -t 04:00:00" in r.stdout and "--interface ib0" in r.stdout
    assert "'ib0' is not on this machine" in r.stderr and "cannot check" in r.stderr
    _one_line_refusal(_cli("cluster", "init", "--system", "slurm", cwd=tmp_path),
                      "already exists")
    _one_line_refusal(_cli("cluster", "init", "--system", "pbs", "--partition", "a b",
                           "--out", "p.yaml", cwd=tmp_path), "--partition")


def test_profile_paths_expand_variables_but_run_nothing(tmp_path):
    for bad in ("$(touch /tmp/pwned)", "$HOME`id`", "${X:-y}"):
        p = tmp_path / "p.yaml"
        p.write_text(f"kind: slurm\ncores: 1\nmemory: 1GB\nlocal_directory: '{bad}'\n")
        _one_line_refusal(_cli("cluster", "show", p), "local_directory")


def test_a_missing_scheduler_interface_and_garbage_addresses_are_one_line(small_grid,
                                                                          tmp_path):
    p = tmp_path / "site.yaml"
    p.write_text("kind: slurm\ncores: 1\nmemory: 1GB\nscheduler_options: {interface: ib7}\n")
    if __import__("shutil").which("sbatch"):
        r = _cli(*_simulate_argv(small_grid, tmp_path / "s.zarr")[:-3], "--cluster", p,
                 "--no-progress")
        _one_line_refusal(r, "'ib7' is not on this machine")
    for spec in ("tcp://", "foo://bar"):
        r = _cli(*_simulate_argv(small_grid, tmp_path / "t.zarr")[:-3], "--cluster", spec,
                 "--no-progress")
        _one_line_refusal(r, "scheduler")
        assert not (tmp_path / "t.zarr").exists()


def test_an_absurd_memory_limit_is_refused(small_grid, tmp_path):
    r = _cli(*_simulate_argv(small_grid, tmp_path / "s.zarr"), "--memory-limit", "1MB")
    _one_line_refusal(r, "--memory-limit 1MB")
    assert not (tmp_path / "s.zarr").exists()


# --------------------------------------------------------------------------- tracebacks


def _damaged(run: Path, tmp_path: Path, name: str, edit) -> Path:
    import torch

    state = torch.load(run / "checkpoint.pt", weights_only=False)
    edit(state)
    (tmp_path / name).mkdir()
    torch.save(state, tmp_path / name / "checkpoint.pt")
    return tmp_path / name


def test_damaged_checkpoints_are_one_line(tiny_run, tmp_path):
    import torch

    def misfit(st):
        k = next(iter(st["model"]["state"]))
        st["model"]["state"][k] = torch.zeros(3, 3)

    cases = [(_damaged(tiny_run[0], tmp_path, "misfit", misfit), "do not fit"),
             (_damaged(tiny_run[0], tmp_path, "nomodel", lambda st: st.pop("model")),
              "lacks its model entry"),
             (_damaged(tiny_run[0], tmp_path, "huge",
                       lambda st: st["model"]["cfg"].update(filters=10**9)), "filters")]
    for run, words in cases:
        r = _cli("denoise", "--run", run, "--data", tiny_run[1], "--out",
                 tmp_path / f"{run.name}.zarr")
        _one_line_refusal(r, words)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tiny tmpfs (needs root)")
def test_a_full_disk_while_checkpointing_is_one_line(train_data, tmp_path):
    full = Path(tempfile.mkdtemp(prefix="specdenoise-full-"))
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(full)]
                      ).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        r = _cli("train", "--data", train_data, "--out", full / "run", *TINY)
        last = r.stderr.strip().splitlines()[-1]  # (after training's own log lines)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert last.startswith("specdenoise train: error:") and "disk is full" in last
        assert not (full / "run" / "checkpoint.pt").exists()
    finally:
        subprocess.run(["umount", str(full)])
        full.rmdir()


def test_absurd_numbers_are_one_line(train_data, eval_data, tmp_path):
    _one_line_refusal(_cli("train", "--data", train_data, "--out", tmp_path / "r", *TINY,
                           "--seed", "-1"), "--seed")
    for opt, value in (("--savgol-window", "100001"), ("--gaussian-sigma", "nan")):
        _one_line_refusal(_cli("evaluate", "--data", eval_data, "--baselines", "savgol,gaussian",
                               "--out", tmp_path / "ev", opt, value), opt)
    assert not (tmp_path / "r").exists() and not (tmp_path / "ev").exists()


def test_ctrl_c_on_a_local_cluster_is_one_line_without_worker_tracebacks(small_grid,
                                                                        tmp_path):
    out = tmp_path / "s.zarr"
    # a process group of its own, as a terminal gives a command: Ctrl-C reaches all of it
    proc = subprocess.Popen([sys.executable, "-m", "specdenoise.cli",
                             *map(str, _simulate_argv(small_grid, out, n=400))],
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=sigint_default)
    from specdenoise import schema

    _wait_for(lambda: out.exists() and len(schema.done_chunks(out)) >= 1, proc)
    os.killpg(proc.pid, signal.SIGINT)
    err = proc.communicate(timeout=300)[1]
    assert proc.returncode == 130, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "--resume" in lines[0], err


def test_a_batch_cancel_while_training_is_one_line_and_the_run_resumes(tmp_path):
    """scancel / qdel send SIGTERM to every process of the job, PyTorch's data-loader workers
    included; PyTorch reports their death as a RuntimeError while the main process is still
    unwinding its own SIGTERM (seen on this machine: a 60-line traceback instead of the one
    line). The user gets the one line, and --resume carries the run on."""
    import psutil
    from conftest import make_dataset

    data = make_dataset(tmp_path / "data.zarr", n=256, chunk=64)
    out = tmp_path / "run"
    argv = ["train", "--data", data, "--out", out, "--preset", "tiny", "--model-cfg",
            '{"depth": 2, "filters": 4}', "--batch-size", "4", "--loader-workers", "2",
            "--device", "cpu", "--threads", "1", "--epochs", "500", "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "specdenoise.cli", *map(str, argv)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _wait_for(lambda: (out / "checkpoint.pt").exists(), proc)
        # the loader workers of an epoch are running: the signal reaches them too
        _wait_for(lambda: len(psutil.Process(proc.pid).children()) >= 2, proc)
        os.killpg(proc.pid, signal.SIGTERM)
        err = proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert proc.returncode == 143, err
    assert len(lines) == 1 and lines[0].startswith("specdenoise train: terminated (SIGTERM)"), err
    assert "--resume" in lines[0]
    r = _cli(*argv[:-2], "1", "--no-progress", "--resume")  # epochs may change on resume
    assert r.returncode == 0, r.stderr


# --------------------------------------------------------------------------- unclear cases


def test_rv_beyond_the_grid_is_refused_before_the_store_exists(small_grid, tmp_path):
    out = tmp_path / "s.zarr"
    r = _cli(*_simulate_argv(small_grid, out), "--set",
             'params.rv={dist="fixed", value=30000}')
    _one_line_refusal(r, "params.rv", "beyond the grid")
    assert not out.exists()
    assert _cli(*_simulate_argv(small_grid, out)).returncode == 0  # the default range is fine


def test_the_scheduler_address_follows_the_profile():
    """The address choice a multi-node site depends on, checked on this machine's own
    interfaces (no traffic leaves it): an interface gives its IPv4 address, a host is taken
    as given, and the default is not loopback where the machine has a default route."""
    import psutil

    from specdenoise.cluster.profiles import is_loopback, scheduler_host

    real = [(name, a.address) for name, addrs in psutil.net_if_addrs().items() for a in addrs
            if a.family == socket.AF_INET and not a.address.startswith("127.")]
    if not real:
        pytest.skip("this machine has no non-loopback IPv4 interface")
    name, address = real[0]
    assert scheduler_host({"kind": "slurm", "interface": name})[0] == address
    assert scheduler_host({"kind": "slurm", "scheduler_options": {"interface": name}})[0] \
        == address
    assert scheduler_host({"kind": "slurm", "scheduler_options": {"host": "login1"}}) == \
        ("login1", "scheduler_options.host")
    assert not is_loopback(scheduler_host({"kind": "slurm"})[0])
    with pytest.raises(SpecdenoiseError, match="'nosuch0' is not on this machine"):
        scheduler_host({"kind": "slurm", "interface": "nosuch0"})
    assert scheduler_host({"kind": "slurm", "interface": "nosuch0"}, offline=True)[0] is None
