"""Transfer benchmark (issue 19, point 4): a network trained on grid A, tested on spectra from
grid B against B's twins in A (same stellar parameters, same noise draws).

Two ways to name the pairs (both may be given):

- ``--data DIR`` (normally ``../shared/data``): every real model spectrum in the folder is
  surveyed (:func:`survey`), and each one whose resolution and coverage allow it is paired
  with its twin automatically: the script makes a grid store of it in ``--work`` and simulates
  ``--n`` spectra from it and from the twin grid (``--twin-grid``, default the built-in grid)
  with the same command and seed, its stellar parameters fixed. What is used, and why the rest
  is not, is printed and written beside ``--out`` (``*_models.csv``):

  - BOSZ 2024 (``bosz2024/*.txt.gz``): imported with ``specdenoise grid import bosz``. R = 5000
    is not sharper than the PFS line-spread function (3.1-3.2 pixels), so both members of the
    pair get the wider 3.6-4.4 pixels, the smallest the simulator accepts for R = 5000
    (checked with :class:`~specdenoise.simulate.lsf.LSF`, not assumed);
  - PHOENIX-ACES 3900 K / log g 4.5 (``reference_spectra/eniric_*``, 780-930 nm): the chain
    needs 700-900 nm (detector, radial-velocity margin, magnitude filter), so below 781 nm the
    built-in spectrum at the same parameters stands in, scaled to PHOENIX's flux at 781-786
    nm, and only pixels from 790 nm on are compared;
  - CALSPEC Sun and Vega (``reference_spectra``): used only where the spectrum's own FWHM
    (the FITS column, or twice the sampling) is below the PFS line-spread function's at
    850 nm; and only with a twin where its parameters lie inside the twin grid.

- ``--pair REAL TWIN``: two simulated stores made with the same command and seed, one from grid
  B (``--grid B.zarr``) and one from grid A; their noise draws, conditions and parameters are
  identical, only the model spectrum differs.

Each model (``--model RUN``, repeatable) denoises both members of each pair (``specdenoise
denoise``, in ``--work``; what is already there is reused, so an interrupted run resumes), and
per S/N bin this prints and writes (``--out`` CSV):

- ``R``: mean |D - F| / F over unmasked pixels (per cent), D denoised, F the clean truth;
- ``R_line``: the same over line pixels (the truth more than 2 % below its running
  continuum: the 98th percentile in a 101-pixel window);
- ``kept``: the fraction of the truth's line structure the denoised spectrum keeps: the
  regression slope of D_hp on F_hp, ``_hp`` the truth's and denoised spectrum's departure from
  that continuum (1: all kept, 0: smoothed away);
- ``ew_err``: the Ca II triplet's equivalent-width error, mean |EW(D) - EW(F)| / EW(F) over
  the three lines (vacuum 850.04, 854.44, 866.45 nm moved by each spectrum's RV; +-0.6 nm
  windows, continuum from the same running percentile), per cent.

and the ratios real/twin of R and of kept.  The metrics are simple local versions written here
(:func:`metrics`); the project's line-aware metrics (``evaluate/metrics.py``) can replace that
one function.  Commands::

    python benchmarks/transfer.py --model runs/unet --data ../shared/data --n 150 \\
        --work W --out results/transfer/transfer.csv
    python benchmarks/transfer.py --model runs/unet --pair bosz_t6000.zarr builtin_t6000.zarr \\
        [--pair ...] --work W --out results/transfer/transfer.csv
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

C_KM_S = 299792.458
#: vacuum wavelengths of the Ca II infrared triplet, nm
CA_II = (850.036, 854.444, 866.452)
EW_HALF_WIDTH = 0.6
SNR_EDGES = (0, 2, 5, 10, 20, 50, np.inf)
CONT_WINDOW = 101
LINE_THRESHOLD = 0.02
#: the PFS red MR line-spread function (pixels, the simulator's default) and the wider one
#: that an R = 5000 model allows (the one ``results/physics`` used for BOSZ)
PFS_FWHM_PIX = (3.1, 3.2)
WIDE_FWHM_PIX = (3.6, 4.4)
#: PHOENIX slices: the built-in spectrum stands in below JOIN_NM, scaled over JOIN_NM-JOIN_NM+5;
#: pixels from PHOENIX_FROM_NM on are compared
JOIN_NM = 781.0
PHOENIX_FROM_NM = 790.0
#: PHOENIX-ACES 3900 K / log g 4.5, solar ([M/H] 0, [alpha/M] 0): ../shared/data/README.md
PHOENIX_PARAMS = {"teff": 3900.0, "logg": 4.5, "m_h": 0.0, "a_m": 0.0}
#: CALSPEC stars: parameters of the Sun (IAU 2015 nominal Teff) and of Vega (about 9600 K)
CALSPEC_PARAMS = {"sun": {"teff": 5772.0, "logg": 4.44, "m_h": 0.0, "a_m": 0.0},
                  "vega": {"teff": 9600.0, "logg": 3.95, "m_h": -0.5, "a_m": 0.0}}


def continuum(f: np.ndarray, window: int = CONT_WINDOW) -> np.ndarray:
    """Running 98th percentile (n, n_wave) of spectra (n, n_wave): the local continuum."""
    from scipy.ndimage import percentile_filter

    return percentile_filter(f, 98, size=(1, window), mode="nearest")


def equivalent_widths(wave: np.ndarray, f: np.ndarray, cont: np.ndarray,
                      rv: np.ndarray | None = None) -> np.ndarray:
    """EW (nm) of the Ca II lines (n, 3) from spectra and their continuum (n, n_wave), the
    windows moved by each spectrum's radial velocity ``rv`` (n,) km/s."""
    dw = np.gradient(wave)
    shift = 1.0 + (np.zeros(len(f)) if rv is None else np.asarray(rv)) / C_KM_S
    out = []
    for c in CA_II:
        sel = np.abs(wave[None, :] - c * shift[:, None]) < EW_HALF_WIDTH
        out.append(np.sum(sel * (1 - f / cont) * dw[None, :], axis=1))
    return np.stack(out, axis=1)


def metrics(wave, clean, denoised, mask=None, rv=None) -> dict[str, np.ndarray]:
    """Per-spectrum metrics (each (n,)): R, R_line (per cent), kept, ew_err (per cent);
    ``rv`` (n,) km/s moves the Ca II windows."""
    good = np.ones(clean.shape, bool) if mask is None else mask == 0
    rel = np.abs(denoised - clean) / np.abs(clean)
    cont = continuum(clean)
    line = good & (clean < (1 - LINE_THRESHOLD) * cont)
    f_hp, d_hp = clean - cont, denoised - cont
    w = good.astype(float)
    kept = np.sum(w * f_hp * d_hp, axis=1) / np.sum(w * f_hp * f_hp, axis=1)
    ew_t = equivalent_widths(wave, clean, cont, rv)
    ew_d = equivalent_widths(wave, denoised, cont, rv)
    return {
        "R": 100 * np.sum(rel * good, axis=1) / good.sum(axis=1),
        "R_line": 100 * np.sum(rel * line, axis=1) / np.maximum(line.sum(axis=1), 1),
        "kept": kept,
        "ew_err": 100 * np.mean(np.abs(ew_d - ew_t) / np.abs(ew_t), axis=1),
    }


# ---- the real model spectra in the data folder ---------------------------------------------


@dataclass
class RealModel:
    """One real model spectrum of the data folder and what the benchmark can do with it."""

    name: str  # short label: file names in --work and the CSV's ``star``
    source: str  # the file(s), relative to the data folder
    params: dict  # teff (K), logg, m_h, a_m (dex)
    usable: bool
    why: str
    kind: str = ""  # "bosz" or "phoenix" for usable ones
    lsf_fwhm_pix: tuple = PFS_FWHM_PIX
    compare_nm: tuple = (0.0, np.inf)  # pixels compared (vacuum nm)
    files: list = field(default_factory=list)


def pfs_fwhm_nm(wave_nm: float = 850.0) -> float:
    """FWHM (nm) of the widest default PFS line-spread function at ``wave_nm``."""
    from specdenoise.simulate.pfs import pixel_wave

    w = pixel_wave()
    return PFS_FWHM_PIX[1] * float(np.interp(wave_nm, w[1:], np.diff(w)))


def lsf_for(resolution: float | None) -> tuple | None:
    """The line-spread function (FWHM pixels) the simulator accepts for a model of this
    resolving power: the PFS one, else the wider one, else None."""
    from specdenoise.errors import SpecdenoiseError
    from specdenoise.simulate.lsf import LSF
    from specdenoise.simulate.pfs import pixel_wave

    for fwhm in (PFS_FWHM_PIX, WIDE_FWHM_PIX):
        try:
            LSF(fwhm_pix=fwhm, model_resolution=resolution).sigma_pix(pixel_wave())
            return fwhm
        except SpecdenoiseError:
            continue
    return None


def _inside(params: dict, axes: dict) -> bool:
    return all(axes[k][0] <= params[k] <= axes[k][-1] for k in params if k in axes)


def _calspec(path: Path, fmt: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(wave nm, FWHM nm or None) of a CALSPEC file, 700-900 nm."""
    if fmt == "fits":
        from astropy.io import fits

        with fits.open(path) as h:
            d = h[1].data
            w, fw = np.asarray(d["WAVELENGTH"], float) / 10.0, np.asarray(d["FWHM"], float) / 10.0
    else:
        d = np.genfromtxt(path, delimiter=",", skip_header=1)
        w, fw = d[:, 0] * 1000.0, None
    m = (w > 700.0) & (w < 900.0)
    return w[m], (None if fw is None else fw[m])


def survey(data: Path, twin_axes: dict | None = None) -> list[RealModel]:
    """Every real model spectrum in ``data`` (BOSZ 2024 files, the PHOENIX slices, the CALSPEC
    spectra), each with whether the benchmark uses it and why (not)."""
    from specdenoise.simulate.bosz import parse_bosz_name

    if twin_axes is None:
        from specdenoise.simulate.builtin_grid import builtin_axes

        twin_axes = builtin_axes()
    out = []
    for path in sorted((data / "bosz2024").glob("bosz2024_*")):
        f = parse_bosz_name(path)
        if f is None:
            continue
        p = {k: f.params[k] for k in ("teff", "logg", "m_h", "a_m")}
        name = f"bosz_t{p['teff']:.0f}_g{p['logg']:.1f}"
        fwhm = lsf_for(float(f.resolution))
        src = f"bosz2024/{path.name}"
        if fwhm is None:
            out.append(RealModel(name, src, p, False, f"R = {f.resolution} is too coarse for "
                                 f"every line-spread function the simulator accepts"))
        elif not _inside(p, twin_axes):
            out.append(RealModel(name, src, p, False, "parameters outside the twin grid"))
        else:
            why = (f"R = {f.resolution}; PFS LSF {PFS_FWHM_PIX} px" if fwhm == PFS_FWHM_PIX else
                   f"R = {f.resolution} is not sharper than the PFS LSF {PFS_FWHM_PIX} px: both "
                   f"members get {fwhm} px")
            out.append(RealModel(name, src, p, True, why, "bosz", fwhm, (0.0, np.inf), [path]))
    ref = data / "reference_spectra"
    phx = sorted(ref.glob("eniric_*_band_test_sample_lte03900-PHOENIX-ACES.dat"))
    if phx:
        lo, hi = np.inf, -np.inf
        for path in phx:
            w = np.loadtxt(path, usecols=0) * 1000.0
            lo, hi = min(lo, w.min()), max(hi, w.max())
        src = " + ".join(f"reference_spectra/{p.name}" for p in phx)
        usable = lo <= JOIN_NM + 0.5 and hi >= 900.0 and _inside(PHOENIX_PARAMS, twin_axes)
        why = (f"covers {lo:.1f}-{hi:.1f} nm at {np.median(np.diff(w)) * 10:.2f} Å sampling; the "
               f"chain needs 700-900 nm: below {JOIN_NM:g} nm the twin grid's spectrum stands "
               f"in, pixels {PHOENIX_FROM_NM:g}-885 nm are compared")
        out.append(RealModel("phoenix_t3900_g4.5", src, dict(PHOENIX_PARAMS), bool(usable),
                             why if usable else f"covers only {lo:.1f}-{hi:.1f} nm", "phoenix",
                             PFS_FWHM_PIX, (PHOENIX_FROM_NM, np.inf), phx))
    limit = pfs_fwhm_nm()
    for fname, star, fmt in (("ska_hst_sun.csv", "sun", "csv"),
                             ("alpha_lyr_stis_005.fits", "vega", "fits"),
                             ("ska_vega_stis.csv", "vega", "csv")):
        path = ref / fname
        if not path.exists():
            continue
        w, fw = _calspec(path, fmt)
        near = np.abs(w - 850.0) < 10.0
        step = float(np.median(np.diff(w[near])))
        res = (f"FWHM {np.median(fw[near]):.2f} nm (its FWHM column)" if fw is not None else
               f"sampling {step:.3f} nm, so FWHM >= {2 * step:.2f} nm")
        fwhm = float(np.median(fw[near])) if fw is not None else 2.0 * step
        p = dict(CALSPEC_PARAMS[star])
        reasons = []
        if fwhm > limit:
            reasons.append(f"resolution too low: {res} at 850 nm against the PFS LSF's "
                           f"{limit:.3f} nm")
        if not _inside(p, twin_axes):
            reasons.append(f"Teff {p['teff']:g} K is outside the twin grid "
                           f"({twin_axes['teff'][0]:g}-{twin_axes['teff'][-1]:g} K)")
        out.append(RealModel(f"calspec_{star}_{path.stem}", f"reference_spectra/{fname}", p,
                             not reasons, "; ".join(reasons) or res))
    return out


# ---- grid stores and twin simulations -----------------------------------------------------


def _cli(*args: str) -> None:
    """Run one ``specdenoise`` command in this process (no interpreter start per call)."""
    from specdenoise.cli import main as cli_main
    from specdenoise.errors import SpecdenoiseError

    status = cli_main(list(args))
    if status:
        raise SpecdenoiseError(f"specdenoise {' '.join(args[:2])} failed (exit status {status})")


def twin_settings(twin_grid: str) -> dict | None:
    """The built-in generator settings of the twin grid (None: the defaults)."""
    if twin_grid == "builtin":
        return None
    from specdenoise.simulate.grids import grid_settings, open_grid

    ds = open_grid(twin_grid)
    return grid_settings(ds) if ds.attrs.get("source") == "builtin" else None


def twin_axes_of(twin_grid: str) -> dict:
    if twin_grid == "builtin":
        from specdenoise.simulate.builtin_grid import builtin_axes

        return builtin_axes()
    from specdenoise.simulate.grids import grid_axes, open_grid

    return grid_axes(open_grid(twin_grid))


def phoenix_patched(model: RealModel, out: Path, settings: dict | None) -> Path:
    """A one-node grid store: the PHOENIX slices from ``JOIN_NM`` on, the built-in spectrum at
    the same parameters (rendered at R = 100,000) below, scaled to PHOENIX over the 5 nm above
    the join. Log-uniform at R_samp = 200,000 (flux-conserving bin means), vacuum, 700-929 nm;
    no ``resolution`` attribute (both parts are far sharper than the PFS LSF)."""
    from specdenoise.simulate import builtin_grid as bg
    from specdenoise.simulate.grids import write_grid

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from grid_vs_real import bin_average

    parts = [np.loadtxt(p) for p in model.files]
    w = np.concatenate([p[:, 0] for p in parts]) * 1000.0
    f = np.concatenate([p[:, 1] for p in parts])
    w, idx = np.unique(w, return_index=True)
    f = f[idx]
    hi = min(float(w[-1]), 929.0)
    r_samp = 200_000.0
    wave = 700.0 * np.exp(np.arange(int(np.log(hi / 700.0) * r_samp)) / r_samp)
    s = dict(settings or {})
    s.update(wave_min_nm=699.0, wave_max_nm=JOIN_NM + 8.0, sampling=200_000.0,
             resolution=100_000.0, oversampling=4)
    p = model.params
    bw = bg.builtin_wave(s)
    bf, _ = bg.synthesize(p["teff"], p["logg"], p["m_h"], p["a_m"], settings=s)
    real = bin_average(w, f, wave)
    twin = bin_average(bw, bf, wave)
    over = (wave >= JOIN_NM) & (wave < JOIN_NM + 5.0)
    twin *= np.mean(real[over]) / np.mean(twin[over])
    flux = np.where(wave < JOIN_NM, twin, real)
    axes = {k: np.array([v]) for k, v in p.items()}
    return write_grid(out, flux.reshape(1, 1, 1, 1, -1) * 1e-7, axes, wave,
                      flux_unit="arbitrary (PHOENIX slices; erg s-1 cm-2 nm-1 up to a factor)",
                      attrs={"source": "phoenix-aces slices + builtin below 781 nm",
                             "stand_in_below_nm": JOIN_NM})


def real_grid(model: RealModel, work: Path, twin_grid: str, data: Path) -> Path:
    """The grid store of one usable real model, made in ``work`` once."""
    if model.kind == "bosz":
        out = work / "bosz2024.zarr"
        if not out.exists():
            _cli("grid", "import", "bosz", str(data / "bosz2024"), "--out", str(out),
                 "--no-progress")
        return out
    out = work / f"{model.name}.zarr"
    if not out.exists():
        phoenix_patched(model, out, twin_settings(twin_grid))
    return out


def simulate(grid: str, model: RealModel, n: int, seed: int, out: Path) -> Path:
    """``n`` spectra of one star (its parameters fixed, everything else drawn from the default
    preset with ``seed``); a complete store is kept, an unfinished one finished with --resume."""
    from specdenoise.stores import is_complete, read_attrs

    attrs = read_attrs(out) if out.exists() else None
    if attrs is not None and is_complete(attrs):
        return out
    sets = [f'params.{k}={{dist="fixed",value={v:g}}}' for k, v in model.params.items()]
    sets.append(f"observe.lsf_fwhm_pix=[{model.lsf_fwhm_pix[0]:g},{model.lsf_fwhm_pix[1]:g}]")
    args = ["simulate", "--preset", "default", "--grid", grid, "--n", str(n), "--chunk-size",
            str(n), "--seed", str(seed), "--workers", "1", "--no-progress", "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    if out.exists():
        args.append("--resume")
    _cli(*args)
    return out


def make_pairs(data: Path, work: Path, n: int, seed: int, twin_grid: str):
    """(models, [(star, real store, twin store, compare_nm)]) for every usable real model."""
    models = survey(data, twin_axes_of(twin_grid))
    pairs = []
    for i, m in enumerate(x for x in models if x.usable):
        grid = real_grid(m, work, twin_grid, data)
        real = simulate(str(grid), m, n, seed + i, work / f"real_{m.name}.zarr")
        twin = simulate(twin_grid, m, n, seed + i, work / f"twin_{m.name}.zarr")
        pairs.append((m.name, real, twin, m.compare_nm))
    return models, pairs


def write_models(models: list[RealModel], path: Path) -> None:
    keys = ["name", "source", "teff", "logg", "m_h", "a_m", "usable", "lsf_fwhm_pix",
            "compare_nm", "why"]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        for m in models:
            w.writerow({"name": m.name, "source": m.source, **m.params, "usable": m.usable,
                        "lsf_fwhm_pix": list(m.lsf_fwhm_pix) if m.usable else "",
                        "compare_nm": list(m.compare_nm) if m.usable else "", "why": m.why})


# ---- denoising and the table --------------------------------------------------------------


def denoise(model: Path, store: Path, work: Path) -> Path:
    out = work / f"{model.name}__{store.stem}.zarr"
    if not out.exists():
        _cli("denoise", "--run", str(model), "--data", str(store), "--out", str(out))
    return out


def load(store: Path, den: Path):
    import xarray as xr

    ds = xr.open_zarr(store)
    dd = xr.open_zarr(den)
    return (ds["wave"].values, ds["flux_clean"].values, dd["flux_denoised"].values,
            ds["mask"].values, ds["snr"].values, ds["flux"].values, ds["rv"].values)


def table(models: list[Path], pairs, work: Path) -> list[dict]:
    """Rows per model, pair and S/N bin; ``pairs`` holds (star, real, twin, compare_nm)."""
    rows = []
    for model in models:
        for star, real, twin, (lo, hi) in pairs:
            res = {}
            for kind, store in (("real", real), ("twin", twin)):
                wave, clean, den, mask, snr, flux, rv = load(
                    store, denoise(model, store, work))
                mask = np.where((wave >= lo) & (wave <= hi), mask, 1)
                res[kind] = metrics(wave, clean, den, mask, rv), snr
                res[kind + "_input"] = metrics(wave, clean, flux, mask, rv), snr
            if not np.allclose(res["real"][1], res["twin"][1], rtol=0.2):
                print(f"warning: {real.name} and {twin.name} have different S/N: not twins?")
            snr = res["twin"][1]
            for a, b in zip(SNR_EDGES[:-1], SNR_EDGES[1:], strict=True):
                sel = (snr >= a) & (snr < b)
                if not sel.any():
                    continue
                row = {"model": model.name, "star": star, "real": real.name, "twin": twin.name,
                       "snr_bin": f"{a:g}-{b:g}", "n": int(sel.sum())}
                for kind in ("real", "twin", "real_input"):
                    m = res[kind][0]
                    for k in ("R", "R_line", "kept", "ew_err"):
                        row[f"{k}_{kind}"] = float(np.mean(m[k][sel]))
                row["R_ratio"] = row["R_real"] / row["R_twin"]
                row["kept_ratio"] = row["kept_real"] / row["kept_twin"]
                rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True, type=Path)
    ap.add_argument("--pair", nargs=2, action="append", default=[], type=Path,
                    metavar=("REAL", "TWIN"))
    ap.add_argument("--data", type=Path, help="folder of real model spectra (../shared/data)")
    ap.add_argument("--twin-grid", default="builtin",
                    help="grid of the twins with --data: 'builtin' (default) or a store")
    ap.add_argument("--n", type=int, default=150, help="spectra per star with --data")
    ap.add_argument("--seed", type=int, default=3, help="seed of the first star with --data "
                    "(the next ones count up)")
    ap.add_argument("--work", type=Path, required=True,
                    help="folder for grid stores, simulations and denoised stores")
    ap.add_argument("--out", type=Path, help="CSV of the table")
    args = ap.parse_args(argv)
    if not args.pair and args.data is None:
        ap.error("give --data DIR or at least one --pair REAL TWIN")
    args.work.mkdir(parents=True, exist_ok=True)
    pairs = [(real.name, real, twin, (0.0, np.inf)) for real, twin in args.pair]
    models = []
    if args.data is not None:
        models, more = make_pairs(args.data, args.work, args.n, args.seed, args.twin_grid)
        pairs += more
        for m in models:
            print(f"{m.name}: {'used' if m.usable else 'not used'} ({m.why})")
    rows = table(args.model, pairs, args.work)
    keys = list(rows[0])
    print(" | ".join(keys))
    for r in rows:
        print(" | ".join(f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in keys))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
        if models:
            write_models(models, args.out.with_name(args.out.stem + "_models.csv"))
    return rows


if __name__ == "__main__":
    main()
