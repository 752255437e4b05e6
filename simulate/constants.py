"""Physical constants and unit conversions, taken from astropy once, kept as plain floats.

Kernels elsewhere in :mod:`specdenoise.simulate` import these floats and never touch
``astropy.units.Quantity`` (too slow inside per-spectrum code).  Values that are conventions
rather than physics (the AB zero point) say so.
"""

from __future__ import annotations

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
