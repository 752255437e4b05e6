"""The atmosphere above Maunakea: airmass, extinction, sky continuum and moonlight.

Every function takes wavelengths in nm (vacuum) and angles in degrees, scalars or arrays that
broadcast; none imports anything heavier than NumPy.  Sky brightness is returned as photon
surface brightness, photons s^-1 m^-2 arcsec^-2 nm^-1, *above* the instrument.

Sources
-------
* Airmass ``X = (1 - 0.96 sin^2 z)^-1/2``: a plane-parallel atmosphere with a curvature term,
  the form used by Krisciunas & Schaefer (1991, PASP 103, 1033, eq. 3) and the PFS ETC.
* Continuum extinction: the Maunakea median curve (CFHT Observer's Manual; Boulade 1988, CFHT
  Bulletin 19, 16), linear between 0.10 mag/airmass at 700 nm, 0.07 at 800 nm, 0.05 at 900 nm.
* Telluric absorption: a smooth band model of the O2 A band and the H2O bands between 700 and
  900 nm -- soft-edged boxes in optical depth, linear in airmass -- whose centres, widths and
  depths were fitted to the PSF-smoothed Kitt Peak transmission implied by the PFS ETC's
  conversion factors; it matters for a few per cent of the pixels only.
* Sky continuum: the dark-sky continuum of the PFS ETC (a fit to J. Gunn's spectrum,
  modified by K. Yabe 2015), in AB-like magnitudes per arcsec^2.
* Moonlight: Krisciunas & Schaefer (1991) -- scattered moonlight in the V band from lunar phase
  angle, Moon-target separation, and the zenith distances of Moon and target -- with the PFS ETC's
  colour model (a Wien solar spectrum times ``lambda^-7`` for the Rayleigh part and
  ``lambda^-4.3`` for the aerosol part, both normalised at 550 nm).
"""

from __future__ import annotations

import numpy as np

from specdenoise.simulate.constants import DEG_TO_RAD, MAG_TO_TAU, PHOTONS_PER_ERG_1NM


def airmass(zenith) -> np.ndarray:
    """Airmass ``(1 - 0.96 sin^2 z)^-1/2`` for zenith angle ``z`` in degrees."""
    s = np.sin(np.asarray(zenith, dtype=np.float64) * DEG_TO_RAD)
    return 1.0 / np.sqrt(1.0 - 0.96 * s * s)


def extinction_coefficient(wave) -> np.ndarray:
    """Continuum extinction at Maunakea, mag per airmass (valid 600-1000 nm)."""
    return np.interp(np.asarray(wave, dtype=np.float64),
                     [600.0, 700.0, 800.0, 900.0, 1000.0], [0.11, 0.10, 0.07, 0.05, 0.05])


#: telluric bands: (centre nm, half width nm, peak optical depth at airmass 1, edge softness nm)
_TELLURIC_BANDS = (
    (719.03, 1.99, 0.089, 0.57),  # H2O
    (727.36, 4.62, 0.050, 0.62),  # H2O
    (760.59, 0.86, 0.935, 0.31),  # O2 A band, head and R branch
    (763.54, 1.02, 0.780, 1.98),  # O2 A band, P branch
    (816.38, 1.67, 0.088, 1.97),  # H2O
    (823.13, 6.81, 0.057, 5.99),  # H2O
)


def telluric_transmission(wave, airmass_) -> np.ndarray:
    """Smoothed telluric line absorption at PFS MR resolution, dimensionless.

    Each band is a soft-edged top hat in optical depth scaled linearly with airmass.
    """
    wave = np.asarray(wave, dtype=np.float64)
    am = np.asarray(airmass_, dtype=np.float64)
    tau = np.zeros(np.broadcast(wave, am).shape)
    for centre, half, depth, soft in _TELLURIC_BANDS:
        x = (np.abs(wave - centre) - half) / soft
        tau = tau + depth * 0.5 * (1.0 - np.tanh(x))
    return np.exp(-tau * am)


def transmission(wave, zenith, telluric: bool = True) -> np.ndarray:
    """Atmospheric transmission for a source at zenith angle ``zenith`` (degrees)."""
    am = airmass(zenith)
    t = 10.0 ** (-0.4 * extinction_coefficient(wave) * am)
    if telluric:
        t = t * telluric_transmission(wave, am)
    return t


def sky_continuum(wave) -> np.ndarray:
    """Dark-sky continuum at airmass 1 outside the atmosphere's absorption, photons/s/m^2/"^2/nm.

    The PFS ETC's default model (``sky_type`` continuum 6): a quadratic in wavelength for the
    surface brightness in magnitudes, ``m = 24.316 - 5.199e-3 l + 1.465e-6 l^2 - 0.55
    exp(-0.005 (l - 594)^2) - 6.14656e9 / l^4`` above 600 nm, turned into f_nu by
    ``0.01089 10^(0.4 (22.5 - m)) 1e6 / l^2`` (1e-11 erg/s/m^2/"^2/nm) and corrected by
    ``1.774 - 1.0228e-3 l`` below 800 nm.  Multiply by airmass and transmission for the sky seen.
    """
    lam = np.asarray(wave, dtype=np.float64)
    blue = lam <= 600.0
    mag = (np.where(blue, 27.166, 24.316) + np.where(blue, -1.419e-2, -5.199e-3) * lam
           + np.where(blue, 8.541e-6, 1.465e-6) * lam**2
           - 0.55 * np.exp(-0.005 * (lam - 594.0) ** 2) - 6.14656e9 / lam**4)
    cont = 0.01089 * 10.0 ** (0.4 * (22.5 - mag)) * 1e6 / lam**2
    cont = cont * np.where(lam > 800.0, 1.0, 1.77400498 - 1.02278215e-3 * lam)
    return cont * 1e-11 * PHOTONS_PER_ERG_1NM * lam


def moon_brightness_v(moon_zenith, moon_separation, moon_phase, zenith, k_v=0.12) -> np.ndarray:
    """Scattered moonlight at the target in the V band, nanoLamberts (Krisciunas & Schaefer 1991).

    ``moon_phase``: 0 new, 0.25 quarter, 0.5 full (only the fractional part is used); the
    lunar phase angle is ``alpha = 360 |phase - 0.5|`` degrees.  Eq. 20 of K&S gives the Moon's
    illuminance ``I* = 10^(-0.4 (3.84 + 0.026 |alpha| + 4e-9 alpha^4))`` (with the opposition
    surge below 7 deg); eq. 21 the scattering function ``f(rho) = 10^5.36 (1.06 + cos^2 rho) +
    10^(6.15 - rho/40)``; eq. 15 ``B = f(rho) I* 10^(-0.4 k X_moon) (1 - 10^(-0.4 k X))``.
    Returns 0 where the Moon is below the horizon (``moon_zenith >= 90``).  The Rayleigh and Mie
    parts are returned separately, shape of the broadcast inputs: ``(b_rayleigh, b_mie)``.
    """
    mz = np.asarray(moon_zenith, dtype=np.float64)
    rho = np.asarray(moon_separation, dtype=np.float64)
    phase = np.asarray(moon_phase, dtype=np.float64)
    phase = phase - np.floor(phase)
    alpha = 360.0 * np.abs(phase - 0.5)
    istar = 10.0 ** (-0.4 * (3.84 + 0.026 * alpha + 4e-9 * alpha**4))
    istar = np.where(alpha < 7.0, istar * (1.35 - 0.05 * alpha), istar)
    up = mz < 90.0
    x_moon = airmass(np.where(up, mz, 0.0))
    x_tgt = airmass(zenith)
    common = istar * 10.0 ** (-0.4 * k_v * x_moon) * (1.0 - 10.0 ** (-0.4 * k_v * x_tgt))
    common = np.where(up, common, 0.0)
    f_r = 2.29e5 * (1.06 + np.cos(rho * DEG_TO_RAD) ** 2)
    f_m = 10.0 ** (6.15 - rho / 40.0)
    return f_r * common, f_m * common


def moon_colour(wave) -> tuple[np.ndarray, np.ndarray]:
    """Colour of the Rayleigh and Mie moonlight relative to 550 nm (PFS ETC colour model).

    A 5800 K Wien solar spectrum ``1 / (exp(2480/l) - 1)`` (l in nm) times ``(l/550)^-7``
    (Rayleigh ~ l^-4 per photon on an f_nu spectrum) or ``(l/550)^-4.3`` (aerosols).
    """
    lam = np.asarray(wave, dtype=np.float64)
    sun = (np.exp(2480.0 / 550.0) - 1.0) / (np.exp(2480.0 / lam) - 1.0)
    return sun * (lam / 550.0) ** -7.0, sun * (lam / 550.0) ** -4.3


#: nanoLambert -> photons/s/m^2/arcsec^2/nm at 550 nm: a V = 0 star per arcsec^2 is
#: 3.408e10 nL (K&S 1991) and gives 5.48e10 photons/s/m^2 per unit ln(lambda).
NL_TO_PHOTONS_550 = 5.48e10 / 3.408e10 / 550.0


def moon_continuum(wave, moon_zenith, moon_separation, moon_phase, zenith) -> np.ndarray:
    """Moonlight surface brightness, photons/s/m^2/arcsec^2/nm, shape (n, m) for (n,) conditions.

    Already attenuated along both paths (K&S eq. 15); do not multiply by transmission again.
    """
    b_r, b_m = moon_brightness_v(*(np.atleast_1d(np.asarray(a, dtype=np.float64))
                                   for a in (moon_zenith, moon_separation, moon_phase, zenith)))
    c_r, c_m = moon_colour(wave)
    return NL_TO_PHOTONS_550 * (b_r[:, None] * c_r[None, :] + b_m[:, None] * c_m[None, :])


def line_extinction(wave, airmass_) -> np.ndarray:
    """Continuum extinction factor ``exp(-0.4 ln10 k X)`` for emission from above the absorber."""
    return np.exp(-MAG_TO_TAU * extinction_coefficient(wave) * np.asarray(airmass_))
