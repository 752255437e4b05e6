"""Flux-calibration distortion and median normalisation: the one definition (NumPy reference).

Everything that distorts or normalises a spectrum -- the observation chain
(:mod:`.observe`), the training loader (:mod:`specdenoise.train.calibration`, the same maths
in torch, tested against this module) and the template-fit baseline -- takes its coordinates,
basis and formulas from here.

Distortion
    ``d(lambda) = 1 + sum_{l=1..L} c_l P_l(x)``, Legendre polynomials of orders 1..L over the
    detector, ``x`` running linearly in wavelength from -1 at the first pixel to +1 at the
    last. A draw takes ``L`` standard-normal raw coefficients and an amplitude
    ``a ~ U(0, amplitude)``, then scales the raw polynomial so that ``max |d - 1| = a`` over
    the detector. So ``amplitude`` bounds the whole distortion a spectrum carries.

Normalisation
    A spectrum and everything in its units (clean flux, sigma) are divided by one factor,
    ``norm = median(flux) / MEDIAN``, so the noisy flux has median ``MEDIAN`` = 0.5. A spectrum
    whose noisy median is not positive (pure noise around zero) uses its clean median.

Who owns the distortion: the simulation draws it once per spectrum, as part of what is
observed (it multiplies the clean flux, the noise and sigma alike), and records the scaled
coefficients in the dataset (``calib_c1`` ... ``calib_cL``). Training uses the stored
distortion as it is (``distortion="stored"``), or replaces it by a fresh draw every epoch
(``"fresh"``: divide out the stored one, multiply a new one); either way a spectrum carries
exactly one distortion of at most its amplitude.
"""

from __future__ import annotations

import numpy as np
from numpy.polynomial import legendre

#: the median of every normalised noisy spectrum
MEDIAN = 0.5
#: highest Legendre order of the distortion by default (orders 1..3 are drawn)
ORDER = 3


def detector_x(wave: np.ndarray) -> np.ndarray:
    """The distortion's coordinate: wavelength mapped linearly onto [-1, 1], shape (n_det,)."""
    wave = np.asarray(wave, dtype=np.float64)
    return 2.0 * (wave - wave[0]) / (wave[-1] - wave[0]) - 1.0


def legendre_basis(x: np.ndarray, order: int = ORDER, *, constant: bool = False) -> np.ndarray:
    """Legendre polynomials at ``x``: P_1..P_order (P_0..P_order with ``constant``).

    Returns (order, n) or, with ``constant``, (order + 1, n) float64.
    """
    first = 0 if constant else 1
    if order < first:
        return np.zeros((0, np.size(x)))
    eye = np.eye(order + 1)
    return np.stack([legendre.legval(x, eye[k]) for k in range(first, order + 1)])


def distortion_basis(wave: np.ndarray, order: int = ORDER) -> np.ndarray:
    """P_1..P_order over the detector whose pixel wavelengths are ``wave``: (order, n_det)."""
    return legendre_basis(detector_x(wave), order)


def draw(rng: np.random.Generator, n: int, order: int, amplitude: float):
    """Raw coefficients (n, order) ~ N(0, 1) and amplitudes (n,) ~ U(0, amplitude).

    Drawn in this order from ``rng``; :func:`scale` turns them into a distortion.
    """
    return rng.standard_normal((n, order)), rng.uniform(0.0, amplitude, size=n)


def scale(raw_coef: np.ndarray, amp: np.ndarray, basis: np.ndarray):
    """Scale raw coefficients so that max |d - 1| over the detector equals ``amp``.

    Returns ``(coef (n, L), d (n, n_det))`` with ``d = 1 + coef @ basis`` (computed as
    ``1 + c * (raw @ basis)``, the order of operations the Numba kernel uses).
    """
    poly = np.asarray(raw_coef) @ basis
    peak = np.max(np.abs(poly), axis=1) if poly.shape[1] else np.zeros(len(poly))
    c = np.where(peak > 0, np.asarray(amp) / np.where(peak > 0, peak, 1.0), 0.0)
    return raw_coef * c[:, None], 1.0 + c[:, None] * poly


def distortion(coef: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Calibration factor d (n, n_det) from scaled coefficients (n, L)."""
    return 1.0 + np.asarray(coef) @ basis


def norm_factor(flux: np.ndarray, fallback: np.ndarray | None = None) -> np.ndarray:
    """Per-row factor (n,) that brings the median of ``flux`` (n, n_det) to :data:`MEDIAN`.

    Rows whose median is not positive use the median of ``fallback`` (e.g. the clean flux);
    rows where that is not positive either keep factor 1.
    """
    med = np.median(flux, axis=1)
    bad = ~(med > 0)
    if fallback is not None and bad.any():
        med[bad] = np.median(np.asarray(fallback)[bad], axis=1)
        bad = ~(med > 0)
    return np.where(bad, 1.0, med / MEDIAN)
