"""End-to-end simulation throughput into Zarr, 1 vs 2 workers, against the in-memory kernels.

    python benchmarks/bench_simulate.py [--n 20000] [--chunk-size 1000] [--grid builtin]

Measures, in one run on this machine:

* kernel: ``simulate_chunk`` (draw parameters, interpolate, observe, noise) in this process,
  single-threaded, no I/O -- spectra per second;
* end to end: ``specdenoise simulate`` on a warm LocalCluster with 1 and with 2 worker
  processes, from submitting the chunks to the finished, consolidated store -- spectra per
  second (cluster start-up excluded, and reported separately);
* bytes per spectrum on disk at the defaults (zstd + bit rounding) and lossless (zstd).

The last line is one JSON object with the figures and the ratios end-to-end / kernel and
2 workers / 1 worker (targets: >= 0.5 and >= 1.7).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numba
from distributed import Client, LocalCluster

from specdenoise.config import load_config
from specdenoise.stage_simulate import resolve_grid, simulate, simulate_chunk


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def end_to_end(cfg, workers: int, tmp: Path) -> tuple[float, float, int]:
    """(spectra/s, cluster start-up s, bytes on disk) for one run on a fresh warm cluster."""
    t0 = time.perf_counter()
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as lc, Client(lc) as client:
        startup = time.perf_counter() - t0
        # warm every worker: builds its interpolator/observer and loads the Numba caches
        warm = dict(cfg, n=cfg["chunk_size"] * workers * 2, out=str(tmp / f"warm{workers}.zarr"))
        simulate(warm, client=client, progress=False, overwrite=True)
        out = tmp / f"w{workers}.zarr"
        t1 = time.perf_counter()
        simulate(dict(cfg, out=str(out)), client=client, progress=False, overwrite=True)
        rate = cfg["n"] / (time.perf_counter() - t1)
    return rate, startup, du(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--chunk-size", type=int, default=1000)
    ap.add_argument("--grid", default="builtin")
    args = ap.parse_args()

    numba.set_num_threads(1)
    grid = str(resolve_grid(args.grid))
    cfg = load_config(n=args.n, chunk_size=args.chunk_size, seed=11, grid=grid)
    tmp = Path(tempfile.mkdtemp(prefix="bench_simulate_"))
    try:
        # kernel throughput in this process (first call builds the engine and compiles)
        simulate_chunk(cfg, grid, "", 0, 200)
        t0, cpu0 = time.perf_counter(), time.process_time()
        n_kernel = 0
        for c in range(1, 6):
            n_kernel += simulate_chunk(cfg, grid, "", c, args.chunk_size)["flux"].shape[0]
        kernel_wall = n_kernel / (time.perf_counter() - t0)
        kernel_cpu = n_kernel / (time.process_time() - cpu0)
        print(f"kernel (in memory, 1 thread): {kernel_wall:8.0f} spectra/s wall, "
              f"{kernel_cpu:8.0f} per CPU-second")

        r1, s1, b1 = end_to_end(cfg, 1, tmp)
        print(f"end to end, 1 worker:        {r1:8.0f} spectra/s (cluster start {s1:.1f} s)")
        r2, s2, b2 = end_to_end(cfg, 2, tmp)
        print(f"end to end, 2 workers:       {r2:8.0f} spectra/s (cluster start {s2:.1f} s)")
        assert b1 == b2
        lossless = dict(cfg, n=2000, compressor="zstd")
        with LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as lc, \
                Client(lc) as client:
            simulate(dict(lossless, out=str(tmp / "ll.zarr")), client=client, progress=False)
        b_ll = du(tmp / "ll.zarr") / 2000
        print(f"on disk: {b1 / args.n / 1024:.1f} KiB per spectrum at the defaults "
              f"({cfg['compressor']}, keepbits {cfg['keepbits']}); {b_ll / 1024:.1f} KiB "
              "lossless (zstd)")
        print(f"end-to-end / kernel: {r1 / kernel_wall:.2f} (1 worker); "
              f"2 workers / 1 worker: {r2 / r1:.2f}; machine: {os.cpu_count()} CPUs")
        print(json.dumps({
            "n_spectra": args.n,
            "chunk_size": args.chunk_size,
            "kernel_spectra_per_s": round(kernel_wall, 1),
            "kernel_spectra_per_cpu_s": round(kernel_cpu, 1),
            "end_to_end_1_worker_spectra_per_s": round(r1, 1),
            "end_to_end_2_workers_spectra_per_s": round(r2, 1),
            "end_to_end_over_kernel": round(r1 / kernel_wall, 3),
            "two_over_one_worker": round(r2 / r1, 3),
            "bytes_per_spectrum": round(b1 / args.n, 1),
            "bytes_per_spectrum_lossless": round(b_ll, 1),
            "cluster_startup_s": [round(s1, 2), round(s2, 2)],
        }))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
