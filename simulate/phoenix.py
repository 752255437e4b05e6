"""Reader for the PHOENIX-ACES-AGSS-COND-2011 high-resolution spectra (Husser et al. 2013,
A&A 553, A6), as the Göttingen Spectral Library distributes them (``HiResFITS``).

The layout (as fetched from ``phoenix.astro.physik.uni-goettingen.de/data/HiResFITS/``, and as
public readers such as Starfish's ``grid_tools.download_PHOENIX_models`` name the files)::

    HiResFITS/WAVE_PHOENIX-ACES-AGSS-COND-2011.fits          one wavelength array, vacuum Å
    HiResFITS/PHOENIX-ACES-AGSS-COND-2011/Z-0.0/
        lte03900-4.50-0.0.PHOENIX-ACES-AGSS-COND-2011-HiRes.fits
    HiResFITS/PHOENIX-ACES-AGSS-COND-2011/Z-0.5.Alpha=+0.20/
        lte05800-4.00-0.5.Alpha=+0.20.PHOENIX-ACES-AGSS-COND-2011-HiRes.fits

A flux file's name is ``lte{Teff:05d}-{log g:.2f}{[Fe/H]:+.1f}[.Alpha={[α/Fe]:+.2f}]``: the
``-`` before log g only separates it (log g is 0.0 to 6.0), solar [Fe/H] is written ``-0.0``,
and the ``.Alpha=`` part is left out for [α/Fe] = 0.  The primary HDU holds the surface flux
F_lambda in erg s^-1 cm^-2 cm^-1, one value per wavelength of the wave file; its header's
``PHXTEFF``, ``PHXLOGG``, ``PHXM_H`` and ``PHXALPHA``, where present, must agree with the name.
The wave file is searched next to the flux file and up to two folders above it (the layout
above).  Its grid is not log-uniform (a constant step in Å over the optical), so each spectrum
is interpolated onto a log-uniform grid at the finest native step before any broadening.

Fluxes are returned as surface fluxes per nm (``x 1e-7``), wavelengths as vacuum nm, as the
BOSZ readers do.  The files carry no continuum: the grid store then has none.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from specdenoise.errors import SpecdenoiseError
from specdenoise.simulate import bosz

#: the name of the wavelength file
WAVE_FILE = "WAVE_PHOENIX-ACES-AGSS-COND-2011.fits"
#: nominal resolving power of the HiRes spectra in the optical and near infrared (Husser 2013)
HIRES_R = 500_000
#: erg s-1 cm-2 cm-1 -> erg s-1 cm-2 nm-1
FLUX_SCALE = 1e-7
#: folders above a flux file searched for the wave file
WAVE_SEARCH_DEPTH = 2

_NAME = re.compile(
    r"^lte(?P<teff>\d{5})-(?P<logg>\d\.\d{2})(?P<m_h>[+-]\d\.\d)"
    r"(?:\.Alpha=(?P<a_m>[+-]\d\.\d{2}))?\.PHOENIX-ACES-AGSS-COND-2011-HiRes\.fits$"
)
_HEADER_KEYS = {"teff": "PHXTEFF", "logg": "PHXLOGG", "m_h": "PHXM_H", "a_m": "PHXALPHA"}


@dataclass(frozen=True)
class PhoenixFile:
    """One PHOENIX-ACES HiRes flux file and what its name says (see
    :class:`specdenoise.simulate.readers.ModelFile`)."""

    path: Path
    source: str
    params: dict
    resolution: int
    vturb: float  # 0: not a fixed parameter (PHOENIX-ACES derives it per model, Husser 2013)
    model: str


def parse_phoenix_name(path: str | Path) -> PhoenixFile | None:
    """The file a PHOENIX-ACES HiRes flux-file name describes, or None."""
    path = Path(path)
    m = _NAME.match(path.name)
    if m is None:
        return None
    params = {
        "teff": float(m["teff"]),
        "logg": float(m["logg"]),
        "m_h": float(m["m_h"]) + 0.0,  # "-0.0" is solar
        "a_m": float(m["a_m"]) + 0.0 if m["a_m"] else 0.0,
        "c_m": 0.0,
    }
    return PhoenixFile(path, "phoenix-aces", params, HIRES_R, 0.0, "aces-agss-cond-2011")


def find_wave_file(path: str | Path) -> Path:
    """The wave file for a flux file: in its folder or up to :data:`WAVE_SEARCH_DEPTH` above."""
    path = Path(path)
    for folder in [path.parent, *path.parent.parents][: WAVE_SEARCH_DEPTH + 1]:
        if (folder / WAVE_FILE).is_file():
            return folder / WAVE_FILE
    raise SpecdenoiseError(
        f"{path.name}: {WAVE_FILE} not found in {path.parent} or the {WAVE_SEARCH_DEPTH} "
        "folders above it; put the wave file of the PHOENIX-ACES HiRes release there"
    )


def _fits_primary(path: Path) -> tuple[np.ndarray, dict]:
    from astropy.io import fits
    from astropy.utils.exceptions import AstropyUserWarning

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", AstropyUserWarning)  # a truncated file only warns
            with fits.open(path, memmap=False) as hdul:
                data = np.array(hdul[0].data, dtype=np.float64)
                header = dict(hdul[0].header)
    except (OSError, ValueError, KeyError, IndexError, TypeError, AstropyUserWarning) as exc:
        raise SpecdenoiseError(f"{path.name}: unreadable or truncated FITS ({bosz._short(exc)})"
                               ) from None
    if data.ndim != 1 or data.size < 2:
        raise SpecdenoiseError(f"{path.name}: expected a 1-D array in the primary HDU, "
                               f"found shape {data.shape}")
    if not np.isfinite(data).all():
        raise SpecdenoiseError(f"{path.name}: non-finite values (truncated file?)")
    return data, header


@lru_cache(maxsize=4)
def _wave_nm(path: str, mtime_ns: int) -> np.ndarray:
    wave_a, _ = _fits_primary(Path(path))
    if not np.all(np.diff(wave_a) > 0):
        raise SpecdenoiseError(f"{Path(path).name}: wavelengths are not strictly increasing")
    if not wave_a[0] > bosz.MIN_WAVE_A:
        raise SpecdenoiseError(f"{Path(path).name}: the first wavelength is {wave_a[0]:g}; "
                               "the PHOENIX wave file is in Å")
    return wave_a / 10.0


def native_wave(f: PhoenixFile) -> np.ndarray:
    """Vacuum wavelengths (nm) of a flux file (read from the shared wave file)."""
    wfile = find_wave_file(f.path)
    return _wave_nm(str(wfile), wfile.stat().st_mtime_ns)


def read_flux(f: PhoenixFile) -> np.ndarray:
    """Surface flux (erg s-1 cm-2 nm-1) of one file on :func:`native_wave`, float64."""
    n_wave = native_wave(f).size
    flux, header = _fits_primary(f.path)
    if flux.size != n_wave:
        raise SpecdenoiseError(f"{f.path.name}: {flux.size} fluxes but {WAVE_FILE} has {n_wave} "
                               "wavelengths (truncated file, or a wave file of another release?)")
    for name, key in _HEADER_KEYS.items():
        if key in header and abs(float(header[key]) - f.params[name]) > 1e-3 * max(
                1.0, abs(f.params[name])):
            raise SpecdenoiseError(f"{f.path.name}: header {key} = {header[key]} but the name "
                                   f"says {name} = {f.params[name]:g}; renamed file?")
    return flux * FLUX_SCALE


def output_wave(wave_native: np.ndarray, wave_range: tuple[float, float],
                resolution: float | None = None) -> np.ndarray:
    """Log-uniform vacuum grid (nm) from the first native pixel in ``wave_range``, at the finest
    native ln-step there (coarsened as :func:`specdenoise.simulate.bosz.output_wave` does when
    ``resolution`` asks for it)."""
    lo, hi = wave_range
    inside = wave_native[(wave_native >= lo) & (wave_native <= hi)]
    if inside.size < 2:
        raise SpecdenoiseError(
            f"wave range {lo:g}-{hi:g} nm holds fewer than 2 model pixels "
            f"(models cover {wave_native[0]:g}-{wave_native[-1]:g} nm)")
    step = float(np.min(np.diff(np.log(inside))))
    if resolution is not None:
        step = max(step, 1.0 / (bosz.PIXELS_PER_RESOLUTION_ELEMENT * resolution))
    n = int(math.floor(math.log(inside[-1] / inside[0]) / step + 1e-6)) + 1
    return inside[0] * np.exp(step * np.arange(n))


def read_resampled(f: PhoenixFile, wave_out: np.ndarray,
                   resolution_out: float | None = None) -> tuple[np.ndarray, None]:
    """(flux, None) of one file on ``wave_out`` (vacuum nm), float32, surface flux per nm:
    linearly interpolated in ln lambda; with ``resolution_out``, first interpolated onto a
    log-uniform grid at the finest native step (plus the broadening's margin) and broadened."""
    wave = native_wave(f)
    flux = read_flux(f)
    if wave[0] > wave_out[0] * (1 + 1e-12) or wave[-1] < wave_out[-1] * (1 - 1e-12):
        raise SpecdenoiseError(f"{f.path.name}: covers only {wave[0]:.3f}-{wave[-1]:.3f} nm, "
                               f"the import needs {wave_out[0]:.3f}-{wave_out[-1]:.3f} nm")
    if resolution_out is None or resolution_out >= f.resolution:
        # no broadening: one linear interpolation in ln lambda, native -> output
        out = np.interp(np.log(wave_out), np.log(wave), flux)
    else:
        sigma_ln = 1.0 / resolution_out / bosz.FWHM_PER_SIGMA
        margin = math.exp(6.0 * sigma_ln + 1e-4)
        i0 = max(int(np.searchsorted(wave, wave_out[0] / margin)) - 1, 0)
        i1 = min(int(np.searchsorted(wave, wave_out[-1] * margin)) + 1, wave.size)
        lw = np.log(wave[i0:i1])
        step = float(np.min(np.diff(lw)))
        lw_u = lw[0] + step * np.arange(int(math.floor((lw[-1] - lw[0]) / step)) + 1)
        flux_u = np.interp(lw_u, lw, flux[i0:i1])
        out = bosz.degrade_and_resample(np.exp(lw_u), flux_u[None], wave_out, f.resolution,
                                        resolution_out, f.path.name)[0]
    with np.errstate(over="ignore"):
        flux32 = out.astype(np.float32)
    if not np.isfinite(flux32).all():
        raise SpecdenoiseError(f"{f.path.name}: non-finite flux in the wave range")
    if flux32.min() < 0 or not flux32.max() > 0:
        raise SpecdenoiseError(f"{f.path.name}: negative or zero flux in the wave range")
    return flux32, None


@dataclass(frozen=True)
class PhoenixRelease:
    """PHOENIX-ACES-AGSS-COND-2011 HiRes as a grid reader
    (:class:`specdenoise.simulate.readers.GridReader`)."""

    name: str = "phoenix-aces"
    family: str = "phoenix"
    pattern: str = "PHOENIX-ACES (lte*.PHOENIX-ACES-AGSS-COND-2011-HiRes.fits + " + WAVE_FILE + ")"
    wave_medium: str = "vacuum"
    flux_unit: str = bosz.FLUX_UNIT
    flux_conversion: str = "1e-7 x file value (erg s-1 cm-2 cm-1 -> per nm)"
    has_continuum: bool = False

    def parse(self, path: str | Path) -> PhoenixFile | None:
        return parse_phoenix_name(path)

    def native_wave(self, f: PhoenixFile) -> np.ndarray:
        return native_wave(f)

    def output_wave(self, wave_native: np.ndarray, wave_range: tuple[float, float],
                    resolution: float | None) -> np.ndarray:
        return output_wave(wave_native, wave_range, resolution)

    def read_resampled(self, f: PhoenixFile, wave_out: np.ndarray,
                       resolution: float | None) -> tuple[np.ndarray, None]:
        try:
            return read_resampled(f, wave_out, resolution)
        except SpecdenoiseError:
            raise
        except Exception as exc:  # any other failure to read is still this file's fault
            raise SpecdenoiseError(f"{f.path.name}: unreadable ({bosz._short(exc)})") from None


PHOENIX_ACES = PhoenixRelease()
