"""What we measure, said once: the ``METRICS`` registry.

Every number the project reports about a denoised spectrum D against its noiseless truth F is a
:class:`Metric` here. The error cube (``rel_err``), the binned summary, the report's tables, the
figures and the validation |R| printed during training all take their definition from this
module, so the number a training run prints is the number the evaluation reports.

A metric reduces in two steps:

1. per spectrum, a few **additive statistics** (``parts``: an (n_spectrum, k) array, zeros for a
   spectrum without a valid value) -- for a pooled pixel mean the sum and the count of the
   per-pixel values;
2. over a set of spectra (an S/N bin, a bootstrap resample), ``finish`` turns the summed
   statistics into the number (sum / count, a regression slope, a standard deviation).

Pooling sums keeps every bin value exact (a bin's mean |R| is the mean over all its pixels, as
before) and makes the bootstrap over spectra one matrix product (:func:`bootstrap`).

To add a metric: write its function here, add one ``Metric`` entry to :data:`METRICS` and a test
with a hand-made case of known answer (``tests/test_metrics.py``); the summary (a column
``<name>`` with ``<name>_p16``/``<name>_p84``), the report's by-S/N tables and the metric figure
pick it up.

This module is part of the contracts layer (numpy only; no scipy, no torch): training imports
it. Pixel functions marked ``generic`` use only operators shared by numpy arrays and torch
tensors, so the training loop evaluates them on tensors without a copy.

Definitions (all flux arrays (n_spectrum, n_wave), normalised like the dataset's ``flux``;
wavelengths ``wave`` in nm, vacuum):

- ``abs_rel`` |R| = |D - F| / F; valid where F > 0 and the pixel is not masked.
- ``bias`` (D - F) / F, signed: > 0 means the denoised flux is too high.
- Continuum of the truth C (:func:`continuum`): the spectrum is cut into :data:`CONT_SEGMENTS`
  equal segments (64 pixels, 2.7 nm on the PFS red arm); in each the
  :data:`CONT_QUANTILE` quantile of F is taken as the continuum level at the segment centre,
  and C is the linear interpolation between the centres (constant beyond the outer ones). On a
  noiseless spectrum the upper decile of a short segment sits on the continuum unless the whole
  segment is inside a band; this is the usual "upper envelope" idea (e.g. the iterative
  high-side rejection of IRAF ``continuum``), made non-iterative and vectorised.
- Line pixels: depth 1 - F / C > :data:`LINE_DEPTH` (3 %); continuum pixels: the others.
  ``line_abs_rel`` / ``cont_abs_rel`` are |R| pooled over those pixels only.
- Fine structure of a spectrum X (:func:`fine_structure`): x = X / C (the truth's continuum, for
  D and F alike), minus its Gaussian smoothing of :data:`FINE_SIGMA_PIX` pixels (1.07 nm):
  what remains are the lines; slow continuum errors of D do not count. ``structure_kept`` is
  the least-squares slope through the origin of fine(D) on fine(F), pooled over the pixels of
  the spectra: sum fine(D) fine(F) / sum fine(F)^2. A denoised spectrum whose every line has
  the fraction a of its true depth (D = C + a (F - C)) scores exactly a; 1 keeps every line,
  < 1 shrinks them, noise left in D does not bias it (it is uncorrelated with fine(F)).
- Ca II triplet equivalent widths (:func:`ca2_equivalent_widths`): the line and continuum
  bands of the CaT index of Cenarro et al. (2001, MNRAS 326, 959, Table 4), given in air there
  and converted to vacuum (Morton 2000, ApJS 130, 403, Eq. 8). The continuum is the least-
  squares straight line through every pixel of the five continuum bands; the EW of a line is
  sum over the pixels of its band of (1 - X / continuum) times the pixel width, in Angstrom.
  ``ca2_ew_err`` is the mean over spectra of |EW(D) - EW(F)| of the sum of the three lines,
  ``ca2_ew_bias`` its signed mean (< 0: lines too weak). A spectrum with a masked pixel in a
  band, or a grid that does not cover the bands, has no value.
- Uncertainty calibration, when the cube carries ``sigma_denoised`` (or ``z``):
  z = (D - F) / sigma_denoised; ``cover_1sigma`` / ``cover_2sigma`` the fraction of pixels with
  |z| <= 1 / <= 2 (Gaussian: 0.683 / 0.954), ``z_std`` the standard deviation of z (1 when
  calibrated); ``suspect_rate`` the fraction of spectra whose ``suspect`` flag is set.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

#: continuum: equal segments over the arm, and the quantile of F taken in each
CONT_SEGMENTS = 64
CONT_QUANTILE = 0.9
#: a pixel is a line pixel when the truth lies more than this fraction below its continuum
LINE_DEPTH = 0.03
#: fine structure: Gaussian high-pass of this width, pixels (1.07 nm at 0.0427 nm per pixel)
FINE_SIGMA_PIX = 25.0

#: Ca II triplet bands of the CaT index, Cenarro et al. (2001) Table 4, Angstrom in AIR:
#: three line bands (8498, 8542, 8662 in air; 8500.4, 8544.4, 8664.5 in vacuum) and five
#: continuum bands
CA2_LINES_AIR = ((8484.0, 8513.0), (8522.0, 8562.0), (8642.0, 8682.0))
CA2_CONT_AIR = ((8474.0, 8484.0), (8563.0, 8577.0), (8619.0, 8642.0), (8700.0, 8725.0),
                (8776.0, 8792.0))


def air_to_vacuum(air_aa):
    """Vacuum wavelength of an air wavelength, both Angstrom (Morton 2000, Eq. 8, with the
    refractive index evaluated at the air wavelength: error < 0.01 Angstrom near 8500)."""
    a = np.asarray(air_aa, dtype=np.float64)
    s2 = (1e4 / a) ** 2
    n = 1 + 8.34254e-5 + 2.406147e-2 / (130 - s2) + 1.5998e-4 / (38.9 - s2)
    return a * n


CA2_LINES = tuple(tuple(float(x) for x in air_to_vacuum(b)) for b in CA2_LINES_AIR)
CA2_CONT = tuple(tuple(float(x) for x in air_to_vacuum(b)) for b in CA2_CONT_AIR)


# --------------------------------------------------------------------------- generic pixels


def abs_rel(d, f):
    """|R| = |D - F| / F and where it is defined (F > 0): ``(values, valid)``.

    Generic: works on numpy arrays and torch tensors alike (no library call)."""
    return abs(d - f) / f, f > 0


def signed_rel(d, f):
    """(D - F) / F and where it is defined (F > 0): ``(values, valid)``. Generic."""
    return (d - f) / f, f > 0


def pixel_values(name: str, denoised, clean, mask=None) -> np.ndarray:
    """A generic pixel metric as a float32 numpy array, NaN where undefined or masked
    (``mask != 0``). Shapes: any, all equal."""
    d = np.asarray(denoised, dtype=np.float64)
    f = np.asarray(clean, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        v, ok = METRICS[name].pixel(d, f)
    ok = ok & np.isfinite(v)
    if mask is not None:
        ok &= np.asarray(mask) == 0
    return np.where(ok, v, np.nan).astype(np.float32)


def pixel_sum_count(name: str, denoised, clean, good):
    """Sum and count of a generic pixel metric over the valid pixels where ``good`` is true.

    For the training loop: ``denoised``, ``clean`` and ``good`` may be torch tensors (the result
    is then two tensors on their device); nothing here imports torch."""
    v, ok = METRICS[name].pixel(denoised, clean)
    ok = ok & good
    sel = v[ok]
    return sel.sum(), ok.sum()


# --------------------------------------------------------------------------- smooth parts


def gaussian_smooth(x: np.ndarray, sigma_pix: float) -> np.ndarray:
    """Gaussian smoothing along the last axis (edge values repeated beyond the ends, so a
    constant stays exactly constant), by FFT. ``x``: (..., n) float."""
    x = np.asarray(x, dtype=np.float64)
    r = int(np.ceil(4 * sigma_pix))
    n = x.shape[-1]
    pad = np.concatenate([np.repeat(x[..., :1], r, axis=-1), x,
                          np.repeat(x[..., -1:], r, axis=-1)], axis=-1)
    m = pad.shape[-1]
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma_pix) ** 2)
    k /= k.sum()
    kern = np.zeros(m)
    kern[: r + 1] = k[r:]
    kern[m - r:] = k[:r]
    out = np.fft.irfft(np.fft.rfft(pad, axis=-1) * np.fft.rfft(kern), n=m, axis=-1)
    return out[..., r:r + n]


def continuum(clean: np.ndarray, n_segments: int = CONT_SEGMENTS,
              q: float = CONT_QUANTILE) -> np.ndarray:
    """Smooth continuum of noiseless spectra (module docstring): (n, n_wave) -> (n, n_wave)."""
    f = np.atleast_2d(np.asarray(clean, dtype=np.float64))
    n_wave = f.shape[-1]
    n_segments = max(1, min(n_segments, n_wave))
    edges = np.linspace(0, n_wave, n_segments + 1).round().astype(int)
    centres = 0.5 * (edges[:-1] + edges[1:] - 1)
    levels = np.stack([np.quantile(f[:, a:b], q, axis=1) for a, b in
                       zip(edges[:-1], edges[1:], strict=True)], axis=1)
    x = np.arange(n_wave)
    j = np.clip(np.searchsorted(centres, x) - 1, 0, max(n_segments - 2, 0))
    if n_segments == 1:
        return np.repeat(levels, n_wave, axis=1)
    t = np.clip((x - centres[j]) / (centres[j + 1] - centres[j]), 0, 1)
    return levels[:, j] * (1 - t) + levels[:, j + 1] * t


def fine_structure(x: np.ndarray, cont: np.ndarray, good: np.ndarray | None = None,
                   sigma_pix: float = FINE_SIGMA_PIX) -> np.ndarray:
    """X / C minus its Gaussian smoothing (module docstring); bad pixels enter the smoothing
    as the continuum (1) and come out as NaN. Shapes (n, n_wave)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.asarray(x, dtype=np.float64) / cont
    ok = np.isfinite(r) if good is None else (np.isfinite(r) & good)
    r = np.where(ok, r, 1.0)
    return np.where(ok, r - gaussian_smooth(r, sigma_pix), np.nan)


def ca2_equivalent_widths(flux: np.ndarray, wave_nm: np.ndarray,
                          good: np.ndarray | None = None) -> np.ndarray:
    """Equivalent widths of the three Ca II triplet lines, Angstrom: (n, n_wave) -> (n, 3).

    NaN for a spectrum with a bad pixel in a band or a grid that misses a band."""
    f = np.atleast_2d(np.asarray(flux, dtype=np.float64))
    lam = 10.0 * np.asarray(wave_nm, dtype=np.float64)
    n = f.shape[0]
    out = np.full((n, 3), np.nan)
    if lam[0] > CA2_CONT[0][0] or lam[-1] < CA2_CONT[-1][1]:
        return out
    dlam = np.gradient(lam)
    in_cont = np.zeros(lam.size, bool)
    for a, b in CA2_CONT:
        in_cont |= (lam >= a) & (lam <= b)
    in_line = [(lam >= a) & (lam <= b) for a, b in CA2_LINES]
    used = in_cont | np.any(in_line, axis=0)
    ok_row = np.all(np.isfinite(f[:, used]), axis=1)
    if good is not None:
        ok_row &= np.all(np.asarray(good)[:, used], axis=1)
    lam0 = lam[in_cont].mean()
    design = np.stack([np.ones(in_cont.sum()), lam[in_cont] - lam0], axis=1)
    fc = np.where(np.isfinite(f[:, in_cont]), f[:, in_cont], 0.0)
    coef, *_ = np.linalg.lstsq(design, fc.T, rcond=None)  # (2, n)
    for i, sel in enumerate(in_line):
        cont = coef[0][:, None] + coef[1][:, None] * (lam[sel] - lam0)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[:, i] = ((1 - f[:, sel] / cont) * dlam[sel]).sum(axis=1)
    out[~ok_row] = np.nan
    return out


# --------------------------------------------------------------------------- blocks


@dataclass
class Block:
    """A block of spectra of one method, with what the metrics read.

    ``denoised``, ``clean``: (n, n_wave) flux; ``good``: (n, n_wave) bool, the pixels the cube
    evaluated (unmasked, F > 0, method run); ``wave``: (n_wave,) nm; optional ``rel_err``
    (the cube's stored |R|), ``sigma_denoised``, ``z`` (n, n_wave) and ``suspect`` (n,).
    ``shared`` caches what depends on the truth only (continuum, line pixels), so several
    methods of the same spectra compute it once.
    """

    denoised: np.ndarray | None
    clean: np.ndarray
    good: np.ndarray
    wave: np.ndarray
    rel_err: np.ndarray | None = None
    sigma_denoised: np.ndarray | None = None
    z: np.ndarray | None = None
    suspect: np.ndarray | None = None
    shared: dict = field(default_factory=dict)

    def _truth(self, key: str, make: Callable[[], np.ndarray]) -> np.ndarray:
        if key not in self.shared:
            self.shared[key] = make()
        return self.shared[key]

    @property
    def continuum(self) -> np.ndarray:
        return self._truth("continuum", lambda: continuum(self.clean))

    @property
    def line_pixels(self) -> np.ndarray:
        def make():
            with np.errstate(divide="ignore", invalid="ignore"):
                return (1 - self.clean / self.continuum) > LINE_DEPTH
        return self._truth("line_pixels", make)

    @property
    def fine_clean(self) -> np.ndarray:
        return self._truth("fine_clean", lambda: fine_structure(self.clean, self.continuum))

    @property
    def ew_clean(self) -> np.ndarray:
        return self._truth("ew_clean", lambda: ca2_equivalent_widths(self.clean, self.wave))

    @cached_property
    def zscore(self) -> np.ndarray | None:
        if self.z is not None:
            return np.where(self.good, self.z, np.nan)
        if self.sigma_denoised is None or self.denoised is None:
            return None
        with np.errstate(divide="ignore", invalid="ignore"):
            z = (self.denoised - self.clean) / self.sigma_denoised
        return np.where(self.good & (self.sigma_denoised > 0), z, np.nan)

    @cached_property
    def abs_rel(self) -> np.ndarray:
        if self.rel_err is not None:
            return np.where(self.good, self.rel_err, np.nan)
        return pixel_values("abs_rel", self.denoised, self.clean, ~self.good)


# --------------------------------------------------------------------------- reductions


def _mean_parts(values: np.ndarray | None, n: int) -> np.ndarray:
    """(sum, count) per row of finite values; zeros for rows without any."""
    if values is None:
        return np.zeros((n, 2))
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 1:
        v = v[:, None]
    ok = np.isfinite(v)
    return np.stack([np.where(ok, v, 0).sum(axis=1), ok.sum(axis=1)], axis=1)


def _ratio(s: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(s[..., 1] > 0, s[..., 0] / s[..., 1], np.nan)


def _std_parts(values: np.ndarray | None, n: int) -> np.ndarray:
    if values is None:
        return np.zeros((n, 3))
    ok = np.isfinite(values)
    v = np.where(ok, values, 0.0).astype(np.float64)
    return np.stack([v.sum(axis=1), (v * v).sum(axis=1), ok.sum(axis=1)], axis=1)


def _std(s: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        m = s[..., 0] / s[..., 2]
        var = s[..., 1] / s[..., 2] - m * m
    return np.where(s[..., 2] > 1, np.sqrt(np.maximum(var, 0)), np.nan)


def _only(values: np.ndarray, where: np.ndarray) -> np.ndarray:
    return np.where(where, values, np.nan)


def _bias_parts(b: Block) -> np.ndarray:
    if b.denoised is None:
        return np.zeros((b.clean.shape[0], 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        v, ok = signed_rel(b.denoised.astype(np.float64), b.clean.astype(np.float64))
    return _mean_parts(np.where(ok & b.good, v, np.nan), b.clean.shape[0])


def _structure_parts(b: Block) -> np.ndarray:
    n = b.clean.shape[0]
    if b.denoised is None:
        return np.zeros((n, 2))
    fd = fine_structure(b.denoised, b.continuum, b.good)
    ff = b.fine_clean
    ok = np.isfinite(fd) & np.isfinite(ff) & b.good
    fd, ff = np.where(ok, fd, 0), np.where(ok, ff, 0)
    return np.stack([(fd * ff).sum(axis=1), (ff * ff).sum(axis=1)], axis=1)


def _ew_delta(b: Block) -> np.ndarray | None:
    if b.denoised is None:
        return None
    ew = ca2_equivalent_widths(b.denoised, b.wave, b.good)
    return ew.sum(axis=1) - b.ew_clean.sum(axis=1)


def _suspect_parts(b: Block) -> np.ndarray:
    n = b.clean.shape[0]
    if b.suspect is None:
        return np.zeros((n, 2))
    s = np.asarray(b.suspect, dtype=np.float64)
    run = np.any(b.good, axis=1)  # spectra the method denoised
    return _mean_parts(np.where(run, s, np.nan), n)


def _cover(k: float) -> Callable[[Block], np.ndarray]:
    def parts(b: Block) -> np.ndarray:
        z = b.zscore
        if z is None:
            return np.zeros((b.clean.shape[0], 2))
        return _mean_parts(np.where(np.isfinite(z), (np.abs(z) <= k).astype(float), np.nan),
                           b.clean.shape[0])
    return parts


@dataclass(frozen=True)
class Metric:
    """One measured quantity: how a block of spectra gives per-spectrum additive statistics
    (``parts``: Block -> (n, k)) and how summed statistics give the number (``finish``:
    (..., k) -> (...)).

    ``pixel``: for metrics defined pixel by pixel from (D, F) alone, the generic function
    (numpy and torch) the cube and the training loop evaluate. ``unit``: ``"percent"``
    (a fraction shown in per cent), ``"1"`` or ``"angstrom"``. ``better``: ``"lower"``,
    ``"higher"``, ``"zero"`` (signed, 0 best), ``"one"`` or ``None`` (not a ranking).
    ``needs``: cube variables without which the metric is not computed. ``group``: the report
    section (``"error"``, ``"lines"``, ``"calibration"``).
    """

    name: str
    label: str
    description: str
    parts: Callable[[Block], np.ndarray]
    finish: Callable[[np.ndarray], np.ndarray] = _ratio
    pixel: Callable | None = None
    unit: str = "percent"
    better: str | None = "lower"
    needs: tuple[str, ...] = ()
    group: str = "error"


def _m(*args, **kw) -> tuple[str, Metric]:
    m = Metric(*args, **kw)
    return m.name, m


#: every metric, by the name the summary, its CSV columns and the report use
METRICS: Mapping[str, Metric] = dict([
    _m("abs_rel", "|R|", "mean |D - F| / F over the pixels",
       lambda b: _mean_parts(b.abs_rel, b.clean.shape[0]), pixel=abs_rel),
    _m("bias", "bias", "mean (D - F) / F over the pixels (signed; > 0: too bright)",
       _bias_parts, pixel=signed_rel, better="zero", needs=("denoised",)),
    _m("line_abs_rel", "|R| lines", f"mean |R| over line pixels (depth > {LINE_DEPTH:.0%} "
       "below the truth's continuum)",
       lambda b: _mean_parts(_only(b.abs_rel, b.line_pixels), b.clean.shape[0]),
       group="lines"),
    _m("cont_abs_rel", "|R| continuum", "mean |R| over the other (continuum) pixels",
       lambda b: _mean_parts(_only(b.abs_rel, ~b.line_pixels), b.clean.shape[0]),
       group="lines"),
    _m("structure_kept", "structure kept", "slope of the denoised fine structure on the "
       "truth's (1: every line at its depth; < 1: lines shrunk)", _structure_parts,
       unit="1", better="one", needs=("denoised",), group="lines"),
    _m("ca2_ew_err", "Ca II EW |error|", "mean |EW(D) - EW(F)| of the Ca II triplet "
       "(sum of the three lines), Angstrom",
       lambda b: _mean_parts(None if (d := _ew_delta(b)) is None else np.abs(d),
                             b.clean.shape[0]),
       unit="angstrom", needs=("denoised",), group="lines"),
    _m("ca2_ew_bias", "Ca II EW bias", "mean EW(D) - EW(F) of the Ca II triplet (signed; "
       "< 0: lines too weak), Angstrom",
       lambda b: _mean_parts(_ew_delta(b), b.clean.shape[0]),
       unit="angstrom", better="zero", needs=("denoised",), group="lines"),
    _m("cover_1sigma", "within 1 sigma", "fraction of pixels with |D - F| <= sigma_denoised "
       "(Gaussian: 0.683)", _cover(1.0), unit="1", better=None, needs=("sigma_denoised",),
       group="calibration"),
    _m("cover_2sigma", "within 2 sigma", "fraction of pixels with |D - F| <= 2 sigma_denoised "
       "(Gaussian: 0.954)", _cover(2.0), unit="1", better=None, needs=("sigma_denoised",),
       group="calibration"),
    _m("z_std", "std(z)", "standard deviation of z = (D - F) / sigma_denoised (1: calibrated)",
       lambda b: _std_parts(b.zscore, b.clean.shape[0]), finish=_std, unit="1", better="one",
       needs=("sigma_denoised",), group="calibration"),
    _m("suspect_rate", "flagged", "fraction of spectra flagged suspect", _suspect_parts,
       better=None, needs=("suspect",), group="calibration"),
])

#: the metric the training loop reports as its validation number (``val_mean_abs_rel``)
VALIDATION_METRIC = "abs_rel"
#: Gaussian coverage of +-1 and +-2 standard deviations, for the calibration table
GAUSS_COVER = {1: 0.6826894921370859, 2: 0.9544997361036416}


# --------------------------------------------------------------------------- bootstrap


def bootstrap_weights(n: int, n_boot: int, seed) -> np.ndarray:
    """(n_boot, n) resampling counts: how often each of ``n`` spectra is drawn in each of
    ``n_boot`` resamples with replacement (multinomial), from ``np.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    if n == 0:
        return np.zeros((n_boot, 0))
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)


def bootstrap(parts: np.ndarray, finish: Callable, weights: np.ndarray,
              q: tuple[float, float] = (0.16, 0.84)) -> tuple[float, float, float]:
    """(value, low, high): the metric of ``parts`` (n, k) and the ``q`` quantiles of its
    bootstrap distribution over spectra (``weights`` from :func:`bootstrap_weights`)."""
    value = float(finish(parts.sum(axis=0)))
    if parts.shape[0] == 0 or weights.size == 0:
        return value, float("nan"), float("nan")
    boot = finish(weights @ parts)
    boot = boot[np.isfinite(boot)]
    if boot.size == 0:
        return value, float("nan"), float("nan")
    lo, hi = np.quantile(boot, q)
    return value, float(lo), float(hi)


def paired_difference(parts_a: np.ndarray, parts_b: np.ndarray, finish: Callable,
                      weights: np.ndarray, q: tuple[float, float] = (0.16, 0.84)
                      ) -> tuple[float, float]:
    """The ``q`` interval of metric(b) - metric(a) over the same bootstrap resamples of the
    same spectra (rows of ``parts_a`` and ``parts_b`` are the same spectra)."""
    if weights.size == 0:
        return float("nan"), float("nan")
    diff = finish(weights @ parts_b) - finish(weights @ parts_a)
    diff = diff[np.isfinite(diff)]
    if diff.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(diff, q)
    return float(lo), float(hi)
