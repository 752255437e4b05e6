"""The built-in grid against real model spectra, through the PFS red-arm observation chain.

Issue 19.5. Every real model spectrum in ``../shared/data`` that the built-in grid can stand in
for is compared with the built-in spectrum at the same parameters (:func:`synthesize` at the
real model's Teff, log g, [M/H], [alpha/M], default settings), both put through the same chain
as the simulator renders them: flux-conserving bin averages onto a fine log-uniform grid
(R_samp = 100,000, so no model is undersampled), then the PFS red MR line-spread function
(FWHM 3.1-3.2 pixels, the model's own resolution taken off, :class:`~specdenoise.simulate.lsf.LSF`;
for BOSZ R=5000, which is not sharper than that, both sides get the wider 3.6-4.4 pixels that
``results/physics`` used)
integrated over the 4096 detector pixels of 710-885 nm (:func:`build_resampling_table`), no
Doppler shift, no noise.

Real spectra used (what each allows):

- BOSZ 2024 R=5000 (Teff 6000 / log g 4.0 and 4750 / 4.5, solar): all of 710-885 nm; their
  own continuum column.
- PHOENIX-ACES 3900 K / log g 4.5 (solar): the 780-830 and 830-930 nm slices, so pixels
  782-885 nm only (no continuum given).
- CALSPEC Sun (HST, about 2 nm sampling at 800 nm): only the continuum shape, with both
  spectra smoothed far below its resolution (Teff 5772, log g 4.44, solar).
- CALSPEC Vega: Teff 9600 K is outside the built-in grid (3500-7500 K); not compared.

Metrics (each computed identically on the real and the built-in observed spectrum):

- ``line_match``: lines are local minima of the observed flux divided by its running maximum
  over +-60 pixels smoothed (a pseudo-continuum), with a prominence of at least 0.02 (2 % of
  the pseudo-continuum; ``scipy.signal.find_peaks``); the fraction of real lines with a built-in
  line within one pixel. ``line_match_chance``: the same with the built-in lines shifted by
  7-40 pixels either way (mean over the shifts), i.e. what the built-in line density gives by
  chance. ``line_precision``: the fraction of built-in lines with a real line within a pixel.
- ``cat_ew_A``: Ca II triplet equivalent widths (Å) in the line bands of Cenarro et al. (2001,
  MNRAS 326, 959, their Table 4: 8484-8513, 8522-8562, 8642-8682 Å air) against the linear
  pseudo-continuum fitted to their five continuum bands; ``cat_ratio``: built-in / real.
- ``fine_rms``: RMS of flux / (running median of the flux over 101 pixels) - 1 outside the CaT
  line bands, 60 pixels from the ends; ``fine_ratio``: built-in / real.
- ``shape``: flux smoothed with a 117-pixel (5 nm) boxcar, each divided by its mean over the
  compared range (790-885 nm for PHOENIX, 712-883 nm otherwise); ``shape_max``/``shape_mean``:
  max and mean of |built-in / real - 1|.

``trends`` (no real model to compare with): the built-in grid's own CaT equivalent widths
(the three Cenarro bands summed, Å, PFS LSF) against log g (1-5 at [M/H] 0) and [M/H] (-2 to
+0.5 at log g 2 and 4.5) at Teff 4000, 4750, 5500 and 6500 K, so that what the model does where
no real spectrum here constrains it is on record.

    python benchmarks/grid_vs_real.py [--data ../shared/data] [--out FILE.json]

The last line printed is one JSON object (also written to --out).
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import numpy as np
from scipy.ndimage import maximum_filter1d, median_filter, uniform_filter1d
from scipy.signal import find_peaks

from specdenoise.simulate import builtin_grid as bg
from specdenoise.simulate.constants import air_to_vacuum
from specdenoise.simulate.lsf import LSF, build_resampling_table, resample_numpy
from specdenoise.simulate.pfs import pixel_wave

R_FINE = 100_000.0
FINE_RANGE_NM = (700.0, 895.0)
#: Cenarro et al. (2001) CaT bands, air Å: line bands and continuum bands
CAT_LINES_AIR = ((8484.0, 8513.0), (8522.0, 8562.0), (8642.0, 8682.0))
CAT_CONT_AIR = ((8474.0, 8484.0), (8563.0, 8577.0), (8619.0, 8642.0), (8700.0, 8725.0),
                (8776.0, 8792.0))
PROMINENCE = 0.02
#: the PFS red MR line-spread function (pixels), and the wider one that BOSZ R=5000 allows
#: (the LSF the BOSZ study of ``results/physics`` used)
PFS_FWHM = (3.1, 3.2)
BOSZ_FWHM = (3.6, 4.4)
SHIFTS = [s for s in range(-40, 41) if abs(s) >= 7]


def _vac_nm(air_a):
    return air_to_vacuum(np.asarray(air_a, dtype=np.float64), "AA") / 10.0


def fine_wave() -> np.ndarray:
    lo, hi = FINE_RANGE_NM
    n = int(np.ceil(np.log(hi / lo) * R_FINE)) + 1
    return lo * np.exp(np.arange(n) / R_FINE)


def bin_average(wave, flux, new_wave):
    """Flux-conserving mean of f_lambda (trapezoid integral) over the cells of ``new_wave``;
    outside ``wave`` the end values are held."""
    order = np.argsort(wave)
    wave, flux = np.asarray(wave, float)[order], np.asarray(flux, float)[order]
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (flux[1:] + flux[:-1]) * np.diff(wave))])
    edges = np.sqrt(new_wave[1:] * new_wave[:-1])
    edges = np.concatenate([[new_wave[0] ** 2 / edges[0]], edges, [new_wave[-1] ** 2 / edges[-1]]])
    inside = np.clip(edges, wave[0], wave[-1])
    mean = np.diff(np.interp(inside, wave, cum)) / np.maximum(np.diff(inside), 1e-30)
    out = np.where(np.diff(inside) > 0, mean, np.nan)
    out[new_wave < wave[0]] = flux[0]
    out[new_wave > wave[-1]] = flux[-1]
    return out


class Chain:
    """Fine grid -> PFS red MR LSF -> detector pixels, one table per model resolution."""

    def __init__(self):
        self.fine = fine_wave()
        self.det = pixel_wave()
        self._tables = {}

    def __call__(self, wave, flux, model_resolution, fwhm_pix=PFS_FWHM):
        key = (model_resolution, tuple(fwhm_pix))
        if key not in self._tables:
            lsf = LSF(fwhm_pix=tuple(fwhm_pix), model_resolution=model_resolution)
            self._tables[key] = build_resampling_table(self.fine, self.det, lsf, n_shift=1)
        f = bin_average(wave, flux, self.fine)
        return resample_numpy(self._tables[key], f[None, :], 0.0)[0]


# ---- the real spectra ---------------------------------------------------------------------


def load_bosz(data: Path, teff: int, logg: float):
    d = data / "bosz2024"
    wave = _vac_nm(np.loadtxt(d / "bosz2024_wave_r5000.txt"))
    name = f"bosz2024_mp_t{teff}_g+{logg:.1f}_m+0.00_a+0.00_c+0.00_v2_r5000_resam.txt.gz"
    with gzip.open(d / name, "rt") as fh:
        cols = np.loadtxt(fh)
    m = (wave > 690.0) & (wave < 910.0)
    return wave[m], cols[m, 0], cols[m, 1]


def load_phoenix(data: Path):
    d = data / "reference_spectra"
    parts = [np.loadtxt(d / f"eniric_{b}_band_test_sample_lte03900-PHOENIX-ACES.dat")
             for b in ("GAP", "Z")]
    w = np.concatenate([p[:, 0] for p in parts]) * 1000.0  # um -> nm (vacuum)
    f = np.concatenate([p[:, 1] for p in parts])
    w, idx = np.unique(w, return_index=True)
    return w, f[idx]


def load_sun(data: Path):
    d = np.genfromtxt(data / "reference_spectra" / "ska_hst_sun.csv", delimiter=",",
                      skip_header=1)
    m = (d[:, 0] > 0.69) & (d[:, 0] < 0.91)
    return d[m, 0] * 1000.0, d[m, 1]


# ---- metrics ------------------------------------------------------------------------------


def pseudo_continuum(flux):
    env = maximum_filter1d(flux, 121, mode="nearest")
    return uniform_filter1d(env, 61, mode="nearest")


def find_lines(flux, valid):
    r = flux / pseudo_continuum(flux)
    peaks, _ = find_peaks(-r, prominence=PROMINENCE)
    return peaks[valid[peaks]]


def match_fraction(real, grid, tol=1):
    if real.size == 0:
        return float("nan")
    grid = np.sort(grid)
    i = np.clip(np.searchsorted(grid, real), 1, max(grid.size - 1, 1))
    if grid.size == 0:
        return 0.0
    d = np.minimum(np.abs(real - grid[i - 1]), np.abs(real - grid[np.minimum(i, grid.size - 1)]))
    return float(np.mean(d <= tol))


def line_stats(det, real, grid, valid):
    lr, lg = find_lines(real, valid), find_lines(grid, valid)
    chance = np.mean([match_fraction(lr, lg + s) for s in SHIFTS])
    return {"n_real_lines": int(lr.size), "n_grid_lines": int(lg.size),
            "line_match": match_fraction(lr, lg), "line_match_chance": float(chance),
            "line_precision": match_fraction(lg, lr)}


def cat_ew(det, flux):
    """Equivalent widths (Å) of the three CaT lines against the Cenarro pseudo-continuum."""
    cont_m = np.zeros(det.size, bool)
    for lo, hi in CAT_CONT_AIR:
        cont_m |= (det >= _vac_nm(lo)) & (det <= _vac_nm(hi))
    coef = np.polyfit(det[cont_m], flux[cont_m], 1)
    cont = np.polyval(coef, det)
    dl = (det[1] - det[0]) * 10.0
    out = []
    for lo, hi in CAT_LINES_AIR:
        m = (det >= _vac_nm(lo)) & (det <= _vac_nm(hi))
        out.append(float(np.sum(1.0 - flux[m] / cont[m]) * dl))
    return out


def fine_rms(det, flux, valid):
    r = flux / median_filter(flux, 101, mode="nearest")
    m = valid.copy()
    for lo, hi in CAT_LINES_AIR:
        m &= ~((det >= _vac_nm(lo)) & (det <= _vac_nm(hi)))
    return float(np.sqrt(np.mean((r[m] - 1.0) ** 2)))


def shape_stats(det, real, grid, lo, hi):
    m = (det >= lo) & (det <= hi)
    a = uniform_filter1d(real, 117, mode="nearest")[m]
    b = uniform_filter1d(grid, 117, mode="nearest")[m]
    d = np.abs((b / b.mean()) / (a / a.mean()) - 1.0)
    return {"shape_range_nm": [lo, hi], "shape_max": float(d.max()), "shape_mean": float(d.mean())}


# ---- the comparison -----------------------------------------------------------------------


def builtin_observed(chain, teff, logg, m_h, a_m, fwhm_pix=PFS_FWHM):
    s = bg._resolve_settings(None)
    flux, cont = bg.synthesize(teff, logg, m_h, a_m)
    wave = bg.builtin_wave()
    return (chain(wave, flux, s["resolution"], fwhm_pix),
            chain(wave, cont, s["resolution"], fwhm_pix))


def compare(chain, name, params, real_flux, valid, shape_range, real_cont=None,
            fwhm_pix=PFS_FWHM):
    det = chain.det
    grid_flux, grid_cont = builtin_observed(chain, *params, fwhm_pix=fwhm_pix)
    row = {"star": name, "teff": params[0], "logg": params[1], "m_h": params[2],
           "a_m": params[3], "pixels_nm": [float(det[valid][0]), float(det[valid][-1])],
           "lsf_fwhm_pix": list(fwhm_pix)}
    row.update(line_stats(det, real_flux, grid_flux, valid))
    ew_r, ew_g = cat_ew(det, real_flux), cat_ew(det, grid_flux)
    row["cat_ew_A_real"], row["cat_ew_A_grid"] = ew_r, ew_g
    row["cat_ratio"] = [g / r for g, r in zip(ew_g, ew_r, strict=True)]
    fr, fg = fine_rms(det, real_flux, valid), fine_rms(det, grid_flux, valid)
    row.update({"fine_rms_real": fr, "fine_rms_grid": fg, "fine_ratio": fg / fr})
    row.update(shape_stats(det, real_flux, grid_flux, *shape_range))
    if real_cont is not None:  # true-continuum depth, where the real model gives its continuum
        row["mean_depth_real"] = float(np.mean(1 - real_flux[valid] / real_cont[valid]))
        row["mean_depth_grid"] = float(np.mean(1 - grid_flux[valid] / grid_cont[valid]))
    return row


TREND_TEFF = (4000.0, 4750.0, 5500.0, 6500.0)
TREND_LOGG = (1.0, 2.0, 3.0, 4.0, 5.0)
TREND_MH = (-2.0, -1.0, 0.0, 0.5)


def cat_trends(chain) -> dict:
    """CaT equivalent width (Å, three bands summed) of the built-in grid over log g and [M/H]."""
    def total(teff, logg, m_h):
        flux, _ = builtin_observed(chain, teff, logg, m_h, 0.0)
        return round(float(np.sum(cat_ew(chain.det, flux))), 3)

    return {"teff": list(TREND_TEFF), "logg": list(TREND_LOGG), "m_h": list(TREND_MH),
            "ew_vs_logg": [[total(t, g, 0.0) for g in TREND_LOGG] for t in TREND_TEFF],
            "ew_vs_m_h_logg2": [[total(t, 2.0, m) for m in TREND_MH] for t in TREND_TEFF],
            "ew_vs_m_h_logg4.5": [[total(t, 4.5, m) for m in TREND_MH] for t in TREND_TEFF]}


def run(data: Path) -> dict:
    chain = Chain()
    det = chain.det
    edge = np.zeros(det.size, bool)
    edge[60:-60] = True
    rows = []
    for teff, logg in ((6000, 4.0), (4750, 4.5)):
        w, f, c = load_bosz(data, teff, logg)
        rf, rc = chain(w, f, 5000.0, BOSZ_FWHM), chain(w, c, 5000.0, BOSZ_FWHM)
        rows.append(compare(chain, f"BOSZ2024 {teff}/{logg}", (float(teff), logg, 0.0, 0.0),
                            rf, edge, (712.0, 883.0), rc, BOSZ_FWHM))
    w, f = load_phoenix(data)
    rf = chain(w, f, None)
    valid = edge & (det > 782.0)
    rows.append(compare(chain, "PHOENIX-ACES 3900/4.5", (3900.0, 4.5, 0.0, 0.0), rf, valid,
                        (790.0, 883.0)))
    # the Sun: only the continuum shape (CALSPEC ~2 nm sampling)
    w, f = load_sun(data)
    rf = np.interp(det, w, f)
    gf, _ = builtin_observed(chain, 5772.0, 4.44, 0.0, 0.0)
    row = {"star": "CALSPEC Sun (shape only)", "teff": 5772.0, "logg": 4.44, "m_h": 0.0,
           "a_m": 0.0}
    gsmooth = np.interp(det, w, bin_average(det, gf, w))  # to the CALSPEC sampling and back
    row.update(shape_stats(det, rf, gsmooth, 712.0, 883.0))
    rows.append(row)
    return {"rows": rows, "trends": cat_trends(chain)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared"
                    / "data")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    res = run(args.data)
    res["generator_version"] = bg.GENERATOR_VERSION
    res["settings_key"] = bg.settings_key()
    res["seconds"] = round(time.perf_counter() - t0, 1)
    for r in res["rows"]:
        keys = [k for k in ("line_match", "line_match_chance", "line_precision", "cat_ratio",
                            "fine_ratio", "shape_max", "shape_mean") if k in r]
        print(r["star"], {k: (np.round(r[k], 3).tolist()) for k in keys})
    text = json.dumps(res, sort_keys=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1, sort_keys=True) + "\n")
    print(text)


if __name__ == "__main__":
    main()
