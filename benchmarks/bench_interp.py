"""Throughput of grid interpolation: Numba kernel vs the NumPy reference, one core each.

A random in-memory grid with the shape of the built-in grid (Teff 3500-7500/250, log g 0-5/0.5,
[M/H] -2.5..0.75/0.25, [alpha/M] -0.25..0.5/0.25: 17 x 11 x 14 x 4 nodes, 5030 wavelengths,
float32, about 210 MB) is interpolated at uniformly random parameters (so nearly every spectrum
needs all 16 cell corners), in batches. Numba and NumPy batches alternate so both see the same
machine load. Everything runs in one thread; throughput is spectra per CPU-second of this process,
i.e. per core, and wall-clock figures are printed alongside.

"end to end" is ``interpolate_numba`` / ``interpolate_numpy`` (locate + corner weights + kernel);
"kernel" times ``interp_nodes_*`` alone on precomputed corner tables.

    python benchmarks/bench_interp.py [--seconds 20] [--batch 1000] [--n-wave 5030]

The last line printed is one JSON object.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"  # per-core figures: no library may start a thread pool

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from specdenoise.simulate.interp import (  # noqa: E402
    corner_weights,
    interp_nodes_numba,
    interp_nodes_numpy,
    interpolate_numba,
    interpolate_numpy,
)

AXES = (
    np.arange(3500.0, 7500.0 + 1, 250.0),  # teff, 17 nodes
    np.arange(0.0, 5.0 + 0.01, 0.5),  # logg, 11
    np.arange(-2.5, 0.75 + 0.01, 0.25),  # m_h, 14
    np.arange(-0.25, 0.5 + 0.01, 0.25),  # a_m, 4
)


def _clock():
    return time.process_time(), time.perf_counter()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="CPU seconds in all (approx.)")
    ap.add_argument("--batch", type=int, default=1000, help="spectra per call")
    ap.add_argument("--n-wave", type=int, default=5030, help="wavelengths per spectrum")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    shape = tuple(a.size for a in AXES)
    t0 = time.perf_counter()
    flux = rng.random((*shape, args.n_wave), dtype=np.float32)
    print(
        f"grid {'x'.join(map(str, shape))} nodes x {args.n_wave} wavelengths float32 "
        f"({flux.nbytes / 1e6:.0f} MB), made in {time.perf_counter() - t0:.1f} s"
    )

    def params():
        return np.stack([rng.uniform(a[0], a[-1], args.batch) for a in AXES], axis=1)

    t0 = time.perf_counter()
    interpolate_numba(flux, AXES, params()[:2])  # JIT or load from the on-disk cache
    print(f"numba first call (compile or cache load): {time.perf_counter() - t0:.2f} s")

    methods = {
        "numba": lambda p: interpolate_numba(flux, AXES, p),
        "numpy": lambda p: interpolate_numpy(flux, AXES, p),
    }
    nodes = flux.reshape(-1, args.n_wave)
    out = np.empty((args.batch, args.n_wave), np.float32)
    kernels = {
        "numba kernel": lambda t: interp_nodes_numba(nodes, *t, out),
        "numpy kernel": lambda t: interp_nodes_numpy(nodes, *t, out),
    }
    cpu = dict.fromkeys([*methods, *kernels], 0.0)
    wall = dict.fromkeys(cpu, 0.0)
    count = dict.fromkeys(cpu, 0)
    for name in methods:  # untimed warm-up of every path
        methods[name](params())
    # alternate the methods batch by batch so they share the machine's conditions
    while sum(cpu.values()) < args.seconds or min(count.values()) < 3 * args.batch:
        p = params()
        table = corner_weights(AXES, p)
        for name, fn in methods.items():
            c0, w0 = _clock()
            res = fn(p)
            c1, w1 = _clock()
            cpu[name] += c1 - c0
            wall[name] += w1 - w0
            count[name] += len(res)
        for name, fn in kernels.items():
            c0, w0 = _clock()
            fn(table)
            c1, w1 = _clock()
            cpu[name] += c1 - c0
            wall[name] += w1 - w0
            count[name] += args.batch

    rate = {k: count[k] / cpu[k] for k in cpu}
    for k in cpu:
        mbps = rate[k] * 16 * args.n_wave * 4 / 1e6
        print(
            f"{k + ' (end to end)' if k in methods else k:>22}: {rate[k]:9.0f} spectra/s per core "
            f"(CPU), {count[k] / wall[k]:9.0f} wall; {count[k]} spectra; "
            f"corner reads {mbps:6.0f} MB/s"
        )
    ratio = rate["numba"] / rate["numpy"]
    print(
        f"numba / numpy: {ratio:.2f}x end to end, "
        f"{rate['numba kernel'] / rate['numpy kernel']:.2f}x kernel only"
    )
    result = {
        "numba_spectra_per_s_per_core": round(rate["numba"], 1),
        "numpy_spectra_per_s_per_core": round(rate["numpy"], 1),
        "ratio": round(ratio, 3),
        "numba_kernel_spectra_per_s_per_core": round(rate["numba kernel"], 1),
        "numpy_kernel_spectra_per_s_per_core": round(rate["numpy kernel"], 1),
        "grid_shape": [*shape, args.n_wave],
        "batch": args.batch,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
