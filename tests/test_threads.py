"""CPU threading of training on shared cores: the OpenMP wait policy, and the thread governor
that benchmarks/bench_shared_cores.py measures."""

import os
import subprocess
import sys
from pathlib import Path

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
