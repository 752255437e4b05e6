"""Physical constants and unit conversions, taken from astropy once, kept as plain floats.

Kernels elsewhere in :mod:`specdenoise.simulate` import these floats and never touch
``astropy.units.Quantity`` (too slow inside per-spectrum code).  Values that are conventions
rather than physics (the AB zero point) say so. :func:`air_to_vacuum` is the one air-to-vacuum
wavelength conversion (line lists, BOSZ 2024 wavelengths).
"""

from __future__ import annotations

import numpy as np
from astropy import constants as _const
from astropy import units as _u

#: speed of light, nm s^-1
C_NM_PER_S: float = float(_const.c.to_value(_u.nm / _u.s))
#: speed of light, km s^-1
C_KM_PER_S: float = float(_const.c.to_value(_u.km / _u.s))
#: Planck constant times speed of light, erg nm (photon energy = HC_ERG_NM / lambda[nm])
HC_ERG_NM: float = float((_const.h * _const.c).to_value(_u.erg * _u.nm))
#: photons per erg for a photon of 1 nm; photons per erg at lambda = PHOTONS_PER_ERG_1NM * lambda
PHOTONS_PER_ERG_1NM: float = 1.0 / HC_ERG_NM
#: h c / k_B in cm K (second radiation constant), for Boltzmann factors of term values in cm^-1
HC_OVER_K_CM_K: float = float((_const.h * _const.c / _const.k_B).to_value(_u.cm * _u.K))
#: arcseconds per microradian (a fibre radius in um over a focal length in m gives urad)
ARCSEC_PER_URAD: float = float((1.0 * _u.urad).to_value(_u.arcsec))
#: degrees to radians
DEG_TO_RAD: float = float((1.0 * _u.deg).to_value(_u.rad))
#: square centimetres per square metre
CM2_PER_M2: float = float((1.0 * _u.m**2).to_value(_u.cm**2))
#: AB magnitude zero point, erg s^-1 cm^-2 Hz^-1.  The "3631 Jy" convention (Oke & Gunn 1983
#: rounded), the value the PFS ETC uses; astropy's ``ABmag`` differs from it by 6e-5.
AB_ZEROPOINT_CGS: float = float((3631.0 * _u.Jy).to_value(_u.erg / _u.s / _u.cm**2 / _u.Hz))
#: magnitudes to natural-log optical depth: tau = MAG_TO_TAU * mag (= 0.4 ln 10)
MAG_TO_TAU: float = 0.4 * 2.302585092994046

#: wavelengths below this (Å) are vacuum wavelengths by convention, above it air
AIR_VACUUM_LIMIT_A = 2000.0


def air_to_vacuum(wave_air: np.ndarray, unit: str | None = None) -> np.ndarray:
    """Vacuum wavelengths of air wavelengths, in the unit given, for dry air at 15 °C, 101 325 Pa.

    ``unit``: ``"AA"`` or ``"nm"``; None takes nm when every wavelength is below 2000 (as a
    number), Å otherwise. Wavelengths below ``AIR_VACUUM_LIMIT_A`` (2000 Å) are vacuum already
    and come back unchanged.

    The refractive index is Morton (2000, ApJS 130, 403) eq. 8 built on Ciddor (1996), in the
    form inverted for air wavelengths by N. Piskunov for VALD: ``n = 1 + 8.336624212083e-5 +
    2.408926869968e-2 / (130.1065924522 - s^2) + 1.599740894897e-4 / (38.92568793293 - s^2)``
    with ``s = 10^4 / lambda_air[Å]``; it is accurate to ~1e-8 in n.
    """
    wave_air = np.asarray(wave_air, dtype=np.float64)
    if unit is None:
        unit = "nm" if np.nanmax(wave_air) < AIR_VACUUM_LIMIT_A else "AA"
    if unit not in ("AA", "nm"):
        raise ValueError(f"unit must be 'AA' or 'nm', not {unit!r}")
    wave_a = wave_air * (10.0 if unit == "nm" else 1.0)
    s2 = (1e4 / wave_a) ** 2  # (µm^-1)^2
    n = (
        1.0
        + 8.336624212083e-5
        + 2.408926869968e-2 / (130.1065924522 - s2)
        + 1.599740894897e-4 / (38.92568793293 - s2)
    )
    return np.where(wave_a >= AIR_VACUUM_LIMIT_A, wave_air * n, wave_air)
