"""CPU threading of training on shared cores: the OpenMP wait policy, and the thread governor
that benchmarks/bench_shared_cores.py measures."""

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from thread_governor import ThreadGovernor, usable_cores  # noqa: E402

PROBE = ("import os, specdenoise, torch; torch.ones(4).sum(); "
         "print(os.environ.get('OMP_WAIT_POLICY'))")


def _policy(env_value):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if env_value is not None:
        env["OMP_WAIT_POLICY"] = env_value
    return subprocess.run([sys.executable, "-c", PROBE], env=env, check=True, text=True,
                          capture_output=True).stdout.strip()


def test_import_sets_passive_wait_policy_before_torch_loads():
    assert _policy(None) == "PASSIVE"


def test_users_own_wait_policy_wins():
    assert _policy("ACTIVE") == "ACTIVE"


class FakeClock:
    """Time that advances only when the test says so (the governor's windows are timed)."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_governor_moves_to_the_faster_thread_count_and_back():
    clock = FakeClock()
    start = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        gov = ThreadGovernor(2, window_s=1.0, min_steps=1, settle=2, clock=clock)
        if usable_cores() < 2:
            assert not gov.enabled
            return
        # a step's duration as a function of the thread count in force: 1 thread faster
        speed = {1: 0.5, 2: 1.0}  # seconds per step
        for _ in range(40):
            clock.t += speed[torch.get_num_threads()]
            gov.step(10)
        assert gov.threads == 1
        assert {t for t, _ in gov.history} == {1, 2}  # it did probe
        speed = {1: 1.0, 2: 0.4}  # the neighbour went away: two threads are faster again
        for _ in range(80):
            clock.t += speed[torch.get_num_threads()]
            gov.step(10)
        assert gov.threads == 2
        gov.restore()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(start)


def test_governor_is_off_on_one_core():
    start = torch.get_num_threads()
    try:
        gov = ThreadGovernor(1)
        assert not gov.enabled
        gov.step(10)
        assert gov.history == []
    finally:
        torch.set_num_threads(start)


# --------------------------------------------------------------------------- train --threads


@contextlib.contextmanager
def _busy(n: int):
    """``n`` busy processes (pure-Python loops), started and running when the block begins."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True:\n    pass\n"])
             for _ in range(n)]
    try:
        time.sleep(1.0)
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_auto_threads_leave_the_busy_cores_alone(monkeypatch):
    """With every usable core kept busy by another process, ``--threads auto`` computes on
    one thread (two threads beside a busy process ran at 0.41x, one at 0.78x the idle rate)."""
    from specdenoise.train.distributed import choose_threads, idle_cores
    from specdenoise.train.distributed import usable_cores as cores

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    n = cores()
    if n < 2:
        pytest.skip("one usable core: nothing to choose")
    start = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with _busy(n):
            free = idle_cores()
            threads, why = choose_threads(None, torch.device("cpu"))
        assert free is not None and free < n - 0.5, free
        assert threads < n and "busy" in why, (threads, why)
        # asked for, a count is kept whatever the load; 0 is PyTorch's own count
        assert choose_threads(3, torch.device("cpu"))[0] == 3
        assert choose_threads(0, torch.device("cpu"))[0] == n
        # a batch job's OMP_NUM_THREADS, or a GPU run: no measurement, PyTorch's count
        monkeypatch.setenv("OMP_NUM_THREADS", str(n))
        assert choose_threads(None, torch.device("cpu")) == (n, "PyTorch's default")
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert choose_threads(None, torch.device("cuda"))[0] == n
    finally:
        torch.set_num_threads(start)


def test_the_run_records_its_thread_count_and_a_resume_keeps_it(tmp_path, monkeypatch):
    import json

    from conftest import make_dataset

    from specdenoise.train import loop
    from specdenoise.train.checkpoint import resume_config

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    data = make_dataset(tmp_path / "d.zarr", n=16, chunk=8)
    cfg = loop.make_config(data, None, tmp_path / "run", preset="tiny",
                           model_cfg={"depth": 2, "filters": 4}, epochs=1, batch_size=8,
                           workers=0, device="cpu")
    assert cfg.threads is None  # auto
    start = torch.get_num_threads()
    torch.set_num_threads(1)  # the count auto never exceeds
    try:
        loop.train(cfg, progress=False)
        assert torch.get_num_threads() == 1  # the caller's count is back
    finally:
        torch.set_num_threads(start)
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["train"]["threads"]
    assert recorded == 1
    assert resume_config(tmp_path / "run").threads == 1
    assert resume_config(tmp_path / "run", threads=2).threads == 2  # asked for on resume


@pytest.mark.parametrize("value, ok", [("auto", True), ("2", True), ("0", False),
                                       ("-1", False), ("two", False)])
def test_threads_option(value, ok, tmp_path):
    r = subprocess.run([sys.executable, "-m", "specdenoise.cli", "train", "--data", "d.zarr",
                        "--out", str(tmp_path / "run"), "--threads", value, "--print-config"],
                       capture_output=True, text=True)
    if ok:
        assert r.returncode == 0, r.stderr
        lines = [ln for ln in r.stdout.splitlines() if ln.startswith("threads")]
        assert lines == (["threads = 2"] if value == "2" else [])  # auto: not written
    else:
        assert r.returncode == 2 and "--threads" in r.stderr
        assert "Traceback" not in r.stderr
