"""Line-spread function and flux-conserving resampling of a model spectrum onto detector pixels.

The model
---------
A model spectrum on a log-uniform grid ``lambda_k = lambda_0 exp(k h)`` is read as samples: model
pixel ``k`` carries the integrated flux ``F_k = f_k * dlambda_k`` (``f_k`` an f_lambda,
``dlambda_k = lambda_k * 2 sinh(h/2)`` the pixel's width) at ``lambda_k``.  Shifted by the Doppler
factor ``D`` it sits at ``D lambda_k``.  Detector pixel ``j`` (edges ``lo_j, hi_j``) receives

    y_j = sum_k F_k P_j(D lambda_k),   P_j(mu) = Phi((hi_j - mu)/s_j) - Phi((lo_j - mu)/s_j)

the Gaussian LSF (width ``s_j``) integrated over the pixel: flux is conserved exactly
(``sum_j P_j = 1`` where the detector covers the line), and a flat f_lambda stays flat.

Folding the Doppler shift into the matrix
-----------------------------------------
Write the shift in model pixels as ``s = ln(D)/h = m + t`` (``m`` integer, ``0 <= t < 1``).  On a
log-uniform grid ``D lambda_k = lambda_{k+m} exp(t h)``, so with

    V_{j,p}(t) = dlambda_p P_j(lambda_p exp(t h))        (p an index on the infinite log grid)

the shifted spectrum is ``y_j = exp(-m h) sum_p V_{j,p}(t) f_{p-m}``: an integer shift only moves
the columns.  :func:`build_resampling_table` therefore evaluates ``V`` once, for ``n_shift + 1``
fractional shifts ``t = 0, 1/n_shift, ..., 1``, as a banded table (``K`` columns per detector
pixel starting at ``start[j]``); per spectrum the kernel interpolates linearly between the two
nearest ``t`` (error ~ (1/n_shift)^2 / 8 of the LSF's curvature: below 1e-5 for 64 steps).  That
is an exact sub-pixel shift at the cost of two banded dot products per detector pixel.

:func:`resample_numba` is the kernel (Numba, one thread), :func:`resample_numpy` its NumPy
reference, and :func:`resampling_matrix_dense` evaluates ``W`` directly (no table, any shift) for
tests.

Coarse model grids: no sampling comb
------------------------------------
Reading the model as point samples is exact only while the samples lie close together compared
with the kernel: a detector pixel then sees many of them.  A grid imported at low resolution
(BOSZ at R = 5000: samples 1.4-1.8 detector pixels apart) leaves a narrow residual kernel
(sigma 0.5 pixel once R = 5000 is taken off the line-spread function), and each detector pixel
sees one model sample or none: the rendered "truth" carries a comb of 7 % mean, 20 % peak
(issue 19).  The sum over samples is a Riemann sum of ``integral f(lambda) P_j(lambda)
dlambda``; by Poisson summation its relative ripple is about ``2 exp(-2 pi^2 (sigma/d)^2)`` for
samples ``d`` pixels apart and a kernel of ``sigma`` pixels, below 1e-5 for ``d <= 1.25 sigma``
(:data:`MAX_STEP_PER_SIGMA`).

Where the model is coarser than that anywhere on the detector, :func:`sample_offsets` switches
to the piecewise-linear model: ``f(x) = sum_p f_p hat(x - p)`` (linear interpolation between
the samples in ln lambda, ``hat(u) = max(0, 1 - |u|)``), integrated against each detector
pixel's kernel by the trapezoidal rule on ``S`` sub-points per model pixel, ``S`` chosen so
that the sub-points lie at most ``sigma / 4`` apart.  Then

    V_{j,p}(t) = sum_s w_s dlambda(p + u_s) P_j(lambda_{p + u_s} exp(t h)),
    u_s = s / S (|s| < S),  w_s = (1 - |u_s|) / S,  sum_s w_s = 1,

which keeps the table's form (one band of model pixels per detector pixel, one extra model
pixel on each side) and so the kernels' cost.  Finer grids (the built-in one: 0.8-1.0 pixel per
sample against sigma 1.0-1.1) keep the point-sample table unchanged, bit for bit.  The linear
model adds the hat's variance (``d^2 / 6`` pixel^2) to the line width; a grid resampled much
finer by linear interpolation renders the same (``tests/test_observe.py``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from numba import njit
from scipy.special import ndtr

from specdenoise.errors import SpecdenoiseError
from specdenoise.simulate.pfs import RED_MR_DLAMBDA, RED_MR_LMAX, RED_MR_LMIN

#: FWHM / sigma of a Gaussian
FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))
#: model samples at most this many kernel widths apart are read as points (module docstring)
MAX_STEP_PER_SIGMA = 1.25
#: otherwise the piecewise-linear model is integrated with sub-points this many sigma apart
SUB_STEP_PER_SIGMA = 0.25


def detector_wave() -> np.ndarray:
    """The PFS red-arm MR pixel wavelengths, nm, shape (4096,) (from :mod:`.pfs`)."""
    from specdenoise.simulate.pfs import pixel_wave

    return pixel_wave()


def pixel_edges(wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper edges (nm) of pixels whose wavelengths ``wave`` (n,) are their centres.

    Edges are the midpoints between neighbouring centres; the end pixels are as wide as their
    neighbour.  The detector's ``wave`` coordinate is thus where a line centred in the pixel lies.
    """
    wave = np.asarray(wave, dtype=np.float64)
    mid = 0.5 * (wave[1:] + wave[:-1])
    lo = np.concatenate([[wave[0] - (mid[0] - wave[0])], mid])
    hi = np.concatenate([mid, [wave[-1] + (wave[-1] - mid[-1])]])
    return lo, hi


@dataclasses.dataclass(frozen=True)
class LSF:
    """Gaussian line-spread function whose FWHM varies linearly with wavelength.

    Parameters
    ----------
    fwhm_pix : (FWHM at ``wave_nodes[0]``, FWHM at ``wave_nodes[1]``) in detector pixels; linear
        in wavelength between them and beyond.  The default (3.1 -> 3.2 pixels over 710-885 nm)
        gives R = 5400 at 720 nm and 6450 at 880 nm, the PFS red-arm MR figures.
    wave_nodes : wavelengths (nm) of the two FWHM values.
    includes_pixel : the FWHM is that of a line *as recorded*, i.e. the Gaussian convolved with
        the pixel's box; the Gaussian itself then has ``sigma^2 = (FWHM/2.3548)^2 - 1/12`` pix^2
        (the box's variance), so the recorded profile's second moment matches the FWHM.
    model_resolution : resolving power R of the model spectra themselves (a grid smoothed to
        R = 10,000, say), or None for models much sharper than the instrument.  Its Gaussian
        variance is taken off the kernel's, so model ⊗ kernel has the configured FWHM.
    """

    fwhm_pix: tuple[float, float] = (3.1, 3.2)
    wave_nodes: tuple[float, float] = (RED_MR_LMIN, RED_MR_LMAX)
    includes_pixel: bool = True
    model_resolution: float | None = None

    def fwhm(self, wave) -> np.ndarray:
        """Configured FWHM in pixels at ``wave`` (nm)."""
        (w0, w1), (f0, f1) = self.wave_nodes, self.fwhm_pix
        return f0 + (f1 - f0) * (np.asarray(wave, dtype=np.float64) - w0) / (w1 - w0)

    def sigma_pix(self, wave) -> np.ndarray:
        """Standard deviation of the Gaussian kernel in pixels at ``wave`` (nm)."""
        var = (self.fwhm(wave) / FWHM_PER_SIGMA) ** 2
        if self.includes_pixel:
            var = var - 1.0 / 12.0
        if self.model_resolution:
            w = np.asarray(wave, dtype=np.float64)
            var = var - (w / (self.model_resolution * FWHM_PER_SIGMA) / RED_MR_DLAMBDA) ** 2
        if np.any(var <= 0):
            if self.model_resolution:
                raise SpecdenoiseError(
                    f"the model spectra (R = {self.model_resolution:g}) are not sharper than "
                    f"the PFS line-spread function (FWHM {self.fwhm_pix} pixels); use a grid "
                    "of higher resolution"
                )
            raise SpecdenoiseError(f"LSF FWHM {self.fwhm_pix} pixels is too narrow (need > 0.82)")
        return np.sqrt(var)


def log_grid_step(model_wave: np.ndarray, rtol: float = 1e-4) -> float:
    """The step ``h`` of ln(wavelength) of a log-uniform grid; raise if the grid is not one."""
    w = np.asarray(model_wave, dtype=np.float64)
    if w.ndim != 1 or w.size < 3 or not np.all(np.diff(w) > 0):
        raise SpecdenoiseError("model wavelengths must be a strictly increasing 1-D array")
    lw = np.log(w)
    h = (lw[-1] - lw[0]) / (w.size - 1)
    dev = np.max(np.abs(lw - (lw[0] + h * np.arange(w.size))))
    if dev > rtol * h:
        raise SpecdenoiseError(
            "the model grid is not log-uniform in wavelength (needed for the Doppler-folded "
            "resampling); resample the grid onto a log-uniform wavelength axis first"
        )
    return float(h)


@dataclasses.dataclass(frozen=True)
class ResamplingTable:
    """Banded LSF + pixel-integration matrices for fractional shifts ``t = i / n_shift``.

    Attributes
    ----------
    weights : (n_shift + 1, n_det, K) float32, ``V_{j, start_j + q}(t_i)`` in nm (integrated flux
        per unit f_lambda of the model pixel).
    start : (n_det,) int64, first log-grid index of each detector pixel's band (index 0 is the
        model's first wavelength; negative indices lie below it).
    lambda0 : first model wavelength, nm.
    h : ln-wavelength step of the model grid.
    n_model : number of model pixels.
    det_width : (n_det,) detector pixel widths, nm.
    """

    weights: np.ndarray
    start: np.ndarray
    lambda0: float
    h: float
    n_model: int
    det_width: np.ndarray

    @property
    def n_shift(self) -> int:
        return self.weights.shape[0] - 1

    @property
    def band(self) -> int:
        return self.weights.shape[2]

    def split_shift(self, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Split shifts in model pixels (n,) into integer ``m`` (int64) and fraction ``t``."""
        shift = np.asarray(shift, dtype=np.float64)
        m = np.floor(shift)
        return m.astype(np.int64), shift - m

    @property
    def span(self) -> tuple[int, int]:
        """Log-grid positions ``[p0, p1)`` that the table's bands touch."""
        return int(self.start.min()), int(self.start.max()) + self.band

    def check_shift(self, m: np.ndarray) -> None:
        """Raise if an integer shift needs model pixels beyond the model grid."""
        if m.size == 0:
            return
        p0, p1 = self.span
        if p0 - int(m.max()) < 0 or p1 - int(m.min()) > self.n_model:
            raise SpecdenoiseError(
                "a radial velocity shifts the detector range beyond the model grid's wavelengths; "
                "use a grid covering more wavelength or smaller |rv|"
            )


def _pixel_response(lo, hi, sig, mu):
    """P_j(mu): Gaussian (centre mu, width sig) integrated over [lo, hi]; arrays broadcast."""
    return ndtr((hi - mu) / sig) - ndtr((lo - mu) / sig)


def sample_offsets(model_wave: np.ndarray, det_wave: np.ndarray, lsf: LSF | None = None,
                   n_shift: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """How each model sample is integrated against the kernel (module docstring).

    Returns ``(u, w)``: sub-point offsets in model pixels and their weights (each (n_sub,)).
    ``([0.], [1.])`` reads the samples as points (the model is fine enough everywhere on the
    detector); otherwise the hat function ``max(0, 1 - |u|)`` (the piecewise-linear model) at
    ``u = k / S``, ``|k| < S``, weights ``hat(u) / S`` summing to 1 (the trapezoidal rule, exact
    at the hat's kinks).  ``S`` is the smallest divisor or multiple of ``n_shift`` that puts the
    sub-points at most :data:`SUB_STEP_PER_SIGMA` kernel widths apart, so that sub-points and
    tabulated shifts share one lattice (:func:`build_resampling_table`).
    """
    lsf = LSF() if lsf is None else lsf
    h = log_grid_step(model_wave)
    lo, hi = pixel_edges(det_wave)
    det_wave = np.asarray(det_wave, dtype=np.float64)
    step_pix = det_wave * np.expm1(h) / (hi - lo)  # model sample spacing, detector pixels
    ratio = float(np.max(step_pix / lsf.sigma_pix(det_wave)))
    if ratio <= MAX_STEP_PER_SIGMA:
        return np.zeros(1), np.ones(1)
    need = int(np.ceil(ratio / SUB_STEP_PER_SIGMA))
    n_sub = next(d for d in range(need, need + n_shift + 1)
                 if n_shift % d == 0 or d % n_shift == 0)
    u = np.arange(-n_sub + 1, n_sub) / n_sub
    return u, (1.0 - np.abs(u)) / n_sub


def build_resampling_table(
    model_wave: np.ndarray,
    det_wave: np.ndarray,
    lsf: LSF | None = None,
    *,
    n_shift: int = 64,
    nsigma: float = 5.5,
) -> ResamplingTable:
    """Evaluate the banded resampling matrices once (module docstring).

    Parameters
    ----------
    model_wave : (n_model,) log-uniform vacuum wavelengths of the model, nm.
    det_wave : (n_det,) detector pixel centres, nm (edges from :func:`pixel_edges`).
    lsf : the line-spread function (default :class:`LSF()`).
    n_shift : number of fractional-shift steps tabulated per model pixel.
    nsigma : the band covers the pixel plus ``nsigma`` Gaussian widths on each side (the flux
        beyond, 4e-8 of a line for 5.5, is dropped).
    """
    lsf = LSF() if lsf is None else lsf
    h = log_grid_step(model_wave)
    lam0 = float(np.asarray(model_wave, dtype=np.float64)[0])
    lo, hi = pixel_edges(det_wave)
    det_wave = np.asarray(det_wave, dtype=np.float64)
    sig = lsf.sigma_pix(det_wave) * (hi - lo)
    u, w = sample_offsets(model_wave, det_wave, lsf, n_shift)
    reach = int(np.ceil(np.max(np.abs(u))))  # model pixels a sample's hat reaches (0: points)
    # log-grid positions p whose shifted wavelength lambda_p e^{t h}, 0 <= t <= 1, can reach pixel j
    p_lo = np.floor(np.log((lo - nsigma * sig) / lam0) / h - 1.0).astype(np.int64) - reach
    p_hi = np.ceil(np.log((hi + nsigma * sig) / lam0) / h).astype(np.int64) + reach
    band = int(np.max(p_hi - p_lo)) + 1
    band = -(-band // 8) * 8  # a multiple of the SIMD width; the extra columns weigh ~0
    p = p_lo[:, None] + np.arange(band)[None, :]
    lam_p = lam0 * np.exp(p * h)
    dlam_p = lam_p * 2.0 * np.sinh(0.5 * h)
    weights = np.empty((n_shift + 1, det_wave.size, band), dtype=np.float32)
    if reach == 0:  # point samples: the table as before the comb fix, bit for bit
        for i in range(n_shift + 1):
            mu = lam_p * np.exp(h * i / n_shift)
            weights[i] = dlam_p * _pixel_response(lo[:, None], hi[:, None], sig[:, None], mu)
    else:
        # shifts t = i / n_shift and sub-points u = k / S share the lattice v = q / L
        n_sub = (u.size + 1) // 2
        lat = max(n_shift, n_sub)
        q_of_u = np.rint(u * lat).astype(np.int64)
        # q -> dlambda(p + v) P_j(lambda_{p + v}), float32, computed once each; the sub-point's
        # dlambda is that of p + u = p + v - t, hence the factor exp(-t h) below
        resp = {}
        for i in range(n_shift + 1):
            qi = i * (lat // n_shift)
            acc = np.zeros((det_wave.size, band))
            for q, ws in zip(qi + q_of_u, w, strict=True):
                if q not in resp:
                    v = q / lat
                    resp[q] = (np.exp(v * h) * dlam_p * _pixel_response(
                        lo[:, None], hi[:, None], sig[:, None], lam_p * np.exp(v * h))
                    ).astype(np.float32)
                acc += ws * resp[q]
            weights[i] = np.exp(-h * i / n_shift) * acc
    return ResamplingTable(
        weights=weights, start=p_lo, lambda0=lam0, h=h,
        n_model=int(np.asarray(model_wave).size), det_width=hi - lo,
    )


def resampling_matrix_dense(
    model_wave: np.ndarray, det_wave: np.ndarray, lsf: LSF | None = None, shift: float = 0.0
) -> np.ndarray:
    """Reference: the full (n_det, n_model) matrix ``W_jk = dlambda_k P_j(lambda_k e^{shift h})``
    (for a coarse model, the hat-weighted sum of :func:`sample_offsets`).

    ``shift`` in model pixels (any real).  ``W @ f_lambda / det_width`` is the mean f_lambda in
    each detector pixel.  Direct evaluation, no table: for tests (it is 4096 x 5000 doubles).
    """
    lsf = LSF() if lsf is None else lsf
    h = log_grid_step(model_wave)
    w = np.asarray(model_wave, dtype=np.float64)
    lo, hi = pixel_edges(det_wave)
    sig = lsf.sigma_pix(det_wave) * (hi - lo)
    dlam = w * 2.0 * np.sinh(0.5 * h)
    out = np.zeros((lo.size, w.size))
    for us, ws in zip(*sample_offsets(w, det_wave, lsf), strict=True):
        mu = w * np.exp((shift + us) * h)
        out += ws * np.exp(us * h) * dlam[None, :] * _pixel_response(
            lo[:, None], hi[:, None], sig[:, None], mu[None, :])
    return out


@njit(cache=True, nogil=True, fastmath=True)
def resample_one(obs, weights, start, p0, t, out):
    """One spectrum through the table (Numba, one thread).

    Parameters
    ----------
    obs : (n_obs,) float32, the shifted model f_lambda (times any per-position gain such as the
        extinction) by observed log-grid position: ``obs[p - p0] = gain_p f[p - m]``.
    weights, start : the :class:`ResamplingTable` arrays.
    p0 : log-grid position of ``obs[0]`` (at most ``start.min()``).
    t : fractional shift in model pixels, ``0 <= t <= 1``.
    out : (n_det,) overwritten with ``sum_q V_{j,start_j+q}(t) obs[start_j + q - p0]``, i.e. the
        integrated flux per detector pixel before the ``exp(-m h)`` factor.

    Single precision with fastmath (the band is a few tens of terms; relative error ~1e-7).
    """
    n_shift = weights.shape[0] - 1
    x = t * n_shift
    i0 = int(np.floor(x))
    if i0 >= n_shift:
        i0 = n_shift - 1
    a = np.float32(x - i0)
    b = np.float32(1.0) - a
    w0 = weights[i0]
    w1 = weights[i0 + 1]
    n_det, band = w0.shape
    for j in range(n_det):
        k0 = start[j] - p0
        acc = np.float32(0.0)
        for q in range(band):
            acc += (b * w0[j, q] + a * w1[j, q]) * obs[k0 + q]
        out[j] = acc
    return out


def _batch(table, model_flux, shift):
    model_flux = np.atleast_2d(np.asarray(model_flux, dtype=np.float32))
    m, t = table.split_shift(np.broadcast_to(shift, model_flux.shape[:1]))
    table.check_shift(m)
    return model_flux, m, t


def resample_numba(table: ResamplingTable, model_flux: np.ndarray, shift) -> np.ndarray:
    """Model f_lambda (n, n_model) shifted by ``shift`` model pixels (n,) -> mean f_lambda per
    detector pixel (n, n_det) float64 (Numba kernel :func:`resample_one`)."""
    model_flux, m, t = _batch(table, model_flux, shift)
    p0, p1 = table.span
    out = np.empty((model_flux.shape[0], table.start.size), dtype=np.float32)
    for i in range(model_flux.shape[0]):
        obs = model_flux[i, p0 - m[i]:p1 - m[i]]
        resample_one(obs, table.weights, table.start, p0, t[i], out[i])
    return out * (np.exp(-m * table.h)[:, None] / table.det_width[None, :])


def resample_numpy(table: ResamplingTable, model_flux: np.ndarray, shift) -> np.ndarray:
    """NumPy reference of :func:`resample_numba` (same arguments and result), in float64."""
    model_flux, m, t = _batch(table, model_flux, shift)
    i0 = np.minimum(np.floor(t * table.n_shift).astype(np.int64), table.n_shift - 1)
    a = t * table.n_shift - i0
    cols = table.start[:, None] + np.arange(table.band)[None, :]
    out = np.empty((model_flux.shape[0], table.start.size))
    for i in range(model_flux.shape[0]):
        w = (1.0 - a[i]) * table.weights[i0[i]].astype(np.float64) \
            + a[i] * table.weights[i0[i] + 1].astype(np.float64)
        out[i] = np.sum(w * model_flux[i][cols - m[i]], axis=1)
    return out * (np.exp(-m * table.h)[:, None] / table.det_width[None, :])
