"""Throughput of the whole per-spectrum chain: Numba kernels vs the NumPy references, one core.

One spectrum = draw its parameters, interpolate the model from an in-memory grid, then
:meth:`~specdenoise.simulate.observe.Observer.observe`: Doppler, extinction, magnitude, LSF +
pixels, the built-in ETC noise model, calibration distortion, Gaussian noise, normalisation, S/N.
The grid is the built-in grid when it has been built in the cache (``specdenoise grid build``),
otherwise a random grid of the same shape (17 x 11 x 14 x 4 nodes x 5028 wavelengths, float32;
the chain's cost does not depend on the flux values).  Parameters are drawn as the simulate stage
does and interpolated in grid-node order, as it does.

Numba and NumPy batches alternate so both see the same machine load; everything runs in one
thread and throughput is spectra per CPU-second of this process (per core); wall-clock figures are
printed alongside.  The NumPy path runs the NumPy references of interpolation, of the noise model
and of the observe kernels.

    python benchmarks/bench_observe.py [--seconds 30] [--batch 1000] [--numpy-batch 100]

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

from specdenoise.simulate.builtin_grid import builtin_axes, builtin_wave  # noqa: E402
from specdenoise.simulate.interp import interpolate_numba, interpolate_numpy  # noqa: E402
from specdenoise.simulate.noise import BuiltinNoise  # noqa: E402
from specdenoise.simulate.observe import Observer  # noqa: E402
from specdenoise.stage_grid import builtin_grid_path  # noqa: E402


def load_grid():
    """(flux_nd, axes, wave, label): the cached built-in grid, else a random one like it."""
    path = builtin_grid_path()
    if path.exists():
        from specdenoise.simulate.grids import grid_axes, open_grid

        ds = open_grid(path)
        axes = grid_axes(ds)
        flux = np.asarray(ds["flux"].values, dtype=np.float32)
        return flux, tuple(axes.values()), np.asarray(ds["wave"].values), f"built-in ({path})"
    axes = tuple(builtin_axes().values())
    wave = builtin_wave()
    rng = np.random.default_rng(1)
    flux = rng.uniform(0.5, 1.5, (*(a.size for a in axes), wave.size)).astype(np.float32)
    return flux, axes, wave, "random, shaped like the built-in grid (not built in the cache)"


def draw(rng, axes, n):
    """Grid parameters (n, 4) sorted in node order, and the source/observing conditions."""
    p = np.stack([rng.uniform(a[0], a[-1], n) for a in axes], axis=1)
    p = p[np.lexsort(p.T[::-1])]
    cond = dict(
        rv=np.clip(rng.normal(0.0, 300.0, n), -600, 600), ebv=rng.uniform(0, 0.1, n),
        mag=rng.uniform(19, 22.5, n), seeing=rng.uniform(0.5, 1.5, n),
        zenith=rng.uniform(0, 45, n), field_angle=rng.uniform(0, 0.65, n),
        moon_zenith=rng.uniform(30, 90, n), moon_separation=rng.uniform(60, 180, n),
        moon_phase=rng.uniform(0, 0.25, n), exp_time=np.full(n, 900.0), n_exp=np.full(n, 4.0),
    )
    return p, cond


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="CPU seconds in all (approx.)")
    ap.add_argument("--batch", type=int, default=1000, help="spectra per Numba call")
    ap.add_argument("--numpy-batch", type=int, default=100, help="spectra per NumPy call")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    flux, axes, wave, label = load_grid()
    print(f"grid: {label}; {'x'.join(str(a.size) for a in axes)} nodes x {wave.size} "
          f"wavelengths ({flux.nbytes / 1e6:.0f} MB), ready in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    observer = Observer(wave, BuiltinNoise())
    print(f"observer set up in {time.perf_counter() - t0:.2f} s "
          f"(LSF table {observer.table.weights.nbytes / 1e6:.0f} MB)")

    rng = np.random.default_rng(args.seed)
    paths = {
        "numba": (interpolate_numba, "numba", args.batch),
        "numpy": (interpolate_numpy, "numpy", args.numpy_batch),
    }

    def run(name):
        interp, backend, n = paths[name]
        p, cond = draw(rng, axes, n)
        model = interp(flux, axes, p)
        return observer.observe(model, rng=rng, backend=backend, **cond)

    t0 = time.perf_counter()
    for name in paths:  # untimed warm-up: JIT or load from the on-disk cache
        run(name)
    print(f"warm-up (compile or cache load): {time.perf_counter() - t0:.1f} s")

    cpu = dict.fromkeys(paths, 0.0)
    wall = dict.fromkeys(paths, 0.0)
    count = dict.fromkeys(paths, 0)
    snr = []
    while sum(cpu.values()) < args.seconds or min(count.values()) < 3 * args.numpy_batch:
        for name in paths:
            c0, w0 = time.process_time(), time.perf_counter()
            out = run(name)
            cpu[name] += time.process_time() - c0
            wall[name] += time.perf_counter() - w0
            count[name] += out["flux"].shape[0]
            if name == "numba":
                snr.append(out["snr"])

    rate = {k: count[k] / cpu[k] for k in paths}
    for k in paths:
        print(f"{k:>6}: {rate[k]:8.0f} spectra/s per core (CPU), {count[k] / wall[k]:8.0f} "
              f"wall; {count[k]} spectra; {1e6 / rate[k]:7.0f} us per spectrum")
    snr = np.concatenate(snr)
    print(f"S/N of the simulated spectra: median {np.median(snr):.1f}, "
          f"5-95 % {np.percentile(snr, 5):.1f}-{np.percentile(snr, 95):.1f}")
    ratio = rate["numba"] / rate["numpy"]
    print(f"numba / numpy: {ratio:.1f}x")
    result = {
        "numba_spectra_per_s_per_core": round(rate["numba"], 1),
        "numpy_spectra_per_s_per_core": round(rate["numpy"], 1),
        "ratio": round(ratio, 2),
        "numba_wall_spectra_per_s": round(count["numba"] / wall["numba"], 1),
        "grid": "builtin" if label.startswith("built-in") else "random",
        "batch": args.batch,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
