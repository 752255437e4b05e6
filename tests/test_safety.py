"""Issue 13: nothing lost, nothing silently wrong. One test (or a few) per numbered case.

Every test drives the real CLI or the real stage functions on real stores; the only fakes are
at the batch-scheduler boundary (profiles are turned into job scripts, never submitted here:
``tests/slurm/test_slurm.py`` submits for real). Items 4 and 7 (chunk checksums, decompressor
crashes) are covered where they were built.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import WAVE, make_dataset
from test_bosz import (
    BOSZ2024,
    import_bosz,
    name2017,
    needs_bosz2024,
    synthe_wave_angstrom,
    write2017,
)

from specdenoise import SpecdenoiseError, cli, schema
from specdenoise.simulate.grids import open_grid

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--preset", "tiny", "--model-cfg", '{"depth": 2, "filters": 4}', "--batch-size", "8",
        "--loader-workers", "0", "--device", "cpu"]
NOWHERE = Path("/proc/specdenoise-no-such-folder")  # not creatable, not even by root


def run_cli(capsys, *argv) -> tuple[int, str]:
    """Run the CLI in this process; (status, stderr) with stderr checked to be one line."""
    status = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    if status == 2:
        assert "\n" not in err and "Traceback" not in err, err
    return status, err


def simulate_argv(grid, out, *extra):
    return ["simulate", "--n", "4", "--chunk-size", "2", "--grid", grid, "--out", out,
            "--workers", "1", "--no-progress", *extra]


# --------------------------------------------------------------------------- case 1


def test_overwrite_deletes_only_a_store_of_the_expected_kind(small_grid, tmp_path, capsys,
                                                             monkeypatch):
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "chapter1.tex").write_text("three years of work")
    status, err = run_cli(capsys, *simulate_argv(small_grid, thesis, "--overwrite"))
    assert status == 2 and "nothing was deleted" in err
    assert (thesis / "chapter1.tex").exists()

    sets = tmp_path / "sets"  # a --split folder, --split forgotten
    make_dataset(sets / "train.zarr", n=8, chunk=4)
    make_dataset(sets / "val.zarr", n=8, chunk=4)
    status, err = run_cli(capsys, *simulate_argv(small_grid, sets, "--overwrite"))
    assert status == 2 and (sets / "train.zarr").exists() and (sets / "val.zarr").exists()

    status, err = run_cli(capsys, "grid", "import", "bosz", tmp_path, "--out", thesis,
                          "--overwrite", "--no-progress")
    assert status == 2 and (thesis / "chapter1.tex").exists()

    monkeypatch.chdir(thesis)
    status, err = run_cli(capsys, *simulate_argv(small_grid, ".", "--overwrite"))
    assert status == 2 and "working directory" in err
    assert (thesis / "chapter1.tex").exists()


def test_overwrite_refuses_a_store_marked_right_but_holding_more(small_grid, tmp_path, capsys):
    data = make_dataset(tmp_path / "d.zarr", n=8, chunk=4)
    (data / "notes.txt").write_text("mine")
    status, err = run_cli(capsys, *simulate_argv(small_grid, data, "--overwrite"))
    assert status == 2 and "notes.txt" in err and (data / "notes.txt").exists()


# --------------------------------------------------------------------------- case 2


def test_denoise_never_replaces_its_input(run, tmp_path, capsys):
    data = make_dataset(tmp_path / "x.zarr", n=8, chunk=4)
    for out in (data, tmp_path):
        status, err = run_cli(capsys, "denoise", "--run", run[0], "--data", data, "--out",
                              out, "--overwrite", "--device", "cpu")
        assert status == 2 and "input" in err
    ds = schema.open_dataset(data)
    assert {"flux", "flux_clean", "sigma"} <= set(ds)
    # a denoised store is replaced with --overwrite, a dataset is not
    out = tmp_path / "d.zarr"
    assert run_cli(capsys, "denoise", "--run", run[0], "--data", data, "--out", out,
                   "--device", "cpu")[0] == 0
    assert run_cli(capsys, "denoise", "--run", run[0], "--data", data, "--out", out,
                   "--overwrite", "--device", "cpu")[0] == 0
    other = make_dataset(tmp_path / "other.zarr", n=8, chunk=4)
    status, err = run_cli(capsys, "denoise", "--run", run[0], "--data", data, "--out", other,
                          "--overwrite", "--device", "cpu")
    assert status == 2 and "dataset" in err and schema.open_dataset(other)


# --------------------------------------------------------------------------- case 3


def test_absurd_training_values_stop_training_without_a_checkpoint(tmp_path, capsys):
    data = make_dataset(tmp_path / "bad.zarr", n=16, chunk=8)
    g = zarr.open_group(str(data), mode="r+")
    row = np.asarray(g["flux_clean"][3])
    row[100:110] = 1e30  # finite: every NaN check passes
    g["flux_clean"][3] = row
    status, err = run_cli(capsys, "train", "--data", data, "--out", tmp_path / "run",
                          "--epochs", "1", *TINY)
    assert status == 2 and "spectrum 3" in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_non_finite_weights_are_never_checkpointed_or_used(run, tmp_path):
    import torch

    from specdenoise.train import guards
    from specdenoise.train.checkpoint import load_model, read_checkpoint, save_checkpoint
    from specdenoise.train.infer import denoise_array

    good = run[0] / "checkpoint.pt"
    before = good.read_bytes()
    state = read_checkpoint(good)
    name = next(k for k, v in state["model"]["state"].items() if v.is_floating_point())
    state["model"]["state"][name] = torch.full_like(state["model"]["state"][name], float("nan"))
    with pytest.raises(SpecdenoiseError, match="NaN or infinite"):
        save_checkpoint(good, state)
    assert good.read_bytes() == before
    with pytest.raises(SpecdenoiseError, match="loss became nan"):
        guards.check_loss_sum(torch.tensor(float("nan")), epoch=0)
    model, _ = load_model(run[0], device="cpu")
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    with pytest.raises(SpecdenoiseError, match="weights are damaged"):
        denoise_array(model, np.full((1, model.n_wave), 0.5, np.float32))
    with pytest.raises(SpecdenoiseError, match="became NaN"):
        guards.check_weights(model, epoch=0)


def test_a_diverging_run_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    data = make_dataset(tmp_path / "d.zarr", n=16, chunk=8)
    out = tmp_path / "run"
    args = ["train", "--data", data, "--out", out, "--optimizer", "sgd", *TINY]
    assert run_cli(capsys, *args, "--epochs", "1", "--lr", "0.01")[0] == 0
    good = (out / "checkpoint.pt").read_bytes()
    from specdenoise.train import loop

    # lr is not allowed to change on resume from the CLI; here it makes the loss explode
    cfg = dataclasses.replace(loop.resume_config(out, epochs=2), lr=1e30)
    with pytest.raises(SpecdenoiseError, match="training stopped"):
        loop.train(cfg, resume=True)
    assert (out / "checkpoint.pt").read_bytes() == good


# --------------------------------------------------------------------------- case 5


@pytest.mark.parametrize("setting", ['params.seeing={dist="fixed",value=nan}',
                                     "params.mag.high=inf", "params.zenith.high=95",
                                     "params.seeing.low=-0.5", "params.moon_phase.high=1"])
def test_config_numbers_are_checked_before_the_store_exists(small_grid, tmp_path, capsys,
                                                            setting):
    out = tmp_path / "s.zarr"
    status, err = run_cli(capsys, *simulate_argv(small_grid, out, "--set", setting))
    assert status == 2 and "invalid configuration" in err and not out.exists()


@pytest.mark.parametrize("option", [("--mag", "nan"), ("--seeing", "nan"), ("--zenith", "nan"),
                                    ("--exp-time", "nan"), ("--zenith", "95"),
                                    ("--seeing", "-1"), ("--moon-phase", "1"),
                                    ("--mag", "inf")])
def test_etc_values_are_checked(tmp_path, capsys, option):
    out = tmp_path / "e.npz"
    argv = ["etc", "--mag", "22", *option, "--out", out]
    status, err = run_cli(capsys, *argv)
    assert status == 2 and option[0] in err and not out.exists()


def test_etc_out_needs_overwrite(tmp_path, capsys):
    out = tmp_path / "e.csv"
    out.write_text("keep")
    status, err = run_cli(capsys, "etc", "--mag", "22", "--out", out)
    assert status == 2 and "--overwrite" in err and out.read_text() == "keep"
    assert run_cli(capsys, "etc", "--mag", "22", "--out", out, "--overwrite")[0] == 0
    assert out.read_text().startswith("wavelength,")


# --------------------------------------------------------------------------- case 6


@pytest.mark.parametrize("var,chunk", [("flux_clean", "c/1/0"), ("flux", "c/1/0"),
                                       ("teff", "c/1")])
def test_evaluate_and_denoise_refuse_missing_chunks(run, tmp_path, capsys, var,
                                                    chunk):
    data = make_dataset(tmp_path / "v.zarr", n=16, chunk=8)
    (data / var / chunk).unlink()
    status, err = run_cli(capsys, "evaluate", "--data", data, "--baselines", "none", "--out",
                          tmp_path / "eval")
    assert status == 2 and var in err and "missing" in err
    if var != "flux_clean":  # denoise reads flux and the coordinates only
        status, err = run_cli(capsys, "denoise", "--run", run[0], "--data", data, "--out",
                              tmp_path / "d.zarr", "--device", "cpu")
        assert status == 2 and var in err and "missing" in err


# --------------------------------------------------------------------------- case 8


def test_negative_workers_is_refused_at_once(small_grid, tmp_path):
    argv = [sys.executable, "-m", "specdenoise.cli", *simulate_argv(small_grid,
                                                                    tmp_path / "s.zarr")]
    argv[argv.index("--workers") + 1] = "-2"
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--workers must be at least 1" in r.stderr


# --------------------------------------------------------------------------- case 9


def _lock(out: Path, pid: int) -> Path:
    lock = out.with_name(f".{out.name}.lock")
    lock.write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))
    return lock


def test_a_second_writer_is_refused_and_a_stale_lock_reclaimed(small_grid, tmp_path, capsys):
    out = tmp_path / "s.zarr"
    lock = _lock(out, os.getpid())  # a live writer: this very process
    status, err = run_cli(capsys, *simulate_argv(small_grid, out, "--overwrite"))
    assert status == 2 and "being written by process" in err and not out.exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    _lock(out, int(dead))  # its writer died (SIGKILL): reclaimed
    assert run_cli(capsys, *simulate_argv(small_grid, out))[0] == 0
    assert schema.open_dataset(out).sizes["spectrum"] == 4 and not lock.exists()


def test_a_lock_of_another_host_expires_without_its_heartbeat(tmp_path):
    import time

    from specdenoise import stores

    out = tmp_path / "x.zarr"
    lock = _lock(out, 1)
    lock.write_text(json.dumps({"pid": 1, "host": "another-node"}))  # e.g. a batch node
    with pytest.raises(SpecdenoiseError, match="another-node"), stores.locked(out):
        pass
    old = time.time() - stores.STALE_AFTER_S - 1  # the job was killed long ago
    os.utime(lock, (old, old))
    with stores.locked(out) as held:
        assert json.loads(held.read_text())["host"] == socket.gethostname()
    assert not lock.exists()


def test_two_grid_imports_never_share_a_temporary_folder(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    write2017(src, 5000, 4.5, ext="asc")
    out = tmp_path / "g.zarr"
    other = tmp_path / "g.zarr.partial"  # what another import is assembling right now
    other.mkdir()
    (other / "zarr.json").write_text("{}")
    _lock(out, os.getpid())
    status, err = run_cli(capsys, "grid", "import", "bosz", src, "--out", out, "--no-progress")
    assert status == 2 and "being written" in err
    out.with_name(".g.zarr.lock").unlink()
    assert run_cli(capsys, "grid", "import", "bosz", src, "--out", out, "--no-progress")[0] == 0
    assert (other / "zarr.json").exists() and open_grid(out).attrs["complete"]


# --------------------------------------------------------------------------- case 10


def _write_asc(folder: Path, teff, logg, flux_fn) -> Path:
    wave = np.round(synthe_wave_angstrom(5000), 3)
    cont = np.full(wave.size, 1000.0)
    flux = flux_fn(cont * (1 - 0.5 * np.exp(-0.5 * ((wave - 8500.0) / 1.0) ** 2)))
    path = folder / name2017(teff, logg, ext="asc")
    path.write_text("".join(f"{w:.3f} {f:.8e} {c:.8e}\n" for w, f, c in zip(wave, flux, cont,
                                                                               strict=True)))
    return path


@pytest.mark.parametrize("flux_fn,message", [(lambda f: -f, "negative flux"),
                                             (lambda f: 0 * f, "zero throughout"),
                                             (lambda f: 1e300 * f, "non-finite")])
def test_grid_import_refuses_nonsense_flux(tmp_path, flux_fn, message):
    src = tmp_path / "src"
    src.mkdir()
    write2017(src, 5000, 4.5, ext="asc")
    bad = _write_asc(src, 5250, 4.5, flux_fn)
    out = tmp_path / "g.zarr"
    with pytest.raises(SpecdenoiseError, match=re.escape(bad.name) + ".*" + message) as err:
        import_bosz(src, out, progress=False)
    assert "partial" not in str(err.value) and not out.exists()
    assert not list(tmp_path.glob(".g.zarr*"))
    ds = open_grid(import_bosz(src, out, skip_bad=True, progress=False))
    assert int(ds.exists.sum()) == 1 and bad.name in ds.attrs["skipped_files"]


@needs_bosz2024
@pytest.mark.parametrize("edit,message", [
    (lambda w: w / 10, "in Å"),
    (lambda w: w + 2000, "not log-uniform"),
    (lambda w: np.where(np.arange(w.size) == np.searchsorted(w, 8000), w - 5, w),
     "not strictly increasing"),
])
def test_grid_import_checks_the_bosz2024_wavelength_file(tmp_path, edit, message):
    src = tmp_path / "src"
    src.mkdir()
    for f in sorted(BOSZ2024.glob("bosz2024_mp_*.txt.gz")):
        shutil.copy(f, src)
    wave = np.loadtxt(BOSZ2024 / "bosz2024_wave_r5000.txt")
    np.savetxt(src / "bosz2024_wave_r5000.txt", edit(wave), fmt="%.7e")
    with pytest.raises(SpecdenoiseError, match=message):
        import_bosz(src, tmp_path / "g.zarr", progress=False)
    assert not (tmp_path / "g.zarr").exists()


# --------------------------------------------------------------------------- case 11


def test_unwritable_outputs_are_one_line_in_every_stage(run, small_grid, tmp_path,
                                                        capsys):
    from test_etc import DARK, _write_ecsv_run

    from specdenoise.simulate.noise import BuiltinNoise

    data = make_dataset(tmp_path / "d.zarr", n=8, chunk=4)
    src = tmp_path / "bosz"
    src.mkdir()
    write2017(src, 5000, 4.5, ext="asc")
    runs = tmp_path / "runs"
    runs.mkdir()
    _write_ecsv_run(runs / "r.ecsv", BuiltinNoise(), DARK)
    for argv in (["grid", "import", "bosz", src, "--out", NOWHERE / "g.zarr"],
                 simulate_argv(small_grid, NOWHERE / "s.zarr"),
                 ["etc", "--mag", "22", "--out", NOWHERE / "e.npz"],
                 ["etc", "import", runs, "--out", NOWHERE / "t.zarr"],
                 ["train", "--data", data, "--out", NOWHERE / "run", "--epochs", "1", *TINY],
                 ["denoise", "--run", run[0], "--data", data, "--out", NOWHERE / "x.zarr"],
                 ["evaluate", "--data", data, "--baselines", "none", "--out", NOWHERE / "e"]):
        status, err = run_cli(capsys, *argv)
        assert status == 2 and str(NOWHERE) in err, argv
    # the ETC table goes through the same guarded path as every store
    table = tmp_path / "t.zarr"
    assert run_cli(capsys, "etc", "import", runs, "--out", table)[0] == 0
    assert run_cli(capsys, "etc", "import", runs, "--out", table)[0] == 2
    assert run_cli(capsys, "etc", "import", runs, "--out", table, "--overwrite")[0] == 0
    status, err = run_cli(capsys, "etc", "import", runs, "--out", data, "--overwrite")
    assert status == 2 and "nothing was deleted" in err and schema.open_dataset(data)


def test_bad_execution_options_are_one_line(small_grid, tmp_path, capsys):
    status, err = run_cli(capsys, *simulate_argv(small_grid, tmp_path / "s.zarr",
                                                 "--memory-limit", "lots"))
    assert status == 2 and "--memory-limit" in err and not (tmp_path / "s.zarr").exists()
    profile = tmp_path / "p.yaml"
    profile.write_text("kind: slurm\ncores: 1\nprocesses: 0\nmemory: 1GB\n")
    status, err = run_cli(capsys, "cluster", "show", profile)
    assert status == 2 and "'processes' must be a positive integer" in err


def test_denoise_spectrum_into_a_missing_folder_is_one_line(run, tmp_path, capsys):
    spec = tmp_path / "s.csv"
    np.savetxt(spec, np.full(4096, 0.5))
    status, err = run_cli(capsys, "denoise", "--run", run[0], "--spectrum", spec, "--out",
                          tmp_path / "missing_dir" / "x.csv", "--device", "cpu")
    assert status == 2 and "missing_dir" in err


def test_a_garbage_chunk_is_one_line_in_train_and_evaluate(tmp_path, capsys):
    data = make_dataset(tmp_path / "d.zarr", n=16, chunk=8)
    (data / "flux_clean" / "c" / "1" / "0").write_bytes(os.urandom(3000))
    status, err = run_cli(capsys, "train", "--data", data, "--out", tmp_path / "run",
                          "--epochs", "1", *TINY)
    assert status == 2 and ("decoded" in err or "corrupt" in err)
    status, err = run_cli(capsys, "evaluate", "--data", data, "--baselines", "none", "--out",
                          tmp_path / "eval")
    assert status == 2 and ("decoded" in err or "corrupt" in err)


def test_debug_shows_the_traceback(small_grid, tmp_path):
    r = subprocess.run([sys.executable, "-m", "specdenoise.cli", "--debug",
                        *simulate_argv(small_grid, tmp_path / "s.zarr", "--memory-limit",
                                       "lots")], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Traceback" in r.stderr


# --------------------------------------------------------------------------- case 12


def test_resume_refuses_replaced_training_data(tmp_path, capsys):
    data = make_dataset(tmp_path / "d.zarr", n=16, chunk=8, seed=0)
    out = tmp_path / "run"
    assert run_cli(capsys, "train", "--data", data, "--out", out, "--epochs", "1", *TINY)[0] == 0
    shutil.rmtree(data)
    make_dataset(data, n=16, chunk=8, seed=5)  # same path, same shape, other spectra
    status, err = run_cli(capsys, "train", "--data", data, "--out", out, "--epochs", "2",
                          "--resume")
    assert status == 2 and "replaced" in err


def test_validation_on_another_wavelength_grid(run, tmp_path, capsys):
    data = make_dataset(tmp_path / "d.zarr", n=16, chunk=8)
    val = make_dataset(tmp_path / "v.zarr", n=8, chunk=8, seed=1)
    zarr.open_group(str(val), mode="r+")["wave"][:] = WAVE + 30.0  # same pixel count
    status, err = run_cli(capsys, "train", "--data", data, "--val", val, "--out",
                          tmp_path / "run", "--epochs", "1", *TINY)
    assert status == 2 and "another wavelength grid" in err and "740.0000" in err
    status, err = run_cli(capsys, "evaluate", "--run", run[0], "--data", val, "--baselines",
                          "none", "--out", tmp_path / "eval", "--device", "cpu")
    assert status == 2 and "740.0000" in err and "710.0000" in err


@pytest.mark.parametrize("make,message", [
    (lambda p: np.savetxt(p, np.full(4096, -0.5)), "mostly negative"),
    (lambda p: np.savetxt(p, np.zeros(4096)), "all zero"),
])
def test_denoise_spectrum_refuses_what_cannot_be_a_spectrum(run, tmp_path, capsys,
                                                            make, message):
    spec = tmp_path / "s.csv"
    make(spec)
    status, err = run_cli(capsys, "denoise", "--run", run[0], "--spectrum", spec, "--out",
                          tmp_path / "o.csv", "--device", "cpu")
    assert status == 2 and message in err and not (tmp_path / "o.csv").exists()


def test_denoise_spectrum_refuses_an_image(run, tmp_path, capsys):
    from astropy.io import fits

    image = tmp_path / "img.fits"
    fits.PrimaryHDU(np.full((4096, 4096), 100, np.uint8)).writeto(image)
    status, err = run_cli(capsys, "denoise", "--run", run[0], "--spectrum", image, "--out",
                          tmp_path / "o.csv", "--device", "cpu")
    assert status == 2 and "image" in err


def test_denoise_spectrum_out_needs_overwrite_and_never_follows_a_link(run, tmp_path,
                                                                      capsys):
    spec = tmp_path / "s.csv"
    np.savetxt(spec, 0.5 + 0.01 * np.sin(np.arange(4096)))
    out = tmp_path / "o.csv"
    out.write_text("keep")
    victim = tmp_path / "victim.txt"
    victim.write_text("not yours")
    (tmp_path / ".o.csv.tmp").symlink_to(victim)  # the old fixed temporary name
    argv = ["denoise", "--run", run[0], "--spectrum", spec, "--out", out, "--device", "cpu"]
    status, err = run_cli(capsys, *argv)
    assert status == 2 and "--overwrite" in err and out.read_text() == "keep"
    assert run_cli(capsys, *argv, "--overwrite")[0] == 0
    assert victim.read_text() == "not yours" and out.read_text().startswith("wave,flux")


def test_simulate_refuses_parameters_off_the_grid_before_the_store(small_grid, tmp_path,
                                                                   capsys):
    out = tmp_path / "s.zarr"
    status, err = run_cli(capsys, *simulate_argv(small_grid, out, "--set",
                                                 "params.teff={dist=\"uniform\",low=1000,"
                                                 "high=3600}"))
    assert status == 2 and "params.teff spans 1000..3600" in err and not out.exists()


# --------------------------------------------------------------------------- case 13


def test_resume_with_other_loader_workers_is_refused(tmp_path, capsys):
    data = make_dataset(tmp_path / "d.zarr", n=16, chunk=8)
    out = tmp_path / "run"
    assert run_cli(capsys, "train", "--data", data, "--out", out, "--epochs", "1", *TINY)[0] == 0
    resume = ["train", "--data", data, "--out", out, "--epochs", "2", "--resume"]
    status, err = run_cli(capsys, *resume, "--loader-workers", "2")
    assert status == 2 and "workers = 0, not 2" in err
    assert run_cli(capsys, *resume, "--loader-workers", "0")[0] == 0


# --------------------------------------------------------------------------- case 14


@pytest.mark.parametrize("line", ['walltime: "01:00:00\\n#SBATCH --uid=0"',
                                  'job_extra_directives: ["--x\\n/bin/rm -rf /"]',
                                  'queue: "normal; rm -rf /"'])
def test_profile_values_cannot_inject_lines(tmp_path, capsys, line):
    profile = tmp_path / "p.yaml"
    profile.write_text(f"kind: slurm\ncores: 1\nmemory: 1GB\n{line}\n")
    status, err = run_cli(capsys, "cluster", "show", profile)
    assert status == 2 and str(profile) in err


def test_profile_paths_are_shell_quoted(tmp_path, capsys):
    pytest.importorskip("dask_jobqueue")
    profile = tmp_path / "p.yaml"
    profile.write_text("kind: slurm\ncores: 1\nmemory: 1GB\n"
                       "local_directory: '/tmp; touch /tmp/pwned'\n"
                       "python: '/usr/bin/python3; touch /tmp/pwned'\n")
    assert run_cli(capsys, "cluster", "show", profile)[0] == 0
    from specdenoise.cluster.profiles import job_script, load_profile

    script = job_script(load_profile(profile))
    assert "'/tmp; touch /tmp/pwned'" in script
    assert "'/usr/bin/python3; touch /tmp/pwned' -m" in script


def test_submit_script_quotes_the_run_directory(tmp_path):
    from specdenoise.submit import job_script

    run_dir = tmp_path / "my run"
    text = job_script({"kind": "slurm", "cores": 1, "memory": "1GB"}, ["python"], run_dir,
                      cwd=tmp_path)
    assert f'#SBATCH -o "{run_dir.resolve()}/slurm-%j.out"' in text.splitlines()
    with pytest.raises(SpecdenoiseError, match="one line"):
        job_script({"kind": "slurm", "cores": 1, "memory": "1GB", "walltime": "1\n2"},
                   ["python"], run_dir)


# --------------------------------------------------------------------------- contracts


def test_legacy_etc_tables_are_still_read(tmp_path):
    import xarray as xr

    from specdenoise.simulate.etc_table import TABLE_KIND, open_table

    path = tmp_path / "old.zarr"
    ds = xr.Dataset({"sky_rate": (("wave",), np.ones(3)), "variance": (("wave",), np.ones(3)),
                     "conversion_rate": (("wave",), np.ones(3))},
                    coords={"wave": np.arange(3.0)}, attrs={"kind": TABLE_KIND, "fixed": "{}"})
    ds.to_zarr(path, zarr_format=3, consolidated=False)
    assert open_table(path).attrs["kind"] == TABLE_KIND


def test_outputs_are_as_readable_as_the_users_other_files(tmp_path):
    """Files and store folders written through a temporary honour the umask, not mode 0600
    (a group sharing a project folder on a cluster must be able to read the results)."""
    from specdenoise import stores

    old = os.umask(0o027)
    try:
        out = stores.write_file(tmp_path / "summary.csv", lambda p: p.write_text("a,b\n"),
                                overwrite=False)
        folder = stores.temp_dir(tmp_path / "store.zarr")
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o640
    assert folder.stat().st_mode & 0o777 == 0o750
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_a_grid_coarser_than_the_lsf_is_refused_before_the_store_exists(tmp_path, capsys):
    """R = 3000 models cannot be observed at PFS resolution: one line naming the cause, no
    store (before, the workers failed on their first chunk and a re-run asked for --resume)."""
    from conftest import write_small_grid

    grid = write_small_grid(tmp_path / "coarse.zarr")
    g = zarr.open_group(str(grid), mode="r+")
    g.attrs["resolution"] = 3000
    out = tmp_path / "s.zarr"
    for _ in range(2):  # the same answer again, not '--resume'
        status, err = run_cli(capsys, *simulate_argv(grid, out))
        assert status == 2 and "not sharper than the PFS line-spread function" in err, err
        assert not out.exists()
