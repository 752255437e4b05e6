"""The SLURM the tests of ``tests/slurm/`` run on, and what they share.

``tests/conftest.py`` registers this module as a plugin, so its fixtures reach every test
module that names them without an import: ``slurm`` (a running SLURM: the one ``sinfo``
answers for, or, as root with Debian's slurm-wlm and munge installed, daemons started for the
module by ``slurm_one_machine.sh`` and stopped after it) and ``reference`` (the store a local
Dask cluster writes for the simulation the SLURM runs must reproduce). The helpers are
imported by name.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import simulate_in_process

from specdenoise import schema

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / "cluster" / "slurm.yaml"
SCRIPT = Path(__file__).resolve().parent / "slurm_one_machine.sh"
N, CHUNK, SEED = 400, 25, 3  # 16 chunks: a cancel lands mid-run


def _sinfo_ok() -> bool:
    if not shutil.which("sinfo"):
        return False
    try:
        r = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                           timeout=20)
    except subprocess.TimeoutExpired:
        return False
    return r.returncode == 0 and any(s in r.stdout for s in ("idle", "mix", "alloc"))


def _pids(state: Path) -> list[int]:
    pids = []
    for name in ("slurmd.pid", "slurmctld.pid", "munged.pid"):
        f = state / name
        if f.exists() and f.read_text().strip():
            pids.append(int(f.read_text().strip()))
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[-1].startswith("Z"))


@pytest.fixture(scope="module")
def slurm():
    """SLURM for this module's tests: daemons stop when the module ends, not the session."""
    if _sinfo_ok():
        yield "existing"
        return
    if os.geteuid() != 0:
        pytest.skip("no SLURM answers and the tests do not run as root to start one")
    if not (shutil.which("slurmctld") and shutil.which("slurmd") and shutil.which("munged")):
        pytest.skip("no SLURM: install Debian's slurm-wlm and munge (.ci/run does)")
    # not under pytest's basetemp: its folders are private to root and munged runs as munge
    state = Path(tempfile.mkdtemp(prefix="specdenoise-slurm-"))
    r = subprocess.run(["bash", str(SCRIPT), "up", str(state)], capture_output=True,
                       text=True, timeout=120)
    started = _pids(state)
    if r.returncode != 0:
        subprocess.run(["bash", str(SCRIPT), "down", str(state)], timeout=120)
        pytest.fail(f"could not start SLURM: {r.stderr or r.stdout}")
    try:
        yield "started"
    finally:
        subprocess.run(["bash", str(SCRIPT), "down", str(state)], timeout=120)
        left = [p for p in started if _alive(p)]
        shutil.rmtree(state, ignore_errors=True)
        assert not left, f"SLURM daemons still running after teardown: {left}"


def squeue_jobs() -> list[tuple[str, str, str]]:
    """(job id, name, state) of every job SLURM still lists."""
    r = subprocess.run(["squeue", "-h", "-o", "%i %j %T"], capture_output=True, text=True,
                       timeout=30)
    return [tuple(line.split()) for line in r.stdout.splitlines() if line.strip()]


def wait_no_jobs(timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline and squeue_jobs():
        time.sleep(0.5)
    assert not squeue_jobs(), f"jobs still queued: {squeue_jobs()}"


def wait_for(predicate, timeout: float, what: str, poll: float = 0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class JobWatcher:
    """Record every job SLURM lists while a command runs, and the batch script of each."""

    def __init__(self, name: str | None = None):
        self.name = name
        self.seen: dict[str, str] = {}  # id -> last state
        self.scripts: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=30)
        self.poll()

    def running(self) -> list[str]:
        return [j for j, s in self.seen.items() if s == "RUNNING"]

    def poll(self) -> None:
        for job, name, st in squeue_jobs():
            if self.name and name != self.name:
                continue
            self.seen[job] = st
            if job not in self.scripts:
                r = subprocess.run(["scontrol", "write", "batch_script", job, "-"],
                                   capture_output=True, text=True, timeout=30)
                if r.returncode == 0:
                    self.scripts[job] = r.stdout

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except (subprocess.SubprocessError, OSError):
                pass
            self._stop.wait(0.3)


def _simulate_cmd(grid: Path, out: Path, cluster: str, n: int = N) -> list[str]:
    return [sys.executable, "-m", "specdenoise.cli", "simulate", "--n", str(n), "--chunk-size",
            str(CHUNK), "--seed", str(SEED), "--grid", str(grid), "--out", str(out),
            "--cluster", cluster, "--no-progress"]


def simulate_on_local_cluster(grid: Path, out: Path, n: int = N) -> Path:
    """The store one in-process LocalCluster worker writes for :func:`_simulate_cmd`'s
    simulation of ``n`` spectra: what every SLURM run must reproduce."""

    from specdenoise.config import load_config

    cfg = load_config(n=n, chunk_size=CHUNK, seed=SEED, grid=str(grid), out=str(out))
    simulate_in_process(cfg)
    return out


@pytest.fixture(scope="module")
def reference(small_grid, tmp_path_factory):
    return simulate_on_local_cluster(small_grid,
                                     tmp_path_factory.mktemp("slurm-ref") / "ref.zarr")


def _simulate_and_scancel(small_grid, out, tmp_path, victims, env=None):
    """Run ``simulate`` on the SLURM profile; once two worker jobs run and two chunks are
    written, scancel ``victims(jobs)``. Returns (jobs, cancelled ids, stderr)."""
    n_chunks = -(-N // CHUNK)
    with JobWatcher("dask-worker") as jobs:
        proc = subprocess.Popen(_simulate_cmd(small_grid, out, str(PROFILE)), cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env)
        try:
            wait_for(lambda: len(jobs.running()) >= 2 and out.exists()
                     and len(schema.done_chunks(out)) >= 2, 180,
                     "two running worker jobs and two written chunks")
            cancelled = victims(jobs)
            n_done = len(schema.done_chunks(out))
            subprocess.run(["scancel", *cancelled], check=True, timeout=30)
            _, err = proc.communicate(timeout=600)  # generous: other work shares the cores
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert n_done < n_chunks, "the run finished before the cancel: the test tested nothing"
    assert proc.returncode == 0, err
    return jobs, cancelled, err


def _profile(tmp_path: Path, **extra) -> Path:
    """The shipped profile with ``extra`` keys changed, as a file in ``tmp_path``."""
    import yaml

    data = yaml.safe_load(PROFILE.read_text())
    data.update(extra)
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data))
    return path
