"""A wider nuisance model (issue 19, point 6): what real instruments add that the grid does not.

Four effects, each a number in the config's ``observe`` table, each off (0) by default so that
simulations made without them are unchanged bit for bit:

``continuum`` (default 0; e.g. 0.1)
    A smooth continuum-shape variation beyond the calibration distortion: the clean spectrum
    times ``1 + sum_l c_l P_l(x)`` (Legendre orders 1..``continuum_order``, default 8, over the
    detector), scaled so that max |factor - 1| is drawn uniformly up to ``continuum``.  It is
    part of the truth (``flux_clean``), like the distortion: a denoiser must keep it.
``lsf_scatter`` (default 0; e.g. 0.1 for +-10 %)
    The line-spread function's width varies by fibre: each spectrum's FWHM is the configured one
    times ``1 + s``, ``s ~ U(-lsf_scatter, +lsf_scatter)``.  The observer's table is built for the
    narrowest FWHM (``1 - lsf_scatter``); each spectrum is then convolved on the detector with
    the Gaussian that widens it to its own (variances add; the FWHM at the arm's centre is used
    across the arm).  Part of the truth.
``sky_residual`` (default 0; e.g. 0.01)
    Sky subtraction leaves a residual proportional to the sky: ``b * sky / conversion`` added to
    the observed flux, ``b ~ N(0, sky_residual)`` per spectrum (a fraction of the sky's counts,
    so it sits at the sky lines).  Not part of the truth: the denoiser should remove it.
``telluric_residual`` (default 0; e.g. 0.02)
    Telluric correction leaves residual absorption: the observed flux times
    ``1 - a * T(lambda)``, ``a ~ N(0, telluric_residual)`` per spectrum, with ``T`` a normalised
    band template (:func:`telluric_template`): the O2 A band (head at 759.4 nm, P branch to
    about 768 nm) and the H2O band at 810-835 nm (vacuum).  Not part of the truth.

The draws come from their own generator, seeded from the observer's ``rng`` only when some
effect is on, so the stream of the default model is untouched.  Per spectrum the values drawn
are returned (``lsf_scale`` = 1 + s, ``continuum_amp``, ``sky_residual``, ``telluric_residual``)
and the simulate stage records them as coordinates.
"""

from __future__ import annotations

import numpy as np

from specdenoise.simulate import calibration
from specdenoise.simulate.lsf import FWHM_PER_SIGMA

#: the config keys (``observe.*``) and their defaults: the model as it was without them
DEFAULTS = {"continuum": 0.0, "continuum_order": 8, "lsf_scatter": 0.0, "sky_residual": 0.0,
            "telluric_residual": 0.0}
#: per-spectrum values recorded when an effect is on
RECORDED = {"continuum": "continuum_amp", "lsf_scatter": "lsf_scale",
            "sky_residual": "sky_residual", "telluric_residual": "telluric_residual"}


def settings(obs: dict) -> dict:
    """The nuisance settings of an ``observe`` table (missing keys at their defaults)."""
    return {k: obs.get(k, v) for k, v in DEFAULTS.items()}


def enabled(s: dict) -> list[str]:
    """The effects switched on, in :data:`RECORDED` order."""
    return [k for k in RECORDED if s[k] > 0]


def telluric_template(wave: np.ndarray) -> np.ndarray:
    """Normalised telluric absorption shape T (max 1) at vacuum wavelengths ``wave`` (nm).

    An approximation at PFS resolution, not a line-by-line transmission: the O2 A band as a
    sharp head at 759.4 nm and a P branch of lines 0.33 nm apart fading to 768 nm, the H2O band
    at 813-835 nm as lines 0.25 nm apart under a smooth envelope peaking near 822 nm.  Each line
    a Gaussian of 0.06 nm sigma (the LSF broadens it further).
    """
    wave = np.asarray(wave, dtype=np.float64)
    t = np.zeros_like(wave)

    def lines(centres, depths, sigma=0.06):
        for c, d in zip(centres, depths, strict=True):
            near = np.abs(wave - c) < 6 * sigma
            t[near] += d * np.exp(-0.5 * ((wave[near] - c) / sigma) ** 2)

    r = np.arange(759.4, 761.0, 0.12)  # R branch, crowded at the head
    lines(r, np.full(r.size, 0.9))
    p = np.arange(761.2, 768.0, 0.33)  # P branch
    lines(p, 0.8 * np.exp(-(p - 761.2) / 3.0))
    w = np.arange(813.0, 835.0, 0.25)  # H2O
    lines(w, 0.5 * np.exp(-0.5 * ((w - 822.0) / 5.0) ** 2))
    return t / t.max() if t.max() > 0 else t


class Nuisance:
    """The nuisance effects for one observer: what is the same for every spectrum.

    ``wave``: detector wavelengths (n_det,) nm; ``s``: :func:`settings`; ``fwhm_mid``: the
    configured LSF FWHM at the arm's centre, pixels.
    """

    def __init__(self, wave: np.ndarray, s: dict, fwhm_mid: float):
        self.s = s
        self.on = enabled(s)
        self.basis = calibration.distortion_basis(wave, int(s["continuum_order"]))
        self.telluric = telluric_template(wave)
        self.sigma_mid = fwhm_mid / FWHM_PER_SIGMA

    @staticmethod
    def base_fwhm_factor(s: dict) -> float:
        """The FWHM factor the observer's table is built for (the narrowest fibre)."""
        return 1.0 - s["lsf_scatter"]

    def draw(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        """Per-spectrum values (n,) of every effect that is on, in a fixed order."""
        s, out = self.s, {}
        if s["continuum"] > 0:
            raw, amp = calibration.draw(rng, n, self.basis.shape[0], s["continuum"])
            out["continuum_amp"], out["_continuum_raw"] = amp, raw
        if s["lsf_scatter"] > 0:
            out["lsf_scale"] = 1.0 + rng.uniform(-s["lsf_scatter"], s["lsf_scatter"], n)
        if s["sky_residual"] > 0:
            out["sky_residual"] = rng.normal(0.0, s["sky_residual"], n)
        if s["telluric_residual"] > 0:
            out["telluric_residual"] = rng.normal(0.0, s["telluric_residual"], n)
        return out

    def apply_truth(self, fnu: np.ndarray, v: dict) -> np.ndarray:
        """The clean f_nu (n, n_det) with the continuum shape and each fibre's LSF."""
        if "continuum_amp" in v:
            _, factor = calibration.scale(v["_continuum_raw"], v["continuum_amp"], self.basis)
            fnu = fnu * factor
        if "lsf_scale" in v:
            from scipy.ndimage import gaussian_filter1d

            base = self.base_fwhm_factor(self.s)
            extra = self.sigma_mid * np.sqrt(np.maximum(v["lsf_scale"] ** 2 - base**2, 0.0))
            fnu = np.array([gaussian_filter1d(row, e, mode="nearest") if e > 1e-3 else row
                            for row, e in zip(fnu, extra, strict=True)])
        return fnu

    def observed_residual(self, fnu: np.ndarray, sky: np.ndarray, conversion: np.ndarray,
                          v: dict) -> np.ndarray | None:
        """What is added to the observed (not the clean) f_nu, (n, n_det), or None."""
        r = None
        if "sky_residual" in v:
            r = v["sky_residual"][:, None] * np.asarray(sky) / conversion
        if "telluric_residual" in v:
            t = -v["telluric_residual"][:, None] * self.telluric[None, :] * fnu
            r = t if r is None else r + t
        return r
