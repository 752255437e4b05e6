"""DDP on CPU: two gloo processes under torchrun share the data without duplicates or gaps."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
from conftest import make_dataset

from specdenoise.train.checkpoint import read_checkpoint

pytestmark = pytest.mark.slow


def test_torchrun_two_cpu_processes(tmp_path):
    # 41 spectra over 2 ranks with 4 per rank and step: 20 and 21 spectra, 5 and 6 steps,
    # so the uneven last step has to go through DDP's Join
    train = make_dataset(tmp_path / "train.zarr", n=41, chunk=16)
    val = make_dataset(tmp_path / "val.zarr", n=9, chunk=4, seed=1)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "specdenoise.cli", "train", "--data", str(train), "--val", str(val),
           "--out", str(out), "--arch", "unet", "--model-cfg", '{"depth": 2, "filters": 4}',
           "--preset", "tiny", "--epochs", "2",
           "--batch-size", "8", "--loader-workers", "0", "--device", "cpu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["n_train"]) for r in rows] == [41, 41]
    assert [int(r["n_val"]) for r in rows] == [9, 9]
    assert read_checkpoint(out)["epoch"] == 2
