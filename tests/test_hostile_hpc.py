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

from specdenoise import SpecdenoiseError, stores

pytestmark = pytest.mark.filterwarnings("ignore:Object at .done is not recognized")

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
