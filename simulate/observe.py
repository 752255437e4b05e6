"""The per-spectrum observation chain: model spectrum in, PFS red-arm MR observation out.

For n model spectra (f_lambda on a log-uniform vacuum grid) and n sets of source parameters and
observing conditions, :meth:`Observer.observe` runs

1. Doppler shift (relativistic), interstellar extinction and AB-magnitude scaling through a
   filter, all in the observer's frame on the model grid (:mod:`.source`);
2. line-spread function and integration over detector pixels with the shift folded into a banded
   table (:mod:`.lsf`), then f_lambda -> f_nu;
3. object counts ``f_nu * conversion`` (e-/exposure) and the noise model's per-exposure variance;
   after ``n_exp`` exposures the mean has ``sigma_nu = sqrt((variance + counts) / n_exp) /
   conversion`` (erg s^-1 cm^-2 Hz^-1);
4. a smooth flux-calibration distortion ``d(lambda) = 1 + sum_l c_l P_l(x)`` (Legendre polynomials
   of order 1..L over the detector range, max |d - 1| drawn uniformly up to ``calib_amplitude``);
   it is part of what is observed, so it multiplies the clean flux, the noise and sigma alike;
5. a noise draw: Gaussian with sigma, or (``poisson=True``) Poisson photon counts of object + sky
   summed over the exposures, sky subtracted, plus Gaussian for the remaining variance terms;
6. normalisation: flux, clean flux and sigma divided by ``norm = 2 * median(flux_nu)`` (noisy
   flux, the one an observer has; the clean median is used if that is not positive), so the
   median flux is 0.5 and ``f_nu = flux * norm``;
7. ``snr = median(flux / sigma)``.

Randomness comes only from the ``numpy.random.Generator`` passed in, drawn in a fixed order
(calibration coefficients, then noise), so a result depends only on the generator's state.

Steps 1-2 and 6-7 are Numba kernels (:func:`clean_spectra_numba`, :func:`finish_numba`), each with
a NumPy reference (:func:`clean_spectra_numpy`, :func:`finish_numpy`); ``backend="numpy"`` runs
the references end to end.

The noise model is any object with ``wave`` ((n_det,) nm) and ``evaluate(seeing, zenith,
field_angle, moon_zenith, moon_separation, moon_phase, exp_time, n_exp)`` returning a mapping with
``conversion`` (e-/exposure per unit f_nu), ``sky`` (e-/exposure) and ``variance`` (e^2/exposure,
object excluded), each (n, n_det): :class:`specdenoise.simulate.noise.BuiltinNoise` or a table.
"""

from __future__ import annotations

import inspect

import numpy as np
from numba import njit

from specdenoise.errors import SpecdenoiseError
from specdenoise.simulate import calibration
from specdenoise.simulate.constants import AB_ZEROPOINT_CGS, C_NM_PER_S, MAG_TO_TAU
from specdenoise.simulate.lsf import LSF, build_resampling_table, resample_one
from specdenoise.simulate.source import (
    DEFAULT_FILTER,
    EDGE_SLOPE_LIMIT,
    EDGE_WINDOW_NM,
    Bandpass,
    doppler_shift_pixels,
    extinction_curve,
)

NOISE_KINDS = ("gaussian", "poisson")
#: the largest fraction of the filter's photon weight that may lie beyond the model's wavelengths
MAX_FILTER_OUTSIDE = 0.25
#: the extinction factor is exponentiated every EXT_STRIDE model pixels, linear in between
EXT_STRIDE = 8


# --- steps 1-2: clean spectrum in physical units ------------------------------------------------


@njit(cache=True, nogil=True)
def _edge_params(f, win):
    """(level, ln_ref, beta) of the blue and red continuing power laws; ``win`` (2, 6)."""
    out = np.empty((2, 3))
    for side in range(2):
        a0, a1, b0, b1 = int(win[side, 0]), int(win[side, 1]), int(win[side, 2]), int(win[side, 3])
        c1, c2 = win[side, 4], win[side, 5]
        f1 = 0.0
        for k in range(a0, a1):
            f1 += f[k]
        f1 /= a1 - a0
        f2 = 0.0
        for k in range(b0, b1):
            f2 += f[k]
        f2 /= b1 - b0
        beta = 0.0
        if f1 > 0.0 and f2 > 0.0:
            beta = np.log(f2 / f1) / (c2 - c1)
            beta = min(max(beta, -EDGE_SLOPE_LIMIT), EDGE_SLOPE_LIMIT)
        out[side, 0] = max(f1, 0.0)
        out[side, 1] = c1
        out[side, 2] = beta
    return out


@njit(cache=True, nogil=True)
def clean_spectra_numba(
    model_flux, m, t, ebv, target, weights, start, kcurve, filt_u, e0, f_lo, f_hi,
    lnlam0, h, win, det_factor, out_fnu, out_scale,
):
    """Steps 1-2 for n spectra (Numba, one thread).

    Parameters
    ----------
    model_flux : (n, n_model) float32 f_lambda (any unit; with a NaN ``target``, erg/s/cm2/nm).
    m, t : (n,) integer and fractional Doppler shift in model pixels.
    ebv : (n,) E(B-V), mag.  target : (n,) ``10^(-0.4 mag)``; NaN skips the scaling.
    weights, start : the LSF table (:class:`.lsf.ResamplingTable`).
    kcurve : (n_e,) ``A_lambda/E(B-V)`` at log-grid positions ``e0 .. e0 + n_e - 1``.
    filt_u : (n_e,) ``S(lambda) lambda dlambda / Z`` at the same positions (Z: the AB reference).
    f_lo, f_hi : log-grid positions spanning the filter (``e0 <= f_lo``, ``f_hi + 1 < e0 + n_e``).
    lnlam0, h : ln of the first model wavelength, ln step.
    win : (2, 6) edge windows: index ranges ``[a0, a1)``, ``[b0, b1)`` and their mean ln lambda.
    det_factor : (n_det,) ``lambda^2 / c / width`` of each detector pixel.
    out_fnu : (n, n_det) float64, receives f_nu (erg/s/cm2/Hz).  out_scale : (n,) the factor
        applied to the shifted, extincted model to reach the magnitude.
    """
    n, n_model = model_flux.shape
    n_e = kcurve.shape[0]
    p0 = start.min()
    p1 = start.max() + weights.shape[2]
    obs = np.empty(p1 - p0, dtype=np.float32)
    ext = np.empty(n_e)
    y = np.empty(start.shape[0], dtype=np.float32)
    for i in range(n):
        f = model_flux[i]
        mi, ti = m[i], t[i]
        # extinction at observed positions p + t; exp every EXT_STRIDE positions and linear
        # between (the curve is smooth: relative error < 1e-8 for E(B-V) <= 1)
        if ebv[i] != 0.0:
            tau = MAG_TO_TAU * ebv[i]
            prev = np.exp(-tau * ((1.0 - ti) * kcurve[0] + ti * kcurve[1]))
            for e0s in range(0, n_e - 1, EXT_STRIDE):
                e1s = min(e0s + EXT_STRIDE, n_e - 2)
                nxt = np.exp(-tau * ((1.0 - ti) * kcurve[e1s] + ti * kcurve[e1s + 1]))
                ext[e0s] = prev
                span = e1s - e0s
                for e in range(e0s + 1, e1s + 1):
                    ext[e] = prev + (nxt - prev) * (e - e0s) / span
                prev = nxt
        else:
            ext[:] = 1.0
        # magnitude through the filter, the model continued by power laws beyond its ends
        scale = 1.0
        if not np.isnan(target[i]):
            law = _edge_params(f, win)
            acc = 0.0
            # the power laws are geometric in k: one exp per side, then a product per pixel
            r_b, r_r = np.exp(law[0, 2] * h), np.exp(law[1, 2] * h)
            fk_b = law[0, 0] * np.exp(law[0, 2] * (lnlam0 + (f_lo - mi) * h - law[0, 1]))
            fk_r = law[1, 0] * np.exp(law[1, 2] * (lnlam0 + n_model * h - law[1, 1]))
            for p in range(f_lo, f_hi + 1):
                k = p - mi
                if k < 0:
                    fk = fk_b
                    fk_b *= r_b
                elif k >= n_model:
                    fk = fk_r
                    fk_r *= r_r
                else:
                    fk = f[k]
                e = p - e0
                acc += fk * ext[e] * ((1.0 - ti) * filt_u[e] + ti * filt_u[e + 1])
            maggies = acc * np.exp(-mi * h)
            if not maggies > 0.0:
                maggies = np.nan
            scale = target[i] / maggies
        # LSF + pixels on the shifted, extincted model
        for p in range(p0, p1):
            obs[p - p0] = f[p - mi] * ext[p - e0]
        resample_one(obs, weights, start, p0, ti, y)
        c = scale * np.exp(-mi * h)
        for j in range(y.shape[0]):
            out_fnu[i, j] = c * y[j] * det_factor[j]
        out_scale[i] = scale
    return out_fnu, out_scale


def _edge_params_numpy(f, win):
    """NumPy reference of :func:`_edge_params`."""
    out = np.empty((2, 3))
    for side in range(2):
        a0, a1, b0, b1 = win[side, :4].astype(np.int64)
        f1, f2 = f[a0:a1].mean(), f[b0:b1].mean()
        beta = np.log(f2 / f1) / (win[side, 5] - win[side, 4]) if f1 > 0 and f2 > 0 else 0.0
        out[side] = max(f1, 0.0), win[side, 4], np.clip(beta, -EDGE_SLOPE_LIMIT, EDGE_SLOPE_LIMIT)
    return out


def clean_spectra_numpy(
    model_flux, m, t, ebv, target, weights, start, kcurve, filt_u, e0, f_lo, f_hi,
    lnlam0, h, win, det_factor, out_fnu, out_scale,
):
    """NumPy reference of :func:`clean_spectra_numba` (same arguments and result), float64."""
    n, n_model = model_flux.shape
    band = weights.shape[2]
    n_shift = weights.shape[0] - 1
    cols = start[:, None] + np.arange(band)[None, :]
    pos = np.arange(f_lo, f_hi + 1)
    for i in range(n):
        f = model_flux[i].astype(np.float64)
        kc = (1.0 - t[i]) * kcurve[:-1] + t[i] * kcurve[1:]
        ext = np.exp(-MAG_TO_TAU * ebv[i] * kc)
        scale = 1.0
        if not np.isnan(target[i]):
            law = _edge_params_numpy(f, win)
            k = pos - m[i]
            fk = np.where(
                k < 0,
                law[0, 0] * np.exp(law[0, 2] * (lnlam0 + k * h - law[0, 1])),
                law[1, 0] * np.exp(law[1, 2] * (lnlam0 + k * h - law[1, 1])),
            )
            inside = (k >= 0) & (k < n_model)
            fk[inside] = f[k[inside]]
            e = pos - e0
            u = (1.0 - t[i]) * filt_u[e] + t[i] * filt_u[e + 1]
            maggies = np.sum(fk * ext[e] * u) * np.exp(-m[i] * h)
            scale = target[i] / maggies if maggies > 0 else np.nan
        i0 = min(int(np.floor(t[i] * n_shift)), n_shift - 1)
        a = t[i] * n_shift - i0
        w = (1.0 - a) * weights[i0].astype(np.float64) + a * weights[i0 + 1].astype(np.float64)
        y = np.sum(w * f[cols - m[i]] * ext[cols - e0], axis=1)
        out_fnu[i] = scale * np.exp(-m[i] * h) * y * det_factor
        out_scale[i] = scale
    return out_fnu, out_scale


# --- steps 4-7: distortion, noise, normalisation, S/N -------------------------------------------


@njit(cache=True, nogil=True)
def _kth_smallest(a, k, work, counts):
    """The k-th smallest (0-based) element of the 1-D array ``a`` (left untouched).

    Histogram selection: bin the candidates into ``counts.size`` equal bins between their min
    and max, keep the bin holding rank k, repeat until few remain, then sort those.  Each pass
    is branch-light, so this beats quickselect (whose comparisons mispredict) several times.
    ``work`` is scratch of a's size.
    """
    m = a.shape[0]
    nb = counts.shape[0]
    for i in range(m):
        work[i] = a[i]
    kk = k
    while m > 64:
        lo = work[0]
        hi = work[0]
        for i in range(m):
            lo = min(lo, work[i])
            hi = max(hi, work[i])
        if not hi > lo:
            return lo
        scale = nb / (hi - lo)
        counts[:] = 0
        for i in range(m):
            b = int((work[i] - lo) * scale)
            b = min(max(b, 0), nb - 1)
            counts[b] += 1
        cum = 0
        bsel = 0
        for b in range(nb):
            if cum + counts[b] > kk:
                bsel = b
                break
            cum += counts[b]
        kk -= cum
        j = 0
        for i in range(m):
            x = work[i]
            b = int((x - lo) * scale)
            b = min(max(b, 0), nb - 1)
            work[j] = x
            j += b == bsel
        m = j
    return np.sort(work[:m])[kk]


@njit(cache=True, nogil=True)
def fast_median(a, work, counts):
    """``np.median`` of the 1-D array ``a`` (see :func:`_kth_smallest` for the scratch arrays)."""
    n = a.shape[0]
    k = (n - 1) // 2
    v = _kth_smallest(a, k, work, counts)
    if n % 2 == 1:
        return v
    # the next order statistic: v again if it repeats, else the smallest value above it
    n_le = 0
    nxt = np.inf
    for i in range(n):
        x = a[i]
        n_le += x <= v
        if x > v and x < nxt:
            nxt = x
    return v if n_le >= k + 2 else 0.5 * (v + nxt)


@njit(cache=True, nogil=True)
def finish_numba(fnu, conversion, var_noise, n_exp, noise, noise_is_z, raw_coef, amp, basis,
                 flux, flux_clean, sigma, norm, snr, coef):
    """Steps 3-7 for n spectra: sigma, distortion, noise, normalisation, S/N (Numba, one thread).

    Parameters
    ----------
    fnu : (n, n_det) clean f_nu, erg s^-1 cm^-2 Hz^-1.
    conversion : (n, n_det) e-/exposure per unit f_nu; var_noise : (n, n_det) e^2/exposure
        (object excluded); n_exp : (n,) exposures.
    noise : (n, n_det) standard normal deviates (``noise_is_z``), else the noise in f_nu.
    raw_coef : (n, L) random Legendre coefficients; amp : (n,) wanted max |d - 1|;
    basis : (L, n_det) Legendre polynomials P_1..P_L over the detector.
    flux, flux_clean, sigma : (n, n_det) float32 outputs, normalised.
    norm, snr : (n,) outputs; coef : (n, L) output, the coefficients scaled to ``amp``.

    ``sigma_nu = sqrt((var_noise + counts) / n_exp) / conversion``, ``d = 1 + coef @ basis``,
    ``flux_nu = d (fnu + noise)``, ``norm = 2 median(flux_nu)`` (clean median if not > 0),
    ``snr = median(flux_nu / (d sigma_nu))``.
    """
    n, n_det = fnu.shape
    n_l = basis.shape[0]
    poly = np.empty(n_det)
    noisy = np.empty(n_det)
    work = np.empty(n_det)
    hist = np.zeros(256, dtype=np.int64)
    for i in range(n):
        # distortion: scale the random polynomial to the drawn amplitude
        peak = 0.0
        for j in range(n_det):
            v = 0.0
            for ll in range(n_l):
                v += raw_coef[i, ll] * basis[ll, j]
            poly[j] = v
            peak = max(peak, abs(v))
        c = amp[i] / peak if peak > 0.0 else 0.0
        for ll in range(n_l):
            coef[i, ll] = raw_coef[i, ll] * c
        for j in range(n_det):
            d = 1.0 + c * poly[j]
            poly[j] = d
            counts = fnu[i, j] * conversion[i, j]
            s = np.sqrt((var_noise[i, j] + max(counts, 0.0)) / n_exp[i]) / conversion[i, j]
            dn = noise[i, j] * s if noise_is_z else noise[i, j]
            noisy[j] = d * (fnu[i, j] + dn)
            sigma[i, j] = d * s  # provisional, normalised below
        med = fast_median(noisy, work, hist)
        if not med > 0.0:
            med = fast_median(poly * fnu[i], work, hist)
        nf = 2.0 * med
        for j in range(n_det):
            s = sigma[i, j]
            flux[i, j] = noisy[j] / nf
            flux_clean[i, j] = poly[j] * fnu[i, j] / nf
            sigma[i, j] = s / nf
            noisy[j] = noisy[j] / s
        norm[i] = nf
        snr[i] = fast_median(noisy, work, hist)
    return flux, flux_clean, sigma, norm, snr, coef


def finish_numpy(fnu, conversion, var_noise, n_exp, noise, noise_is_z, raw_coef, amp, basis,
                 flux, flux_clean, sigma, norm, snr, coef):
    """NumPy reference of :func:`finish_numba` (same arguments and result)."""
    coef[:], d = calibration.scale(raw_coef, amp, basis)
    counts = fnu * conversion
    s = np.sqrt((var_noise + np.maximum(counts, 0.0)) / n_exp[:, None]) / conversion
    noisy = d * (fnu + (noise * s if noise_is_z else noise))
    norm[:] = calibration.norm_factor(noisy, fallback=d * fnu)
    flux[:] = noisy / norm[:, None]
    flux_clean[:] = d * fnu / norm[:, None]
    sigma[:] = d * s / norm[:, None]
    snr[:] = np.median(noisy / (d * s), axis=1)
    return flux, flux_clean, sigma, norm, snr, coef


def _check_noise_kind(kind: str) -> str:
    if kind not in NOISE_KINDS:
        raise SpecdenoiseError(
            f"unknown noise kind {kind!r}; choose one of {', '.join(NOISE_KINDS)}"
        )
    return kind


# --- the Observer -------------------------------------------------------------------------------


class Observer:
    """Everything that is the same for every spectrum, precomputed once; then :meth:`observe`.

    Parameters
    ----------
    model_wave : (n_model,) log-uniform vacuum wavelengths of the model spectra, nm.
    noise : the noise model (module docstring); its ``wave`` is the detector grid.
    lsf_fwhm_pix : line-spread FWHM in pixels (at 710 nm, at 885 nm), the pixel included; or
    lsf : a full :class:`.lsf.LSF` (overrides ``lsf_fwhm_pix``).
    model_resolution : resolving power of the model spectra (the grid's ``resolution`` attr);
        the kernel is narrowed so that model ⊗ kernel has the configured FWHM.
    extinction_law : ``"F99"`` or ``"G23"``; ``r_v`` : R_V (3.1).
    filter_name : speclite filter that ``mag`` refers to (``hsc2017-i``).
    distortion : the largest |d - 1| of the calibration distortion (0.02 = 2 %; 0 turns it off).
    distortion_order : its highest Legendre order (orders 1..L get random coefficients).
    noise_kind : ``"gaussian"`` or ``"poisson"`` (default of :meth:`observe`).
    n_shift : fractional Doppler shifts tabulated per model pixel (:mod:`.lsf`).
    nuisance : the wider nuisance model's settings (:mod:`.nuisance`; ``observe`` keys
        ``continuum``, ``continuum_order``, ``lsf_scatter``, ``sky_residual``,
        ``telluric_residual``); None or all zero: off, the chain as without them.

    The LSF table takes about ``(n_shift + 1) * 4096 * 24 * 4`` bytes (25 MB for 64).
    """

    def __init__(
        self,
        model_wave: np.ndarray,
        noise,
        *,
        lsf_fwhm_pix: tuple[float, float] = (3.1, 3.2),
        lsf: LSF | None = None,
        model_resolution: float | None = None,
        extinction_law: str = "F99",
        r_v: float = 3.1,
        filter_name: str = DEFAULT_FILTER,
        distortion: float = 0.02,
        distortion_order: int = calibration.ORDER,
        noise_kind: str = "gaussian",
        n_shift: int = 64,
        nuisance: dict | None = None,
    ):
        from specdenoise.simulate import nuisance as nuisance_mod

        self.noise = noise
        try:
            self._noise_has_backend = "use_numba" in inspect.signature(noise.evaluate).parameters
        except (TypeError, ValueError):
            self._noise_has_backend = False
        self.model_wave = np.asarray(model_wave, dtype=np.float64)
        self.wave = np.asarray(noise.wave, dtype=np.float64)
        nuis = nuisance_mod.settings(nuisance or {})
        if lsf is None:
            f = nuisance_mod.Nuisance.base_fwhm_factor(nuis)  # 1 unless the LSF varies by fibre
            lsf = LSF(fwhm_pix=tuple(x * f for x in lsf_fwhm_pix) if f != 1.0
                      else tuple(lsf_fwhm_pix), model_resolution=model_resolution)
        self.lsf = lsf
        mid = float(np.mean(lsf.fwhm(np.asarray(lsf.wave_nodes)))) / (
            nuisance_mod.Nuisance.base_fwhm_factor(nuis))
        self.nuisance = nuisance_mod.Nuisance(np.asarray(noise.wave, dtype=np.float64), nuis,
                                              mid)
        self.extinction_law, self.r_v = extinction_law, float(r_v)
        self.bandpass = Bandpass(filter_name)
        if not 0.0 <= distortion < 1.0:
            raise SpecdenoiseError(f"distortion amplitude {distortion} must be in [0, 1)")
        self.calib_order, self.calib_amplitude = int(distortion_order), float(distortion)
        self.noise_kind = _check_noise_kind(noise_kind)

        self.table = build_resampling_table(self.model_wave, self.wave, self.lsf, n_shift=n_shift)
        h, lam0 = self.table.h, self.table.lambda0
        self.h, self.lnlam0 = h, float(np.log(lam0))
        self.n_model = self.model_wave.size
        self.det_factor = self.wave**2 / C_NM_PER_S / self.table.det_width

        # the power-law continuation is for a filter's wings, not for most of its band
        wf = np.linspace(*self.bandpass.support, 4001)
        sf = self.bandpass.response(wf) / wf
        outside = np.sum(sf[(wf < self.model_wave[0]) | (wf > self.model_wave[-1])]) / np.sum(sf)
        if outside > MAX_FILTER_OUTSIDE:
            raise SpecdenoiseError(
                f"{outside:.0%} of filter {filter_name}'s band lies outside the model's "
                f"{self.model_wave[0]:.0f}-{self.model_wave[-1]:.0f} nm; choose a filter "
                "that overlaps the model"
            )
        self.filter_outside_fraction = float(outside)

        # observed log-grid positions: the LSF bands and the filter, with one to spare each side
        flo, fhi = self.bandpass.support
        self.f_lo = int(np.floor(np.log(flo / lam0) / h)) - 1
        self.f_hi = int(np.ceil(np.log(fhi / lam0) / h)) + 1
        p0, p1 = self.table.span
        self.e0 = min(self.f_lo, p0) - 1
        e1 = max(self.f_hi, p1) + 2
        lam_e = lam0 * np.exp(h * np.arange(self.e0, e1))
        self.kcurve = extinction_curve(lam_e, extinction_law, self.r_v)
        s = self.bandpass.response(lam_e)
        dlam = lam_e * 2.0 * np.sinh(0.5 * h)
        z_ab = AB_ZEROPOINT_CGS * C_NM_PER_S * np.sum(s * dlam / lam_e)
        self.filt_u = s * lam_e * dlam / z_ab

        # edge windows for the power-law continuation (as source.edge_power_law)
        w, lw = self.model_wave, np.log(self.model_wave)
        win = np.empty((2, 6))
        for side, (a, b) in enumerate([
            (w < w[0] + EDGE_WINDOW_NM,
             (w >= w[0] + EDGE_WINDOW_NM) & (w < w[0] + 2 * EDGE_WINDOW_NM)),
            (w > w[-1] - EDGE_WINDOW_NM,
             (w <= w[-1] - EDGE_WINDOW_NM) & (w > w[-1] - 2 * EDGE_WINDOW_NM)),
        ]):
            ia, ib = np.nonzero(a)[0], np.nonzero(b)[0]
            win[side] = ia[0], ia[-1] + 1, ib[0], ib[-1] + 1, lw[a].mean(), lw[b].mean()
        self.edge_windows = win

        self.calib_x = calibration.detector_x(self.wave)
        self.calib_basis = calibration.legendre_basis(self.calib_x, self.calib_order)

    # -- pieces ------------------------------------------------------------------------------

    def clean_fnu(self, model_flux, rv, ebv, mag, *, backend: str = "numba"):
        """Steps 1-2: clean f_nu on the detector (n, n_det) and the scale factors (n,).

        ``mag`` NaN skips the magnitude scaling (the model is then taken as an observed f_lambda
        in erg s^-1 cm^-2 nm^-1).
        """
        model_flux = np.ascontiguousarray(np.atleast_2d(model_flux), dtype=np.float32)
        n = model_flux.shape[0]
        if model_flux.shape[1] != self.n_model:
            raise SpecdenoiseError(
                f"model spectra have {model_flux.shape[1]} pixels, the observer was set up for "
                f"{self.n_model}"
            )
        rv, ebv, mag = (np.broadcast_to(np.asarray(v, dtype=np.float64), (n,)) for v in
                        (rv, ebv, mag))
        m, t = self.table.split_shift(doppler_shift_pixels(rv, self.h))
        self.table.check_shift(m)
        target = 10.0 ** (-0.4 * mag)
        kernel = {"numba": clean_spectra_numba, "numpy": clean_spectra_numpy}[backend]
        fnu = np.empty((n, self.wave.size))
        scale = np.empty(n)
        kernel(
            model_flux, m, t, np.ascontiguousarray(ebv), np.ascontiguousarray(target),
            self.table.weights, self.table.start, self.kcurve, self.filt_u, self.e0,
            self.f_lo, self.f_hi, self.lnlam0, self.h, self.edge_windows, self.det_factor,
            fnu, scale,
        )
        return fnu, scale

    def draw_calibration(self, n: int, rng: np.random.Generator):
        """Random Legendre coefficients (n, L) and amplitudes (n,) ~ U(0, distortion).

        The kernels scale each row so that max |d - 1| over the detector equals its amplitude.
        """
        return calibration.draw(rng, n, self.calib_order, self.calib_amplitude)

    def distortion(self, coef: np.ndarray) -> np.ndarray:
        """Calibration factor d (n, n_det) from coefficients (n, calib_order)."""
        return calibration.distortion(coef, self.calib_basis)

    # -- the chain ---------------------------------------------------------------------------

    def observe(
        self,
        model_flux, rv, ebv, mag, seeing, zenith, field_angle, moon_zenith, moon_separation,
        moon_phase, exp_time, n_exp, rng: np.random.Generator, *,
        noise_kind: str | None = None, return_physical: bool = False, backend: str = "numba",
        noise_backend: str | None = None,
    ) -> dict[str, np.ndarray]:
        """Observe n model spectra.

        Parameters
        ----------
        model_flux : (n, n_model) f_lambda on ``model_wave`` (units cancel in the mag scaling).
        rv : km/s; ebv : mag; mag : AB magnitude through the filter (NaN: no scaling).
        seeing (arcsec FWHM), zenith (deg), field_angle (deg), moon_zenith (deg),
        moon_separation (deg), moon_phase (as the noise model defines it), exp_time
        (s per exposure), n_exp (exposures): scalars or (n,) arrays, for the noise model.
        rng : the only source of randomness.
        noise_kind : ``"gaussian"``, or ``"poisson"`` for Poisson photon noise of object + sky;
            None takes the observer's.
        return_physical : also return the unnormalised quantities listed below.
        backend : ``"numba"`` (kernels) or ``"numpy"`` (the references).
        noise_backend : the same choice for the noise model, where it offers one (default:
            ``backend``).

        Returns
        -------
        dict with ``flux``, ``flux_clean``, ``sigma`` (n, n_det) float32 normalised;
        ``snr``, ``norm`` (n,); ``calib_coef`` (n, calib_order) Legendre coefficients of
        orders 1..L of the distortion (:meth:`distortion`).  With ``return_physical``:
        ``flux_nu``, ``flux_clean_nu``, ``sigma_nu`` (n, n_det) f_nu after distortion,
        erg s^-1 cm^-2 Hz^-1 (= the normalised arrays x norm); ``counts`` (object e-/exposure,
        undistorted), ``sky`` (e-/exposure), ``variance`` (e^2/exposure, object included),
        ``conversion`` (e-/exposure per unit f_nu), ``scale`` (n,) the magnitude scale factor.
        """
        if backend not in ("numba", "numpy"):
            raise SpecdenoiseError(f"unknown backend {backend!r}; choose numba or numpy")
        fnu, scale = self.clean_fnu(model_flux, rv, ebv, mag, backend=backend)
        n = fnu.shape[0]
        nuis = {}
        if self.nuisance.on:  # its own stream, seeded here only when some effect is on
            nuis = self.nuisance.draw(np.random.default_rng(rng.integers(2**63)), n)
            fnu = self.nuisance.apply_truth(fnu, nuis)
        bad = ~np.isfinite(scale)
        if bad.any():
            raise SpecdenoiseError(
                f"spectrum {int(np.nonzero(bad)[0][0])} has no positive flux through filter "
                f"{self.bandpass.name}; cannot scale it to a magnitude"
            )
        cond = [np.broadcast_to(np.asarray(v, dtype=np.float64), (n,)) for v in (
            seeing, zenith, field_angle, moon_zenith, moon_separation, moon_phase, exp_time,
            n_exp)]
        # the noise model's own NumPy reference goes with ours, where it has one
        if (noise_backend or backend) == "numpy" and self._noise_has_backend:
            nm = self.noise.evaluate(*cond, use_numba=False)
        else:
            nm = self.noise.evaluate(*cond)
        conversion = np.ascontiguousarray(nm["conversion"], dtype=np.float64)
        var_noise = np.ascontiguousarray(nm["variance"], dtype=np.float64)
        n_exp_arr = np.ascontiguousarray(cond[7])

        raw_coef, amp = self.draw_calibration(n, rng)
        if _check_noise_kind(noise_kind or self.noise_kind) == "poisson":
            counts = np.maximum(fnu * conversion, 0.0)
            sky = np.asarray(nm["sky"], dtype=np.float64)
            nx = n_exp_arr[:, None]
            photons = nx * (counts + sky)
            rest = np.sqrt(nx * np.maximum(var_noise - sky, 0.0))
            total = rng.poisson(photons) - photons \
                + rng.standard_normal((n, self.wave.size)) * rest
            noise, is_z = total / nx / conversion, False
        else:
            noise, is_z = rng.standard_normal((n, self.wave.size), dtype=np.float32), True
        resid = (self.nuisance.observed_residual(fnu, nm["sky"], conversion, nuis)
                 if nuis else None)
        if resid is not None:  # in the observed flux only: noise in f_nu plus the residual
            if is_z:
                s = np.sqrt((var_noise + np.maximum(fnu * conversion, 0.0))
                            / n_exp_arr[:, None]) / conversion
                noise, is_z = noise * s + resid, False
            else:
                noise = noise + resid

        out = {k: np.empty((n, self.wave.size), dtype=np.float32)
               for k in ("flux", "flux_clean", "sigma")}
        norm, snr, coef = np.empty(n), np.empty(n), np.empty_like(raw_coef)
        finish = {"numba": finish_numba, "numpy": finish_numpy}[backend]
        finish(fnu, conversion, var_noise, n_exp_arr, noise, is_z, raw_coef, amp,
               self.calib_basis, out["flux"], out["flux_clean"], out["sigma"], norm, snr, coef)
        out.update(snr=snr, norm=norm, calib_coef=coef)
        out.update({k: v for k, v in nuis.items() if not k.startswith("_")})
        if return_physical:
            counts = fnu * conversion
            variance = var_noise + np.maximum(counts, 0.0)
            dist = self.distortion(coef)
            out.update(
                flux_nu=out["flux"] * norm[:, None], flux_clean_nu=dist * fnu,
                sigma_nu=dist * np.sqrt(variance / n_exp_arr[:, None]) / conversion,
                counts=counts, sky=np.asarray(nm["sky"]), variance=variance,
                conversion=conversion, scale=scale,
            )
        return out


def observe(model_flux, model_wave, noise, rv, ebv, mag, seeing, zenith, field_angle,
            moon_zenith, moon_separation, moon_phase, exp_time, n_exp, rng, **options):
    """One-off :meth:`Observer.observe`; ``options`` go to :class:`Observer` or to ``observe``.

    Builds the observer (the LSF table takes a fraction of a second) on every call: keep an
    :class:`Observer` to observe repeatedly.
    """
    call_keys = {"noise_kind", "return_physical", "backend", "noise_backend"}
    call = {k: v for k, v in options.items() if k in call_keys}
    setup = {k: v for k, v in options.items() if k not in call_keys}
    obs = Observer(model_wave, noise, **setup)
    return obs.observe(model_flux, rv, ebv, mag, seeing, zenith, field_angle, moon_zenith,
                       moon_separation, moon_phase, exp_time, n_exp, rng, **call)
