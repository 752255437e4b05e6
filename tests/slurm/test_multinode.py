"""The multi-node rehearsal: SLURM nodes that reach the login node only over a network.

On a one-node SLURM every job shares the login node's network, so a scheduler on 127.0.0.1
works there and fails on a real site (the shipped profile did so until issue 23). Here
``slurm_one_machine.sh up STATE 2`` gives SLURM two nodes, n1 and n2, each with its own
slurmd in a network namespace of its own, on a bridge: the host (slurmctld and the Dask
scheduler) is 10.77.0.1 on interface ``sdnet0``, the nodes are 10.77.0.2 and 10.77.0.3 on an
``sdnet0`` of their own, and a node's 127.0.0.1 is its own loopback. Nothing is faked: the
jobs are real ``sbatch`` jobs whose Dask workers start in the nodes' namespaces and connect
over the bridge, as on a site whose nodes share ``ib0``.

What is proven:

- ``simulate --cluster PROFILE`` with ``interface: sdnet0`` (the scheduler listens on the
  host's side of the bridge, the workers bind to their node's side) runs one worker job on
  each node, both workers register from their node's address, and the store is bitwise
  identical to the same simulation on a LocalCluster;
- with the scheduler on 127.0.0.1 the workers cannot connect: the run ends, without hanging,
  in the waiting hint and one error line that names the loopback address.

The module fixture brings the rehearsal up as root where Debian's slurm-wlm, munge, iproute2
and network namespaces are available (``.ci/run`` installs the packages) and skips with the
reason elsewhere. It keeps to itself (its own config file, munged and ports), so it runs
beside another SLURM, and it removes its daemons, namespaces and bridge even when a test fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from conftest import assert_identical
from slurm_support import (
    SCRIPT,
    JobWatcher,
    _alive,
    _profile,
    _simulate_cmd,
    simulate_on_local_cluster,
    wait_no_jobs,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

N = 200  # 8 chunks of 25: work for both nodes
HOST = "10.77.0.1"  # the login node's side of the bridge
NODES = {"n1": "10.77.0.2", "n2": "10.77.0.3"}
IFACE = "sdnet0"


def _leftovers() -> list[str]:
    """The rehearsal's network pieces that still exist on this machine."""
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30)
    left = [f"netns {line.split()[0]}" for line in r.stdout.splitlines()
            if line.startswith("specdenoise-n")]
    if subprocess.run(["ip", "link", "show", IFACE], capture_output=True,
                      timeout=30).returncode == 0:
        left.append(f"link {IFACE}")
    return left


@pytest.fixture(scope="module")
def two_nodes():
    """A two-node SLURM of its own for this module; ``SLURM_CONF`` points at it meanwhile."""
    if os.geteuid() != 0:
        pytest.skip("the multi-node rehearsal needs root (network namespaces, daemons)")
    missing = [c for c in ("slurmctld", "slurmd", "munged", "ip", "nsenter")
               if not shutil.which(c)]
    if missing:
        pytest.skip(f"no {', '.join(missing)}: install Debian's slurm-wlm, munge and "
                    "iproute2 (.ci/run does)")
    state = Path(tempfile.mkdtemp(prefix="specdenoise-2nodes-"))  # munged must reach it
    saved = os.environ.get("SLURM_CONF")
    pids: list[int] = []
    try:
        r = subprocess.run(["bash", str(SCRIPT), "up", str(state), "2"], capture_output=True,
                           text=True, timeout=120)
        pids = [int(f.read_text()) for f in state.glob("*.pid") if f.read_text().strip()]
        if r.returncode == 3:  # namespaces or the bridge cannot be made here
            pytest.skip(f"no multi-node rehearsal on this machine: {r.stderr.strip()}")
        if r.returncode != 0:
            logs = "".join(f"\n--- {p.name}\n" + p.read_text()[-1500:]
                           for p in sorted((state / "log").glob("*.log")))
            pytest.fail(f"could not start the two-node SLURM: {r.stderr}{logs}")
        os.environ["SLURM_CONF"] = str(state / "slurm.conf")
        yield state
    finally:
        subprocess.run(["bash", str(SCRIPT), "down", str(state)], timeout=120)
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved
        shutil.rmtree(state, ignore_errors=True)
    left = [str(p) for p in pids if _alive(p)] + _leftovers()
    assert not left, f"the rehearsal left behind: {left}"


@pytest.fixture(scope="module")
def local_reference(small_grid, tmp_path_factory):
    return simulate_on_local_cluster(small_grid, tmp_path_factory.mktemp("ref") / "ref.zarr",
                                     n=N)


def _run(grid: Path, out: Path, profile: Path, cwd: Path, timeout: float):
    return subprocess.run(_simulate_cmd(grid, out, str(profile), n=N), cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def test_workers_on_both_nodes_reach_the_scheduler_over_the_network(
        two_nodes, small_grid, local_reference, tmp_path):
    wait_no_jobs()
    out = tmp_path / "s.zarr"
    # the shipped profile as a site would set it: the nodes' shared interface; one core a
    # job and one core a node, so the two jobs must run on different nodes
    profile = _profile(tmp_path, interface=IFACE, cores=1, memory="2GB", jobs=2,
                       job_script_prologue=['echo "on node $SLURMD_NODENAME"'])
    with JobWatcher("dask-worker") as jobs:
        r = _run(small_grid, out, profile, tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    assert re.search(r"submitted 2 batch jobs \(\d+, \d+\)", r.stdout), r.stdout
    wait_no_jobs()
    on = {}
    for job in jobs.seen:
        log = (tmp_path / f"slurm-{job}.out").read_text()
        node = re.search(r"^on node (n\d)$", log, re.M)
        assert node, log[-2000:]
        on[node.group(1)] = job
        # the worker bound to its node's side of the bridge and registered with the
        # scheduler on the host's side
        assert re.search(rf"Start worker at:\s+tcp://{re.escape(NODES[node.group(1)])}:\d+",
                         log), log[-2000:]
        assert re.search(rf"Registered to:\s+tcp://{re.escape(HOST)}:\d+", log), log[-2000:]
    assert sorted(on) == sorted(NODES), f"worker jobs ran on {on}, not on both nodes"
    assert_identical(local_reference, out)


def test_a_scheduler_on_loopback_is_one_line_not_a_hang(two_nodes, small_grid, tmp_path):
    """What the shipped profile did before issue 23, on a cluster where it cannot work."""
    wait_no_jobs()
    out = tmp_path / "s.zarr"
    profile = _profile(tmp_path, cores=1, memory="2GB", jobs=2, death_timeout=5,
                       wait_hint_after=3,
                       scheduler_options={"host": "127.0.0.1", "dashboard_address": ":0"})
    t0 = time.monotonic()
    with JobWatcher("dask-worker") as jobs:
        r = _run(small_grid, out, profile, tmp_path, timeout=300)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "ended without a worker connecting" in err[-1], r.stderr
    assert "127.0.0.1, a loopback address that other nodes cannot reach" in err[-1]
    assert "no worker has connected after" in r.stdout, r.stdout
    assert time.monotonic() - t0 < 250 and not out.exists()
    assert len(jobs.seen) == 2, jobs.seen
    for job in jobs.seen:  # each worker tried, on its node, and gave up
        log = (tmp_path / f"slurm-{job}.out").read_text()
        assert "Timed out starting worker" in log, log[-2000:]
        assert "Registered to" not in log
    wait_no_jobs()
