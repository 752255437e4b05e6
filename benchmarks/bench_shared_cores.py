"""Training rate on CPU cores shared with one busy process: OpenMP wait policies, thread governor.

Times the best preset's U-Net training step (forward, relative-error loss, backward, AdamW;
bf16 autocast where the CPU has fast bf16, as ``train`` does) for ``--seconds`` in each
condition, each in a fresh Python process (libgomp reads ``OMP_WAIT_POLICY`` when it loads),
all in one run so that the ratios share the machine's state:

- OpenMP wait policy: libgomp's default (spin, then sleep), ``PASSIVE`` (what ``specdenoise``
  sets unless the user set one), ``ACTIVE``; and an adaptive thread governor
  (``thread_governor.ThreadGovernor`` beside this script; measured, not used by ``train``);
  a fixed thread count (``one``); and ``auto``, what ``train --threads auto`` (the default)
  does: one thread per usable core less the cores found busy when it starts;
- the machine idle, and beside one busy process (a pure-Python loop; ``--nice`` sets its
  niceness).

It prints each rate over the idle rate of libgomp's default, the numbers the project's target
is stated in: beside one busy process >= 0.5, and no loss when idle. "Idle" means nothing but
this script: run it on a machine with nothing else running. The last line is one JSON object.

    python benchmarks/bench_shared_cores.py [--seconds 40 --batch 32 --nice 0]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time

import torch
from thread_governor import ThreadGovernor, usable_cores

from specdenoise.train.distributed import choose_threads, cpu_has_fast_bf16
from specdenoise.train.nets import build_model
from specdenoise.train.nets.base import model_input
from specdenoise.train.presets import PRESETS

BUSY = "while True:\n    pass\n"


def run_steps(seconds: float, batch: int, governed: bool, bf16: bool,
              threads: int | str | None = None) -> dict:
    """Train the best U-Net on a fixed synthetic batch for ``seconds``; spectra/s overall.
    ``threads``: torch's thread count (None: one per usable core; "auto": what ``train
    --threads auto``, the default, picks when it starts)."""
    torch.set_num_threads(usable_cores())
    if threads == "auto":
        threads = choose_threads(None, torch.device("cpu"))[0]
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = PRESETS["best"]["model_cfg"]["unet"]
    model = build_model("unet", **cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.rand(batch, 4096) * 0.2 + 0.4
    y = x.clone()
    inp = model_input(model, x, x * 0.05)
    cast = (torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext())
    gov = ThreadGovernor() if governed else None

    def step():
        with cast:
            pred = model(inp)
        loss = ((pred.float() - y).abs() / y).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # warm-up (oneDNN primitive creation)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        n += batch
        if gov is not None:
            gov.step(batch)
    rate = n / (time.perf_counter() - t0)
    out = {"spectra_per_s": rate}
    out["threads"] = torch.get_num_threads() if gov is None else None
    if gov is not None:
        out["windows"] = [(t, round(r, 1)) for t, r in gov.history]
        out["final_threads"] = gov.threads
        gov.restore()
    return out


@contextlib.contextmanager
def busy_neighbour(nice: int):
    proc = subprocess.Popen([sys.executable, "-c", BUSY],
                            preexec_fn=(lambda: os.nice(nice)) if nice else None)
    try:
        time.sleep(0.5)
        yield proc
    finally:
        proc.kill()
        proc.wait()


VARIANTS = {  # name: (OMP_WAIT_POLICY or None for libgomp's default, governed, threads)
    "default": (None, False, None), "passive": ("PASSIVE", False, None),
    "active": ("ACTIVE", False, None), "governor": ("PASSIVE", True, None),
    "one": ("PASSIVE", False, 1),  # one thread: what the freed core alone can give
    "auto": ("PASSIVE", False, "auto"),  # train's default: threads chosen by the load at start
}


def child(variant: str, seconds: float, batch: int, bf16: bool) -> dict:
    """One condition in a fresh interpreter, with the variant's wait policy in its env."""
    policy, governed, threads = VARIANTS[variant]
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    code = ("import json; from bench_shared_cores import run_steps; "
            f"print(json.dumps(run_steps({seconds!r}, {batch!r}, {governed!r}, {bf16!r}, "
            f"{threads!r})))")
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, text=True,
                         capture_output=True, cwd=os.path.dirname(os.path.abspath(__file__)))
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60.0, help="timed seconds per condition")
    p.add_argument("--batch", type=int, default=PRESETS["best"]["batch_size"],
                   help="spectra per step (default: the best preset's batch)")
    p.add_argument("--nice", type=int, default=0, help="niceness of the busy process")
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    p.add_argument("--variants", default="passive,auto",
                   help=f"comma-separated, the first is the reference; of {', '.join(VARIANTS)}")
    a = p.parse_args(argv)
    bf16 = cpu_has_fast_bf16() and not a.fp32
    print(f"usable cores {usable_cores()}, torch {torch.__version__}, "
          f"{'bf16 autocast' if bf16 else 'float32'}, batch {a.batch}, "
          f"{a.seconds:.0f} s per condition", file=sys.stderr)
    p_variants = a.variants.split(",")
    res = {}
    for busy in (False, True):
        for v in p_variants:
            name = f"{'busy' if busy else 'idle'}_{v}"
            with busy_neighbour(a.nice) if busy else contextlib.nullcontext():
                res[name] = child(v, a.seconds, a.batch, bf16)
            extra = (f"  threads at the end {res[name]['final_threads']}"
                     if "final_threads" in res[name]
                     else f"  threads {res[name]['threads']}")
            print(f"{name:16s} {res[name]['spectra_per_s']:8.1f} spectra/s{extra}",
                  file=sys.stderr)
    base = res[f"idle_{p_variants[0]}"]["spectra_per_s"]
    ratios = {f"{k}_over_idle_{p_variants[0]}": v["spectra_per_s"] / base
              for k, v in res.items()}
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}", file=sys.stderr)
    print(json.dumps({"usable_cores": usable_cores(), "batch": a.batch, "bf16": bf16,
                      "nice": a.nice, "seconds": a.seconds,
                      **{k: round(v["spectra_per_s"], 2) for k, v in res.items()},
                      **{k: round(v, 3) for k, v in ratios.items()},
                      "governor_windows": {k: v.get("windows") for k, v in res.items()
                                           if "windows" in v}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
