"""End-to-end simulation throughput into Zarr, 1 vs 2 workers, against the in-memory kernels.

    python benchmarks/bench_simulate.py [--n 20000] [--chunk-size 1000] [--rounds 3]

Measures, in one run on this machine:

* kernel: ``simulate_chunk`` (draw parameters, interpolate, observe, noise) in this process,
  single-threaded, no I/O, 3 chunks -- spectra per second;
* end to end: ``specdenoise simulate`` on warm local clusters of 1 and of 2 worker processes,
  started the way ``specdenoise simulate --cluster local --workers N`` starts them, from
  submitting the chunks to the finished, consolidated store -- spectra per second. Cluster
  start-up and a warm-up of two chunks per worker (each worker reads the grid and loads
  the compiled kernels) are timed separately, not counted;
* bytes per spectrum on disk at the defaults (zstd + bit rounding) and lossless (zstd).

Shared machines are noisy, and a slow minute would otherwise land on one of the two runs
only: both clusters stay up, and each round runs the kernel, then 1 worker and 2 workers back
to back (in alternating order, each after ``sync``). Each ratio is the median over rounds of
the ratio within a round; every round is printed.
The last line is one JSON object with the figures and the ratios end-to-end / kernel and
2 workers / 1 worker (targets: >= 0.5 and >= 1.7).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numba

from specdenoise.cluster import connect
from specdenoise.config import load_config
from specdenoise.stage_grid import resolve_grid
from specdenoise.stage_simulate import simulate, simulate_chunk


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def start(stack: contextlib.ExitStack, cfg, workers: int, tmp: Path):
    """A warm local cluster: (client, start-up s, warm-up s)."""
    t0 = time.perf_counter()
    client = stack.enter_context(connect("local", workers=workers, threads_per_worker=1))
    startup = time.perf_counter() - t0
    # two chunks per worker: builds its interpolator/observer, reads the grid, loads kernels
    t1 = time.perf_counter()
    warm = dict(cfg, n=cfg["chunk_size"] * workers * 2, out=str(tmp / f"warm{workers}.zarr"))
    simulate(warm, client=client, progress=False, overwrite=True)
    return client, startup, time.perf_counter() - t1


def timed_run(client, cfg, out: Path) -> float:
    # removing the last round's store, and writing back what earlier runs left in the page
    # cache, are not timed (else a run pays for the run before it)
    shutil.rmtree(out, ignore_errors=True)
    os.sync()
    t0 = time.perf_counter()
    simulate(dict(cfg, out=str(out)), client=client, progress=False, overwrite=True)
    return cfg["n"] / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--chunk-size", type=int, default=1000)
    ap.add_argument("--grid", default="builtin")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    numba.set_num_threads(1)
    grid = str(resolve_grid(args.grid))
    cfg = load_config(n=args.n, chunk_size=args.chunk_size, seed=11, grid=grid)
    tmp = Path(tempfile.mkdtemp(prefix="bench_simulate_"))
    try:
        simulate_chunk(cfg, grid, "", 0, 200)  # builds this process's engine, loads kernels

        def kernel(first: int) -> float:
            """In-memory kernel throughput here: 3 chunks, spectra per second."""
            t0 = time.perf_counter()
            for c in range(first, first + 3):
                simulate_chunk(cfg, grid, "", c, args.chunk_size)
            return 3 * args.chunk_size / (time.perf_counter() - t0)

        with contextlib.ExitStack() as stack:
            c1, s1, f1 = start(stack, cfg, 1, tmp)
            c2, s2, f2 = start(stack, cfg, 2, tmp)
            print(f"cluster start-up {s1:.1f} s (1 worker), {s2:.1f} s (2 workers); warm-up "
                  f"(2 chunks per worker: grid read, kernel load) {f1:.1f} s, {f2:.1f} s")
            rounds = []
            for k in range(args.rounds):
                rk = kernel(1 + 3 * k)
                if k % 2 == 0:  # alternate which goes first, against drifts within a round
                    r1 = timed_run(c1, cfg, tmp / "w1.zarr")
                    r2 = timed_run(c2, cfg, tmp / "w2.zarr")
                else:
                    r2 = timed_run(c2, cfg, tmp / "w2.zarr")
                    r1 = timed_run(c1, cfg, tmp / "w1.zarr")
                rounds.append((rk, r1, r2))
                print(f"round {k + 1}: kernel {rk:6.0f}, 1 worker {r1:6.0f}, 2 workers "
                      f"{r2:6.0f} spectra/s; 1 worker / kernel {r1 / rk:.2f}, 2 / 1 workers "
                      f"{r2 / r1:.2f}", flush=True)
            b1, b2 = du(tmp / "w1.zarr"), du(tmp / "w2.zarr")
            assert b1 == b2
            lossless = dict(cfg, n=2000, compressor="zstd", out=str(tmp / "ll.zarr"))
            simulate(lossless, client=c2, progress=False)
        b_ll = du(tmp / "ll.zarr") / 2000
        rk, r1, r2 = (statistics.median(r[i] for r in rounds) for i in range(3))
        e2e = statistics.median(a / k for k, a, _ in rounds)
        ratio = statistics.median(b / a for _, a, b in rounds)
        print(f"on disk: {b1 / args.n / 1024:.1f} KiB per spectrum at the defaults "
              f"({cfg['compressor']}, keepbits {cfg['keepbits']}); {b_ll / 1024:.1f} KiB "
              "lossless (zstd)")
        print(f"median of {args.rounds} rounds: kernel {rk:.0f}, 1 worker {r1:.0f}, 2 workers "
              f"{r2:.0f} spectra/s")
        print(f"end-to-end / kernel: {e2e:.2f} (1 worker); "
              f"2 workers / 1 worker: {ratio:.2f}; machine: {os.cpu_count()} CPUs")
        print(json.dumps({
            "n_spectra": args.n,
            "chunk_size": args.chunk_size,
            "kernel_spectra_per_s": round(rk, 1),
            "end_to_end_1_worker_spectra_per_s": round(r1, 1),
            "end_to_end_2_workers_spectra_per_s": round(r2, 1),
            "end_to_end_over_kernel": round(e2e, 3),
            "two_over_one_worker": round(ratio, 3),
            "rounds_kernel_1_2_spectra_per_s": [[round(x, 1) for x in r] for r in rounds],
            "bytes_per_spectrum": round(b1 / args.n, 1),
            "bytes_per_spectrum_lossless": round(b_ll, 1),
            "cluster_startup_s": [round(s1, 2), round(s2, 2)],
            "warm_up_s": [round(f1, 2), round(f2, 2)],
        }))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
