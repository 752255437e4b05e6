"""What happens to starlight before it reaches the telescope: Doppler shift, interstellar dust,
and the apparent brightness (an AB magnitude through a named filter).

Pure functions over arrays, NumPy only; the per-spectrum kernels in :mod:`.observe` use the
curves these return, precomputed once on the model's wavelength grid.

Conventions
-----------
* Wavelengths are vacuum, nm; f_lambda in erg s^-1 cm^-2 nm^-1; f_nu in erg s^-1 cm^-2 Hz^-1.
* Doppler: ``lambda_obs = D lambda_rest`` with the relativistic ``D = sqrt((1+beta)/(1-beta))``,
  ``beta = rv / c`` (rv > 0 receding).  The shift conserves the integrated flux,
  ``f_obs(lambda) = f_rest(lambda / D) / D``; the further energy and arrival-rate factors of D
  are absorbed by the magnitude scaling that follows, so they are left out.
* Extinction: ``f_obs = f 10^(-0.4 A_lambda)``, ``A_lambda = E(B-V) * k(lambda)`` with
  ``k = R_V A_lambda/A_V`` from ``dust_extinction`` (Fitzpatrick 1999 ``F99`` or Gordon et al.
  2023 ``G23``), applied in the observer's frame.
* Magnitudes are AB and photon-counting (Fukugita et al. 1996):
  ``m = -2.5 log10( int f_lambda S lambda dlambda / int f_AB c/lambda^2 S lambda dlambda )``.

The filter is wider than the model
----------------------------------
HSC i (``hsc2017-i``) transmits 642-900 nm; model grids for PFS red cover about 700-900 nm, and
about 5 % of the band's photon weight lies below 700 nm.  Rather than dropping that part (a
colour-dependent bias) the spectrum is continued beyond each end of the model by a power law
``f_lambda ~ lambda^beta`` through the mean fluxes of two adjacent ``EDGE_WINDOW_NM``-wide windows
at that end (``beta`` clipped to +-``EDGE_SLOPE_LIMIT``; continua of 3500-7500 K stars have
``beta`` between about -2 and +1 at 700 nm).  Absorption lines in the continued part are not
modelled; a 10 % error in the continued flux moves the magnitude by about 0.005 mag.
"""

from __future__ import annotations

import functools

import numpy as np

from specdenoise.errors import SpecdenoiseError
from specdenoise.simulate.constants import AB_ZEROPOINT_CGS, C_KM_PER_S, C_NM_PER_S

EXTINCTION_LAWS = ("F99", "G23")
DEFAULT_FILTER = "hsc2017-i"
#: width (nm) of each of the two windows at a model end that set the continuing power law
EDGE_WINDOW_NM = 20.0
#: largest |d ln f_lambda / d ln lambda| allowed for the continuing power law
EDGE_SLOPE_LIMIT = 6.0


# --- Doppler ------------------------------------------------------------------------------------


def doppler_factor(rv) -> np.ndarray:
    """Relativistic Doppler factor ``sqrt((1 + beta) / (1 - beta))`` for ``rv`` in km/s."""
    beta = np.asarray(rv, dtype=np.float64) / C_KM_PER_S
    if np.any(np.abs(beta) >= 1):
        raise SpecdenoiseError("radial velocity must be smaller than the speed of light")
    return np.sqrt((1.0 + beta) / (1.0 - beta))


def doppler_shift_pixels(rv, h: float) -> np.ndarray:
    """The Doppler shift in pixels of a log-uniform grid with ln-wavelength step ``h``."""
    return np.log(doppler_factor(rv)) / h


def doppler_shift_numpy(wave: np.ndarray, f_lambda: np.ndarray, rv: float) -> np.ndarray:
    """Reference: f_lambda (n,) on ``wave`` (n,) shifted by ``rv`` km/s, flux conserving.

    The cumulative integral of the rest-frame spectrum over pixel edges (midpoints) is moved to
    ``D * edges`` and linearly interpolated back onto the original edges; differences divided by
    the pixel widths give the mean f_lambda per pixel.  Pixels the shifted spectrum does not
    cover are NaN.  Works on any increasing grid; the kernels fold the shift into the LSF table
    instead (:mod:`.lsf`).
    """
    wave = np.asarray(wave, dtype=np.float64)
    f = np.asarray(f_lambda, dtype=np.float64)
    mid = 0.5 * (wave[1:] + wave[:-1])
    edges = np.concatenate([[2 * wave[0] - mid[0]], mid, [2 * wave[-1] - mid[-1]]])
    cum = np.concatenate([[0.0], np.cumsum(f * np.diff(edges))])
    d = float(doppler_factor(rv))
    cum_obs = np.interp(edges, d * edges, cum, left=np.nan, right=np.nan)
    return np.diff(cum_obs) / np.diff(edges)


# --- extinction ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _extinction_model(law: str, r_v: float):
    from dust_extinction import parameter_averages

    if law not in EXTINCTION_LAWS:
        raise SpecdenoiseError(
            f"unknown extinction law {law!r}; choose one of {', '.join(EXTINCTION_LAWS)}"
        )
    return getattr(parameter_averages, law)(Rv=r_v)


def extinction_curve(wave, law: str = "F99", r_v: float = 3.1) -> np.ndarray:
    """``A_lambda / E(B-V)`` (mag per mag of reddening) at vacuum ``wave`` (nm), any shape.

    ``law`` is ``"F99"`` (Fitzpatrick 1999) or ``"G23"`` (Gordon et al. 2023), both from
    ``dust_extinction`` with ``R_V = r_v``.
    """
    import astropy.units as u

    model = _extinction_model(law, float(r_v))
    wave = np.asarray(wave, dtype=np.float64)
    try:
        a = model(wave.ravel() * u.nm)
    except ValueError:
        raise SpecdenoiseError(
            f"wavelengths {wave.min():.0f}-{wave.max():.0f} nm are outside the range of "
            f"extinction law {law}"
        ) from None
    return r_v * np.asarray(a, dtype=np.float64).reshape(wave.shape)


def extinction_factor(wave, ebv, law: str = "F99", r_v: float = 3.1) -> np.ndarray:
    """Transmission ``10^(-0.4 E(B-V) k(lambda))``; ``ebv`` (n,) and ``wave`` (m,) give (n, m)."""
    k = extinction_curve(wave, law, r_v)
    return 10.0 ** (-0.4 * np.multiply.outer(np.asarray(ebv, dtype=np.float64), k))


# --- filters and magnitudes ---------------------------------------------------------------------


def f_lambda_to_f_nu(wave, f_lambda) -> np.ndarray:
    """f_nu (erg s^-1 cm^-2 Hz^-1) from f_lambda (erg s^-1 cm^-2 nm^-1) at ``wave`` (nm)."""
    wave = np.asarray(wave, dtype=np.float64)
    return np.asarray(f_lambda) * (wave * wave / C_NM_PER_S)


def f_nu_to_f_lambda(wave, f_nu) -> np.ndarray:
    """f_lambda (erg s^-1 cm^-2 nm^-1) from f_nu (erg s^-1 cm^-2 Hz^-1) at ``wave`` (nm)."""
    wave = np.asarray(wave, dtype=np.float64)
    return np.asarray(f_nu) * (C_NM_PER_S / (wave * wave))


class Bandpass:
    """A filter from ``speclite`` by name (e.g. ``hsc2017-i``, ``sdss2010-r``, ``decam2014-z``).

    Attributes
    ----------
    name : the speclite name.
    wave : (m,) nm, the filter's tabulated wavelengths; ``resp`` : (m,) its response.
    """

    def __init__(self, name: str = DEFAULT_FILTER):
        import speclite.filters

        try:
            filt = speclite.filters.load_filter(name)
        except (ValueError, OSError, KeyError):
            raise SpecdenoiseError(
                f"unknown filter {name!r}; give a speclite filter name such as {DEFAULT_FILTER!r}"
            ) from None
        self.name = name
        self.wave = np.asarray(filt.wavelength, dtype=np.float64) / 10.0  # Angstrom -> nm
        self.resp = np.asarray(filt.response, dtype=np.float64)

    @property
    def support(self) -> tuple[float, float]:
        """Range (nm) outside which the response is zero."""
        nz = np.nonzero(self.resp > 0)[0]
        return float(self.wave[max(nz[0] - 1, 0)]), float(self.wave[min(nz[-1] + 1, nz.size)])

    def response(self, wave) -> np.ndarray:
        """Response at ``wave`` (nm), linear between the tabulated points, 0 outside."""
        return np.interp(np.asarray(wave, dtype=np.float64), self.wave, self.resp, 0.0, 0.0)

    def ab_mag(self, wave, f_lambda) -> np.ndarray:
        """AB magnitude of f_lambda (..., n) on ``wave`` (n,) nm (trapezoid rule).

        ``wave`` must cover the filter; continue a model first with :func:`extend_power_law`.
        """
        wave = np.asarray(wave, dtype=np.float64)
        lo, hi = self.support
        if wave[0] > lo or wave[-1] < hi:
            raise SpecdenoiseError(
                f"spectrum covers {wave[0]:.1f}-{wave[-1]:.1f} nm but filter {self.name} spans "
                f"{lo:.1f}-{hi:.1f} nm; extend it first"
            )
        s = self.response(wave)
        num = np.trapezoid(np.asarray(f_lambda) * s * wave, wave, axis=-1)
        den = AB_ZEROPOINT_CGS * C_NM_PER_S * np.trapezoid(s / wave, wave)
        return -2.5 * np.log10(num / den)


def edge_power_law(wave: np.ndarray, f_lambda: np.ndarray, side: str):
    """The power law continuing a spectrum beyond its ``side`` (``"blue"`` or ``"red"``) end.

    Returns ``(level, ln_lambda_ref, beta)``: ``f(lambda) = level exp(beta (ln lambda -
    ln_lambda_ref))``, through the mean fluxes of the two ``EDGE_WINDOW_NM`` windows at that end
    (module docstring).  ``f_lambda`` (..., n) gives arrays of shape (...).
    """
    wave = np.asarray(wave, dtype=np.float64)
    f = np.asarray(f_lambda, dtype=np.float64)
    if side == "blue":
        w1 = wave < wave[0] + EDGE_WINDOW_NM
        w2 = (wave >= wave[0] + EDGE_WINDOW_NM) & (wave < wave[0] + 2 * EDGE_WINDOW_NM)
    else:
        w1 = wave > wave[-1] - EDGE_WINDOW_NM
        w2 = (wave <= wave[-1] - EDGE_WINDOW_NM) & (wave > wave[-1] - 2 * EDGE_WINDOW_NM)
    lw = np.log(wave)
    f1, f2 = f[..., w1].mean(axis=-1), f[..., w2].mean(axis=-1)
    c1, c2 = lw[w1].mean(), lw[w2].mean()
    with np.errstate(divide="ignore", invalid="ignore"):
        beta = np.where((f1 > 0) & (f2 > 0), np.log(f2 / f1) / (c2 - c1), 0.0)
    beta = np.clip(np.nan_to_num(beta), -EDGE_SLOPE_LIMIT, EDGE_SLOPE_LIMIT)
    return np.maximum(f1, 0.0), c1, beta


def extend_power_law(wave, f_lambda, lo: float, hi: float):
    """Reference: continue f_lambda (n,) on log-uniform ``wave`` (n,) to cover [lo, hi] nm.

    The grid is extended with its own ln-wavelength step; new pixels get the edge power laws
    (:func:`edge_power_law`).  Returns ``(wave_ext, f_ext)``.
    """
    wave = np.asarray(wave, dtype=np.float64)
    f = np.asarray(f_lambda, dtype=np.float64)
    h = np.log(wave[-1] / wave[0]) / (wave.size - 1)
    nb = max(int(np.ceil(np.log(wave[0] / lo) / h)) + 1, 0)
    nr = max(int(np.ceil(np.log(hi / wave[-1]) / h)) + 1, 0)
    lw_b = np.log(wave[0]) - h * np.arange(nb, 0, -1)
    lw_r = np.log(wave[-1]) + h * np.arange(1, nr + 1)
    lev_b, ref_b, beta_b = edge_power_law(wave, f, "blue")
    lev_r, ref_r, beta_r = edge_power_law(wave, f, "red")
    f_b = lev_b * np.exp(beta_b * (lw_b - ref_b))
    f_r = lev_r * np.exp(beta_r * (lw_r - ref_r))
    return np.exp(np.concatenate([lw_b, np.log(wave), lw_r])), np.concatenate([f_b, f, f_r])


# --------------------------------------------------------------------------- a source's f_nu


def source_fnu(wave, mag, spectrum=None, filter_name=DEFAULT_FILTER, flux_unit="flam"):
    """f_nu (erg s^-1 cm^-2 Hz^-1) at ``wave`` (nm, (n,)) of a source of AB magnitude ``mag``.

    Without ``spectrum`` the source is flat in f_nu. ``spectrum`` is a text file of two
    columns, wavelength (nm) and flux (``flux_unit`` ``"flam"``: f_lambda, ``"fnu"``: f_nu; any
    scale), comma- or whitespace-separated, ``#`` comments; it is scaled so that its AB
    magnitude through ``filter_name`` (a speclite filter) is ``mag`` and sampled at ``wave`` by
    linear interpolation (no line-spread function). Returns an (n,) array (``specdenoise etc``).
    """
    if mag is None:
        raise SpecdenoiseError("give --mag (AB magnitude of the source)")
    if spectrum is None:
        return np.full(wave.shape, AB_ZEROPOINT_CGS * 10.0 ** (-0.4 * mag))
    try:
        data = np.loadtxt(spectrum, delimiter=None if _whitespace(spectrum) else ",",
                          comments="#", ndmin=2)
    except (OSError, ValueError) as exc:
        raise SpecdenoiseError(f"cannot read spectrum {spectrum}: need two numeric columns "
                               f"(wavelength nm, flux) ({exc})") from None
    if data.shape[1] < 2 or data.shape[0] < 2:
        raise SpecdenoiseError(f"{spectrum}: need two columns (wavelength nm, flux)")
    lam, flux = data[:, 0], data[:, 1]
    order = np.argsort(lam)
    lam, flux = lam[order], flux[order]
    if lam[0] > wave[0] or lam[-1] < wave[-1]:
        raise SpecdenoiseError(f"{spectrum} covers {lam[0]:.1f}-{lam[-1]:.1f} nm; it must "
                               f"cover {wave[0]:.0f}-{wave[-1]:.0f} nm")
    flam = flux if flux_unit == "flam" else f_nu_to_f_lambda(lam, flux)
    m0 = _ab_mag(lam, flam, filter_name, spectrum)
    # f_lambda taken as erg/s/cm^2/nm (m0 refers to that scale)
    fnu = f_lambda_to_f_nu(wave, np.interp(wave, lam, flam))
    return fnu * 10.0 ** (-0.4 * (mag - m0))


def _whitespace(path) -> bool:
    try:
        with open(path) as fh:
            for line in fh:
                if line.strip() and not line.lstrip().startswith("#"):
                    return "," not in line
    except OSError as exc:
        raise SpecdenoiseError(f"cannot read spectrum {path}: {exc.strerror}") from None
    return True


def _ab_mag(lam_nm, flam, filter_name, path) -> float:
    """AB magnitude through a speclite filter of f_lambda given per nm in arbitrary units."""
    band = Bandpass(filter_name)
    lo, hi = band.support
    if lam_nm[0] > lo or lam_nm[-1] < hi:
        raise SpecdenoiseError(f"{path}: cannot integrate through {filter_name}: the spectrum "
                               f"covers {lam_nm[0]:.1f}-{lam_nm[-1]:.1f} nm, the filter "
                               f"{lo:.1f}-{hi:.1f} nm")
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = band.ab_mag(lam_nm, flam)
    if not np.isfinite(mag):
        raise SpecdenoiseError(f"{path}: zero or negative flux through {filter_name}")
    return float(mag)
