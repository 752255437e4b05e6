"""Sampling comb check: a grid rendered as stored against the same grid resampled finely.

For every existing node of a grid store, the noise-free detector spectrum (no Doppler shift, no
extinction, no magnitude scaling) is rendered twice through the simulation's observer: from the
stored spectrum, and from the same spectrum linearly interpolated (in ln lambda) onto a grid
``--factor`` times finer.  Printed per node: mean and max relative difference and the standard
deviation of the second difference of each rendering divided by its median (a comb shows as a
large second difference).  ``--points`` forces the point-sample table (the rendering before the
issue-19 fix) for comparison::

    python benchmarks/comb.py G.zarr --lsf 3.6 4.4 [--factor 8] [--points]
"""

from __future__ import annotations

import argparse

import numpy as np

from specdenoise.simulate import lsf as lsf_mod
from specdenoise.simulate.grids import open_grid
from specdenoise.simulate.noise import BuiltinNoise
from specdenoise.simulate.observe import Observer


def fine_copy(wave: np.ndarray, flux: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """``flux`` (n, n_wave) linearly interpolated in ln lambda onto a grid ``factor`` x finer."""
    lw = np.log(wave)
    n_fine = (wave.size - 1) * factor + 1
    lw_fine = np.linspace(lw[0], lw[-1], n_fine)
    fine = np.stack([np.interp(lw_fine, lw, f) for f in flux]).astype(np.float32)
    return np.exp(lw_fine), fine


def render(wave, flux, fwhm, resolution) -> np.ndarray:
    """Noise-free f_nu on the detector (n, 4096) for model spectra (n, n_wave) on ``wave``."""
    obs = Observer(wave, BuiltinNoise(), lsf_fwhm_pix=fwhm, model_resolution=resolution)
    fnu, _ = obs.clean_fnu(flux, 0.0, 0.0, np.nan)
    return fnu


def comb_stats(a: np.ndarray) -> float:
    """Standard deviation of the second difference of a rendering over its median."""
    return float(np.std(np.diff(a, 2)) / np.median(a))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("grid")
    ap.add_argument("--lsf", nargs=2, type=float, default=(3.1, 3.2), metavar=("F710", "F885"),
                    help="LSF FWHM in pixels at 710 and 885 nm")
    ap.add_argument("--factor", type=int, default=8)
    ap.add_argument("--points", action="store_true",
                    help="read the samples as points whatever their spacing (the old table)")
    args = ap.parse_args()
    if args.points:
        lsf_mod.MAX_STEP_PER_SIGMA = np.inf
    g = open_grid(args.grid)
    res = g.attrs.get("resolution")
    res = float(res) if res else None
    wave = g["wave"].values
    ex = g["exists"].values
    axes = [d for d in g["flux"].dims if d != "wave"]
    nodes = np.argwhere(ex)
    flux = np.stack([g["flux"].values[tuple(n)] for n in nodes]).astype(np.float32)
    wf, ff = fine_copy(wave, flux, args.factor)
    u, _ = lsf_mod.sample_offsets(wave, BuiltinNoise().wave, lsf_mod.LSF(
        fwhm_pix=tuple(args.lsf), model_resolution=res))
    print(f"grid {args.grid}: R = {res}, {wave.size} samples; table: "
          f"{'points' if u.size == 1 else f'piecewise-linear, {u.size} sub-points'}; "
          f"fine copy x{args.factor}")
    a = render(wave, flux, tuple(args.lsf), res)
    b = render(wf, ff, tuple(args.lsf), res)
    for k, n in enumerate(nodes):
        name = ", ".join(f"{ax}={g[ax].values[i]:g}" for ax, i in zip(axes, n, strict=True))
        rel = np.abs(a[k] / b[k] - 1.0)
        print(f"{name}: mean {100 * rel.mean():.3f} %, max {100 * rel.max():.3f} %; "
              f"second difference {comb_stats(a[k]):.4f} as stored, {comb_stats(b[k]):.4f} fine")


if __name__ == "__main__":
    main()
