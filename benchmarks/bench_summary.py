"""What the registry's metrics and bootstrap intervals add to the evaluation's summary.

Builds an error cube of ``--n`` spectra and ``--methods`` methods in memory (spectra with
absorption lines, noisy and smoothed estimates; the variable names cube.py writes), then times,
in one run, the whole :func:`specdenoise.evaluate.summary.summarize` and its two new parts: the
per-spectrum statistics of every metric (:func:`metric_parts`: continuum, line pixels, fine
structure, Ca II EW) and the bootstrap (:func:`metric_stats` for every binning variable).
Prints seconds and the share of the summary they take.

    python benchmarks/bench_summary.py --n 300 --methods 6
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import xarray as xr

from specdenoise import metrics as M
from specdenoise.evaluate import summary
from specdenoise.evaluate.cube import METHOD_DIM
from specdenoise.simulate.pfs import pixel_wave


def make_cube(n: int, n_methods: int, seed: int = 0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    wave = pixel_wave()
    lam = 10 * wave
    base = 0.5 * (1 + 0.1 * np.linspace(-1, 1, wave.size))
    for c in rng.uniform(lam[0], lam[-1], 300):
        base = base * (1 - rng.uniform(0.02, 0.5) * np.exp(-0.5 * ((lam - c) / 1.0) ** 2))
    clean = base * rng.uniform(0.9, 1.1, (n, 1))
    snr = np.exp(rng.uniform(0, np.log(150), n))
    noisy = clean * (1 + rng.standard_normal(clean.shape) / snr[:, None])
    den = [noisy] + [clean * (1 + rng.standard_normal(clean.shape) / snr[:, None] / (k + 2))
                     for k in range(n_methods - 1)]
    names = ["none"] + [f"m{k}" for k in range(n_methods - 1)]
    rel = np.stack([M.pixel_values("abs_rel", d, clean) for d in den])
    return xr.Dataset(
        {"rel_err": ((METHOD_DIM, "spectrum", "wave"), rel),
         "denoised": ((METHOD_DIM, "spectrum", "wave"), np.stack(den).astype(np.float32)),
         "mean_rel_err": ((METHOD_DIM, "spectrum"), rel.mean(axis=2)),
         "flux_clean": (("spectrum", "wave"), clean.astype(np.float32))},
        coords={METHOD_DIM: np.array(names, dtype=object),
                "denoiser_kind": (METHOD_DIM, np.array(["reference"] + ["baseline"] *
                                                       (n_methods - 1), dtype=object)),
                "wave": wave, "snr": ("spectrum", snr),
                **{k: ("spectrum", rng.uniform(0, 1, n)) for k in ("teff", "logg", "m_h",
                                                                     "a_m")}},
        attrs={"methods": json.dumps({m: {"kind": "baseline"} for m in names})})


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=300, help="spectra in the cube")
    ap.add_argument("--methods", type=int, default=6, help="methods, 'none' included")
    args = ap.parse_args(argv)
    cube = make_cube(args.n, args.methods)
    t0 = time.perf_counter()
    summary.summarize(cube)
    t_all = time.perf_counter() - t0
    t0 = time.perf_counter()
    parts = summary.metric_parts(cube)
    t_parts = time.perf_counter() - t0
    t0 = time.perf_counter()
    for by in summary.DEFAULT_BY:
        edges = summary.bin_edges(cube[by].values,
                                  summary.default_edges(by, cube[by].values))
        summary.metric_stats(cube, parts, summary._bin_index(cube[by].values, edges),
                             edges.size - 1, by)
    t_boot = time.perf_counter() - t0
    print(f"{args.n} spectra x {args.methods} methods: summarize {t_all:.2f} s, of which "
          f"metric statistics {t_parts:.2f} s ({t_parts / t_all:.0%}) and bootstrap "
          f"{t_boot:.2f} s ({t_boot / t_all:.0%})")


if __name__ == "__main__":
    main()
