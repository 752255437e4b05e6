"""The project's PFS exposure-time-calculator noise model for the medium-resolution red arm.

:class:`BuiltinNoise` turns observing conditions into, per detector pixel and per exposure,

* ``conversion`` -- object electrons per unit f_nu (f_nu in erg s^-1 cm^-2 Hz^-1),
* ``sky``        -- sky electrons,
* ``variance``   -- noise variance in e^-2 without the object's own shot noise,

the three vectors the PFS ETC (``gsetc``; Subaru-PFS/spt_ExposureTimeCalculator) writes.  The
observation chain multiplies a spectrum in f_nu by ``conversion`` to get the object counts, adds
those counts to ``variance`` and draws the noise.

Physics, in the ETC's layering (constants -> atmosphere -> instrument -> sky -> noise):

    counts = f_nu T_atm(lambda) EE(seeing, lambda, field) f_trace(lambda) (lambda / hc) t
             A_eff(lambda, field) (c dl / lambda^2)
    sky    = [X (lines e^(-k X) + continuum T_atm) + moon] dl A_eff t pi R_fib^2 f_trace,1
    Var    = A [ sky + phi^2 N max3(sky)^2 + delta mean(sky) w p/sep + (dark t + RN^2) w ]

with X the airmass, ``EE`` the fibre aperture fraction of a point source, ``f_trace`` the share of
the light inside the 5-pixel extraction box (``f_trace,1`` with what the neighbouring fibres'
sky spills in), phi = 0.01 the sky-subtraction floor (N exposures; the floor does not average
down), delta = 0.02 diffuse stray light, w = 5, p/sep = 15/100 and A = 1.015 the ETC's
empirical MR red noise factor (DESIGN.md, "Instrument facts").

Everything that depends on wavelength only -- the sky-line spectrum convolved with the
spectrograph PSF, throughput, trace fractions, continuum and moonlight colours -- is computed once
in the constructor; :meth:`BuiltinNoise.evaluate` only scales those vectors per spectrum (airmass,
vignetting, fibre size, aperture fraction at a few wavelength nodes, Moon), a few tens of
microseconds per spectrum.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import numba
import numpy as np
from numpy.typing import ArrayLike

from specdenoise.errors import SpecdenoiseError
from specdenoise.schema import OBSERVING
from specdenoise.simulate import atmosphere, pfs, skylines
from specdenoise.simulate.constants import C_NM_PER_S, CM2_PER_M2, MAG_TO_TAU, PHOTONS_PER_ERG_1NM

#: sky-subtraction systematic floor per exposure (fraction of the local sky)
SKY_SUB_FLOOR = 0.01
#: diffuse stray light (fraction of the mean sky, spread over the detector)
STRAY_LIGHT = 0.02

#: the conditions a noise model is given, by name, in the order of the one table of them
#: (:data:`specdenoise.schema.OBSERVING`: names, units, ranges, defaults)
CONDITIONS = tuple(c.name for c in OBSERVING)
BACKENDS = ("numba", "numpy")


@runtime_checkable
class NoiseModel(Protocol):
    """What the observer needs of a noise model (register one in
    :data:`specdenoise.simulate.engine.NOISE_MODELS`).

    ``wave`` : (n_det,) float64, the detector's vacuum wavelengths, nm.

    ``evaluate(conditions, *, backend="numba")`` : ``conditions`` maps each name of
    :data:`CONDITIONS` (units in :data:`specdenoise.schema.OBSERVING`) to a scalar or an (n,)
    array and may hold other names, which a model ignores unless it uses them; ``backend`` is
    ``"numba"`` or ``"numpy"`` (the NumPy reference of the same maths, where a model has one;
    one without may ignore it).  Returns a mapping of float64 (n, n_det) arrays:
    ``conversion`` (e^- per exposure per erg s^-1 cm^-2 Hz^-1), ``sky`` (e^- per exposure) and
    ``variance`` (e^-2 per exposure, the object's own shot noise excluded).
    :func:`read_conditions` turns the mapping into arrays and checks it.
    """

    wave: np.ndarray

    def evaluate(self, conditions: Mapping[str, ArrayLike], /, *,
                 backend: str = "numba") -> Mapping[str, np.ndarray]: ...


def read_conditions(conditions: Mapping[str, ArrayLike] | None = None,
                    named: Mapping[str, ArrayLike] | None = None,
                    names: tuple[str, ...] = CONDITIONS) -> dict[str, np.ndarray]:
    """``names`` taken from ``conditions`` and the keyword-style ``named`` (which wins), as
    float64 arrays of one common shape (n,), in the order of ``names``.

    Scalars broadcast; other names in the mappings are ignored; a missing ``n_exp`` is one
    exposure, any other missing name is an error.
    """
    given = {**(conditions or {}), **(named or {})}
    given.setdefault("n_exp", 1)
    missing = [k for k in names if k not in given]
    if missing:
        raise SpecdenoiseError(f"the noise model needs the observing condition(s) "
                               f"{', '.join(missing)}")
    arrs = [np.atleast_1d(np.asarray(given[k], dtype=np.float64)) for k in names]
    if any(a.ndim != 1 for a in arrs):
        raise SpecdenoiseError("observing conditions must be scalars or 1-D arrays")
    try:
        out = np.broadcast_arrays(*arrs)
    except ValueError:
        raise SpecdenoiseError(
            "observing conditions must be scalars or arrays of one common length, got lengths "
            + ", ".join(str(a.size) for a in arrs)) from None
    return {k: np.ascontiguousarray(a) for k, a in zip(names, out, strict=True)}


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise SpecdenoiseError(f"unknown backend {backend!r}; choose numba or numpy")
    return backend


def max3(sky: np.ndarray) -> np.ndarray:
    """Largest value over each pixel and its two neighbours, along the last axis."""
    out = sky.copy()
    np.maximum(out[..., 1:], sky[..., :-1], out=out[..., 1:])
    np.maximum(out[..., :-1], sky[..., 1:], out=out[..., :-1])
    return out


def etc_variance(sky, exp_time, n_exp, inst: pfs.Instrument = pfs.PFS_RED_MR,
                 floor: float = SKY_SUB_FLOOR, stray: float = STRAY_LIGHT) -> np.ndarray:
    """Per-exposure noise variance without the object, e^-2 per pixel (DESIGN.md formula).

    ``sky`` (n, m) e^- per exposure; ``exp_time`` s and ``n_exp`` scalars or (n,).
    """
    sky = np.atleast_2d(sky)
    t = np.atleast_1d(np.asarray(exp_time, dtype=np.float64))[:, None]
    n = np.atleast_1d(np.asarray(n_exp, dtype=np.float64))[:, None]
    sep_ratio = inst.pixel_size / inst.trace_sep
    var = (sky + floor**2 * n * max3(sky) ** 2
           + stray * sky.mean(axis=-1, keepdims=True) * inst.width * sep_ratio
           + (inst.dark * t + inst.read_noise**2) * inst.width)
    return inst.noise_adjust * var


def snr(signal, variance, n_exp=1) -> np.ndarray:
    """S/N after ``n_exp`` exposures: ``sqrt(N) s / sqrt(s + Var)``.

    ``signal`` e^- per exposure, ``variance`` the per-exposure variance *without* the object (as
    :meth:`BuiltinNoise.evaluate` returns it); the object's Poisson variance is added here.
    """
    s = np.asarray(signal, dtype=np.float64)
    v = np.asarray(variance, dtype=np.float64)
    n = np.asarray(n_exp, dtype=np.float64)
    if n.ndim == 1 and s.ndim == 2:
        n = n[:, None]
    return np.sqrt(n) * s / np.sqrt(np.maximum(s, 0.0) + v)


def line_spectrum(inst: pfs.Instrument, wave_lines, photons) -> np.ndarray:
    """Deposit emission lines onto the detector with the spectrograph PSF, per pixel, (npix,).

    ``photons`` in any unit per line; the result is the same unit per pixel.  Lines within half
    a 32-pixel window of the arm contribute.
    """
    npix, win = inst.npix, 32
    pos = (np.asarray(wave_lines) - inst.lmin) / inst.dlambda
    ok = (pos > -win / 2) & (pos < npix + win / 2 - 1)
    pos, wl, ph = pos[ok], np.asarray(wave_lines)[ok], np.asarray(photons)[ok]
    iref = np.clip(np.floor(pos - (win / 2 - 0.5)).astype(np.int64), 0, npix - win)
    frac = pfs.psf_window(inst, wl, pos - iref, win)
    out = np.zeros(npix)
    np.add.at(out, iref[:, None] + np.arange(win)[None, :], ph[:, None] * frac)
    return out


@numba.njit(cache=True, fastmath=True)
def _assemble_kernel(x, vig_t, omega, b_r, b_m, ee_nodes, t, n_exp, obj, lines, cont, moon_r,
                     moon_m, ext_tab, trans_tab, x0, dx, ee_i0, ee_w, floor, stray_w, dark_w,
                     read_w, adjust, conversion, sky, variance):  # pragma: no cover - compiled
    """Fused per-pixel assembly of conversion, sky and variance (see ``_assemble_numpy``).

    The extinction factors ``exp(-X tau(lambda))`` come from tables over airmass, linear in X
    between rows ``dx`` apart (relative error < 2e-4 even in the O2 A band).
    """
    n, m = conversion.shape
    nx = ext_tab.shape[0]
    for i in range(n):
        xi = x[i]
        u = (xi - x0) / dx
        r = min(max(int(u), 0), nx - 2)
        wx = u - r
        total = 0.0
        for j in range(m):
            ext = ext_tab[r, j] + wx * (ext_tab[r + 1, j] - ext_tab[r, j])
            trans = trans_tab[r, j] + wx * (trans_tab[r + 1, j] - trans_tab[r, j])
            k = ee_i0[j]
            ee = ee_nodes[i, k] + ee_w[j] * (ee_nodes[i, k + 1] - ee_nodes[i, k])
            conversion[i, j] = obj[j] * ee * trans * vig_t[i]
            s = vig_t[i] * omega[i] * (xi * (lines[j] * ext + cont[j] * trans)
                                       + b_r[i] * moon_r[j] + b_m[i] * moon_m[j])
            sky[i, j] = s
            total += s
        const = stray_w * total / m + dark_w * t[i] + read_w
        f2n = floor * floor * n_exp[i]
        for j in range(m):
            mx = sky[i, j]
            if j > 0 and sky[i, j - 1] > mx:
                mx = sky[i, j - 1]
            if j < m - 1 and sky[i, j + 1] > mx:
                mx = sky[i, j + 1]
            variance[i, j] = adjust * (sky[i, j] + f2n * mx * mx + const)


class BuiltinNoise:
    """PFS ETC-like noise model computed by the project (no files read).

    Parameters
    ----------
    instrument : the arm description (default :data:`specdenoise.simulate.pfs.PFS_RED_MR`)
    sky_sub_floor, stray_light : the ETC's systematic terms (0.01, 0.02)
    n_ee_nodes : wavelengths at which the fibre aperture fraction is computed per spectrum

    Attributes
    ----------
    wave : (npix,) float64, vacuum nm
    """

    def __init__(self, instrument: pfs.Instrument = pfs.PFS_RED_MR, *,
                 sky_sub_floor: float = SKY_SUB_FLOOR, stray_light: float = STRAY_LIGHT,
                 n_ee_nodes: int = 8):
        inst = self.instrument = instrument
        self.sky_sub_floor, self.stray_light = sky_sub_floor, stray_light
        wave = self.wave = inst.wave()
        dl = inst.dlambda
        coarse = np.linspace(wave[0], wave[-1], 65)
        frac0 = np.interp(wave, coarse, pfs.trace_fraction(inst, coarse, 0))
        frac1 = np.interp(wave, coarse, pfs.trace_fraction(inst, coarse, 1))
        area_thr = inst.area * pfs.throughput(inst, wave)  # m^2, before vignetting
        # object: e- s^-1 per f_nu, before EE, vignetting and atmosphere
        self._obj = (PHOTONS_PER_ERG_1NM * wave * area_thr * CM2_PER_M2 * frac0
                     * C_NM_PER_S * dl / wave**2)
        sky_geom = area_thr * frac1  # m^2; times t pi R^2 per spectrum
        lw, lr = skylines.sky_lines()
        self._lines = line_spectrum(inst, lw, lr * skylines.RAYLEIGH_TO_PHOTONS_ARCSEC2) \
            * sky_geom
        self._cont = atmosphere.sky_continuum(wave) * dl * sky_geom
        c_r, c_m = atmosphere.moon_colour(wave)
        self._moon_r = atmosphere.NL_TO_PHOTONS_550 * c_r * dl * sky_geom
        self._moon_m = atmosphere.NL_TO_PHOTONS_550 * c_m * dl * sky_geom
        self._tau_k = MAG_TO_TAU * atmosphere.extinction_coefficient(wave)
        self._tau_tell = -np.log(atmosphere.telluric_transmission(wave, 1.0))
        self._tau_obj = self._tau_k + self._tau_tell
        # airmass 1 .. 5 (zenith angle up to 90 deg) for the kernel's extinction tables
        self._x_grid = np.linspace(1.0, 5.0, 81)
        self._ext_tab = np.exp(-self._x_grid[:, None] * self._tau_k)
        self._trans_tab = np.exp(-self._x_grid[:, None] * self._tau_obj)
        # aperture fraction: computed at nodes, linear in wavelength in between
        self._ee_nodes = np.linspace(wave[0], wave[-1], n_ee_nodes)
        eye = np.eye(n_ee_nodes)
        self._ee_interp = np.stack([np.interp(wave, self._ee_nodes, e) for e in eye])
        pos = np.interp(wave, self._ee_nodes, np.arange(n_ee_nodes, dtype=np.float64))
        self._ee_i0 = np.minimum(np.floor(pos).astype(np.int64), n_ee_nodes - 2)
        self._ee_w = pos - self._ee_i0

    def evaluate(self, conditions: Mapping[str, ArrayLike] | None = None, /, *,
                 backend: str = "numba", **named) -> dict[str, np.ndarray]:
        """Conversion, sky and variance per pixel for each set of conditions.

        Parameters
        ----------
        conditions : mapping by name (or the same names as keywords, ``named``) of scalars or
            equal-length (n,) arrays:

            seeing : FWHM at 800 nm, arcsec
            zenith : target zenith angle, degrees
            field_angle : distance from the PFS field centre, degrees (0 .. 0.65)
            moon_zenith : Moon zenith angle, degrees; >= 90 means the Moon is down
            moon_separation : Moon-target angle, degrees
            moon_phase : 0 new, 0.25 quarter, 0.5 full
            exp_time : seconds per exposure
            n_exp : number of exposures (enters the sky-subtraction floor; default 1)

        backend : ``"numba"``, the fused kernel (default), or ``"numpy"``, the NumPy reference
            of the same maths

        Returns
        -------
        dict of float64 (n, npix) arrays: ``conversion`` (e^- per exposure per erg s^-1 cm^-2
        Hz^-1), ``sky`` (e^- per exposure), ``variance`` (e^-2 per exposure, object excluded).
        """
        inst = self.instrument
        c = read_conditions(conditions, named)
        seeing, zenith, fa = c["seeing"], c["zenith"], c["field_angle"]
        mz, msep, mph = c["moon_zenith"], c["moon_separation"], c["moon_phase"]
        t, n_exp = c["exp_time"], c["n_exp"]
        if np.any(seeing <= 0) or np.any(t <= 0) or np.any(n_exp < 1):
            raise SpecdenoiseError("seeing and exposure time must be positive and n_exp >= 1")
        if np.any((zenith < 0) | (zenith >= 90)):
            raise SpecdenoiseError("zenith angle must be in [0, 90) degrees")
        x = atmosphere.airmass(zenith)
        vig_t = pfs.field_interp(inst.vignetting, fa, inst.field_radius) * t
        omega = np.pi * pfs.fiber_radius_arcsec(inst, fa) ** 2
        ee_nodes = pfs.encircled_energy(inst, self._ee_nodes, seeing, fa)
        b_r, b_m = atmosphere.moon_brightness_v(mz, msep, mph, zenith)
        if check_backend(backend) == "numpy":
            return self._assemble_numpy(x, vig_t, omega, b_r, b_m, ee_nodes, t, n_exp)
        shape = (x.size, self.wave.size)
        out = {k: np.empty(shape) for k in ("conversion", "sky", "variance")}
        _assemble_kernel(x, vig_t, omega, b_r, b_m, ee_nodes, t, n_exp, self._obj, self._lines,
                         self._cont, self._moon_r, self._moon_m, self._ext_tab, self._trans_tab,
                         self._x_grid[0], self._x_grid[1] - self._x_grid[0], self._ee_i0,
                         self._ee_w, self.sky_sub_floor,
                         self.stray_light * inst.width * inst.pixel_size / inst.trace_sep,
                         inst.width * inst.dark, inst.width * inst.read_noise**2,
                         inst.noise_adjust, out["conversion"], out["sky"], out["variance"])
        return out

    def _assemble_numpy(self, x, vig_t, omega, b_r, b_m, ee_nodes, t, n_exp):
        """NumPy reference of :func:`_assemble_kernel`."""
        x, vig_t, omega = x[:, None], vig_t[:, None], omega[:, None]
        ee = ee_nodes @ self._ee_interp
        ext = np.exp(-x * self._tau_k)
        trans = np.exp(-x * self._tau_obj)
        conversion = self._obj * ee * trans * vig_t
        sky = vig_t * omega * (x * (self._lines * ext + self._cont * trans)
                               + b_r[:, None] * self._moon_r + b_m[:, None] * self._moon_m)
        variance = etc_variance(sky, t, n_exp, self.instrument, self.sky_sub_floor,
                                self.stray_light)
        return {"conversion": conversion, "sky": sky, "variance": variance}
