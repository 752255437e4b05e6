"""The Dask simulation stage with real clusters, real worker processes and real Zarr stores.

Every run of one configuration must give a bitwise-identical store: with one or two worker
processes, through a scheduler reached by address, with a worker killed mid-run, and after a
SIGINT followed by ``--resume``.
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import xarray as xr
from conftest import assert_identical, sigint_default, simulate_in_process

from specdenoise import schema
from specdenoise.config import load_config
from specdenoise.errors import SpecdenoiseError
from specdenoise.stage_simulate import simulate

N, CHUNK = 600, 50  # 12 chunks, enough that an interruption lands mid-run


def _cfg(grid, out, **kw):
    return load_config(n=kw.pop("n", N), chunk_size=kw.pop("chunk_size", CHUNK), seed=3,
                       grid=str(grid), out=str(out), **kw)


@pytest.fixture(scope="module")
def reference(small_grid, tmp_path_factory):
    """The store written by one in-process worker: what every other run must reproduce."""

    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    simulate_in_process(_cfg(small_grid, out))
    return out


def test_dataset_schema(reference):
    ds = schema.open_dataset(reference)
    assert ds.sizes == {"spectrum": N, "wave": 4096}
    for v in ("flux", "flux_clean", "sigma"):
        assert ds[v].dtype == np.float32 and ds[v].dims == ("spectrum", "wave")
    for name in (*schema.PARAMS, *schema.CONDITIONS, "snr", "norm"):
        assert ds[name].dims == ("spectrum",), name
        assert "units" in ds[name].attrs
    assert ds.attrs["seed"] == 3 and "config" in ds.attrs and "package_version" in ds.attrs
    assert ds.attrs["grid_provenance"]
    flux = ds["flux"].values
    assert np.isfinite(flux).all() and np.isfinite(ds["sigma"].values).all()
    np.testing.assert_allclose(np.median(ds["flux_clean"].values, axis=1), 0.5, rtol=0.05)
    snr = np.median(flux / ds["sigma"].values, axis=1)
    np.testing.assert_allclose(ds["snr"].values, snr, rtol=1e-4)
    # drawn parameters follow the defaults
    assert ds["teff"].min() >= 3500 and ds["teff"].max() <= 7500
    assert np.all(ds["n_exp"].values == 4) and np.all(np.abs(ds["rv"].values) <= 600)
    # opened lazily through plain xarray too
    lazy = xr.open_zarr(reference)
    assert lazy["flux"].chunks[0][0] == CHUNK


def test_two_local_worker_processes_identical(small_grid, reference, tmp_path):
    out = tmp_path / "two.zarr"
    simulate(_cfg(small_grid, out), cluster="local", workers=2, progress=False)
    assert_identical(reference, out)


def test_scheduler_by_address_identical(small_grid, reference, tmp_path):
    sched_file = tmp_path / "scheduler.json"
    procs = [subprocess.Popen(
        ["dask", "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
         "--scheduler-file", str(sched_file)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        for _ in range(300):
            if sched_file.exists() and sched_file.stat().st_size:
                break
            time.sleep(0.1)
        import json

        address = json.loads(sched_file.read_text())["address"]
        for _ in range(2):
            procs.append(subprocess.Popen(
                ["dask", "worker", address, "--nthreads", "1", "--no-dashboard",
                 "--host", "127.0.0.1"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client

        with Client(address, timeout="30s") as c:
            c.wait_for_workers(2, timeout=60)
        out = tmp_path / "addr.zarr"
        simulate(_cfg(small_grid, out), cluster=address, progress=False)
        assert_identical(reference, out)
    finally:
        for p in procs[::-1]:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)


def test_worker_killed_mid_run_identical(small_grid, reference, tmp_path):
    from distributed import Client, LocalCluster, WorkerPlugin

    class KillOnce(WorkerPlugin):
        """The first worker to finish its second task kills its own process (SIGKILL)."""

        def __init__(self, flag):
            self.flag = str(flag)
            self.finished = 0

        def transition(self, key, start, finish, **kwargs):
            if finish == "memory" and str(key).startswith("simulate-"):
                self.finished += 1
                if self.finished == 2 and not os.path.exists(self.flag):
                    with open(self.flag, "w") as f:
                        f.write(str(os.getpid()))
                    os.kill(os.getpid(), signal.SIGKILL)

    flag = tmp_path / "killed"
    out = tmp_path / "killed.zarr"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as lc, Client(lc) as client:
        client.register_plugin(KillOnce(flag), name="kill-once")
        simulate(_cfg(small_grid, out), client=client, progress=False)
    assert flag.exists(), "no worker was killed: the test did not test anything"
    assert_identical(reference, out)


def test_sigint_then_resume_identical(small_grid, reference, tmp_path):
    out = tmp_path / "int.zarr"
    cmd = [sys.executable, "-m", "specdenoise.cli", "simulate", "--n", str(N), "--chunk-size",
           str(CHUNK), "--seed", "3", "--grid", str(small_grid), "--out", str(out),
           "--workers", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=sigint_default)
    deadline = time.time() + 120
    while time.time() < deadline and len(schema.done_chunks(out)) < 2:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    n_done = len(schema.done_chunks(out))
    assert proc.returncode == 130, err
    assert "--resume" in err
    assert n_done < N // CHUNK, "the run finished before the interrupt"
    with pytest.raises(SpecdenoiseError, match="incomplete"):
        schema.open_dataset(out)
    # without --resume the half-made store is not silently reused
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "--resume" in r.stderr
    r = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert_identical(reference, out)


def test_split_writes_distinct_sets(small_grid, tmp_path):
    out = tmp_path / "sets"
    cfg = _cfg(small_grid, out, n=40, chunk_size=7, split="train=0.5,val=0.25,test=0.25")
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as lc, \
            Client(lc) as client:
        paths = simulate(cfg, client=client, progress=False)
    sizes = {p.name: schema.open_dataset(p).sizes["spectrum"] for p in paths}
    assert sizes == {"train.zarr": 20, "val.zarr": 10, "test.zarr": 10}
    teff = [schema.open_dataset(p)["teff"].values[:5] for p in paths]
    assert not np.allclose(teff[0], teff[1]) and not np.allclose(teff[1], teff[2])


def test_local_cluster_workers_get_low_overhead_settings_but_user_values_win():
    import dask

    from specdenoise.cluster import LOW_OVERHEAD, connect

    def settings():
        return {k: dask.config.get(k) for k in LOW_OVERHEAD}

    with connect("local", workers=1) as client:
        (got,) = client.run(settings).values()
    assert got == {k: ours for k, (_, ours) in LOW_OVERHEAD.items()}
    assert dask.config.get("distributed.worker.profile.enabled") is True  # restored here
    with dask.config.set({"distributed.admin.tick.interval": "50ms"}), \
            connect("local", workers=1) as client:
        (got,) = client.run(settings).values()
    assert got["distributed.admin.tick.interval"] == "50ms"
    assert got["distributed.worker.profile.enabled"] is False


def test_local_cluster_leaves_this_process_environment_as_it_was(monkeypatch):
    """The nanny's worker settings (OMP_NUM_THREADS=1 ...) stay with the workers: torch
    initialised after a simulation in the same process (``specdenoise run``) keeps its threads."""
    import os

    from specdenoise.cluster import connect

    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.delenv(key, raising=False)
    before = dict(os.environ)
    with connect("local", workers=1) as client:
        (worker_env,) = client.run(lambda: os.environ.get("OMP_NUM_THREADS")).values()
        assert dict(os.environ) == before
    assert dict(os.environ) == before
    assert worker_env == "1"  # the workers still get dask's single-threaded setting


_MALLINFO = """
import ctypes, sys
import numpy as np
from specdenoise.stage_simulate import keep_freed_memory

class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Mallinfo2
tuned = keep_freed_memory() if sys.argv[1] == "on" else None
a = np.empty((1000, 5000), dtype=np.float32)  # 20 MB, like one chunk's arrays
mapped = libc.mallinfo2().hblkhd  # bytes in blocks that came from their own mmap
del a
kept = libc.mallinfo2().fordblks  # freed bytes the heap keeps for the next array
print(tuned, mapped, kept)
"""


def test_workers_reuse_freed_array_memory():
    """Under Dask's MALLOC_TRIM_THRESHOLD_, every large array is a fresh mmap that is
    page-faulted in and unmapped again, unless keep_freed_memory() has run in the process
    (as run_chunk does): then it comes from the heap, which keeps it after it is freed."""
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536"}  # what the Dask nanny sets

    def mallinfo(mode):
        r = subprocess.run([sys.executable, "-c", _MALLINFO, mode], env=env,
                           capture_output=True, text=True, timeout=60)
        if r.returncode:
            pytest.skip(f"no glibc mallinfo2 here: {r.stderr.strip().splitlines()[-1]}")
        tuned, mapped, kept = r.stdout.split()
        return tuned, int(mapped), int(kept)

    tuned, mapped, kept = mallinfo("on")
    if tuned != "True":
        pytest.skip("not glibc: malloc thresholds cannot be tuned here")
    size = 1000 * 5000 * 4
    assert mapped < size and kept >= size
    _, mapped, kept = mallinfo("off")
    assert mapped >= size and kept < size


def test_stored_calibration_coefficients_describe_the_one_distortion(small_grid, tmp_path):
    """calib_c1..3 are the distortion in flux_clean: with it off, the same draws differ by d."""
    from distributed import Client, LocalCluster

    from specdenoise.simulate import calibration

    stores = {}
    with LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as lc, \
            Client(lc) as client:
        for amp in (0.02, 0.0):
            cfg = _cfg(small_grid, tmp_path / f"d{amp}.zarr", n=30, chunk_size=15,
                       compressor="zstd", overrides=[f"observe.distortion={amp}"])
            stores[amp] = schema.open_dataset(simulate(cfg, client=client, progress=False)[0])
    ds, flat = stores[0.02], stores[0.0]
    coef = np.stack([ds[k].values for k in schema.calib_names(3)], axis=1).astype(np.float64)
    d = calibration.distortion(coef, calibration.distortion_basis(ds["wave"].values))
    assert 0.001 < np.abs(d - 1).max() <= 0.02 + 1e-6
    assert not np.any([flat[k].values for k in schema.calib_names(3)])  # none drawn
    ratio = ds["flux_clean"].values / flat["flux_clean"].values / d  # one factor per spectrum
    np.testing.assert_allclose(ratio, np.broadcast_to(ratio[:, :1], ratio.shape), rtol=2e-5)


def test_paper_preset_spans_six_and_a_half_magnitudes():
    cfg = load_config(preset="paper", n=10)
    assert cfg["params"]["mag"] == {"dist": "uniform", "low": 16.0, "high": 22.5}
    assert load_config()["params"]["mag"]["low"] == 19.0
    with pytest.raises(SpecdenoiseError, match="unknown simulation preset"):
        load_config(preset="nope")
