"""The HPC path for real: a one-node SLURM cluster, simulate and train through it.

The module fixture ``slurm`` uses a running SLURM when ``sinfo`` answers; otherwise, as root with
Debian's slurm-wlm and munge installed (``.ci/run`` installs them), it starts one with
``slurm_one_machine.sh`` (beside this file) and stops exactly what it started afterwards.
Elsewhere the tests marked ``slurm`` skip and say why; the tests of the job script itself run
everywhere.

What is proven on the real cluster:

- ``specdenoise simulate --cluster cluster/slurm.yaml`` gets its workers from ``sbatch`` jobs and
  writes a store bitwise identical to the in-process reference;
- ``scancel`` of one worker job mid-run changes nothing in the store, and neither does
  ``scancel`` of every worker job: replacement jobs are submitted and finish the run;
- ``specdenoise train --submit cluster/slurm.yaml`` runs as a batch job; after ``scancel`` and
  a second ``sbatch RUN_DIR/train.sbatch`` the weights equal an uninterrupted run's, bit for bit;
- ``specdenoise cluster show`` prints the script the worker jobs ran.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import assert_identical, sigint_default
from slurm_support import (
    CHUNK,
    PROFILE,
    JobWatcher,
    N,
    _profile,
    _simulate_and_scancel,
    _simulate_cmd,
    squeue_jobs,
    wait_for,
    wait_no_jobs,
)

from specdenoise import cli, schema

TINY_UNET = '{"depth": 2, "filters": 4}'
EPOCHS = 12



# --------------------------------------------------------------------------- the cluster


# --------------------------------------------------------------------------- simulate


@pytest.fixture(scope="module")
def slurm_simulate_run(slurm, small_grid, tmp_path_factory):
    """One uninterrupted ``simulate --cluster cluster/slurm.yaml``, with the jobs it ran."""
    wait_no_jobs()
    cwd = tmp_path_factory.mktemp("slurm-sim")  # sbatch's slurm-%j.out files land here
    out = cwd / "slurm.zarr"
    with JobWatcher("dask-worker") as jobs:
        r = subprocess.run(_simulate_cmd(small_grid, out, str(PROFILE)), cwd=cwd,
                           capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    wait_no_jobs()
    return {"out": out, "cwd": cwd, "jobs": jobs, "stderr": r.stderr, "out_text": r.stdout}


@pytest.mark.slurm
def test_simulate_on_slurm_identical(slurm_simulate_run, reference):
    run = slurm_simulate_run
    ids = sorted(run["jobs"].seen, key=int)
    assert len(ids) >= 2, f"expected the profile's 2 worker jobs in squeue, saw {ids}"
    # a job still pending when the work ran out is cancelled before it starts (no log);
    # every job that did start ran a worker that reached the scheduler on the address the
    # profile names (this machine's address on its default route, not loopback)
    from specdenoise.cluster.profiles import load_profile, scheduler_host

    host = scheduler_host(load_profile(PROFILE))[0]
    logs = [run["cwd"] / f"slurm-{job}.out" for job in ids]
    started = [p for p in logs if p.exists()]
    assert started, f"none of the jobs {ids} started"
    registered = 0
    for log in started:
        text = log.read_text()
        if "Registered to" not in text:  # started as the work ran out: cancelled at once
            assert "CANCELLED" in text, text[-2000:]
            continue
        registered += 1
        assert re.search(rf"Registered to:\s+tcp://{re.escape(host)}:\d+", text), text[-2000:]
    assert registered, f"no worker of the jobs {ids} registered with the scheduler"
    assert re.search(r"submitted 2 batch jobs \(\d+, \d+\); waiting for workers", run["out_text"])
    assert re.search(r"\d of 2 workers connected", run["out_text"])
    assert_identical(reference, run["out"])


@pytest.mark.slurm
def test_cluster_show_prints_the_job_script(slurm_simulate_run):
    r = subprocess.run([sys.executable, "-m", "specdenoise.cli", "cluster", "show",
                        str(PROFILE)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    scripts = slurm_simulate_run["jobs"].scripts
    assert scripts, "no batch script could be read back with scontrol"

    # Two words differ by design: the scheduler's port (each run starts its own scheduler on
    # a free port) and the worker name (SLURMCluster-0, -1, ... in the jobs).
    def per_run(text: str) -> str:
        text = re.sub(r"(tcp://[^\s:]+):(\d+|PORT)\b", r"\1:PORT", text)
        return re.sub(r"--name \S+", "--name NAME", text)

    shown = r.stdout.removesuffix("\n")
    assert shown.startswith("#!/usr/bin/env bash\n") and "#SBATCH --cpus-per-task=1" in shown
    assert f"{sys.executable} -m distributed.cli.dask_worker" in shown
    for job, script in scripts.items():
        assert per_run(script) == per_run(shown), f"job {job} ran another script:\n{script}"


@pytest.mark.slurm
def test_scancel_one_worker_job_mid_run_identical(slurm, small_grid, reference, tmp_path):
    wait_no_jobs()
    out = tmp_path / "cancel.zarr"
    _, (victim,), _ = _simulate_and_scancel(
        small_grid, out, tmp_path, lambda jobs: sorted(jobs.running(), key=int)[:1])
    log = (tmp_path / f"slurm-{victim}.out").read_text()
    assert "CANCELLED" in log, log[-2000:]
    assert_identical(reference, out)
    wait_no_jobs()


# --------------------------------------------------------------------------- waiting, refusals,
# interrupts (issue 23 points 2-3, hostile case 11)


@pytest.mark.slurm
def test_a_job_sbatch_refuses_is_one_line_not_a_wait(slurm, small_grid, tmp_path):
    wait_no_jobs()
    out = tmp_path / "s.zarr"
    t0 = time.time()
    r = subprocess.run(_simulate_cmd(small_grid, out, str(_profile(tmp_path,
                                                                   queue="nosuchpartition"))),
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "sbatch refused the worker job" in err[-1], r.stderr
    assert "nosuchpartition" in err[-1] or "partition" in err[-1].lower()
    assert time.time() - t0 < 200 and not out.exists()
    wait_no_jobs()


@pytest.fixture
def blocker(slurm):
    """A job holding every CPU of the node: worker jobs stay pending while it lives."""
    wait_no_jobs()
    cpus = os.cpu_count() or 2
    r = subprocess.run(["sbatch", "--parsable", "-J", "blocker", "-c", str(cpus), "-o",
                        "/dev/null", "--wrap", "sleep 600"], capture_output=True, text=True,
                       timeout=30, check=True)
    job = r.stdout.strip().split(";")[0]
    wait_for(lambda: any(j == job and st == "RUNNING" for j, _, st in squeue_jobs()), 60,
             "the blocker job to run")
    yield job
    subprocess.run(["scancel", job], timeout=30)


@pytest.mark.slurm
@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_waiting_is_shown_and_an_interrupt_while_pending_cancels_the_jobs(
        blocker, small_grid, tmp_path, sig, status):
    out = tmp_path / "s.zarr"
    cmd = _simulate_cmd(small_grid, out, str(_profile(tmp_path, wait_hint_after=3)))
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=sigint_default)
    lines = []
    try:
        for line in proc.stdout:  # the waiting lines, as they come
            lines.append(line)
            if "no worker has connected after" in line:
                break
        else:
            raise AssertionError(f"no waiting hint; got {lines}, {proc.stderr.read()}")
        ids = re.search(r"submitted 2 batch jobs \((\d+), (\d+)\)", "".join(lines)).groups()
        assert any("0 of 2 workers connected" in ln for ln in lines)
        assert "squeue -j" in lines[-1] and str(tmp_path) in lines[-1]
        assert {j for j, _, st in squeue_jobs() if st == "PENDING"} >= set(ids)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # the hint fits what is on disk: --resume for a begun store, else the same command again
    hint = "--resume" if out.exists() else "re-run the same command"
    assert proc.returncode == status and hint in err and "Traceback" not in err, err
    wait_for(lambda: not set(ids) & {j for j, _, _ in squeue_jobs()}, 60,
             "the pending worker jobs to be cancelled")
    assert not out.exists()  # nothing was begun


@pytest.mark.slurm
def test_sigterm_mid_run_cancels_jobs_keeps_chunks_and_resumes_identical(
        slurm, small_grid, reference, tmp_path):
    wait_no_jobs()
    out = tmp_path / "s.zarr"
    with JobWatcher("dask-worker") as jobs:
        proc = subprocess.Popen(_simulate_cmd(small_grid, out, str(PROFILE)), cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: out.exists() and len(schema.done_chunks(out)) >= 2, 240,
                     "two written chunks")
            proc.send_signal(signal.SIGTERM)  # what SLURM sends the job before a walltime kill
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 143 and "--resume" in err and "Traceback" not in err, err
    kept = schema.done_chunks(out)
    assert 2 <= len(kept) < -(-N // CHUNK)
    wait_for(lambda: not set(jobs.seen) & {j for j, _, _ in squeue_jobs()}, 60,
             "the worker jobs to be cancelled")
    r = subprocess.run([*_simulate_cmd(small_grid, out, str(PROFILE)), "--resume"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert_identical(reference, out)
    wait_no_jobs()


# --------------------------------------------------------------------------- train


@pytest.fixture(scope="module")
def train_data(tmp_path_factory):
    from conftest import make_dataset

    d = tmp_path_factory.mktemp("slurm-train")
    return (make_dataset(d / "train.zarr", n=40, chunk=16, seed=0),
            make_dataset(d / "val.zarr", n=16, chunk=8, seed=1))


def _train_args(train_data, out: Path) -> list[str]:
    return ["train", "--data", str(train_data[0]), "--val", str(train_data[1]), "--arch",
            "unet", "--model-cfg", TINY_UNET, "--preset", "tiny", "--out", str(out),
            "--epochs", str(EPOCHS), "--batch-size", "8", "--loader-workers", "0",
            "--device", "cpu",
            "--seed", "3"]


def _epoch(run_dir: Path) -> int:
    from specdenoise.train.checkpoint import read_checkpoint

    if not (run_dir / "checkpoint.pt").exists():
        return 0
    return int(read_checkpoint(run_dir)["epoch"])


def _submit(args: list[str], capsys) -> str:
    assert cli.main([*args, "--submit", str(PROFILE)]) == 0
    printed = capsys.readouterr().out
    m = re.search(r"submitted batch job (\d+)", printed)
    assert m, printed
    return m.group(1)


def _job_gone(job: str) -> bool:
    return job not in {j for j, _, _ in squeue_jobs()}


@pytest.mark.slurm
def test_train_submit_scancel_resubmit_bitwise(slurm, train_data, tmp_path, capsys):
    from specdenoise.train.checkpoint import read_checkpoint

    wait_no_jobs()
    run_dir = tmp_path / "run"
    job = _submit(_train_args(train_data, run_dir), capsys)
    script = run_dir / "train.sbatch"
    assert script.exists()
    wait_for(lambda: _epoch(run_dir) >= 1, 180, "the job's first checkpoint", poll=0.02)
    subprocess.run(["scancel", job], check=True, timeout=30)
    wait_for(lambda: _job_gone(job), 60, f"job {job} to leave the queue")
    first = _epoch(run_dir)
    assert 1 <= first < EPOCHS, f"the job got to epoch {first} before the cancel"
    assert "CANCELLED" in (run_dir / f"slurm-{job}.out").read_text()

    # resubmit the same script: it resumes from the checkpoint
    r = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True,
                       timeout=30, check=True)
    job2 = r.stdout.strip().split(";")[0]
    wait_for(lambda: _job_gone(job2), 180, f"job {job2} to finish", poll=0.3)
    log2 = (run_dir / f"slurm-{job2}.out").read_text()
    assert f"epoch {EPOCHS}/{EPOCHS}" in log2 and "Traceback" not in log2, log2[-3000:]
    assert f"epoch {first}/{EPOCHS} " not in log2, "the resubmitted job started over"

    # the same configuration, uninterrupted, in this process (one thread, as in the job)
    ref_dir = tmp_path / "straight"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli.main(_train_args(train_data, ref_dir)) == 0
    finally:
        torch.set_num_threads(threads)
    a, b = read_checkpoint(ref_dir), read_checkpoint(run_dir)
    assert a["epoch"] == b["epoch"] == EPOCHS
    assert a["model"]["state"].keys() == b["model"]["state"].keys()
    for k, v in a["model"]["state"].items():
        assert torch.equal(v, b["model"]["state"][k]), k
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]


# --------------------------------------------------------------------------- the job script
# (no SLURM needed)


def test_submit_script_maps_the_profile(tmp_path):
    from specdenoise.submit import job_script

    profile = {"kind": "slurm", "cores": 4, "memory": "16GB", "walltime": "02:00:00",
               "queue": "gpu", "account": "pfs", "job_extra_directives": ["--gres=gpu:1"],
               "job_script_prologue": ["module load cuda"]}
    text = job_script(profile, ["python", "-m", "specdenoise.cli", "train", "--model-cfg",
                                '{"depth": 2}'], tmp_path / "run", cwd=tmp_path)
    run = (tmp_path / "run").resolve()
    for line in ("#SBATCH --cpus-per-task=4", "#SBATCH --mem=15G", "#SBATCH -t 02:00:00",
                 "#SBATCH -p gpu", "#SBATCH -A pfs", "#SBATCH --gres=gpu:1",
                 f"#SBATCH -o {run}/slurm-%j.out", "module load cuda",
                 f"if [ -f {run}/checkpoint.pt ]; then RESUME=--resume; fi"):
        assert line in text.splitlines(), line
    assert text.splitlines()[-1].endswith("""--model-cfg '{"depth": 2}' $RESUME""")
    pbs = job_script({**profile, "kind": "pbs"}, ["python"], tmp_path / "run", cwd=tmp_path)
    assert "#PBS -l select=1:ncpus=4:mem=15GB" in pbs and "#PBS -q gpu" in pbs


def test_submit_without_sbatch_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    out = tmp_path / "run"
    status = cli.main(["train", "--data", "d.zarr", "--out", str(out), "--epochs", "3",
                       "--precision", "fp32", "--submit", str(PROFILE)])
    err = capsys.readouterr().err.strip()
    assert status == 2 and "sbatch not found" in err and "\n" not in err
    words = (out / "train.sbatch").read_text().splitlines()[-1].split()
    assert words[:5] == ["exec", sys.executable, "-m", "specdenoise.cli", "train"]
    assert words[5:] == ["--data", "d.zarr", "--out", str(out), "--epochs", "3", "--precision",
                         "fp32",
                         "$RESUME"]


def test_profile_without_its_submit_command_is_one_line(small_grid, tmp_path, monkeypatch,
                                                       capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    status = cli.main(["simulate", "--n", "4", "--chunk-size", "2", "--grid", str(small_grid),
                       "--out", str(tmp_path / "s.zarr"), "--cluster", str(PROFILE),
                       "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and "'sbatch', which is not on PATH" in err and "\n" not in err
