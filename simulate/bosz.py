"""Readers for the BOSZ model spectra (Bohlin et al. 2017; Mészáros et al. 2024).

Pure functions, no Dask: :func:`specdenoise.stage_grid.import_grid` runs them in parallel,
through the two readers at the end of this module (:data:`BOSZ2017`, :data:`BOSZ2024`; see
:mod:`specdenoise.simulate.readers`).

Two releases are understood, told apart by their file names:

BOSZ 2017 (ATLAS9/SYNTHE, vacuum wavelengths)
    ``am{m|p}ZZ c{m|p}CC o{m|p}AA t{Teff} g{10 logg} v20 modrt0 b{R} rs.fits|.asc|.asc.bz2``,
    e.g. ``amp03cp00op00t5750g45v20modrt0b5000rs.fits``. Abundances are written ×10 and rounded
    (``p03`` = +0.25, ``m08`` = −0.75), so they are decoded to the nearest 0.25 dex. FITS files
    hold the columns ``Wavelength`` (Å), ``SpecificIntensity`` and ``Continuum`` in HDU 1; the
    ASCII files hold the same three columns. The wavelengths are printed with 3 decimals, too few
    at high resolution, so :func:`rebuild_bosz2017_wave` recomputes them: SYNTHE works on the grid
    ``lambda_j = (1 + 1/300000)**j`` nm and the broadened files keep every ``300000 / R / 2``-th
    point (two pixels per resolution element). The rebuilt grid is checked against the column.

BOSZ 2024 (MARCS/ATLAS9 + Synspec)
    ``bosz2024_{mp|ms|ap}_t{Teff}_g{±logg}_m{±M}_a{±α}_c{±C}_v{vmic}_r{R}_resam.txt.gz`` with two
    columns (flux, continuum); the wavelengths (Å) are in ``bosz2024_wave_r{R}.txt`` next to them.
    Above 200 nm these wavelengths are in air (the Ca II triplet minima sit at 8497.9, 8541.9 and
    8662.0 Å) and are converted to vacuum with :func:`air_to_vacuum`.

Fluxes in both releases are Eddington fluxes H_lambda per Å; they are returned as surface fluxes
per nm, ``F_lambda = 4 pi H_lambda × 10`` (``FLUX_UNIT``). Wavelengths returned are vacuum, nm.
"""

from __future__ import annotations

import bz2
import gzip
import math
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from specdenoise.errors import SpecdenoiseError
from specdenoise.simulate.constants import air_to_vacuum

#: resolving power of SYNTHE's native wavelength grid (BOSZ 2017)
SYNTHE_R = 300_000
#: unit of the fluxes returned by the readers
FLUX_UNIT = "erg s-1 cm-2 nm-1 (surface flux)"
#: factor from a file's Eddington flux per Å to surface flux per nm
FLUX_SCALE = 4.0 * math.pi * 10.0
#: FWHM of a Gaussian in units of its sigma
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
#: output pixels per resolution element when ``--resolution`` coarsens the grid
PIXELS_PER_RESOLUTION_ELEMENT = 3.0

_NAME_2017 = re.compile(
    r"^am?(?P<m_h>[mp]\d\d)c(?P<c_m>[mp]\d\d)o(?P<a_m>[mp]\d\d)"
    r"t(?P<teff>\d+)g(?P<logg>\d+)v(?P<vturb>\d+)modrt(?P<vrot>\d+)b(?P<res>\d+)rs"
    r"\.(?P<fmt>fits|asc|asc\.bz2)$"
)
_NUM = r"[+-]?\d+(?:\.\d+)?"
_NAME_2024 = re.compile(
    rf"^bosz2024_(?P<model>mp|ms|ap)_t(?P<teff>\d+)_g(?P<logg>{_NUM})_m(?P<m_h>{_NUM})"
    rf"_a(?P<a_m>{_NUM})_c(?P<c_m>{_NUM})_v(?P<vturb>{_NUM})_r(?P<res>\d+)_resam\.txt\.gz$"
)


@dataclass(frozen=True)
class BoszFile:
    """One BOSZ model file and what its name says.

    ``params`` maps ``teff`` (K), ``logg``, ``m_h``, ``a_m``, ``c_m`` (dex) to values;
    ``resolution`` is the file's resolving power R; ``vturb`` the microturbulence (km/s).
    """

    path: Path
    source: str  # "bosz2017" or "bosz2024"
    params: dict
    resolution: int
    vturb: float
    model: str  # 2017: "atlas9"; 2024: mp (MARCS plane-parallel), ms (spherical), ap (ATLAS9)
    fmt: str  # "fits", "asc", "asc.bz2" or "txt.gz"


def _quarter_dex(code: str) -> float:
    """``p03`` -> +0.25, ``m08`` -> -0.75: tenths of dex, rounded to the 0.25 dex grid."""
    sign = -1.0 if code[0] == "m" else 1.0
    return sign * round(int(code[1:]) / 10.0 * 4.0) / 4.0


def parse_bosz_name(path: str | Path) -> BoszFile | None:
    """Parse a BOSZ 2017 or 2024 file name; ``None`` when the name is neither."""
    path = Path(path)
    m = _NAME_2017.match(path.name)
    if m:
        params = {
            "teff": float(m["teff"]),
            "logg": int(m["logg"]) / 10.0,
            "m_h": _quarter_dex(m["m_h"]),
            "a_m": _quarter_dex(m["a_m"]),
            "c_m": _quarter_dex(m["c_m"]),
        }
        return BoszFile(
            path, "bosz2017", params, int(m["res"]), int(m["vturb"]) / 10.0, "atlas9", m["fmt"]
        )
    m = _NAME_2024.match(path.name)
    if m:
        params = {k: float(m[k]) for k in ("teff", "logg", "m_h", "a_m", "c_m")}
        return BoszFile(
            path, "bosz2024", params, int(m["res"]), float(m["vturb"]), m["model"], "txt.gz"
        )
    return None


# --------------------------------------------------------------------------- wavelengths


def rebuild_bosz2017_wave(column: np.ndarray, resolution: int, name: str = "file") -> np.ndarray:
    """Recompute a BOSZ 2017 wavelength column (printed to 3 decimals) exactly; returns nm.

    The column may be in Å (as in the archive files) or nm; whichever matches is used. The grid is
    ``exp((j0 + k i) ln(1 + 1/300000))`` nm with ``k = 300000 / (2 R)`` (1 for the native files)
    and the offset ``j0`` fitted to the column. Raises :class:`SpecdenoiseError` when no such grid
    reproduces the column to within the printing precision plus a tenth of a pixel.
    """
    column = np.asarray(column, dtype=np.float64)
    if column.size < 2 or not np.all(np.diff(column) > 0):
        raise SpecdenoiseError(f"{name}: wavelength column is not strictly increasing")
    ln_ratio = math.log1p(1.0 / SYNTHE_R)
    k = max(1.0, SYNTHE_R / (2.0 * resolution))
    steps = k * np.arange(column.size)
    worst = np.inf
    # the log grid has no scale, so the unit is told by the range: BOSZ spans 100 nm - 32 µm
    units = [u for u in (0.1, 1.0) if 99.0 <= column[0] * u and column[-1] * u <= 32500.0]
    for to_nm in units or [0.1]:  # Å, then nm
        wave = column * to_nm
        j0 = round(float(np.mean(np.log(wave) / ln_ratio - steps)))
        rebuilt = np.exp((j0 + steps) * ln_ratio)
        tol = 0.0005 * to_nm * 1.01 + 0.1 * rebuilt * k * ln_ratio
        dev = np.abs(rebuilt - wave) / tol
        if dev.max() <= 1.0:
            return rebuilt
        worst = min(worst, float(dev.max()))
    raise SpecdenoiseError(
        f"{name}: wavelength column does not match the SYNTHE log grid for R={resolution} "
        f"(worst point {worst:.3g}x the tolerance); not a BOSZ 2017 file of that resolution?"
    )


def output_wave(
    wave_native: np.ndarray, wave_range: tuple[float, float], resolution: float | None = None
) -> np.ndarray:
    """The log-uniform vacuum grid (nm) an import resamples every spectrum onto.

    It starts at the first native pixel inside ``wave_range`` and keeps the native step (so
    for BOSZ 2017 it *is* the native grid), coarsened to ``PIXELS_PER_RESOLUTION_ELEMENT`` pixels
    per FWHM when ``resolution`` is lower than the native sampling supports.
    """
    lo, hi = wave_range
    inside = wave_native[(wave_native >= lo) & (wave_native <= hi)]
    if inside.size < 2:
        raise SpecdenoiseError(
            f"wave range {lo:g}-{hi:g} nm holds fewer than 2 model pixels "
            f"(models cover {wave_native[0]:g}-{wave_native[-1]:g} nm)"
        )
    step = math.log(inside[-1] / inside[0]) / (inside.size - 1)
    if resolution is not None:
        step = max(step, 1.0 / (PIXELS_PER_RESOLUTION_ELEMENT * resolution))
    n = int(math.floor(math.log(inside[-1] / inside[0]) / step + 1e-6)) + 1
    return inside[0] * np.exp(step * np.arange(n))


# --------------------------------------------------------------------------- readers


def _read_columns(stream, name: str, ncol: int) -> np.ndarray:
    """Whitespace-separated numeric columns from a text stream, with every row complete."""
    import pandas as pd  # fast C parser; an xarray dependency

    try:
        table = pd.read_csv(
            stream, sep=r"\s+", header=None, comment="#", dtype=np.float64, engine="c"
        )
    except (EOFError, OSError, ValueError, pd.errors.ParserError) as exc:
        raise SpecdenoiseError(f"{name}: unreadable or truncated ({_short(exc)})") from None
    data = table.to_numpy()
    if data.ndim != 2 or data.shape[1] != ncol or data.shape[0] < 2:
        raise SpecdenoiseError(f"{name}: expected {ncol} numeric columns, found shape {data.shape}")
    if not np.isfinite(data).all():
        raise SpecdenoiseError(f"{name}: missing or non-numeric values (truncated file?)")
    return data


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def read_bosz2017_fits(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(wavelength column as printed, H_lambda, continuum) from a BOSZ 2017 FITS file."""
    from astropy.io import fits
    from astropy.utils.exceptions import AstropyUserWarning

    path = Path(path)
    try:
        with warnings.catch_warnings():
            # astropy only warns about a truncated file and then reads what is there
            warnings.simplefilter("error", AstropyUserWarning)
            with fits.open(path, memmap=False) as hdul:
                data = hdul[1].data
                cols = [
                    np.array(data[c], dtype=np.float64)
                    for c in ("Wavelength", "SpecificIntensity", "Continuum")
                ]
    except (OSError, ValueError, KeyError, IndexError, TypeError, AstropyUserWarning) as exc:
        raise SpecdenoiseError(
            f"{path.name}: unreadable or truncated FITS ({_short(exc)})"
        ) from None
    if not all(np.isfinite(c).all() for c in cols):
        raise SpecdenoiseError(f"{path.name}: non-finite values in the FITS table")
    return cols[0], cols[1], cols[2]


def read_bosz2017_ascii(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(wavelength column as printed, H_lambda, continuum) from a BOSZ 2017 ``.asc[.bz2]``."""
    path = Path(path)
    opener = bz2.open if path.name.endswith(".bz2") else open
    try:
        with opener(path, "rt") as fh:
            data = _read_columns(fh, path.name, 3)
    except (EOFError, OSError) as exc:
        raise SpecdenoiseError(f"{path.name}: unreadable or truncated ({_short(exc)})") from None
    return data[:, 0], data[:, 1], data[:, 2]


#: BOSZ 2024 wavelength files are log-uniform to printing precision (0.11 % in the R=5000
#: file); a file whose log step varies more was shifted or edited
LOG_STEP_TOLERANCE = 0.01
#: no model atmosphere reaches below this (Å); a file starting lower is not in Å
MIN_WAVE_A = 100.0


@lru_cache(maxsize=8)
def _bosz2024_wave(path: str, mtime_ns: int) -> np.ndarray:
    name = Path(path).name
    with open(path) as fh:
        wave = _read_columns(fh, name, 1)[:, 0]
    check_wave_column(wave, name)
    return wave


def check_wave_column(wave_a: np.ndarray, name: str) -> None:
    """Refuse a BOSZ 2024 wavelength column that is not in Å, not increasing or not the
    log-uniform grid the models are sampled on (e.g. shifted by a constant)."""
    if wave_a.size < 2:
        raise SpecdenoiseError(f"{name}: fewer than 2 wavelengths")
    if not np.all(np.diff(wave_a) > 0):
        i = int(np.nonzero(~(np.diff(wave_a) > 0))[0][0])
        raise SpecdenoiseError(f"{name}: wavelengths are not strictly increasing (row {i + 2}: "
                               f"{wave_a[i + 1]:g} after {wave_a[i]:g})")
    if not wave_a[0] > MIN_WAVE_A:
        raise SpecdenoiseError(f"{name}: the first wavelength is {wave_a[0]:g}, below "
                               f"{MIN_WAVE_A:g} Å; BOSZ 2024 wavelength files are in Å (this one "
                               "looks like nm or µm)")
    step = np.diff(np.log(wave_a))
    dev = np.abs(step / np.median(step) - 1)
    if dev.max() > LOG_STEP_TOLERANCE:
        i = int(np.argmax(dev))
        raise SpecdenoiseError(
            f"{name}: wavelengths are not log-uniform (the step at {wave_a[i]:g} Å is "
            f"{dev[i]:.1%} off the median); the file was shifted or edited, restore the "
            "original")


def bosz2024_wave_file(path: str | Path, resolution: int) -> Path:
    """Where the wavelength file of a BOSZ 2024 spectrum lives (same directory)."""
    return Path(path).parent / f"bosz2024_wave_r{resolution}.txt"


def read_bosz2024_wave(path: str | Path, resolution: int) -> np.ndarray:
    """Vacuum wavelengths (nm) of the BOSZ 2024 spectra at ``resolution`` stored next to
    ``path``."""
    wfile = bosz2024_wave_file(path, resolution)
    if not wfile.is_file():
        raise SpecdenoiseError(
            f"{Path(path).name}: wavelength file {wfile.name} is missing from {wfile.parent}"
        )
    wave_air = _bosz2024_wave(str(wfile), wfile.stat().st_mtime_ns)
    return air_to_vacuum(wave_air, "AA") / 10.0


def read_bosz2024(path: str | Path, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """(H_lambda, continuum) rows of a BOSZ 2024 ``.txt.gz``, checked against its wave file."""
    path = Path(path)
    n_wave = read_bosz2024_wave(path, resolution).size
    try:
        with gzip.open(path, "rt") as fh:
            data = _read_columns(fh, path.name, 2)
    except (EOFError, OSError) as exc:
        raise SpecdenoiseError(f"{path.name}: unreadable or truncated ({_short(exc)})") from None
    if data.shape[0] != n_wave:
        raise SpecdenoiseError(
            f"{path.name}: {data.shape[0]} rows but its wavelength file has {n_wave} "
            "(truncated file?)"
        )
    return data[:, 0], data[:, 1]


def read_native(f: BoszFile) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vacuum wavelength nm, surface flux, continuum) of one file on its own grid."""
    if f.source == "bosz2017":
        reader = read_bosz2017_fits if f.fmt == "fits" else read_bosz2017_ascii
        column, flux, cont = reader(f.path)
        wave = rebuild_bosz2017_wave(column, f.resolution, f.path.name)
    else:
        wave = read_bosz2024_wave(f.path, f.resolution)
        flux, cont = read_bosz2024(f.path, f.resolution)
    return wave, flux * FLUX_SCALE, cont * FLUX_SCALE


def native_wave(f: BoszFile) -> np.ndarray:
    """Vacuum wavelengths (nm) of one file (for 2024 only the shared wave file is read)."""
    if f.source == "bosz2024":
        return read_bosz2024_wave(f.path, f.resolution)
    return read_native(f)[0]


# --------------------------------------------------------------------------- resampling


def degrade_and_resample(
    wave: np.ndarray,
    spectra: np.ndarray,
    wave_out: np.ndarray,
    resolution_in: float,
    resolution_out: float | None = None,
    name: str = "spectrum",
) -> np.ndarray:
    """Resample (k, n) ``spectra`` from ``wave`` onto ``wave_out``, optionally broadening first.

    ``wave`` must be (nearly) log-uniform; broadening is a Gaussian in ln(lambda) of
    ``sigma = sqrt(1/R_out^2 - 1/R_in^2) / 2.3548`` (FWHM = lambda / R), applied on the native
    grid. Resampling is linear in ln(lambda), exact when ``wave_out`` pixels are native pixels.
    """
    from scipy.ndimage import gaussian_filter1d

    spectra = np.atleast_2d(np.asarray(spectra, dtype=np.float64))
    sigma_ln = 0.0
    if resolution_out is not None and resolution_out < resolution_in:
        sigma_ln = math.sqrt(resolution_out**-2 - resolution_in**-2) / FWHM_PER_SIGMA
    step = math.log(wave[-1] / wave[0]) / (wave.size - 1)
    margin = 6.0 * sigma_ln + 3.0 * step
    lo, hi = wave_out[0] * math.exp(-margin), wave_out[-1] * math.exp(margin)
    if wave[0] > wave_out[0] * (1 + 1e-12) or wave[-1] < wave_out[-1] * (1 - 1e-12):
        raise SpecdenoiseError(
            f"{name}: covers only {wave[0]:.3f}-{wave[-1]:.3f} nm, the import needs "
            f"{wave_out[0]:.3f}-{wave_out[-1]:.3f} nm (truncated file?)"
        )
    i0 = max(int(np.searchsorted(wave, lo)) - 1, 0)
    i1 = min(int(np.searchsorted(wave, hi)) + 1, wave.size)
    wave, spectra = wave[i0:i1], spectra[:, i0:i1]
    if sigma_ln > 0:
        step = math.log(wave[-1] / wave[0]) / (wave.size - 1)
        spectra = gaussian_filter1d(spectra, sigma_ln / step, axis=-1, mode="nearest", truncate=5)
    x, x_out = np.log(wave), np.log(wave_out)
    return np.stack([np.interp(x_out, x, s) for s in spectra])


def read_resampled(
    f: BoszFile, wave_out: np.ndarray, resolution_out: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(flux, continuum) of one file on ``wave_out`` (vacuum nm), float32, surface flux per nm.

    Any problem with the file raises :class:`SpecdenoiseError` naming it.
    """
    wave, flux, cont = read_native(f)
    if flux.size != wave.size or cont.size != wave.size:
        raise SpecdenoiseError(f"{f.path.name}: columns of different lengths")
    out = degrade_and_resample(
        wave, np.stack([flux, cont]), wave_out, f.resolution, resolution_out, f.path.name
    )
    with np.errstate(over="ignore"):  # beyond float32 becomes inf, refused just below
        flux32, cont32 = out[0].astype(np.float32), out[1].astype(np.float32)
    if not (np.isfinite(flux32).all() and np.isfinite(cont32).all()):
        raise SpecdenoiseError(f"{f.path.name}: non-finite flux in the wave range (or beyond "
                               "float32, ~3e38)")
    if flux32.min() < 0 or cont32.min() < 0:
        raise SpecdenoiseError(f"{f.path.name}: negative flux in the wave range; model "
                               "surface fluxes are positive")
    if not flux32.max() > 0 or not cont32.max() > 0:
        raise SpecdenoiseError(f"{f.path.name}: flux is zero throughout the wave range")
    return flux32, cont32


# --------------------------------------------------------------------------- the readers


@dataclass(frozen=True)
class BoszRelease:
    """One BOSZ release as a grid reader (:class:`specdenoise.simulate.readers.GridReader`)."""

    name: str  # "bosz2017" or "bosz2024", as :func:`parse_bosz_name` tells them apart
    pattern: str
    wave_medium: str
    family: str = "bosz"
    flux_unit: str = FLUX_UNIT
    flux_conversion: str = "4 pi x 10 x file value (Eddington flux per A -> surface flux per nm)"

    def parse(self, path: str | Path) -> BoszFile | None:
        f = parse_bosz_name(path)
        return f if f is not None and f.source == self.name else None

    def native_wave(self, f: BoszFile) -> np.ndarray:
        return native_wave(f)

    def output_wave(self, wave_native: np.ndarray, wave_range: tuple[float, float],
                    resolution: float | None) -> np.ndarray:
        return output_wave(wave_native, wave_range, resolution)

    def read_resampled(self, f: BoszFile, wave_out: np.ndarray,
                       resolution: float | None) -> tuple[np.ndarray, np.ndarray]:
        try:
            return read_resampled(f, wave_out, resolution)
        except SpecdenoiseError:
            raise
        except Exception as exc:  # any other failure to read is still this file's fault
            raise SpecdenoiseError(f"{f.path.name}: unreadable ({_short(exc)})") from None


BOSZ2017 = BoszRelease(
    name="bosz2017", pattern="BOSZ 2017 (am...b{R}rs.fits|.asc|.asc.bz2)", wave_medium="vacuum")
BOSZ2024 = BoszRelease(
    name="bosz2024", pattern="BOSZ 2024 (bosz2024_*_resam.txt.gz)",
    wave_medium="air above 200 nm, converted to vacuum (Morton 2000 / Ciddor 1996)")
